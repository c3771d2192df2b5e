"""The runstream server process: services, roles and a graceful lifecycle.

Role `all` (the default) runs the gRPC ingester in this process and `--loaders` loader
processes beside it; `ingest` and `load` run one part only, so parts scale on their own.
With no URLs configured, PostgreSQL and Redis are the embedded ones in the data dir.
On SIGINT/SIGTERM: stop accepting RPCs, let the loaders drain the streams, then exit.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import asyncpg
import grpc
import redis.asyncio as aioredis
from aiohttp import web

from runstream import store
from runstream.artifacts.local import LocalStore
from runstream.artifacts.service import Artifacts
from runstream.artifacts.stores import S3Options, StoreSettings, StoreUnavailable, open_store
from runstream.config import Settings
from runstream.embedded import EmbeddedPostgres, EmbeddedRedis
from runstream.ingest import Tracking
from runstream.keys import Keys
from runstream.loader import Loader
from runstream.proto import artifacts_pb2, query_pb2, registry_pb2, tracking_pb2
from runstream.query import Query
from runstream.registry import Registry
from runstream.rpc import service_handler

log = logging.getLogger(__name__)
DrainFlag = multiprocessing.synchronize.Event
MAX_MESSAGE = 8 * 1024 * 1024  # above the 4 MiB batch limit, so oversize batches get a clear answer


@contextmanager
def services(settings: Settings) -> Iterator[Settings]:
    """Settings with both URLs set, starting the embedded services for the missing ones."""
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        resolved = replace(settings)
        if not resolved.postgres_url:
            pg = EmbeddedPostgres(settings.data_dir)
            started.append(pg)
            resolved.postgres_url = pg.url
        if not resolved.redis_url:
            rd = EmbeddedRedis(settings.data_dir)
            started.append(rd)
            resolved.redis_url = rd.url
        yield resolved
    finally:
        for service in reversed(started):
            service.stop()


async def connect(settings: Settings) -> tuple[asyncpg.Pool, aioredis.Redis]:
    assert settings.postgres_url and settings.redis_url
    pool = await asyncpg.create_pool(
        settings.postgres_url,
        min_size=1,
        max_size=settings.pool_size,
        server_settings={"application_name": f"runstream-{settings.role}"},
    )
    tcp = not settings.redis_url.startswith("unix://")
    redis = aioredis.from_url(settings.redis_url, **({"socket_keepalive": True} if tcp else {}))
    await redis.ping()
    return pool, redis


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_ingest(
    settings: Settings, loaders: list[multiprocessing.process.BaseProcess], drain: DrainFlag | None = None
) -> None:
    pool, redis = await connect(settings)
    async with pool.acquire() as conn:
        applied = await store.migrate(conn)
    if applied:
        log.info("applied migrations %s", applied)
    keys = Keys(settings.redis_prefix, settings.shards)
    tracking = Tracking(pool, redis, keys, settings.max_backlog)
    await tracking.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    query = Query(pool)
    artifacts, http = await _artifacts(settings, pool)
    server.add_generic_rpc_handlers(
        (
            service_handler(tracking, tracking_pb2, "TrackingService"),
            service_handler(query, query_pb2, "QueryService"),
            service_handler(artifacts, artifacts_pb2, "ArtifactService"),
            service_handler(Registry(pool), registry_pb2, "RegistryService"),
        )
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    stop = _stop_event()
    print(f"runstream artifacts: {settings.artifacts_url}" + (f", served on {settings.http_url}" if http else ""))
    print(
        f"runstream listening on {settings.host}:{port} (role {settings.role}, {len(loaders)} loader processes)",
        flush=True,
    )
    await stop.wait()
    print("runstream: stopping; no new RPCs, draining streams into PostgreSQL", flush=True)
    await server.stop(settings.grace_s)
    await tracking.stop()
    await query.close()
    await artifacts.close()
    if http is not None:
        await http.cleanup()
    if drain is not None:
        drain.set()  # the loaders drain, then exit (also one that is still starting)
    for proc in loaders:
        await asyncio.to_thread(proc.join)
    await pool.close()
    await redis.aclose()


async def _artifacts(settings: Settings, pool: asyncpg.Pool) -> tuple[Artifacts, web.AppRunner | None]:
    """The ArtifactService on its store; a local store's signed URLs are served over HTTP here."""
    s3 = S3Options(
        settings.s3_endpoint_url, settings.s3_public_endpoint_url, settings.s3_region, settings.s3_addressing_style
    )
    store_settings = StoreSettings(
        settings.artifacts_url, settings.http_url, settings.artifact_url_expiry_s, settings.artifact_part_size, s3
    )
    try:
        objects = await open_store(store_settings)
    except (ValueError, StoreUnavailable) as exc:  # a wrong flag or bucket: say so and stop, no traceback
        raise SystemExit(f"runstream: cannot use the artifact store {settings.artifacts_url}: {exc}") from None
    runner = None
    if isinstance(objects, LocalStore):
        runner = web.AppRunner(objects.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.http_port).start()
    artifacts = Artifacts(pool, objects, store_settings)
    artifacts.start()
    return artifacts, runner


async def _follow(flag: DrainFlag, stop: asyncio.Event) -> None:
    """Set `stop` once the parent raised the drain flag (a process-shared event)."""
    while not await asyncio.to_thread(flag.wait, 0.5):
        pass
    stop.set()


async def serve_load(settings: Settings, drain: DrainFlag | None = None) -> None:
    pool, redis = await connect(settings)
    async with pool.acquire() as conn:
        await store.migrate(conn)
    loader = Loader(
        pool,
        redis,
        Keys(settings.redis_prefix, settings.shards),
        read_count=settings.read_count,
        claim_idle_ms=settings.claim_idle_ms,
    )
    stop = _stop_event()
    follower = asyncio.create_task(_follow(drain, stop)) if drain is not None else None
    log.info("loader %s started", loader.consumer)
    await loader.run(stop)
    if follower is not None:
        follower.cancel()
    log.info("loader %s drained: %s", loader.consumer, loader.stats)
    await pool.close()
    await redis.aclose()


def loader_process(settings: Settings, drain: DrainFlag) -> None:
    """Entry point of a loader process started by role `all`; it stops when `drain` is set."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loader %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    asyncio.run(serve_load(settings, drain))


def run(settings: Settings) -> int:
    settings.env_overrides()
    with services(settings) as resolved:
        print(
            f"runstream data: postgres {_where(resolved.postgres_url)}, redis {_where(resolved.redis_url)}", flush=True
        )
        if resolved.role == "load":
            asyncio.run(serve_load(resolved))
            return 0
        loaders: list[multiprocessing.process.BaseProcess] = []
        ctx = multiprocessing.get_context("spawn")
        drain = ctx.Event()
        if resolved.role == "all":
            for _ in range(resolved.loaders):
                proc: multiprocessing.process.BaseProcess = ctx.Process(
                    target=loader_process, args=(replace(resolved, role="load"), drain), daemon=False
                )
                proc.start()
                loaders.append(proc)
        try:
            asyncio.run(serve_ingest(resolved, loaders, drain))
        finally:
            drain.set()
            for proc in loaders:
                proc.join(60)
                if proc.is_alive():
                    log.error("loader %s did not drain within 60 s; terminating it", proc.pid)
                    proc.terminate()
    return 0


def _where(url: str | None) -> str:
    """A URL fit to print: without its password."""
    if not url:
        return "?"
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return url


if __name__ == "__main__":
    sys.exit(run(Settings()))

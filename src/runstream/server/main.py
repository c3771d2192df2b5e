"""The runstream server process: services, roles and a graceful lifecycle.

Role `all` (the default) serves every gRPC service in this process and runs `--loaders`
loader processes and `--compactors` compactor processes beside it. `ingest` (tracking and
artifacts), `query` (queries, registry and artifacts), `load` (a loader) and `compact` (a
compactor) run one part each, so each part scales on its own.
Every role serves gRPC health and reflection, and /metrics on its HTTP port.
With no URLs configured, PostgreSQL and Redis are the embedded ones in the data dir.
On SIGINT/SIGTERM: health turns NOT_SERVING, RPCs stop, the loaders drain the streams
(within --drain-timeout; loading/processes.py runs role all's loader and compactor processes).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runstream import extras
from runstream.server.artifacts.local import LocalStore
from runstream.server.artifacts.opening import open_store, store_settings
from runstream.server.artifacts.service import Artifacts
from runstream.server.artifacts.stores import ObjectStore, StoreUnavailable
from runstream.server.auth import transport
from runstream.server.auth.guard import Guard
from runstream.server.auth.tokens_service import TokenAdmin, bootstrap_admin
from runstream.server.compaction.footprint import StorageAdmin
from runstream.server.loading.dead_letters import Admin
from runstream.server.loading.loader import backlog
from runstream.server.loading.processes import LoaderPool, drain_within, run_compactor, run_loader
from runstream.server.query.service import Query
from runstream.server.query.tail import TailLimits, Tails
from runstream.server.registry.service import Registry
from runstream.server.rpc.grpc import service_handler
from runstream.server.rpc.paging import page_tokens
from runstream.server.runtime.config import Settings
from runstream.server.runtime.connections import (
    connect,
    open_reads,
    preflight,
    printable_url,
    sample_pool,
    stop_event,
)
from runstream.server.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from runstream.server.runtime.health import HealthWatch, add_health_route
from runstream.server.runtime.logs import announce
from runstream.server.runtime.metrics import (
    Metrics,
    StreamStats,
    add_metrics_route,
    forget_multiprocess_dir,
    use_multiprocess_dir,
)
from runstream.server.runtime.reflection import enable_reflection
from runstream.server.storage import db, migrate
from runstream.server.storage.replicas import Reads
from runstream.server.streams.client import RedisClient, is_cluster
from runstream.server.streams.deployment import DeploymentConflict, bind, deployment_keys
from runstream.server.streams.keys import Keys
from runstream.server.tracking.appender import Durability, describe_durability
from runstream.server.tracking.heartbeats import Liveness
from runstream.server.tracking.logged_models import LoggedModels
from runstream.server.tracking.purge import RunPurger
from runstream.server.tracking.service import Tracking
from runstream.server.web import port as http_port
from runstream.server.web.api import add_api_routes
from runstream.server.web.login import add_login_routes
from runstream.server.web.mlflow import add_routes as add_mlflow_routes
from runstream.server.web.ui import add_ui_routes
from runstream.wire.proto import admin_pb2, artifacts_pb2, query_pb2, registry_pb2, tracking_pb2

log = logging.getLogger(__name__)
MAX_MESSAGE = 8 * 1024 * 1024  # above the 4 MiB batch limit, so oversize batches get a clear answer
ROLE_SERVICES = {
    "all": ("TrackingService", "QueryService", "ArtifactService", "RegistryService", "AdminService"),
    "ingest": ("TrackingService", "ArtifactService", "AdminService"),
    "query": ("QueryService", "RegistryService", "ArtifactService"),
    "load": (),
    "compact": (),
}
NO_REDIS_ROLES = ("query", "compact")
SERVICE_MODULES = {
    "TrackingService": tracking_pb2,
    "QueryService": query_pb2,
    "ArtifactService": artifacts_pb2,
    "RegistryService": registry_pb2,
    "AdminService": admin_pb2,
}


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


async def serve(
    settings: Settings,
    loaders: LoaderPool | None = None,
) -> int:
    """One server process of any role: its gRPC services with health and reflection, and
    an HTTP port with /metrics (and the local store's signed URLs when it signs them)."""
    metrics = Metrics()
    wanted = ROLE_SERVICES[settings.role]
    uses_redis = settings.role not in NO_REDIS_ROLES
    pool, redis = await connect(settings, need_redis=uses_redis)
    reads = await open_reads(settings, pool, metrics)
    async with pool.acquire() as conn:
        applied = await migrate.migrate(conn)
        pg_version = await db.server_version(conn)
    if applied:
        log.info("applied migrations %s", applied)
    redis_version = (await redis.info("server")).get("redis_version", "?") if uses_redis else None
    where = f"PostgreSQL {pg_version} at {printable_url(settings.postgres_url)}"
    if redis_version is not None:
        kind = "Redis Cluster" if is_cluster(redis) else "Redis"
        where += f", {kind} {redis_version} at {printable_url(settings.redis_url)}"
    if settings.postgres_read_url:
        where += f", reads from {len(settings.postgres_read_url)} replica(s) when they have replayed what is asked"
    announce(f"runstream {extras.version()}: {where}; data directory {settings.data_dir}")
    try:
        keys = await deployment_keys(pool, settings.redis_prefix, settings.shards, settings.database_moved)
        if uses_redis:
            await bind(redis, keys, printable_url(settings.postgres_url), settings.database_moved == "adopt")
    except DeploymentConflict as exc:
        raise SystemExit(f"runstream: at {printable_url(settings.redis_url)}, {exc}") from None
    if loaders:
        loaders.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # grpcio shares a taken port by default, splitting clients between two servers
            ("grpc.so_reuseport", 0),
        ]
    )
    http = http_port.application(settings)
    guard = Guard(pool, settings.auth)
    if settings.auth:
        try:
            made = await bootstrap_admin(pool, settings.admin_token_file, settings.admin_token or None)
        except ValueError as exc:
            raise SystemExit(f"runstream: {exc}") from None
        if made:
            announce(f"runstream auth: {made}")
    servicers, closing, local_store = await _services(settings, wanted, reads, redis, keys, metrics, http, guard)
    server.add_generic_rpc_handlers(
        tuple(service_handler(s, SERVICE_MODULES[name], name, metrics, guard, reads) for name, s in servicers.items())
    )
    add_api_routes(http, servicers, SERVICE_MODULES, guard, reads)
    add_login_routes(http, guard)
    add_ui_routes(http, servicers, guard)
    add_mlflow_routes(http, servicers, guard, reads)  # an endpoint needing a service not served here says so

    names = [f"runstream.v1.{name}" for name in wanted]
    health = HealthWatch(pool, redis if uses_redis else None, names)
    await health.start()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if settings.reflection:
        enable_reflection([*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)
    credentials = transport.grpc_credentials(settings)
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpcio's "Failed to bind"
        raise SystemExit(_port_taken("gRPC", settings.host, settings.port, "--port")) from None
    await server.start()

    add_metrics_route(http, metrics, pool, StreamStats(redis, keys) if uses_redis else None)
    add_health_route(http, health)
    runner = http_port.runner(http, settings)
    await runner.setup()
    try:
        await web.TCPSite(
            runner, settings.host, settings.http_port, ssl_context=transport.http_ssl_context(settings)
        ).start()
    except OSError as exc:
        await server.stop(0)
        raise SystemExit(_port_taken("HTTP", settings.host, settings.http_port, "--http-port", exc)) from None
    sampler = asyncio.create_task(sample_pool(pool, metrics))

    stop = stop_event()
    supervisor = asyncio.create_task(loaders.supervise(metrics)) if loaders else None
    loading = None
    if settings.role == "load":
        loading = asyncio.create_task(run_loader(pool, redis, settings, metrics, stop))
    elif settings.role == "compact":
        loading = asyncio.create_task(run_compactor(pool, settings, metrics, stop))
    if loading is not None:  # a loader or compactor that stops on an error stops its process
        loading.add_done_callback(lambda task: stop.set())
    if "ArtifactService" in wanted:
        served = f", its signed URLs served on {settings.http_url}" if local_store else ""
        announce(f"runstream artifacts: {settings.artifacts_url}{served}")
    spawned = len(loaders.processes) if loaders else 0
    scheme = "grpcs://" if credentials else ""
    security = ("TLS" if credentials else "plaintext") + (", tokens required" if settings.auth else ", no auth")
    announce(
        f"runstream listening on {scheme}{settings.host}:{port} (role {settings.role}, {spawned} loader processes, "
        f"{security}; /metrics on {settings.http_url}/metrics)"
    )
    await stop.wait()
    exit_code = 0
    announce("runstream: stopping; health NOT_SERVING, no new RPCs, draining streams into PostgreSQL")
    await health.drain()
    if supervisor is not None:
        supervisor.cancel()
    await server.stop(settings.grace_s)
    for close in closing:
        await close()
    if loading is not None:
        if loading.done() and not loading.cancelled() and (failed := loading.exception()) is not None:
            log.error("the %s role stopped on an error; exiting", settings.role, exc_info=failed)
            exit_code = 1
        else:
            await drain_within(loading, settings.drain_timeout_s)
    if loaders:
        await asyncio.to_thread(loaders.stop, settings.drain_timeout_s)
    if settings.role in ("all", "load"):
        left = await backlog(redis, keys)
        if left:
            log.warning("%d stream entries left in Redis for the next start", left)
    sampler.cancel()
    await runner.cleanup()
    await reads.close()
    await pool.close()
    await redis.aclose()
    return exit_code


async def _services(
    settings: Settings,
    wanted: tuple[str, ...],
    reads: Reads,
    redis: RedisClient,
    keys: Keys,
    metrics: Metrics,
    http: web.Application,
    guard: Guard,
) -> tuple[dict[str, tuple[Any, ...]], list[Callable[[], Awaitable[None]]], bool]:
    """The servicers of the role's services by service name, what to close at the end, and
    whether the artifact store is a local one (its signed URLs then served on `http`)."""
    servicers: dict[str, tuple[Any, ...]] = {}
    closing: list[Callable[[], Awaitable[None]]] = []
    pool = reads.primary
    tokens = await page_tokens(pool)
    objects = await _store(settings, http) if {"QueryService", "ArtifactService"} & set(wanted) else None
    local_store = isinstance(objects, LocalStore)
    if "TrackingService" in wanted:
        durability = Durability(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
        announce(await describe_durability(redis, durability))
        tracking = Tracking(
            pool,
            redis,
            keys,
            settings.max_backlog,
            tokens,
            metrics,
            settings.max_keys_per_run,
            durability,
            guard,
            objects,
        )
        await tracking.start()
        closing.append(tracking.stop)
        liveness = Liveness(pool, settings.crash_after_s)
        liveness.start()
        closing.append(liveness.stop)
        servicers["TrackingService"] = (tracking, LoggedModels(pool, tokens), liveness)
    if "QueryService" in wanted:
        limits = TailLimits(settings.max_tails, settings.max_tails_per_token)
        query = Query(reads, tokens, Tails(pool, metrics, limits, settings.tail_connections, objects), objects)
        closing.append(query.close)
        servicers["QueryService"] = (query,)
    if "ArtifactService" in wanted:
        assert objects is not None
        artifacts = Artifacts(pool, objects, store_settings(settings), metrics)
        artifacts.start()
        closing.append(artifacts.close)
        servicers["ArtifactService"] = (artifacts,)
    if "RegistryService" in wanted:
        servicers["RegistryService"] = (Registry(pool, tokens),)
    if "AdminService" in wanted:
        assert objects is not None  # every role serving AdminService serves ArtifactService
        admins = (Admin(redis, keys, tokens), TokenAdmin(pool, guard), StorageAdmin(pool), RunPurger(pool, objects))
        servicers["AdminService"] = admins
    if objects is not None:
        closing.append(objects.close)  # last: the services above use it until they close
    return servicers, closing, local_store


async def _store(settings: Settings, http: web.Application) -> ObjectStore:
    """The artifact store, for the ArtifactService and cold runs' points; a local store's
    signed URLs are served on `http`."""
    try:
        objects = await open_store(store_settings(settings))
    except (ValueError, StoreUnavailable) as exc:  # a wrong flag or bucket: say so and stop, no traceback
        raise SystemExit(f"runstream: cannot use the artifact store {settings.artifacts_url}: {exc}") from None
    if isinstance(objects, LocalStore):
        objects.add_routes(http)
    return objects


def run(settings: Settings) -> int:
    if (why := transport.refusal(settings)) is not None:
        raise SystemExit(why)
    metrics_dir = use_multiprocess_dir()  # before any Metrics; spawned loaders inherit it
    try:
        with services(settings) as resolved:
            if (why := asyncio.run(preflight(resolved, need_redis=resolved.role not in NO_REDIS_ROLES))) is not None:
                raise SystemExit(f"runstream: {why}")
            loaders = LoaderPool(resolved, resolved.loaders, resolved.compactors) if resolved.role == "all" else None
            try:
                code = asyncio.run(serve(resolved, loaders))
            finally:
                if loaders:
                    loaders.stop(resolved.drain_timeout_s)  # a no-op when serve stopped them
    finally:
        forget_multiprocess_dir(metrics_dir)
    return code


def _port_taken(kind: str, host: str, port: int | None, flag: str, exc: OSError | None = None) -> str:
    why = f" ({exc.strerror})" if exc is not None and exc.strerror else ""
    return f"runstream: the {kind} port {host}:{port} is taken{why}: choose another with {flag}"


if __name__ == "__main__":
    sys.exit(run(Settings()))

"""Role `all`'s loader and compactor processes: started one per slot, replaced when they die,
and drained at shutdown within a bounded time.

A slot keeps its Redis consumer name across replacements, so a successor finds the entries
its predecessor had read but not acknowledged pending under its own name and loads them
first, at once (loader.py). A loader is asked to drain by closing its end of a pipe: nothing
is shared with it that a killed process could leave locked, it works while the loader is
still starting, and a loader whose parent died drains and exits by itself.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import asyncpg

from runstream.server.artifacts.opening import open_store, store_settings
from runstream.server.compaction.compactor import Compactor
from runstream.server.compaction.mover import ColdMover
from runstream.server.loading.loader import Loader
from runstream.server.runtime.config import Settings
from runstream.server.runtime.connections import (
    connect,
    printable_url,
    sample_pool,
    stop_event,
    while_database_away,
)
from runstream.server.runtime.logs import configure_from_env, name_process
from runstream.server.runtime.metrics import Metrics, process_exited
from runstream.server.streams.client import RedisClient
from runstream.server.streams.deployment import deployment_keys

log = logging.getLogger(__name__)
SUPERVISE_S = 1.0
COMPACTOR_NICENESS = 10


@dataclass
class LoaderProcess:
    process: BaseProcess
    drain: Connection  # the parent's end of the pipe; closing it asks the loader to drain

    def ask_to_drain(self) -> None:
        self.drain.close()


class LoaderPool:
    """`count` loader processes of role all, one per slot, and `compactors` compactor processes
    in the slots after them."""

    def __init__(self, settings: Settings, count: int, compactors: int = 0) -> None:
        self.settings = replace(settings, role="load")
        self._ctx = multiprocessing.get_context("spawn")
        base = f"{socket.gethostname()}-{os.getpid()}"
        self._names = [f"{base}-loader{i}" for i in range(count)] + [f"{base}-compactor{i}" for i in range(compactors)]
        self._loaders = count
        self.processes: list[LoaderProcess] = []

    def start(self) -> None:
        """Start the loaders: once the database is migrated and the keyspace bound to it."""
        self.processes = [self._start(i) for i in range(len(self._names))]

    def _start(self, slot: int) -> LoaderProcess:
        theirs, ours = self._ctx.Pipe(duplex=False)
        target = loader_process if slot < self._loaders else compactor_process
        proc = self._ctx.Process(target=target, args=(self.settings, self._names[slot], theirs), daemon=False)
        with _sigint_ignored():
            proc.start()
        theirs.close()  # the child holds it now; ours closing is then the child's end of file
        return LoaderProcess(proc, ours)

    async def supervise(self, metrics: Metrics) -> None:
        """Replace a loader process that died (killed, out of memory) in its slot."""
        while True:
            await asyncio.sleep(SUPERVISE_S)
            for i, loader in enumerate(self.processes):
                proc = loader.process
                if proc.is_alive():
                    continue
                log.error("%s process %s exited with code %s; starting another", self._kind(i), proc.pid, proc.exitcode)
                loader.ask_to_drain()  # closes our end of its pipe
                if proc.pid is not None:
                    process_exited(proc.pid)
                metrics.loader_restarts.inc()
                self.processes[i] = self._start(i)  # in the main thread: see _sigint_ignored

    def _kind(self, slot: int) -> str:
        return "loader" if slot < self._loaders else "compactor"

    def stop(self, timeout: float) -> None:
        """Ask every loader to drain, give them `timeout` seconds (plus a little to exit), then
        kill what is left: what a killed loader held stays pending in Redis. Always returns."""
        for loader in self.processes:
            loader.ask_to_drain()
        deadline = time.monotonic() + timeout + 5  # each loader bounds its own drain by `timeout`
        for i, loader in enumerate(self.processes):
            proc = loader.process
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("%s process %s did not drain within %.0f s; killing it", self._kind(i), proc.pid, timeout)
                proc.kill()
                proc.join(5)
            if proc.pid is not None:
                process_exited(proc.pid)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ctrl-C reaches the whole process group, also a loader still importing; the parent
    decides when loaders drain. A child inherits an ignored SIGINT across fork and exec (a
    blocked one it does not), and only the main thread may set it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def drain_within(task: asyncio.Task[None], timeout: float) -> None:
    """Wait for a draining loader at most `timeout` seconds, then stop it where it is (what it
    had read stays pending in Redis, for the next start)."""
    try:
        await asyncio.wait_for(task, timeout)
    except asyncio.TimeoutError:
        log.error("the loader did not drain within %.0f s; stopping it", timeout)


async def run_loader(
    pool: asyncpg.Pool,
    redis: RedisClient,
    settings: Settings,
    metrics: Metrics,
    stop: asyncio.Event,
    consumer: str | None = None,
) -> None:
    """Load until `stop` is set, then drain what is left."""
    keys = await while_database_away(
        "loader start", lambda: deployment_keys(pool, settings.redis_prefix, settings.shards)
    )
    loader = Loader(
        pool,
        redis,
        keys,
        read_count=settings.read_count,
        claim_idle_ms=settings.claim_idle_ms,
        metrics=metrics,
        consumer=consumer,
        database=printable_url(settings.postgres_url),
    )
    log.info("loader %s started", loader.consumer)
    await loader.run(stop)
    log.info("loader %s drained: %s", loader.consumer, loader.stats)


def _watch_pipe(pipe: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once the parent closed its end (asked for a drain, or died)."""
    try:
        while True:
            pipe.recv()
    except (EOFError, OSError):
        loop.call_soon_threadsafe(stop.set)


async def _spawned_loader(settings: Settings, consumer: str, pipe: Connection) -> None:
    metrics = Metrics()
    stop = stop_event()  # SIGTERM from an operator drains too
    threading.Thread(target=_watch_pipe, args=(pipe, asyncio.get_running_loop(), stop), daemon=True).start()
    pool, redis = await while_database_away(
        "loader start", lambda: connect(settings, need_redis=False)
    )  # and it waits for Redis itself
    sampler = asyncio.create_task(sample_pool(pool, metrics))
    loading = asyncio.create_task(run_loader(pool, redis, settings, metrics, stop, consumer))
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await drain_within(loading, settings.drain_timeout_s)
    sampler.cancel()
    await pool.close()
    await redis.aclose()


def loader_process(settings: Settings, consumer: str, pipe: Connection) -> None:
    """Entry point of a loader process of role all."""
    name_process("runstream-load")
    configure_from_env()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    asyncio.run(_spawned_loader(settings, consumer, pipe))


async def run_compactor(pool: asyncpg.Pool, settings: Settings, metrics: Metrics, stop: asyncio.Event) -> None:
    """Compact until `stop` is set (role compact, and role all's compactor processes)."""
    # With --cold-after 0 it moves nothing, but still deletes the objects of purged runs.
    mover = ColdMover(pool, lambda: open_store(store_settings(settings)), metrics, settings.cold_after_s)
    compactor = Compactor(pool, metrics, settings.compact_delay_s, mover)
    log.info("compactor started (delay %.0f s, cold after %.0f s)", settings.compact_delay_s, settings.cold_after_s)
    try:
        await compactor.run(stop)
    finally:
        await mover.close()
    log.info("compactor stopped: %d points compacted, %d runs moved to the cold tier", compactor.points, mover.runs)


async def _spawned_compactor(settings: Settings, pipe: Connection) -> None:
    metrics = Metrics()
    stop = stop_event()
    threading.Thread(target=_watch_pipe, args=(pipe, asyncio.get_running_loop(), stop), daemon=True).start()
    settings = replace(settings, role="compact")
    pool, redis = await while_database_away("compactor start", lambda: connect(settings, need_redis=False))
    sampler = asyncio.create_task(sample_pool(pool, metrics))
    await run_compactor(pool, settings, metrics, stop)
    sampler.cancel()
    await pool.close()
    await redis.aclose()


def compactor_process(settings: Settings, name: str, pipe: Connection) -> None:
    """Entry point of a compactor process of role all: at a low CPU priority, so that on a busy
    machine ingest, loading and queries come first and compaction takes what is left."""
    name_process("runstream-compa")
    os.nice(COMPACTOR_NICENESS)
    configure_from_env()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_spawned_compactor(settings, pipe))

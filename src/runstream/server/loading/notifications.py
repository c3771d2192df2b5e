"""Loaders NOTIFY `runstream_loaded` with the run ids of every commit. One LISTEN connection
per process wakes whoever waits for points of those runs: live tails, and WaitCommitted."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from runstream.server.storage import db


class Notifications:
    """Wakes waiting tails when loaders commit points of their runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: Any = None
        self._lost = False  # the LISTEN connection was closed under us (killed, a failover)
        self._waiters: dict[asyncio.Event, set[str]] = {}
        self._lock = asyncio.Lock()

    async def listen(self) -> None:
        """LISTEN on a connection of the pool, anew once the last one was lost."""
        async with self._lock:
            if self._conn is not None and not self._lost:
                return
            if self._conn is not None:  # a lost connection: the pool closes it on release
                with contextlib.suppress(Exception):  # whatever state asyncpg left it in
                    await self.pool.release(self._conn)
                self._conn = None
            conn: Any = await self.pool.acquire()
            self._lost = False
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(db.LOADED_CHANNEL, self._notified)
            self._conn = conn

    def _terminated(self, conn: Any) -> None:
        """Notifications stop with the connection: wake every waiter to look again (and to
        listen anew), rather than wait for one that cannot come."""
        self._lost = True
        for event in self._waiters:
            event.set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        runs = set(payload.split(","))
        for event, wanted in self._waiters.items():
            if "*" in runs or wanted & runs:
                event.set()

    def register(self, run_ids: set[str]) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[event] = run_ids
        return event

    def unregister(self, event: asyncio.Event) -> None:
        self._waiters.pop(event, None)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a lost connection cannot be told to stop listening
                await self._conn.remove_listener(db.LOADED_CHANNEL, self._notified)
                await self.pool.release(self._conn)
            self._conn = None

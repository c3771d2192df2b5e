"""Loaders NOTIFY `runstream_loaded` with the run ids of every commit. One LISTEN connection
per process wakes whoever waits for points of those runs: live tails, and WaitCommitted."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from runstream.server.storage import store


class Notifications:
    """Wakes waiting tails when loaders commit points of their runs."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._conn: Any = None
        self._waiters: dict[asyncio.Event, set[str]] = {}
        self._lock = asyncio.Lock()

    async def listen(self) -> None:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self.pool.acquire()
                await self._conn.add_listener(store.LOADED_CHANNEL, self._notified)

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
            await self._conn.remove_listener(store.LOADED_CHANNEL, self._notified)
            await self.pool.release(self._conn)
            self._conn = None

"""Crashed runs: writers' heartbeats, and the watch that marks a RUNNING run CRASHED when none
of its writers was heard from for --crash-after. Part of the TrackingService (Heartbeat).

A run is marked only once a writer of it has sent a heartbeat (the SDK's writers do, every
RUNSTREAM_HEARTBEAT_S): runs of clients that never do (MLflow's API, scripts calling the RPCs
by hand) are never marked. Every server serving the TrackingService runs the watch; the
UPDATE is the same from each, so more of them do no harm."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from runstream.errors import RunNotFound
from runstream.server.storage import db, runs
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, pool: asyncpg.Pool, crash_after_s: float) -> None:
        self.pool = pool
        self.crash_after_s = crash_after_s
        self._task: asyncio.Task[None] | None = None

    async def Heartbeat(self, req: pb.HeartbeatRequest, ctx: Any) -> pb.HeartbeatResponse:
        wire.check_run_id(req.run_id)
        wire.check_writer_id(req.writer_id)
        async with self.pool.acquire() as conn:
            status = await runs.heard_from(conn, req.run_id)
        if status is None:
            raise RunNotFound(f"run {req.run_id} does not exist")
        return pb.HeartbeatResponse(status=status)  # type: ignore[arg-type]

    def start(self) -> None:
        if self.crash_after_s > 0:
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        period = min(30.0, max(self.crash_after_s / 4, 0.2))
        while True:
            await asyncio.sleep(period)
            try:
                async with self.pool.acquire() as conn:
                    marked = await runs.mark_crashed(conn, db.now_ms() - int(self.crash_after_s * 1000))
            except (OSError, asyncpg.PostgresError) as exc:  # the database away: look again later
                log.warning("cannot look for crashed runs: %s", exc)
                continue
            for row in marked:
                silent = (db.now_ms() - row.last_heard_ms) / 1000
                log.warning("run %s CRASHED: no writer heard from for %.0f s", row.run_id, silent)

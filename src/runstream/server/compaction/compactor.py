"""The compactor: merges each series' ingest chunks into compacted chunks (storage/codec.py).

Ingest chunks are cheap to write and expensive to keep (25 bytes a point, a row per loader
transaction and series). Once they are `delay_s` old, the compactor takes a series (its
advisory lock, so compactors in several processes share the work), decodes its due
ingest chunks and its last compacted chunk if that is not full, merges them in step order,
encodes them in chunks of up to COMPACTED_POINTS, and swaps old for new in one transaction.
Killed at any instant, its transaction is undone and the next round starts over.

A series of a running run waits until it has MIN_POINTS due points or its oldest chunk waited
MAX_WAIT_S; one of a run that ended is taken once its chunks are `delay_s` old. So a compacted
chunk is rewritten a bounded number of times while it grows to full size, at most once per
`delay_s` when late batches trickle into an ended run. A series that cannot be compacted (a
damaged chunk) is left as it is, said once, and tried again after SKIP_S; the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from runstream.server.compaction.mover import ColdMover
from runstream.server.runtime.failpoints import failpoint
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import chunks, codec, compaction
from runstream.server.storage.failures import database_away

log = logging.getLogger(__name__)

MIN_POINTS = 16_384
MAX_WAIT_S = 600.0
SERIES_PER_ROUND = 500
IDLE_S = 1.0  # pause when nothing is due
FOOTPRINT_EVERY_S = 60.0
SKIP_S = 600.0  # a series whose chunks do not decode is tried again after this


class Compactor:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics, delay_s: float, mover: ColdMover | None = None) -> None:
        self.pool = pool
        self.mover = mover  # the cold tier's, between rounds
        self.metrics = metrics
        self.delay_s = delay_s
        self.points = 0  # compacted by this compactor
        self._skipped: dict[int, float] = {}  # series id -> monotonic time to try it again
        self._footprint_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Compact until `stop` is set; the series at hand is finished first."""
        while not stop.is_set():
            try:
                done = await self.round()
                if self.mover is not None:
                    done += await self.mover.round()
                await self._refresh_footprint()
            except Exception as exc:
                if not database_away(exc):
                    raise
                log.warning("compactor: PostgreSQL is away (%s: %s); trying again", type(exc).__name__, exc)
                self.metrics.compaction_errors.inc()
                done = 0
            if not done:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_S)

    async def round(self) -> int:
        """Compact the series that are due now (up to SERIES_PER_ROUND); returns their points."""
        async with self.pool.acquire() as conn:
            due = await compaction.due_series(conn, self.delay_s, MIN_POINTS, MAX_WAIT_S, SERIES_PER_ROUND)
        now = time.monotonic()
        total = 0
        for d in due:
            if self._skipped.get(d.series_id, 0.0) > now:
                continue
            try:
                total += await self.compact(d.series_id)
            except Exception as exc:
                if database_away(exc):
                    raise  # the whole round waits for PostgreSQL
                # One series that cannot be compacted (damaged, or a bug) never stops the others.
                log.error("compactor: series %d left as it is: %s: %s", d.series_id, type(exc).__name__, exc,
                          exc_info=not isinstance(exc, codec.CorruptChunk))  # fmt: skip
                self.metrics.compaction_errors.inc()
                self._skipped[d.series_id] = time.monotonic() + SKIP_S
        return total

    async def compact(self, series_id: int) -> int:
        """Compact one series now; returns the points merged (0 if another compactor has it)."""
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await compaction.lock_series(conn, series_id):
                return 0
            rows = await compaction.chunks_to_merge(conn, series_id, self.delay_s, chunks.COMPACTED_POINTS)
            if not any(r["codec"] == codec.RAW for r in rows):
                return 0
            parts = [codec.decode(r["codec"], r["steps"], r["timestamps"], r["vals"]) for r in rows]
            if any(len(p[0]) != r["n"] for p, r in zip(parts, rows, strict=True)):
                raise codec.CorruptChunk("a chunk holds another number of points than its row says")
            records = chunks.compacted(series_id, parts)
            await compaction.swap(conn, series_id, [r["ctid"] for r in rows], records)
            failpoint("compactor.after_swap")
        points = sum(len(p[0]) for p in parts)
        self.points += points
        self.metrics.points_compacted.inc(points)
        self.metrics.compaction_seconds.observe(time.perf_counter() - started)
        return points

    async def _refresh_footprint(self) -> None:
        if time.monotonic() < self._footprint_at:
            return
        self._footprint_at = time.monotonic() + FOOTPRINT_EVERY_S
        async with self.pool.acquire() as conn:
            f = await compaction.footprint(conn)
        self.metrics.stored_points.set(f.points)
        self.metrics.stored_bytes.set(f.bytes)
        self.metrics.compaction_backlog.set(f.backlog_points)
        self.metrics.cold_points.set(f.cold_points)
        self.metrics.cold_bytes.set(f.cold_bytes)

"""The cold tier's mover: the points of runs that ended `--cold-after` ago leave PostgreSQL for
one object per run in the artifact store (storage/archive.py says what is in it).

A move: take the run (a session advisory lock, so movers in several compactors never meet),
record the object 'writing', write the run's compacted chunks to a temporary file in one
snapshot (a chunk already cold is copied from the run's older object), store it, read back its
size and SHA-256 from the store, and only then, in one transaction under the compactor's series
locks, point the chunks at their byte ranges and drop their columns, if they are still the rows
that were written (a compaction or a late batch meanwhile: the move is undone and tried later).
Killed at any instant, the rows still hold the points or point at a verified object; what was
written for nothing is recorded and deleted by the next pass. A store that is down delays moves;
no point leaves PostgreSQL before its object is verified. A run that gets late batches after
its move is moved again: its new object holds everything, and the older one is deleted once no
open read can still use it.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from runstream.errors import DataLoss, Unavailable
from runstream.server.artifacts.stores import ObjectStore
from runstream.server.runtime.failpoints import failpoint
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import archive, codec, cold
from runstream.server.storage.failures import database_away

log = logging.getLogger(__name__)

RUNS_PER_ROUND = 20
CHUNKS_PER_READ = 16  # cold chunks of a rewritten object fetched together
RETIRED_GRACE_S = (
    5.0  # a retired object outlives its retirement by this at least (a tail reads ranges just after its query)
)
SKIP_S = 600.0  # a run whose move failed is tried again after this
CLEAN_RETRY_S = 60.0  # deletes wait this long after the store refused one


def object_key(run_id: str) -> str:
    """A new object of a run's points, beside (not among) its artifacts."""
    return f"runs/{run_id}/metrics/{uuid.uuid4().hex}.rscold"


class ColdMover:
    def __init__(
        self, pool: asyncpg.Pool, open_store: Callable[[], Awaitable[ObjectStore]], metrics: Metrics, after_s: float
    ) -> None:
        self.pool = pool
        self._open_store = open_store
        self._store: ObjectStore | None = None
        self.metrics = metrics
        self.after_s = after_s
        self.runs = 0  # moved by this mover
        self._skipped: dict[str, float] = {}  # run id -> monotonic time to try it again
        self._store_retry_at = 0.0
        self._clean_at = 0.0  # deletes wait until then after the store failed one

    @property
    def store(self) -> ObjectStore:
        assert self._store is not None
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()

    async def round(self) -> int:
        """Delete what earlier moves left, then move the runs that are due; returns how many moved."""
        if self._store is None:  # opened here, not at start: a store that is down only delays moves
            if time.monotonic() < self._store_retry_at:
                return 0
            try:
                self._store = await self._open_store()
            except Unavailable as exc:
                log.warning("cold tier: the artifact store is unavailable; moves wait: %s", exc)
                self._store_retry_at = time.monotonic() + SKIP_S / 10
                return 0
        await self.clean()
        if self.after_s <= 0:  # --cold-after 0: no moves; objects of purged runs are still deleted
            return 0
        ended_before = int((time.time() - self.after_s) * 1000)
        async with self.pool.acquire() as conn:
            due = await cold.due_runs(conn, ended_before, RUNS_PER_ROUND)
        moved = 0
        for run_id in due:
            if self._skipped.get(run_id, 0.0) > time.monotonic():
                continue
            try:
                moved += await self.move(run_id)
            except Exception as exc:
                # The store down (an OSError too, so asked first), or a chunk that does not
                # decode: this run waits, the others go on. PostgreSQL away: the round waits.
                quiet = isinstance(exc, (Unavailable, DataLoss))
                if not quiet and database_away(exc):
                    raise
                log.log(logging.WARNING if isinstance(exc, Unavailable) else logging.ERROR,
                        "cold tier: run %s stays in PostgreSQL for now: %s: %s", run_id, type(exc).__name__, exc,
                        exc_info=not quiet)  # fmt: skip
                self.metrics.compaction_errors.inc()
                self._skipped[run_id] = time.monotonic() + SKIP_S
        return moved

    async def move(self, run_id: str) -> bool:
        """Move one run's points to a new object now; False if another mover has it, or its
        chunks changed while they were written (tried again later)."""
        async with self.pool.acquire() as holder:
            if not await cold.hold_run(holder, run_id):
                return False
            if not await cold.still_due(holder, run_id):  # another mover moved it meanwhile
                await cold.release_run(holder, run_id)
                return False
            key = object_key(run_id)
            object_id, settled = None, False
            try:
                object_id = await cold.begin_object(holder, run_id, key)
                with tempfile.TemporaryDirectory(prefix="runstream-cold-") as folder:
                    path = Path(folder) / "object"
                    done = await self._write(run_id, path)
                    if done is None:
                        return False
                    size, sha256, placed = done
                    await self.store.put_file(key, path, sha256)
                    if await self.store.digest_of(key) != (size, sha256):
                        raise archive_mismatch(key)
                failpoint("cold.before_settle")
                async with holder.transaction():
                    settled = await cold.settle(holder, run_id, object_id, size, sha256, placed)
                failpoint("cold.after_settle")
            finally:
                if object_id is not None and not settled:  # retired: the next pass deletes what was written
                    with contextlib.suppress(Exception):
                        await cold.retire(holder, object_id)
                await cold.release_run(holder, run_id)
        if settled:
            self.runs += 1
            self.metrics.cold_runs.inc()
            log.info("cold tier: run %s moved to %s (%d chunks, %d bytes)", run_id, key, len(placed), size)
        return settled

    async def _write(self, run_id: str, path: Path) -> tuple[int, str, list[tuple[Any, str, int, list[int]]]] | None:
        """Write the run's chunks to `path` from one snapshot: size, SHA-256 and where each chunk
        went, or None if the run has ingest chunks (compacted first) or none at all."""
        placed: list[tuple[Any, str, int, list[int]]] = []
        with path.open("wb") as out:
            writer = archive.ArchiveWriter(out, run_id)
            async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                batch: list[Any] = []
                async for row in cold.run_chunks(conn, run_id):
                    if row["codec"] == codec.RAW:
                        return None
                    batch.append(row)
                    if len(batch) >= CHUNKS_PER_READ:
                        placed += await self._add(writer, batch)
                        batch = []
                placed += await self._add(writer, batch)
            if not placed:
                return None
            sha256 = writer.finish()
        return writer.size, sha256, placed

    async def _add(self, writer: archive.ArchiveWriter, rows: list[Any]) -> list[tuple[Any, str, int, list[int]]]:
        out = []
        for r, chunk in zip(rows, await archive.chunk_bytes(rows, self.store), strict=True):
            where = writer.add(r["key"], r["writer_id"], r["first_step"], r["last_step"], r["n"], chunk, r["branch"])
            out.append((r["ctid"], r["version"], where.offset, list(where.sizes)))
        return out

    async def clean(self) -> None:
        """Delete from the store the objects no chunk points at any more (retired) or that a
        mover gone since was writing, then forget them."""
        if time.monotonic() < self._clean_at:
            return
        async with self.pool.acquire() as conn:
            for left in await cold.leftovers(conn, RETIRED_GRACE_S, RUNS_PER_ROUND):
                if left.state == "writing":
                    if not await cold.hold_run(conn, left.run_id):
                        continue  # a live mover is writing it
                    try:
                        # Asked again under the run's lock: its mover may have made it live since the list.
                        abandoned = await cold.retire(conn, left.object_id)
                    finally:
                        await cold.release_run(conn, left.run_id)
                    if not abandoned:
                        continue
                try:
                    await self.store.delete(left.key)
                except Unavailable as exc:
                    log.warning(
                        "cold tier: cannot delete %s yet (tried again in %.0f s): %s", left.key, CLEAN_RETRY_S, exc
                    )
                    self._clean_at = time.monotonic() + CLEAN_RETRY_S
                    return
                await cold.forget(conn, left.object_id)


def archive_mismatch(key: str) -> DataLoss:
    return DataLoss(f"the store holds other bytes at {key} than were written; the run stays in PostgreSQL")

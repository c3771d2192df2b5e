"""AdminService.PurgeRuns (`runstream admin gc`): runs deleted long enough ago go for good, as
`mlflow gc` does. Each run goes in its own transaction (its rows, its metrics' chunks; its cold
objects retire, for the compactors to delete once no read can use them), then its artifacts
leave the store. A run restored, or that a registered model version came from, is kept."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from runstream.errors import InvalidArgument, Unavailable
from runstream.server.artifacts.stores import ObjectStore
from runstream.server.storage import runs
from runstream.server.storage.db import now_ms
from runstream.wire import batch as wire
from runstream.wire.proto import admin_pb2 as adm

log = logging.getLogger(__name__)

DEFAULT_RUNS = 100
MAX_RUNS = 1_000


class RunPurger:
    def __init__(self, pool: asyncpg.Pool, objects: ObjectStore) -> None:
        self.pool = pool
        self.objects = objects

    async def PurgeRuns(self, req: adm.PurgeRunsRequest, ctx: Any) -> adm.PurgeRunsResponse:
        if req.older_than_ms < 0:
            raise InvalidArgument(f"older_than_ms is {req.older_than_ms}; give 0 or more milliseconds")
        limit = req.max_runs or DEFAULT_RUNS
        if not 0 < limit <= MAX_RUNS:
            raise InvalidArgument(f"max_runs is {limit:,}; it must be between 1 and {MAX_RUNS:,}")
        if len(req.run_ids) > MAX_RUNS:
            raise InvalidArgument(f"{len(req.run_ids):,} run_ids; name at most {MAX_RUNS:,} a call")
        for run_id in req.run_ids:
            wire.check_run_id(run_id)
        named = list(dict.fromkeys(req.run_ids)) or None
        if named is not None:
            limit = max(limit, len(named))  # every run named is answered, purged or kept
        cutoff = now_ms() - min(req.older_than_ms, now_ms() + 2**62)  # far past, never below int64
        async with self.pool.acquire() as conn:
            found = await runs.purgeable_runs(conn, cutoff, named, limit + 1)
        out = adm.PurgeRunsResponse(more=named is None and len(found) > limit)
        for candidate in found[:limit]:
            if candidate.why_not:
                out.skipped.add(run_id=candidate.run_id, reason=candidate.why_not)
            elif req.dry_run:
                out.purged.append(candidate.run_id)
            else:
                await self._purge(candidate.run_id, cutoff, out)
        return out

    async def _purge(self, run_id: str, cutoff: int, out: adm.PurgeRunsResponse) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            files = await runs.purge_run(conn, run_id, cutoff)
        if files is None:
            out.skipped.add(run_id=run_id, reason="changed meanwhile (restored, or a model version came from it)")
            return
        out.purged.append(run_id)
        deleted = 0
        for key in files.keys:
            try:
                await self.objects.delete(key)
                deleted += 1
            except Unavailable as exc:  # nothing points at it any more: said, for a person to remove
                log.warning("purge: run %s's artifact %s stays in the store: %s", run_id, key, exc)
                out.artifacts_left.append(key)
        for key, upload_id in files.uploads:
            try:
                await self.objects.abort_multipart(key, upload_id)
            except Unavailable as exc:
                log.warning("purge: run %s's unfinished upload %s stays in the store: %s", run_id, key, exc)
                out.artifacts_left.append(key)
        out.artifacts_deleted += deleted
        log.info(
            "purged run %s: its rows, %d artifacts, its cold objects (the compactors delete them)", run_id, deleted
        )

"""Rewinds and forks (storage/lineage.py has their SQL and the rules they keep).

A rewind moves what its run's writers logged above the step to branch N in one transaction:
chunks wholly above it are re-pointed (cold ones stay in their object), a chunk across it is
decoded and rewritten as two compacted chunks, one each side; then the run's summaries are
counted again from its chunks' own summaries. A fork's summaries are counted the same way, over
its ancestors' chunks up to where it forked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from runstream.errors import FailedPrecondition, RunNotFound
from runstream.server.storage import archive, chunks, codec, compaction, lineage, metrics, runs
from runstream.server.storage.db import Conn


async def rewind(conn: Conn, run_id: str, step: int, store: archive.RangeReader | None) -> int:
    """Rewind the run to `step` in the caller's transaction; returns the rewind's number."""
    stage = await runs.run_lifecycle(conn, run_id)
    if stage is None:
        raise RunNotFound(f"run {run_id} does not exist")
    if stage == "deleted":
        raise FailedPrecondition(f"run {run_id} is deleted; restore it to rewind it (runstream runs restore)")
    await lineage.lock_run(conn, run_id)
    forks = await lineage.forks_above(conn, run_id, step)
    if forks:
        raise FailedPrecondition(
            f"run {run_id} has forks made above step {step} ({', '.join(forks)}), which read its points "
            "up to their fork step; rewind to a step at or above theirs, or fork anew"
        )
    number = await lineage.record_rewind(conn, run_id, step)
    await lineage.lower_fork_step(conn, run_id, step)
    moves = await lineage.branch_series(conn, run_id, number)
    superseded = await lineage.move_chunks_above(conn, moves, step) if moves else 0
    across = await lineage.chunks_across(conn, list(moves), step) if moves else []
    if across:
        if store is None and any(archive.cold(r) for r in across):
            raise FailedPrecondition(
                f"run {run_id} is in the cold tier and this role has no artifact store to read it from; "
                "rewind it through a server that serves queries"
            )
        records = []
        for row, columns in zip(across, await _decoded(across, store), strict=True):
            below = columns[0] <= step
            steps, stamps, values = columns
            records += chunks.compacted(row["series_id"], [(steps[below], stamps[below], values[below])])
            records += chunks.compacted(moves[row["series_id"]], [(steps[~below], stamps[~below], values[~below])])
            superseded += int((~below).sum())
        await lineage.delete_chunks(conn, [r["ctid"] for r in across])
        await conn.copy_records_to_table("metric_chunks", records=records, columns=compaction.COMPACTED_COLUMNS)
    await lineage.count_superseded(conn, run_id, number, superseded)
    await recount(conn, run_id, store)
    await metrics.notify_loaded(conn, {run_id})
    return number


async def recount(conn: Conn, run_id: str, store: archive.RangeReader | None) -> None:
    """Count the run's summaries again from what it reads: its branch 0 and its ancestors' up
    to where it forked (only chunks across a fork step are decoded)."""
    series = await lineage.all_series(conn, run_id)
    found: dict[str, list[Any]] = {}  # key -> [last value, last step, last time, min, max, count]
    for r in await lineage.chunk_summaries(conn, series):
        fields = ("last_value", "last_step", "last_timestamp_ms", "min_value", "max_value", "count")
        _fold(found, r["key"], [r[f] for f in fields])
    beyond = await lineage.chunks_beyond(conn, series)
    key_of = {s.series_id: s.key for s in series}
    for row, (steps, stamps, values) in zip(beyond, await _decoded(beyond, store), strict=True):
        keep = steps <= row["upto"]
        if not keep.any():
            continue
        steps, stamps, values = steps[keep], stamps[keep], values[keep]
        order = np.lexsort((stamps, steps))  # the latest point: highest step, then time, then value
        tied = order[(steps[order] == steps[order[-1]]) & (stamps[order] == stamps[order[-1]])]
        last = max(tied.tolist(), key=lambda j: chunks.value_order(float(values[j])))
        entry = [float(values[last]), int(steps[last]), int(stamps[last])]
        entry += [float(np.fmin.reduce(values)), float(np.fmax.reduce(values)), len(steps)]
        _fold(found, key_of[row["series_id"]], entry)
    keys = sorted(found)
    columns = [keys] + [[found[k][j] for k in keys] for j in range(6)]
    await lineage.replace_summaries(conn, run_id, columns)


async def _decoded(rows: Sequence[Any], store: archive.RangeReader | None) -> list[codec.Columns]:
    return [codec.decode(c.codec, c.steps, c.timestamps, c.vals) for c in await archive.chunk_bytes(rows, store)]


def _fold(found: dict[str, list[Any]], key: str, entry: list[Any]) -> None:
    """Add one part's summary to a key's: the latest point by (step, time, value), NaN-skipping
    min and max (None or NaN: no number), counts summed."""
    entry[3] = math.nan if entry[3] is None else entry[3]
    entry[4] = math.nan if entry[4] is None else entry[4]
    have = found.get(key)
    if have is None:
        found[key] = entry
        return
    if (entry[1], entry[2], chunks.value_order(entry[0])) > (have[1], have[2], chunks.value_order(have[0])):
        have[0:3] = entry[0:3]
    have[3] = float(np.fmin(have[3], entry[3]))
    have[4] = float(np.fmax(have[4], entry[4]))
    have[5] += entry[5]

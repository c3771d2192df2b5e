"""The compactor's SQL: which series have ingest chunks to compact, taking a series' chunks
and swapping them for compacted ones in one transaction, and what storage holds.

A series is taken under a transaction-scoped advisory lock, so compactors in several processes
never work on one series at once; a compactor killed at any instant leaves its transaction
undone, and readers see either the old chunks or the new ones, never both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from runstream.server.storage.db import Conn
from runstream.server.storage.metrics import CHUNK_COLUMNS

COMPACTED_COLUMNS = (*CHUNK_COLUMNS, "codec", "sketch_scale", "sketch")
RUNNING = 1  # runs.status of a run still logging


class Due(NamedTuple):
    """A series with ingest chunks the compactor should merge now."""

    series_id: int
    chunks: int
    points: int


async def due_series(conn: Conn, delay_s: float, min_points: int, max_wait_s: float, limit: int) -> list[Due]:
    """Series whose ingest chunks loaded more than `delay_s` ago are due: of a run that is not
    running, or holding `min_points`, or loaded more than `max_wait_s` ago. Oldest first. (A run
    that ended waits `delay_s` too, so that batches arriving late, from a spool or MLflow's
    client, rewrite its last chunk at most once per `delay_s`.)"""
    rows = await conn.fetch(
        """SELECT c.series_id, count(*) AS chunks, sum(c.n)::int8 AS points
           FROM metric_chunks c
           JOIN metric_series s ON s.series_id = c.series_id
           JOIN runs r ON r.run_id = s.run_id
           WHERE c.codec = 0 AND c.loaded_at < now() - make_interval(secs => $1)
           GROUP BY c.series_id, r.status
           HAVING r.status <> $4 OR sum(c.n) >= $2 OR min(c.loaded_at) < now() - make_interval(secs => $3)
           ORDER BY min(c.loaded_at)
           LIMIT $5""",
        delay_s,
        min_points,
        max_wait_s,
        RUNNING,
        limit,
    )
    return [Due(*r) for r in rows]


async def lock_series(conn: Conn, series_id: int) -> bool:
    """Take a series for this transaction; False when another compactor has it."""
    taken: bool = await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('compact ' || $1::int8::text, 0))", series_id
    )
    return taken


async def chunks_to_merge(conn: Conn, series_id: int, delay_s: float, tail_below: int) -> list[asyncpg.Record]:
    """Inside the series' lock: its ingest chunks loaded more than `delay_s` ago, and its last
    compacted chunk if it holds fewer than `tail_below` points, so that compacted chunks grow
    to full size (unless it is cold: its run's object is rewritten instead). Records of ctid,
    codec, n, steps, timestamps, vals, in first-step order."""
    return await conn.fetch(
        """WITH tail AS (
             SELECT ctid FROM metric_chunks WHERE series_id = $1 AND codec <> 0
             ORDER BY last_step DESC LIMIT 1)
           SELECT c.ctid, c.codec, c.n, c.steps, c.timestamps, c.vals FROM metric_chunks c
           WHERE c.series_id = $1
             AND ((c.codec = 0 AND c.loaded_at < now() - make_interval(secs => $2))
                  OR (c.ctid IN (SELECT ctid FROM tail) AND c.n < $3 AND c.cold_object IS NULL))
           ORDER BY c.first_step""",
        series_id,
        delay_s,
        tail_below,
    )


async def swap(conn: Conn, series_id: int, old: Sequence[Any], records: Sequence[tuple[Any, ...]]) -> None:
    """Replace the chunks `old` (ctids) of a series by compacted `records`, inside the caller's
    transaction."""
    await conn.execute("DELETE FROM metric_chunks WHERE series_id = $1 AND ctid = ANY($2::tid[])", series_id, old)
    await conn.copy_records_to_table("metric_chunks", records=records, columns=COMPACTED_COLUMNS)


class Footprint(NamedTuple):
    """What metric points cost in PostgreSQL."""

    points: int
    chunks: int
    compacted_points: int
    backlog_points: int  # in ingest chunks, waiting for the compactor
    bytes: int  # metric_chunks with its TOAST and indexes
    live_bytes: int  # the live rows with their TOAST: without free space and indexes
    cold_points: int  # in the cold tier: their rows keep summaries and sketches, the points are in objects
    cold_objects: int
    cold_bytes: int  # of those objects, in the artifact store


async def footprint(conn: Conn) -> Footprint:
    row = await conn.fetchrow(
        """SELECT coalesce(sum(n), 0)::int8 AS points, count(*) AS chunks,
                  coalesce(sum(n) FILTER (WHERE codec <> 0), 0)::int8 AS compacted_points,
                  coalesce(sum(n) FILTER (WHERE codec = 0), 0)::int8 AS backlog_points,
                  pg_total_relation_size('metric_chunks') AS bytes,
                  coalesce(sum(pg_column_size(metric_chunks.*)), 0)::int8 AS live_bytes,
                  coalesce(sum(n) FILTER (WHERE cold_object IS NOT NULL), 0)::int8 AS cold_points,
                  (SELECT count(*) FROM cold_objects WHERE state = 'live') AS cold_objects,
                  (SELECT coalesce(sum(size), 0)::int8 FROM cold_objects WHERE state = 'live') AS cold_bytes
           FROM metric_chunks"""
    )
    assert row is not None
    return Footprint(**row)

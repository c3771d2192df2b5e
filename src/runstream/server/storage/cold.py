"""The cold tier's SQL: which runs are due to move, their chunks, the objects they move to,
and the one transaction that moves a run's chunks to its object (compaction/mover.py).

An object is recorded 'writing' before any byte is written, 'live' in the transaction that
points the chunks at it, and 'retired' when a newer object of its run replaces it; retired
objects, and 'writing' ones no mover holds, are deleted from the store and then forgotten. So a
mover killed at any instant leaves nothing the next pass does not clean up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from runstream.server.storage.db import Conn
from runstream.server.storage.metrics import COLD_JOIN, POINT_COLUMNS

ENDED = (2, 3, 4, 5)  # runs.status: FINISHED, FAILED, KILLED, CRASHED


class Leftover(NamedTuple):
    """An object to delete from the store: retired, or written by a mover that is gone."""

    object_id: int
    run_id: str
    key: str
    state: str


async def due_runs(conn: Conn, ended_before_ms: int, limit: int) -> list[str]:
    """Runs that ended before `ended_before_ms` and still hold points in PostgreSQL, all of
    them compacted (ingest chunks are compacted first), longest ended first."""
    rows = await conn.fetch(
        """SELECT r.run_id::text FROM runs r
           WHERE r.status = ANY($1::int2[])
             AND coalesce(r.end_time_ms, r.last_heard_ms, r.start_time_ms) < $2
             AND EXISTS (SELECT 1 FROM metric_series s JOIN metric_chunks c ON c.series_id = s.series_id
                         WHERE s.run_id = r.run_id AND c.cold_object IS NULL)
             AND NOT EXISTS (SELECT 1 FROM metric_series s JOIN metric_chunks c ON c.series_id = s.series_id
                             WHERE s.run_id = r.run_id AND c.codec = 0)
           ORDER BY coalesce(r.end_time_ms, r.last_heard_ms, r.start_time_ms)
           LIMIT $3""",
        list(ENDED),
        ended_before_ms,
        limit,
    )
    return [r[0] for r in rows]


async def hold_run(conn: Conn, run_id: str) -> bool:
    """Take a run for this session (a move, or deleting an object a mover may still write);
    False when another process has it. release_run gives it back."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended('cold ' || $1::text, 0))", run_id)
    return taken


async def release_run(conn: Conn, run_id: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended('cold ' || $1::text, 0))", run_id)


async def still_due(conn: Conn, run_id: str) -> bool:
    """Whether a run taken with hold_run still has points to move (another mover may have
    moved it since due_runs listed it) and no ingest chunks."""
    due: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM metric_series s JOIN metric_chunks c ON c.series_id = s.series_id
                          WHERE s.run_id = $1 AND c.cold_object IS NULL)
              AND NOT EXISTS (SELECT 1 FROM metric_series s JOIN metric_chunks c ON c.series_id = s.series_id
                              WHERE s.run_id = $1 AND c.codec = 0)""",
        run_id,
    )
    return due


async def begin_object(conn: Conn, run_id: str, key: str) -> int:
    """Record an object about to be written (committed before the first byte goes)."""
    object_id: int = await conn.fetchval(
        "INSERT INTO cold_objects (run_id, key, state) VALUES ($1, $2, 'writing') RETURNING object_id", run_id, key
    )
    return object_id


def run_chunks(conn: Conn, run_id: str) -> Any:
    """A cursor (inside a transaction) over every chunk of a run, by key, writer and first
    step: records of ctid, version (ctid and xmin: the row version, new after any change), key,
    writer_id, branch (0, or the rewind that superseded them), first_step, last_step, n and metrics.POINT_COLUMNS."""
    return conn.cursor(
        f"""SELECT c.ctid, c.ctid::text || '/' || c.xmin::text AS version,
                   s.key, s.writer_id, s.branch, c.first_step, c.last_step, c.n, {POINT_COLUMNS}
            FROM metric_series s JOIN metric_chunks c ON c.series_id = s.series_id {COLD_JOIN}
            WHERE s.run_id = $1
            ORDER BY s.branch, s.key COLLATE "C", s.writer_id COLLATE "C", c.first_step""",
        run_id,
        prefetch=16,
    )


async def settle(
    conn: Conn,
    run_id: str,
    object_id: int,
    size: int,
    sha256: str,
    placed: Sequence[tuple[Any, str, int, Sequence[int]]],
) -> bool:
    """Point the run's chunks at the object (ctid, version, offset, column sizes each), in the
    caller's transaction, if they are still exactly the row versions `placed` names (no
    compaction or late batch since they were read); the run's older object retires. False:
    nothing changed."""
    await conn.execute(
        """SELECT pg_advisory_xact_lock(hashtextextended('compact ' || series_id::text, 0))
           FROM metric_series WHERE run_id = $1 ORDER BY series_id""",
        run_id,
    )  # the compactor's series locks: none of the run's chunks changes until this commits
    now = await conn.fetch(
        """SELECT c.ctid::text || '/' || c.xmin::text FROM metric_series s
           JOIN metric_chunks c ON c.series_id = s.series_id WHERE s.run_id = $1""",
        run_id,
    )
    if {r[0] for r in now} != {p[1] for p in placed}:
        return False
    await conn.execute(
        """UPDATE metric_chunks c
           SET steps = NULL, timestamps = NULL, vals = NULL,
               cold_object = $1, cold_offset = p.off, cold_sizes = ARRAY[p.s, p.t, p.v]
           FROM unnest($2::tid[], $3::int8[], $4::int4[], $5::int4[], $6::int4[]) AS p(ctid, off, s, t, v)
           WHERE c.ctid = p.ctid""",
        object_id,
        [p[0] for p in placed],
        [p[2] for p in placed],
        [p[3][0] for p in placed],
        [p[3][1] for p in placed],
        [p[3][2] for p in placed],
    )
    await conn.execute(
        """UPDATE cold_objects SET state = 'retired', retired_at = now()
           WHERE run_id = $1 AND state = 'live' AND object_id <> $2""",
        run_id,
        object_id,
    )
    await conn.execute(
        "UPDATE cold_objects SET state = 'live', size = $2, sha256 = $3 WHERE object_id = $1", object_id, size, sha256
    )
    return True


async def retire(conn: Conn, object_id: int) -> bool:
    """An object whose move did not happen: to be deleted. False if it is not being written
    (any more): it went live, or is retired already."""
    done: str = await conn.execute(
        "UPDATE cold_objects SET state = 'retired', retired_at = now() WHERE object_id = $1 AND state = 'writing'",
        object_id,
    )
    return done == "UPDATE 1"


async def leftovers(conn: Conn, grace_s: float, limit: int) -> list[Leftover]:
    """Objects to delete from the store: 'writing' ones (a mover may still be writing those:
    take the run with hold_run before deleting), and those retired `grace_s` ago that no open
    transaction can still read (a read's snapshot, begun before they retired, may point at
    them; a tail reads a range just after its query)."""
    rows = await conn.fetch(
        """SELECT object_id, run_id::text, key, state FROM cold_objects
           WHERE state = 'writing'
              OR (state = 'retired' AND retired_at < now() - make_interval(secs => $1)
                  AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                  WHERE xact_start <= cold_objects.retired_at AND pid <> pg_backend_pid()
                                    AND datname = current_database()))
           ORDER BY object_id LIMIT $2""",
        grace_s,
        limit,
    )
    return [Leftover(*r) for r in rows]


async def forget(conn: Conn, object_id: int) -> None:
    """An object deleted from the store; no chunk points at a retired or unfinished object."""
    await conn.execute("DELETE FROM cold_objects WHERE object_id = $1 AND state <> 'live'", object_id)

"""Rewinds and forks, their SQL.

A rewind (a resumed job went back to a checkpoint's step) moves the points its run's writers
had logged above the step to series of branch N, N being the rewind's number; every read takes
branch 0. It records each writer's latest session (writer_epochs) at that moment, so that a
batch of an earlier session that arrives later (a dead job's spool, synced after) is loaded
into the branch too (loading/loader.py asks `rewinds_and_forks`).

A rewind holds the rewind locks of its run and of the run's ancestors, which every loader
transaction holds shared for the runs it loads (`hold_runs`): no batch is half loaded while
the chunks move or the summaries are counted again, and a loader that starts after the rewind
sees it. Making a fork holds the same locks.

A fork reads its parent's points up to its fork step as its own (metrics.metric_series and
tail_series walk the lineage); its summaries are counted from its own and its ancestors'
chunks (`chunk_summaries`, `chunks_beyond`), and loaders count later points of its ancestors
up to the step into them (`rewinds_and_forks`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import asyncpg

from runstream.server.storage.db import Conn, now_ms
from runstream.server.storage.metrics import COLD_JOIN, LINEAGE, MAX_FORK_DEPTH, POINT_COLUMNS, SeriesRow

MAX_FORKS_LISTED = 1000


class Supersedes(NamedTuple):
    """What the loaders need of one rewind: batches of `epochs` or earlier sessions of each
    writer (one missing: none) go to branch `number` for their steps above `step`."""

    run_id: str
    number: int
    step: int
    epochs: dict[str, int]


class Descendant(NamedTuple):
    """A fork of run `run_id` (or of its forks, down the line) that reads its points up to `upto`."""

    run_id: str
    fork_id: str
    upto: int


class RewindRow(NamedTuple):
    number: int
    step: int
    time_ms: int
    superseded: int


class Lineage(NamedTuple):
    """A run's place among forks: the runs forked from it, and its rewinds."""

    fork_ids: list[str]
    rewinds: list[RewindRow]


# ---------------------------------------------------------------- the loaders' side


async def hold_runs(conn: Conn, run_ids: Collection[str]) -> None:
    """Inside a loader's transaction, before it reads `rewinds_and_forks`: a rewind of these runs
    waits for it, and it for one under way. In one order, so two loaders never deadlock."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('rewind ' || r, 0)) FROM unnest($1::text[]) AS r",
        sorted(run_ids),
    )


async def rewinds_and_forks(conn: Conn, run_ids: Collection[str]) -> tuple[list[Supersedes], list[Descendant]]:
    """The rewinds of these runs (by run and number), and their forks, down the forks of forks."""
    rows = await conn.fetch(
        f"""WITH RECURSIVE d(run_id, fork_id, upto, depth) AS (
              SELECT parent_run_id, run_id, fork_step, 1 FROM runs WHERE parent_run_id = ANY($1::uuid[])
              UNION ALL
              SELECT d.run_id, r.run_id, least(d.upto, r.fork_step), d.depth + 1
              FROM d JOIN runs r ON r.parent_run_id = d.fork_id WHERE d.depth < {MAX_FORK_DEPTH})
            SELECT true AS rewind, run_id::text, number::text AS other, step, writers, epochs FROM run_rewinds
            WHERE run_id = ANY($1::uuid[])
            UNION ALL
            SELECT false, run_id::text, fork_id::text, upto, NULL, NULL FROM d
            ORDER BY 1 DESC, 2, 3""",
        list(run_ids),
    )
    rewinds = [Supersedes(r[1], int(r[2]), r[3], dict(zip(r[4], r[5], strict=True))) for r in rows if r[0]]
    return rewinds, [Descendant(r[1], r[2], r[3]) for r in rows if not r[0]]


async def rewinds_since(conn: Conn, run_id: str, known: int) -> list[int]:
    """The steps of the run's rewinds after the first `known`."""
    rows = await conn.fetch(
        "SELECT step FROM run_rewinds WHERE run_id = $1 AND number > $2 ORDER BY number", run_id, known
    )
    return [r[0] for r in rows]


# ---------------------------------------------------------------- a rewind


async def lock_run(conn: Conn, run_id: str) -> None:
    """Inside the caller's transaction: wait for the loaders of the run and of its ancestors
    (their points count in its summaries), keep new ones out, and hold the compactors' locks of
    its series (no chunk of it is rewritten meanwhile)."""
    await lock_lineage(conn, run_id)
    await conn.execute(
        """SELECT pg_advisory_xact_lock(hashtextextended('compact ' || series_id::text, 0))
           FROM metric_series WHERE run_id = $1 ORDER BY series_id""",
        run_id,
    )


async def lock_lineage(conn: Conn, run_id: str) -> None:
    """Inside the caller's transaction: the rewind locks of a fork and its ancestors, so their
    loaders' transactions under way end first and the next ones see the fork."""
    await conn.execute(
        f"""{LINEAGE}
            SELECT pg_advisory_xact_lock(hashtextextended('rewind ' || r, 0))
            FROM (SELECT run_id::text AS r FROM lineage ORDER BY 1) AS l""",
        run_id,
    )


async def lower_fork_step(conn: Conn, run_id: str, step: int) -> None:
    """A fork rewound below its fork step reads its parent up to `step` from now on."""
    await conn.execute(
        "UPDATE runs SET fork_step = least(fork_step, $2) WHERE run_id = $1 AND parent_run_id IS NOT NULL",
        run_id,
        step,
    )


async def forks_above(conn: Conn, run_id: str, step: int) -> list[str]:
    """Forks of the run made above `step` (a rewind to it would change what they read)."""
    rows = await conn.fetch(
        "SELECT run_id::text FROM runs WHERE parent_run_id = $1 AND fork_step > $2 ORDER BY run_id LIMIT 10",
        run_id,
        step,
    )
    return [r[0] for r in rows]


async def record_rewind(conn: Conn, run_id: str, step: int) -> int:
    """Record a rewind with each writer's latest session; returns its number (1, 2, ...)."""
    number: int = await conn.fetchval(
        """INSERT INTO run_rewinds (run_id, number, step, rewound_ms, writers, epochs, superseded)
           SELECT $1, coalesce((SELECT max(number) FROM run_rewinds WHERE run_id = $1), 0) + 1, $2, $3,
                  coalesce(array_agg(writer_id ORDER BY writer_id), '{}'),
                  coalesce(array_agg(epoch ORDER BY writer_id), '{}'), 0
           FROM writer_epochs WHERE run_id = $1
           RETURNING number""",
        run_id,
        step,
        now_ms(),
    )
    return number


async def branch_series(conn: Conn, run_id: str, number: int) -> dict[int, int]:
    """Series of branch `number` for every series of branch 0 of the run: {branch 0 id: its id}."""
    await conn.execute(
        """INSERT INTO metric_series (run_id, key, writer_id, branch)
           SELECT run_id, key, writer_id, $2 FROM metric_series WHERE run_id = $1 AND branch = 0
           ORDER BY key, writer_id
           ON CONFLICT DO NOTHING""",
        run_id,
        number,
    )
    rows = await conn.fetch(
        """SELECT s.series_id, b.series_id FROM metric_series s
           JOIN metric_series b ON b.run_id = s.run_id AND b.key = s.key AND b.writer_id = s.writer_id
                                AND b.branch = $2
           WHERE s.run_id = $1 AND s.branch = 0""",
        run_id,
        number,
    )
    return {r[0]: r[1] for r in rows}


async def move_chunks_above(conn: Conn, moves: dict[int, int], step: int) -> int:
    """Point the chunks wholly above `step` of each series at its branch series (cold chunks
    stay where they are in the store); returns their points."""
    moved: int = await conn.fetchval(
        """WITH moved AS (
             UPDATE metric_chunks c SET series_id = m.branch
             FROM unnest($1::int8[], $2::int8[]) AS m(series_id, branch)
             WHERE c.series_id = m.series_id AND c.first_step > $3
             RETURNING c.n)
           SELECT coalesce(sum(n), 0)::int8 FROM moved""",
        list(moves),
        list(moves.values()),
        step,
    )
    return moved


async def chunks_across(conn: Conn, series_ids: Sequence[int], step: int) -> list[asyncpg.Record]:
    """Chunks holding points on both sides of `step`: records of ctid, series_id and POINT_COLUMNS."""
    return await conn.fetch(
        f"""SELECT c.ctid, c.series_id, {POINT_COLUMNS} FROM metric_chunks c {COLD_JOIN}
            WHERE c.series_id = ANY($1::int8[]) AND c.first_step <= $2 AND c.last_step > $2""",
        list(series_ids),
        step,
    )


async def delete_chunks(conn: Conn, ctids: Sequence[Any]) -> None:
    await conn.execute("DELETE FROM metric_chunks WHERE ctid = ANY($1::tid[])", list(ctids))


async def count_superseded(conn: Conn, run_id: str, number: int, points: int) -> None:
    await conn.execute(
        "UPDATE run_rewinds SET superseded = $3 WHERE run_id = $1 AND number = $2", run_id, number, points
    )


# ---------------------------------------------------------------- summaries of a run and its lineage


async def all_series(conn: Conn, run_id: str) -> list[SeriesRow]:
    """Every series a run reads (branch 0 of it and of its ancestors, each up to where its
    child forked: `upto`)."""
    rows = await conn.fetch(
        f"""{LINEAGE}
            SELECT s.series_id, s.run_id::text, s.key, s.writer_id, l.upto
            FROM lineage l JOIN metric_series s ON s.run_id = l.run_id AND s.branch = 0
            ORDER BY s.series_id""",
        run_id,
    )
    return list(map(SeriesRow._make, rows))


async def chunk_summaries(conn: Conn, series: Sequence[SeriesRow]) -> list[asyncpg.Record]:
    """Per key, what the chunks wholly within each series' `upto` hold: records of key, count,
    min_value and max_value (NaN-skipping, NULL when none), and the latest chunk's last point
    (last_step, last_timestamp_ms, last_value), by (step, timestamp, value)."""
    return await conn.fetch(
        """SELECT s.key, sum(c.n)::int8 AS count,
                  min(c.min_value) FILTER (WHERE c.min_value <> 'NaN') AS min_value,
                  max(c.max_value) FILTER (WHERE c.max_value <> 'NaN') AS max_value,
                  max(c.last_step) AS last_step,
                  (array_agg(coalesce(c.last_timestamp, 0)
                             ORDER BY c.last_step DESC, coalesce(c.last_timestamp, 0) DESC, c.last_value DESC))[1]
                    AS last_timestamp_ms,
                  (array_agg(c.last_value
                             ORDER BY c.last_step DESC, coalesce(c.last_timestamp, 0) DESC, c.last_value DESC))[1]
                    AS last_value
           FROM unnest($1::int8[], $2::int8[], $3::text[]) AS s(series_id, upto, key)
           JOIN metric_chunks c ON c.series_id = s.series_id AND (s.upto IS NULL OR c.last_step <= s.upto)
           GROUP BY s.key""",
        [s.series_id for s in series],
        [s.upto for s in series],
        [s.key for s in series],
    )


async def chunks_beyond(conn: Conn, series: Sequence[SeriesRow]) -> list[asyncpg.Record]:
    """Chunks across a series' `upto` (some of their points are read, the rest are not):
    records of series_id, upto and POINT_COLUMNS."""
    capped = [s for s in series if s.upto is not None]
    return await conn.fetch(
        f"""SELECT c.series_id, s.upto, {POINT_COLUMNS}
            FROM unnest($1::int8[], $2::int8[]) AS s(series_id, upto)
            JOIN metric_chunks c ON c.series_id = s.series_id AND c.first_step <= s.upto AND c.last_step > s.upto
            {COLD_JOIN}""",
        [s.series_id for s in capped],
        [s.upto for s in capped],
    )


async def replace_summaries(conn: Conn, run_id: str, columns: Sequence[Sequence[Any]]) -> None:
    """The run's summaries become these: keys, last_values, last_steps, last_timestamps, mins,
    maxs, counts (one entry per key)."""
    await conn.execute("DELETE FROM metric_summaries WHERE run_id = $1", run_id)
    await conn.execute(
        """INSERT INTO metric_summaries
             (run_id, key, last_value, last_step, last_timestamp_ms, min_value, max_value, count)
           SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::int8[], $5::int8[],
                                    $6::float8[], $7::float8[], $8::int8[])""",
        run_id,
        *columns,
    )


# ---------------------------------------------------------------- forks and what GetRun shows


async def lineage(conn: Conn, run_id: str) -> Lineage:
    forks = await conn.fetch(
        "SELECT run_id::text FROM runs WHERE parent_run_id = $1 ORDER BY start_time_ms, run_id LIMIT $2",
        run_id,
        MAX_FORKS_LISTED,
    )
    rewinds = await conn.fetch(
        "SELECT number, step, rewound_ms, superseded FROM run_rewinds WHERE run_id = $1 ORDER BY number", run_id
    )
    return Lineage([r[0] for r in forks], list(map(RewindRow._make, rewinds)))

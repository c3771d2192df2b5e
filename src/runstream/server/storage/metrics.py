"""Metric points: series (run x key x writer), writer sessions and the batch records that
make a resend a no-op, the loaders' writes (chunks by binary COPY, summaries, NOTIFY), and the
reads of histories, whole series and live tails.

Chunk rows (history_chunks, chunk_points, series_chunk_cursor, chunks_after, chunks_between) stay asyncpg
records: those reads are large and hot, and their packed arrays go straight to numpy, so they
are not copied into a row class first. Each function says which columns it gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import asyncpg

from runstream.server.storage.db import LOADED_CHANNEL, Conn

# A batch as recorded: (run, writer, epoch, seq) names it, with its points and digest.
BatchKey = tuple[str, str, int, int]
BatchIdentity = tuple[str, str, int, int, int, bytes]


class SeriesRow(NamedTuple):
    """One writer's points of one key of a run; read up to step `upto` when it is an
    ancestor's series that a fork reads (None: every step)."""

    series_id: int
    run_id: str
    key: str
    writer_id: str
    upto: int | None


_SERIES_COLUMNS = "series_id, run_id::text AS run_id, key, writer_id, NULL::int8 AS upto"  # SeriesRow's fields

MAX_FORK_DEPTH = 64  # forks of forks: reads walk this many ancestors at most
# A run ($1, depth 0, every step) and its ancestors, each with the last step its descendant reads.
LINEAGE = f"""WITH RECURSIVE lineage(run_id, upto, depth) AS (
        SELECT $1::uuid, NULL::int8, 0
        UNION ALL
        SELECT r.parent_run_id, least(l.upto, r.fork_step), l.depth + 1
        FROM lineage l JOIN runs r ON r.run_id = l.run_id
        WHERE r.parent_run_id IS NOT NULL AND l.depth < {MAX_FORK_DEPTH})"""


class ChunkExtent(NamedTuple):
    """What chunks overlapping a step range hold: None for first and last step when there are none."""

    first_step: int | None
    last_step: int | None
    points: int


# ---------------------------------------------------------------- writer sessions and batch records


async def next_writer_epoch(conn: Conn, run_id: str, writer_id: str) -> int:
    """A new session of this writer in this run: 1, 2, 3..."""
    epoch: int = await conn.fetchval(
        """INSERT INTO writer_epochs (run_id, writer_id, epoch) VALUES ($1, $2, 1)
           ON CONFLICT (run_id, writer_id) DO UPDATE SET epoch = writer_epochs.epoch + 1
           RETURNING epoch""",
        run_id,
        writer_id,
    )
    return epoch


async def committed_batches(conn: Conn, run_id: str, writer_id: str, epoch: int) -> int:
    """How many batches of one writer session the loaders have stored."""
    found: int = await conn.fetchval(
        "SELECT count(*) FROM ingested_batches WHERE run_id = $1 AND writer_id = $2 AND epoch = $3",
        run_id,
        writer_id,
        epoch,
    )
    return found


async def stored_of(conn: Conn, run_id: str, writer_id: str, epoch: int, seqs: Sequence[int]) -> int:
    """How many of the batches `seqs` of one writer session the loaders have stored."""
    found: int = await conn.fetchval(
        """SELECT count(*) FROM ingested_batches
           WHERE run_id = $1 AND writer_id = $2 AND epoch = $3 AND seq = ANY($4::bigint[])""",
        run_id,
        writer_id,
        epoch,
        list(seqs),
    )
    return found


async def record_batches(conn: Conn, batches: list[BatchIdentity]) -> tuple[set[BatchKey], set[BatchKey]]:
    """Record batches as loaded; returns those not recorded before, and those recorded before
    with another digest (a seq reused with other points). The rest are resends.

    Inside the loader's transaction: a concurrent loader holding the same batch waits on
    the primary key and then sees it as already recorded.
    """
    if not batches:
        return set(), set()
    columns = list(zip(*batches, strict=True))
    rows = await conn.fetch(
        """INSERT INTO ingested_batches (run_id, writer_id, epoch, seq, points, digest)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::int4[], $6::bytea[])
           ORDER BY 1, 2, 3, 4
           ON CONFLICT DO NOTHING
           RETURNING run_id::text, writer_id, epoch, seq""",
        *columns,
    )
    new = {(r[0], r[1], r[2], r[3]) for r in rows}
    if len(new) == len(batches):
        return new, set()
    again = [b for b in batches if (b[0], b[1], b[2], b[3]) not in new]
    stored = await conn.fetch(
        """SELECT i.run_id::text, i.writer_id, i.epoch, i.seq, i.digest
           FROM ingested_batches i
           JOIN unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[]) AS b(run_id, writer_id, epoch, seq)
             USING (run_id, writer_id, epoch, seq)""",
        *list(zip(*again, strict=True))[:4],
    )
    digest_of = {b[:4]: b[5] for b in again}
    conflicting = {
        (r[0], r[1], r[2], r[3]) for r in stored if r[4] is not None and r[4] != digest_of[(r[0], r[1], r[2], r[3])]
    }
    return new, conflicting


# ---------------------------------------------------------------- the loaders' writes


async def series_ids(
    conn: Conn, keys: Sequence[tuple[str, str, str]], branch: int = 0
) -> dict[tuple[str, str, str], int]:
    """Ids of the series (run_id, key, writer_id) of `branch` (0: what reads show; N: what
    rewind N superseded), creating the missing ones."""
    runs, names, writers = (list(col) for col in zip(*keys, strict=True))
    await conn.execute(
        """INSERT INTO metric_series (run_id, key, writer_id, branch)
           SELECT *, $4 FROM unnest($1::uuid[], $2::text[], $3::text[]) ORDER BY 1, 2, 3
           ON CONFLICT DO NOTHING""",
        runs,
        names,
        writers,
        branch,
    )
    rows = await conn.fetch(
        """SELECT s.run_id::text, s.key, s.writer_id, s.series_id
           FROM metric_series s JOIN unnest($1::uuid[], $2::text[], $3::text[]) AS t(r, k, w)
             ON s.run_id = t.r AND s.key = t.k AND s.writer_id = t.w AND s.branch = $4""",
        runs,
        names,
        writers,
        branch,
    )
    return {(r[0], r[1], r[2]): r[3] for r in rows}


CHUNK_COLUMNS = (
    "series_id",
    "first_step",
    "last_step",
    "n",
    "min_value",
    "max_value",
    "first_value",
    "last_value",
    "steps",
    "timestamps",
    "vals",
    "last_timestamp",
)


async def copy_chunks(conn: Conn, records: Iterable[tuple[Any, ...]]) -> None:
    """Binary COPY of chunk rows (one record per chunk, in CHUNK_COLUMNS order)."""
    await conn.copy_records_to_table("metric_chunks", records=records, columns=CHUNK_COLUMNS)


async def upsert_summaries(conn: Conn, columns: Sequence[Sequence[Any]]) -> None:
    """Fold per-key summaries into metric_summaries.

    `columns`: run_ids, keys, last_values, last_steps, last_timestamps, mins, maxs, counts,
    one entry per (run, key), sorted so that concurrent loaders lock rows in one order.
    The last value is the latest point by (step, timestamp, value), as in chunks._latest.
    NaN never wins min or max unless both sides are NaN.
    """
    await conn.execute(
        """INSERT INTO metric_summaries AS s
             (run_id, key, last_value, last_step, last_timestamp_ms, min_value, max_value, count)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::int8[], $5::int8[],
                                $6::float8[], $7::float8[], $8::int8[])
           ON CONFLICT (run_id, key) DO UPDATE SET
             last_value = CASE WHEN (excluded.last_step, excluded.last_timestamp_ms, excluded.last_value)
                                    > (s.last_step, s.last_timestamp_ms, s.last_value)
                               THEN excluded.last_value ELSE s.last_value END,
             last_timestamp_ms = CASE WHEN (excluded.last_step, excluded.last_timestamp_ms, excluded.last_value)
                                           > (s.last_step, s.last_timestamp_ms, s.last_value)
                                      THEN excluded.last_timestamp_ms ELSE s.last_timestamp_ms END,
             last_step = greatest(s.last_step, excluded.last_step),
             min_value = CASE WHEN s.min_value = 'NaN' THEN excluded.min_value
                              WHEN excluded.min_value = 'NaN' THEN s.min_value
                              ELSE least(s.min_value, excluded.min_value) END,
             max_value = CASE WHEN s.max_value = 'NaN' THEN excluded.max_value
                              WHEN excluded.max_value = 'NaN' THEN s.max_value
                              ELSE greatest(s.max_value, excluded.max_value) END,
             count = s.count + excluded.count""",
        *columns,
    )


_NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8,000 bytes or more


async def notify_loaded(conn: Conn, run_ids: set[str]) -> None:
    """Tell tails which runs got points; PostgreSQL delivers it when the transaction commits."""
    payload = ",".join(sorted(run_ids))
    await conn.execute("SELECT pg_notify($1, $2)", LOADED_CHANNEL, payload if len(payload) < _NOTIFY_LIMIT else "*")


# ---------------------------------------------------------------- metric histories

# A chunk's points: its own columns, or for a cold chunk (columns NULL) the object and byte
# range holding them. archive.chunk_bytes reads either.
POINT_COLUMNS = "c.codec, c.steps, c.timestamps, c.vals, o.key AS cold_key, c.cold_offset, c.cold_sizes"
COLD_JOIN = "LEFT JOIN cold_objects o ON o.object_id = c.cold_object"


async def metric_series(conn: Conn, run_id: str, key: str, writer: str | None, branch: int = 0) -> list[SeriesRow]:
    """The series of a run's key, every writer or one, in writer order (by code point, whatever
    the database's collation, as Python compares strings). Branch 0 (the points as they stand)
    walks a fork's lineage: its ancestors' series come first in each writer's, with `upto`.
    Branch N is what the run's rewind N superseded."""
    if branch:
        rows = await conn.fetch(
            f"""SELECT {_SERIES_COLUMNS} FROM metric_series
                WHERE run_id = $1 AND key = $2 AND ($3::text IS NULL OR writer_id = $3) AND branch = $4
                ORDER BY writer_id COLLATE "C" """,
            run_id,
            key,
            writer,
            branch,
        )
        return list(map(SeriesRow._make, rows))
    rows = await conn.fetch(
        f"""{LINEAGE}
            SELECT s.series_id, s.run_id::text, s.key, s.writer_id, l.upto
            FROM lineage l JOIN metric_series s ON s.run_id = l.run_id AND s.key = $2 AND s.branch = 0
            WHERE $3::text IS NULL OR s.writer_id = $3
            ORDER BY s.writer_id COLLATE "C", l.depth DESC""",
        run_id,
        key,
        writer,
    )
    return list(map(SeriesRow._make, rows))


async def chunk_extent(conn: Conn, series_ids: list[int], lo: int, hi: int) -> ChunkExtent:
    """First step, last step and point count of the chunks overlapping [lo, hi]."""
    row = await conn.fetchrow(
        """SELECT min(first_step) AS first_step, max(last_step) AS last_step, coalesce(sum(n), 0) AS points
           FROM metric_chunks WHERE series_id = ANY($1::int8[]) AND last_step >= $2 AND first_step <= $3""",
        series_ids,
        lo,
        hi,
    )
    assert row is not None
    return ChunkExtent(**row)


async def history_chunks(conn: Conn, series: Sequence[SeriesRow], lo: int, hi: int) -> list[asyncpg.Record]:
    """What is known of the chunks overlapping [lo, hi] (and each series' `upto`) without their
    points, in the order of `series`, then by first step: records of ctid, series_id, first_step,
    last_step, n, min_value, max_value, first_value, last_value, last_timestamp, codec,
    sketch_scale, sketch (compacted chunks; NULL for ingest chunks) and upto (the series').
    chunk_points gives their points."""
    columns = """c.ctid, c.series_id, c.first_step, c.last_step, c.n, c.min_value, c.max_value, c.first_value,
                 c.last_value, c.last_timestamp, c.codec, c.sketch_scale, c.sketch"""
    if all(s.upto is None for s in series):
        return await conn.fetch(
            f"""SELECT {columns}, NULL::int8 AS upto FROM metric_chunks c
                WHERE c.series_id = ANY($1::int8[]) AND c.last_step >= $2 AND c.first_step <= $3
                ORDER BY array_position($1::int8[], c.series_id), c.first_step""",
            [s.series_id for s in series],
            lo,
            hi,
        )
    return await conn.fetch(  # a fork's: its ancestors' series up to where it forked
        f"""SELECT {columns}, s.upto FROM unnest($1::int8[], $4::int8[]) WITH ORDINALITY AS s(series_id, upto, o)
            JOIN metric_chunks c ON c.series_id = s.series_id AND c.last_step >= $2
                                 AND c.first_step <= least($3, s.upto)
            ORDER BY s.o, c.first_step""",
        [s.series_id for s in series],
        lo,
        hi,
        [s.upto for s in series],
    )


async def chunk_points(conn: Conn, ctids: list[Any], with_time: bool) -> dict[Any, asyncpg.Record]:
    """The points of the chunks `ctids` (from history_chunks, in the same transaction) by ctid:
    records of POINT_COLUMNS (timestamps NULL unless `with_time`), for archive.chunk_bytes."""
    rows = await conn.fetch(
        f"""SELECT c.ctid, {POINT_COLUMNS.replace("c.timestamps", "CASE WHEN $2 THEN c.timestamps END AS timestamps")}
            FROM metric_chunks c {COLD_JOIN} WHERE c.ctid = ANY($1::tid[])""",
        ctids,
        with_time,
    )
    return {r["ctid"]: r for r in rows}


def series_chunk_cursor(conn: Conn, series_id: int, lo: int, hi: int) -> Any:
    """A cursor (inside a transaction) over one series' chunks overlapping [lo, hi], by first
    step: records of first_step, last_step and POINT_COLUMNS."""
    return conn.cursor(
        f"""SELECT c.first_step, c.last_step, {POINT_COLUMNS} FROM metric_chunks c {COLD_JOIN}
            WHERE c.series_id = $1 AND c.last_step >= $2 AND c.first_step <= $3 ORDER BY c.first_step""",
        series_id,
        lo,
        hi,
        prefetch=64,
    )


# ---------------------------------------------------------------- live tails


async def tail_series(conn: Conn, run_id: str, keys: list[str]) -> list[SeriesRow]:
    """The series a live tail of the run reads, of `keys` (every key when empty), by key, writer
    and lineage: a fork's ancestors' first (`upto`: their last step it reads), then its own."""
    rows = await conn.fetch(
        f"""{LINEAGE}
            SELECT s.series_id, s.run_id::text, s.key, s.writer_id, l.upto
            FROM lineage l JOIN metric_series s ON s.run_id = l.run_id AND s.branch = 0
            WHERE cardinality($2::text[]) = 0 OR s.key = ANY($2::text[])
            ORDER BY s.key, s.writer_id, l.depth DESC""",
        run_id,
        keys,
    )
    return list(map(SeriesRow._make, rows))


async def chunks_after(conn: Conn, series_ids: list[int], after: list[int]) -> list[asyncpg.Record]:
    """Chunks holding steps beyond each series' cursor (`after[i]` for `series_ids[i]`): records
    of series_id and POINT_COLUMNS, by series and first step."""
    return await conn.fetch(
        f"""SELECT c.series_id, {POINT_COLUMNS}
            FROM unnest($1::int8[], $2::int8[]) AS cur(series_id, after)
            JOIN metric_chunks c ON c.series_id = cur.series_id AND c.last_step > cur.after {COLD_JOIN}
            ORDER BY c.series_id, c.first_step""",
        series_ids,
        after,
    )


async def chunks_between(conn: Conn, series_ids: list[int], after: list[int], upto: list[int]) -> list[asyncpg.Record]:
    """Chunks holding steps in (`after[i]`, `upto[i]`] of `series_ids[i]`: a tail's stored points
    up to where the shared reader it joins has read (records as chunks_after's)."""
    return await conn.fetch(
        f"""SELECT c.series_id, {POINT_COLUMNS}
            FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS cur(series_id, after, upto)
            JOIN metric_chunks c
              ON c.series_id = cur.series_id AND c.last_step > cur.after AND c.first_step <= cur.upto {COLD_JOIN}
            ORDER BY c.series_id, c.first_step""",
        series_ids,
        after,
        upto,
    )


async def last_steps(conn: Conn, series_ids: list[int]) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT series_id, max(last_step) AS step FROM metric_chunks WHERE series_id = ANY($1::int8[]) "
        "GROUP BY series_id",
        series_ids,
    )
    return {r["series_id"]: r["step"] for r in rows}

"""Every SQL statement runstream runs, and the versioned migrations that shape the schema.

The server's handlers and the loaders call these functions; nothing else talks SQL.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import asyncpg

from runstream.errors import AlreadyExists, ExperimentNotFound, ParamConflict, RunNotFound
from runstream.server.storage.search import Order

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
MIGRATION_NAME = re.compile(r"(\d{4})_(\w+)\.sql")
# Any constant works; it only has to be the same in every runstream process.
MIGRATION_LOCK = 0x72756E73


def now_ms() -> int:
    return int(time.time() * 1000)


# A batch as recorded: (run, writer, epoch, seq) names it, with its points and digest.
BatchKey = tuple[str, str, int, int]
BatchIdentity = tuple[str, str, int, int, int, bytes]

# ---------------------------------------------------------------- migrations


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in runstream/server/storage/migrations, in order."""
    found = []
    for entry in resources.files("runstream.server.storage").joinpath("migrations").iterdir():
        m = MIGRATION_NAME.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text()))
    return sorted(found)


async def migrate(conn: Conn) -> list[int]:
    """Apply the migrations this database has not seen; returns the versions applied.

    An advisory lock makes concurrent server starts apply each migration once.
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied_now.append(version)
    return applied_now


async def deployment(conn: Conn) -> tuple[str, str | None]:
    """This database's deployment id (made by migration 0010) and the instance it was made in."""
    row = await conn.fetchrow("SELECT deployment_id::text AS id, instance FROM deployment")
    if row is None:  # migration 0010 made it; only a hand-edited database has none
        raise RuntimeError("the deployment table is empty: restore its row (see migration 0010)")
    return str(row["id"]), row["instance"]


async def set_deployment(conn: Conn, instance: str, new_id: bool = False) -> str:
    """Record the instance this database is now in (and give it a new deployment id)."""
    return str(
        await conn.fetchval(
            """UPDATE deployment SET instance = $1,
                      deployment_id = CASE WHEN $2 THEN gen_random_uuid() ELSE deployment_id END
               RETURNING deployment_id::text""",
            instance,
            new_id,
        )
    )


async def database_instance(conn: Conn) -> str:
    """Which database this is: the cluster's system identifier and the database's name ("" for
    the identifier where the server does not show it, as some managed services do not)."""
    try:
        system = await conn.fetchval("SELECT system_identifier::text FROM pg_control_system()")
    except asyncpg.InsufficientPrivilegeError:
        system = ""
    return f"{system}/{await conn.fetchval('SELECT current_database()')}"


# ---------------------------------------------------------------- experiments


@dataclass
class ExperimentRow:
    experiment_id: int
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time_ms: int
    tags: dict[str, str] = field(default_factory=dict)


_EXPERIMENT_COLUMNS = "experiment_id, name, artifact_location, lifecycle_stage, creation_time_ms"


async def _experiment_with_tags(conn: Conn, row: asyncpg.Record) -> ExperimentRow:
    tags = await conn.fetch("SELECT key, value FROM experiment_tags WHERE experiment_id = $1", row[0])
    return ExperimentRow(**dict(row), tags={t["key"]: t["value"] for t in tags})


async def create_experiment(conn: Conn, name: str, artifact_location: str, tags: dict[str, str]) -> ExperimentRow:
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""INSERT INTO experiments (name, artifact_location, creation_time_ms)
                VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING RETURNING {_EXPERIMENT_COLUMNS}""",
            name,
            artifact_location,
            now_ms(),
        )
        if row is None:
            raise AlreadyExists(f"experiment {name!r} already exists")
        await conn.executemany(
            "INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3)",
            [(row[0], k, v) for k, v in tags.items()],
        )
        return await _experiment_with_tags(conn, row)


async def get_experiment(conn: Conn, *, experiment_id: int | None = None, name: str | None = None) -> ExperimentRow:
    if experiment_id is not None:
        row = await conn.fetchrow(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE experiment_id = $1", experiment_id
        )
        missing = f"experiment {experiment_id} does not exist"
    else:
        row = await conn.fetchrow(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE name = $1", name)
        missing = f"experiment named {name!r} does not exist"
    if row is None:
        raise ExperimentNotFound(missing)
    return await _experiment_with_tags(conn, row)


async def get_or_create_experiment(conn: Conn, name: str) -> int:
    """The id of the experiment named `name`, creating it (safely under concurrency) if missing."""
    row = await conn.fetchrow(
        """INSERT INTO experiments (name, creation_time_ms) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING experiment_id""",
        name,
        now_ms(),
    )
    assert row is not None
    return int(row[0])


async def list_experiments(conn: Conn, limit: int, after_id: int) -> list[ExperimentRow]:
    rows = await conn.fetch(
        f"""SELECT {_EXPERIMENT_COLUMNS} FROM experiments
            WHERE experiment_id > $1 AND lifecycle_stage = 'active' ORDER BY experiment_id LIMIT $2""",
        after_id,
        limit,
    )
    return [await _experiment_with_tags(conn, r) for r in rows]


EXPERIMENT_COUNTS = ("runs", "running", "finished", "failed", "killed", "deleted_runs", "last_run_start_ms")


async def experiments_with_counts(
    conn: Conn, include_deleted: bool, name_like: str, limit: int, offset: int
) -> list[tuple[ExperimentRow, dict[str, int]]]:
    """Experiments with their run counts (EXPERIMENT_COUNTS), the latest activity first."""
    rows = await conn.fetch(
        f"""SELECT {", ".join("e." + c for c in _EXPERIMENT_COLUMNS.split(", "))},
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'active') AS runs,
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'active' AND r.status = 1) AS running,
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'active' AND r.status = 2) AS finished,
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'active' AND r.status = 3) AS failed,
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'active' AND r.status = 4) AS killed,
                   count(r.run_id) FILTER (WHERE r.lifecycle_stage = 'deleted') AS deleted_runs,
                   coalesce(max(r.start_time_ms), 0) AS last_run_start_ms
            FROM experiments e LEFT JOIN runs r USING (experiment_id)
            WHERE ($1 OR e.lifecycle_stage = 'active') AND ($2 = '' OR e.name LIKE $2)
            GROUP BY e.experiment_id
            ORDER BY greatest(e.creation_time_ms, max(r.start_time_ms)) DESC, e.experiment_id DESC
            LIMIT $3 OFFSET $4""",
        include_deleted,
        name_like,
        limit,
        offset,
    )
    tags = await conn.fetch(
        "SELECT experiment_id, key, value FROM experiment_tags WHERE experiment_id = ANY($1::int8[])",
        [r["experiment_id"] for r in rows],
    )
    by_experiment: dict[int, dict[str, str]] = {}
    for t in tags:
        by_experiment.setdefault(t["experiment_id"], {})[t["key"]] = t["value"]
    columns = _EXPERIMENT_COLUMNS.split(", ")
    return [
        (
            ExperimentRow(**{c: r[c] for c in columns}, tags=by_experiment.get(r["experiment_id"], {})),
            {c: int(r[c]) for c in EXPERIMENT_COUNTS},
        )
        for r in rows
    ]


# ---------------------------------------------------------------- runs


@dataclass
class RunRow:
    run_id: str
    experiment_id: int
    name: str
    status: int
    start_time_ms: int
    end_time_ms: int | None
    lifecycle_stage: str
    last_heard_ms: int | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[asyncpg.Record] = field(default_factory=list)
    metric_count: int = 0  # keys in all; `metrics` may hold only the first of them


# A run's metric summaries in one answer; the rest page through run_metrics.
RUN_METRICS = 1_000
# Summaries in one SearchRuns answer, shared among its runs (each gets 10 to RUN_METRICS): a run with
# 250,000 keys must not push a page of runs past the message limit.
SEARCH_METRICS = 20_000
_SUMMARY_COLUMNS = "key, last_value, last_step, last_timestamp_ms, min_value, max_value, count"

_RUN_COLUMNS = "run_id::text, experiment_id, name, status, start_time_ms, end_time_ms, lifecycle_stage, last_heard_ms"


async def create_run(
    conn: Conn, run_id: str, experiment_id: int, name: str, status: int, start_time_ms: int, tags: dict[str, str]
) -> bool:
    """False when a run with this id exists already (a client-made id created again)."""
    async with conn.transaction():
        try:
            inserted = await conn.fetchval(
                """INSERT INTO runs (run_id, experiment_id, name, status, start_time_ms)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id) DO NOTHING RETURNING true""",
                run_id,
                experiment_id,
                name,
                status,
                start_time_ms,
            )
        except asyncpg.ForeignKeyViolationError:
            raise ExperimentNotFound(f"experiment {experiment_id} does not exist") from None
        if not inserted:
            return False
        await conn.executemany(
            "INSERT INTO tags (run_id, key, value) VALUES ($1, $2, $3)", [(run_id, k, v) for k, v in tags.items()]
        )
        return True


async def get_run(conn: Conn, run_id: str, keys: list[str] | None = None) -> RunRow:
    """A run with its params, tags and the summaries of `keys` (default: its first RUN_METRICS
    keys; `metric_count` says how many it has)."""
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist")
    run = RunRow(*row)
    run.params = {r[0]: r[1] for r in await conn.fetch("SELECT key, value FROM params WHERE run_id = $1", run_id)}
    run.tags = {r[0]: r[1] for r in await conn.fetch("SELECT key, value FROM tags WHERE run_id = $1", run_id)}
    if keys is None:
        run.metrics = await run_metrics(conn, run_id, "", RUN_METRICS)
    else:
        run.metrics = await conn.fetch(
            f"""SELECT {_SUMMARY_COLUMNS} FROM metric_summaries
                WHERE run_id = $1 AND key = ANY($2::text[]) ORDER BY key""",
            run_id,
            keys,
        )
    run.metric_count = await conn.fetchval("SELECT count(*) FROM metric_summaries WHERE run_id = $1", run_id)
    return run


async def run_keys(conn: Conn, run_id: str) -> list[str]:
    return [r[0] for r in await conn.fetch("SELECT key FROM metric_summaries WHERE run_id = $1", run_id)]


async def run_metrics(conn: Conn, run_id: str, after: str, limit: int) -> list[asyncpg.Record]:
    """A run's metric summaries in key order, from the key after `after`."""
    return await conn.fetch(
        f"""SELECT {_SUMMARY_COLUMNS} FROM metric_summaries
            WHERE run_id = $1 AND key > $2 ORDER BY key LIMIT $3""",
        run_id,
        after,
        limit,
    )


async def run_lifecycle(conn: Conn, run_id: str) -> str | None:
    """'active' or 'deleted' for a run that exists, None for one that does not."""
    value: str | None = await conn.fetchval("SELECT lifecycle_stage FROM runs WHERE run_id = $1", run_id)
    return value


async def update_run(conn: Conn, run_id: str, status: int | None, end_time_ms: int | None, name: str | None) -> None:
    result = await conn.execute(
        """UPDATE runs SET status = coalesce($2, status),
                           end_time_ms = coalesce($3, end_time_ms),
                           name = coalesce($4, name)
           WHERE run_id = $1""",
        run_id,
        status,
        end_time_ms,
        name,
    )
    if result == "UPDATE 0":
        raise RunNotFound(f"run {run_id} does not exist")


async def log_params(conn: Conn, run_id: str, params: dict[str, str]) -> None:
    """Record params; the same value again is fine, a different one is a ParamConflict."""
    keys, values = list(params), list(params.values())
    async with conn.transaction():
        try:
            await conn.execute(
                """INSERT INTO params (run_id, key, value)
                   SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
                   ON CONFLICT (run_id, key) DO NOTHING""",
                run_id,
                keys,
                values,
            )
        except asyncpg.ForeignKeyViolationError:
            raise RunNotFound(f"run {run_id} does not exist") from None
        stored = await conn.fetch(
            "SELECT key, value FROM params WHERE run_id = $1 AND key = ANY($2::text[]) ORDER BY key", run_id, keys
        )
        for row in stored:  # inside the transaction: a refused request keeps none of its params
            if row["value"] != params[row["key"]]:
                raise ParamConflict(
                    f"param {row['key']!r} of run {run_id} was already logged as {row['value']!r}; "
                    f"params are immutable, so {params[row['key']]!r} was refused"
                )


async def set_tags(conn: Conn, run_id: str, tags: dict[str, str]) -> None:
    try:
        await conn.execute(
            """INSERT INTO tags (run_id, key, value)
               SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
               ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value""",
            run_id,
            list(tags),
            list(tags.values()),
        )
    except asyncpg.ForeignKeyViolationError:
        raise RunNotFound(f"run {run_id} does not exist") from None


async def delete_tag(conn: Conn, run_id: str, key: str) -> bool:
    result = await conn.execute("DELETE FROM tags WHERE run_id = $1 AND key = $2", run_id, key)
    return bool(result != "DELETE 0")


# ---------------------------------------------------------------- the loaders' writes


async def series_ids(conn: Conn, keys: Sequence[tuple[str, str, str]]) -> dict[tuple[str, str, str], int]:
    """Ids of the series (run_id, key, writer_id), creating the missing ones."""
    runs, names, writers = (list(col) for col in zip(*keys, strict=True))
    await conn.execute(
        """INSERT INTO metric_series (run_id, key, writer_id)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ORDER BY 1, 2, 3
           ON CONFLICT DO NOTHING""",
        runs,
        names,
        writers,
    )
    rows = await conn.fetch(
        """SELECT s.run_id::text, s.key, s.writer_id, s.series_id
           FROM metric_series s JOIN unnest($1::uuid[], $2::text[], $3::text[]) AS t(r, k, w)
             ON s.run_id = t.r AND s.key = t.k AND s.writer_id = t.w""",
        runs,
        names,
        writers,
    )
    return {(r[0], r[1], r[2]): r[3] for r in rows}


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


# ---------------------------------------------------------------- metric histories


async def metric_series(conn: Conn, run_id: str, key: str, writer: str | None) -> list[asyncpg.Record]:
    """(series_id, writer_id) of a run's key, every writer or one, in writer order (by code
    point, whatever the database's collation, as Python compares strings)."""
    if writer is None:
        return await conn.fetch(
            "SELECT series_id, writer_id FROM metric_series WHERE run_id = $1 AND key = $2 "
            'ORDER BY writer_id COLLATE "C"',
            run_id,
            key,
        )
    return await conn.fetch(
        "SELECT series_id, writer_id FROM metric_series WHERE run_id = $1 AND key = $2 AND writer_id = $3",
        run_id,
        key,
        writer,
    )


async def chunk_extent(conn: Conn, series_ids: list[int], lo: int, hi: int) -> asyncpg.Record:
    """first step, last step and point count of the chunks overlapping [lo, hi]."""
    row = await conn.fetchrow(
        """SELECT min(first_step) AS first_step, max(last_step) AS last_step, coalesce(sum(n), 0) AS points
           FROM metric_chunks WHERE series_id = ANY($1::int8[]) AND last_step >= $2 AND first_step <= $3""",
        series_ids,
        lo,
        hi,
    )
    assert row is not None
    return row


async def window_chunks(conn: Conn, series_ids: list[int], lo: int, hi: int) -> tuple[int, list[bytes]]:
    """For counting the points in [lo, hi] exactly: the points of the chunks wholly inside (their
    `n`), and the steps of only the chunks that cross an end of the window."""
    inside = await conn.fetchval(
        """SELECT coalesce(sum(n), 0) FROM metric_chunks
           WHERE series_id = ANY($1::int8[]) AND first_step >= $2 AND last_step <= $3""",
        series_ids,
        lo,
        hi,
    )
    crossing = await conn.fetch(
        """SELECT steps FROM metric_chunks
           WHERE series_id = ANY($1::int8[]) AND last_step >= $2 AND first_step <= $3
             AND (first_step < $2 OR last_step > $3)""",
        series_ids,
        lo,
        hi,
    )
    return int(inside), [r["steps"] for r in crossing]


HISTORY_CHUNKS_SQL = """SELECT series_id, first_step, last_step, n, min_value, max_value, first_value, last_value,
                  CASE WHEN whole THEN NULL ELSE steps END AS steps,
                  CASE WHEN $5 THEN timestamps END AS timestamps,  -- buckets carry no timestamps
                  CASE WHEN whole THEN NULL ELSE vals END AS vals
           FROM (SELECT *, NOT $5 AND first_step >= $2 AND last_step <= $3
                           AND (first_step - $2) / $4 = (last_step - $2) / $4 AS whole
                 FROM metric_chunks
                 WHERE series_id = ANY($1::int8[]) AND last_step >= $2 AND first_step <= $3) c
           ORDER BY array_position($1::int8[], series_id), first_step"""


async def history_chunks(
    conn: Conn, series_ids: list[int], lo: int, hi: int, width: int, decode_all: bool
) -> list[asyncpg.Record]:
    """Chunks overlapping [lo, hi], in the order of `series_ids`, then by first step.
    Their arrays come back only where they are needed: for every chunk with `decode_all`,
    else for chunks crossing a bucket boundary (buckets of `width` steps from `lo`) or the
    range's ends; the others are used by their summaries."""
    return await conn.fetch(
        HISTORY_CHUNKS_SQL,
        series_ids,
        lo,
        hi,
        width,
        decode_all,
    )


def series_chunk_cursor(conn: Conn, series_id: int, lo: int, hi: int) -> Any:
    """A cursor (inside a transaction) over one series' chunks overlapping [lo, hi], by first step."""
    return conn.cursor(
        """SELECT first_step, last_step, steps, timestamps, vals FROM metric_chunks
           WHERE series_id = $1 AND last_step >= $2 AND first_step <= $3 ORDER BY first_step""",
        series_id,
        lo,
        hi,
        prefetch=64,
    )


# ---------------------------------------------------------------- artifacts


async def create_upload(conn: Conn, upload: dict[str, Any]) -> None:
    await conn.execute(
        """INSERT INTO artifact_uploads (upload_id, run_id, path, object_key, size, sha256, content_type,
                                         multipart_id, part_size, created_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        upload["upload_id"],
        upload["run_id"],
        upload["path"],
        upload["object_key"],
        upload["size"],
        upload["sha256"],
        upload["content_type"],
        upload["multipart_id"],
        upload["part_size"],
        now_ms(),
    )


async def lock_object_key(conn: Conn, key: str) -> None:
    """Serialize, until the transaction ends, everyone choosing or replacing this key."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


async def object_key_taken(conn: Conn, run_id: str, key: str) -> bool:
    """Whether a recorded artifact or an open upload of the run uses `key`."""
    taken: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM artifacts WHERE run_id = $1::uuid AND object_key = $2)
               OR EXISTS (SELECT 1 FROM artifact_uploads WHERE run_id = $1::uuid AND object_key = $2)""",
        run_id,
        key,
    )
    return taken


async def lock_run_artifacts(conn: Conn, run_id: str) -> None:
    """Until the transaction ends: one upload of this run is counted at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('artifacts of ' || $1, 0))", run_id)


async def run_artifact_bytes(conn: Conn, run_id: str) -> int:
    """Bytes of the run's stored artifacts plus its uploads under way."""
    used: int = await conn.fetchval(
        """SELECT coalesce((SELECT sum(size) FROM artifacts WHERE run_id = $1), 0)
                + coalesce((SELECT sum(size) FROM artifact_uploads WHERE run_id = $1), 0)""",
        run_id,
    )
    return int(used)


async def get_upload(conn: Conn, upload_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT upload_id::text, run_id::text, path, object_key, size, sha256, content_type, multipart_id,
                  part_size, created_ms
           FROM artifact_uploads WHERE upload_id = $1::uuid""",
        upload_id,
    )


async def delete_upload(conn: Conn, upload_id: str) -> None:
    await conn.execute("DELETE FROM artifact_uploads WHERE upload_id = $1::uuid", upload_id)


async def stale_uploads(conn: Conn, created_before_ms: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT upload_id::text, run_id::text, path, object_key, multipart_id
           FROM artifact_uploads WHERE created_ms < $1""",
        created_before_ms,
    )


async def record_artifact(conn: Conn, upload: Mapping[str, Any]) -> tuple[asyncpg.Record, str | None]:
    """Record a completed upload as the run's artifact at its path; returns the row and the
    object key of the artifact it replaced (None when the path was new)."""
    replaced: str | None = await conn.fetchval(
        "SELECT object_key FROM artifacts WHERE run_id = $1::uuid AND path = $2 FOR UPDATE",
        upload["run_id"],
        upload["path"],
    )
    row = await conn.fetchrow(
        """INSERT INTO artifacts (run_id, path, object_key, size, sha256, content_type, created_ms)
           VALUES ($1::uuid, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (run_id, path) DO UPDATE SET object_key = excluded.object_key, size = excluded.size,
               sha256 = excluded.sha256, content_type = excluded.content_type, created_ms = excluded.created_ms
           RETURNING path, size, sha256, content_type, created_ms""",
        upload["run_id"],
        upload["path"],
        upload["object_key"],
        upload["size"],
        upload["sha256"],
        upload["content_type"],
        now_ms(),
    )
    assert row is not None
    return row, replaced


async def get_artifact(conn: Conn, run_id: str, path: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT path, object_key, size, sha256, content_type, created_ms FROM artifacts
           WHERE run_id = $1::uuid AND path = $2""",
        run_id,
        path,
    )


async def delete_artifact(conn: Conn, run_id: str, path: str) -> str | None:
    """The deleted artifact's object key, or None when there was none."""
    key: str | None = await conn.fetchval(
        "DELETE FROM artifacts WHERE run_id = $1::uuid AND path = $2 RETURNING object_key", run_id, path
    )
    return key


async def model_version_using(conn: Conn, run_id: str, path: str) -> tuple[str, int] | None:
    """A registered model version whose source is this artifact (or a directory holding it)."""
    row = await conn.fetchrow(
        """SELECT m.name, v.version FROM model_versions v JOIN registered_models m USING (model_id)
           WHERE v.run_id = $1::uuid AND ($2 = v.artifact_path OR starts_with($2, v.artifact_path || '/'))
           ORDER BY m.name, v.version LIMIT 1""",
        run_id,
        path,
    )
    return (row["name"], row["version"]) if row else None


async def list_artifacts(conn: Conn, run_id: str, prefix: str) -> list[asyncpg.Record]:
    """Files and directories directly under `prefix` ("" or ending in "/"): one row per name,
    a directory's size summing everything under it."""
    return await conn.fetch(
        """SELECT $2 || split_part(rest, '/', 1) AS path, strpos(rest, '/') > 0 AS is_dir,
                  sum(size)::int8 AS size, max(sha256) AS sha256, max(content_type) AS content_type,
                  max(created_ms) AS created_ms
           FROM (SELECT substr(path, length($2) + 1) AS rest, size, sha256, content_type, created_ms
                 FROM artifacts WHERE run_id = $1::uuid AND starts_with(path, $2)) under
           GROUP BY 1, 2 ORDER BY 1, 2""",
        run_id,
        prefix,
    )


# ---------------------------------------------------------------- run search


_RUN_SCOPE = (
    "(cardinality($1::int8[]) = 0 OR r.experiment_id = ANY($1::int8[])) AND ($2 OR r.lifecycle_stage = 'active')"
)


def search_runs_sql(where: str, order: Order, leading: str = "any") -> str:
    """The page query of search_runs: $1 experiment ids, $2 include deleted, $3 LIMIT, $4 OFFSET.
    With an ordering metric, param or tag first, `leading` picks the runs that have it ("with",
    an inner join) or lack it ("without"); "any" takes both."""
    columns = ", ".join(f"r.{c}" for c in _RUN_COLUMNS.split(", "))
    joins = [f"LEFT JOIN {j}" for j in order.joins]
    items = list(order.items)
    absent = ""
    if leading == "with":
        joins[0], items[0] = f"JOIN {order.joins[0]}", order.leading  # no NULLs: an index's order
    elif leading == "without":
        absent = " AND o0.run_id IS NULL"
    return (
        f"SELECT {columns} FROM runs r {' '.join(joins)} WHERE {_RUN_SCOPE} AND {where}{absent} "
        f"ORDER BY {', '.join(items)} LIMIT $3 OFFSET $4"
    )


async def count_runs(
    conn: Conn, experiment_ids: list[int], include_deleted: bool, where: str, where_args: Sequence[Any]
) -> int:
    """How many runs search_runs would return over all pages ($3 and $4 are its LIMIT and
    OFFSET: LIMIT NULL is no limit)."""
    count = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT 1 FROM runs r WHERE {_RUN_SCOPE} AND {where} LIMIT $3 OFFSET $4) matching",
        experiment_ids,
        include_deleted,
        None,
        0,
        *where_args,
    )
    return int(count)


async def search_runs(
    conn: Conn,
    experiment_ids: list[int],
    include_deleted: bool,
    where: str,
    order_by: Order,
    where_args: Sequence[Any],
    limit: int,
    offset: int,
) -> list[RunRow]:
    """Runs matching `where` (built by runstream.search with parameters numbered from $5),
    in `order_by` order, with their params, tags and metric summaries. Ordered first by a
    metric, param or tag, the runs having it are read first (an index on it gives the top of
    the order without reading every run), then, if the page goes past them, those without."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):  # one snapshot for every query
        rows = await _search_page(conn, (experiment_ids, include_deleted), where, order_by, where_args, limit, offset)
        return await _with_details(conn, [RunRow(*row) for row in rows])


async def _search_page(
    conn: Conn, scope: tuple[Any, ...], where: str, order_by: Order, where_args: Sequence[Any], limit: int, offset: int
) -> list[asyncpg.Record]:
    if not order_by.leading:
        return await conn.fetch(search_runs_sql(where, order_by), *scope, limit, offset, *where_args)
    rows = await conn.fetch(search_runs_sql(where, order_by, "with"), *scope, limit, offset, *where_args)
    if len(rows) < limit:
        having = offset + len(rows)
        if not rows and offset:  # the page starts past them: how many are there?
            query = search_runs_sql(where, order_by, "with")
            having = await conn.fetchval(f"SELECT count(*) FROM ({query}) h", *scope, None, 0, *where_args)
        query = search_runs_sql(where, order_by, "without")
        rows += await conn.fetch(query, *scope, limit - len(rows), max(0, offset - having), *where_args)
    return rows


async def _with_details(conn: Conn, runs: list[RunRow]) -> list[RunRow]:
    """The runs with their params, tags and (the first few) metric summaries."""
    by_id = {run.run_id: run for run in runs}
    ids = list(by_id)
    for r in await conn.fetch("SELECT run_id::text, key, value FROM params WHERE run_id = ANY($1::uuid[])", ids):
        by_id[r[0]].params[r[1]] = r[2]
    for r in await conn.fetch("SELECT run_id::text, key, value FROM tags WHERE run_id = ANY($1::uuid[])", ids):
        by_id[r[0]].tags[r[1]] = r[2]
    per_run = max(10, min(RUN_METRICS, SEARCH_METRICS // max(1, len(ids))))
    for r in await conn.fetch(
        f"""SELECT run_id, {_SUMMARY_COLUMNS}, total FROM (
                SELECT run_id::text AS run_id, {_SUMMARY_COLUMNS},
                       row_number() OVER (PARTITION BY run_id ORDER BY key) AS n,
                       count(*) OVER (PARTITION BY run_id) AS total
                FROM metric_summaries WHERE run_id = ANY($1::uuid[])
            ) s WHERE n <= $2 ORDER BY key""",
        ids,
        per_run,
    ):
        run = by_id[r["run_id"]]
        run.metrics.append(r)
        run.metric_count = r["total"]
    return runs


# ---------------------------------------------------------------- heartbeats and crashed runs

RUNNING, CRASHED = 1, 5  # runstream.v1.RunStatus


async def heard_from(conn: Conn, run_id: str) -> int | None:
    """A writer of the run is alive: note when, and a CRASHED run is RUNNING again. Returns
    the run's status, or None when there is no such run."""
    status: int | None = await conn.fetchval(
        """UPDATE runs SET last_heard_ms = $2, status = CASE WHEN status = $3 THEN $4 ELSE status END
           WHERE run_id = $1 RETURNING status""",
        run_id,
        now_ms(),
        CRASHED,
        RUNNING,
    )
    return status


async def mark_crashed(conn: Conn, silent_since_ms: int) -> list[asyncpg.Record]:
    """RUNNING runs whose writers were last heard from before `silent_since_ms` become CRASHED;
    returns (run_id, last_heard_ms) of each."""
    return await conn.fetch(
        """UPDATE runs SET status = $1 WHERE status = $2 AND last_heard_ms < $3
           RETURNING run_id::text AS run_id, last_heard_ms""",
        CRASHED,
        RUNNING,
        silent_since_ms,
    )


# ---------------------------------------------------------------- soft delete


async def set_run_lifecycle(conn: Conn, run_id: str, stage: str) -> None:
    if await conn.execute("UPDATE runs SET lifecycle_stage = $2 WHERE run_id = $1", run_id, stage) == "UPDATE 0":
        raise RunNotFound(f"run {run_id} does not exist")


async def set_experiment_lifecycle(conn: Conn, experiment_id: int, stage: str) -> None:
    """Mark an experiment and every run in it, as MLflow does."""
    async with conn.transaction():
        done = await conn.execute(
            "UPDATE experiments SET lifecycle_stage = $2 WHERE experiment_id = $1", experiment_id, stage
        )
        if done == "UPDATE 0":
            raise ExperimentNotFound(f"experiment {experiment_id} does not exist")
        await conn.execute("UPDATE runs SET lifecycle_stage = $2 WHERE experiment_id = $1", experiment_id, stage)


# ---------------------------------------------------------------- live tails

LOADED_CHANNEL = "runstream_loaded"
_NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8,000 bytes or more


async def notify_loaded(conn: Conn, run_ids: set[str]) -> None:
    """Tell tails which runs got points; PostgreSQL delivers it when the transaction commits."""
    payload = ",".join(sorted(run_ids))
    await conn.execute("SELECT pg_notify($1, $2)", LOADED_CHANNEL, payload if len(payload) < _NOTIFY_LIMIT else "*")


async def tail_series(conn: Conn, run_ids: list[str], keys: list[str]) -> list[asyncpg.Record]:
    """(series_id, run_id, key, writer_id) of the runs' keys (every key when `keys` is empty)."""
    return await conn.fetch(
        """SELECT series_id, run_id::text AS run_id, key, writer_id FROM metric_series
           WHERE run_id = ANY($1::uuid[]) AND (cardinality($2::text[]) = 0 OR key = ANY($2::text[]))
           ORDER BY run_id, key, writer_id""",
        run_ids,
        keys,
    )


async def chunks_after(conn: Conn, series_ids: list[int], after: list[int]) -> list[asyncpg.Record]:
    """Chunks holding steps beyond each series' cursor (`after[i]` for `series_ids[i]`)."""
    return await conn.fetch(
        """SELECT c.series_id, c.steps, c.timestamps, c.vals
           FROM unnest($1::int8[], $2::int8[]) AS cur(series_id, after)
           JOIN metric_chunks c ON c.series_id = cur.series_id AND c.last_step > cur.after
           ORDER BY c.series_id, c.first_step""",
        series_ids,
        after,
    )


async def chunks_between(conn: Conn, series_ids: list[int], after: list[int], upto: list[int]) -> list[asyncpg.Record]:
    """Chunks holding steps in (`after[i]`, `upto[i]`] of `series_ids[i]`: a tail's stored points
    up to where the shared reader it joins has read."""
    return await conn.fetch(
        """SELECT c.series_id, c.steps, c.timestamps, c.vals
           FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS cur(series_id, after, upto)
           JOIN metric_chunks c
             ON c.series_id = cur.series_id AND c.last_step > cur.after AND c.first_step <= cur.upto
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


async def run_statuses(conn: Conn, run_ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT run_id::text, status FROM runs WHERE run_id = ANY($1::uuid[])", run_ids)
    return {r[0]: r[1] for r in rows}


# ---------------------------------------------------------------- dataset inputs


async def log_inputs(conn: Conn, run_id: str, inputs: list[tuple[str, str, str, str]]) -> None:
    """(name, digest, source, context) of datasets the run read; a repeated name+digest is a no-op."""
    try:
        await conn.execute(
            """INSERT INTO run_inputs (run_id, name, digest, source, context, logged_ms)
               SELECT $1, n, d, s, c, $6 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS i(n, d, s, c)
               ON CONFLICT (run_id, name, digest) DO NOTHING""",
            run_id,
            [i[0] for i in inputs],
            [i[1] for i in inputs],
            [i[2] for i in inputs],
            [i[3] for i in inputs],
            now_ms(),
        )
    except asyncpg.ForeignKeyViolationError:
        raise RunNotFound(f"run {run_id} does not exist") from None


async def run_inputs(conn: Conn, run_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT name, digest, source, context FROM run_inputs WHERE run_id = $1 ORDER BY logged_ms, name", run_id
    )


# ---------------------------------------------------------------- logged models

_LOGGED_MODEL_COLUMNS = """m.model_id, r.experiment_id::text AS experiment_id, m.run_id::text AS run_id, m.name,
    m.model_type, m.status, m.status_message, m.tags::text AS tags, m.params::text AS params, m.created_ms,
    m.updated_ms, m.created_by, m.lifecycle_stage"""


async def create_logged_model(
    conn: Conn,
    model_id: str,
    run_id: str,
    name: str,
    model_type: str,
    status: int,
    tags: dict[str, str],
    params: dict[str, str],
    created_by: str,
) -> asyncpg.Record:
    now = now_ms()
    await conn.execute(
        """INSERT INTO logged_models (model_id, run_id, name, model_type, status, tags, params, created_ms,
                                      updated_ms, created_by)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $8, $9)""",
        model_id,
        run_id,
        name,
        model_type,
        status,
        json.dumps(tags),
        json.dumps(params),
        now,
        created_by,
    )
    row = await get_logged_model(conn, model_id)
    assert row is not None  # inserted just now, in this transaction
    return row


async def get_logged_model(conn: Conn, model_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_LOGGED_MODEL_COLUMNS} FROM logged_models m JOIN runs r USING (run_id) WHERE m.model_id = $1",
        model_id,
    )


async def update_logged_model(
    conn: Conn,
    model_id: str,
    status: int | None,
    status_message: str | None,
    set_tags: dict[str, str],
    delete_tags: list[str],
    set_params: dict[str, str],
) -> asyncpg.Record | None:
    done = await conn.execute(
        """UPDATE logged_models SET status = coalesce($2, status), status_message = coalesce($3, status_message),
                  tags = (tags - $5::text[]) || $4::jsonb, params = params || $6::jsonb, updated_ms = $7
           WHERE model_id = $1""",
        model_id,
        status,
        status_message,
        json.dumps(set_tags),
        delete_tags,
        json.dumps(set_params),
        now_ms(),
    )
    return None if done == "UPDATE 0" else await get_logged_model(conn, model_id)


async def set_logged_model_lifecycle(conn: Conn, model_id: str, stage: str) -> asyncpg.Record | None:
    done = await conn.execute(
        "UPDATE logged_models SET lifecycle_stage = $2, updated_ms = $3 WHERE model_id = $1", model_id, stage, now_ms()
    )
    return None if done == "UPDATE 0" else await get_logged_model(conn, model_id)


async def search_logged_models(
    conn: Conn, experiment_ids: list[int], run_id: str | None, name: str | None, limit: int, offset: int
) -> list[asyncpg.Record]:
    """Active logged models of the experiments (and run, and name), newest first."""
    return await conn.fetch(
        f"""SELECT {_LOGGED_MODEL_COLUMNS} FROM logged_models m JOIN runs r USING (run_id)
            WHERE r.experiment_id = ANY($1::bigint[]) AND ($2::uuid IS NULL OR m.run_id = $2::uuid)
              AND ($5::text IS NULL OR m.name = $5) AND m.lifecycle_stage = 'active'
            ORDER BY m.created_ms DESC, m.model_id LIMIT $3 OFFSET $4""",
        experiment_ids,
        run_id,
        limit,
        offset,
        name,
    )


async def run_of_logged_model(conn: Conn, model_id: str) -> str | None:
    value = await conn.fetchval("SELECT run_id::text FROM logged_models WHERE model_id = $1", model_id)
    return str(value) if value is not None else None


async def update_experiment(
    conn: Conn, experiment_id: int, new_name: str, set_tags: dict[str, str], delete_tags: list[str]
) -> ExperimentRow:
    async with conn.transaction():
        if new_name:
            try:
                done = await conn.execute(
                    "UPDATE experiments SET name = $2 WHERE experiment_id = $1", experiment_id, new_name
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"experiment {new_name!r} already exists") from None
            if done == "UPDATE 0":
                raise ExperimentNotFound(f"experiment {experiment_id} does not exist")
        await conn.execute(
            "DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = ANY($2::text[])", experiment_id, delete_tags
        )
        await conn.executemany(
            """INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3)
               ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value""",
            [(experiment_id, k, v) for k, v in set_tags.items()],
        )
        return await get_experiment(conn, experiment_id=experiment_id)


# ---------------------------------------------------------------- model registry

_MODEL_COLUMNS = "model_id, name, description, created_ms, updated_ms"
_VERSION_COLUMNS = """v.model_id, m.name, v.version, v.run_id::text AS run_id, v.artifact_path, v.source_size,
    v.source_digest, v.source_files, v.stage, v.description, v.created_by, v.created_ms, v.updated_ms"""


async def create_model(conn: Conn, name: str, description: str) -> asyncpg.Record:
    now = now_ms()
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO registered_models (name, description, created_ms, updated_ms)
                VALUES ($1, $2, $3, $3) RETURNING {_MODEL_COLUMNS}""",
            name,
            description,
            now,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"registered model {name!r} already exists") from None
    assert row is not None  # INSERT ... RETURNING
    return row


async def get_model(conn: Conn, name: str, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM registered_models WHERE name = $1{lock}", name)


async def ensure_model(conn: Conn, name: str) -> asyncpg.Record:
    """The model named `name`, created when missing, locked for this transaction."""
    await conn.execute(
        """INSERT INTO registered_models (name, created_ms, updated_ms) VALUES ($1, $2, $2)
           ON CONFLICT (name) DO NOTHING""",
        name,
        now_ms(),
    )
    row = await get_model(conn, name, for_update=True)
    assert row is not None  # inserted above or by a concurrent transaction that committed
    return row


async def model_tags(conn: Conn, model_id: int) -> dict[str, str]:
    rows = await conn.fetch("SELECT key, value FROM registered_model_tags WHERE model_id = $1", model_id)
    return {r[0]: r[1] for r in rows}


async def model_aliases(conn: Conn, model_id: int) -> dict[str, int]:
    rows = await conn.fetch("SELECT alias, version FROM model_aliases WHERE model_id = $1 ORDER BY alias", model_id)
    return {r[0]: r[1] for r in rows}


async def latest_versions(conn: Conn, model_id: int) -> list[asyncpg.Record]:
    """The newest version in each stage."""
    return await conn.fetch(
        f"""SELECT DISTINCT ON (v.stage) {_VERSION_COLUMNS}
            FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 ORDER BY v.stage, v.version DESC""",
        model_id,
    )


async def update_model(
    conn: Conn, model_id: int, description: str | None, set_tags: dict[str, str], delete_tags: list[str]
) -> None:
    await conn.execute(
        "UPDATE registered_models SET description = coalesce($2, description), updated_ms = $3 WHERE model_id = $1",
        model_id,
        description,
        now_ms(),
    )
    await conn.execute(
        """INSERT INTO registered_model_tags (model_id, key, value)
           SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
           ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value""",
        model_id,
        list(set_tags),
        list(set_tags.values()),
    )
    await conn.execute(
        "DELETE FROM registered_model_tags WHERE model_id = $1 AND key = ANY($2::text[])", model_id, delete_tags
    )


async def rename_model(conn: Conn, model_id: int, new_name: str) -> None:
    try:
        await conn.execute(
            "UPDATE registered_models SET name = $2, updated_ms = $3 WHERE model_id = $1", model_id, new_name, now_ms()
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"registered model {new_name!r} already exists") from None


async def delete_model(conn: Conn, model_id: int) -> None:
    await conn.execute("DELETE FROM registered_models WHERE model_id = $1", model_id)


async def search_models(
    conn: Conn, name_like: str, tags: dict[str, str], order: str, limit: int, offset: int
) -> list[asyncpg.Record]:
    """`order` is a trusted ORDER BY clause chosen by the caller from a fixed set."""
    return await conn.fetch(
        f"""SELECT {_MODEL_COLUMNS} FROM registered_models m
            WHERE ($1 = '' OR name LIKE $1)
              AND (SELECT count(*) FROM registered_model_tags t
                   JOIN unnest($2::text[], $3::text[]) AS want(k, v) ON t.key = want.k AND t.value = want.v
                   WHERE t.model_id = m.model_id) = cardinality($2::text[])
            ORDER BY {order}, model_id LIMIT $4 OFFSET $5""",
        name_like,
        list(tags),
        list(tags.values()),
        limit,
        offset,
    )


async def next_version(conn: Conn, model_id: int) -> int:
    """The model's next version number; the row lock makes concurrent creations queue, so
    numbers have no gaps (a failed creation rolls the counter back with its transaction)."""
    version: int = await conn.fetchval(
        """UPDATE registered_models SET last_version = last_version + 1, updated_ms = $2
           WHERE model_id = $1 RETURNING last_version""",
        model_id,
        now_ms(),
    )
    return version


async def artifact_source(conn: Conn, run_id: str, path: str) -> tuple[int, str, int] | None:
    """(size, digest, files) of the run's artifact at `path`: one file, or every file under the
    directory `path` (digest: sha256 of its "path sha256" lines in path order). None if absent."""
    rows = await conn.fetch(
        """SELECT path, size, sha256 FROM artifacts
           WHERE run_id = $1 AND (path = $2 OR (path >= $3 AND path < $4)) ORDER BY path""",
        run_id,
        path,
        path + "/",
        path + "0",  # "0" follows "/": the range is everything under path/
    )
    if not rows:
        return None
    if len(rows) == 1 and rows[0]["path"] == path:
        return rows[0]["size"], rows[0]["sha256"], 1

    lines = "".join(f"{r['path'][len(path) + 1 :]} {r['sha256']}\n" for r in rows)
    return sum(r["size"] for r in rows), hashlib.sha256(lines.encode()).hexdigest(), len(rows)


async def insert_version(conn: Conn, v: dict[str, Any]) -> None:
    now = now_ms()
    await conn.execute(
        """INSERT INTO model_versions (model_id, version, run_id, artifact_path, source_size, source_digest,
                                       source_files, description, created_by, created_ms, updated_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)""",
        v["model_id"],
        v["version"],
        v["run_id"],
        v["artifact_path"],
        v["source_size"],
        v["source_digest"],
        v["source_files"],
        v["description"],
        v["created_by"],
        now,
    )


async def get_version(conn: Conn, model_id: int, version: int, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE OF v" if for_update else ""
    return await conn.fetchrow(
        f"""SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 AND v.version = $2{lock}""",
        model_id,
        version,
    )


async def list_versions(conn: Conn, model_id: int, stages: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 AND (cardinality($2::text[]) = 0 OR v.stage = ANY($2::text[]))
            ORDER BY v.version DESC""",
        model_id,
        stages,
    )


async def version_tags(conn: Conn, model_id: int, version: int) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT key, value FROM model_version_tags WHERE model_id = $1 AND version = $2", model_id, version
    )
    return {r[0]: r[1] for r in rows}


async def version_aliases(conn: Conn, model_id: int, version: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT alias FROM model_aliases WHERE model_id = $1 AND version = $2 ORDER BY alias", model_id, version
    )
    return [r[0] for r in rows]


async def update_version(
    conn: Conn, model_id: int, version: int, description: str | None, set_tags: dict[str, str], delete_tags: list[str]
) -> None:
    await conn.execute(
        """UPDATE model_versions SET description = coalesce($3, description), updated_ms = $4
           WHERE model_id = $1 AND version = $2""",
        model_id,
        version,
        description,
        now_ms(),
    )
    await conn.execute(
        """INSERT INTO model_version_tags (model_id, version, key, value)
           SELECT $1, $2, k, v FROM unnest($3::text[], $4::text[]) AS t(k, v)
           ON CONFLICT (model_id, version, key) DO UPDATE SET value = excluded.value""",
        model_id,
        version,
        list(set_tags),
        list(set_tags.values()),
    )
    await conn.execute(
        "DELETE FROM model_version_tags WHERE model_id = $1 AND version = $2 AND key = ANY($3::text[])",
        model_id,
        version,
        delete_tags,
    )


async def set_stage(conn: Conn, model_id: int, version: int, stage: str) -> None:
    await conn.execute(
        "UPDATE model_versions SET stage = $3, updated_ms = $4 WHERE model_id = $1 AND version = $2",
        model_id,
        version,
        stage,
        now_ms(),
    )


async def versions_in_stage(conn: Conn, model_id: int, stage: str, *, for_update: bool = False) -> list[int]:
    lock = " FOR UPDATE" if for_update else ""
    rows = await conn.fetch(
        f"SELECT version FROM model_versions WHERE model_id = $1 AND stage = $2 ORDER BY version{lock}",
        model_id,
        stage,
    )
    return [r[0] for r in rows]


async def delete_version(conn: Conn, model_id: int, version: int) -> None:
    await conn.execute("DELETE FROM model_versions WHERE model_id = $1 AND version = $2", model_id, version)


async def set_alias(conn: Conn, model_id: int, alias: str, version: int) -> int | None:
    """Point `alias` at `version` in one statement; returns the version it pointed at before."""
    before: int | None = await conn.fetchval(
        """WITH old AS (SELECT version FROM model_aliases WHERE model_id = $1 AND alias = $2 FOR UPDATE),
                new AS (INSERT INTO model_aliases (model_id, alias, version) VALUES ($1, $2, $3)
                        ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version)
           SELECT version FROM old""",
        model_id,
        alias,
        version,
    )
    return before


async def delete_alias(conn: Conn, model_id: int, alias: str) -> int | None:
    version: int | None = await conn.fetchval(
        "DELETE FROM model_aliases WHERE model_id = $1 AND alias = $2 RETURNING version", model_id, alias
    )
    return version


async def alias_version(conn: Conn, model_id: int, alias: str) -> int | None:
    version: int | None = await conn.fetchval(
        "SELECT version FROM model_aliases WHERE model_id = $1 AND alias = $2", model_id, alias
    )
    return version


async def add_event(
    conn: Conn,
    model: asyncpg.Record,
    version: int,
    kind: str,
    actor: str,
    from_value: str = "",
    to_value: str = "",
    comment: str = "",
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO model_version_events (model_id, model_name, version, kind, actor, at_ms, from_value,
                                             to_value, comment)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           RETURNING event_id, model_name, version, kind, actor, at_ms, from_value, to_value, comment""",
        model["model_id"],
        model["name"],
        version,
        kind,
        actor,
        now_ms(),
        from_value,
        to_value,
        comment,
    )
    assert row is not None  # INSERT ... RETURNING
    return row


async def version_events(conn: Conn, model_id: int, version: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT event_id, model_name, version, kind, actor, at_ms, from_value, to_value, comment
           FROM model_version_events WHERE model_id = $1 AND version = $2 ORDER BY event_id""",
        model_id,
        version,
    )


_REQUEST_COLUMNS = """r.request_id, m.name, r.version, r.to_stage, r.status, r.requested_by, r.requested_ms,
    r.comment, r.decided_by, r.decided_ms, r.decision_comment, r.archive_existing, r.model_id"""


async def create_transition_request(
    conn: Conn, model_id: int, version: int, to_stage: str, archive_existing: bool, actor: str, comment: str
) -> asyncpg.Record:
    request_id = await conn.fetchval(
        """INSERT INTO transition_requests (model_id, version, to_stage, archive_existing, requested_by,
                                            requested_ms, comment)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING request_id""",
        model_id,
        version,
        to_stage,
        archive_existing,
        actor,
        now_ms(),
        comment,
    )
    row = await get_transition_request(conn, request_id)
    assert row is not None
    return row


async def get_transition_request(conn: Conn, request_id: int, *, for_update: bool = False) -> asyncpg.Record | None:
    lock = " FOR UPDATE OF r" if for_update else ""
    return await conn.fetchrow(
        f"""SELECT {_REQUEST_COLUMNS} FROM transition_requests r JOIN registered_models m USING (model_id)
            WHERE r.request_id = $1{lock}""",
        request_id,
    )


async def decide_transition_request(conn: Conn, request_id: int, status: str, actor: str, comment: str) -> None:
    await conn.execute(
        """UPDATE transition_requests SET status = $2, decided_by = $3, decided_ms = $4, decision_comment = $5
           WHERE request_id = $1""",
        request_id,
        status,
        actor,
        now_ms(),
        comment,
    )


async def transition_requests(conn: Conn, model_id: int, version: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM transition_requests r JOIN registered_models m USING (model_id)
            WHERE r.model_id = $1 AND r.version = $2 ORDER BY r.request_id""",
        model_id,
        version,
    )


# ---------------------------------------------------------------- secrets


async def server_secret(conn: Conn, name: str) -> bytes:
    """The installation's secret `name`, made at random by the first process that asks."""
    await conn.execute(
        "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        name,
        secrets.token_bytes(32),
    )
    secret: bytes = await conn.fetchval("SELECT secret FROM server_secrets WHERE name = $1", name)
    return secret


# --- API tokens and the experiments a request touches (auth/) ---------------------------------


@dataclass
class TokenRow:
    token_id: str
    name: str
    secret_hash: bytes
    scopes: list[str]
    experiments: str | None
    created_by: str
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None


_TOKEN_COLUMNS = """token_id, name, secret_hash, scopes, experiments, created_by,
    (extract(epoch FROM created_at) * 1000)::int8 AS created_ms,
    (extract(epoch FROM expires_at) * 1000)::int8 AS expires_ms,
    (extract(epoch FROM revoked_at) * 1000)::int8 AS revoked_ms"""


def _token(row: asyncpg.Record) -> TokenRow:
    return TokenRow(**{**dict(row), "scopes": list(row["scopes"])})


async def insert_token(
    conn: Conn,
    token_id: str,
    name: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    experiments: str | None,
    created_by: str,
    expires_in_s: int | None,
) -> TokenRow:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO api_tokens (token_id, name, secret_hash, scopes, experiments, created_by, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
                RETURNING {_TOKEN_COLUMNS}""",
            token_id,
            name,
            secret_hash,
            list(scopes),
            experiments,
            created_by,
            expires_in_s,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"a token named {name!r} exists; revoke it first or choose another name") from None
    assert row is not None  # INSERT ... RETURNING
    return _token(row)


async def token_by_id(conn: Conn, token_id: str) -> TokenRow | None:
    row = await conn.fetchrow(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_id = $1", token_id)
    return _token(row) if row else None


async def list_tokens(conn: Conn, include_revoked: bool) -> list[TokenRow]:
    rows = await conn.fetch(
        f"""SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL
            ORDER BY created_at, token_id""",
        include_revoked,
    )
    return [_token(r) for r in rows]


async def revoke_token(conn: Conn, name: str) -> TokenRow | None:
    """Revoke the live token named `name`; None when there is none."""
    row = await conn.fetchrow(
        f"""UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
            RETURNING {_TOKEN_COLUMNS}""",
        name,
    )
    return _token(row) if row else None


async def has_live_admin_token(conn: Conn) -> bool:
    found: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM api_tokens WHERE 'admin' = ANY (scopes) AND revoked_at IS NULL
            AND (expires_at IS NULL OR expires_at > now()))"""
    )
    return found


async def experiments_of_runs(conn: Conn, run_ids: Sequence[str]) -> dict[str, str]:
    """The experiment name of each run that exists, by run id."""
    rows = await conn.fetch(
        """SELECT r.run_id::text AS run_id, e.name FROM runs r JOIN experiments e USING (experiment_id)
            WHERE r.run_id = ANY ($1::uuid[])""",
        list(run_ids),
    )
    return {r["run_id"]: r["name"] for r in rows}


async def experiments_of_model(conn: Conn, name: str) -> list[str] | None:
    """The experiments the runs of a registered model's versions are in (None: no such model;
    [] for a model without versions)."""
    rows = await conn.fetch(
        """SELECT e.name FROM registered_models m
             LEFT JOIN model_versions v USING (model_id)
             LEFT JOIN runs r USING (run_id)
             LEFT JOIN experiments e USING (experiment_id)
            WHERE m.name = $1""",
        name,
    )
    return sorted({r["name"] for r in rows if r["name"] is not None}) if rows else None


async def model_of_transition_request(conn: Conn, request_id: int) -> str | None:
    name = await conn.fetchval(
        """SELECT m.name FROM transition_requests t JOIN registered_models m USING (model_id)
            WHERE t.request_id = $1""",
        request_id,
    )
    return None if name is None else str(name)


async def experiment_names(conn: Conn, experiment_ids: Sequence[int]) -> dict[int, str]:
    rows = await conn.fetch(
        "SELECT experiment_id, name FROM experiments WHERE experiment_id = ANY ($1::int8[])", list(experiment_ids)
    )
    return {r["experiment_id"]: r["name"] for r in rows}


async def run_of_upload(conn: Conn, upload_id: str) -> str | None:
    value = await conn.fetchval("SELECT run_id::text FROM artifact_uploads WHERE upload_id = $1::uuid", upload_id)
    return str(value) if value is not None else None

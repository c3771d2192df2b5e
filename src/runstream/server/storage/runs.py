"""Runs and what is read with them: params, tags, dataset inputs, metric summaries; their
status (heartbeats, crashed runs) and lifecycle; and run search (the WHERE and ORDER BY that
search.py builds from MLflow's filter language, around these queries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg

from runstream.errors import ExperimentNotFound, FailedPrecondition, ParamConflict, RunNotFound
from runstream.server.storage.db import DELETED_MS, Conn, now_ms
from runstream.server.storage.metrics import LINEAGE, MAX_FORK_DEPTH
from runstream.server.storage.search import Order


class SummaryRow(NamedTuple):
    """A key's summary across the run's writers (metric_summaries; the loaders keep it)."""

    key: str
    last_value: float
    last_step: int
    last_timestamp_ms: int
    min_value: float
    max_value: float
    count: int  # type: ignore[assignment]  # over tuple.count: named as the column and the proto field


class InputRow(NamedTuple):
    """A dataset the run read."""

    name: str
    digest: str
    source: str
    context: str


class CrashedRun(NamedTuple):
    run_id: str
    last_heard_ms: int


class RunRow(NamedTuple):
    """A run with its params, tags and metric summaries (_RUN_COLUMNS, then those)."""

    run_id: str
    experiment_id: int
    name: str
    status: int
    start_time_ms: int
    end_time_ms: int | None
    lifecycle_stage: str
    last_heard_ms: int | None
    parent_run_id: str | None  # a fork's: it reads that run's points up to fork_step
    fork_step: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: list[SummaryRow]
    metric_count: int  # keys in all; `metrics` may hold only the first of them


# A run's metric summaries in one answer; the rest page through run_metrics.
RUN_METRICS = 1_000
# Summaries in one SearchRuns answer, shared among its runs (each gets 10 to RUN_METRICS): a run with
# 250,000 keys must not push a page of runs past the message limit.
SEARCH_METRICS = 20_000
SUMMARY_COLUMNS = ", ".join(SummaryRow._fields)  # SummaryRow._make takes the record as it comes

# RunRow's first fields, in order: RunRow._make takes a record of them and the rest.
_RUN_COLUMNS = (
    "run_id::text, experiment_id, name, status, start_time_ms, end_time_ms, lifecycle_stage, last_heard_ms, "
    "parent_run_id::text, fork_step"
)

RUNNING, CRASHED = 1, 5  # runstream.v1.RunStatus


class Fork(NamedTuple):
    """What a new run forks from: a run and the last step of it that the fork reads."""

    parent_run_id: str
    step: int


async def create_run(
    conn: Conn,
    run_id: str,
    experiment_id: int,
    name: str,
    status: int,
    start_time_ms: int,
    tags: dict[str, str],
    fork: Fork | None = None,
    params: dict[str, str] | None = None,
) -> bool:
    """False when a run with this id exists already (a client-made id created again);
    FailedPrecondition when it is the id of a purged run. A fork starts with its parent's
    params and tags (but its name tag); `params` and `tags` win."""
    async with conn.transaction():
        if fork is not None:
            await _check_parent(conn, fork.parent_run_id)
        try:
            inserted = await conn.fetchval(
                """INSERT INTO runs (run_id, experiment_id, name, status, start_time_ms, parent_run_id, fork_step)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING RETURNING true""",
                run_id,
                experiment_id,
                name,
                status,
                start_time_ms,
                fork and fork.parent_run_id,
                fork and fork.step,
            )
        except asyncpg.ForeignKeyViolationError:
            raise ExperimentNotFound(f"experiment {experiment_id} does not exist") from None
        if not inserted:
            return False
        # After the insert: a purge of this id that committed while the insert waited is seen.
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM purged_runs WHERE run_id = $1)", run_id):
            raise FailedPrecondition(f"run id {run_id} belonged to a run purged for good; make the run another id")
        await conn.executemany(
            "INSERT INTO tags (run_id, key, value) VALUES ($1, $2, $3)", [(run_id, k, v) for k, v in tags.items()]
        )
        await conn.executemany(
            "INSERT INTO params (run_id, key, value) VALUES ($1, $2, $3)",
            [(run_id, k, v) for k, v in (params or {}).items()],
        )
        if fork is not None:
            await conn.execute(
                """INSERT INTO params (run_id, key, value) SELECT $1, key, value FROM params WHERE run_id = $2
                   ON CONFLICT DO NOTHING""",
                run_id,
                fork.parent_run_id,
            )
            await conn.execute(
                """INSERT INTO tags (run_id, key, value) SELECT $1, key, value FROM tags
                   WHERE run_id = $2 AND key <> 'mlflow.runName' ON CONFLICT DO NOTHING""",
                run_id,
                fork.parent_run_id,
            )
        return True


async def _check_parent(conn: Conn, run_id: str) -> None:
    """A run may be forked while it exists and is not deleted; its row is held until the fork
    commits, so a purge waits (and then sees the fork)."""
    stage = await conn.fetchval("SELECT lifecycle_stage FROM runs WHERE run_id = $1 FOR KEY SHARE", run_id)
    if stage is None:
        raise RunNotFound(f"run {run_id} does not exist, so it cannot be forked")
    if stage == "deleted":
        raise FailedPrecondition(f"run {run_id} is deleted; restore it to fork it (runstream runs restore)")
    depth = await conn.fetchval(f"{LINEAGE} SELECT max(depth) FROM lineage", run_id)
    if depth >= MAX_FORK_DEPTH - 1:
        raise FailedPrecondition(f"run {run_id} is a fork {depth} forks deep; forks nest at most {MAX_FORK_DEPTH} deep")


async def get_run(conn: Conn, run_id: str, keys: list[str] | None = None) -> RunRow:
    """A run with its params, tags and the summaries of `keys` (default: its first RUN_METRICS
    keys; `metric_count` says how many it has)."""
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id)
    if row is None:
        raise RunNotFound(f"run {run_id} does not exist")
    params = {r[0]: r[1] for r in await conn.fetch("SELECT key, value FROM params WHERE run_id = $1", run_id)}
    tags = {r[0]: r[1] for r in await conn.fetch("SELECT key, value FROM tags WHERE run_id = $1", run_id)}
    if keys is None:
        metrics = await run_metrics(conn, run_id, "", RUN_METRICS)
    else:
        rows = await conn.fetch(
            f"""SELECT {SUMMARY_COLUMNS} FROM metric_summaries
                WHERE run_id = $1 AND key = ANY($2::text[]) ORDER BY key""",
            run_id,
            keys,
        )
        metrics = list(map(SummaryRow._make, rows))
    count = await conn.fetchval("SELECT count(*) FROM metric_summaries WHERE run_id = $1", run_id)
    return RunRow._make((*row, params, tags, metrics, count))


async def run_keys(conn: Conn, run_id: str) -> list[str]:
    return [r[0] for r in await conn.fetch("SELECT key FROM metric_summaries WHERE run_id = $1", run_id)]


async def run_metrics(conn: Conn, run_id: str, after: str, limit: int) -> list[SummaryRow]:
    """A run's metric summaries in key order, from the key after `after`."""
    rows = await conn.fetch(
        f"""SELECT {SUMMARY_COLUMNS} FROM metric_summaries
            WHERE run_id = $1 AND key > $2 ORDER BY key LIMIT $3""",
        run_id,
        after,
        limit,
    )
    return list(map(SummaryRow._make, rows))


async def experiment_of_run(conn: Conn, run_id: str) -> int | None:
    """The experiment id of a run that exists."""
    value: int | None = await conn.fetchval("SELECT experiment_id FROM runs WHERE run_id = $1", run_id)
    return value


async def run_lifecycle(conn: Conn, run_id: str) -> str | None:
    """'active' or 'deleted' for a run that exists, None for one that does not."""
    value: str | None = await conn.fetchval("SELECT lifecycle_stage FROM runs WHERE run_id = $1", run_id)
    return value


async def run_statuses(conn: Conn, run_ids: list[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT run_id::text, status FROM runs WHERE run_id = ANY($1::uuid[])", run_ids)
    return {r[0]: r[1] for r in rows}


async def update_run(conn: Conn, run_id: str, status: int | None, end_time_ms: int | None, name: str | None) -> None:
    result = await conn.execute(
        f"""UPDATE runs SET status = coalesce($2, status),
                           end_time_ms = CASE WHEN $2 = {RUNNING} THEN NULL ELSE coalesce($3, end_time_ms) END,
                           name = coalesce($4, name)
           WHERE run_id = $1""",
        run_id,
        status,
        end_time_ms,
        name,
    )
    if result == "UPDATE 0":
        raise RunNotFound(f"run {run_id} does not exist")


async def set_run_lifecycle(conn: Conn, run_id: str, stage: str) -> None:
    """'active' or 'deleted', recording when it was deleted (kept if it was already)."""
    done = await conn.execute(
        f"UPDATE runs SET lifecycle_stage = $2, deleted_ms = {DELETED_MS} WHERE run_id = $1", run_id, stage
    )
    if done == "UPDATE 0":
        raise RunNotFound(f"run {run_id} does not exist")


class Purgeable(NamedTuple):
    run_id: str
    why_not: str  # "" when it may be purged


async def purgeable_runs(
    conn: Conn, deleted_before_ms: int, run_ids: Sequence[str] | None, limit: int
) -> list[Purgeable]:
    """Runs deleted before `deleted_before_ms` (those of `run_ids`, or any but those a model
    version comes from, which stay), oldest deletion first, up to `limit`; each named in
    `run_ids` comes back, with why it may not be purged."""
    rows = await conn.fetch(
        """SELECT r.run_id::text, r.lifecycle_stage, r.deleted_ms,
                  (SELECT string_agg(format('%s version %s', m.name, v.version), ', ' ORDER BY m.name, v.version)
                   FROM model_versions v JOIN registered_models m USING (model_id)
                   WHERE v.run_id = r.run_id) AS versions,
                  (SELECT string_agg(f.run_id::text, ', ' ORDER BY f.run_id)
                   FROM runs f WHERE f.parent_run_id = r.run_id) AS forks
           FROM runs r
           WHERE ($2::uuid[] IS NULL AND r.lifecycle_stage = 'deleted' AND r.deleted_ms < $1
                  AND NOT EXISTS (SELECT 1 FROM model_versions v WHERE v.run_id = r.run_id)
                  AND NOT EXISTS (SELECT 1 FROM runs f WHERE f.parent_run_id = r.run_id))
              OR r.run_id = ANY($2::uuid[])
           ORDER BY r.deleted_ms NULLS LAST, r.run_id
           LIMIT $3""",
        deleted_before_ms,
        None if run_ids is None else list(run_ids),
        limit,
    )
    found = []
    for r in rows:
        why = ""
        if r["lifecycle_stage"] != "deleted":
            why = "the run is not deleted (DeleteRun first)"
        elif r["deleted_ms"] >= deleted_before_ms:
            why = "deleted more recently than older_than_ms"
        elif r["versions"]:
            why = f"registered model versions come from it ({r['versions']}): delete them first"
        elif r["forks"]:
            why = f"runs forked from it read its points ({r['forks']}): purge them first"
        found.append(Purgeable(r["run_id"], why))
    seen = {p.run_id for p in found}
    found += [Purgeable(r, "no such run") for r in (run_ids or []) if r not in seen]
    return found


class PurgedFiles(NamedTuple):
    """What a purged run left in the store: its artifacts' keys, and unfinished uploads."""

    keys: list[str]
    uploads: list[tuple[str, str]]  # key, multipart upload id


async def purge_run(conn: Conn, run_id: str, deleted_before_ms: int) -> PurgedFiles | None:
    """Delete a deleted run and everything of it for good, in the caller's transaction; its cold
    objects retire (the compactors delete them). None if it is no longer purgeable (restored,
    or a model version came from it meanwhile). Returns the store's objects to delete."""
    row = await conn.fetchrow(
        "SELECT 1 FROM runs WHERE run_id = $1 AND lifecycle_stage = 'deleted' AND deleted_ms < $2 FOR UPDATE",
        run_id,
        deleted_before_ms,
    )
    # Asked after the lock, in a statement of its own: a version registered (or a fork made)
    # while the lock was awaited is seen (each holds the run's row while it inserts).
    if row is None or await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM model_versions WHERE run_id = $1)
               OR EXISTS (SELECT 1 FROM runs WHERE parent_run_id = $1)""",
        run_id,
    ):
        return None
    keys = [r[0] for r in await conn.fetch("SELECT object_key FROM artifacts WHERE run_id = $1", run_id)]
    uploads = await conn.fetch("SELECT object_key, multipart_id FROM artifact_uploads WHERE run_id = $1", run_id)
    await conn.execute(
        "DELETE FROM metric_chunks WHERE series_id IN (SELECT series_id FROM metric_series WHERE run_id = $1)", run_id
    )
    await conn.execute(
        """UPDATE cold_objects SET state = 'retired', retired_at = now()
           WHERE run_id = $1 AND state <> 'retired'""",
        run_id,
    )
    await conn.execute("DELETE FROM ingested_batches WHERE run_id = $1", run_id)
    await conn.execute("DELETE FROM runs WHERE run_id = $1", run_id)  # the rest cascades
    await conn.execute(
        "INSERT INTO purged_runs (run_id, purged_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING", run_id, now_ms()
    )
    return PurgedFiles(keys + [u[0] for u in uploads if u[1] is None], [(u[0], u[1]) for u in uploads if u[1]])


async def experiments_of_runs(conn: Conn, run_ids: Sequence[str]) -> dict[str, str]:
    """The experiment name of each run that exists, by run id."""
    rows = await conn.fetch(
        """SELECT r.run_id::text AS run_id, e.name FROM runs r JOIN experiments e USING (experiment_id)
            WHERE r.run_id = ANY ($1::uuid[])""",
        list(run_ids),
    )
    return {r["run_id"]: r["name"] for r in rows}


# ---------------------------------------------------------------- params, tags and inputs


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
        for key, value in stored:  # inside the transaction: a refused request keeps none of its params
            if value != params[key]:
                raise ParamConflict(
                    f"param {key!r} of run {run_id} was already logged as {value!r}; "
                    f"params are immutable, so {params[key]!r} was refused"
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


async def run_inputs(conn: Conn, run_id: str) -> list[InputRow]:
    rows = await conn.fetch(
        "SELECT name, digest, source, context FROM run_inputs WHERE run_id = $1 ORDER BY logged_ms, name", run_id
    )
    return [InputRow(**r) for r in rows]


# ---------------------------------------------------------------- heartbeats and crashed runs


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


async def mark_crashed(conn: Conn, silent_since_ms: int) -> list[CrashedRun]:
    """RUNNING runs whose writers were last heard from before `silent_since_ms` become CRASHED;
    returns each of them."""
    rows = await conn.fetch(
        """UPDATE runs SET status = $1 WHERE status = $2 AND last_heard_ms < $3
           RETURNING run_id::text AS run_id, last_heard_ms""",
        CRASHED,
        RUNNING,
        silent_since_ms,
    )
    return [CrashedRun(**r) for r in rows]


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
        return await _with_details(conn, rows)


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


async def _with_details(conn: Conn, rows: list[asyncpg.Record]) -> list[RunRow]:
    """The runs of `rows` (in _RUN_COLUMNS) with their params, tags and (the first few) metric summaries."""
    ids = list(dict.fromkeys(row[0] for row in rows))
    params: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
    tags: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
    metrics: dict[str, list[SummaryRow]] = {run_id: [] for run_id in ids}
    counts: dict[str, int] = {}
    for r in await conn.fetch("SELECT run_id::text, key, value FROM params WHERE run_id = ANY($1::uuid[])", ids):
        params[r[0]][r[1]] = r[2]
    for r in await conn.fetch("SELECT run_id::text, key, value FROM tags WHERE run_id = ANY($1::uuid[])", ids):
        tags[r[0]][r[1]] = r[2]
    per_run = max(10, min(RUN_METRICS, SEARCH_METRICS // max(1, len(ids))))
    for r in await conn.fetch(
        f"""SELECT run_id, {SUMMARY_COLUMNS}, total FROM (
                SELECT run_id::text AS run_id, {SUMMARY_COLUMNS},
                       row_number() OVER (PARTITION BY run_id ORDER BY key) AS n,
                       count(*) OVER (PARTITION BY run_id) AS total
                FROM metric_summaries WHERE run_id = ANY($1::uuid[])
            ) s WHERE n <= $2 ORDER BY key""",
        ids,
        per_run,
    ):
        metrics[r[0]].append(SummaryRow._make(r[1:-1]))
        counts[r[0]] = r[-1]
    return [RunRow._make((*row, params[row[0]], tags[row[0]], metrics[row[0]], counts.get(row[0], 0))) for row in rows]

"""Experiments: create, read, list with their run counts, rename and tag, delete and restore."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from runstream.errors import AlreadyExists, ExperimentNotFound
from runstream.server.storage.db import DELETED_MS, Conn, now_ms


class ExperimentRow(NamedTuple):
    experiment_id: int
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time_ms: int
    tags: dict[str, str]


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


async def set_experiment_lifecycle(conn: Conn, experiment_id: int, stage: str) -> None:
    """Mark an experiment and every run in it, as MLflow does."""
    async with conn.transaction():
        done = await conn.execute(
            "UPDATE experiments SET lifecycle_stage = $2 WHERE experiment_id = $1", experiment_id, stage
        )
        if done == "UPDATE 0":
            raise ExperimentNotFound(f"experiment {experiment_id} does not exist")
        await conn.execute(
            f"UPDATE runs SET lifecycle_stage = $2, deleted_ms = {DELETED_MS} WHERE experiment_id = $1",
            experiment_id,
            stage,
        )


async def experiment_names(conn: Conn, experiment_ids: Sequence[int]) -> dict[int, str]:
    """The name of each experiment that exists, by id (what a limited token's pattern matches)."""
    rows = await conn.fetch(
        "SELECT experiment_id, name FROM experiments WHERE experiment_id = ANY ($1::int8[])", list(experiment_ids)
    )
    return {r["experiment_id"]: r["name"] for r in rows}

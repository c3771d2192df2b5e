"""Logged models (MLflow 3): what a run says about a model it saved, with a status, tags and
params (jsonb); the files are the run's artifacts."""

from __future__ import annotations

import json
from typing import NamedTuple

import asyncpg

from runstream.server.storage.db import Conn, now_ms


class LoggedModelRow(NamedTuple):
    model_id: str
    experiment_id: str  # its run's, as text
    run_id: str
    name: str
    model_type: str
    status: int
    status_message: str
    tags: dict[str, str]
    params: dict[str, str]
    created_ms: int
    updated_ms: int
    created_by: str
    lifecycle_stage: str


_LOGGED_MODEL_COLUMNS = """m.model_id, r.experiment_id::text AS experiment_id, m.run_id::text AS run_id, m.name,
    m.model_type, m.status, m.status_message, m.tags::text AS tags, m.params::text AS params, m.created_ms,
    m.updated_ms, m.created_by, m.lifecycle_stage"""


def _logged_model(row: asyncpg.Record) -> LoggedModelRow:
    return LoggedModelRow(**{**dict(row), "tags": json.loads(row["tags"]), "params": json.loads(row["params"])})


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
) -> LoggedModelRow:
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


async def get_logged_model(conn: Conn, model_id: str) -> LoggedModelRow | None:
    row = await conn.fetchrow(
        f"SELECT {_LOGGED_MODEL_COLUMNS} FROM logged_models m JOIN runs r USING (run_id) WHERE m.model_id = $1",
        model_id,
    )
    return _logged_model(row) if row is not None else None


async def update_logged_model(
    conn: Conn,
    model_id: str,
    status: int | None,
    status_message: str | None,
    set_tags: dict[str, str],
    delete_tags: list[str],
    set_params: dict[str, str],
) -> LoggedModelRow | None:
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


async def set_logged_model_lifecycle(conn: Conn, model_id: str, stage: str) -> LoggedModelRow | None:
    done = await conn.execute(
        "UPDATE logged_models SET lifecycle_stage = $2, updated_ms = $3 WHERE model_id = $1", model_id, stage, now_ms()
    )
    return None if done == "UPDATE 0" else await get_logged_model(conn, model_id)


async def search_logged_models(
    conn: Conn, experiment_ids: list[int], run_id: str | None, name: str | None, limit: int, offset: int
) -> list[LoggedModelRow]:
    """Active logged models of the experiments (and run, and name), newest first."""
    rows = await conn.fetch(
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
    return [_logged_model(r) for r in rows]


async def run_of_logged_model(conn: Conn, model_id: str) -> str | None:
    value = await conn.fetchval("SELECT run_id::text FROM logged_models WHERE model_id = $1", model_id)
    return str(value) if value is not None else None

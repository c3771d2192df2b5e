"""The model registry: registered models, their versions (each an artifact of a run), tags,
stages and aliases, the append-only history of every change, and transition requests."""

from __future__ import annotations

from typing import Any, NamedTuple

import asyncpg

from runstream.errors import AlreadyExists, RunNotFound
from runstream.server.storage.db import Conn, now_ms


class ModelRow(NamedTuple):
    model_id: int
    name: str
    description: str
    created_ms: int
    updated_ms: int


_MODEL_COLUMNS = "model_id, name, description, created_ms, updated_ms"


class VersionRow(NamedTuple):
    model_id: int
    name: str  # the model's
    version: int
    run_id: str
    artifact_path: str
    source_size: int
    source_digest: str
    source_files: int
    stage: str
    description: str
    created_by: str
    created_ms: int
    updated_ms: int


_VERSION_COLUMNS = """v.model_id, m.name, v.version, v.run_id::text AS run_id, v.artifact_path, v.source_size,
    v.source_digest, v.source_files, v.stage, v.description, v.created_by, v.created_ms, v.updated_ms"""


class EventRow(NamedTuple):
    """One change to a version, as the history keeps it (the model's name as it was then)."""

    event_id: int
    model_name: str
    version: int
    kind: str
    actor: str
    at_ms: int
    from_value: str
    to_value: str
    comment: str


_EVENT_COLUMNS = "event_id, model_name, version, kind, actor, at_ms, from_value, to_value, comment"


class TransitionRequestRow(NamedTuple):
    request_id: int
    name: str  # the model's
    version: int
    to_stage: str
    status: str  # pending, approved or rejected
    requested_by: str
    requested_ms: int
    comment: str
    decided_by: str | None
    decided_ms: int | None
    decision_comment: str | None
    archive_existing: bool
    model_id: int


_REQUEST_COLUMNS = """r.request_id, m.name, r.version, r.to_stage, r.status, r.requested_by, r.requested_ms,
    r.comment, r.decided_by, r.decided_ms, r.decision_comment, r.archive_existing, r.model_id"""

# How search_models may order models: by name or by the time of their last change.
MODEL_ORDERS = {"name": "name", "updated": "updated_ms"}


# ---------------------------------------------------------------- registered models


async def create_model(conn: Conn, name: str, description: str) -> ModelRow:
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
    return ModelRow(**row)


async def get_model(conn: Conn, name: str, *, for_update: bool = False) -> ModelRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM registered_models WHERE name = $1{lock}", name)
    return ModelRow(**row) if row is not None else None


async def ensure_model(conn: Conn, name: str) -> ModelRow:
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
    conn: Conn, name_like: str, tags: dict[str, str], order_by: str, descending: bool, limit: int, offset: int
) -> list[ModelRow]:
    """Models whose name is LIKE `name_like` ("" for any) having every tag of `tags`, ordered
    by `order_by` (a key of MODEL_ORDERS), then by id."""
    order = f"{MODEL_ORDERS[order_by]} {'DESC' if descending else 'ASC'}"
    rows = await conn.fetch(
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
    return [ModelRow(**r) for r in rows]


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


# ---------------------------------------------------------------- versions


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


async def insert_version(
    conn: Conn,
    *,
    model_id: int,
    version: int,
    run_id: str,
    artifact_path: str,
    source_size: int,
    source_digest: str,
    source_files: int,
    description: str,
    created_by: str,
) -> None:
    now = now_ms()
    try:
        await _insert_version(conn, model_id, version, run_id, artifact_path, source_size, source_digest,
                              source_files, description, created_by, now)  # fmt: skip
    except asyncpg.ForeignKeyViolationError:  # purged (runstream admin gc) while it was registered
        raise RunNotFound(f"run {run_id} does not exist (it was purged)") from None


async def _insert_version(conn: Conn, *values: Any) -> None:
    await conn.execute(
        """INSERT INTO model_versions (model_id, version, run_id, artifact_path, source_size, source_digest,
                                       source_files, description, created_by, created_ms, updated_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)""",
        *values,
    )


async def get_version(conn: Conn, model_id: int, version: int, *, for_update: bool = False) -> VersionRow | None:
    lock = " FOR UPDATE OF v" if for_update else ""
    row = await conn.fetchrow(
        f"""SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 AND v.version = $2{lock}""",
        model_id,
        version,
    )
    return VersionRow(**row) if row is not None else None


async def list_versions(conn: Conn, model_id: int, stages: list[str]) -> list[VersionRow]:
    """The model's versions in `stages` (every one when empty), newest first."""
    rows = await conn.fetch(
        f"""SELECT {_VERSION_COLUMNS} FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 AND (cardinality($2::text[]) = 0 OR v.stage = ANY($2::text[]))
            ORDER BY v.version DESC""",
        model_id,
        stages,
    )
    return [VersionRow(**r) for r in rows]


async def latest_versions(conn: Conn, model_id: int) -> list[VersionRow]:
    """The newest version in each stage."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (v.stage) {_VERSION_COLUMNS}
            FROM model_versions v JOIN registered_models m USING (model_id)
            WHERE v.model_id = $1 ORDER BY v.stage, v.version DESC""",
        model_id,
    )
    return [VersionRow(**r) for r in rows]


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


async def delete_version(conn: Conn, model_id: int, version: int) -> None:
    await conn.execute("DELETE FROM model_versions WHERE model_id = $1 AND version = $2", model_id, version)


async def model_version_using(conn: Conn, run_id: str, path: str) -> tuple[str, int] | None:
    """(model name, version) of a registered model version whose source is this artifact (or a
    directory holding it)."""
    row = await conn.fetchrow(
        """SELECT m.name, v.version FROM model_versions v JOIN registered_models m USING (model_id)
           WHERE v.run_id = $1::uuid AND ($2 = v.artifact_path OR starts_with($2, v.artifact_path || '/'))
           ORDER BY m.name, v.version LIMIT 1""",
        run_id,
        path,
    )
    return (row["name"], row["version"]) if row else None


# ---------------------------------------------------------------- stages and aliases


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


# ---------------------------------------------------------------- history


async def add_event(
    conn: Conn,
    model: ModelRow,
    version: int,
    kind: str,
    actor: str,
    from_value: str = "",
    to_value: str = "",
    comment: str = "",
) -> EventRow:
    row = await conn.fetchrow(
        f"""INSERT INTO model_version_events (model_id, model_name, version, kind, actor, at_ms, from_value,
                                              to_value, comment)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            RETURNING {_EVENT_COLUMNS}""",
        model.model_id,
        model.name,
        version,
        kind,
        actor,
        now_ms(),
        from_value,
        to_value,
        comment,
    )
    assert row is not None  # INSERT ... RETURNING
    return EventRow(**row)


async def version_events(conn: Conn, model_id: int, version: int) -> list[EventRow]:
    rows = await conn.fetch(
        f"""SELECT {_EVENT_COLUMNS}
            FROM model_version_events WHERE model_id = $1 AND version = $2 ORDER BY event_id""",
        model_id,
        version,
    )
    return [EventRow(**r) for r in rows]


# ---------------------------------------------------------------- transition requests


async def create_transition_request(
    conn: Conn, model_id: int, version: int, to_stage: str, archive_existing: bool, actor: str, comment: str
) -> TransitionRequestRow:
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


async def get_transition_request(
    conn: Conn, request_id: int, *, for_update: bool = False
) -> TransitionRequestRow | None:
    lock = " FOR UPDATE OF r" if for_update else ""
    row = await conn.fetchrow(
        f"""SELECT {_REQUEST_COLUMNS} FROM transition_requests r JOIN registered_models m USING (model_id)
            WHERE r.request_id = $1{lock}""",
        request_id,
    )
    return TransitionRequestRow(**row) if row is not None else None


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


async def transition_requests(conn: Conn, model_id: int, version: int) -> list[TransitionRequestRow]:
    rows = await conn.fetch(
        f"""SELECT {_REQUEST_COLUMNS} FROM transition_requests r JOIN registered_models m USING (model_id)
            WHERE r.model_id = $1 AND r.version = $2 ORDER BY r.request_id""",
        model_id,
        version,
    )
    return [TransitionRequestRow(**r) for r in rows]


async def model_of_transition_request(conn: Conn, request_id: int) -> str | None:
    name = await conn.fetchval(
        """SELECT m.name FROM transition_requests t JOIN registered_models m USING (model_id)
            WHERE t.request_id = $1""",
        request_id,
    )
    return None if name is None else str(name)

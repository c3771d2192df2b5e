"""Logged models (MLflow 3): what a run says about a model it saved. The files are the run's
artifacts under models/<model_id>; a row here names them, with a status, params and tags.
Part of the TrackingService (see protos/runstream/v1/tracking.proto)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from runstream.errors import InvalidArgument, NotFound
from runstream.server.auth.guard import acting_user
from runstream.server.rpc import fields
from runstream.server.rpc.fields import MAX_PARAM_VALUE, MAX_TAG_VALUE, check_values
from runstream.server.rpc.paging import PageTokens
from runstream.server.storage import logged_models
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

MAX_NAME = 500
MODEL_ID_PREFIX = "m-"


def artifact_path(model_id: str) -> str:
    """Where in its run's artifacts a logged model's files live."""
    return f"models/{model_id}"


def check_model_id(model_id: str) -> str:
    body = model_id[len(MODEL_ID_PREFIX) :] if model_id.startswith(MODEL_ID_PREFIX) else ""
    if len(body) != 32 or any(c not in "0123456789abcdef" for c in body):
        raise InvalidArgument(f"{model_id[:80]!r} is not a logged model id (m- and 32 lowercase hex digits)")
    return model_id


class LoggedModels:
    def __init__(self, pool: asyncpg.Pool, tokens: PageTokens) -> None:
        self.pool = pool
        self.tokens = tokens

    async def CreateLoggedModel(self, req: pb.CreateLoggedModelRequest, ctx: Any) -> pb.LoggedModel:
        wire.check_run_id(req.run_id)
        if not 0 < len(req.name) <= MAX_NAME or "/" in req.name:
            raise InvalidArgument(f"a logged model's name has 1 to {MAX_NAME} characters and no '/'")
        if len(req.model_type) > MAX_NAME:
            raise InvalidArgument(f"model_type is longer than {MAX_NAME} characters")
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        check_values(dict(req.params), "param", MAX_PARAM_VALUE)
        model_id = MODEL_ID_PREFIX + uuid.uuid4().hex
        async with self.pool.acquire() as conn, conn.transaction():
            await fields.active_run(conn, req.run_id, "logging a model to it")
            row = await logged_models.create_logged_model(
                conn,
                model_id,
                req.run_id,
                req.name,
                req.model_type,
                pb.LOGGED_MODEL_STATUS_PENDING,
                dict(req.tags),
                dict(req.params),
                acting_user(ctx),
            )
        return logged_model_message(row)

    async def GetLoggedModel(self, req: pb.LoggedModelRef, ctx: Any) -> pb.LoggedModel:
        async with self.pool.acquire() as conn:
            row = await logged_models.get_logged_model(conn, check_model_id(req.model_id))
        return logged_model_message(_found(row, req.model_id))

    async def UpdateLoggedModel(self, req: pb.UpdateLoggedModelRequest, ctx: Any) -> pb.LoggedModel:
        model_id = check_model_id(req.model_id)
        check_values(dict(req.set_tags), "tag", MAX_TAG_VALUE)
        check_values(dict(req.set_params), "param", MAX_PARAM_VALUE)
        if req.status not in pb.LoggedModelStatus.values():
            raise InvalidArgument(f"status {req.status} is not a LoggedModelStatus")
        async with self.pool.acquire() as conn:
            row = await logged_models.update_logged_model(
                conn,
                model_id,
                req.status or None,
                req.status_message if req.status else None,
                dict(req.set_tags),
                list(req.delete_tags),
                dict(req.set_params),
            )
        return logged_model_message(_found(row, model_id))

    async def SearchLoggedModels(self, req: pb.SearchLoggedModelsRequest, ctx: Any) -> pb.SearchLoggedModelsResponse:
        if not req.experiment_ids:
            raise InvalidArgument("give at least one experiment id")
        ids = [fields.experiment_id(e) for e in req.experiment_ids]
        if req.run_id:
            wire.check_run_id(req.run_id)
        limit = req.max_results or 100
        if not 1 <= limit <= 1000:
            raise InvalidArgument(f"max_results is {limit}; it must be between 1 and 1,000")
        query = "\x00".join(["logged models", repr(sorted(ids)), req.run_id, req.name])
        offset = int(self.tokens.read(req.page_token, query)) if req.page_token else 0
        async with self.pool.acquire() as conn:
            rows = await logged_models.search_logged_models(
                conn, ids, req.run_id or None, req.name or None, limit + 1, offset
            )
        out = pb.SearchLoggedModelsResponse(models=[logged_model_message(r) for r in rows[:limit]])
        if len(rows) > limit:
            out.next_page_token = self.tokens.issue(offset + limit, query)
        return out

    async def DeleteLoggedModel(self, req: pb.LoggedModelRef, ctx: Any) -> pb.LoggedModel:
        model_id = check_model_id(req.model_id)
        async with self.pool.acquire() as conn:
            row = await logged_models.set_logged_model_lifecycle(conn, model_id, "deleted")
        return logged_model_message(_found(row, model_id))


def _found(row: logged_models.LoggedModelRow | None, model_id: str) -> logged_models.LoggedModelRow:
    if row is None:
        raise NotFound(f"logged model {model_id} does not exist")
    return row


def logged_model_message(row: logged_models.LoggedModelRow) -> pb.LoggedModel:
    return pb.LoggedModel(
        model_id=row.model_id,
        experiment_id=row.experiment_id,
        run_id=row.run_id,
        artifact_path=artifact_path(row.model_id),
        name=row.name,
        model_type=row.model_type,
        status=row.status,  # type: ignore[arg-type]
        status_message=row.status_message,
        tags=row.tags,
        params=row.params,
        created_ms=row.created_ms,
        updated_ms=row.updated_ms,
        created_by=row.created_by,
        lifecycle_stage=row.lifecycle_stage,
    )

"""The RegistryService: registered models, their versions (each an artifact of a run), stages
and aliases, reviews through comments and transition requests, an append-only history of every
change, and lineage from a version back to its run's params, code and data."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from runstream.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from runstream.server.artifacts.paths import check_path
from runstream.server.auth.guard import USER_METADATA, acting_user
from runstream.server.rpc import fields
from runstream.server.rpc.fields import MAX_TAG_VALUE, check_values
from runstream.server.rpc.messages import input_message, run_message
from runstream.server.rpc.paging import PageTokens
from runstream.server.storage import artifacts, experiments, registry, runs, search
from runstream.wire import batch as wire
from runstream.wire.ids import whole_number
from runstream.wire.proto import registry_pb2 as rpb

STAGES = ("None", "Staging", "Production", "Archived")
# Forward along None -> Staging -> Production (skipping allowed), archived from anywhere,
# back from Production to Staging (a rollback), and out of Archived only through Staging or None.
NEXT_STAGES = {
    "None": {"Staging", "Production", "Archived"},
    "Staging": {"None", "Production", "Archived"},
    "Production": {"Staging", "Archived"},
    "Archived": {"None", "Staging"},
}
NAME = re.compile(r"[^/@\x00-\x1f\x7f]{1,250}")
ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,254}")
URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<ref>[^/@]+)|@(?P<alias>[^/@]+))")
MAX_TEXT = 5000
MAX_VERSION = 2**31 - 1  # versions are PostgreSQL integers


class Registry:
    def __init__(self, pool: asyncpg.Pool, tokens: PageTokens) -> None:
        self.pool = pool
        self.tokens = tokens

    # ------------------------------------------------------------ registered models

    async def CreateRegisteredModel(self, req: rpb.CreateRegisteredModelRequest, ctx: Any) -> rpb.RegisteredModel:
        name = _check_name(req.name)
        _check_text(req.description, "description")
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await registry.create_model(conn, name, req.description)
            await registry.update_model(conn, model.model_id, None, dict(req.tags), [])
            return await _model_message(conn, model)

    async def GetRegisteredModel(self, req: rpb.ModelRef, ctx: Any) -> rpb.RegisteredModel:
        async with self.pool.acquire() as conn:
            return await _model_message(conn, await _model(conn, req.name))

    async def RenameRegisteredModel(self, req: rpb.RenameRegisteredModelRequest, ctx: Any) -> rpb.RegisteredModel:
        new_name = _check_name(req.new_name)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name, for_update=True)
            await registry.rename_model(conn, model.model_id, new_name)
            return await _model_message(conn, await _model(conn, new_name))

    async def UpdateRegisteredModel(self, req: rpb.UpdateRegisteredModelRequest, ctx: Any) -> rpb.RegisteredModel:
        description = req.description if req.HasField("description") else None
        _check_text(description or "", "description")
        check_values(dict(req.set_tags), "tag", MAX_TAG_VALUE)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name, for_update=True)
            await registry.update_model(conn, model.model_id, description, dict(req.set_tags), list(req.delete_tags))
            return await _model_message(conn, await _model(conn, req.name))

    async def DeleteRegisteredModel(self, req: rpb.ModelRef, ctx: Any) -> rpb.RegistryDeleteResponse:
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name, for_update=True)
            for v in await registry.list_versions(conn, model.model_id, []):
                await registry.add_event(conn, model, v.version, "deleted", actor, comment="the model was deleted")
            await registry.delete_model(conn, model.model_id)
        return rpb.RegistryDeleteResponse()

    async def SearchRegisteredModels(
        self, req: rpb.SearchRegisteredModelsRequest, ctx: Any
    ) -> rpb.SearchRegisteredModelsResponse:
        order = _model_order(req.order_by)
        limit = req.max_results or 100
        if not 1 <= limit <= 1000:
            raise InvalidArgument(f"max_results is {limit}; it must be between 1 and 1,000")
        query = "\x00".join(["models", req.name_like, repr(sorted(req.tags.items())), req.order_by])
        offset = int(self.tokens.read(req.page_token, query)) if req.page_token else 0
        search.check_like(req.name_like, "name_like")
        async with self.pool.acquire() as conn:
            rows = await registry.search_models(conn, req.name_like, dict(req.tags), *order, limit + 1, offset)
            out = rpb.SearchRegisteredModelsResponse(
                models=[await _model_message(conn, r) for r in rows[:limit]],
            )
        if len(rows) > limit:
            out.next_page_token = self.tokens.issue(offset + limit, query)
        return out

    # ------------------------------------------------------------ versions

    async def CreateModelVersion(self, req: rpb.CreateModelVersionRequest, ctx: Any) -> rpb.ModelVersion:
        name = _check_name(req.name)
        wire.check_run_id(req.run_id)
        path = check_path(req.artifact_path.strip("/"))
        _check_text(req.description, "description")
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            await fields.active_run(conn, req.run_id, "registering its model")
            source = await artifacts.artifact_source(conn, req.run_id, path)
            if source is None:
                raise FailedPrecondition(
                    f"run {req.run_id} has no artifact at {path!r}; log the model there first (run.log_artifacts)"
                )
            model = await registry.ensure_model(conn, name)
            version = await registry.next_version(conn, model.model_id)
            await registry.insert_version(
                conn,
                model_id=model.model_id,
                version=version,
                run_id=req.run_id,
                artifact_path=path,
                source_size=source.size,
                source_digest=source.digest,
                source_files=source.files,
                description=req.description,
                created_by=actor,
            )
            await registry.update_version(conn, model.model_id, version, None, dict(req.tags), [])
            await registry.add_event(conn, model, version, "created", actor, to_value=f"runs:/{req.run_id}/{path}")
            return await _version_message(conn, model.model_id, version)

    async def GetModelVersion(self, req: rpb.ModelVersionRef, ctx: Any) -> rpb.ModelVersion:
        async with self.pool.acquire() as conn:
            model = await _model(conn, req.name)
            await _version(conn, model, req.version)
            return await _version_message(conn, model.model_id, req.version)

    async def ResolveModelUri(self, req: rpb.ResolveModelUriRequest, ctx: Any) -> rpb.ModelVersion:
        match = URI.fullmatch(req.uri)
        if match is None:
            raise InvalidArgument(
                f"{req.uri[:300]!r} is not a model URI: use models:/NAME/VERSION, models:/NAME/STAGE, "
                "models:/NAME/latest or models:/NAME@ALIAS"
            )
        async with self.pool.acquire() as conn:
            model = await _model(conn, match["name"])
            version = await _resolve(conn, model, match["ref"], match["alias"])
            return await _version_message(conn, model.model_id, version)

    async def ListModelVersions(self, req: rpb.ListModelVersionsRequest, ctx: Any) -> rpb.ListModelVersionsResponse:
        stages = [_check_stage(s) for s in req.stages]
        async with self.pool.acquire() as conn:
            model = await _model(conn, req.name)
            rows = await registry.list_versions(conn, model.model_id, stages)
            return rpb.ListModelVersionsResponse(
                versions=[await _version_message(conn, model.model_id, r.version) for r in rows]
            )

    async def UpdateModelVersion(self, req: rpb.UpdateModelVersionRequest, ctx: Any) -> rpb.ModelVersion:
        description = req.description if req.HasField("description") else None
        _check_text(description or "", "description")
        check_values(dict(req.set_tags), "tag", MAX_TAG_VALUE)
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name)
            current = await _version(conn, model, req.version, for_update=True)
            mid = model.model_id
            before = await registry.version_tags(conn, mid, req.version)
            await registry.update_version(
                conn, mid, req.version, description, dict(req.set_tags), list(req.delete_tags)
            )
            if description is not None and description != current.description:
                await registry.add_event(
                    conn, model, req.version, "description", actor, current.description, description
                )
            for key, value in req.set_tags.items():
                if before.get(key) != value:
                    await registry.add_event(
                        conn, model, req.version, "tag_set", actor, before.get(key, ""), f"{key}={value}"
                    )
            for key in req.delete_tags:
                if key in before:
                    await registry.add_event(conn, model, req.version, "tag_deleted", actor, f"{key}={before[key]}")
            return await _version_message(conn, mid, req.version)

    async def DeleteModelVersion(self, req: rpb.ModelVersionRef, ctx: Any) -> rpb.RegistryDeleteResponse:
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name, for_update=True)
            current = await _version(conn, model, req.version)
            await registry.add_event(conn, model, req.version, "deleted", actor, from_value=current.stage)
            await registry.delete_version(conn, model.model_id, req.version)
        return rpb.RegistryDeleteResponse()

    # ------------------------------------------------------------ stages and aliases

    async def TransitionStage(self, req: rpb.TransitionStageRequest, ctx: Any) -> rpb.ModelVersion:
        stage = _check_stage(req.stage)
        _check_text(req.comment, "comment")
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name, for_update=True)  # one transition of a model at a time
            await _transition(conn, model, req.version, stage, req.archive_existing, actor, req.comment)
            return await _version_message(conn, model.model_id, req.version)

    async def SetAlias(self, req: rpb.SetAliasRequest, ctx: Any) -> rpb.ModelVersion:
        alias = _check_alias(req.alias)
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name)
            await _version(conn, model, req.version)
            before = await registry.set_alias(conn, model.model_id, alias, req.version)
            if before != req.version:
                if before is not None:
                    await registry.add_event(conn, model, before, "alias_moved_away", actor, alias, f"v{req.version}")
                await registry.add_event(
                    conn, model, req.version, "alias_set", actor, f"v{before}" if before else "", alias
                )
            return await _version_message(conn, model.model_id, req.version)

    async def DeleteAlias(self, req: rpb.DeleteAliasRequest, ctx: Any) -> rpb.RegistryDeleteResponse:
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name)
            version = await registry.delete_alias(conn, model.model_id, req.alias)
            if version is None:
                raise NotFound(f"registered model {req.name!r} has no alias {req.alias!r}")
            await registry.add_event(conn, model, version, "alias_deleted", actor, from_value=req.alias)
        return rpb.RegistryDeleteResponse()

    # ------------------------------------------------------------ review

    async def CreateComment(self, req: rpb.CreateCommentRequest, ctx: Any) -> rpb.ModelVersionEvent:
        if not req.comment.strip():
            raise InvalidArgument("comment is empty")
        _check_text(req.comment, "comment")
        actor = _actor(ctx)
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name)
            await _version(conn, model, req.version)
            return _event_message(
                await registry.add_event(conn, model, req.version, "comment", actor, comment=req.comment)
            )

    async def CreateTransitionRequest(self, req: rpb.CreateTransitionRequestRequest, ctx: Any) -> rpb.TransitionRequest:
        stage = _check_stage(req.stage)
        _check_text(req.comment, "comment")
        actor = _required_actor(ctx, "request a transition")
        async with self.pool.acquire() as conn, conn.transaction():
            model = await _model(conn, req.name)
            current = await _version(conn, model, req.version)
            _check_transition(req.name, req.version, current.stage, stage)
            row = await registry.create_transition_request(
                conn, model.model_id, req.version, stage, req.archive_existing, actor, req.comment
            )
            await registry.add_event(
                conn, model, req.version, "transition_requested", actor, current.stage, stage, req.comment
            )
            return _request_message(row)

    async def ListTransitionRequests(self, req: rpb.ModelVersionRef, ctx: Any) -> rpb.ListTransitionRequestsResponse:
        async with self.pool.acquire() as conn:
            model = await _model(conn, req.name)
            await _version(conn, model, req.version)
            rows = await registry.transition_requests(conn, model.model_id, req.version)
        return rpb.ListTransitionRequestsResponse(requests=[_request_message(r) for r in rows])

    async def ApproveTransitionRequest(self, req: rpb.DecideTransitionRequest, ctx: Any) -> rpb.TransitionRequest:
        return await self._decide(req, ctx, approve=True)

    async def RejectTransitionRequest(self, req: rpb.DecideTransitionRequest, ctx: Any) -> rpb.TransitionRequest:
        return await self._decide(req, ctx, approve=False)

    async def _decide(self, req: rpb.DecideTransitionRequest, ctx: Any, *, approve: bool) -> rpb.TransitionRequest:
        verb = "approve" if approve else "reject"
        actor = _required_actor(ctx, f"{verb} a transition request")
        _check_text(req.comment, "comment")
        async with self.pool.acquire() as conn, conn.transaction():
            found = await registry.get_transition_request(conn, req.request_id)
            if found is None:
                raise NotFound(f"transition request {req.request_id} does not exist")
            model = await _model(conn, found.name, for_update=True)
            request = await registry.get_transition_request(conn, req.request_id, for_update=True)
            assert request is not None  # the model lock is held and requests go only with their version
            if request.status != "pending":
                raise FailedPrecondition(
                    f"transition request {req.request_id} was already {request.status} by {request.decided_by}"
                )
            if request.requested_by == actor:
                raise FailedPrecondition(f"{actor} requested this transition; someone else must {verb} it")
            version = request.version
            before = (await _version(conn, model, version)).stage
            if approve:
                await _transition(conn, model, version, request.to_stage, request.archive_existing, actor, req.comment)
            status = "approved" if approve else "rejected"
            await registry.decide_transition_request(conn, req.request_id, status, actor, req.comment)
            await registry.add_event(
                conn, model, version, f"transition_{status}", actor, before, request.to_stage, req.comment
            )
            done = await registry.get_transition_request(conn, req.request_id)
            assert done is not None
            return _request_message(done)

    async def GetModelVersionHistory(self, req: rpb.ModelVersionRef, ctx: Any) -> rpb.ModelVersionHistory:
        async with self.pool.acquire() as conn:
            model = await _model(conn, req.name)
            events = await registry.version_events(conn, model.model_id, req.version)
        if not events:
            raise NotFound(f"registered model {req.name!r} has no version {req.version}")
        return rpb.ModelVersionHistory(events=[_event_message(e) for e in events])

    # ------------------------------------------------------------ lineage

    async def GetModelVersionLineage(self, req: rpb.ModelVersionRef, ctx: Any) -> rpb.ModelVersionLineage:
        async with self.pool.acquire() as conn:
            model = await _model(conn, req.name)
            version = await _version(conn, model, req.version)
            run = await runs.get_run(conn, version.run_id)
            experiment = await experiments.get_experiment(conn, experiment_id=int(run.experiment_id))
            inputs = await runs.run_inputs(conn, version.run_id)
            return rpb.ModelVersionLineage(
                version=await _version_message(conn, model.model_id, req.version),
                run=run_message(run),
                inputs=[input_message(i) for i in inputs],
                experiment_name=experiment.name,
            )


# ---------------------------------------------------------------- helpers


async def _transition(
    conn: Any, model: registry.ModelRow, version: int, stage: str, archive_existing: bool, actor: str, comment: str
) -> None:
    """Move `version` to `stage` (the caller holds the model's row lock), archiving the other
    versions in that stage when asked: one transaction, so there is never a moment with two."""
    current = await _version(conn, model, version, for_update=True)
    _check_transition(model.name, version, current.stage, stage)
    if archive_existing and stage in ("Staging", "Production"):
        for other in await registry.versions_in_stage(conn, model.model_id, stage, for_update=True):
            if other != version:
                await registry.set_stage(conn, model.model_id, other, "Archived")
                await registry.add_event(
                    conn,
                    model,
                    other,
                    "stage",
                    actor,
                    stage,
                    "Archived",
                    f"archived as version {version} became {stage}",
                )
    await registry.set_stage(conn, model.model_id, version, stage)
    await registry.add_event(conn, model, version, "stage", actor, current.stage, stage, comment)


def _check_transition(name: str, version: int, current: str, stage: str) -> None:
    if current == stage:
        raise FailedPrecondition(f"{name} version {version} is already in {stage}")
    if stage not in NEXT_STAGES[current]:
        allowed = ", ".join(sorted(NEXT_STAGES[current]))
        raise FailedPrecondition(
            f"{name} version {version} cannot go from {current} to {stage}; from {current} it can go to {allowed}"
        )


async def _resolve(conn: Any, model: registry.ModelRow, ref: str | None, alias: str | None) -> int:
    name, mid = model.name, model.model_id
    if alias is not None:
        aliased = await registry.alias_version(conn, mid, alias)
        if aliased is None:
            raise NotFound(f"registered model {name!r} has no alias {alias!r}")
        return aliased
    assert ref is not None
    if ref.isascii() and ref.isdigit():
        number = whole_number(ref, "model version", MAX_VERSION)
        await _version(conn, model, number)
        return number
    if ref.lower() == "latest":
        rows = await registry.list_versions(conn, mid, [])
    else:
        rows = await registry.list_versions(conn, mid, [_check_stage(ref)])
    if not rows:
        raise NotFound(f"registered model {name!r} has no version" + ("" if ref.lower() == "latest" else f" in {ref}"))
    version: int = rows[0].version
    return version


async def _model(conn: Any, name: str, *, for_update: bool = False) -> registry.ModelRow:
    model = await registry.get_model(conn, name, for_update=for_update)
    if model is None:
        raise NotFound(f"registered model {name[:250]!r} does not exist")
    return model


async def _version(
    conn: Any, model: registry.ModelRow, version: int, *, for_update: bool = False
) -> registry.VersionRow:
    row = await registry.get_version(conn, model.model_id, version, for_update=for_update)
    if row is None:
        raise NotFound(f"registered model {model.name!r} has no version {version}")
    return row


async def _model_message(conn: Any, model: registry.ModelRow) -> rpb.RegisteredModel:
    mid = model.model_id
    out = rpb.RegisteredModel(
        name=model.name,
        description=model.description,
        tags=await registry.model_tags(conn, mid),
        aliases=await registry.model_aliases(conn, mid),
        created_ms=model.created_ms,
        updated_ms=model.updated_ms,
    )
    for v in await registry.latest_versions(conn, mid):
        out.latest_versions.append(await _version_message(conn, mid, v.version, v))
    return out


async def _version_message(
    conn: Any, model_id: int, version: int, row: registry.VersionRow | None = None
) -> rpb.ModelVersion:
    v = row or await registry.get_version(conn, model_id, version)
    assert v is not None
    return rpb.ModelVersion(
        name=v.name,
        version=v.version,
        run_id=v.run_id,
        artifact_path=v.artifact_path,
        stage=v.stage,
        description=v.description,
        tags=await registry.version_tags(conn, model_id, version),
        aliases=await registry.version_aliases(conn, model_id, version),
        created_ms=v.created_ms,
        updated_ms=v.updated_ms,
        created_by=v.created_by,
        source_size=v.source_size,
        source_digest=v.source_digest,
        source_files=v.source_files,
    )


def _event_message(e: registry.EventRow) -> rpb.ModelVersionEvent:
    return rpb.ModelVersionEvent(
        event_id=e.event_id,
        name=e.model_name,
        version=e.version,
        kind=e.kind,
        actor=e.actor,
        at_ms=e.at_ms,
        from_value=e.from_value,
        to_value=e.to_value,
        comment=e.comment,
    )


def _request_message(r: registry.TransitionRequestRow) -> rpb.TransitionRequest:
    return rpb.TransitionRequest(
        request_id=r.request_id,
        name=r.name,
        version=r.version,
        to_stage=r.to_stage,
        status=r.status,
        requested_by=r.requested_by,
        requested_ms=r.requested_ms,
        comment=r.comment,
        decided_by=r.decided_by or "",
        decided_ms=r.decided_ms or 0,
        decision_comment=r.decision_comment or "",
        archive_existing=r.archive_existing,
    )


def _actor(ctx: Any) -> str:
    """The token's name with auth on; the caller's runstream-user metadata with auth off."""
    return acting_user(ctx)


def _required_actor(ctx: Any, what: str) -> str:
    actor = _actor(ctx)
    if actor == "anonymous":
        raise Unauthenticated(f"say who you are to {what}: send the {USER_METADATA} metadata (the SDK does)")
    return actor


def _check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name != name.strip():
        raise InvalidArgument(
            f"model name {name[:80]!r} is not valid: 1-250 characters without '/', '@', control characters "
            "or surrounding spaces"
        )
    return name


def _check_alias(alias: str) -> str:
    if not ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidArgument(
            f"alias {alias[:80]!r} is not valid: a letter or '_' then letters, digits, '_' or '-', "
            "and not 'latest' or a version like 'v3'"
        )
    return alias


def _check_stage(stage: str) -> str:
    for s in STAGES:
        if stage.lower() == s.lower():
            return s
    raise InvalidArgument(f"stage {stage[:80]!r} is not one of {', '.join(STAGES)}")


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"{what} has {len(text):,} characters; the limit is {MAX_TEXT:,}")
    fields.check_text(text, what)


def _model_order(order_by: str) -> tuple[str, bool]:
    """(a key of registry.MODEL_ORDERS, descending) for order_by: "name" or "updated", then ASC or DESC."""
    parts = order_by.split()
    column = parts[0].lower() if parts else "name"
    direction = parts[1].upper() if len(parts) > 1 else "ASC"
    if column not in registry.MODEL_ORDERS or direction not in ("ASC", "DESC") or len(parts) > 2:
        raise InvalidArgument(f"order_by {order_by[:80]!r}: use 'name' or 'updated', optionally with ASC or DESC")
    return column, direction == "DESC"

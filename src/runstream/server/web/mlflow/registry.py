"""MLflow's model registry (`registered-models/...`, `model-versions/...`) on our
RegistryService: a version made through MLflow is the same version in `runstream models`,
with the same stages, aliases and event history.

A version's source is an artifact of a run: MLflow's `runs:/<run>/<path>`, the run's
`mlflow-artifacts:/<experiment>/<run>/artifacts/<path>`, or a logged model (`models:/m-...`,
whose files are its run's models/<model_id>). Versions answer with `runs:/<run>/<path>` as
their source, which MLflow's client resolves through the run."""

from __future__ import annotations

import re

from runstream.errors import InvalidArgument
from runstream.server.web.calls import HttpCall
from runstream.server.web.mlflow import models
from runstream.server.web.mlflow.core import (
    INT32,
    INT64,
    Body,
    MlflowApi,
    boolean,
    endpoint,
    integer,
    listed,
    page_size,
    pairs,
    strings,
    text,
)
from runstream.server.web.mlflow.tracking import artifact_uri
from runstream.wire.proto import registry_pb2 as rpb
from runstream.wire.proto import tracking_pb2 as pb

SERVICE = "RegistryService"
RUNS_URI = re.compile(r"runs:/(?P<run>[^/]+)/(?P<path>.+)")
ARTIFACTS_URI = re.compile(
    r"(?:mlflow-artifacts:|https?://[^/]+/api/2\.0/mlflow-artifacts/artifacts)/+[^/]+/(?P<run>[^/]+)/artifacts/(?P<path>.+)"
)
LOGGED_MODEL_URI = re.compile(r"models:/(?P<model>m-[0-9a-f]{32})/?")
LOGGED_MODEL_PATH = re.compile(r"models/(?P<model>m-[0-9a-f]{32})")
# name = '...', name LIKE '...', tags.key = '...', joined by AND
CONDITION = re.compile(r"\s*(name|tags?\.`?[\w.-]+`?|run_id)\s*(=|!=|LIKE|ILIKE)\s*'((?:[^']|'')*)'\s*", re.I)


def version(v: rpb.ModelVersion) -> Body:
    out: Body = {
        "name": v.name,
        "version": str(v.version),
        "creation_timestamp": v.created_ms,
        "last_updated_timestamp": v.updated_ms,
        "user_id": v.created_by,
        "current_stage": v.stage,
        "description": v.description,
        "source": f"runs:/{v.run_id}/{v.artifact_path}",
        "run_id": v.run_id,
        "status": "READY",
        "tags": listed(v.tags),
        "aliases": list(v.aliases),
    }
    if match := LOGGED_MODEL_PATH.fullmatch(v.artifact_path):
        out["model_id"] = match["model"]
    return out


def registered_model(m: rpb.RegisteredModel) -> Body:
    return {
        "name": m.name,
        "creation_timestamp": m.created_ms,
        "last_updated_timestamp": m.updated_ms,
        "description": m.description,
        "latest_versions": [version(v) for v in m.latest_versions],
        "tags": listed(m.tags),
        "aliases": [{"alias": a, "version": str(n)} for a, n in sorted(m.aliases.items())],
    }


def _version_number(body: Body) -> int:
    number = integer(body, "version", 0, (1, INT32[1]))
    if number == 0:
        raise InvalidArgument("missing value for required parameter 'version'")
    return number


def _conditions(filter_text: str) -> list[tuple[str, str, str]]:
    """(field, operator, value) of `a = 'x' AND b LIKE 'y'`; the subset of MLflow's registry
    filter runstream serves."""
    if not filter_text.strip():
        return []
    out = []
    for part in re.split(r"\s+AND\s+", filter_text.strip(), flags=re.I):
        match = CONDITION.fullmatch(part)
        if match is None:
            raise InvalidArgument(
                f"cannot read {part!r}: filter by name = '...', name LIKE '...', tags.<key> = '...' or "
                "run_id = '...' (tags also with !=), joined by AND"
            )
        field = re.sub(r"^tag\.", "tags.", match[1].replace("`", ""))
        out.append((field, match[2].upper(), match[3].replace("''", "'")))
    return out


# ------------------------------------------------------------------ registered models


@endpoint("registered-models/create", "POST")
async def create_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.CreateRegisteredModelRequest(
        name=text(body, "name"), description=text(body, "description", required=False), tags=pairs(body, "tags")
    )
    return {"registered_model": registered_model(await api.call(SERVICE, "CreateRegisteredModel", req, ctx))}


@endpoint("registered-models/get", "GET")
async def get_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    found = await api.call(SERVICE, "GetRegisteredModel", rpb.ModelRef(name=text(body, "name")), ctx)
    return {"registered_model": registered_model(found)}


@endpoint("registered-models/rename", "POST")
async def rename_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.RenameRegisteredModelRequest(name=text(body, "name"), new_name=text(body, "new_name"))
    return {"registered_model": registered_model(await api.call(SERVICE, "RenameRegisteredModel", req, ctx))}


@endpoint("registered-models/update", "PATCH")
async def update_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.UpdateRegisteredModelRequest(name=text(body, "name"))
    if "description" in body:
        req.description = text(body, "description", required=False)
    return {"registered_model": registered_model(await api.call(SERVICE, "UpdateRegisteredModel", req, ctx))}


@endpoint("registered-models/delete", "DELETE")
async def delete_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call(SERVICE, "DeleteRegisteredModel", rpb.ModelRef(name=text(body, "name")), ctx)
    return {}


@endpoint("registered-models/search", "GET")
async def search_models(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.SearchRegisteredModelsRequest(
        max_results=page_size(body, 100), page_token=text(body, "page_token", required=False)
    )
    unequal: dict[str, str] = {}  # tags.k != 'v' (MLflow's client adds one for prompts): kept out of the page
    for field, op, value in _conditions(text(body, "filter", required=False)):
        if field.startswith("tags.") and op == "!=":
            unequal[field[5:]] = value
        elif field == "name" and op == "=":
            req.name_like = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        elif field == "name" and op == "LIKE":
            req.name_like = value
        elif field.startswith("tags.") and op == "=":
            req.tags[field[5:]] = value
        else:
            raise InvalidArgument(f"registered models cannot be filtered by {field} {op}")
    order = [o for o in strings(body, "order_by") if o.strip()]
    if order:
        parts = order[0].split()
        column = {"name": "name", "last_updated_timestamp": "updated", "timestamp": "updated"}.get(parts[0])
        if column is None or len(order) > 1:
            raise InvalidArgument("order registered models by name or last_updated_timestamp (one of them)")
        req.order_by = " ".join([column, *parts[1:]])
    page = await api.call(SERVICE, "SearchRegisteredModels", req, ctx)
    kept = [m for m in page.models if all(m.tags.get(k) != v for k, v in unequal.items())]
    reply: Body = {"registered_models": [registered_model(m) for m in kept]}
    if page.next_page_token:
        reply["next_page_token"] = page.next_page_token
    return reply


@endpoint("registered-models/get-latest-versions", "GET", "POST")
async def latest_versions(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    found: rpb.RegisteredModel = await api.call(
        SERVICE, "GetRegisteredModel", rpb.ModelRef(name=text(body, "name")), ctx
    )
    stages = {s.lower() for s in strings(body, "stages")}
    return {"model_versions": [version(v) for v in found.latest_versions if not stages or v.stage.lower() in stages]}


@endpoint("registered-models/set-tag", "POST")
async def set_model_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    tags = {text(body, "key"): text(body, "value", required=False)}
    await api.call(
        SERVICE, "UpdateRegisteredModel", rpb.UpdateRegisteredModelRequest(name=text(body, "name"), set_tags=tags), ctx
    )
    return {}


@endpoint("registered-models/delete-tag", "DELETE")
async def delete_model_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.UpdateRegisteredModelRequest(name=text(body, "name"), delete_tags=[text(body, "key")])
    await api.call(SERVICE, "UpdateRegisteredModel", req, ctx)
    return {}


@endpoint("registered-models/alias", "POST")
async def set_alias(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.SetAliasRequest(name=text(body, "name"), alias=text(body, "alias"), version=_version_number(body))
    await api.call(SERVICE, "SetAlias", req, ctx)
    return {}


@endpoint("registered-models/alias", "DELETE")
async def delete_alias(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.DeleteAliasRequest(name=text(body, "name"), alias=text(body, "alias"))
    await api.call(SERVICE, "DeleteAlias", req, ctx)
    return {}


@endpoint("registered-models/alias", "GET")
async def version_by_alias(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    uri = f"models:/{text(body, 'name')}@{text(body, 'alias')}"
    return {
        "model_version": version(await api.call(SERVICE, "ResolveModelUri", rpb.ResolveModelUriRequest(uri=uri), ctx))
    }


# ------------------------------------------------------------------ versions


async def _source(api: MlflowApi, ctx: HttpCall, body: Body) -> tuple[str, str]:
    """(run id, artifact path) of a version's source."""
    source = text(body, "source")
    model_id = text(body, "model_id", required=False)
    if match := LOGGED_MODEL_URI.fullmatch(source):
        model_id = match["model"]
    if model_id:
        logged = await models.get(api, ctx, model_id)
        return logged.run_id, logged.artifact_path
    match = RUNS_URI.fullmatch(source) or ARTIFACTS_URI.fullmatch(source)
    if match is None:
        raise InvalidArgument(
            f"source {source[:200]!r} is not an artifact of a runstream run: use runs:/<run>/<path>, "
            "the run's mlflow-artifacts:/ URI or a logged model's models:/m-..."
        )
    return match["run"], match["path"].strip("/")


@endpoint("model-versions/create", "POST")
async def create_version(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    run_id, path = await _source(api, ctx, body)
    given_run = text(body, "run_id", required=False)
    if given_run and given_run.replace("-", "").lower() != run_id.replace("-", "").lower():
        raise InvalidArgument(f"source is an artifact of run {run_id}, not of run_id {given_run}")
    req = rpb.CreateModelVersionRequest(
        name=text(body, "name"),
        run_id=run_id,
        artifact_path=path,
        description=text(body, "description", required=False),
        tags=pairs(body, "tags"),
    )
    return {"model_version": version(await api.call(SERVICE, "CreateModelVersion", req, ctx))}


@endpoint("model-versions/get", "GET")
async def get_version(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    ref = rpb.ModelVersionRef(name=text(body, "name"), version=_version_number(body))
    return {"model_version": version(await api.call(SERVICE, "GetModelVersion", ref, ctx))}


@endpoint("model-versions/update", "PATCH")
async def update_version(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.UpdateModelVersionRequest(name=text(body, "name"), version=_version_number(body))
    if "description" in body:
        req.description = text(body, "description", required=False)
    return {"model_version": version(await api.call(SERVICE, "UpdateModelVersion", req, ctx))}


@endpoint("model-versions/transition-stage", "POST")
async def transition(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.TransitionStageRequest(
        name=text(body, "name"),
        version=_version_number(body),
        stage=_stage(text(body, "stage")),
        archive_existing=boolean(body, "archive_existing_versions"),
    )
    return {"model_version": version(await api.call(SERVICE, "TransitionStage", req, ctx))}


def _stage(name: str) -> str:
    """MLflow takes stages in any case."""
    for stage in ("None", "Staging", "Production", "Archived"):
        if name.lower() == stage.lower():
            return stage
    raise InvalidArgument(f"stage {name!r} is not one of None, Staging, Production, Archived")


@endpoint("model-versions/delete", "DELETE")
async def delete_version(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    ref = rpb.ModelVersionRef(name=text(body, "name"), version=_version_number(body))
    await api.call(SERVICE, "DeleteModelVersion", ref, ctx)
    return {}


@endpoint("model-versions/search", "GET")
async def search_versions(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """By name = '...' (needed), and optionally run_id = '...'; newest first."""
    name, run_id, unequal = "", "", {}
    for field, op, value in _conditions(text(body, "filter", required=False)):
        if field.startswith("tags.") and op == "!=":
            unequal[field[5:]] = value
        elif field == "name" and op == "=":
            name = value
        elif field == "run_id" and op == "=":
            run_id = value
        else:
            raise InvalidArgument(
                f"model versions can be filtered by name = '...' and run_id = '...', not {field} {op}"
            )
    if not name:
        raise InvalidArgument("runstream searches the versions of one model: give name = '...' in the filter")
    found: rpb.ListModelVersionsResponse = await api.call(
        SERVICE, "ListModelVersions", rpb.ListModelVersionsRequest(name=name), ctx
    )
    wanted = run_id.replace("-", "").lower()
    versions = [
        v
        for v in found.versions
        if (not wanted or v.run_id.replace("-", "") == wanted) and all(v.tags.get(k) != x for k, x in unequal.items())
    ]
    return {"model_versions": [version(v) for v in versions[: integer(body, "max_results", 10_000, (0, INT64[1]))]]}


@endpoint("model-versions/get-download-uri", "GET")
async def download_uri(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    ref = rpb.ModelVersionRef(name=text(body, "name"), version=_version_number(body))
    v: rpb.ModelVersion = await api.call(SERVICE, "GetModelVersion", ref, ctx)
    run: pb.Run = await api.call("TrackingService", "GetRun", pb.GetRunRequest(run_id=v.run_id), ctx)
    return {"artifact_uri": artifact_uri(run.experiment_id, v.run_id, v.artifact_path)}


@endpoint("model-versions/set-tag", "POST")
async def set_version_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.UpdateModelVersionRequest(
        name=text(body, "name"),
        version=_version_number(body),
        set_tags={text(body, "key"): text(body, "value", required=False)},
    )
    await api.call(SERVICE, "UpdateModelVersion", req, ctx)
    return {}


@endpoint("model-versions/delete-tag", "DELETE")
async def delete_version_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = rpb.UpdateModelVersionRequest(
        name=text(body, "name"), version=_version_number(body), delete_tags=[text(body, "key")]
    )
    await api.call(SERVICE, "UpdateModelVersion", req, ctx)
    return {}

"""MLflow 3's logged models (`/mlflow/logged-models/...`), `runs/outputs` and the older
`runs/log-model`, on our logged models: enough for `mlflow.<flavor>.log_model`. A logged
model's files go to its source run's artifacts under models/<model_id>, through the
mlflow-artifacts endpoints, so registering it makes a model version of that directory."""

from __future__ import annotations

import json
import re
from typing import Any

from runstream.errors import FailedPrecondition, InvalidArgument
from runstream.server.web.calls import HttpCall
from runstream.server.web.mlflow.artifacts import listing
from runstream.server.web.mlflow.core import Body, MlflowApi, endpoint, listed, objects, page_size, pairs, strings, text
from runstream.server.web.mlflow.tracking import artifact_uri
from runstream.wire.proto import tracking_pb2 as pb

SERVICE = "TrackingService"
STATUS = {
    pb.LOGGED_MODEL_STATUS_PENDING: "LOGGED_MODEL_PENDING",
    pb.LOGGED_MODEL_STATUS_READY: "LOGGED_MODEL_READY",
    pb.LOGGED_MODEL_STATUS_FAILED: "LOGGED_MODEL_UPLOAD_FAILED",
}
STATUS_VALUES = {name: value for value, name in STATUS.items()}
HISTORY_TAG = "mlflow.log-model.history"  # MLflow 2's record of the models a run logged
CONDITION = re.compile(r"\s*(?:attributes?\.)?(source_run_id|name)\s*=\s*'((?:[^']|'')*)'\s*")


def logged_model(m: pb.LoggedModel) -> Body:
    info: Body = {
        "model_id": m.model_id,
        "experiment_id": m.experiment_id,
        "name": m.name,
        "creation_timestamp_ms": m.created_ms,
        "last_updated_timestamp_ms": m.updated_ms,
        "artifact_uri": artifact_uri(m.experiment_id, m.run_id, m.artifact_path),
        "status": STATUS.get(m.status, "LOGGED_MODEL_STATUS_UNSPECIFIED"),
        "model_type": m.model_type,
        "source_run_id": m.run_id,
        "status_message": m.status_message,
        "tags": listed(m.tags),
    }
    return {"info": info, "data": {"params": listed(m.params), "metrics": []}}


async def get(api: MlflowApi, ctx: HttpCall, model_id: str) -> pb.LoggedModel:
    found: pb.LoggedModel = await api.call(SERVICE, "GetLoggedModel", pb.LoggedModelRef(model_id=model_id), ctx)
    return found


@endpoint("logged-models", "POST")
async def create(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    run_id = text(body, "source_run_id", required=False)
    if not run_id:
        raise FailedPrecondition(
            "runstream keeps a logged model's files with the run that logged it: log the model inside a run"
        )
    if (experiment_id := text(body, "experiment_id", required=False)) not in ("", "0"):
        run: pb.Run = await api.call(SERVICE, "GetRun", pb.GetRunRequest(run_id=run_id), ctx)
        if run.experiment_id != experiment_id:
            raise InvalidArgument(f"run {run_id} is in experiment {run.experiment_id}, not {experiment_id}")
    req = pb.CreateLoggedModelRequest(
        run_id=run_id,
        name=text(body, "name", required=False) or "model",
        model_type=text(body, "model_type", required=False),
        tags=pairs(body, "tags"),
        params=pairs(body, "params"),
    )
    made: pb.LoggedModel = await api.call(SERVICE, "CreateLoggedModel", req, ctx)
    return {"model": logged_model(made)}


@endpoint("logged-models/search", "POST")
async def search(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """No filter, or `source_run_id = '...'` and/or `name = '...'`; newest first."""
    req = pb.SearchLoggedModelsRequest(
        experiment_ids=strings(body, "experiment_ids"),
        max_results=page_size(body, 100),
        page_token=text(body, "page_token", required=False),
    )
    if filter_text := text(body, "filter", required=False).strip():
        for part in re.split(r"\s+AND\s+", filter_text, flags=re.I):
            match = CONDITION.fullmatch(part)
            if match is None:
                raise InvalidArgument(
                    f"logged models can be filtered by source_run_id = '...' and name = '...', not {part!r}"
                )
            setattr(req, "run_id" if match[1] == "source_run_id" else "name", match[2].replace("''", "'"))
    page: pb.SearchLoggedModelsResponse = await api.call(SERVICE, "SearchLoggedModels", req, ctx)
    reply: Body = {"models": [logged_model(m) for m in page.models]}
    if page.next_page_token:
        reply["next_page_token"] = page.next_page_token
    return reply


@endpoint("logged-models/{model_id}", "GET")
async def get_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    return {"model": logged_model(await get(api, ctx, body["model_id"]))}


@endpoint("logged-models/{model_id}", "PATCH")
async def finalize(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    status = text(body, "status")
    if status not in STATUS_VALUES:
        raise InvalidArgument(f"status {status!r} is not one of {', '.join(STATUS_VALUES)}")
    req = pb.UpdateLoggedModelRequest(model_id=body["model_id"], status=STATUS_VALUES[status])
    return {"model": logged_model(await api.call(SERVICE, "UpdateLoggedModel", req, ctx))}


@endpoint("logged-models/{model_id}", "DELETE")
async def delete(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call(SERVICE, "DeleteLoggedModel", pb.LoggedModelRef(model_id=body["model_id"]), ctx)
    return {}


@endpoint("logged-models/{model_id}/tags", "PATCH")
async def set_tags(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateLoggedModelRequest(model_id=body["model_id"], set_tags=pairs(body, "tags"))
    return {"model": logged_model(await api.call(SERVICE, "UpdateLoggedModel", req, ctx))}


@endpoint("logged-models/{model_id}/tags/{tag_key}", "DELETE")
async def delete_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateLoggedModelRequest(model_id=body["model_id"], delete_tags=[body["tag_key"]])
    await api.call(SERVICE, "UpdateLoggedModel", req, ctx)
    return {}


@endpoint("logged-models/{model_id}/params", "POST")
async def log_params(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateLoggedModelRequest(model_id=body["model_id"], set_params=pairs(body, "params"))
    await api.call(SERVICE, "UpdateLoggedModel", req, ctx)
    return {}


@endpoint("logged-models/{model_id}/artifacts/directories", "GET")
async def list_files(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    model = await get(api, ctx, body["model_id"])
    under = text(body, "artifact_directory_path", required=False).strip("/")
    prefix = f"{model.artifact_path}/{under}" if under else model.artifact_path
    files = await listing(api, ctx, model.run_id, prefix)
    return {"root_uri": artifact_uri(model.experiment_id, model.run_id, model.artifact_path), "files": files}


@endpoint("runs/outputs", "POST")
async def log_outputs(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """A run's logged models are linked to it already (as their source); this checks they are."""
    run_id = text(body, "run_id")
    await api.call(SERVICE, "GetRun", pb.GetRunRequest(run_id=run_id), ctx)
    for output in objects(body, "models"):
        model = await get(api, ctx, text(output, "model_id", required=False))
        if model.run_id != run_id:
            raise InvalidArgument(f"logged model {model.model_id} was logged by run {model.run_id}, not {run_id}")
    return {}


@endpoint("runs/log-model", "POST")
async def log_model(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """MLflow 2's record: the model's description appended to the run's history tag."""
    run_id = text(body, "run_id")
    model = _json(text(body, "model_json"), InvalidArgument("model_json is not JSON"))
    run: pb.Run = await api.call(SERVICE, "GetRun", pb.GetRunRequest(run_id=run_id), ctx)
    history = _json(run.tags.get(HISTORY_TAG, "[]"), FailedPrecondition(f"the run's {HISTORY_TAG} tag is not JSON"))
    if not isinstance(history, list):
        raise FailedPrecondition(f"the run's {HISTORY_TAG} tag is not a JSON list")
    try:
        tags = {HISTORY_TAG: json.dumps([*history, model])}
    except RecursionError:
        raise InvalidArgument("model_json nests too deep") from None
    await api.call(SERVICE, "SetTags", pb.SetTagsRequest(run_id=run_id, tags=tags), ctx)
    return {}


def _json(text: str, refusal: Exception) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise refusal from None

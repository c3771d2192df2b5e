"""MLflow's REST API (`/api/2.0/mlflow/...`, `/ajax-api/2.0/mlflow/...`) on the HTTP port, so
`MLFLOW_TRACKING_URI=http://host:HTTP_PORT` points MLflow's own client at runstream. Each
endpoint turns MLflow's JSON into the request of one of our RPCs and calls the same handler,
through the same token check, as gRPC does; metrics go through the ingest path as a batch.

This is the tracking core: experiments (create, get, get-by-name, search, delete, restore),
runs (create, get, update, search, delete, restore, log-parameter, set-tag, delete-tag,
log-inputs, log-metric, log-batch) and metric histories. Shapes and error bodies
follow MLflow's service.proto: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`.

A retried log-batch or log-metric (MLflow's client retries 5xx and timeouts) never doubles a
point: the batch's seq is derived from its content, so a resend is the same batch to the
loaders' de-duplication, as MLflow treats an identical (key, step, timestamp, value) as the
same point.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from runstream.errors import InvalidArgument, NotFound
from runstream.server.auth.guard import CURRENT, Guard
from runstream.server.rpc import canonicaliser, log_failure
from runstream.server.web.api import HttpCall
from runstream.wire import batch as wire
from runstream.wire import points
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.status import RUN_STATUS_NAMES, RUN_STATUS_VALUES

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
WRITER = "mlflow"  # the writer id of points logged through MLflow's API
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default experiment; ours is found by name
DEFAULT_EXPERIMENT = "Default"
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1000, 100, 100
ERRORS = {
    grpc.StatusCode.NOT_FOUND: ("RESOURCE_DOES_NOT_EXIST", 404),
    grpc.StatusCode.INVALID_ARGUMENT: ("INVALID_PARAMETER_VALUE", 400),
    grpc.StatusCode.ALREADY_EXISTS: ("RESOURCE_ALREADY_EXISTS", 400),
    grpc.StatusCode.FAILED_PRECONDITION: ("INVALID_STATE", 400),
    grpc.StatusCode.UNAUTHENTICATED: ("UNAUTHENTICATED", 401),
    grpc.StatusCode.PERMISSION_DENIED: ("PERMISSION_DENIED", 403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("RESOURCE_EXHAUSTED", 429),
    grpc.StatusCode.UNAVAILABLE: ("TEMPORARILY_UNAVAILABLE", 503),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("TEMPORARILY_UNAVAILABLE", 503),
}
Body = dict[str, Any]
Endpoint = Callable[["MlflowApi", Body, HttpCall], Awaitable[Body]]
ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(path: str) -> Callable[[Endpoint], Endpoint]:
    def register(fn: Endpoint) -> Endpoint:
        ENDPOINTS[path] = fn
        return fn

    return register


class MlflowApi:
    def __init__(self, tracking: Any, query: Any, guard: Guard) -> None:
        self.tracking, self.query, self.guard = tracking, query, guard

    async def admit(self, service: str, method: str, request: Any, ctx: HttpCall) -> None:
        """As gRPC admits a call: token and scope, ids canonicalised, the request checked
        against the token's experiments; the handler then sees the caller as CURRENT."""
        principal = await self.guard.admit(ctx, service, method)
        canonicaliser(type(request))(request)
        await self.guard.admit_request(principal, service, method, request)
        CURRENT.set(principal)

    async def call(self, service: str, method: str, request: Any, ctx: HttpCall, raw: bytes | None = None) -> Any:
        """One of our unary RPCs, admitted, then its handler."""
        await self.admit(service, method, request, ctx)
        servicer = self.tracking if service == "TrackingService" else self.query
        return await getattr(servicer, method)(raw if raw is not None else request, ctx)


def add_mlflow_routes(app: web.Application, tracking: Any, query: Any, guard: Guard) -> None:
    api = MlflowApi(tracking, query, guard)

    async def handle(request: web.Request) -> web.Response:
        path = next(request.path[len(p) :] for p in PREFIXES if request.path.startswith(p))
        fn = ENDPOINTS.get(path.strip("/"))
        if fn is None:
            return _error(grpc.StatusCode.UNIMPLEMENTED, f"runstream does not serve MLflow's {path} yet")
        try:
            body = await _body(request)
            reply = await fn(api, body, HttpCall(request))
        except Exception as exc:  # every failure becomes MLflow's error body
            return _error(*log_failure(f"{request.method} {request.path[:200]}", exc))
        return web.Response(text=json.dumps(_finite(reply)), content_type="application/json")

    for prefix in PREFIXES:
        app.router.add_route("*", prefix + "/{tail:.+}", handle)


async def _body(request: web.Request) -> Body:
    if request.method == "GET":
        return {k: request.query.getall(k) if len(request.query.getall(k)) > 1 else v for k, v in request.query.items()}
    raw = await request.read()
    try:
        parsed = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the body is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("the body must be a JSON object")
    return parsed


def _error(code: grpc.StatusCode, message: str) -> web.Response:
    name, status = ERRORS.get(code, ("INTERNAL_ERROR", 500))
    if code == grpc.StatusCode.UNIMPLEMENTED:
        name, status = "ENDPOINT_NOT_FOUND", 404
    return web.json_response({"error_code": name, "message": message}, status=status)


def _finite(value: Any) -> Any:
    """MLflow writes NaN and the infinities as the strings protobuf's JSON uses."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _text(body: Body, *names: str, required: bool = True) -> str:
    for name in names:
        value = body.get(name)
        if value not in (None, ""):
            return str(value)
    if required:
        raise InvalidArgument(f"missing value for required parameter {names[0]!r}")
    return ""


def _int(body: Body, name: str, default: int = 0) -> int:
    value = body.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} must be an integer, not {value!r}") from None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"metric value must be a number, not {value!r}") from None


def _tags(items: Any) -> dict[str, str]:
    if not isinstance(items, list):
        return {}
    return {str(t["key"]): str(t.get("value", "")) for t in items if isinstance(t, dict) and "key" in t}


# ------------------------------------------------------------------ shapes


def _experiment(e: pb.Experiment) -> Body:
    return {
        "experiment_id": e.experiment_id,
        "name": e.name,
        "artifact_location": e.artifact_location,
        "lifecycle_stage": e.lifecycle_stage,
        "creation_time": e.creation_time_ms,
        "last_update_time": e.creation_time_ms,
        "tags": [{"key": k, "value": v} for k, v in sorted(e.tags.items())],
    }


def _run_info(r: pb.Run) -> Body:
    info: Body = {
        "run_id": r.run_id,
        "run_uuid": r.run_id,
        "run_name": r.name,
        "experiment_id": r.experiment_id,
        "user_id": r.tags.get("mlflow.user", ""),
        "status": RUN_STATUS_NAMES.get(r.status, "RUNNING"),
        "start_time": r.start_time_ms,
        "artifact_uri": f"runs:/{r.run_id}",
        "lifecycle_stage": r.lifecycle_stage,
    }
    if r.end_time_ms > 0:
        info["end_time"] = r.end_time_ms
    return info


def _run(r: pb.Run) -> Body:
    return {
        "info": _run_info(r),
        "data": {
            "metrics": [
                {"key": m.key, "value": m.last_value, "timestamp": m.last_timestamp_ms, "step": m.last_step}
                for m in r.metrics
            ],
            "params": [{"key": k, "value": v} for k, v in sorted(r.params.items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(r.tags.items())],
        },
        "inputs": {},
    }


# ------------------------------------------------------------------ experiments


async def _get_experiment(api: MlflowApi, ctx: HttpCall, experiment_id: str) -> pb.Experiment:
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return await _default_experiment(api, ctx)
    experiment: pb.Experiment = await api.call(
        "TrackingService", "GetExperiment", pb.GetExperimentRequest(experiment_id=experiment_id), ctx
    )
    return experiment


async def _default_experiment(api: MlflowApi, ctx: HttpCall) -> pb.Experiment:
    """MLflow's experiment "0": ours named Default, made on first use."""
    try:
        found: pb.Experiment = await api.call(
            "TrackingService", "GetExperiment", pb.GetExperimentRequest(name=DEFAULT_EXPERIMENT), ctx
        )
        return found
    except NotFound:
        made: pb.Experiment = await api.call(
            "TrackingService", "CreateExperiment", pb.CreateExperimentRequest(name=DEFAULT_EXPERIMENT), ctx
        )
        return made


@endpoint("experiments/get-by-name")
async def get_experiment_by_name(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    name = _text(body, "experiment_name")
    if name == DEFAULT_EXPERIMENT:
        return {"experiment": _experiment(await _default_experiment(api, ctx))}
    req = pb.GetExperimentRequest(name=name)
    return {"experiment": _experiment(await api.call("TrackingService", "GetExperiment", req, ctx))}


@endpoint("experiments/get")
async def get_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    return {"experiment": _experiment(await _get_experiment(api, ctx, _text(body, "experiment_id")))}


@endpoint("experiments/create")
async def create_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.CreateExperimentRequest(
        name=_text(body, "name"),
        artifact_location=_text(body, "artifact_location", required=False),
        tags=_tags(body.get("tags")),
    )
    made = await api.call("TrackingService", "CreateExperiment", req, ctx)
    return {"experiment_id": made.experiment_id}


@endpoint("experiments/search")
async def search_experiments(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Name filters (`name = 'x'`, `name LIKE 'x%'`, ILIKE) and MLflow's view types."""
    view = _text(body, "view_type", required=False) or "ACTIVE_ONLY"
    req = qpb.ListExperimentsQuery(
        include_deleted=view != "ACTIVE_ONLY",
        name_like=_name_pattern(_text(body, "filter", required=False)),
        max_results=min(_int(body, "max_results", 1000), 1000),
        page_token=_text(body, "page_token", required=False),
    )
    page = await api.call("QueryService", "ListExperiments", req, ctx)
    found = [x.experiment for x in page.experiments]
    if view == "DELETED_ONLY":
        found = [e for e in found if e.lifecycle_stage == "deleted"]
    reply: Body = {"experiments": [_experiment(e) for e in found]}
    if page.next_page_token:
        reply["next_page_token"] = page.next_page_token
    return reply


def _name_pattern(text: str) -> str:
    if not text.strip():
        return ""
    parts = text.strip().split(None, 2)
    if len(parts) == 3 and parts[0] in ("name", "attribute.name", "attributes.name"):
        op, value = parts[1].upper(), parts[2].strip()
        if op in ("=", "LIKE", "ILIKE") and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            inner = value[1:-1]
            return inner.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") if op == "=" else inner
    raise InvalidArgument(f"experiments can be filtered by name only (name = '...' or name LIKE '...'), not {text!r}")


@endpoint("experiments/delete")
async def delete_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.ExperimentRef(experiment_id=_text(body, "experiment_id"))
    await api.call("TrackingService", "DeleteExperiment", req, ctx)
    return {}


@endpoint("experiments/restore")
async def restore_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.ExperimentRef(experiment_id=_text(body, "experiment_id"))
    await api.call("TrackingService", "RestoreExperiment", req, ctx)
    return {}


# ------------------------------------------------------------------ runs


@endpoint("runs/create")
async def create_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    experiment_id = _text(body, "experiment_id", required=False) or DEFAULT_EXPERIMENT_ID
    tags = _tags(body.get("tags"))
    if user := _text(body, "user_id", required=False):
        tags.setdefault("mlflow.user", user)
    req = pb.CreateRunRequest(
        name=_text(body, "run_name", required=False) or tags.get("mlflow.runName", ""),
        tags=tags,
        start_time_ms=_int(body, "start_time"),
    )
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        req.experiment_name = DEFAULT_EXPERIMENT
    else:
        req.experiment_id = experiment_id
    return {"run": _run(await api.call("TrackingService", "CreateRun", req, ctx))}


@endpoint("runs/get")
async def get_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.GetRunRequest(run_id=_text(body, "run_id", "run_uuid"))
    return {"run": _run(await api.call("TrackingService", "GetRun", req, ctx))}


@endpoint("runs/update")
async def update_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateRunRequest(run_id=_text(body, "run_id", "run_uuid"), end_time_ms=_int(body, "end_time"))
    if status := _text(body, "status", required=False):
        if status not in RUN_STATUS_VALUES:
            raise InvalidArgument(f"status {status!r} is not one of {', '.join(RUN_STATUS_VALUES)}")
        req.status = RUN_STATUS_VALUES[status]
    if name := _text(body, "run_name", required=False):
        req.name = name
    return {"run_info": _run_info(await api.call("TrackingService", "UpdateRun", req, ctx))}


@endpoint("runs/log-parameter")
async def log_parameter(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    value = body.get("value", "")
    req = pb.LogParamsRequest(run_id=_text(body, "run_id", "run_uuid"), params={_text(body, "key"): str(value)})
    await api.call("TrackingService", "LogParams", req, ctx)
    return {}


@endpoint("runs/set-tag")
async def set_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    value = body.get("value", "")
    req = pb.SetTagsRequest(run_id=_text(body, "run_id", "run_uuid"), tags={_text(body, "key"): str(value)})
    await api.call("TrackingService", "SetTags", req, ctx)
    return {}


@endpoint("runs/delete-tag")
async def delete_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.DeleteTagRequest(run_id=_text(body, "run_id"), key=_text(body, "key"))
    await api.call("TrackingService", "DeleteTag", req, ctx)
    return {}


@endpoint("runs/delete")
async def delete_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call("TrackingService", "DeleteRun", pb.RunRef(run_id=_text(body, "run_id")), ctx)
    return {}


@endpoint("runs/restore")
async def restore_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call("TrackingService", "RestoreRun", pb.RunRef(run_id=_text(body, "run_id")), ctx)
    return {}


@endpoint("runs/search")
async def search_runs(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """MLflow's filter language and order_by are ours; run_view_type ALL and DELETED_ONLY
    include deleted runs (DELETED_ONLY keeps only those)."""
    experiment_ids = body.get("experiment_ids") or []
    if isinstance(experiment_ids, str):
        experiment_ids = [experiment_ids]
    ids = []
    for experiment_id in experiment_ids:
        ids.append((await _get_experiment(api, ctx, str(experiment_id))).experiment_id)
    order_by = body.get("order_by") or []
    view = _text(body, "run_view_type", required=False) or "ACTIVE_ONLY"
    req = qpb.SearchRunsRequest(
        experiment_ids=ids,
        filter=_text(body, "filter", required=False),
        order_by=[order_by] if isinstance(order_by, str) else list(order_by),
        max_results=min(_int(body, "max_results", 1000), 1000),
        page_token=_text(body, "page_token", required=False),
        include_deleted=view != "ACTIVE_ONLY",
    )
    page = await api.call("QueryService", "SearchRuns", req, ctx)
    runs = [r for r in page.runs if view != "DELETED_ONLY" or r.lifecycle_stage == "deleted"]
    reply: Body = {"runs": [_run(r) for r in runs]}
    if page.next_page_token:
        reply["next_page_token"] = page.next_page_token
    return reply


@endpoint("runs/log-inputs")
async def log_inputs(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Datasets (name, digest, source, and the mlflow.data.context tag); logged models of MLflow 3
    are not kept yet."""
    inputs = []
    for item in body.get("datasets") or []:
        if not isinstance(item, dict) or not isinstance(item.get("dataset"), dict):
            raise InvalidArgument("every dataset input must be an object with a dataset")
        dataset, tags = item["dataset"], _tags(item.get("tags"))
        inputs.append(
            pb.DatasetInput(
                name=str(dataset.get("name", "")),
                digest=str(dataset.get("digest", "")),
                source=str(dataset.get("source", "")),
                context=tags.get("mlflow.data.context", ""),
            )
        )
    req = pb.LogInputsRequest(run_id=_text(body, "run_id"), inputs=inputs)
    await api.call("TrackingService", "LogInputs", req, ctx)
    return {}


@endpoint("runs/log-metric")
async def log_metric(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await _log_metrics(api, ctx, _text(body, "run_id", "run_uuid"), [body])
    return {}


@endpoint("runs/log-batch")
async def log_batch(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    run_id = _text(body, "run_id")
    metrics, params, tags = body.get("metrics") or [], body.get("params") or [], body.get("tags") or []
    if len(metrics) > MAX_BATCH_METRICS or len(params) > MAX_BATCH_PARAMS or len(tags) > MAX_BATCH_TAGS:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params and "
            f"{MAX_BATCH_TAGS} tags; this one has {len(metrics)}, {len(params)} and {len(tags)}"
        )
    if not (metrics or params or tags):  # nothing to log: still say whether the run exists
        await api.call("TrackingService", "GetRun", pb.GetRunRequest(run_id=run_id), ctx)
    if params:
        req = pb.LogParamsRequest(run_id=run_id, params=_tags(params))
        await api.call("TrackingService", "LogParams", req, ctx)
    if tags:
        await api.call("TrackingService", "SetTags", pb.SetTagsRequest(run_id=run_id, tags=_tags(tags)), ctx)
    if metrics:
        await _log_metrics(api, ctx, run_id, metrics)
    return {}


async def _log_metrics(api: MlflowApi, ctx: HttpCall, run_id: str, metrics: list[Any]) -> None:
    """Metrics as one MetricBatch of writer `mlflow` through the ingest path; its seq comes from
    its content, so a retried request is the same batch and is stored once."""
    keys: dict[str, int] = {}
    key_index, steps, stamps, values = [], [], [], []
    now = int(time.time() * 1000)
    for m in metrics:
        if not isinstance(m, dict):
            raise InvalidArgument("every metric must be an object with key, value, timestamp and step")
        key = _text(m, "key")
        key_index.append(keys.setdefault(key, len(keys)))
        values.append(_float(m.get("value")))
        stamps.append(_int(m, "timestamp", now))
        steps.append(_int(m, "step"))
    canonical = pb.GetRunRequest(run_id=run_id)
    canonicaliser(pb.GetRunRequest)(canonical)
    draft = wire.encode(canonical.run_id, WRITER, 1, list(keys), key_index, steps, stamps, values)
    seq = int.from_bytes(hashlib.blake2b(draft, digest_size=8).digest(), "big") % wire.MAX_SEQ + 1
    data = wire.encode(canonical.run_id, WRITER, seq, list(keys), key_index, steps, stamps, values)
    await api.call("TrackingService", "LogMetrics", canonical, ctx, raw=data)


# ------------------------------------------------------------------ histories


@endpoint("metrics/get-history")
async def get_metric_history(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Every point of the key, every writer's, in step order per writer (MLflow has no writers)."""
    req = qpb.ReadMetricsRequest(run_id=_text(body, "run_id", "run_uuid"), key=_text(body, "metric_key"))
    await api.admit("QueryService", "ReadMetrics", req, ctx)
    metrics: list[Body] = []
    async for data in api.query.ReadMetrics(req, ctx):
        part = points.decode(data)
        metrics += [
            {"key": req.key, "value": v, "timestamp": t, "step": s}
            for s, v, t in zip(part.step.tolist(), part.value.tolist(), part.timestamp_ms.tolist(), strict=True)
        ]
    return {"metrics": metrics}

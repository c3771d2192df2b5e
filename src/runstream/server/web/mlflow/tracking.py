"""MLflow's tracking endpoints: experiments (create, get, get-by-name, search, delete,
restore), runs (create, get, update, search, delete, restore, log-parameter, set-tag,
delete-tag, log-inputs, log-metric, log-batch) and metric histories, each turned into the
request of one of our RPCs.

log-batch and log-metric answer once their points are stored and queryable, as MLflow's
server does (not only acknowledged, as the SDK's stream is). A retried request (MLflow's
client retries 5xx and timeouts) never doubles a point: the batch's seq is derived from its
content, so a resend is the same batch to the loaders' de-duplication, as MLflow treats an
identical (key, step, timestamp, value) as the same point.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np
import orjson
from aiohttp import web

from runstream.errors import InvalidArgument, NotFound, ParamConflict
from runstream.server.rpc.fields import MAX_PARAM_VALUE, MAX_TAG_VALUE, check_values
from runstream.server.web.calls import HttpCall
from runstream.server.web.mlflow import columns
from runstream.server.web.mlflow.core import (
    INT64,
    Body,
    MlflowApi,
    endpoint,
    integer,
    listed,
    number,
    objects,
    page_size,
    pair_list,
    pairs,
    strings,
    text,
)
from runstream.wire import batch as wire
from runstream.wire import points
from runstream.wire.ids import canonical_run_id
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.status import RUN_STATUS_NAMES, RUN_STATUS_VALUES

WRITER = "mlflow"  # the writer id of points logged through MLflow's API
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default experiment; ours is found by name
DEFAULT_EXPERIMENT = "Default"
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1000, 100, 100
# MLflow's run statuses; our CRASHED (no writer heard from) shows as FAILED, which MLflow's
# client knows.
MLFLOW_STATUS = {
    "RUNNING": "RUNNING",
    "FINISHED": "FINISHED",
    "FAILED": "FAILED",
    "KILLED": "KILLED",
    "CRASHED": "FAILED",
}
MLFLOW_STATUS_IN = ("RUNNING", "FINISHED", "FAILED", "KILLED")
COMMIT_WAIT_MS = 30_000  # past this, DEADLINE_EXCEEDED (503): MLflow's client sends again, stored once


# ------------------------------------------------------------------ shapes


def _experiment(e: pb.Experiment) -> Body:
    return {
        "experiment_id": e.experiment_id,
        "name": e.name,
        "artifact_location": e.artifact_location or f"mlflow-artifacts:/{e.experiment_id}",
        "lifecycle_stage": e.lifecycle_stage,
        "creation_time": e.creation_time_ms,
        "last_update_time": e.creation_time_ms,
        "tags": listed(e.tags),
    }


def artifact_uri(experiment_id: str, run_id: str, path: str = "") -> str:
    """Where MLflow's client puts a run's files: our store, through mlflow-artifacts."""
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts" + (f"/{path}" if path else "")


def _run_info(r: pb.Run) -> Body:
    info: Body = {
        "run_id": r.run_id,
        "run_uuid": r.run_id,
        "run_name": r.name,
        "experiment_id": r.experiment_id,
        "user_id": r.tags.get("mlflow.user", ""),
        "status": MLFLOW_STATUS.get(RUN_STATUS_NAMES.get(r.status, "RUNNING"), "RUNNING"),
        "start_time": r.start_time_ms,
        "artifact_uri": artifact_uri(r.experiment_id, r.run_id),
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
            "params": listed(r.params),
            "tags": listed(r.tags),
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


@endpoint("experiments/get-by-name", "GET")
async def get_experiment_by_name(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    name = text(body, "experiment_name")
    if name == DEFAULT_EXPERIMENT:
        return {"experiment": _experiment(await _default_experiment(api, ctx))}
    req = pb.GetExperimentRequest(name=name)
    return {"experiment": _experiment(await api.call("TrackingService", "GetExperiment", req, ctx))}


@endpoint("experiments/get", "GET")
async def get_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    return {"experiment": _experiment(await _get_experiment(api, ctx, text(body, "experiment_id")))}


@endpoint("experiments/create", "POST")
async def create_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.CreateExperimentRequest(
        name=text(body, "name"),
        artifact_location=text(body, "artifact_location", required=False),
        tags=pairs(body, "tags"),
    )
    made = await api.call("TrackingService", "CreateExperiment", req, ctx)
    return {"experiment_id": made.experiment_id}


@endpoint("experiments/search", "GET", "POST")
async def search_experiments(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Name filters (`name = 'x'`, `name LIKE 'x%'`, ILIKE) and MLflow's view types."""
    view = text(body, "view_type", required=False) or "ACTIVE_ONLY"
    req = qpb.ListExperimentsQuery(
        include_deleted=view != "ACTIVE_ONLY",
        name_like=_name_pattern(text(body, "filter", required=False)),
        max_results=page_size(body),
        page_token=text(body, "page_token", required=False),
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


@endpoint("experiments/update", "POST")
async def update_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateExperimentRequest(
        experiment_id=await _ours(api, ctx, text(body, "experiment_id")), new_name=text(body, "new_name")
    )
    await api.call("TrackingService", "UpdateExperiment", req, ctx)
    return {}


@endpoint("experiments/set-experiment-tag", "POST")
async def set_experiment_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    tags = {text(body, "key"): text(body, "value", required=False)}
    req = pb.UpdateExperimentRequest(experiment_id=await _ours(api, ctx, text(body, "experiment_id")), set_tags=tags)
    await api.call("TrackingService", "UpdateExperiment", req, ctx)
    return {}


@endpoint("experiments/delete-experiment-tag", "POST")
async def delete_experiment_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateExperimentRequest(
        experiment_id=await _ours(api, ctx, text(body, "experiment_id")), delete_tags=[text(body, "key")]
    )
    await api.call("TrackingService", "UpdateExperiment", req, ctx)
    return {}


async def _ours(api: MlflowApi, ctx: HttpCall, experiment_id: str) -> str:
    """Our id of an MLflow experiment id ("0" is our Default's)."""
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return (await _default_experiment(api, ctx)).experiment_id
    return experiment_id


@endpoint("experiments/delete", "POST")
async def delete_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.ExperimentRef(experiment_id=text(body, "experiment_id"))
    await api.call("TrackingService", "DeleteExperiment", req, ctx)
    return {}


@endpoint("experiments/restore", "POST")
async def restore_experiment(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.ExperimentRef(experiment_id=text(body, "experiment_id"))
    await api.call("TrackingService", "RestoreExperiment", req, ctx)
    return {}


# ------------------------------------------------------------------ runs


@endpoint("runs/create", "POST")
async def create_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    experiment_id = text(body, "experiment_id", required=False) or DEFAULT_EXPERIMENT_ID
    tags = pairs(body, "tags")
    if user := text(body, "user_id", required=False):
        tags.setdefault("mlflow.user", user)
    req = pb.CreateRunRequest(
        name=text(body, "run_name", required=False) or tags.get("mlflow.runName", ""),
        tags=tags,
        start_time_ms=integer(body, "start_time"),
    )
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        req.experiment_name = DEFAULT_EXPERIMENT
    else:
        req.experiment_id = experiment_id
    return {"run": _run(await api.call("TrackingService", "CreateRun", req, ctx))}


@endpoint("runs/get", "GET")
async def get_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.GetRunRequest(run_id=text(body, "run_id", "run_uuid"))
    return {"run": _run(await api.call("TrackingService", "GetRun", req, ctx))}


@endpoint("runs/update", "POST")
async def update_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.UpdateRunRequest(run_id=text(body, "run_id", "run_uuid"), end_time_ms=integer(body, "end_time"))
    if status := text(body, "status", required=False):
        if status not in MLFLOW_STATUS_IN:
            raise InvalidArgument(f"status {status!r} is not one of {', '.join(MLFLOW_STATUS_IN)}")
        req.status = RUN_STATUS_VALUES[status]
    if name := text(body, "run_name", required=False):
        req.name = name
    return {"run_info": _run_info(await api.call("TrackingService", "UpdateRun", req, ctx))}


@endpoint("runs/log-parameter", "POST")
async def log_parameter(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    value = text(body, "value", required=False)
    req = pb.LogParamsRequest(run_id=text(body, "run_id", "run_uuid"), params={text(body, "key"): value})
    await api.call("TrackingService", "LogParams", req, ctx)
    return {}


@endpoint("runs/set-tag", "POST")
async def set_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    value = text(body, "value", required=False)
    req = pb.SetTagsRequest(run_id=text(body, "run_id", "run_uuid"), tags={text(body, "key"): value})
    await api.call("TrackingService", "SetTags", req, ctx)
    return {}


@endpoint("runs/delete-tag", "POST")
async def delete_tag(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    req = pb.DeleteTagRequest(run_id=text(body, "run_id"), key=text(body, "key"))
    await api.call("TrackingService", "DeleteTag", req, ctx)
    return {}


@endpoint("runs/delete", "POST")
async def delete_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call("TrackingService", "DeleteRun", pb.RunRef(run_id=text(body, "run_id")), ctx)
    return {}


@endpoint("runs/restore", "POST")
async def restore_run(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await api.call("TrackingService", "RestoreRun", pb.RunRef(run_id=text(body, "run_id")), ctx)
    return {}


@endpoint("runs/search", "POST")
async def search_runs(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """MLflow's filter language and order_by are ours; run_view_type ALL and DELETED_ONLY
    include deleted runs (DELETED_ONLY keeps only those)."""
    ids = []
    for experiment_id in strings(body, "experiment_ids"):
        ids.append((await _get_experiment(api, ctx, experiment_id)).experiment_id)
    order_by = strings(body, "order_by")
    view = text(body, "run_view_type", required=False) or "ACTIVE_ONLY"
    req = qpb.SearchRunsRequest(
        experiment_ids=ids,
        filter=text(body, "filter", required=False),
        order_by=order_by,
        max_results=page_size(body),
        page_token=text(body, "page_token", required=False),
        include_deleted=view != "ACTIVE_ONLY",
    )
    page = await api.call("QueryService", "SearchRuns", req, ctx)
    runs = [r for r in page.runs if view != "DELETED_ONLY" or r.lifecycle_stage == "deleted"]
    reply: Body = {"runs": [_run(r) for r in runs]}
    if page.next_page_token:
        reply["next_page_token"] = page.next_page_token
    return reply


@endpoint("runs/log-inputs", "POST")
async def log_inputs(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Datasets (name, digest, source, and the mlflow.data.context tag); logged models of MLflow 3
    are not kept yet."""
    inputs = []
    for item in objects(body, "datasets"):
        dataset = item.get("dataset")
        if not isinstance(dataset, dict):
            raise InvalidArgument("every dataset input must be an object with a dataset")
        inputs.append(
            pb.DatasetInput(
                name=text(dataset, "name", required=False),
                digest=text(dataset, "digest", required=False),
                source=text(dataset, "source", required=False),
                context=pairs(item, "tags").get("mlflow.data.context", ""),
            )
        )
    req = pb.LogInputsRequest(run_id=text(body, "run_id"), inputs=inputs)
    await api.call("TrackingService", "LogInputs", req, ctx)
    return {}


@endpoint("runs/log-metric", "POST")
async def log_metric(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    await _log_metrics(api, ctx, _metric_batch(text(body, "run_id", "run_uuid"), [body]))
    return {}


@endpoint("runs/log-batch", "POST")
async def log_batch(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Checked whole before anything is written, so a refused batch changes nothing: every
    field, the metrics as the batch they become, the params against those the run has. Then
    the metrics (whose refusals, such as a run's key limit or a full backlog, come before their
    batch is appended), the params and the tags."""
    run_id = text(body, "run_id")
    metrics, given, tags = objects(body, "metrics"), pair_list(body, "params"), pairs(body, "tags")
    if len(metrics) > MAX_BATCH_METRICS or len(given) > MAX_BATCH_PARAMS or len(tags) > MAX_BATCH_TAGS:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params and "
            f"{MAX_BATCH_TAGS} tags; this one has {len(metrics)}, {len(given)} and {len(tags)}"
        )
    params = dict(given)
    if len(params) < len(set(given)):
        raise InvalidArgument("a batch gives each param one value; a key came with two")
    check_values(params, "param", MAX_PARAM_VALUE)
    check_values(tags, "tag", MAX_TAG_VALUE)
    batch = _metric_batch(run_id, metrics) if metrics else None
    if params or not (metrics or tags):  # also says whether the run exists when there is nothing to log
        run = await api.call("TrackingService", "GetRun", pb.GetRunRequest(run_id=run_id), ctx)
        for key, value in params.items():
            if key in run.params and run.params[key] != value:
                raise ParamConflict(
                    f"param {key!r} of run {run.run_id} was already logged as {run.params[key]!r}; "
                    f"params are immutable, so {value!r} was refused"
                )
    if batch is not None:
        await _log_metrics(api, ctx, batch)
    if params:
        await api.call("TrackingService", "LogParams", pb.LogParamsRequest(run_id=run_id, params=params), ctx)
    if tags:
        await api.call("TrackingService", "SetTags", pb.SetTagsRequest(run_id=run_id, tags=tags), ctx)
    return {}


@dataclass(frozen=True)
class _Batch:
    run_id: str  # as stored
    seq: int
    data: bytes  # a MetricBatch, validated


def _metric_batch(run_id: str, metrics: list[Body]) -> _Batch:
    """MLflow's metrics as one MetricBatch of writer `mlflow`, checked as ingest checks a batch.
    Its seq comes from its content, so a retried request is the same batch and is stored once."""
    keys: dict[str, int] = {}
    key_index, steps, stamps, values = [], [], [], []
    now = int(time.time() * 1000)
    for m in metrics:
        key = text(m, "key")
        key_index.append(keys.setdefault(key, len(keys)))
        values.append(number(m, "value"))
        stamps.append(integer(m, "timestamp", now))
        steps.append(integer(m, "step"))
    run_id = canonical_run_id(run_id)
    batch = wire.Batch(
        run_id,
        WRITER,
        1,
        list(keys),
        np.array(key_index, dtype=np.uint32),
        np.array(steps, dtype=np.int64),
        np.array(stamps, dtype=np.int64),
        np.array(values, dtype=np.float64),
    )
    content = hashlib.blake2b(run_id.encode() + b"\0" + "\0".join(batch.keys).encode(), digest_size=8)
    for column in (batch.key_index, batch.step, batch.timestamp_ms, batch.value):
        content.update(column.tobytes())
    seq = int.from_bytes(content.digest(), "big") % wire.MAX_SEQ + 1
    data = wire.encode(run_id, WRITER, seq, batch.keys, batch.key_index, batch.step, batch.timestamp_ms, batch.value)
    wire.validate(replace(batch, seq=seq), len(data), set())
    return _Batch(run_id, seq, data)


async def _log_metrics(api: MlflowApi, ctx: HttpCall, batch: _Batch) -> None:
    """The batch through the ingest path, answered once it is queryable."""
    ref = pb.GetRunRequest(run_id=batch.run_id)
    await api.call("TrackingService", "LogMetrics", ref, ctx, raw=batch.data)
    # MLflow's clients read what they logged right after (autolog, then search_runs): answer
    # once the batch is queryable, not only acknowledged.
    wait = pb.WaitCommittedRequest(run_id=batch.run_id, writer_id=WRITER, seqs=[batch.seq], timeout_ms=COMMIT_WAIT_MS)
    await api.call("TrackingService", "WaitCommitted", wait, ctx)


# ------------------------------------------------------------------ histories


@endpoint("metrics/get-history", "GET")
async def get_metric_history(api: MlflowApi, body: Body, ctx: HttpCall) -> web.Response:
    """Every point of the key, every writer's, writer after writer, each in step order (MLflow
    has no writers). With max_results, a page at a time: the page token says where the page
    ended (writer, step, and how many points at that step were given), so the next page reads
    on from there, and paging through a series reads it once."""
    run_id, key = text(body, "run_id", "run_uuid"), text(body, "metric_key")
    limit = integer(body, "max_results", 0)
    if limit < 0:
        raise InvalidArgument("max_results must not be negative")
    page = _Page(limit, _resume_at(text(body, "page_token", required=False)))
    first = qpb.ReadMetricsRequest(run_id=run_id, key=key)
    reads = [first]
    if page.resume is not None:  # that writer from that step, then the writers after it
        writer, step, _ = page.resume
        first.writer, first.min_step = writer, step
        reads.append(qpb.ReadMetricsRequest(run_id=run_id, key=key, after_writer=writer))
    read = api.handler("QueryService", "ReadMetrics")
    await api.admit("QueryService", "ReadMetrics", first, ctx)
    for req in reads:
        if req is not first:
            await api.admit("QueryService", "ReadMetrics", req, ctx)
        async with contextlib.aclosing(read(req, ctx)) as stream:  # closed early: its connection goes back
            async for data in stream:
                if page.full:
                    break
                page.add(req.key, points.decode(data))
        if page.full:
            break
    return _metrics_reply(page.pieces, page.token() if page.full else "")


def _resume_at(token: str) -> tuple[str, int, int] | None:
    """(writer, step, points of that step already given) from a page token: "step:given:writer"."""
    if not token:
        return None
    parts = token.split(":", 2)
    try:
        step, given, writer = int(parts[0]), int(parts[1]), parts[2]
    except (ValueError, IndexError):
        step, given, writer = 0, -1, ""
    if not writer or given < 0 or not INT64[0] <= step <= INT64[1]:
        raise InvalidArgument(f"page_token {token[:80]!r} is not one this server gave out")
    return writer, step, given


class _Page:
    """One page of a history: what it holds, and where it ended."""

    def __init__(self, limit: int, resume: tuple[str, int, int] | None) -> None:
        self.limit, self.resume = limit, resume
        self.pieces: list[bytes] = []
        self.count = 0
        self.skip = resume[2] if resume else 0  # the resume step's points given by earlier pages
        # The last point given: its writer and step, and how many points of that step were given.
        self.last: tuple[str, int, int] = resume if resume else ("", 0, 0)

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.count >= self.limit

    def add(self, key: str, part: points.SeriesPoints) -> None:
        steps = part.step
        lo = 0
        if self.skip and self.resume is not None and part.writer == self.resume[0]:
            lo = min(self.skip, int(np.searchsorted(steps, self.resume[1], side="right")))
            self.skip -= lo
        hi = len(steps) if not self.limit else min(len(steps), lo + self.limit - self.count)
        if hi <= lo:
            return
        step, value, stamp = steps[lo:hi], part.value[lo:hi], part.timestamp_ms[lo:hi]
        self.pieces.append(columns.metric_objects(key, step, value, stamp))
        self.count += hi - lo
        last = int(step[-1])
        same = hi - lo - int(np.searchsorted(step, last, side="left"))  # this slice's points at that step
        writer, at, given = self.last
        self.last = (part.writer, last, given + same if (writer, at) == (part.writer, last) else same)

    def token(self) -> str:
        writer, step, given = self.last
        return f"{step}:{given}:{writer}"


MAX_BULK_RUNS = 100
MAX_BULK_POINTS = 1000


@endpoint("metrics/get-history-bulk-interval", "GET")
async def get_history_bulk_interval(api: MlflowApi, body: Body, ctx: HttpCall) -> web.Response:
    """Up to max_results points per run over [start_step, end_step], from our buckets: a long
    series is never scanned whole. A downsampled series gives each bucket's first point and the
    series' last (their timestamps are not kept in buckets: 0)."""
    run_ids = strings(body, "run_ids")
    if not 0 < len(run_ids) <= MAX_BULK_RUNS:
        raise InvalidArgument(f"give 1 to {MAX_BULK_RUNS} run_ids")
    limit = integer(body, "max_results", 320)
    if not 0 < limit <= MAX_BULK_POINTS:
        raise InvalidArgument(f"max_results must be between 1 and {MAX_BULK_POINTS}")
    key = text(body, "metric_key")
    pieces = []
    for run_id in run_ids:
        req = qpb.GetMetricHistoryRequest(run_id=run_id, key=key, max_points=limit)
        if "start_step" in body:
            req.min_step = integer(body, "start_step")
        if "end_step" in body:
            req.max_step = integer(body, "end_step")
        h: qpb.MetricHistory = await api.call("QueryService", "GetMetricHistory", req, ctx)
        if h.downsampled:
            step, value = list(h.bucket_first_step), list(h.bucket_first)
            if h.bucket_last_step and h.bucket_last_step[-1] != h.bucket_first_step[-1]:
                step.append(h.bucket_last_step[-1])
                value.append(h.bucket_last[-1])
            stamp = [0] * len(step)
        else:
            step, value, stamp = list(h.step), list(h.value), list(h.timestamp_ms) or [0] * len(h.step)
        arrays = np.array(step, np.int64), np.array(value, np.float64), np.array(stamp, np.int64)
        pieces.append(columns.metric_objects(key, *arrays, run_id=req.run_id))
    return _metrics_reply(pieces)


def _metrics_reply(pieces: list[bytes], next_page_token: str = "") -> web.Response:
    reply = b'{"metrics":[' + b",".join(p for p in pieces if p) + b"]"
    if next_page_token:
        reply += b',"next_page_token":' + orjson.dumps(next_page_token)
    return web.Response(body=reply + b"}", content_type="application/json")

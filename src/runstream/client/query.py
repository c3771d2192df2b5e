"""The query side of the SDK, for dashboards and notebooks: `QueryClient(target)`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from runstream.client.channel import open_channel, resolve_target, typed_errors
from runstream.errors import from_status
from runstream.wire import points
from runstream.wire.points import SeriesPoints
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import query_pb2_grpc as qpb_grpc
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.status import RUN_STATUS_NAMES

_AGGREGATES = {
    None: qpb.AGGREGATE_UNSPECIFIED,
    "mean": qpb.AGGREGATE_MEAN,
    "min": qpb.AGGREGATE_MIN,
    "max": qpb.AGGREGATE_MAX,
}


@dataclass
class MetricHistory:
    """A metric's points in step order or, when `downsampled`, its buckets (each with
    first/last step and first, last, min, max value and count)."""

    key: str
    total_points: int
    downsampled: bool
    writers: list[str]
    step: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    timestamp_ms: npt.NDArray[np.int64]
    writer: list[str]
    buckets: dict[str, npt.NDArray[Any]]

    def to_pandas(self) -> Any:
        import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional

        if self.downsampled:
            return pd.DataFrame(self.buckets)
        frame: dict[str, Any] = {"step": self.step, "value": self.value}
        if len(self.timestamp_ms):
            frame |= {"timestamp_ms": self.timestamp_ms, "writer": self.writer}
        return pd.DataFrame(frame)


@dataclass
class Comparison:
    """Runs side by side. `params[key]` and `metrics[key]` hold one entry per run (None where
    absent); `differs` names the params that differ; `best[key]` is the index of the best run."""

    runs: list[pb.Run]
    params: dict[str, list[str | None]]
    differs: list[str]
    metrics: dict[str, list[float | None]]
    direction: dict[str, str]
    best: dict[str, int | None]
    series: dict[str, list[MetricHistory]]


@dataclass
class RunPage:
    runs: list[pb.Run]
    next_page_token: str
    total_count: int | None = None  # with count_total: matching runs over all pages

    def to_pandas(self) -> Any:
        """One row per run, with columns as MLflow's search_runs names them."""
        import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional

        rows = []
        for r in self.runs:
            row: dict[str, Any] = {
                "run_id": r.run_id,
                "experiment_id": r.experiment_id,
                "run_name": r.name,
                "status": RUN_STATUS_NAMES.get(r.status, "?"),
                "start_time": pd.to_datetime(r.start_time_ms, unit="ms"),
                "end_time": pd.to_datetime(r.end_time_ms, unit="ms") if r.end_time_ms else None,
            }
            row |= {f"metrics.{m.key}": m.last_value for m in r.metrics}
            row |= {f"params.{k}": v for k, v in r.params.items()}
            row |= {f"tags.{k}": v for k, v in r.tags.items()}
            rows.append(row)
        return pd.DataFrame(rows)


@dataclass
class ExperimentPage:
    """Experiments with run counts (`runs`, `running`, `finished`, `failed`, `killed`,
    `deleted_runs`, `last_run_start_ms`)."""

    experiments: list[qpb.ExperimentCounts]
    next_page_token: str


def _history(msg: qpb.MetricHistory) -> MetricHistory:
    buckets: dict[str, npt.NDArray[Any]] = {}
    if msg.downsampled:
        buckets = {
            "first_step": np.array(msg.bucket_first_step, np.int64),
            "last_step": np.array(msg.bucket_last_step, np.int64),
            "first": np.array(msg.bucket_first, np.float64),
            "last": np.array(msg.bucket_last, np.float64),
            "min": np.array(msg.bucket_min, np.float64),
            "max": np.array(msg.bucket_max, np.float64),
            "count": np.array(msg.bucket_count, np.int64),
        }
    writers = list(msg.writers)
    return MetricHistory(
        key=msg.key,
        total_points=msg.total_points,
        downsampled=msg.downsampled,
        writers=writers,
        step=np.array(msg.step, np.int64),
        value=np.array(msg.value, np.float64),
        timestamp_ms=np.array(msg.timestamp_ms, np.int64),
        writer=[writers[i] for i in msg.writer_index],
        buckets=buckets,
    )


class QueryClient:
    """Reads metric histories from a runstream server (`target` or RUNSTREAM_URL)."""

    def __init__(self, target: str | None = None, *, timeout: float = 60.0, token: str | None = None) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self._channel = open_channel(self.target, token)
        self._stub: Any = qpb_grpc.QueryServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @typed_errors
    def get_metric_history(
        self,
        run_id: str,
        key: str,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
        max_points: int = 1000,
        writer: str | None = None,
        aggregate: str | None = None,
        branch: int = 0,
    ) -> MetricHistory:
        """Every point when there are at most `max_points`, else `max_points` buckets.
        `writer` keeps one writer's points; `aggregate` ("mean", "min", "max") gives one value
        per step across writers. `branch=N` gives the points the run's rewind N superseded
        (Run.rewinds) instead of the run's points as they stand."""
        if aggregate not in _AGGREGATES:
            raise ValueError("aggregate must be None, 'mean', 'min' or 'max'")
        req = qpb.GetMetricHistoryRequest(
            run_id=run_id,
            key=key,
            max_points=max_points,
            writer=writer or "",
            aggregate=_AGGREGATES[aggregate],
            branch=branch,
        )
        if min_step is not None:
            req.min_step = min_step
        if max_step is not None:
            req.max_step = max_step
        return _history(self._stub.GetMetricHistory(req, timeout=self.timeout))

    @typed_errors
    def search_runs(
        self,
        experiment_ids: list[str] | None = None,
        filter: str = "",
        order_by: list[str] | None = None,
        max_results: int = 100,
        page_token: str = "",
        include_deleted: bool = False,
        count_total: bool = False,
    ) -> RunPage:
        """One page of runs matching `filter` (MLflow's search syntax), in `order_by` order;
        pass `page.next_page_token` back for the next page. `count_total` also counts every
        matching run."""
        reply = self._stub.SearchRuns(
            qpb.SearchRunsRequest(
                experiment_ids=experiment_ids or [],
                filter=filter,
                order_by=order_by or [],
                max_results=max_results,
                page_token=page_token,
                include_deleted=include_deleted,
                count_total=count_total,
            ),
            timeout=self.timeout,
        )
        return RunPage(list(reply.runs), reply.next_page_token, reply.total_count if count_total else None)

    @typed_errors
    def compare_runs(
        self,
        run_ids: list[str],
        keys: list[str] | None = None,
        *,
        max_points: int = 500,
        direction: dict[str, str] | None = None,
    ) -> Comparison:
        """Params, last metric values with the best run per key (`direction` overrides
        min/max per key), and each key's series over one common step range."""
        reply = self._stub.CompareRuns(
            qpb.CompareRunsRequest(run_ids=run_ids, keys=keys or [], max_points=max_points, direction=direction or {}),
            timeout=self.timeout,
        )
        return Comparison(
            runs=list(reply.runs),
            params={r.key: [v if p else None for v, p in zip(r.values, r.present, strict=True)] for r in reply.params},
            differs=[r.key for r in reply.params if r.differs],
            metrics={r.key: [v if p else None for v, p in zip(r.last, r.present, strict=True)] for r in reply.metrics},
            direction={r.key: r.direction for r in reply.metrics},
            best={r.key: (r.best if r.best >= 0 else None) for r in reply.metrics},
            series={s.key: [_history(h) for h in s.histories] for s in reply.series},
        )

    def tail_metrics(
        self, run_ids: list[str], keys: list[str] | None = None, from_step: int | None = None
    ) -> Iterator[SeriesPoints]:
        """Points as the server commits them, until every run has ended (or the caller stops
        iterating). Only new points unless `from_step` asks for stored ones too."""
        req = qpb.TailMetricsRequest(run_ids=run_ids, keys=keys or [])
        if from_step is not None:
            req.from_step = from_step
        yield from self._points("TailMetrics", req, timeout=None)

    def read_metrics(
        self,
        run_id: str,
        key: str,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
        writer: str | None = None,
    ) -> Iterator[SeriesPoints]:
        """Every point of a run's key, streamed in pieces of up to 65,536 points: each piece is
        one writer's points in step order, writers one after another."""
        req = qpb.ReadMetricsRequest(run_id=run_id, key=key, writer=writer or "")
        if min_step is not None:
            req.min_step = min_step
        if max_step is not None:
            req.max_step = max_step
        yield from self._points("ReadMetrics", req, timeout=self.timeout)

    def _points(self, method: str, req: Any, timeout: float | None) -> Iterator[SeriesPoints]:
        call: Any = self._channel.unary_stream(
            f"/runstream.v1.QueryService/{method}",
            request_serializer=type(req).SerializeToString,
            response_deserializer=points.decode,
        )(req, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

    @typed_errors
    def list_experiments(
        self, *, include_deleted: bool = False, name_like: str = "", max_results: int = 100, page_token: str = ""
    ) -> ExperimentPage:
        """Experiments with their run counts by status, latest activity first."""
        reply = self._stub.ListExperiments(
            qpb.ListExperimentsQuery(
                include_deleted=include_deleted, name_like=name_like, max_results=max_results, page_token=page_token
            ),
            timeout=self.timeout,
        )
        return ExperimentPage(list(reply.experiments), reply.next_page_token)

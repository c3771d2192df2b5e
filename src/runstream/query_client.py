"""The query side of the SDK, for dashboards and notebooks: `QueryClient(target)`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from runstream.client import open_channel, resolve_target, typed_errors
from runstream.errors import from_status
from runstream.proto import query_pb2 as qpb
from runstream.proto import query_pb2_grpc as qpb_grpc
from runstream.proto import tracking_pb2 as pb

_AGGREGATES = {None: qpb.AGGREGATE_NONE, "mean": qpb.MEAN, "min": qpb.MIN, "max": qpb.MAX}


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
class TailPoints:
    """New points of one series (run, key, writer), in step order."""

    run_id: str
    key: str
    writer: str
    step: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    timestamp_ms: npt.NDArray[np.int64]


@dataclass
class RunPage:
    runs: list[pb.Run]
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

    def __init__(self, target: str | None = None, *, timeout: float = 60.0) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self._channel = open_channel(self.target)
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
    ) -> MetricHistory:
        """Every point when there are at most `max_points`, else `max_points` buckets.
        `writer` keeps one writer's points; `aggregate` ("mean", "min", "max") gives one value
        per step across writers."""
        if aggregate not in _AGGREGATES:
            raise ValueError("aggregate must be None, 'mean', 'min' or 'max'")
        req = qpb.GetMetricHistoryRequest(
            run_id=run_id, key=key, max_points=max_points, writer=writer or "", aggregate=_AGGREGATES[aggregate]
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
    ) -> RunPage:
        """One page of runs matching `filter` (MLflow's search syntax), in `order_by` order;
        pass `page.next_page_token` back for the next page."""
        reply = self._stub.SearchRuns(
            qpb.SearchRunsRequest(
                experiment_ids=experiment_ids or [],
                filter=filter,
                order_by=order_by or [],
                max_results=max_results,
                page_token=page_token,
                include_deleted=include_deleted,
            ),
            timeout=self.timeout,
        )
        return RunPage(list(reply.runs), reply.next_page_token)

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
    ) -> Iterator[TailPoints]:
        """Points as the server commits them, until every run has ended (or the caller stops
        iterating). Only new points unless `from_step` asks for stored ones too."""
        req = qpb.TailMetricsRequest(run_ids=run_ids, keys=keys or [])
        if from_step is not None:
            req.from_step = from_step
        call = self._stub.TailMetrics(req)
        try:
            for m in call:
                yield TailPoints(
                    m.run_id,
                    m.key,
                    m.writer,
                    np.array(m.step, np.int64),
                    np.array(m.value, np.float64),
                    np.array(m.timestamp_ms, np.int64),
                )
        except grpc.RpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None
        finally:
            call.cancel()

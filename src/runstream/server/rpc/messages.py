"""Store rows as protobuf messages."""

from __future__ import annotations

from typing import Any

from runstream.server.storage import store
from runstream.wire.proto import tracking_pb2 as pb

SUMMARY_FIELDS = ("key", "last_value", "last_step", "last_timestamp_ms", "min_value", "max_value", "count")


def summary_message(row: Any) -> pb.MetricSummary:
    return pb.MetricSummary(**{f: row[f] for f in SUMMARY_FIELDS})


def run_message(run: store.RunRow) -> pb.Run:
    return pb.Run(
        run_id=run.run_id,
        experiment_id=str(run.experiment_id),
        name=run.name,
        status=run.status,  # type: ignore[arg-type]
        start_time_ms=run.start_time_ms,
        end_time_ms=run.end_time_ms or 0,
        lifecycle_stage=run.lifecycle_stage,
        params=run.params,
        tags=run.tags,
        metrics=[summary_message(m) for m in run.metrics],
        metric_count=max(run.metric_count, len(run.metrics)),
        metrics_truncated=run.metric_count > len(run.metrics),
        last_heard_ms=run.last_heard_ms or 0,
    )


def experiment_message(e: store.ExperimentRow) -> pb.Experiment:
    return pb.Experiment(
        experiment_id=str(e.experiment_id),
        name=e.name,
        artifact_location=e.artifact_location,
        lifecycle_stage=e.lifecycle_stage,
        creation_time_ms=e.creation_time_ms,
        tags=e.tags,
    )

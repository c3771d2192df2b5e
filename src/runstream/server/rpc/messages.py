"""Store rows as protobuf messages."""

from __future__ import annotations

from runstream.server.storage import experiments, runs
from runstream.wire.proto import tracking_pb2 as pb


def summary_message(m: runs.SummaryRow) -> pb.MetricSummary:
    return pb.MetricSummary(
        key=m.key,
        last_value=m.last_value,
        last_step=m.last_step,
        last_timestamp_ms=m.last_timestamp_ms,
        min_value=m.min_value,
        max_value=m.max_value,
        count=m.count,
    )


def input_message(i: runs.InputRow) -> pb.DatasetInput:
    return pb.DatasetInput(name=i.name, digest=i.digest, source=i.source, context=i.context)


def run_message(run: runs.RunRow) -> pb.Run:
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
        parent_run_id=run.parent_run_id or "",
        fork_step=run.fork_step or 0,
    )


def experiment_message(e: experiments.ExperimentRow) -> pb.Experiment:
    return pb.Experiment(
        experiment_id=str(e.experiment_id),
        name=e.name,
        artifact_location=e.artifact_location,
        lifecycle_stage=e.lifecycle_stage,
        creation_time_ms=e.creation_time_ms,
        tags=e.tags,
    )

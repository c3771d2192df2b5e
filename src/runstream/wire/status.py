"""Run statuses as people and MLflow write them (RUNNING, FINISHED, FAILED, KILLED; and our
CRASHED) and as
the protos number them (RunStatus, whose values carry the RUN_STATUS_ prefix)."""

from __future__ import annotations

from runstream.wire.proto import tracking_pb2 as pb

RUN_STATUS_NAMES = {
    pb.RUN_STATUS_RUNNING: "RUNNING",
    pb.RUN_STATUS_FINISHED: "FINISHED",
    pb.RUN_STATUS_FAILED: "FAILED",
    pb.RUN_STATUS_KILLED: "KILLED",
    pb.RUN_STATUS_CRASHED: "CRASHED",
}
RUN_STATUS_VALUES = {name: value for value, name in RUN_STATUS_NAMES.items()}

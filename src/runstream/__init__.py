"""runstream: experiment tracking for training jobs that log every step from every rank.

The module-level API follows MLflow's:

    import runstream
    with runstream.start_run(experiment="wine", params={"lr": 0.1}) as run:
        for step in range(1000):
            runstream.log_metrics({"loss": loss, "acc": acc}, step=step)

Other ranks of the same job log into the run with `runstream.attach(run_id, writer_id=...)`
or by setting RUNSTREAM_RUN_ID before `start_run`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runstream.client import lifecycle
from runstream.client import settings as sdk_settings
from runstream.client.lifecycle import flush_all
from runstream.client.tracking import Client, Run
from runstream.errors import (
    AlreadyExists,
    BufferFull,
    DataLoss,
    DeadlineExceeded,
    ExperimentNotFound,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ParamConflict,
    PointsDropped,
    ResourceExhausted,
    RunNotFound,
    RunstreamError,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from runstream.client.artifacts import ArtifactClient
    from runstream.client.query import MetricHistory, QueryClient
    from runstream.client.registry import RegistryClient
    from runstream.wire.points import SeriesPoints

# Loaded on first use, so `import runstream` in a training script costs only the tracking side.
_LAZY = {
    "ArtifactClient": "runstream.client.artifacts",
    "MetricHistory": "runstream.client.query",
    "QueryClient": "runstream.client.query",
    "RegistryClient": "runstream.client.registry",
    "SeriesPoints": "runstream.wire.points",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AlreadyExists",
    "ArtifactClient",
    "BufferFull",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "ExperimentNotFound",
    "FailedPrecondition",
    "InvalidArgument",
    "MetricHistory",
    "NotFound",
    "ParamConflict",
    "PointsDropped",
    "QueryClient",
    "RegistryClient",
    "ResourceExhausted",
    "Run",
    "RunNotFound",
    "RunstreamError",
    "SeriesPoints",
    "Unauthenticated",
    "Unavailable",
    "active_run",
    "attach",
    "end_run",
    "flush",
    "log_input",
    "log_metric",
    "log_metrics",
    "log_params",
    "register_model",
    "set_tags",
    "start_run",
]

log = logging.getLogger(__name__)
_client: Client | None = None
_active: Run | None = None


def _default_client() -> Client:
    global _client
    if _client is None:
        _client = Client()
    return _client


def start_run(
    experiment: str = "Default",
    name: str = "",
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    writer_id: str | None = None,
    **writer_options: Any,
) -> Run:
    """Start (or, with RUNSTREAM_RUN_ID set, join) a run and make it the active one."""
    global _active
    if _active is not None and not _active.ended:
        raise RuntimeError(f"run {_active.run_id} is already active; end it first (runstream.end_run())")
    client = _default_client()
    joined = sdk_settings.current().run_id or None
    if joined:
        _active = client.attach(joined, writer_id, **writer_options)
        if params:
            _active.log_params(params)
    else:
        _active = client.start_run(experiment, name, params=params, tags=tags, writer_id=writer_id, **writer_options)
    return _active


def attach(run_id: str, writer_id: str | None = None, **writer_options: Any) -> Run:
    """Log into an existing run from this process (another rank), as its active run."""
    global _active
    _active = _default_client().attach(run_id, writer_id, **writer_options)
    return _active


def active_run() -> Run | None:
    return _active if _active is not None and not _active.ended else None


def _require_run() -> Run:
    run = active_run()
    if run is None:
        raise RuntimeError("no active run: call runstream.start_run() or runstream.attach() first")
    return run


def log_metric(key: str, value: float, step: int | None = None) -> None:
    _require_run().log_metric(key, value, step)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    _require_run().log_metrics(metrics, step)


def log_params(params: Mapping[str, Any]) -> None:
    _require_run().log_params(params)


def set_tags(tags: Mapping[str, Any]) -> None:
    _require_run().set_tags(tags)


def log_input(name: str, source: str = "", digest: str = "", context: str = "") -> None:
    _require_run().log_input(name, source, digest, context)


def register_model(run_id: str, artifact_path: str, name: str, **kwargs: Any) -> Any:
    """Register the run's artifact at `artifact_path` as a new version of model `name`."""
    return _default_client().register_model(run_id, artifact_path, name, **kwargs)


def flush(timeout: float | None = None) -> None:
    _require_run().flush(timeout)


def end_run(status: str = "FINISHED") -> None:
    global _active
    if _active is not None:
        _active.end(status)
        _active = None


def _forget_in_child() -> None:
    """After fork the parent's channel and threads are not ours: start afresh on first use."""
    global _client, _active
    _client = None
    _active = None


def _at_exit() -> None:
    try:
        if _active is not None and not _active.ended:
            end_run()
        flush_all()
    except RunstreamError as exc:  # the interpreter is going away; say what was not delivered
        log.error("runstream: points not delivered at exit: %s", exc)


lifecycle.in_child(_forget_in_child)
lifecycle.at_exit(_at_exit)

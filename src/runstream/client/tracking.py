"""The Python SDK: `Client` for experiments and runs, `Run` for logging into one run.

Unary calls are synchronous and raise the typed errors of runstream.errors; metric
logging goes through a MetricWriter and never waits on the network.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from runstream.client import console, lifecycle, offline, settings, spool, sync
from runstream.client.channel import open_channel, resolve_target, typed_errors
from runstream.client.writer import MetricWriter
from runstream.errors import DeadlineExceeded, FailedPrecondition, NotFound, RunstreamError, Unavailable
from runstream.wire.batch import check_writer_id
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.proto import tracking_pb2_grpc as pb_grpc
from runstream.wire.status import RUN_STATUS_VALUES

if TYPE_CHECKING:
    from runstream.client.admin import AdminClient
    from runstream.client.artifacts import ArtifactClient
    from runstream.client.registry import RegistryClient

_STATUS_BY_NAME = RUN_STATUS_VALUES
log = logging.getLogger(__name__)


def run_mode(offline: bool | None) -> str:
    """online (default), offline (spool only, `runstream sync` later) or auto (offline while
    the server is unreachable at start, synced in the background once it answers)."""
    if offline is not None:
        return "offline" if offline else "online"
    return settings.current().mode


def default_writer_id() -> str:
    """`rank<RANK>` under torchrun-style launchers, else host/pid: unique per process."""
    rank = os.environ.get("RANK")
    base = f"{socket.gethostname()}/{os.getpid()}"
    return f"rank{rank}/{base}" if rank is not None else base


class Client:
    """A connection to a runstream server (`target` or RUNSTREAM_URL: "host:50051", or
    "grpcs://host:50051" for TLS), with `token` (or RUNSTREAM_TOKEN) when it requires one."""

    def __init__(self, target: str | None = None, *, timeout: float = 30.0, token: str | None = None) -> None:
        self.target = resolve_target(target)
        self.timeout = timeout
        self._channel = open_channel(self.target, token)
        self._stub: Any = pb_grpc.TrackingServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._artifacts: ArtifactClient | None = None
        self._registry: RegistryClient | None = None
        self._pid = os.getpid()
        self._writers: weakref.WeakSet[MetricWriter] = weakref.WeakSet()
        self._consoles: weakref.WeakSet[console.ConsoleCapture] = weakref.WeakSet()  # uploading through it

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the writers of this client's runs, then the channel."""
        for writer in list(self._writers):
            try:
                writer.close(self.timeout)
            except RunstreamError as exc:  # closing must not hide the caller's own exception
                log.warning("runstream: closing the writer of run %s: %s", writer.run_id, exc)
        for capture in list(self._consoles):  # its last upload while the channel is open
            console.stop(capture)
        self._channel.close()

    @property
    def channel(self) -> grpc.Channel:
        return self._channel

    # ------------------------------------------------------------ experiments

    @typed_errors
    def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> pb.Experiment:
        out: pb.Experiment = self._stub.CreateExperiment(
            pb.CreateExperimentRequest(name=name, artifact_location=artifact_location, tags=dict(tags or {})),
            timeout=self.timeout,
        )
        return out

    @typed_errors
    def get_experiment(self, experiment_id: str | None = None, *, name: str | None = None) -> pb.Experiment:
        req = (
            pb.GetExperimentRequest(name=name)
            if name is not None
            else pb.GetExperimentRequest(experiment_id=experiment_id or "")
        )
        out: pb.Experiment = self._stub.GetExperiment(req, timeout=self.timeout)
        return out

    @typed_errors
    def list_experiments(self) -> list[pb.Experiment]:
        found: list[pb.Experiment] = []
        token = ""
        while True:
            page = self._stub.ListExperiments(pb.ListExperimentsRequest(page_token=token), timeout=self.timeout)
            found += page.experiments
            token = page.next_page_token
            if not token:
                return found

    # ------------------------------------------------------------ runs

    @typed_errors
    def create_run(
        self,
        experiment: str = "Default",
        name: str = "",
        tags: Mapping[str, str] | None = None,
        start_time_ms: int = 0,
        *,
        run_id: str = "",
        timeout: float | None = None,
        fork_of: str = "",
        fork_step: int = 0,
        params: Mapping[str, Any] | None = None,
    ) -> pb.Run:
        """Create a run in the experiment named `experiment` (created when missing); under
        `run_id` when given (creating it again answers with that run). `fork_of`: a fork of that
        run, reading its points up to `fork_step`, in its experiment (see fork)."""
        req = pb.CreateRunRequest(
            name=name,
            tags=dict(tags or {}),
            start_time_ms=start_time_ms,
            run_id=run_id,
            fork_of=fork_of,
            fork_step=fork_step,
            params={k: str(v) for k, v in (params or {}).items()},
        )
        if experiment or not fork_of:  # a fork lives in its parent's experiment
            req.experiment_name = experiment or "Default"
        out: pb.Run = self._stub.CreateRun(req, timeout=timeout or self.timeout)
        return out

    @typed_errors
    def rewind_run(self, run_id: str, step: int) -> pb.Run:
        """Supersede what the run's writers logged so far above `step` (a checkpoint's step):
        reads show what is logged from now on there, and the superseded points stay readable as
        a branch (history(..., branch=N)). start_run(resume=..., rewind_to=STEP) calls it."""
        out: pb.Run = self._stub.RewindRun(pb.RewindRunRequest(run_id=run_id, step=step), timeout=self.timeout)
        return out

    @typed_errors
    def get_run(self, run_id: str, *, all_metrics: bool = True) -> pb.Run:
        """The run with its params, tags and metric summaries: all of them, fetched a page at a
        time for runs with many keys, unless `all_metrics` is False (then the first 1,000)."""
        out: pb.Run = self._stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=self.timeout)
        if all_metrics and out.metrics_truncated:
            out.metrics.extend(self.run_metrics(out.run_id, after_first=len(out.metrics)))
            out.metrics_truncated = False
        return out

    @typed_errors
    def run_metrics(self, run_id: str, *, after_first: int = 0) -> list[pb.MetricSummary]:
        """A run's metric summaries in key order (skipping the first `after_first`)."""
        found: list[pb.MetricSummary] = []
        token = ""
        while True:
            page = self._stub.ListRunMetrics(
                pb.ListRunMetricsRequest(run_id=run_id, max_results=10_000, page_token=token), timeout=self.timeout
            )
            found.extend(page.metrics)
            token = page.next_page_token
            if not token:
                return found[after_first:]

    @typed_errors
    def update_run(
        self, run_id: str, status: str | None = None, name: str | None = None, end_time_ms: int = 0
    ) -> pb.Run:
        req = pb.UpdateRunRequest(run_id=run_id, end_time_ms=end_time_ms)
        if status is not None:
            if status not in _STATUS_BY_NAME:
                raise ValueError(f"status must be one of {sorted(_STATUS_BY_NAME)}")
            req.status = _STATUS_BY_NAME[status]
        if name is not None:
            req.name = name
        out: pb.Run = self._stub.UpdateRun(req, timeout=self.timeout)
        return out

    @typed_errors
    def delete_run(self, run_id: str) -> pb.Run:
        """Soft-delete a run: hidden from search, refuses new metrics until restored."""
        out: pb.Run = self._stub.DeleteRun(pb.RunRef(run_id=run_id), timeout=self.timeout)
        return out

    @typed_errors
    def restore_run(self, run_id: str) -> pb.Run:
        out: pb.Run = self._stub.RestoreRun(pb.RunRef(run_id=run_id), timeout=self.timeout)
        return out

    @typed_errors
    def delete_experiment(self, experiment_id: str) -> pb.Experiment:
        """Soft-delete an experiment and its runs."""
        out: pb.Experiment = self._stub.DeleteExperiment(
            pb.ExperimentRef(experiment_id=experiment_id), timeout=self.timeout
        )
        return out

    @typed_errors
    def restore_experiment(self, experiment_id: str) -> pb.Experiment:
        out: pb.Experiment = self._stub.RestoreExperiment(
            pb.ExperimentRef(experiment_id=experiment_id), timeout=self.timeout
        )
        return out

    @property
    def artifacts(self) -> ArtifactClient:
        """Artifact uploads and downloads (signed URLs straight to the store)."""
        from runstream.client.artifacts import ArtifactClient

        if self._artifacts is None:
            self._artifacts = ArtifactClient(self._channel, self.timeout)
        return self._artifacts

    @property
    def admin(self) -> AdminClient:
        """Looking after the pipeline: dead letters."""
        from runstream.client.admin import AdminClient

        return AdminClient(self._channel, self.timeout)

    @property
    def registry(self) -> RegistryClient:
        """The model registry: versions, stages, aliases, reviews, lineage."""
        from runstream.client.registry import RegistryClient

        if self._registry is None:
            self._registry = RegistryClient(self._channel, self.artifacts, self.timeout)
        return self._registry

    def register_model(self, run_id: str, artifact_path: str, name: str, **kwargs: Any) -> Any:
        return self.registry.register_model(run_id, artifact_path, name, **kwargs)

    def get_model_version(self, name_or_uri: str, version: int | None = None) -> Any:
        return self.registry.get_model_version(name_or_uri, version)

    def transition_stage(self, name: str, version: int, stage: str, archive_existing: bool = False) -> Any:
        return self.registry.transition_stage(name, version, stage, archive_existing)

    def set_alias(self, name: str, alias: str, version: int) -> Any:
        return self.registry.set_alias(name, alias, version)

    def download_model(self, uri: str, dst: str | Path) -> Path:
        return self.registry.download_model(uri, dst)

    @typed_errors
    def log_inputs(self, run_id: str, inputs: list[Mapping[str, str]]) -> None:
        """Datasets the run read, each with name, digest, source and context (for lineage)."""
        self._stub.LogInputs(
            pb.LogInputsRequest(run_id=run_id, inputs=[pb.DatasetInput(**dict(i)) for i in inputs]),
            timeout=self.timeout,
        )

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> Any:
        return self.artifacts.log_artifact(run_id, local_path, artifact_path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> Any:
        return self.artifacts.log_artifacts(run_id, local_dir, artifact_path)

    def list_artifacts(self, run_id: str, path: str = "") -> Any:
        return self.artifacts.list_artifacts(run_id, path)

    def download_artifacts(self, run_id: str, path: str, dst: str | Path) -> Path:
        return self.artifacts.download_artifacts(run_id, path, dst)

    @typed_errors
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._stub.LogParams(
            pb.LogParamsRequest(run_id=run_id, params={k: str(v) for k, v in params.items()}), timeout=self.timeout
        )

    @typed_errors
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._stub.SetTags(
            pb.SetTagsRequest(run_id=run_id, tags={k: str(v) for k, v in tags.items()}), timeout=self.timeout
        )

    @typed_errors
    def delete_tag(self, run_id: str, key: str) -> None:
        self._stub.DeleteTag(pb.DeleteTagRequest(run_id=run_id, key=key), timeout=self.timeout)

    def start_run(
        self,
        experiment: str = "Default",
        name: str = "",
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        writer_id: str | None = None,
        record_source: bool = True,
        offline: bool | None = None,
        resume: str | None = None,
        rewind_to: int | None = None,
        fork: tuple[str, int] | None = None,
        **writer_options: Any,
    ) -> Run:
        """Create a run and a handle to log into it. Unless `record_source` is False the run is
        tagged with the code that started it (git commit and dirty flag, entry point, Python and
        imported package versions: runstream.source.*).

        `resume=RUN_ID` (or RUNSTREAM_RESUME) continues that run from this process, e.g. a job
        restarted from a checkpoint: the run is RUNNING again and owned by this handle, and this
        process writes a new session of its writer (points logged before are kept). A run of
        that id that does not exist yet is created under it (in `experiment`, named `name`; a
        run that exists stays where it is), so a launcher can give every start of a job the
        same id. With `rewind_to=STEP` (the checkpoint's step) the points the run's writers
        logged before at steps above STEP are superseded: reads show the ones logged from now on,
        and the old ones stay stored as a branch (a faded line in the run page). Start the job's
        other ranks after this returns: their sessions are then the new ones.

        `fork=(RUN_ID, STEP)`: see fork().

        `offline=True` (or RUNSTREAM_MODE=offline) records the run in the local spool only, under
        an id made here, for `runstream sync` to send later; RUNSTREAM_MODE=auto does that when
        the server is unreachable now, and sends it in the background once the server answers."""
        mode = run_mode(offline)
        if record_source:
            from runstream.client.provenance import source_tags

            tags = {**source_tags(), **(tags or {})}
        resume = resume or settings.current().resume or None
        if resume is not None and mode == "offline":
            raise ValueError("resume continues a run on the server; it cannot be offline")
        if rewind_to is not None and resume is None:
            raise ValueError("rewind_to rewinds a resumed run: give resume=RUN_ID (or RUNSTREAM_RESUME) too")
        if fork is not None and (resume is not None or mode == "offline"):
            raise ValueError("a fork is a new run on the server: not with resume, nor offline")
        if mode == "offline":
            return self._start_offline(experiment, name, tags or {}, params, writer_id, writer_options, follow=False)
        self._resume_orphans()
        try:
            connect = settings.current().connect_timeout if mode == "auto" else None
            if resume is not None:
                run = self._resumed(resume, experiment, name, tags or {})
                if rewind_to is not None:
                    run = self.rewind_run(run.run_id, rewind_to)
            elif fork is not None:
                run = self.create_run(experiment, name, tags, fork_of=fork[0], fork_step=fork[1], params=params)
                params = None  # logged with it: they replace the parent's
            else:
                run = self.create_run(experiment, name, tags, timeout=connect)
        except (Unavailable, DeadlineExceeded) as exc:
            if mode != "auto" or resume is not None or fork is not None:  # these runs live on the server
                raise
            log.warning(
                "runstream: the server at %s is unreachable (%s); the run is kept offline and sent when it answers",
                self.target,
                exc,
            )
            return self._start_offline(experiment, name, tags or {}, params, writer_id, writer_options, follow=True)
        handle = Run(self, run.run_id, writer_id, **writer_options)
        handle.epoch = self.open_writer(run.run_id, handle.writer_id)
        handle.writer  # noqa: B018  (started now: its heartbeats tell the server this process lives)
        if params:
            handle.log_params(params)
        return handle

    def fork(
        self,
        run_id: str,
        at_step: int,
        name: str = "",
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Run:
        """A new run in run `run_id`'s experiment that shares its points up to `at_step` without
        copying them (its reads walk the lineage), starts with its params and tags (`params` and
        `tags` win), and is linked to it both ways (Run.parent_run_id, fork_ids). Log into it
        from the step after `at_step`: e.g. the same checkpoint with a new learning rate. Takes
        start_run's other options."""
        return self.start_run("", name, params=params, tags=tags, fork=(run_id, at_step), **options)

    def _resumed(self, run_id: str, experiment: str, name: str, tags: Mapping[str, str]) -> pb.Run:
        """The run `run_id`, RUNNING again; created under that id if there is none yet."""
        try:
            run = self.get_run(run_id, all_metrics=False)
        except NotFound:
            return self.create_run(experiment, name, tags, run_id=run_id)
        if run.lifecycle_stage == "deleted":
            raise FailedPrecondition(f"run {run.run_id} is deleted; restore it to resume it (runstream runs restore)")
        if tags:
            self.set_tags(run.run_id, tags)
        return self.update_run(run.run_id, status="RUNNING")

    def _start_offline(
        self,
        experiment: str,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None,
        writer_id: str | None,
        writer_options: dict[str, Any],
        *,
        follow: bool,
    ) -> Run:
        run_id = str(uuid.uuid4())
        run_dir = spool.default_dir() / run_id
        journal = offline.Journal(run_dir)
        journal.record("create", **offline.create_entry(experiment, name or run_id[:8], tags, self.target))
        handle = Run(self, run_id, writer_id, journal=journal, **writer_options)
        handle.writer  # noqa: B018  (its spool exists from the start)
        if params:
            handle.log_params(params)
        if follow:
            handle.follower = sync.Follower(self, run_dir, handle.writer_id)
            handle.follower.start()
        log.info("runstream: run %s is offline, kept in %s", run_id, run_dir)
        return handle

    def _resume_orphans(self) -> None:
        """Once per process: send what earlier processes left in the spool for this server."""
        if not spool.enabled() or not settings.current().sync_on_start or not lifecycle.claim_orphans():
            return
        sync.resume_orphans(self, spool.default_dir())

    def attach(self, run_id: str, writer_id: str | None = None, **writer_options: Any) -> Run:
        """A handle to log into an existing run, e.g. from another rank of the same job."""
        run = self.get_run(run_id, all_metrics=False)  # NOT_FOUND now rather than at the first batch
        handle = Run(self, run.run_id, writer_id, owner=False, **writer_options)  # the id as the server spells it
        handle.epoch = self.open_writer(run.run_id, handle.writer_id)
        handle.writer  # noqa: B018  (started now: its heartbeats tell the server this process lives)
        return handle

    @typed_errors
    def open_writer(self, run_id: str, writer_id: str) -> int:
        """A new session of `writer_id` in the run: its batches count seq from 1 within it, so a
        process restarted under the same writer id loses nothing to de-duplication."""
        req = pb.OpenWriterRequest(run_id=run_id, writer_id=writer_id)
        return int(self._stub.OpenWriter(req, timeout=self.timeout).epoch)


class Run:
    """One run seen from one writer. As a context manager it ends the run on exit:
    FINISHED normally, FAILED when an exception escapes (only the run's creator ends it)."""

    def __init__(
        self,
        client: Client,
        run_id: str,
        writer_id: str | None = None,
        *,
        owner: bool = True,
        journal: offline.Journal | None = None,
        **writer_options: Any,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.writer_id = writer_id or default_writer_id()
        check_writer_id(self.writer_id)  # the server would refuse every batch of this writer
        self.epoch = 0  # set by Client.start_run / attach from OpenWriter
        self.owner = owner
        self._writer_options = writer_options
        self._writer: MetricWriter | None = None
        self._writer_lock = threading.Lock()
        self._console: console.ConsoleCapture | None = None
        self.journal = journal  # an offline run: everything goes to the spool
        self.follower: sync.Follower | None = None  # auto mode: sends the offline run once the server answers
        self.ended = False

    @property
    def offline(self) -> bool:
        return self.journal is not None

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, writer_id={self.writer_id!r})"

    @property
    def writer(self) -> MetricWriter:
        if self._writer is None:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = MetricWriter(
                        self.client.channel,
                        self.client.target,
                        self.run_id,
                        self.writer_id,
                        epoch=self.epoch,
                        spool=self._open_spool(),
                        offline=self.offline,
                        **self._writer_options,
                    )
                    lifecycle.run_writer(self._writer)
                    self.client._writers.add(self._writer)
                    self._console = console.start(self._upload_console)
                    if self._console is not None and self.journal is None:
                        self.client._consoles.add(self._console)
                        # Its last upload may run at interpreter exit, when no module that starts
                        # threads may be imported any more: import the uploader now.
                        _ = self.client.artifacts
        return self._writer

    def _open_spool(self) -> spool.SpoolWriter | None:
        if not self.offline and not spool.enabled():
            return None
        try:
            return spool.SpoolWriter(spool.default_dir(), self.run_id, self.writer_id, self.epoch, self.client.target)
        except (OSError, spool.SpoolBusy) as exc:
            if self.offline:
                raise
            log.warning("runstream: no spool for run %s (%s): unsent points live in memory only", self.run_id, exc)
            return None

    def _upload_console(self, path: Path) -> None:
        if self.journal is not None:
            self.journal.keep_file(path, f"logs/{self.writer_id}.txt", "text/plain; charset=utf-8")
            return
        # A writer id may hold "/" (host/pid): logs/<host>/<pid>.txt then.
        # No progress bar: it would be printed into the very log it uploads.
        self.client.artifacts.log_file(
            self.run_id, path, f"logs/{self.writer_id}.txt", "text/plain; charset=utf-8", progress=False
        )

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp_ms: int | None = None) -> None:
        self.writer.log({key: value}, step, timestamp_ms)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, timestamp_ms: int | None = None) -> None:
        self.writer.log(metrics, step, timestamp_ms)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> Any:
        """Upload a file into the run's artifacts (under `artifact_path` if given); an offline
        run copies it into the spool now and uploads it at sync."""
        if self.journal is not None:
            local = Path(local_path)
            path = f"{artifact_path.strip('/')}/{local.name}" if artifact_path else local.name
            self.journal.keep_file(local, path, mimetypes.guess_type(local.name)[0] or "")
            return None
        return self.client.artifacts.log_artifact(self.run_id, local_path, artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> Any:
        if self.journal is not None:
            root = Path(local_dir)
            base = artifact_path.strip("/") + "/" if artifact_path else ""
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = f.relative_to(root).as_posix()
                self.journal.keep_file(f, base + rel, mimetypes.guess_type(f.name)[0] or "")
            return None
        return self.client.artifacts.log_artifacts(self.run_id, local_dir, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> Any:
        if self.journal is not None:
            self.journal.keep_text(text, artifact_file, "text/plain; charset=utf-8")
            return None
        return self.client.artifacts.log_text(self.run_id, text, artifact_file)

    def log_dict(self, dictionary: Any, artifact_file: str) -> Any:
        if self.journal is not None:
            self.journal.keep_text(json.dumps(dictionary, indent=2), artifact_file, "application/json")
            return None
        return self.client.artifacts.log_dict(self.run_id, dictionary, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str, **savefig: Any) -> Any:
        """Save a matplotlib figure (format from the name: .png, .svg, .pdf) as an artifact."""
        if self.journal is not None:
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / Path(artifact_file).name
                figure.savefig(local, **savefig)
                self.journal.keep_file(local, artifact_file, mimetypes.guess_type(local.name)[0] or "")
            return None
        return self.client.artifacts.log_figure(self.run_id, figure, artifact_file, **savefig)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.journal is not None:
            self.journal.record("params", params={k: str(v) for k, v in params.items()})
            return
        self.client.log_params(self.run_id, params)

    def log_input(self, name: str, source: str = "", digest: str = "", context: str = "") -> None:
        """Record a dataset the run read (e.g. name="wine", source="s3://data/wine.csv",
        digest=its hash or version, context="training"); a model's lineage lists them."""
        inputs = [{"name": name, "source": source, "digest": digest, "context": context}]
        if self.journal is not None:
            self.journal.record("inputs", inputs=inputs)
            return
        self.client.log_inputs(self.run_id, inputs)

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.journal is not None:
            self.journal.record("tags", tags={k: str(v) for k, v in tags.items()})
            return
        self.client.set_tags(self.run_id, tags)

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def flush(self, timeout: float | None = None, visible: bool = False) -> None:
        """Wait until everything logged so far is acknowledged: durable in the server's ingest
        log, where no server or loader failure loses it. With `visible=True` also wait until it
        is stored and queryable (get_metric_history, search_runs, compare_runs see it), for
        scripts that log and then read; DeadlineExceeded after `timeout` says what is missing."""
        if self._writer is None:
            return
        if self.offline:
            self._writer.persist(timeout)  # in the spool is as far as an offline run's points go
            return
        self._writer.flush(timeout, visible)

    def info(self) -> pb.Run:
        if self.offline and (self.follower is None or not self.follower.online):
            raise FailedPrecondition(f"run {self.run_id} is offline: `runstream sync` sends it to the server")
        return self.client.get_run(self.run_id)

    def end(self, status: str = "FINISHED", timeout: float | None = None) -> None:
        """Flush this writer's points (waiting at most `timeout`, default RUNSTREAM_FLUSH_TIMEOUT
        or 60 s), then, as the run's creator, mark the run ended. What was not delivered is
        raised (DeadlineExceeded with the count, PointsDropped...) even when the server is gone
        and the run cannot be marked ended either."""
        if self.ended:
            return
        self.ended = True
        if timeout is None:
            timeout = settings.current().flush_timeout
        undelivered: RunstreamError | None = None
        if self._console is not None:
            console.stop(self._console)  # its last upload, before the run is marked ended
        try:
            if self._writer is not None:
                self._writer.close(timeout)
        except RunstreamError as exc:
            undelivered = exc
        if self.journal is not None:
            self._end_offline(status, timeout, undelivered)
            return
        if self.owner:
            try:
                self.client.update_run(self.run_id, status=status)
            except RunstreamError as exc:
                if undelivered is None:
                    raise
                log.error("run %s could not be marked %s either: %s", self.run_id, status, exc)
        if undelivered is not None:
            raise undelivered

    def _end_offline(self, status: str, timeout: float, undelivered: RunstreamError | None) -> None:
        assert self.journal is not None
        self.journal.record("end", status=status, end_time_ms=time.time_ns() // 1_000_000)
        self.journal.close()
        # A server never reached during the job gets one more try, not the whole flush timeout:
        # the job ends at its own speed and the run waits in the spool.
        wait = timeout if self.follower is not None and self.follower.online else min(timeout, 5.0)
        if self.follower is not None and not self.follower.finish(wait):
            log.warning(
                "runstream: run %s is not on the server yet; it stays in %s for `runstream sync`",
                self.run_id,
                self.journal.run_dir,
            )
        if undelivered is not None:
            raise undelivered

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")

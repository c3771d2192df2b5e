"""The TrackingService: run lifecycle, params and tags straight to PostgreSQL, and metric
batches appended, as received, to the Redis streams the loaders drain.

A metric batch is validated cheaply (columns agree, limits, the run exists), appended as
one stream entry, and acknowledged only after Redis answered the append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import grpc

from runstream.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RunNotFound,
    RunstreamError,
    Unavailable,
)
from runstream.server.auth.guard import Guard
from runstream.server.loading.notifications import Notifications
from runstream.server.rpc import fields
from runstream.server.rpc.fields import MAX_PARAM_VALUE, MAX_TAG_VALUE, check_values
from runstream.server.rpc.messages import experiment_message, input_message, run_message, summary_message
from runstream.server.rpc.paging import PageTokens
from runstream.server.runtime.metrics import INGEST_RPCS, Metrics
from runstream.server.storage import archive, db, experiments, lineage, metrics, runs
from runstream.server.storage.failures import database_away
from runstream.server.streams.client import REDIS_ERRORS, RedisClient
from runstream.server.streams.keys import Keys
from runstream.server.tracking import lineage as tracking_lineage
from runstream.server.tracking.appender import Durability, StreamAppender
from runstream.wire import batch as wire
from runstream.wire.batch import batch_digest
from runstream.wire.ids import canonical_run_id
from runstream.wire.proto import tracking_pb2 as pb

log = logging.getLogger(__name__)

MAX_NAME = 500
MAX_LOCATION = 2_000  # an experiment's artifact_location
RUN_CACHE_S = 30.0
MAX_WAIT_MS = 600_000  # WaitCommitted
COMMIT_POLL_S = 1.0  # WaitCommitted looks again this often without a notification
RECENT_BATCHES = 50_000  # batch digests kept to refuse a reused seq at once
DB_CHECK_S = 2.0  # a run check waits this long for PostgreSQL before taking it for away
BACKLOG_POLL_S = 0.5
STREAM_PIPELINE = 8  # appends in flight per StreamMetrics stream
TERMINAL = {pb.RUN_STATUS_FINISHED, pb.RUN_STATUS_FAILED, pb.RUN_STATUS_KILLED}
Inflight = tuple[pb.BatchAck, "asyncio.Future[None] | None", float]  # ack, its append, when the batch came


class Tracking:
    """The TrackingService handlers; see protos/runstream/v1/tracking.proto."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        keys: Keys,
        max_backlog: int,
        tokens: PageTokens,
        metrics: Metrics | None = None,
        max_keys_per_run: int = 100_000,
        durability: Durability | None = None,
        guard: Guard | None = None,
        store: archive.RangeReader | None = None,
    ) -> None:
        self.pool = pool
        self.store = store  # cold runs' points, which a rewind or fork may read
        self.guard = guard  # checks each batch's run against a token limited to some experiments
        self.tokens = tokens
        self.loaded = Notifications(pool)  # WaitCommitted wakes when loaders commit its run
        self.metrics = metrics or Metrics()
        self._rpc_metrics = {rpc: _RpcMetrics(self.metrics, rpc) for rpc in INGEST_RPCS}
        self.redis = redis
        self.keys = keys
        self.max_backlog = max_backlog
        self._runs: dict[str, float] = {}  # active run id -> when the cache entry expires
        self._known_keys: set[str] = set()
        self._backlog = [0] * keys.shards
        self._backlog_task: asyncio.Task[None] | None = None
        self._appenders = [StreamAppender(redis, stream, durability or Durability()) for stream in keys.streams()]
        self._db_away_since: float | None = None  # when a run check last found PostgreSQL away
        self._recent = RecentBatches()
        self._run_keys = RunKeys(max_keys_per_run)

    async def start(self) -> None:
        self._backlog_task = asyncio.create_task(self._watch_backlog())

    async def stop(self) -> None:
        await self.loaded.close()
        if self._backlog_task:
            self._backlog_task.cancel()
        for appender in self._appenders:
            await appender.stop()

    async def _watch_backlog(self) -> None:
        """Keep the stream lengths current, so ingest can push back when loaders lag."""
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for stream in self.keys.streams():
                        pipe.xlen(stream)
                    self._backlog = [int(n) for n in await pipe.execute()]
            except REDIS_ERRORS as exc:  # unreachable, or refusing: keep the last lengths
                log.warning("cannot read stream lengths: %s", exc)
            await asyncio.sleep(BACKLOG_POLL_S)

    # ------------------------------------------------------------ experiments

    async def CreateExperiment(self, req: pb.CreateExperimentRequest, ctx: Any) -> pb.Experiment:
        if not req.name or len(req.name) > MAX_NAME:
            raise InvalidArgument(f"experiment name must be 1-{MAX_NAME} characters")
        if len(req.artifact_location) > MAX_LOCATION:
            raise InvalidArgument(f"artifact_location is longer than {MAX_LOCATION:,} characters")
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        async with self.pool.acquire() as conn:
            return experiment_message(
                await experiments.create_experiment(conn, req.name, req.artifact_location, dict(req.tags))
            )

    async def GetExperiment(self, req: pb.GetExperimentRequest, ctx: Any) -> pb.Experiment:
        async with self.pool.acquire() as conn:
            if req.WhichOneof("ref") == "experiment_id":
                row = await experiments.get_experiment(conn, experiment_id=fields.experiment_id(req.experiment_id))
            elif req.WhichOneof("ref") == "name":
                row = await experiments.get_experiment(conn, name=req.name)
            else:
                raise InvalidArgument("give experiment_id or name")
            return experiment_message(row)

    async def ListExperiments(self, req: pb.ListExperimentsRequest, ctx: Any) -> pb.ListExperimentsResponse:
        limit = req.max_results or 1000
        if not 0 < limit <= 10_000:
            raise InvalidArgument("max_results must be between 1 and 10,000")
        after = int(self.tokens.read(req.page_token, "experiments by id")) if req.page_token else 0
        async with self.pool.acquire() as conn:
            rows = await experiments.list_experiments(conn, limit + 1, after)
        more = len(rows) > limit
        rows = rows[:limit]
        return pb.ListExperimentsResponse(
            experiments=[experiment_message(r) for r in rows],
            next_page_token=self.tokens.issue(int(rows[-1].experiment_id), "experiments by id") if more else "",
        )

    # ------------------------------------------------------------ runs

    async def CreateRun(self, req: pb.CreateRunRequest, ctx: Any) -> pb.Run:
        if len(req.name) > MAX_NAME:
            raise InvalidArgument(f"run name is {len(req.name)} characters; the limit is {MAX_NAME}")
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        check_values(dict(req.params), "param", MAX_PARAM_VALUE)
        run_id = req.run_id or str(uuid.uuid4())  # a given id is canonical here (rpc/grpc.py)
        start = req.start_time_ms or db.now_ms()
        fork = runs.Fork(req.fork_of, req.fork_step) if req.fork_of else None
        async with self.pool.acquire() as conn:
            which = req.WhichOneof("experiment")
            if fork is not None:
                experiment_id = await self._fork_experiment(conn, req, fork)
            elif which == "experiment_id":
                experiment_id = fields.experiment_id(req.experiment_id)
            else:
                name = req.experiment_name or "Default"
                if len(name) > MAX_NAME:
                    raise InvalidArgument(f"experiment name must be 1-{MAX_NAME} characters")
                experiment_id = await experiments.get_or_create_experiment(conn, name)
            async with conn.transaction():  # a fork and its summaries, at once
                created = await runs.create_run(
                    conn,
                    run_id,
                    experiment_id,
                    req.name or run_id[:8],
                    pb.RUN_STATUS_RUNNING,
                    start,
                    dict(req.tags),
                    fork,
                    dict(req.params),
                )
                if created and fork is not None:  # its summaries: what it reads of its lineage
                    await lineage.lock_lineage(conn, run_id)
                    await tracking_lineage.recount(conn, run_id, self.store)
            run = await runs.get_run(conn, run_id)
        forked = (fork.parent_run_id, fork.step) if fork else (None, None)
        if not created and (run.parent_run_id, run.fork_step) != forked:
            raise AlreadyExists(f"run id {run_id} is taken by a run that is not this fork; make the run another id")
        if not created and run.experiment_id != experiment_id:
            # not which experiment: a token limited to some would learn of a run it may not see
            raise AlreadyExists(f"run id {run_id} is taken by a run of another experiment; make the run another id")
        self._runs[run_id] = time.monotonic() + RUN_CACHE_S
        return run_message(run)

    async def _fork_experiment(self, conn: Any, req: pb.CreateRunRequest, fork: runs.Fork) -> int:
        """A fork lives in its parent's experiment, so that whoever may read it may read the
        parent's points it shows (a token limited to some experiments sees no other's)."""
        parent = await runs.experiment_of_run(conn, fork.parent_run_id)
        if parent is None:
            raise RunNotFound(f"run {fork.parent_run_id} does not exist, so it cannot be forked")
        name = (await experiments.experiment_names(conn, [parent]))[parent]
        which = req.WhichOneof("experiment")
        if (which == "experiment_id" and fields.experiment_id(req.experiment_id) != parent) or (
            which == "experiment_name" and req.experiment_name not in ("", name)
        ):
            raise InvalidArgument(
                f"a fork lives in its parent's experiment ({name!r}); leave the experiment out or name that one"
            )
        return parent

    async def ListRunMetrics(self, req: pb.ListRunMetricsRequest, ctx: Any) -> pb.ListRunMetricsResponse:
        limit = req.max_results or runs.RUN_METRICS
        if not 0 < limit <= 10_000:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and 10,000")
        wire.check_run_id(req.run_id)
        query = f"run metrics\x00{req.run_id}"
        after = str(self.tokens.read(req.page_token, query, str)) if req.page_token else ""
        async with self.pool.acquire() as conn:
            if await runs.run_lifecycle(conn, req.run_id) is None:
                raise RunNotFound(f"run {req.run_id} does not exist")
            rows = await runs.run_metrics(conn, req.run_id, after, limit + 1)
        out = pb.ListRunMetricsResponse(metrics=[summary_message(m) for m in rows[:limit]])
        if len(rows) > limit:
            out.next_page_token = self.tokens.issue(rows[limit - 1].key, query)
        return out

    async def GetRun(self, req: pb.GetRunRequest, ctx: Any) -> pb.Run:
        wire.check_run_id(req.run_id)
        async with self.pool.acquire() as conn:
            run = await runs.get_run(conn, req.run_id)
            inputs = await runs.run_inputs(conn, req.run_id)
            family = await lineage.lineage(conn, req.run_id)
        if run.lifecycle_stage == "active":  # attach() asks first: its batches need no second look
            self._runs[req.run_id] = time.monotonic() + RUN_CACHE_S
        out = run_message(run)
        out.inputs.extend(input_message(i) for i in inputs)
        out.fork_ids.extend(family.fork_ids)
        out.rewinds.extend(
            pb.Rewind(number=r.number, step=r.step, time_ms=r.time_ms, superseded_points=r.superseded)
            for r in family.rewinds
        )
        return out

    async def RewindRun(self, req: pb.RewindRunRequest, ctx: Any) -> pb.Run:
        wire.check_run_id(req.run_id)
        if not req.HasField("step"):
            raise InvalidArgument("step is required: the checkpoint's step, above which the points logged so far go")
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                number = await tracking_lineage.rewind(conn, req.run_id, req.step, self.store)
            log.info("run %s rewound to step %d (branch %d keeps what it superseded)", req.run_id, req.step, number)
        return await self.GetRun(pb.GetRunRequest(run_id=req.run_id), ctx)

    async def UpdateRun(self, req: pb.UpdateRunRequest, ctx: Any) -> pb.Run:
        wire.check_run_id(req.run_id)
        if req.status not in pb.RunStatus.values():
            raise InvalidArgument(f"status {req.status} is not a RunStatus")
        status = req.status or None
        end = req.end_time_ms or (db.now_ms() if status in TERMINAL else None)
        name = req.name if req.HasField("name") else None
        if name is not None and len(name) > MAX_NAME:
            raise InvalidArgument(f"run name is {len(name)} characters; the limit is {MAX_NAME}")
        async with self.pool.acquire() as conn:
            await runs.update_run(conn, req.run_id, status, end, name)
            return run_message(await runs.get_run(conn, req.run_id))

    async def _set_run_stage(self, run_id: str, stage: str) -> pb.Run:
        wire.check_run_id(run_id)
        self._runs.pop(run_id, None)  # this ingester sees the change at once; others within RUN_CACHE_S
        async with self.pool.acquire() as conn:
            await runs.set_run_lifecycle(conn, run_id, stage)
            return run_message(await runs.get_run(conn, run_id))

    async def DeleteRun(self, req: pb.RunRef, ctx: Any) -> pb.Run:
        return await self._set_run_stage(req.run_id, "deleted")

    async def RestoreRun(self, req: pb.RunRef, ctx: Any) -> pb.Run:
        return await self._set_run_stage(req.run_id, "active")

    async def _set_experiment_stage(self, experiment_id: str, stage: str) -> pb.Experiment:
        eid = fields.experiment_id(experiment_id)
        self._runs.clear()  # its runs change stage too
        async with self.pool.acquire() as conn:
            await experiments.set_experiment_lifecycle(conn, eid, stage)
            return experiment_message(await experiments.get_experiment(conn, experiment_id=eid))

    async def UpdateExperiment(self, req: pb.UpdateExperimentRequest, ctx: Any) -> pb.Experiment:
        eid = fields.experiment_id(req.experiment_id)
        if len(req.new_name) > MAX_NAME:
            raise InvalidArgument(f"experiment name must be 1-{MAX_NAME} characters")
        check_values(dict(req.set_tags), "tag", MAX_TAG_VALUE)
        async with self.pool.acquire() as conn:
            row = await experiments.update_experiment(
                conn, eid, req.new_name, dict(req.set_tags), list(req.delete_tags)
            )
        if req.new_name and self.guard is not None:
            self.guard.forget_runs()  # its runs may have left a token's experiments
        return experiment_message(row)

    async def DeleteExperiment(self, req: pb.ExperimentRef, ctx: Any) -> pb.Experiment:
        return await self._set_experiment_stage(req.experiment_id, "deleted")

    async def RestoreExperiment(self, req: pb.ExperimentRef, ctx: Any) -> pb.Experiment:
        return await self._set_experiment_stage(req.experiment_id, "active")

    async def LogParams(self, req: pb.LogParamsRequest, ctx: Any) -> pb.LogParamsResponse:
        wire.check_run_id(req.run_id)
        check_values(dict(req.params), "param", MAX_PARAM_VALUE)
        async with self.pool.acquire() as conn:
            await fields.active_run(conn, req.run_id, "logging params to it")
            await runs.log_params(conn, req.run_id, dict(req.params))
        return pb.LogParamsResponse()

    async def SetTags(self, req: pb.SetTagsRequest, ctx: Any) -> pb.SetTagsResponse:
        wire.check_run_id(req.run_id)
        check_values(dict(req.tags), "tag", MAX_TAG_VALUE)
        async with self.pool.acquire() as conn:
            await fields.active_run(conn, req.run_id, "setting its tags")
            await runs.set_tags(conn, req.run_id, dict(req.tags))
        return pb.SetTagsResponse()

    async def DeleteTag(self, req: pb.DeleteTagRequest, ctx: Any) -> pb.DeleteTagResponse:
        wire.check_run_id(req.run_id)
        async with self.pool.acquire() as conn:
            await fields.active_run(conn, req.run_id, "deleting its tags")
            if not await runs.delete_tag(conn, req.run_id, req.key):
                raise NotFound(f"tag {req.key!r} is not set on run {req.run_id}")
        return pb.DeleteTagResponse()

    async def LogInputs(self, req: pb.LogInputsRequest, ctx: Any) -> pb.LogInputsResponse:
        wire.check_run_id(req.run_id)
        inputs = []
        for i in req.inputs:
            if not i.name or len(i.name) > 500:
                raise InvalidArgument(f"dataset name {i.name[:80]!r} must have 1 to 500 characters")
            if len(i.digest) > 500 or len(i.source) > 2000 or len(i.context) > 100:
                raise InvalidArgument(f"dataset {i.name!r}: digest at most 500 characters, source 2,000, context 100")
            inputs.append((i.name, i.digest, i.source, i.context))
        async with self.pool.acquire() as conn:
            await fields.active_run(conn, req.run_id, "logging its inputs")
            await runs.log_inputs(conn, req.run_id, inputs)
        return pb.LogInputsResponse()

    # ------------------------------------------------------------ metrics

    async def OpenWriter(self, req: pb.OpenWriterRequest, ctx: Any) -> pb.OpenWriterResponse:
        wire.check_run_id(req.run_id)
        wire.check_writer_id(req.writer_id)
        async with self.pool.acquire() as conn:
            await fields.active_run(conn, req.run_id, "logging to it")
            epoch = await metrics.next_writer_epoch(conn, req.run_id, req.writer_id or wire.DEFAULT_WRITER)
        self._runs[req.run_id] = time.monotonic() + RUN_CACHE_S
        return pb.OpenWriterResponse(epoch=epoch)

    async def WaitCommitted(self, req: pb.WaitCommittedRequest, ctx: Any) -> pb.WaitCommittedResponse:
        wire.check_run_id(req.run_id)
        wire.check_writer_id(req.writer_id)
        timeout_ms = req.timeout_ms or 60_000
        if not 0 < timeout_ms <= MAX_WAIT_MS or req.batches < 0 or req.epoch < 0:
            raise InvalidArgument(f"timeout_ms must be 1 to {MAX_WAIT_MS:,}, batches and epoch at least 0")
        writer = req.writer_id or wire.DEFAULT_WRITER
        deadline = time.monotonic() + timeout_ms / 1000
        seqs = sorted(set(req.seqs))
        wanted = len(seqs) if seqs else req.batches
        await self.loaded.listen()
        wake = self.loaded.register({req.run_id})  # before the first look: no commit slips between
        try:
            while True:
                wake.clear()
                async with self.pool.acquire() as conn:
                    if seqs:
                        committed = await metrics.stored_of(conn, req.run_id, writer, req.epoch, seqs)
                    else:
                        committed = await metrics.committed_batches(conn, req.run_id, writer, req.epoch)
                if committed >= wanted:
                    return pb.WaitCommittedResponse(committed=committed)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(
                        f"{committed:,} of {wanted:,} acknowledged batches of writer {writer!r} in run {req.run_id} "
                        f"are stored after {timeout_ms / 1000:.1f} s; the rest wait in Redis for a loader "
                        "(see runstream_stream_lag) or in the dead letters"
                    )
                # Woken by the loaders' commit of this run; looking again now and then covers a
                # notification lost to a reconnect.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(left, COMMIT_POLL_S))
        finally:
            self.loaded.unregister(wake)

    async def _check_run(self, run_id: str) -> None:
        """The run exists and is active: cached for RUN_CACHE_S. While PostgreSQL is away, a run
        this ingester has known keeps logging into Redis (bounded by --max-backlog), so a
        database restart is invisible to training jobs; an unknown run gets UNAVAILABLE."""
        expires = self._runs.get(run_id)
        if expires is not None and expires > time.monotonic():
            return
        try:
            async with self.pool.acquire(timeout=DB_CHECK_S) as conn:
                stage = await asyncio.wait_for(runs.run_lifecycle(conn, run_id), DB_CHECK_S)
        except Exception as exc:
            if not database_away(exc):
                raise
            self._database_away(exc)
            if expires is not None:
                return
            raise Unavailable(
                f"the database is unreachable and run {run_id} is not known to this ingester yet; retry later"
            ) from None
        if self._db_away_since is not None:
            log.warning("PostgreSQL answers again after %.0f s", time.monotonic() - self._db_away_since)
            self._db_away_since = None
        fields.check_stage(run_id, stage, "logging to it")
        self._runs[run_id] = time.monotonic() + RUN_CACHE_S

    def _database_away(self, exc: BaseException) -> None:
        if self._db_away_since is None:
            self._db_away_since = time.monotonic()
            log.warning(
                "PostgreSQL is unreachable (%s): taking the batches of runs known here into Redis; "
                "unknown runs get UNAVAILABLE",
                type(exc).__name__,
            )

    async def _accept(self, data: bytes, m: _RpcMetrics) -> tuple[pb.BatchAck, asyncio.Future[None] | None]:
        """Validate one serialized batch and submit it to its shard's appender; returns the ack
        to send and the future of the append (None for an empty batch)."""
        m.batches.inc()
        m.bytes.inc(len(data))
        b = wire.decode(data)
        m.points.inc(b.points)
        wire.validate(b, len(data), self._known_keys)
        run_id = canonical_run_id(b.run_id)
        if run_id != b.run_id:  # another spelling of the run: the loader must see the stored one
            b = replace(b, run_id=run_id)
            data = wire.encode(
                run_id, b.writer_id, b.seq, b.keys, b.key_index, b.step, b.timestamp_ms, b.value, b.epoch
            )
        if self.guard is not None:
            await self.guard.check_batch_run(b.run_id)
        await self._check_run(b.run_id)
        await self._run_keys.check(self.pool, b.run_id, b.keys)
        shard = self.keys.shard_of(b.run_id)
        if self._backlog[shard] >= self.max_backlog:
            raise ResourceExhausted(
                f"ingest backlog is full ({self._backlog[shard]:,} batches waiting for the loaders); retry later"
            )
        ack = pb.BatchAck(seq=b.seq, code=0, points=b.points)
        if not b.points:
            return ack, None
        self._recent.check(b)
        return ack, self._appenders[shard].submit(self.keys.entry(data, db.now_ms()))

    async def LogMetrics(self, data: bytes, ctx: Any) -> pb.BatchAck:
        m = self._rpc_metrics["LogMetrics"]
        t0 = time.perf_counter()
        try:
            ack, appended = await self._accept(data, m)
            if appended is not None:
                await appended
        except RunstreamError as exc:
            m.rejected(exc.code)
            raise
        m.ack_latency.observe(time.perf_counter() - t0)
        return ack

    async def StreamMetrics(self, requests: AsyncIterator[bytes], ctx: Any) -> AsyncIterator[pb.BatchAck]:
        """Batches of one stream are validated in order and appended in order, but a sender is
        not held to one Redis round trip per batch: up to STREAM_PIPELINE appends are in flight,
        and each ack goes back once its own append has returned."""
        m = self._rpc_metrics["StreamMetrics"]
        inflight: asyncio.Queue[Inflight | None] = asyncio.Queue(STREAM_PIPELINE)

        async def read() -> None:
            try:
                async for data in requests:
                    t0 = time.perf_counter()
                    try:
                        await inflight.put((*await self._accept(data, m), t0))
                    except RunstreamError as exc:
                        m.rejected(exc.code)
                        await inflight.put((_refusal(data, exc), None, t0))
            finally:
                await inflight.put(None)

        reader = asyncio.create_task(read())
        self.metrics.active_streams.inc()
        try:
            while (item := await inflight.get()) is not None:
                ack, appended, t0 = item
                if appended is not None:
                    try:
                        await appended
                    except RunstreamError as exc:
                        m.rejected(exc.code)
                        ack = pb.BatchAck(seq=ack.seq, code=exc.code.value[0], message=str(exc))
                if not ack.code:
                    m.ack_latency.observe(time.perf_counter() - t0)
                yield ack
            await reader  # re-raise what ended the request stream, if anything
        finally:
            reader.cancel()
            self.metrics.active_streams.dec()


class _RpcMetrics:
    """The ingest metrics of one RPC, with the label bound once (not per batch)."""

    def __init__(self, metrics: Metrics, rpc: str) -> None:
        self.rpc = rpc
        self.points = metrics.points_received.labels(rpc)
        self.batches = metrics.batches_received.labels(rpc)
        self.bytes = metrics.bytes_received.labels(rpc)
        self.ack_latency = metrics.ack_latency.labels(rpc)
        self._rejected = metrics.batches_rejected

    def rejected(self, code: grpc.StatusCode) -> None:
        self._rejected.labels(self.rpc, code.name).inc()


def _refusal(data: bytes, exc: RunstreamError) -> pb.BatchAck:
    return pb.BatchAck(seq=_seq_of(data), code=exc.code.value[0], message=str(exc))


def _seq_of(data: bytes) -> int:
    """The seq of a batch that was rejected, when it can be read at all (0 otherwise)."""
    try:
        return wire.decode(data).seq
    except InvalidArgument:
        return 0


class RecentBatches:
    """The digests of the batches this ingester acknowledged lately, so a seq sent again with
    other points is refused to its sender at once (ALREADY_EXISTS) instead of being dropped as
    a resend; older reuses are caught by the loader (dead letters). A resend (same bytes) passes."""

    def __init__(self, size: int = RECENT_BATCHES) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()

    def check(self, b: wire.Batch) -> None:
        key = (b.run_id, b.writer_id or wire.DEFAULT_WRITER, b.epoch, b.seq)
        digest = batch_digest(b)
        seen = self._seen.get(key)
        if seen is not None and seen != digest:
            raise AlreadyExists(
                f"writer {key[1]!r} sent seq {b.seq} (epoch {b.epoch}) of run {b.run_id} again with other points; "
                "a seq names one batch: count on from the last one, or open a new writer"
            )
        self._seen[key] = digest
        self._seen.move_to_end(key)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)


class RunKeys:
    """The metric keys of the runs this ingester takes batches for, so a batch that would give a
    run more than `limit` keys is refused (FAILED_PRECONDITION) rather than stored. Loaded from
    PostgreSQL once per run; several ingesters each count what they saw, so the limit holds
    within the batches in flight."""

    def __init__(self, limit: int, runs: int = 1_000) -> None:
        self.limit, self.runs = limit, runs
        self._keys: OrderedDict[str, set[str]] = OrderedDict()

    async def check(self, pool: asyncpg.Pool, run_id: str, keys: list[str]) -> None:
        known = self._keys.get(run_id)
        if known is None:
            try:
                async with pool.acquire(timeout=DB_CHECK_S) as conn:
                    known = set(await runs.run_keys(conn, run_id))
            except Exception as exc:
                if not database_away(exc):
                    raise
                return  # PostgreSQL away: better no check than no logging
            self._keys[run_id] = known
            if len(self._keys) > self.runs:
                self._keys.popitem(last=False)
        self._keys.move_to_end(run_id)
        new = [k for k in keys if k not in known]
        if new:
            if len(known) + len(new) > self.limit:
                raise FailedPrecondition(
                    f"run {run_id} would have {len(known) + len(new):,} metric keys; the limit is {self.limit:,} "
                    "(--max-keys-per-run): log under fewer keys, or raise the limit"
                )
            known.update(new)

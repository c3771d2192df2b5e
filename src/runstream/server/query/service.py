"""The QueryService: metric histories, run search and run comparison.

A history with at most `max_points` points comes back whole, in step order. A longer one
comes back as at most `max_points` aligned buckets over its step range, folded from chunk
summaries and compacted chunks' sketches without decoding their points (query/history.py).
SearchRuns turns MLflow's filter language into parameterised SQL (search.py); CompareRuns
puts runs side by side (compare.py) with their series on one step axis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from runstream.errors import InvalidArgument, NotFound, RunNotFound
from runstream.server.auth.guard import CURRENT
from runstream.server.query import compare, export, history
from runstream.server.query.tail import Caller, Tail, Tails
from runstream.server.rpc.messages import experiment_message, run_message
from runstream.server.rpc.paging import PageTokens
from runstream.server.storage import archive, experiments, metrics, runs, search
from runstream.server.storage.replicas import Reads
from runstream.wire import batch as wire
from runstream.wire.proto import query_pb2 as qpb

DEFAULT_MAX_POINTS = 1000
MAX_POINTS = 200_000  # ~28 bytes a point: the answer stays under the 8 MiB message limit
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_MAX_RESULTS = 100
MAX_RESULTS = 10_000
MAX_EXPERIMENTS = 1_000
DEFAULT_COMPARE_POINTS = 500
MAX_COMPARE_RUNS = 100
MAX_COMPARE_KEYS = 50
AGGREGATES = history.AGGREGATES


class Query:
    def __init__(
        self, reads: Reads, tokens: PageTokens, tails: Tails, store: archive.RangeReader | None = None
    ) -> None:
        self.reads = reads  # a replica that has the writes the call must see, or the primary
        self.tokens = tokens
        self.tails = tails
        self.store = store  # where cold runs' points are

    async def close(self) -> None:
        await self.tails.close()

    async def TailMetrics(self, req: qpb.TailMetricsRequest, ctx: Any) -> AsyncIterator[bytes]:
        tail = await self.open_tail(req, _address(ctx.peer()))
        try:
            async for message in tail:
                yield message.data
        finally:
            tail.close()

    async def open_tail(self, req: qpb.TailMetricsRequest, address: str) -> Tail:
        """TailMetrics' tail, for it and for the web UI's server-sent events (web/ui.py); the
        caller (auth.guard.CURRENT, or `address` while auth is off) is held to the limits."""
        _check_runs_and_keys(req.run_ids, req.keys)
        principal = CURRENT.get()
        if principal.token_id:
            caller = Caller(f"token {principal.token_id}", f"token {principal.name!r}")
        else:
            caller = Caller(f"address {address}", f"client {address}")
        from_step = req.from_step if req.HasField("from_step") else None
        return await self.tails.open(list(dict.fromkeys(req.run_ids)), list(req.keys), from_step, caller)

    async def ReadMetrics(self, req: qpb.ReadMetricsRequest, ctx: Any) -> AsyncIterator[bytes]:
        wire.check_run_id(req.run_id)
        wire.check_key(req.key)
        lo, hi = _step_range(req)
        async with self.reads.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            series = await self._series(conn, req.run_id, req.key, req.writer or None)
            series = [s for s in series if s.writer_id > req.after_writer]
            async for message in export.read_series(conn, req.run_id, req.key, series, lo, hi, self.store):
                yield message

    async def ListExperiments(self, req: qpb.ListExperimentsQuery, ctx: Any) -> qpb.ExperimentList:
        limit = req.max_results or DEFAULT_MAX_RESULTS
        if not 0 < limit <= MAX_EXPERIMENTS:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and {MAX_EXPERIMENTS:,}")
        search.check_like(req.name_like, "name_like")
        query = f"experiments\x00{req.include_deleted}\x00{req.name_like}"
        offset = int(self.tokens.read(req.page_token, query)) if req.page_token else 0
        async with self.reads.acquire() as conn:
            rows = await experiments.experiments_with_counts(
                conn, req.include_deleted, req.name_like, limit + 1, offset
            )
        return qpb.ExperimentList(
            experiments=[
                qpb.ExperimentCounts(experiment=experiment_message(e), **counts) for e, counts in rows[:limit]
            ],
            next_page_token=self.tokens.issue(offset + limit, query) if len(rows) > limit else "",
        )

    async def GetMetricHistory(self, req: qpb.GetMetricHistoryRequest, ctx: Any) -> qpb.MetricHistory:
        wire.check_run_id(req.run_id)
        wire.check_key(req.key)
        max_points = _max_points(req.max_points, DEFAULT_MAX_POINTS)
        if req.aggregate not in (qpb.AGGREGATE_UNSPECIFIED, *AGGREGATES):
            raise InvalidArgument(f"aggregate {req.aggregate} is not an Aggregate")
        if req.by_writer and (req.writer or req.aggregate != qpb.AGGREGATE_UNSPECIFIED):
            raise InvalidArgument("by_writer gives every writer's own history: leave writer and aggregate unset")
        if req.with_time and req.aggregate != qpb.AGGREGATE_UNSPECIFIED:
            raise InvalidArgument("with_time gives the time of each bucket's last point: leave aggregate unset")
        if req.branch < 0:
            raise InvalidArgument(f"branch is {req.branch}; 0 is the run's points, N those its rewind N superseded")
        lo, hi = _step_range(req)
        async with self.reads.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            series = await self._series(conn, req.run_id, req.key, req.writer or None, req.branch)
            if not req.by_writer:
                return await history.read(
                    conn,
                    req.key,
                    series,
                    lo,
                    hi,
                    max_points,
                    req.aggregate,
                    fixed_range=False,
                    with_time=req.with_time,
                    store=self.store,
                )
            by_writer: dict[str, list[metrics.SeriesRow]] = {}  # a fork's writer: its ancestors' series too
            for one in series:
                by_writer.setdefault(one.writer_id, []).append(one)
            out = qpb.MetricHistory(key=req.key, writers=list(by_writer))
            for group in by_writer.values():
                part = await history.read(
                    conn,
                    req.key,
                    group,
                    lo,
                    hi,
                    max_points,
                    req.aggregate,
                    fixed_range=False,
                    with_time=req.with_time,
                    store=self.store,
                )
                out.total_points += part.total_points
                out.per_writer.append(part)
            return out

    async def CompareRuns(self, req: qpb.CompareRunsRequest, ctx: Any) -> qpb.CompareRunsResponse:
        _check_runs_and_keys(req.run_ids, req.keys)
        for key, direction in req.direction.items():
            if direction not in ("min", "max"):
                raise InvalidArgument(f"direction of {key!r} is {direction!r}; use 'min' or 'max'")
        max_points = _max_points(req.max_points, DEFAULT_COMPARE_POINTS)
        async with self.reads.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            compared = [await runs.get_run(conn, run_id, list(req.keys) or None) for run_id in req.run_ids]
            keys = list(req.keys) or sorted({m.key for run in compared for m in run.metrics})
            if len(keys) > MAX_COMPARE_KEYS:
                raise InvalidArgument(f"comparing {len(keys)} keys; name at most {MAX_COMPARE_KEYS} in keys")
            out = qpb.CompareRunsResponse(runs=[run_message(r) for r in compared])
            out.params.extend(compare.param_rows([r.params for r in compared]))
            summaries = [{m.key: m.last_value for m in r.metrics} for r in compared]
            plan = []  # (series of one run's key, step range shared by the key's runs)
            for key in keys:
                direction = req.direction.get(key) or compare.default_direction(key)
                out.metrics.append(compare.metric_row(key, [s.get(key) for s in summaries], direction))
                series = [await metrics.metric_series(conn, r.run_id, key, None) for r in compared]
                extent = await metrics.chunk_extent(
                    conn, [x.series_id for s in series for x in s], INT64_MIN, INT64_MAX
                )
                plan += [(key, s, extent.first_step, extent.last_step) for s in series]

        async def one(key: str, series: list[metrics.SeriesRow], lo: int | None, hi: int | None) -> qpb.MetricHistory:
            if lo is None or hi is None or not series:
                return qpb.MetricHistory(key=key)
            async with self.reads.acquire() as conn:  # series are read in parallel, one connection each
                return await history.read(
                    conn, key, series, lo, hi, max_points, qpb.AGGREGATE_UNSPECIFIED, fixed_range=True, store=self.store
                )

        histories = await asyncio.gather(*(one(*item) for item in plan))
        for i, key in enumerate(keys):  # one common step axis per key: the same range, so the same buckets
            out.series.add(key=key).histories.extend(histories[i * len(compared) : (i + 1) * len(compared)])
        return out

    async def SearchRuns(self, req: qpb.SearchRunsRequest, ctx: Any) -> qpb.SearchRunsResponse:
        limit = req.max_results or DEFAULT_MAX_RESULTS
        if not 0 < limit <= MAX_RESULTS:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and {MAX_RESULTS:,}")
        experiment_ids = [int(e) for e in req.experiment_ids]  # canonical decimals (rpc/grpc.py)
        sql = search.Sql(offset=4)  # $1..$4 belong to runs.search_runs
        where = search.where(req.filter, sql)
        order = search.order_by(list(req.order_by), sql)
        query = _search_query(req)
        offset = int(self.tokens.read(req.page_token, query)) if req.page_token else 0
        async with self.reads.acquire() as conn:
            found = await runs.search_runs(
                conn, experiment_ids, req.include_deleted, where, order, sql.args, limit + 1, offset
            )
            total = 0
            if req.count_total:  # the filter alone: order_by's parameters would be unused there
                count_sql = search.Sql(offset=4)
                count_where = search.where(req.filter, count_sql)
                total = await runs.count_runs(conn, experiment_ids, req.include_deleted, count_where, count_sql.args)
        more = len(found) > limit
        return qpb.SearchRunsResponse(
            runs=[run_message(r) for r in found[:limit]],
            next_page_token=self.tokens.issue(offset + limit, query) if more else "",
            total_count=total,
        )

    async def _series(
        self, conn: Any, run_id: str, key: str, writer: str | None, branch: int = 0
    ) -> list[metrics.SeriesRow]:
        series = await metrics.metric_series(conn, run_id, key, writer, branch)
        if series:
            return series
        if await runs.run_lifecycle(conn, run_id) is None:
            raise RunNotFound(f"run {run_id} does not exist")
        if branch:
            return []  # no point of the key was superseded there: an empty history, as drawn
        if writer is not None and await metrics.metric_series(conn, run_id, key, None):
            raise NotFound(f"writer {writer!r} logged no metric {key!r} in run {run_id}")
        raise NotFound(f"run {run_id} has no metric {key!r}")


def _check_runs_and_keys(run_ids: Sequence[str], keys: Sequence[str]) -> None:
    if not 0 < len(run_ids) <= MAX_COMPARE_RUNS:
        raise InvalidArgument(f"give between 1 and {MAX_COMPARE_RUNS} run_ids (got {len(run_ids)})")
    for run_id in run_ids:
        wire.check_run_id(run_id)
    for key in keys:
        wire.check_key(key)


def _address(peer: str) -> str:
    """The client's address of a gRPC peer ("ipv4:127.0.0.1:5555"), without its port."""
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0] if kind in ("ipv4", "ipv6") else peer


def _step_range(req: qpb.GetMetricHistoryRequest | qpb.ReadMetricsRequest) -> tuple[int, int]:
    lo = req.min_step if req.HasField("min_step") else INT64_MIN
    hi = req.max_step if req.HasField("max_step") else INT64_MAX
    if lo > hi:
        raise InvalidArgument(f"min_step {lo} is above max_step {hi}")
    return lo, hi


def _max_points(asked: int, default: int) -> int:
    max_points = asked or default
    if not 0 < max_points <= MAX_POINTS:
        raise InvalidArgument(f"max_points is {max_points:,}; it must be between 1 and {MAX_POINTS:,}")
    return max_points


def _search_query(req: qpb.SearchRunsRequest) -> str:
    """What a page token is bound to: the same search asked again."""
    return "\x00".join(["runs", req.filter, *req.order_by, "|", *req.experiment_ids, str(req.include_deleted)])

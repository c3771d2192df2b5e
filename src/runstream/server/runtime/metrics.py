"""Prometheus metrics of the ingestion path (prometheus-client).

One `Metrics` object per process holds every counter, gauge and histogram. A server runs
prometheus-client's multiprocess mode (`use_multiprocess_dir`), so the loader processes that
role `all` spawns write into the same directory and one `/metrics` shows them all. The
Redis stream figures are read at scrape time (`StreamStats`), so they are never stale.
Labels are bounded: RPC names, status codes, shard numbers; never run ids.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from runstream.server.streams.client import REDIS_ERRORS, RedisClient
from runstream.server.streams.keys import LOADER_GROUP, Keys

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
INGEST_RPCS = ("LogMetrics", "StreamMetrics")
REFUSALS = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
COPY_POINT_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6)


class Metrics:
    """Every metric a runstream process exports; names follow Prometheus' conventions."""

    def __init__(self) -> None:
        # Not registered anywhere: multiprocess mode collects them from files, and a
        # process may make several Metrics (tests) without duplicate-name errors.
        r = None
        # ingest
        self.points_received = Counter(
            "runstream_points_received_total", "Metric points received, by RPC", ["rpc"], registry=r
        )
        self.batches_received = Counter(
            "runstream_batches_received_total", "Metric batches received, by RPC", ["rpc"], registry=r
        )
        self.bytes_received = Counter(
            "runstream_received_bytes_total", "Serialized metric batch bytes received, by RPC", ["rpc"], registry=r
        )
        self.batches_rejected = Counter(
            "runstream_batches_rejected_total",
            "Metric batches refused, by RPC and gRPC status code",
            ["rpc", "code"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "runstream_ack_latency_seconds",
            "From a batch's arrival to its acknowledgement (appended to Redis), by RPC",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge(
            "runstream_active_client_streams", "StreamMetrics calls open now", registry=r, multiprocess_mode="livesum"
        )
        # loaders
        self.copy_points = Histogram(
            "runstream_loader_copy_points",
            "Points per loader transaction (one binary COPY)",
            buckets=COPY_POINT_BUCKETS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "runstream_loader_commit_seconds",
            "Decode, pack, COPY and commit of one loader transaction",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.points_committed = Counter(
            "runstream_points_committed_total", "Metric points committed to PostgreSQL", registry=r
        )
        self.batches_committed = Counter(
            "runstream_batches_committed_total", "Metric batches committed to PostgreSQL", registry=r
        )
        self.batches_deduplicated = Counter(
            "runstream_batches_deduplicated_total",
            "Batches not loaded because they were loaded before (client retries)",
            registry=r,
        )
        self.reads = Counter(
            "runstream_reads_total",
            "Connections QueryService reads took, by where: a replica, the primary (no replica had replayed the "
            "writes the read must see within --replica-wait, or none answered), or wait (a replica was waited for)",
            ["on"],
            registry=r,
        )
        self.entries_claimed = Counter(
            "runstream_entries_claimed_total",
            "Stream entries a loader took over from one that stopped (recovered)",
            registry=r,
        )
        self.entries_taken_over = Counter(
            "runstream_entries_taken_over_total",
            "Stream entries a replacement loader took over at once from the process it replaced",
            registry=r,
        )
        self.entries_foreign = Counter(
            "runstream_entries_foreign_total",
            "Stream entries of another deployment (database) a loader read and left to it",
            registry=r,
        )
        self.entries_dead_lettered = Counter(
            "runstream_entries_dead_lettered_total",
            "Stream entries that could not be decoded or stored, moved to the dead-letter stream with the reason",
            registry=r,
        )
        self.loader_errors = Counter(
            "runstream_loader_errors_total",
            "Loader rounds that failed on PostgreSQL or Redis and were retried",
            registry=r,
        )
        self.loader_restarts = Counter(
            "runstream_loader_restarts_total", "Loader processes of role all that died and were replaced", registry=r
        )
        # compaction and storage (the storage figures are the compactors', refreshed every minute)
        self.points_compacted = Counter(
            "runstream_points_compacted_total", "Points the compactors merged into compressed chunks", registry=r
        )
        self.compaction_seconds = Histogram(
            "runstream_compaction_seconds",
            "Time to compact one series (read, merge, encode, swap)",
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10),
            registry=r,
        )
        self.compaction_errors = Counter(
            "runstream_compaction_errors_total",
            "Series the compactor could not compact (PostgreSQL away, or a chunk that does not decode)",
            registry=r,
        )
        self.stored_points = Gauge(
            "runstream_stored_points", "Metric points in PostgreSQL", registry=r, multiprocess_mode="livemax"
        )
        self.stored_bytes = Gauge(
            "runstream_stored_point_bytes",
            "Bytes of metric points in PostgreSQL (chunks, their TOAST and indexes)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.compaction_backlog = Gauge(
            "runstream_compaction_backlog_points",
            "Points in ingest chunks, not yet compacted",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cold_runs = Counter(
            "runstream_cold_runs_moved_total", "Runs whose points the cold tier moved to the artifact store", registry=r
        )
        self.cold_points = Gauge(
            "runstream_cold_points",
            "Metric points in the cold tier (in the artifact store; their rows and sketches stay in PostgreSQL)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.cold_bytes = Gauge(
            "runstream_cold_bytes", "Bytes of the cold tier's objects", registry=r, multiprocess_mode="livemax"
        )
        # PostgreSQL
        self.pool_in_use = Gauge(
            "runstream_postgres_pool_connections_in_use",
            "PostgreSQL connections checked out of the pools",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pool_size = Gauge(
            "runstream_postgres_pool_connections",
            "PostgreSQL connections open in the pools",
            registry=r,
            multiprocess_mode="livesum",
        )
        # artifacts
        self.uploads_signed = Counter(
            "runstream_artifact_uploads_signed_total",
            "Artifact uploads signed, by kind (single PUT, multipart, or unsized: MLflow's multipart flow)",
            ["kind"],
            registry=r,
        )
        self.uploads_completed = Counter(
            "runstream_artifact_uploads_completed_total", "Artifact uploads recorded as complete", registry=r
        )
        self.upload_bytes = Counter(
            "runstream_artifact_uploaded_bytes_total", "Bytes of the artifact uploads completed", registry=r
        )
        # live tails (query/tail.py): readers shared by tails, and what tails cost the database
        self.tails_open = Gauge(
            "runstream_tails_open",
            "Live tails open now (TailMetrics and /api/v1/tail)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tail_readers = Gauge(
            "runstream_tail_readers",
            "Shared tail readers now: one per run tailed, whatever the number of tails and the keys they ask for",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tail_reads = Counter(
            "runstream_tail_reads_total",
            "Database reads for live tails, by kind: shared (a reader's look for new points, for all its tails) "
            "or own (one tail's stored points from its from_step, or again after it fell behind)",
            ["kind"],
            registry=r,
        )
        self.tails_refused = Counter(
            "runstream_tails_refused_total",
            "Tails refused for a limit (RESOURCE_EXHAUSTED), by limit: server (--max-tails) or token",
            ["limit"],
            registry=r,
        )
        self.tails_behind = Counter(
            "runstream_tails_behind_total",
            "Times a tail read too slowly to keep its queue of new points and had to read them again from the store",
            registry=r,
        )
        # every unary RPC (query latency is the QueryService's share)
        self.rpc_latency = Histogram(
            "runstream_rpc_latency_seconds",
            "Unary RPC handling time, by service and RPC",
            ["service", "rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpc_failures = Counter(
            "runstream_rpc_failures_total",
            "RPCs answered with an error status, by service, RPC and code",
            ["service", "rpc", "code"],
            registry=r,
        )

        # Known label values start at 0, so rate() and alerts see a series before the first event.
        for rpc in INGEST_RPCS:
            for code in REFUSALS:
                self.batches_rejected.labels(rpc, code)
        for kind in ("single", "multipart", "unsized"):
            self.uploads_signed.labels(kind)
        for kind in ("shared", "own"):
            self.tail_reads.labels(kind)
        for limit in ("server", "token"):
            self.tails_refused.labels(limit)

    def sample_pool(self, pool: asyncpg.Pool) -> None:
        size = pool.get_size()
        self.pool_size.set(size)
        self.pool_in_use.set(size - pool.get_idle_size())


def use_multiprocess_dir(path: str | None = None) -> str:
    """Switch this process (and the processes it spawns) to multiprocess metrics in `path`
    (a new temporary directory by default); call before making any Metrics."""
    path = path or tempfile.mkdtemp(prefix="runstream-metrics-")
    os.environ[MULTIPROC_ENV] = path
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return path


def forget_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """A loader process ended: drop its live gauges (its counters stay, as they must)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


class StreamStats(Collector):
    """Stream length, pending entries and consumer-group lag per shard, as of the last
    `refresh` (done by the /metrics handler just before it renders)."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._rows: list[tuple[str, int, int]] = []  # shard, length, pending
        self.up = 0

    async def refresh(self) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in self.keys.streams():
                    pipe.xlen(stream)
                    pipe.xinfo_groups(stream)
                replies = await pipe.execute(raise_on_error=False)
        except REDIS_ERRORS:
            self.up, self._rows = 0, []
            return
        rows = []
        for shard in range(self.keys.shards):
            length, groups = replies[2 * shard], replies[2 * shard + 1]
            if isinstance(length, Exception):
                self.up, self._rows = 0, []
                return
            group = _loader_group(groups)
            pending = int(group.get("pending", 0)) if group else 0
            rows.append((str(shard), int(length), pending))
        self.up, self._rows = 1, rows

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("runstream_redis_up", "1 if Redis answered the last scrape's stream queries")
        up.add_metric([], self.up)
        yield up
        length = GaugeMetricFamily(
            "runstream_stream_length", "Entries in the shard's stream, not yet loaded", labels=["shard"]
        )
        pending = GaugeMetricFamily(
            "runstream_stream_pending", "Entries a loader has read but not yet committed", labels=["shard"]
        )
        lag = GaugeMetricFamily(
            "runstream_stream_lag", "Entries no loader has read yet (consumer-group lag)", labels=["shard"]
        )
        for shard, n, p in self._rows:
            length.add_metric([shard], n)
            pending.add_metric([shard], p)
            # Loaders delete what they acknowledged, so what is left and not pending is unread.
            lag.add_metric([shard], max(n - p, 0))
        yield from (length, pending, lag)


def _loader_group(groups: object) -> dict[str, int | bytes | str] | None:
    if not isinstance(groups, Iterable):
        return None  # an error reply: the stream does not exist yet
    for g in groups:
        name = g.get("name")
        if name in (LOADER_GROUP, LOADER_GROUP.encode()):
            return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in g.items()}
    return None


def exposition(streams: StreamStats | None) -> bytes:
    """The text every /metrics answers: this process and its loaders, plus stream figures."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if streams is not None:
        registry.register(streams)
    return generate_latest(registry)


def add_metrics_route(app: web.Application, metrics: Metrics, pool: asyncpg.Pool, streams: StreamStats | None) -> None:
    """GET /metrics on `app`: the pool sampled and the streams read now, then everything rendered."""

    async def scrape(request: web.Request) -> web.Response:
        metrics.sample_pool(pool)
        if streams is not None:
            await streams.refresh()
        body = await asyncio.to_thread(exposition, streams)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", scrape)

"""Ingest benchmark: server capacity and the SDK path, on the machine's PostgreSQL and Redis.

    python benchmarks/ingest.py [--postgres-url URL] [--redis-url URL] [--points N] [--loaders N]
                                [--ingesters M] [--metrics-cost]

1. Server capacity: a load generator streams pre-encoded MetricBatches (10 keys per step) on
   1, 4 and 16 StreamMetrics streams; points/s from the first send until every point is
   committed in PostgreSQL, ack latency p50/p99, and the raw COPY rate of the same chunks
   into the same PostgreSQL (the ceiling), with the ratio.
2. SDK path: 4 processes calling `run.log_metrics` with 10 keys per step as fast as they can;
   points/s until committed, and the SDK's cost per point in the calling thread.

3. Scale-out: benchmarks/scale.py (M ingest x N load processes, one Redis and a Redis Cluster).
4. Cost of /metrics (--metrics-cost): the same load with and without every process's
   /metrics fetched once a second, interleaved; the ratio of committed points/s.
5. Cost of security (--security-cost): capacity and the SDK path plaintext without auth vs
   over TLS with a token (a CA made on the spot), interleaved; the ratio of committed points/s.

Each configuration uses a fresh database and Redis prefix; the server runs as
`runstream server` subprocess exactly as deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import grpc
import numpy as np
import redis

import runstream
from runstream.server.storage import chunks, metrics
from runstream.server.streams.keys import Keys
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

KEYS = [f"metric/{i}" for i in range(10)]
RUNS = 4


# ------------------------------------------------------------------ server and databases


class BenchServer:
    """A fresh database + Redis prefix and runstream servers on them: one `--role all` server
    with `loaders` loader processes, or (`ingesters` > 0) that many `--role ingest` servers
    and `loaders` `--role load` servers, each a process as deployed."""

    def __init__(
        self,
        admin_url: str,
        redis_url: str,
        loaders: int,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ingesters: int = 0,
    ) -> None:
        self.admin_url, self.redis_url = admin_url, redis_url
        self.db = f"rs_bench_{uuid.uuid4().hex[:8]}"
        self.prefix = f"rs-bench-{uuid.uuid4().hex[:8]}"
        asyncio.run(_execute(admin_url, f"CREATE DATABASE {self.db}"))
        self.db_url = admin_url.rsplit("/", 1)[0] + "/" + self.db
        self.procs: list[subprocess.Popen[str]] = []
        self.output: list[str] = []
        self.targets: list[str] = []
        self.http_ports: list[int] = []
        if ingesters == 0:
            self._start(["--loaders", str(loaders), *extra], env)
        else:
            for _ in range(ingesters):
                self._start(["--role", "ingest", *extra], env)
            for _ in range(loaders):
                self._start(["--role", "load", *extra], env, serves=False)
        self.target = self.targets[0]

    def _start(self, args: list[str], env: dict[str, str] | None, serves: bool = True) -> None:
        port, http_port = _free_port(), _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runstream.cli",
                "server",
                "--port",
                str(port),
                "--postgres-url",
                self.db_url,
                "--redis-url",
                self.redis_url,
                "--redis-prefix",
                self.prefix,
                "--http-port",
                str(http_port),
                "--log-level",
                "WARNING",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening on" in line:
                break
        else:
            raise RuntimeError("the server did not start")
        threading.Thread(target=lambda: self.output.extend(proc.stdout or []), daemon=True).start()
        self.procs.append(proc)
        self.http_ports.append(http_port)
        if serves:
            self.targets.append(f"{'grpcs://' if '--tls-cert' in args else ''}127.0.0.1:{port}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server processes and their children (the loaders) so far."""
        return proc_cpu_seconds([p.pid for p in self.procs], children=True)

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(120)
        for line in self.output:
            if "drained" in line:  # the loaders' own account: transactions and where the time went
                print("   ", line.strip().split(" INFO ", 1)[-1], file=sys.stderr)
        r = _sync_redis(self.redis_url)
        for key in [k for pattern in Keys(self.prefix).patterns() for k in r.scan_iter(pattern)]:
            r.delete(key)
        asyncio.run(_execute(self.admin_url, f"DROP DATABASE {self.db} WITH (FORCE)"))


def proc_cpu_seconds(pids: list[int], children: bool = False) -> float:
    """User + system CPU so far of the processes `pids` (and, with `children`, of their children)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    mine = set(pids)
    if children:
        mine |= {pid for pid, (ppid, _) in stats.items() if ppid in mine}
    return sum(stats[pid][1] for pid in mine if pid in stats) / tick


class Scraper:
    """Prometheus' part: GET every process's /metrics once a `interval` seconds."""

    def __init__(self, ports: list[int], interval: float = 1.0) -> None:
        self.ports, self.interval = ports, interval
        self.durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import urllib3

        while not self._stop.wait(self.interval):
            for port in self.ports:
                t0 = time.perf_counter()
                reply = urllib3.request("GET", f"http://127.0.0.1:{port}/metrics", timeout=10)
                assert reply.status == 200 and b"runstream_points_committed_total" in reply.data
                self.durations.append(time.perf_counter() - t0)


def _sync_redis(url: str) -> redis.Redis | redis.RedisCluster:
    """A blocking client of the Redis or the Redis Cluster (redis+cluster://, its first node) at `url`."""
    scheme, _, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        first = rest.rpartition("@")[2].split(",")[0].split("/")[0]
        host, _, port = first.rpartition(":")
        return redis.RedisCluster(host=host, port=int(port))
    return redis.Redis.from_url(url)


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_committed(db_url: str, run_ids: list[str], expected: int, timeout: float = 600) -> float:
    """Poll until the runs' summaries count `expected` points; returns when (monotonic)."""
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = await conn.fetchval(
                "SELECT coalesce(sum(count), 0)::int8 FROM metric_summaries WHERE run_id = ANY($1::uuid[])", run_ids
            )
            if n >= expected:
                return time.monotonic()
            await asyncio.sleep(0.02)
        raise TimeoutError(f"only {n:,} of {expected:,} points committed")
    finally:
        await conn.close()


# ------------------------------------------------------------------ 1. server capacity


def make_batches(run_id: str, writer: str, count: int, points: int) -> list[bytes]:
    """`count` serialized batches of `points` points (10 keys per step) with seq 1..count."""
    steps_per_batch = points // len(KEYS)
    key_index = np.tile(np.arange(len(KEYS), dtype=np.uint32), steps_per_batch)
    rng = np.random.default_rng(0)
    out = []
    for seq in range(1, count + 1):
        step = np.repeat(np.arange((seq - 1) * steps_per_batch, seq * steps_per_batch, dtype=np.int64), len(KEYS))
        stamp = 1_700_000_000_000 + step
        out.append(wire.encode(run_id, writer, seq, KEYS, key_index, step, stamp, rng.random(points)))
    return out


async def _stream(target: str, batches: list[bytes], window: int, latencies: list[float]) -> None:
    """Send batches on one StreamMetrics stream, at most `window` unacknowledged."""
    options = [("grpc.max_send_message_length", 8 << 20)]
    address = target.removeprefix("grpcs://")
    if address != target:  # TLS, verified with RUNSTREAM_TLS_CA as the SDK does
        ca = Path(os.environ["RUNSTREAM_TLS_CA"]).read_bytes()  # noqa: ASYNC240 once per stream, before the clock
        channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca), options=options)
    else:
        channel = grpc.aio.insecure_channel(address, options=options)
    token = os.environ.get("RUNSTREAM_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with channel:
        method = channel.stream_stream(
            "/runstream.v1.TrackingService/StreamMetrics",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        call = method(metadata=metadata)
        room = asyncio.Semaphore(window)
        sent: dict[int, float] = {}

        async def read() -> None:
            for _ in batches:
                ack = await call.read()
                if ack.code:
                    raise RuntimeError(f"batch {ack.seq} refused: {ack.message}")
                latencies.append(time.perf_counter() - sent.pop(ack.seq))
                room.release()

        reader = asyncio.create_task(read())
        for seq, data in enumerate(batches, 1):
            await room.acquire()
            sent[seq] = time.perf_counter()
            await call.write(data)
        await call.done_writing()
        await reader


def _generator(
    specs: list[tuple[str, tuple[str, str, int, int]]],
    window: int,
    start: threading.Barrier,
    results: multiprocessing.Queue,
) -> None:  # type: ignore[type-arg]
    """One load-generator process: its streams' batches are encoded before the clock starts."""
    work = [(target, make_batches(*spec)) for target, spec in specs]
    latencies: list[float] = []

    async def go() -> None:
        await asyncio.gather(*(_stream(target, w, window, latencies) for target, w in work))

    start.wait()
    asyncio.run(go())
    results.put(latencies)


async def capacity(
    server: BenchServer,
    streams: int,
    batch_points: int,
    total: int,
    window: int,
    generators: int,
    with_raw: bool = True,
) -> dict[str, float]:
    with runstream.Client(server.target) as client:
        run_ids = [client.create_run("bench", f"capacity-{streams}x{batch_points}").run_id for _ in range(RUNS)]
    per_stream = max(1, total // (streams * batch_points))
    specs = [(run_ids[i % RUNS], f"gen{i}", per_stream, batch_points) for i in range(streams)]
    routed = [(server.targets[i % len(server.targets)], spec) for i, spec in enumerate(specs)]
    expected = per_stream * batch_points * streams
    generators = min(generators, streams)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(generators + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_generator, args=(routed[g::generators], window, start, results)) for g in range(generators)
    ]
    for proc in procs:
        proc.start()
    await asyncio.to_thread(start.wait)
    started = time.monotonic()
    latencies = [x for _ in procs for x in await asyncio.to_thread(results.get)]
    acked = time.monotonic()
    for proc in procs:
        proc.join()
    committed = await _wait_committed(server.db_url, run_ids, expected)
    raw = await _raw_copy_rate(server.db_url, [b for spec in specs for b in make_batches(*spec)]) if with_raw else 0.0
    lat = np.array(latencies) * 1000
    return {
        "points": expected,
        "acked_pps": expected / (acked - started),
        "committed_pps": expected / (committed - started),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "raw_pps": raw,
    }


async def _raw_copy_rate(db_url: str, batches: list[bytes], per_transaction: int = 200) -> float:
    """COPY the chunks the loaders would write for these batches (packed as a loader packs a
    read of `per_transaction` entries) straight into metric_chunks of the same database;
    only the COPY and commit are timed."""
    conn = await asyncpg.connect(db_url)
    try:
        decoded = [wire.decode(b) for b in batches]
        ids = {k: i for i, k in enumerate(chunks.series_of(decoded), start=10_000_000)}
        groups = [
            chunks.pack(decoded[i : i + per_transaction], [0] * len(decoded[i : i + per_transaction]), ids.__getitem__)
            for i in range(0, len(decoded), per_transaction)
        ]
        points = sum(g.points for g in groups)
        started = time.perf_counter()
        for g in groups:
            async with conn.transaction():
                await metrics.copy_chunks(conn, g.chunk_records)
        elapsed = time.perf_counter() - started
        await conn.execute("DELETE FROM metric_chunks WHERE series_id >= 10000000")
        return points / elapsed
    finally:
        await conn.close()


# ------------------------------------------------------------------ 2. SDK path


def _sdk_rank(
    target: str, run_id: str, rank: int, steps: int, start: threading.Barrier, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    client = runstream.Client(target)
    run = client.attach(run_id, writer_id=f"rank{rank}")
    values = np.random.default_rng(rank).random((1000, len(KEYS))).tolist()
    rows = [dict(zip(KEYS, v, strict=True)) for v in values]
    start.wait()  # every rank is up: the clock starts with the first log call
    started, cpu_started = time.perf_counter(), time.thread_time()
    for step in range(steps):
        run.log_metrics(rows[step % 1000], step=step)
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    run.end(timeout=300)
    results.put((wall, cpu))
    client.close()


def _sdk(server: BenchServer, processes: int, steps: int) -> dict[str, float]:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("bench", "sdk").run_id
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_sdk_rank, args=(server.target, run_id, r, steps, start, results)) for r in range(processes)
    ]
    for p in procs:
        p.start()
    start.wait()
    started = time.monotonic()
    outcome = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    expected = processes * steps * len(KEYS)
    committed = asyncio.run(_wait_committed(server.db_url, [run_id], expected))
    return {
        "points": expected,
        "committed_pps": expected / (committed - started),
        "caller_cpu_us": sum(o[1] for o in outcome) / expected * 1e6,
        "caller_wall_us": sum(o[0] for o in outcome) / expected * 1e6,
    }


# ------------------------------------------------------------------ main


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


def service_arguments(p: argparse.ArgumentParser) -> None:
    """--postgres-url and --redis-url: the machine's services unless told otherwise."""
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("RUNSTREAM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    p.add_argument("--redis-url", default=os.environ.get("RUNSTREAM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


def _run_capacity(args: argparse.Namespace, ingesters: int, loaders: int, scraped: bool = False) -> dict[str, float]:
    server = BenchServer(args.postgres_url, args.redis_url, loaders, ingesters=ingesters)
    try:
        scraper = Scraper(server.http_ports) if scraped else None
        cpu_before = server.cpu_seconds()
        if scraper is not None:
            scraper.__enter__()
        try:
            r = asyncio.run(
                capacity(
                    server, args.scale_streams, args.scale_batch_points, args.points, args.window, 2, with_raw=False
                )
            )
        finally:
            if scraper is not None:
                scraper.__exit__()
        r["server_cpu_us"] = (server.cpu_seconds() - cpu_before) / r["points"] * 1e6
        if scraper is not None:
            r["scrapes"] = len(scraper.durations)
            r["scrape_ms"] = float(np.mean(scraper.durations)) * 1000 if scraper.durations else float("nan")
        return r
    finally:
        server.close()


def _metrics_cost(args: argparse.Namespace) -> None:
    """The same load with and without /metrics scraped every second, interleaved run by run."""
    plain, scraped, scrape_ms = [], [], []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeat):
        for with_scraper in (False, True) if i % 2 == 0 else (True, False):
            r = _run_capacity(args, 0, args.loaders, scraped=with_scraper)
            (scraped if with_scraper else plain).append(r["committed_pps"])
            cpu[with_scraper].append(r["server_cpu_us"])
            if with_scraper:
                scrape_ms.append(r["scrape_ms"])
            print(f"  scraped={with_scraper}: {r['committed_pps']:,.0f} points/s", file=sys.stderr)
    a, b = float(np.median(plain)), float(np.median(scraped))
    print(
        f"\nCost of /metrics (role all, {args.loaders} loader process(es), scraped every 1 s; "
        f"median of {args.repeat} interleaved runs each)\n"
    )
    print(
        table(
            ["/metrics", "committed pts/s (median)", "runs", "server CPU µs/point (median)", "mean scrape ms"],
            [
                [
                    "not scraped",
                    f"{a:,.0f}",
                    " ".join(f"{x / 1e6:.2f}M" for x in plain),
                    f"{np.median(cpu[False]):.3f}",
                    "-",
                ],
                [
                    "scraped 1/s",
                    f"{b:,.0f}",
                    " ".join(f"{x / 1e6:.2f}M" for x in scraped),
                    f"{np.median(cpu[True]):.3f}",
                    f"{np.mean(scrape_ms):.1f}",
                ],
            ],
        )
    )
    print(
        f"\nscraped / not scraped: {b / a:.1%} of the points/s (target: within 3 %), "
        f"{np.median(cpu[True]) / np.median(cpu[False]):.1%} of the server CPU per point"
    )


def _security_cost(args: argparse.Namespace) -> None:
    """The same load (server capacity and the SDK path) plaintext without auth, and over TLS
    with a token on every stream, interleaved run by run."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pki import make_pki

    folder = Path(tempfile.mkdtemp(prefix="rs-bench-pki-"))
    pki = make_pki(folder)
    secured = (
        "--auth",
        "--data-dir",
        str(folder),
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    )
    capacity: dict[bool, list[float]] = {False: [], True: []}
    sdk: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeat):
        for secure in (False, True) if i % 2 == 0 else (True, False):
            server = BenchServer(args.postgres_url, args.redis_url, args.loaders, extra=secured if secure else ())
            saved = {k: os.environ.get(k) for k in ("RUNSTREAM_TOKEN", "RUNSTREAM_TLS_CA")}
            if secure:  # the generators and SDK processes inherit these
                os.environ["RUNSTREAM_TOKEN"] = (folder / "admin-token").read_text().strip()
                os.environ["RUNSTREAM_TLS_CA"] = str(pki.ca)
            try:
                r = asyncio.run(
                    capacity(
                        server, args.scale_streams, args.scale_batch_points, args.points, args.window, 2, with_raw=False
                    )
                )
                capacity[secure].append(r["committed_pps"])
                sdk[secure].append(_sdk(server, args.sdk_processes, args.sdk_steps)["committed_pps"])
            finally:
                server.close()
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            print(
                f"  {'TLS + token' if secure else 'plaintext'}: capacity {capacity[secure][-1]:,.0f}, "
                f"SDK {sdk[secure][-1]:,.0f} points/s",
                file=sys.stderr,
                flush=True,
            )
    rows = [
        [
            "plaintext, no auth" if not secure else "TLS + token",
            f"{np.median(capacity[secure]):,.0f}",
            f"{np.median(sdk[secure]):,.0f}",
        ]
        for secure in (False, True)
    ]
    rows.append(
        [
            "secured / plain",
            f"{np.median(capacity[True]) / np.median(capacity[False]):.1%}",
            f"{np.median(sdk[True]) / np.median(sdk[False]):.1%}",
        ]
    )
    print(
        f"\nCost of TLS and tokens (median of {args.repeat}; capacity: {args.scale_streams} streams of "
        f"{args.scale_batch_points:,}-point batches; SDK: {args.sdk_processes} processes x {args.sdk_steps:,} steps "
        f"of {len(KEYS)} keys; goal: within 5 %)\n"
    )
    print(table(["mode", "capacity committed pts/s", "SDK committed pts/s"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--points", type=int, default=4_000_000, help="points per capacity configuration")
    p.add_argument("--streams", default="1,4,16")
    p.add_argument("--batch-points", default="1000,10000")
    p.add_argument("--window", type=int, default=8, help="unacknowledged batches per stream")
    p.add_argument("--loaders", type=int, default=1)
    p.add_argument("--generators", type=int, default=1, help="load-generator processes")
    p.add_argument("--sdk-processes", type=int, default=4)
    p.add_argument("--sdk-steps", type=int, default=250_000, help="log_metrics calls per SDK process")
    p.add_argument("--skip-sdk", action="store_true")
    p.add_argument("--skip-capacity", action="store_true")
    p.add_argument("--ingesters", type=int, default=0, help="capacity on N --role ingest + --loaders --role load")
    p.add_argument("--metrics-cost", action="store_true", help="committed points/s with and without scraping")
    p.add_argument("--scale-streams", type=int, default=8, help="streams of the metrics-cost and security-cost runs")
    p.add_argument("--scale-batch-points", type=int, default=1000, help="batch size of those runs")
    p.add_argument("--repeat", type=int, default=3, help="runs per metrics-cost or security-cost configuration")
    p.add_argument("--security-cost", action="store_true", help="points/s plaintext vs TLS with tokens")
    args = p.parse_args()
    if args.security_cost:
        _security_cost(args)
        return
    if args.metrics_cost:
        _metrics_cost(args)

    rows = []
    for batch_points in [] if args.skip_capacity else [int(x) for x in args.batch_points.split(",")]:
        for streams in [int(x) for x in args.streams.split(",")]:
            server = BenchServer(args.postgres_url, args.redis_url, args.loaders, ingesters=args.ingesters)
            try:
                r = asyncio.run(capacity(server, streams, batch_points, args.points, args.window, args.generators))
            finally:
                server.close()
            rows.append(
                [
                    f"{batch_points:,}",
                    str(streams),
                    f"{r['points']:,.0f}",
                    f"{r['acked_pps']:,.0f}",
                    f"{r['committed_pps']:,.0f}",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    f"{r['raw_pps']:,.0f}",
                    f"{r['committed_pps'] / r['raw_pps']:.0%}",
                ]
            )
            print(
                f"  batch {batch_points:,} x {streams} streams: {r['committed_pps']:,.0f} points/s committed",
                file=sys.stderr,
                flush=True,
            )
    if rows:
        print(
            f"\nServer capacity ({args.loaders} loader process(es), {args.generators} load-generator processes, "
            f"window {args.window} batches per stream)\n"
        )
        print(
            table(
                [
                    "batch points",
                    "streams",
                    "points",
                    "acked pts/s",
                    "committed pts/s",
                    "ack p50 ms",
                    "ack p99 ms",
                    "raw COPY pts/s",
                    "of raw",
                ],
                rows,
            )
        )

    if not args.skip_sdk:
        server = BenchServer(args.postgres_url, args.redis_url, args.loaders)
        try:
            r = _sdk(server, args.sdk_processes, args.sdk_steps)
        finally:
            server.close()
        print(f"\nSDK path ({args.sdk_processes} processes, log_metrics with {len(KEYS)} keys per call)\n")
        print(
            table(
                ["processes", "points", "committed pts/s (end to end)", "caller CPU µs/point", "caller wall µs/point"],
                [
                    [
                        str(args.sdk_processes),
                        f"{r['points']:,.0f}",
                        f"{r['committed_pps']:,.0f}",
                        f"{r['caller_cpu_us']:.3f}",
                        f"{r['caller_wall_us']:.3f}",
                    ]
                ],
            )
        )
        print(
            "\nCPU: time.thread_time() of the calling thread inside log_metrics loops; wall: the same loops'\n"
            "elapsed time, which on 2 cores includes waiting for CPU behind the other processes."
        )


if __name__ == "__main__":
    main()

"""Storage benchmark (issue: compressed compacted chunks, sketches): what a point costs on disk,
how fast the compactor works, how fast a long history reads, and what the compactor costs ingest.

    python benchmarks/storage.py [--postgres-url URL] [--redis-url URL] [--points N] [--history-points N]
                                 [--windows N] [--repeat N] [--mlflow-points N] [--skip-mlflow] [--work DIR]

1. Bytes per point on disk (metric_chunks with its TOAST and indexes, after VACUUM FULL) for
   10 keys x 4 writers x --points steps, logged through a `runstream server` (role all) as
   ingest chunks, then compacted once the run ended: loss-like curves computed in float32, and
   float64 noise. The same points in MLflow 3.17's own schema (`mlflow server` made it, in its
   own venv under --work, on the same PostgreSQL; its `metrics` rows COPYed as log-batch
   writes them), for comparison.
2. Compaction throughput: points per CPU second of the server's processes from the start of a
   `--role compact` process until every chunk is compacted (the compactor does all the work
   then; PostgreSQL's own CPU is not counted), and of the merge + encode alone.
3. GetMetricHistory of one key, 4 writers x --history-points steps, into 1,000 buckets: the
   whole range and --windows random windows, as ingest chunks and compacted.
4. Ingest committed points/s with a compactor at work (--compact-delay 0) and without one
   (--compactors 0), interleaved --repeat times (benchmarks/ingest.py's server capacity load).

5. The cold tier: bytes per point left in PostgreSQL (metric_chunks with its TOAST and indexes,
   after VACUUM FULL) once the loss-like run of 1. moved to the object store, and the history
   reads of 3. once that run moved to S3 (moto's server on loopback, started here).
Prints a table; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import numpy as np

import runstream
from runstream.server.storage import chunks, codec
from runstream.wire import batch as wire

sys.path.insert(0, str(Path(__file__).resolve().parent))

from footprint import Env, make_venv, progress, start_mlflow_server, stop
from ingest import BenchServer, _capacity, _execute, _free_port, _stream, _wait_committed, service_arguments, table
from mlflow_compat import MLFLOW_SERVER

KEYS = [f"train/metric_{i}" for i in range(10)]
WRITERS = 4
LOSS = "loss-like float32"
STEPS_PER_BATCH = 5_000
S3_KEYS = {**os.environ, "AWS_ACCESS_KEY_ID": "runstream-bench", "AWS_SECRET_ACCESS_KEY": "runstream-bench-secret"}


def values_for(kind: str, steps: np.ndarray, key: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "float64 noise":
        return rng.standard_normal(len(steps))
    curve = (1.0 + key) * np.exp(-steps / 200_000) + 0.05 * rng.standard_normal(len(steps))
    return curve.astype(np.float32).astype(np.float64)  # loss-like: a float32 training value


def batches(run_id: str, writer: int, steps_per_key: int, kind: str, keys: list[str]) -> list[bytes]:
    rng = np.random.default_rng(writer)
    out = []
    for seq, first in enumerate(range(0, steps_per_key, STEPS_PER_BATCH), 1):
        steps = np.arange(first, min(first + STEPS_PER_BATCH, steps_per_key), dtype=np.int64)
        columns = [values_for(kind, steps, k, rng) for k in range(len(keys))]
        value = np.stack(columns, axis=1).ravel()  # step-major: every key of a step together
        step = np.repeat(steps, len(keys))
        key_index = np.tile(np.arange(len(keys), dtype=np.uint32), len(steps))
        stamp = 1_764_000_000_000 + step * 200 + rng.integers(0, 5, len(step))
        out.append(wire.encode(run_id, f"rank{writer}", seq, keys, key_index, step, stamp, value))
    return out


def seed(server: BenchServer, steps_per_key: int, kind: str, keys: list[str]) -> str:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("storage-bench", kind).run_id
    for w in range(WRITERS):
        asyncio.run(_stream(server.target, batches(run_id, w, steps_per_key, kind, keys), 8, []))
    asyncio.run(_wait_committed(server.db_url, [run_id], steps_per_key * len(keys) * WRITERS, timeout=1800))
    return run_id


async def _fetchval(db_url: str, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


def disk_bytes(db_url: str, table_name: str = "metric_chunks") -> int:
    async def go() -> int:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(f"VACUUM FULL {table_name}")
            return int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table_name))
        finally:
            await conn.close()

    return asyncio.run(go())


def end_and_compact(server: BenchServer, run_id: str) -> tuple[float, float]:
    """End the run, start a compactor (`--role compact`, the server has none) and wait until
    every chunk is compacted: (wall seconds, CPU seconds of the server's processes)."""
    with runstream.Client(server.target) as client:
        client.update_run(run_id, status="FINISHED")
    cpu, t0 = server.cpu_seconds(), time.monotonic()
    server._start(["--role", "compact", "--compact-delay", "0"], None, serves=False)
    while asyncio.run(_fetchval(server.db_url, "SELECT count(*) FROM metric_chunks WHERE codec = 0")):
        time.sleep(0.05)
    return time.monotonic() - t0, server.cpu_seconds() - cpu


def move_cold(server: BenchServer, store: tuple[str, ...], env: dict[str, str] | None) -> float:
    """Start a compactor that moves ended runs to the cold tier (`--cold-after 1`) and wait
    until no chunk holds points in PostgreSQL; returns the wall seconds."""
    t0 = time.monotonic()
    server._start(["--role", "compact", "--compact-delay", "0", "--cold-after", "1", *store], env, serves=False)
    while asyncio.run(_fetchval(server.db_url, "SELECT count(*) FROM metric_chunks WHERE cold_object IS NULL")):
        time.sleep(0.1)
    return time.monotonic() - t0


def start_moto(port: int) -> subprocess.Popen[bytes]:
    import boto3

    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    for _ in range(150):
        try:
            client.create_bucket(Bucket="bench")
            return proc
        except Exception:  # not up yet
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start")


def storage_rows(args: argparse.Namespace, kind: str, results: dict[str, str]) -> None:
    store = ("--artifacts", (args.work / f"artifacts-{uuid.uuid4().hex[:8]}").as_uri())
    server = BenchServer(args.postgres_url, args.redis_url, 1, extra=("--compactors", "0", "--cold-after", "0", *store))
    try:
        progress(f"{kind}: logging {len(KEYS)} keys x {WRITERS} writers x {args.points:,} steps")
        run_id = seed(server, args.points, kind, KEYS)
        points = args.points * len(KEYS) * WRITERS
        results[f"ingest chunks, {kind}"] = f"{disk_bytes(server.db_url) / points:.2f}"
        progress(f"{kind}: compacting")
        wall, cpu = end_and_compact(server, run_id)
        results[f"compacted, {kind}"] = f"{disk_bytes(server.db_url) / points:.2f}"
        results[f"compaction, {kind}"] = f"{points / cpu / 1e6:.1f} M/s per core ({points / wall / 1e6:.1f} M/s wall)"
        if kind == LOSS:
            progress(f"{kind}: moving the run to the cold tier (local store)")
            move_cold(server, store, None)
            results["cold, bytes left"] = f"{disk_bytes(server.db_url) / points:.3f}"
    finally:
        server.close()


def codec_throughput(points: int) -> str:
    """The compactor's CPU work alone: decode ingest chunks, merge, encode with sketches."""
    rng = np.random.default_rng(0)
    steps = np.arange(points, dtype=np.int64)
    stamps = 1_764_000_000_000 + steps * 200
    values = values_for("loss-like float32", steps, 0, rng)
    raw = [
        (steps[a : a + 1000].tobytes(), stamps[a : a + 1000].tobytes(), values[a : a + 1000].tobytes())
        for a in range(0, points, 1000)
    ]
    t0 = time.process_time()
    parts = [codec.decode(codec.RAW, *r) for r in raw]
    chunks.compacted(1, parts)
    return f"{points / (time.process_time() - t0) / 1e6:.1f} M/s per core"


def mlflow_bytes(args: argparse.Namespace) -> str:
    """MLflow's metrics table (its schema, made by its server) holding the same loss-like points."""
    env = Env("mlflow-server", MLFLOW_SERVER, "mlflow")
    env.path = args.work / "mlflow-server"
    if not (env.path / "bin" / "mlflow").exists() and not make_venv(env, args.work):
        return "no MLflow here: " + "; ".join(env.notes)
    db = f"rs_bench_mlflow_{uuid.uuid4().hex[:8]}"
    admin = args.postgres_url
    asyncio.run(_execute(admin, f"CREATE DATABASE {db}"))
    url = admin.rsplit("/", 1)[0] + "/" + db
    proc, port = start_mlflow_server(env, url.replace("postgresql://", "postgresql+psycopg2://"))
    try:
        from mlflow import MlflowClient

        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.create_experiment(f"storage-{uuid.uuid4().hex[:6]}")
        runs = [client.create_run(exp).info.run_id for _ in range(WRITERS)]
        steps_per_key = args.mlflow_points // (len(KEYS) * WRITERS)
        rng = np.random.default_rng(0)

        async def load() -> None:
            conn = await asyncpg.connect(url)
            try:
                for run in runs:
                    for k, key in enumerate(KEYS):
                        steps = np.arange(steps_per_key)
                        vals = values_for("loss-like float32", steps, k, rng)
                        stamps = 1_764_000_000_000 + steps * 200
                        records = [
                            (key, float(v), int(t), run, int(s), False)
                            for s, v, t in zip(steps.tolist(), vals.tolist(), stamps.tolist(), strict=True)
                        ]
                        await conn.copy_records_to_table(
                            "metrics",
                            records=records,
                            columns=["key", "value", "timestamp", "run_uuid", "step", "is_nan"],
                        )
            finally:
                await conn.close()

        asyncio.run(load())
        return f"{disk_bytes(url, 'metrics') / (steps_per_key * len(KEYS) * WRITERS):.0f}"
    finally:
        stop(proc)
        asyncio.run(_execute(admin, f"DROP DATABASE {db} WITH (FORCE)"))


def history_rows(args: argparse.Namespace, results: dict[str, str]) -> None:
    moto_port = _free_port()
    moto = start_moto(moto_port)
    store = ("--artifacts", "s3://bench/cold", "--s3-endpoint-url", f"http://127.0.0.1:{moto_port}")
    extra = ("--compactors", "0", "--cold-after", "0", *store)
    server = BenchServer(args.postgres_url, args.redis_url, 1, extra=extra, env=S3_KEYS)
    try:
        progress(f"history: logging 1 key x {WRITERS} writers x {args.history_points:,} steps")
        run_id = seed(server, args.history_points, "loss-like float32", ["loss"])
        rng = np.random.default_rng(1)
        windows = [(None, None)]
        for _ in range(args.windows):
            size = int(10 ** rng.uniform(np.log10(2_000), np.log10(args.history_points)))
            lo = int(rng.integers(0, args.history_points - size + 1))
            windows.append((lo, lo + size - 1))
        for label in ("ingest chunks", "compacted", "cold on S3 (moto)"):
            if label == "compacted":
                end_and_compact(server, run_id)
            if label.startswith("cold"):
                progress("history: moving the run to the cold tier on S3 (moto)")
                move_cold(server, store, S3_KEYS)
            asyncio.run(_execute(server.db_url, "VACUUM ANALYZE metric_chunks"))  # as autovacuum leaves it
            with runstream.QueryClient(server.target) as q:
                q.get_metric_history(run_id, "loss", max_points=1000)  # warm: connections, plans
                whole, window_ms = [], []
                for i, (lo, hi) in enumerate(windows):
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        h = q.get_metric_history(run_id, "loss", max_points=1000, min_step=lo, max_step=hi)
                        (whole if i == 0 else window_ms).append((time.perf_counter() - t0) * 1000)
                        assert h.downsampled and len(h.buckets["count"]) <= 1000
                    last = (whole if i == 0 else window_ms)[-args.repeat :]
                    progress(f"  {label} [{lo}, {hi}]: {statistics.median(last):.1f} ms")
            results[f"history, whole range, {label}"] = f"{statistics.median(whole):.1f} ms (median)"
            results[f"history, windows, {label}"] = (
                f"{statistics.median(window_ms):.1f} ms median, {max(window_ms):.1f} ms max"
            )
    finally:
        server.close()
        moto.kill()


INGEST_SETUPS = {  # label -> the server's flags
    "compactor off": ("--compactors", "0"),
    "compactor on (default --compact-delay 60)": (),
    "compactor at work (--compact-delay 0)": ("--compact-delay", "0"),
}


def ingest_rows(args: argparse.Namespace, results: dict[str, str]) -> None:
    rates: dict[str, list[float]] = {label: [] for label in INGEST_SETUPS}
    for i in range(args.repeat):
        for label in list(INGEST_SETUPS)[:: 1 if i % 2 == 0 else -1]:  # interleaved, both directions
            server = BenchServer(args.postgres_url, args.redis_url, 1, extra=INGEST_SETUPS[label])
            try:
                r = asyncio.run(_capacity(server, 4, 10_000, args.ingest_points, 8, 2, with_raw=False))
            finally:
                server.close()
            rates[label].append(r["committed_pps"])
            progress(f"ingest, {label}: {r['committed_pps']:,.0f} points/s")
    off = statistics.median(rates["compactor off"])
    for label, got in rates.items():
        runs = " ".join(f"{x / 1e6:.2f}M" for x in got)
        results[f"ingest, {label}"] = (
            f"{statistics.median(got):,.0f} pts/s ({runs}), {statistics.median(got) / off:.1%}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--points", type=int, default=250_000, help="steps per key and writer for the bytes per point")
    p.add_argument("--history-points", type=int, default=1_000_000, help="steps per writer of the history")
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--ingest-points", type=int, default=40_000_000, help="points per ingest run")
    p.add_argument("--mlflow-points", type=int, default=1_000_000)
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/runstream-bench"))
    p.add_argument("--only", choices=("bytes", "history", "ingest"), help="one part of the table (others say skipped)")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, str] = collections.defaultdict(lambda: "skipped (--only)")
    if args.only in (None, "bytes"):
        for kind in ("loss-like float32", "float64 noise"):
            storage_rows(args, kind, results)
        results["compaction, merge + encode alone"] = codec_throughput(2_000_000)
        results["mlflow"] = "skipped (--skip-mlflow)" if args.skip_mlflow else mlflow_bytes(args)
    if args.only in (None, "history"):
        history_rows(args, results)
    if args.only in (None, "ingest"):
        ingest_rows(args, results)
    n = f"10 keys x {WRITERS} writers x {args.points:,} steps"
    h = f"{args.history_points / 1e6:g} M points x {WRITERS} writers -> 1,000 buckets"
    rows = [
        [f"bytes/point on disk, loss-like float32, ingest chunks ({n})", "-", results[f"ingest chunks, {LOSS}"]],
        ["bytes/point on disk, loss-like float32, compacted", "<= 4", results["compacted, loss-like float32"]],
        ["bytes/point on disk, float64 noise, ingest chunks", "-", results["ingest chunks, float64 noise"]],
        ["bytes/point on disk, float64 noise, compacted", "<= 8.5", results["compacted, float64 noise"]],
        [f"bytes/point, MLflow 3.17's schema ({args.mlflow_points:,} points)", "report", results["mlflow"]],
        ["bytes/point left in PostgreSQL for a cold run (loss-like)", "<= 0.2", results["cold, bytes left"]],
        ["compaction, server processes' CPU (loss-like)", ">= 5 M/s/core", results[f"compaction, {LOSS}"]],
        ["compaction, server processes' CPU (float64 noise)", ">= 5 M/s/core", results["compaction, float64 noise"]],
        ["compaction, merge + encode alone", ">= 5 M/s per core", results["compaction, merge + encode alone"]],
        [f"history {h}, whole range, ingest chunks", "-", results["history, whole range, ingest chunks"]],
        [f"history, {args.windows} random windows, ingest chunks", "-", results["history, windows, ingest chunks"]],
        ["history, whole range, compacted", "<= 10 ms", results["history, whole range, compacted"]],
        [f"history, {args.windows} random windows, compacted", "<= 10 ms", results["history, windows, compacted"]],
        ["history, whole range, cold on S3 (moto)", "<= 100 ms", results["history, whole range, cold on S3 (moto)"]],
        [
            f"history, {args.windows} random windows, cold on S3",
            "<= 100 ms",
            results["history, windows, cold on S3 (moto)"],
        ],
        *(
            [f"ingest committed, {label}", "-" if i == 0 else ">= 95 %", results[f"ingest, {label}"]]
            for i, label in enumerate(INGEST_SETUPS)
        ),
    ]
    print(f"\nStorage ({time.strftime('%Y-%m-%d')}; median of {args.repeat} where repeated)\n")
    print(table(["figure", "goal", "measured"], rows))


if __name__ == "__main__":
    main()

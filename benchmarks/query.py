"""Query benchmark: metric histories of a 1,000,000-point series on the machine's PostgreSQL.

    python benchmarks/query.py [--postgres-url URL] [--redis-url URL] [--points N] [--calls N]

Loads one run with one key (one writer, or several) through a real server, then times
GetMetricHistory over gRPC: downsampled to 1,000 buckets (whole range and zoomed in), and
whole windows of 200,000 points (points/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import BenchServer, service_arguments, table

import runstream
from runstream.client.query import QueryClient
from runstream.server.storage import history, metrics, runs, search
from runstream.wire import batch as wire


def load(server: BenchServer, points: int, writers: int) -> str:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("bench", "history").run_id
        call = client.channel.unary_unary(
            "/runstream.v1.TrackingService/LogMetrics", request_serializer=None, response_deserializer=None
        )
        per_writer = points // writers
        rng = np.random.default_rng(0)
        for w in range(writers):
            for seq, lo in enumerate(range(0, per_writer, 10_000), start=1):
                n = min(10_000, per_writer - lo)
                steps = np.arange(lo, lo + n)
                call(
                    wire.encode(run_id, f"rank{w}", seq, ["loss"], np.zeros(n), steps, None, rng.random(n)), timeout=60
                )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            count = sum(m.count for m in client.get_run(run_id).metrics)
            if count >= per_writer * writers:
                return run_id
            time.sleep(0.2)
    raise TimeoutError("points were not committed")


async def _seed_runs(db_url: str, experiment_id: int, runs: int) -> None:
    """`runs` finished runs with params and metric summaries, written straight into the
    tables the server keeps (the bulk insert is set-up, not what is measured)."""
    import uuid

    import asyncpg

    rng = np.random.default_rng(1)
    ids = [uuid.uuid4() for _ in range(runs)]
    conn = await asyncpg.connect(db_url)
    try:
        now = int(time.time() * 1000)
        await conn.copy_records_to_table(
            "runs",
            columns=["run_id", "experiment_id", "name", "status", "start_time_ms", "end_time_ms"],
            records=[(i, experiment_id, f"run-{n}", 2, now - n, now) for n, i in enumerate(ids)],
        )
        await conn.copy_records_to_table(
            "params",
            columns=["run_id", "key", "value"],
            records=[(i, k, str(v)) for i in ids for k, v in (("lr", rng.choice([0.1, 0.01, 0.001])), ("layers", 3))],
        )
        await conn.copy_records_to_table(
            "metric_summaries",
            columns=[
                "run_id",
                "key",
                "last_value",
                "last_step",
                "last_timestamp_ms",
                "min_value",
                "max_value",
                "count",
            ],
            records=[
                (i, k, float(v), 999, now, 0.0, 1.0, 1000)
                for i in ids
                for k, v in (("acc", rng.random()), ("loss", rng.random()))
            ],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def search_benchmark(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    server = BenchServer(args.postgres_url, args.redis_url, loaders=1)
    rows = []
    try:
        with runstream.Client(server.target) as client:
            experiment = client.create_experiment("search-bench").experiment_id
        print(f"  seeding {args.runs:,} runs", file=sys.stderr, flush=True)
        asyncio.run(_seed_runs(server.db_url, int(experiment), args.runs))
        with QueryClient(server.target) as q:
            cases = [
                ("metric filter, metric order", "metrics.acc > 0.5", ["metrics.acc DESC"]),
                (
                    "metric + param filter, metric order",
                    "metrics.acc > 0.5 and params.lr = '0.01'",
                    ["metrics.loss ASC"],
                ),
                ("no filter, start_time order", "", ["attributes.start_time DESC"]),
            ]
            for name, filter, order in cases:
                call = partial(q.search_runs, [experiment], filter, order, max_results=100)
                p50, p95 = timed(call, args.calls)
                rows.append([f"{args.runs:,}", name, str(len(call().runs)), f"{p50:.1f}", f"{p95:.1f}"])
        sql = search.Sql(offset=4)
        where, order = search.where("metrics.acc > 0.5", sql), search.order_by(["metrics.acc DESC"], sql)
        explain = asyncio.run(
            _explain(
                server.db_url,
                f"search {args.runs:,} runs, metric filter + order",
                runs.search_runs_sql(where, order),
                [int(experiment)],
                False,
                101,
                0,
                *sql.args,
            )
        )
    finally:
        server.close()
    return rows, [explain]


def compare_benchmark(args: argparse.Namespace) -> list[list[str]]:
    """10 runs x 3 keys x 100,000 points, compared with 500 buckets per series."""
    server = BenchServer(args.postgres_url, args.redis_url, loaders=1)
    rows = []
    try:
        with runstream.Client(server.target) as client:
            call = client.channel.unary_unary(
                "/runstream.v1.TrackingService/LogMetrics", request_serializer=None, response_deserializer=None
            )
            keys = ["loss", "acc", "lr"]
            run_ids = [client.create_run("compare-bench", f"run{i}").run_id for i in range(10)]
            print("  loading 10 runs x 3 keys x 100,000 points", file=sys.stderr, flush=True)
            rng = np.random.default_rng(2)
            for run_id in run_ids:
                client.log_params(run_id, {"lr": rng.choice([0.1, 0.01]), "layers": 3})
                for seq, lo in enumerate(range(0, 100_000, 3_000), start=1):
                    n = min(3_000, 100_000 - lo)
                    steps = np.repeat(np.arange(lo, lo + n), 3)
                    call(
                        wire.encode(run_id, "rank0", seq, keys, np.tile([0, 1, 2], n), steps, None, rng.random(3 * n)),
                        timeout=60,
                    )
            deadline = time.monotonic() + 300
            while sum(m.count for r in run_ids for m in client.get_run(r).metrics) < 3_000_000:
                if time.monotonic() > deadline:
                    raise TimeoutError("points were not committed")
                time.sleep(0.2)
        with QueryClient(server.target) as q:
            compare = partial(q.compare_runs, run_ids, keys, max_points=500)
            p50, p95 = timed(compare, args.calls)
            rows.append(["10 x 3 x 100,000", "500 buckets per series", f"{p50:.1f}", f"{p95:.1f}"])
    finally:
        server.close()
    return rows


def read_all(q: QueryClient, run_id: str) -> int:
    return sum(len(part) for part in q.read_metrics(run_id, "loss"))


async def _explain(db_url: str, name: str, sql: str, *args: object) -> list[str]:
    """One table row: planning and execution time, and the plan's nodes, outermost first."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        await conn.fetch(sql, *args)  # warm the cache, as the timed calls do
        plan = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    finally:
        await conn.close()
    doc = json.loads(plan)[0]
    nodes = []

    def walk(node: dict, depth: int) -> None:  # type: ignore[type-arg]
        label = node["Node Type"] + (f" on {node['Relation Name']}" if "Relation Name" in node else "")
        if "Index Name" in node:
            label += f" using {node['Index Name']}"
        nodes.append(("  " * depth) + label)
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(doc["Plan"], 0)
    return [
        name,
        f"{doc['Planning Time']:.2f}",
        f"{doc['Execution Time']:.2f}",
        " > ".join(n.strip() for n in nodes[:5]),
    ]


async def _explain_history(db_url: str, run_id: str) -> list[list[str]]:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        ids = [r[0] for r in await conn.fetch("SELECT series_id FROM metric_series WHERE run_id = $1", run_id)]
        lo, hi = await conn.fetchrow(
            "SELECT min(first_step), max(last_step) FROM metric_chunks WHERE series_id = ANY($1::int8[])", ids
        )
    finally:
        await conn.close()
    width = history.bucket_width(lo, hi, 1000)
    return [
        await _explain(db_url, "history chunks, 1,000 buckets", metrics.HISTORY_CHUNKS_SQL, ids, lo, hi, width, False),
        await _explain(
            db_url,
            "series read (ReadMetrics)",
            "SELECT first_step, last_step, steps, timestamps, vals FROM metric_chunks "
            "WHERE series_id = $1 AND last_step >= $2 AND first_step <= $3 ORDER BY first_step",
            ids[0],
            lo,
            hi,
        ),
    ]


def timed(fn, calls: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()  # warm up (connection, plans, caches)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50)) * 1000, float(np.percentile(times, 95)) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--runs", type=int, default=10_000, help="runs for the SearchRuns benchmark")
    args = p.parse_args()

    rows = []
    for writers in (1, 4):
        server = BenchServer(args.postgres_url, args.redis_url, loaders=1)
        try:
            print(f"  loading {args.points:,} points from {writers} writer(s)", file=sys.stderr, flush=True)
            run_id = load(server, args.points, writers)
            steps = args.points // writers
            with QueryClient(server.target) as q:
                history = partial(q.get_metric_history, run_id, "loss")
                window = (steps // 2, steps // 2 + steps // 10)
                cases = [
                    ("downsample whole range to 1,000", partial(history, max_points=1000)),
                    ("stream every point (ReadMetrics)", partial(read_all, q, run_id)),
                    ("downsample 10% window to 1,000", partial(history, min_step=window[0], max_step=window[1])),
                    (
                        "whole 200,000-point window",
                        partial(history, min_step=0, max_step=200_000 // writers - 1, max_points=200_000),
                    ),
                ]
                for name, fn in cases:
                    p50, p95 = timed(fn, args.calls)
                    got = fn()
                    n = got if isinstance(got, int) else got.total_points
                    rate = f"{n / (p50 / 1000):,.0f}" if isinstance(got, int) or not got.downsampled else ""
                    rows.append([f"{args.points:,}", str(writers), name, f"{p50:.1f}", f"{p95:.1f}", rate])
            if writers == 1:
                explain_rows = asyncio.run(_explain_history(server.db_url, run_id))
        finally:
            server.close()
    print(f"\nGetMetricHistory over gRPC ({args.calls} calls each, after one warm-up)\n")
    print(table(["series points", "writers", "query", "p50 ms", "p95 ms", "points/s"], rows))
    search_rows, search_explain = search_benchmark(args)
    print(f"\nSearchRuns over gRPC, max_results 100 ({args.calls} calls each, after one warm-up)\n")
    print(table(["runs", "search", "returned", "p50 ms", "p95 ms"], search_rows))
    compare_rows = compare_benchmark(args)
    print(f"\nCompareRuns over gRPC ({args.calls} calls, after one warm-up)\n")
    print(table(["runs x keys x points", "series", "p50 ms", "p95 ms"], compare_rows))
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the queries behind them, on the same data\n")
    print(table(["query", "planning ms", "execution ms", "plan"], explain_rows + search_explain))


if __name__ == "__main__":
    main()

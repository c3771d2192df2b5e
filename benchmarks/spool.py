"""Spool benchmark: what the disk spool costs a training job, and how fast `runstream sync` sends.

    python benchmarks/spool.py [--postgres-url URL] [--redis-url URL] [--sync-points N] [--repeat N]
                               [--baseline DIR] [--skip-sdk] [--skip-sync]

1. SDK cost: benchmarks/ingest.py's SDK path (4 processes, log_metrics with 10 keys per call)
   with the spool off, on with batches only (RUNSTREAM_SPOOL_PENDING=0: a kill loses the calls
   not yet batched) and on and kill-safe (the default), interleaved `--repeat` times: the
   calling thread's CPU per point and the committed points/s; with `--baseline DIR` also the
   SDK of that checkout (e.g. `git worktree add DIR <commit>`), spool on. Goals: the spool adds
   <= 0.2 µs per point, <= 1 µs in total; kill-safe logging costs no more than the baseline.
2. Spool size and sync rate: an offline run logs `--sync-points` (10 M) points into the spool
   (one process, 10 keys per call); its bytes per point; then `runstream sync` (the CLI, a
   separate process, as a person runs it) against a fresh server: points/s until it returns
   (every batch acknowledged: durable in Redis) and until every point is committed in
   PostgreSQL. Goal: >= 1 M points/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import runstream

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import KEYS, BenchServer, _sdk, _wait_committed, service_arguments, table


def _sdk_cost(args: argparse.Namespace) -> list[list[str]]:
    modes = {"off": ("0", "0"), "on, batches only": ("1", "0"), "on, kill-safe": ("1", "1")}
    if args.baseline:  # the SDK of another checkout, spool on: "today" against this one
        modes["baseline, spool on"] = ("1", "1")
    measured: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for round_ in range(args.repeat):
        for mode, (spool, pending) in modes.items():
            os.environ["RUNSTREAM_SPOOL"] = spool
            os.environ["RUNSTREAM_SPOOL_PENDING"] = pending
            server = BenchServer(args.postgres_url, args.redis_url, 1)
            # Spawned ranks import the SDK from the parent's sys.path: the baseline's first.
            sdk_path = [str(Path(args.baseline, "src"))] if mode.startswith("baseline") else []
            sys.path[:0] = sdk_path
            try:
                r = _sdk(server, args.sdk_processes, args.sdk_steps)
            finally:
                del sys.path[: len(sdk_path)]
                server.close()
            measured[mode].append(r)
            print(
                f"  round {round_ + 1} spool {mode}: {r['caller_cpu_us']:.3f} µs/point, "
                f"{r['committed_pps']:,.0f} points/s",
                file=sys.stderr,
                flush=True,
            )
    os.environ.pop("RUNSTREAM_SPOOL")
    os.environ.pop("RUNSTREAM_SPOOL_PENDING")
    rows = []
    for mode in modes:
        cpu = statistics.median(r["caller_cpu_us"] for r in measured[mode])
        pps = statistics.median(r["committed_pps"] for r in measured[mode])
        rows.append([mode, f"{cpu:.3f}", f"{pps:,.0f}"])
    cpu_of = {row[0]: float(row[1]) for row in rows}
    rows.append(["added by the batch spool", f"{cpu_of['on, batches only'] - cpu_of['off']:+.3f}", ""])
    rows.append(["added by kill-safety", f"{cpu_of['on, kill-safe'] - cpu_of['on, batches only']:+.3f}", ""])
    if args.baseline:
        change = cpu_of["on, kill-safe"] - cpu_of["baseline, spool on"]
        rows.append(["kill-safe against the baseline", f"{change:+.3f}", ""])
    return rows


def _offline_spool(root: Path, points: int) -> tuple[str, float]:
    """An offline run of `points` points in the spool at `root`: (run id, seconds to log them)."""
    os.environ["RUNSTREAM_SPOOL_DIR"] = str(root)
    steps = points // len(KEYS)
    rows = [dict(zip(KEYS, v, strict=True)) for v in np.random.default_rng(0).random((1000, len(KEYS))).tolist()]
    with runstream.Client("127.0.0.1:1") as client:  # nothing listens: offline needs no server
        t0 = time.perf_counter()
        run = client.start_run("bench", "offline", offline=True, record_source=False)
        for step in range(steps):
            run.log_metrics(rows[step % 1000], step=step)
        run.end()
        return run.run_id, time.perf_counter() - t0


def _sync_rate(args: argparse.Namespace) -> list[list[str]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="rs-spool-bench-") as tmp:
        root = Path(tmp)
        run_id, logged_s = _offline_spool(root, args.sync_points)
        size = sum(f.stat().st_size for f in root.rglob("*.seg"))
        print(f"  spooled {args.sync_points:,} points in {logged_s:.1f} s, {size:,} bytes", file=sys.stderr)
        server = BenchServer(args.postgres_url, args.redis_url, args.loaders)
        try:
            t0 = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "runstream.cli", "sync", str(root), "--url", server.target],
                capture_output=True,
                text=True,
            )
            acked = time.monotonic()
            if done.returncode != 0:
                raise SystemExit(f"sync failed: {done.stderr}")
            committed = asyncio.run(_wait_committed(server.db_url, [run_id], args.sync_points))
        finally:
            server.close()
        rows.append(
            [
                f"{args.sync_points:,}",
                f"{size / args.sync_points:.1f}",
                f"{args.sync_points / logged_s:,.0f}",
                f"{acked - t0:.1f}",
                f"{args.sync_points / (acked - t0):,.0f}",
                f"{args.sync_points / (committed - t0):,.0f}",
            ]
        )
    return rows


def _log_steps(client: runstream.Client, run_id: str, steps: range, **start: object) -> None:
    """Two writers log `loss` at `steps` in new sessions (the first resumes or forks with `start`)."""
    first = client.start_run("bench-history", record_source=False, writer_id="rank0", **start)  # type: ignore[arg-type]
    handles = [first, client.attach(first.run_id, writer_id="rank1")]
    values = np.linspace(1.0, 0.0, len(steps))
    for w, h in enumerate(handles):
        for step, v in zip(steps, values.tolist(), strict=True):
            h.log_metric("loss", v + w, step=step)
    for h in handles[::-1]:
        h.flush(visible=True)
        h.end()


def _history_reads(args: argparse.Namespace) -> list[list[str]]:
    n = args.history_steps
    server = BenchServer(args.postgres_url, args.redis_url, 1, ("--compact-delay", "0"))
    try:
        with runstream.Client(server.target) as client:
            plain = client.create_run("bench-history").run_id
            _log_steps(client, plain, range(n), resume=plain)
            rewound = client.create_run("bench-history").run_id
            _log_steps(client, rewound, range(n), resume=rewound)
            for at in (int(n * 0.8), n // 2, int(n * 0.9)):
                _log_steps(client, rewound, range(at + 1, n), resume=rewound, rewind_to=at)
            fork_step = n // 2
            fork = client.fork(plain, fork_step, record_source=False, writer_id="rank0")
            fork.end()
            _log_steps(client, fork.run_id, range(fork_step + 1, n), resume=fork.run_id)
        asyncio.run(_wait_compacted(server.db_url))
        cases = [("plain", plain, n // 2), ("3 rewinds", rewound, int(n * 0.9)), ("fork", fork.run_id, fork_step)]
        times: dict[tuple[str, str], list[float]] = {}
        with runstream.QueryClient(server.target) as q:
            for name, run_id, _ in cases:
                got = q.get_metric_history(run_id, "loss", max_points=1000)  # also warms the caches
                assert got.total_points == 2 * n, (name, got.total_points)
            for _ in range(args.repeat * 7):  # interleaved rounds: a slow moment hits every case
                for name, run_id, edge in cases:
                    for shape, lo, hi, points in (
                        ("whole", None, None, 1000),
                        ("window", edge - 5000, edge + 5000, 200_000),
                    ):
                        t0 = time.perf_counter()
                        q.get_metric_history(run_id, "loss", min_step=lo, max_step=hi, max_points=points)
                        times.setdefault((name, shape), []).append((time.perf_counter() - t0) * 1000)
        median = {k: statistics.median(v) for k, v in times.items()}
        rows = []
        for name, _, _ in cases:
            whole, window = median[(name, "whole")], median[(name, "window")]
            rows.append(
                [
                    name,
                    f"{whole:.1f}",
                    f"{whole / median[('plain', 'whole')]:.2f}x",
                    f"{window:.1f}",
                    f"{window / median[('plain', 'window')]:.2f}x",
                ]
            )
    finally:
        server.close()
    return rows


async def _wait_compacted(db_url: str, timeout: float = 600) -> None:
    """Until no ingest chunk is left (the compactor has merged every series)."""
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await conn.fetchval("SELECT count(*) FROM metric_chunks WHERE codec = 0"):
                return
            await asyncio.sleep(0.5)
        raise SystemExit("the compactor did not finish")
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--sdk-processes", type=int, default=4)
    p.add_argument("--sdk-steps", type=int, default=250_000, help="log_metrics calls per SDK process")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds of spool off / on")
    p.add_argument("--sync-points", type=int, default=10_000_000)
    p.add_argument("--loaders", type=int, default=1)
    p.add_argument("--skip-sdk", action="store_true")
    p.add_argument("--skip-sync", action="store_true")
    p.add_argument("--skip-history", action="store_true")
    p.add_argument("--history-steps", type=int, default=500_000, help="steps per writer of the history runs")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="a checkout of another commit: its SDK (spool on) is measured too",
    )
    args = p.parse_args()
    if not args.skip_sdk:
        rows = _sdk_cost(args)
        fsync = os.environ.get("RUNSTREAM_SPOOL_FSYNC", "interval")
        print(
            f"\nSDK path with the spool off and on ({args.sdk_processes} processes, {len(KEYS)} keys per call, "
            f"median of {args.repeat} interleaved rounds; fsync {fsync})\n"
        )
        print(table(["spool", "caller CPU µs/point", "committed pts/s"], rows))
    if not args.skip_sync:
        rows = _sync_rate(args)
        print("\nAn offline run's spool sent by `runstream sync` (CLI process, fresh server, 1 loader)\n")
        print(
            table(
                ["points", "spool bytes/point", "offline logging pts/s", "sync s", "acked pts/s", "committed pts/s"],
                rows,
            )
        )
    if not args.skip_history:
        rows = _history_reads(args)
        print(
            f"\nGetMetricHistory of rewound and forked runs ({args.history_steps:,} steps x 2 writers shown, "
            f"compacted; median of {args.repeat * 7} calls)\n"
        )
        header = ["run", "1,000 buckets ms", "vs plain", "10,000-step raw window ms", "vs plain"]
        print(table(header, rows))


if __name__ == "__main__":
    main()

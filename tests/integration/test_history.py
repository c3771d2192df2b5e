"""GetMetricHistory over real gRPC: whole series, writers merged, selected or aggregated, and
downsampled buckets checked against a brute-force computation over every stored point."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import subprocess
import sys

import asyncpg
import numpy as np
import pytest

import runstream
from runstream.server.query import history as query_history
from runstream.server.storage import codec, history, metrics
from runstream.wire import batch as wire
from tests.conftest import Server, raw_log

STEPS = 5000  # per writer; rank0 logs the even steps, rank1 the odd ones


@pytest.fixture(scope="module", params=["ingest chunks", "compacted"])
def logged(make_module_server, request):  # type: ignore[no-untyped-def]
    """The same points as the loaders store them, and as the compactor leaves them once the run ended."""
    compacted = request.param == "compacted"
    server = make_module_server(*(["--compact-delay", "0"] if compacted else ["--compactors", "0"]))
    with runstream.Client(server.target) as client:
        run_id = client.create_run("history").run_id
        for rank in (0, 1):
            steps = np.arange(rank, 2 * STEPS, 2)
            values = np.sin(steps / 100.0) + rank
            if rank == 0:
                values[steps == 3332] = 1000.0  # a spike
                values[steps == 10] = math.nan
            else:
                values[steps == 21] = math.inf
            for seq, lo in enumerate(range(0, STEPS, 1000), start=1):  # batches of 1,000 points
                part = slice(lo, lo + 1000)
                data = wire.encode(
                    run_id,
                    f"rank{rank}",
                    seq,
                    ["loss", "shared"],
                    np.repeat([0, 1], 1000),
                    np.concatenate([steps[part], np.arange(lo, lo + 1000)]),
                    None,
                    np.concatenate([values[part], np.full(1000, float(rank))]),
                )
                assert raw_log(client, data).code == 0
        assert server.wait_points(run_id, 4 * STEPS) == 4 * STEPS
        if compacted:
            client.update_run(run_id, status="FINISHED")
            server.wait_compacted(run_id)
    return server, run_id


def _expected(server: Server, run_id: str, key: str, lo: int, hi: int, buckets: int) -> dict[str, list]:
    """Buckets computed the slow, obvious way from every stored point."""
    points = sorted(
        (s, v)
        for (k, _), (steps, vals) in server.stored(run_id).items()
        if k == key
        for s, v in zip(steps.tolist(), vals.tolist(), strict=True)
        if lo <= s <= hi
    )
    lo, hi = max(lo, points[0][0]), min(hi, points[-1][0])
    width = history.bucket_width(lo, hi, buckets)  # the rule for widths has its own unit test
    groups: dict[int, list[tuple[int, float]]] = {}
    for s, v in points:
        groups.setdefault(s // width, []).append((s, v))

    def fmin(vs: list[float]) -> float:
        real = [v for v in vs if not math.isnan(v)]
        return min(real) if real else math.nan

    def fmax(vs: list[float]) -> float:
        real = [v for v in vs if not math.isnan(v)]
        return max(real) if real else math.nan

    g = [groups[b] for b in sorted(groups)]
    return {
        "first_step": [x[0][0] for x in g],
        "last_step": [x[-1][0] for x in g],
        "first": [x[0][1] for x in g],
        "last": [x[-1][1] for x in g],
        "min": [fmin([v for _, v in x]) for x in g],
        "max": [fmax([v for _, v in x]) for x in g],
        "count": [len(x) for x in g],
    }


def test_a_short_history_comes_back_whole_in_step_order(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        h = q.get_metric_history(run_id, "loss", max_points=20_000)
    assert not h.downsampled and h.total_points == 2 * STEPS and h.writers == ["rank0", "rank1"]
    np.testing.assert_array_equal(h.step, np.arange(2 * STEPS))
    assert h.writer[:4] == ["rank0", "rank1", "rank0", "rank1"]
    assert math.isnan(h.value[10]) and h.value[21] == math.inf and h.value[3332] == 1000.0
    assert h.value[101] == pytest.approx(math.sin(1.01) + 1)
    assert len(h.timestamp_ms) == 2 * STEPS


def test_one_writer_and_aggregates_across_writers(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        one = q.get_metric_history(run_id, "loss", writer="rank1", max_points=20_000)
        assert set(one.writer) == {"rank1"} and one.total_points == STEPS
        np.testing.assert_array_equal(one.step, np.arange(1, 2 * STEPS, 2))
        mean = q.get_metric_history(run_id, "shared", aggregate="mean", max_points=20_000)
        np.testing.assert_array_equal(mean.step, np.arange(STEPS))
        assert np.all(mean.value == 0.5) and mean.total_points == 2 * STEPS
        top = q.get_metric_history(run_id, "shared", aggregate="max", max_points=10)
        assert top.downsampled and np.all(top.buckets["max"] == 1.0) and top.buckets["count"].sum() == STEPS


# Chunks here span ~2,000 steps: coarse buckets (2, 3) take whole chunks from their summaries,
# fine ones decode the chunks that cross bucket edges.
@pytest.mark.parametrize(
    ("lo", "hi", "buckets"),
    [
        (None, None, 2),
        (None, None, 3),
        (None, None, 50),
        (None, None, 7),
        (1234, 4321, 9),
        (3000, 3400, 400),
        (-5, 3, 2),
    ],
)
def test_downsampled_buckets_match_a_brute_force_computation(logged, lo, hi, buckets) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        h = q.get_metric_history(run_id, "loss", min_step=lo, max_step=hi, max_points=buckets)
    want = _expected(server, run_id, "loss", -(2**63) if lo is None else lo, 2**63 - 1 if hi is None else hi, buckets)
    if sum(want["count"]) <= buckets:
        assert not h.downsampled and len(h.step) == sum(want["count"])
        return
    assert h.downsampled and len(h.buckets["count"]) <= buckets
    assert h.total_points == sum(want["count"])
    for name, values in want.items():
        np.testing.assert_array_equal(h.buckets[name], np.array(values), err_msg=name)


def test_a_spike_survives_coarse_zoom(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    with runstream.QueryClient(server.target) as q:
        h = q.get_metric_history(run_id, "loss", max_points=10)
    hit = np.flatnonzero(h.buckets["max"] == 1000.0)
    assert len(hit) == 1 and h.buckets["first_step"][hit[0]] <= 3332 <= h.buckets["last_step"][hit[0]]
    assert h.buckets["max"].max() == math.inf and h.buckets["min"].min() == pytest.approx(-1, abs=1e-3)


def test_bad_requests_get_clear_statuses(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    missing = "3f0c2a9e-1b7d-4c55-9e0a-6f2d8c4b1a00"
    with runstream.QueryClient(server.target) as q:
        with pytest.raises(runstream.RunNotFound, match=f"run {missing} does not exist"):
            q.get_metric_history(missing, "loss")
        with pytest.raises(runstream.NotFound, match="has no metric 'nope'"):
            q.get_metric_history(run_id, "nope")
        with pytest.raises(runstream.NotFound, match="writer 'rank9' logged no metric 'loss'"):
            q.get_metric_history(run_id, "loss", writer="rank9")
        with pytest.raises(runstream.InvalidArgument, match="max_points is 300,000"):
            q.get_metric_history(run_id, "loss", max_points=300_000)
        with pytest.raises(runstream.InvalidArgument, match="min_step 5 is above max_step 4"):
            q.get_metric_history(run_id, "loss", min_step=5, max_step=4)
        with pytest.raises(runstream.InvalidArgument, match="not a run id"):
            q.get_metric_history("x", "loss")
        empty = q.get_metric_history(run_id, "loss", min_step=50_000)
        assert empty.total_points == 0 and len(empty.step) == 0


def test_coarse_zoom_reads_summaries_and_sketches_not_points(logged) -> None:  # type: ignore[no-untyped-def]
    """Two buckets over every step: a chunk inside one bucket is used by its summary, a compacted
    chunk by its sketch; only ingest chunks across the bucket edge need their points."""
    server, run_id = logged

    async def fetch() -> list:
        conn = await asyncpg.connect(server.db_url)
        try:
            series = await metrics.metric_series(conn, run_id, "loss", None)
            return await metrics.history_chunks(conn, series, 0, 2 * STEPS - 1)
        finally:
            await conn.close()

    rows = asyncio.run(fetch())
    width = history.bucket_width(0, 2 * STEPS - 1, 2)
    decoded = [r for r in rows if query_history.needs_points(r, 0, 2 * STEPS - 1, width, with_time=False)]
    for r in rows:
        across = r["first_step"] // width != r["last_step"] // width
        assert (r in decoded) == (across and r["codec"] == codec.RAW), dict(r)
    assert len(decoded) < len(rows)


def test_the_cli_prints_a_history_as_csv_and_json(logged) -> None:  # type: ignore[no-untyped-def]
    server, run_id = logged
    cli = [sys.executable, "-m", "runstream.cli", "metrics", "--url", server.target, run_id, "loss"]
    rows = list(
        csv.reader(
            subprocess.run(
                [*cli, "--writer", "rank0", "--max-points", "10000"], capture_output=True, text=True, check=True
            ).stdout.splitlines()
        )
    )
    assert rows[0] == ["step", "value", "timestamp_ms", "writer"] and len(rows) == STEPS + 1
    assert rows[1][0] == "0" and rows[1][3] == "rank0"
    doc = json.loads(
        subprocess.run(
            [*cli, "--max-points", "4", "--format", "json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert doc["downsampled"] and doc["total_points"] == 2 * STEPS and sum(r["count"] for r in doc["rows"]) == 2 * STEPS
    missing = subprocess.run([*cli[:-1], "nope"], capture_output=True, text=True)
    assert missing.returncode == 1 and "has no metric 'nope'" in missing.stderr

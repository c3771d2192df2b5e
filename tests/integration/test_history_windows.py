"""GetMetricHistory over a step window answers by the window's own points: at most max_points
there → those points, whole; more → buckets that account for exactly them. Checked against a
brute-force answer over every stored point, for random windows, max_points and chunk layouts
(two writers cutting batches of different sizes, one sending its steps out of order), as the
loaders store them, compacted, and mixed (compacted chunks and newer ingest chunks of one series)."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

import runstream
from runstream.server.storage import history
from runstream.wire import batch as wire
from tests.conftest import raw_log

STEPS = 20_000


@pytest.fixture(scope="module", params=["ingest chunks", "compacted", "mixed"])
def layout(make_module_server, request):
    server = make_module_server(
        *(["--compactors", "0"] if request.param == "ingest chunks" else ["--compact-delay", "0"])
    )
    with runstream.Client(server.target) as client:
        run_id = client.create_run("windows", "layouts").run_id
        seq = 0
        for writer, size, shuffled in (("a", 700, False), ("b", 3_000, True)):
            steps = np.arange(STEPS, dtype=np.int64)
            if shuffled:  # batches arrive out of step order: chunks overlap in their step ranges
                blocks = [steps[i : i + size] for i in range(0, STEPS, size)]
                random.Random(7).shuffle(blocks)
                steps = np.concatenate(blocks)
            epoch = client.open_writer(run_id, writer)
            for i in range(0, STEPS, size):
                seq += 1
                s = steps[i : i + size]
                values = np.sin(s / 50.0) + (1.0 if writer == "b" else 0.0)
                data = wire.encode(run_id, writer, seq, ["loss"], np.zeros(len(s)), s, s * 10, values, epoch)
                assert raw_log(client, data).code == 0
        assert server.wait_points(run_id, 2 * STEPS) == 2 * STEPS
        if request.param == "compacted":
            client.update_run(run_id, status="FINISHED")
            server.wait_compacted(run_id)
        if request.param == "mixed":  # series with 16,384 points or more are compacted while running
            deadline = time.monotonic() + 60
            while not server.sql("SELECT count(*) AS n FROM metric_chunks WHERE codec <> 0")[0]["n"]:
                assert time.monotonic() < deadline, "nothing was compacted"
                time.sleep(0.1)
            s = np.arange(STEPS, STEPS + 500, dtype=np.int64)
            data = wire.encode(run_id, "a", seq + 1, ["loss"], np.zeros(500), s, s * 10, np.cos(s), epoch)
            assert raw_log(client, data).code == 0  # too few to be compacted before the run ends
            assert server.wait_points(run_id, 2 * STEPS + 500) == 2 * STEPS + 500
            kinds = server.sql("SELECT DISTINCT codec FROM metric_chunks ORDER BY codec")
            assert [r["codec"] for r in kinds] == [0, 1]
    stored = server.stored(run_id)
    steps = np.concatenate([stored[("loss", w)][0] for w in ("a", "b")])
    values = np.concatenate([stored[("loss", w)][1] for w in ("a", "b")])
    return server, run_id, steps, values


def test_random_windows_answer_by_their_own_points(layout) -> None:
    server, run_id, all_steps, all_values = layout
    query = runstream.QueryClient(server.target)
    rng = random.Random(16)
    shapes = {"whole": 0, "buckets": 0}
    for _ in range(80):
        lo = rng.randrange(-50, STEPS)
        hi = lo + rng.choice([0, 1, 5, 99, 300, 599, 1_499, 4_000, 25_000])
        max_points = rng.choice([1, 10, 200, 600, 1_000, 3_001, 10_000])
        inside = (all_steps >= lo) & (all_steps <= hi)
        want_steps, want_values = all_steps[inside], all_values[inside]
        got = query.get_metric_history(run_id, "loss", max_points=max_points, min_step=lo, max_step=hi)
        assert got.total_points == len(want_steps), (lo, hi, max_points)
        if len(want_steps) <= max_points:
            shapes["whole"] += 1
            assert not got.downsampled, (lo, hi, max_points)
            order = np.lexsort((want_values, want_steps))
            assert got.step.tolist() == want_steps[order].tolist()
            assert np.sort(got.value).tolist() == np.sort(want_values).tolist()
            assert len(got.timestamp_ms) == len(want_steps)
        else:
            shapes["buckets"] += 1
            assert got.downsampled, (lo, hi, max_points)
            b = got.buckets
            assert len(b["count"]) <= max_points and int(np.sum(b["count"])) == len(want_steps)
            # aligned buckets of the width the steps present ask for, whatever chunks hold them
            width = history.bucket_width(int(want_steps.min()), int(want_steps.max()), max_points)
            number = want_steps // width if width else np.zeros(len(want_steps), np.int64)
            firsts = [int(want_steps[number == k].min()) for k in np.unique(number)]
            assert b["first_step"].tolist() == firsts, (lo, hi, max_points, width)
            for first, last, count, low, high in zip(
                b["first_step"], b["last_step"], b["count"], b["min"], b["max"], strict=True
            ):
                mine = (want_steps >= first) & (want_steps <= last)
                assert int(mine.sum()) == count
                assert low == want_values[mine].min() and high == want_values[mine].max()
    assert shapes["whole"] >= 15 and shapes["buckets"] >= 15, shapes


def test_the_issues_windows(layout) -> None:
    """The two windows that came back as buckets of one point each."""
    server, run_id, _, _ = layout
    query = runstream.QueryClient(server.target)
    got = query.get_metric_history(run_id, "loss", max_points=1000, min_step=14_851, max_step=15_150)
    assert not got.downsampled and got.total_points == 600  # 300 steps of two writers
    assert len(got.timestamp_ms) == 600 and sorted(set(got.writer)) == ["a", "b"]
    one = query.get_metric_history(run_id, "loss", max_points=200, min_step=1_000, max_step=1_099, writer="a")
    assert not one.downsampled and one.total_points == 100 and len(one.timestamp_ms) == 100

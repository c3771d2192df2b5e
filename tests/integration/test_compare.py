"""CompareRuns: the params that differ, the best run per key, series on one step axis."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import runstream
from runstream.wire import batch as wire
from tests.conftest import Server, raw_log


def _log(client: runstream.Client, run_id: str, key: str, steps: np.ndarray, values: np.ndarray) -> None:
    for seq, lo in enumerate(range(0, len(steps), 1000), start=1):
        part = slice(lo, lo + 1000)
        n = len(steps[part])
        assert (
            raw_log(
                client, wire.encode(run_id, f"w-{key}", seq, [key], np.zeros(n), steps[part], None, values[part])
            ).code
            == 0
        )


def test_compare_three_runs(server: Server) -> None:
    with runstream.Client(server.target) as client:
        ids = []
        for i, (lr, final_loss, acc) in enumerate([("0.1", 0.30, 0.91), ("0.01", 0.20, 0.88), ("0.001", 0.25, 0.93)]):
            run_id = client.create_run("cmp", f"run{i}").run_id
            client.log_params(run_id, {"lr": lr, "layers": 3, **({"warmup": 100} if i == 2 else {})})
            steps = np.arange(0, 20_000 if i < 2 else 10_000)  # run2 stopped halfway
            _log(client, run_id, "loss", steps, np.linspace(2.0, final_loss, len(steps)))
            _log(client, run_id, "acc", steps, np.linspace(0.1, acc, len(steps)))
            ids.append(run_id)
        for run_id, n in zip(ids, [40_000, 40_000, 20_000], strict=True):
            assert server.wait_points(run_id, n) == n

    with runstream.QueryClient(server.target) as q:
        c = q.compare_runs(ids, max_points=100)
        assert [r.name for r in c.runs] == ["run0", "run1", "run2"]
        assert c.differs == ["lr", "warmup"] and c.params["layers"] == ["3", "3", "3"]
        assert c.params["warmup"] == [None, None, "100"]
        assert c.direction == {"acc": "max", "loss": "min"}
        assert c.best == {"acc": 2, "loss": 1}
        assert c.metrics["loss"] == pytest.approx([0.30, 0.20, 0.25])
        loss = c.series["loss"]
        assert all(h.downsampled for h in loss) and [h.total_points for h in loss] == [20_000, 20_000, 10_000]
        # One step axis: the runs that logged every step share their buckets; the shorter run's
        # buckets are the first half of them.
        np.testing.assert_array_equal(loss[0].buckets["first_step"], loss[1].buckets["first_step"])
        half = loss[2].buckets["first_step"]
        np.testing.assert_array_equal(half, loss[0].buckets["first_step"][: len(half)])
        assert loss[0].buckets["max"][0] == 2.0

        chosen = q.compare_runs(ids, ["acc"], direction={"acc": "min"})
        assert list(chosen.series) == ["acc"] and chosen.best == {"acc": 1}

        with pytest.raises(runstream.InvalidArgument, match="direction of 'acc'"):
            q.compare_runs(ids, ["acc"], direction={"acc": "up"})
        with pytest.raises(runstream.RunNotFound):
            q.compare_runs([*ids, "5b0a1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"])
        with pytest.raises(runstream.InvalidArgument, match="between 1 and 100"):
            q.compare_runs([])
        missing = q.compare_runs(ids, ["nothing"])
        assert missing.best == {"nothing": None} and all(len(h.step) == 0 for h in missing.series["nothing"])
        assert math.isnan(q.compare_runs(ids[:1], ["acc"]).metrics["acc"][0]) is False


def test_the_cli_compares_runs(server: Server) -> None:
    with runstream.Client(server.target) as client:
        ids = []
        for name, lr, loss in [("fast", "0.1", 0.5), ("slow", "0.01", 0.25)]:
            run_id = client.create_run("cmp-cli", name).run_id
            client.log_params(run_id, {"lr": lr, "seed": 1})
            _log(client, run_id, "loss", np.arange(3), np.array([1.0, 0.75, loss]))
            server.wait_points(run_id, 3)
            ids.append(run_id)
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "compare", "--url", server.target, *ids],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].split() == ["fast", "slow"]
    assert out[2].split() == ["*", "params.lr", "0.1", "0.01"] and out[3].split() == ["params.seed", "1", "1"]
    assert out[4].split() == ["loss", "(min)", "0.5", "0.25", "<"]


def test_the_cli_plots_compared_curves(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    from PIL import Image  # matplotlib depends on Pillow

    with runstream.Client(server.target) as client:
        ids = []
        for i in range(2):
            run_id = client.create_run("cmp-plot", f"run{i}").run_id
            steps = np.arange(5_000)
            _log(client, run_id, "loss", steps, np.exp(-steps / (1_000 * (i + 1))))
            server.wait_points(run_id, len(steps))
            ids.append(run_id)
    png = tmp_path / "curves.png"
    subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "compare", "--url", server.target, "--plot", str(png), *ids],
        capture_output=True,
        text=True,
        check=True,
    )
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    for color in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two line colors: one per run
        near = np.abs(image - np.array(color)).sum(axis=2) < 40
        assert near.sum() > 300, f"no curve drawn in {color}"

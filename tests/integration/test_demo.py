"""The README's first command, in small: the demo trains, logs from several processes and compares."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import Server


def test_the_demo_trains_runs_and_prints_them_best_first(server: Server) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "demo", "--url", server.target, "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert "6 runs" in out and "lr=0.3 x2 ranks" in out
    ui = re.search(r"^web UI: http://127\.0\.0\.1:(\d+)/#/runs\?e=(\d+)$", out, re.M)
    assert ui is not None, out  # the runs' page in the web UI (port: the default, gRPC + 1, for a running server)
    assert (
        server.sql("SELECT name FROM experiments WHERE experiment_id = $1", int(ui.group(2)))[0]["name"]
        == "wine-softmax"
    )
    rows = [line for line in out.splitlines() if re.match(r"^\d+\s+lr=", line)]
    assert len(rows) == 6
    # columns after the run name: lr, ranks, val_acc, best val_acc, loss, min loss, steps, points
    accuracies = [float(line.split()[-6]) for line in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    # 3 epochs x 17 minibatches = 51 steps; rank 0 logs 5 keys, rank 1 of the 2-rank run 2 keys
    runs = server.sql("SELECT r.name, s.count FROM runs r JOIN metric_summaries s USING (run_id) WHERE s.key = 'loss'")
    counts = {r["name"]: r["count"] for r in runs}
    assert counts["lr=0.3 x2 ranks"] == 2 * 51 and counts["lr=0.03"] == 51


def test_the_demo_fails_clearly_when_training_fails(server: Server, tmp_path: Path) -> None:
    # scikit-learn is installed (the extra check passes), but cannot be imported by the trainers.
    broken = tmp_path / "sklearn"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('scikit-learn is broken here on purpose')\n")
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "demo", "--url", server.target, "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 1
    assert done.stdout.count("FAILED") == 6 and "trained" not in done.stdout
    assert (
        done.stderr.strip().splitlines()[-1]
        == "runstream demo: training failed in 6 of 6 runs (their errors are above)"
    )
    assert "broken here on purpose" in done.stderr
    assert len(server.sql("SELECT 1 FROM runs WHERE status = 3")) == 6  # FAILED

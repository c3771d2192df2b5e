"""The README's first command, in small: the demo trains, logs from several processes and compares."""

from __future__ import annotations

import re
import subprocess
import sys

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
    rows = [line for line in out.splitlines() if re.match(r"^\d+\s+lr=", line)]
    assert len(rows) == 6
    # columns after the run name: lr, ranks, val_acc, best val_acc, loss, min loss, steps, points
    accuracies = [float(line.split()[-6]) for line in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    # 3 epochs x 17 minibatches = 51 steps; rank 0 logs 5 keys, rank 1 of the 2-rank run 2 keys
    runs = server.sql("SELECT r.name, s.count FROM runs r JOIN metric_summaries s USING (run_id) WHERE s.key = 'loss'")
    counts = {r["name"]: r["count"] for r in runs}
    assert counts["lr=0.3 x2 ranks"] == 2 * 51 and counts["lr=0.03"] == 51

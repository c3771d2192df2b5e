"""Console capture: what each writer's process prints is stored with the run as
logs/<writer>.txt, in order, while the process prints as before; `runstream runs logs` shows it."""

from __future__ import annotations

import os
import subprocess
import sys

import runstream
from tests.conftest import Server

RANK = """
import os, sys, time, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.attach(os.environ["RUN_ID"], writer_id=os.environ["WRITER"])
    for i in range(5):
        print(f"{os.environ['WRITER']} epoch {i}", flush=True)
        print(f"{os.environ['WRITER']} warning {i}", file=sys.stderr, flush=True)
        time.sleep(0.2)
    run.end()
"""


def test_each_writers_output_is_kept_in_order_and_shown(server: Server, tmp_path: object) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("console").run_id
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUN_ID": run_id, "RUNSTREAM_CONSOLE": "1"}
    env["RUNSTREAM_CONSOLE_UPLOAD_S"] = "0.3"
    ranks = [
        subprocess.run(
            [sys.executable, "-c", RANK], env={**env, "WRITER": w}, capture_output=True, text=True, timeout=60
        )
        for w in ("rank0", "rank1")
    ]
    for rank in ranks:  # the process printed as it would have without capture
        assert rank.returncode == 0, rank.stderr
        assert [line.split()[-1] for line in rank.stdout.splitlines()] == ["0", "1", "2", "3", "4"]
    cli = [sys.executable, "-m", "runstream.cli", "runs", "logs", run_id, "--url", server.target]
    shown = subprocess.run([*cli, "--writer", "rank1"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    expected = [f"rank1 {kind} {i}" for i in range(5) for kind in ("epoch", "warning")]
    assert shown.stdout.splitlines() == expected
    ambiguous = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert ambiguous.returncode != 0 and "rank0, rank1" in ambiguous.stderr
    with runstream.Client(server.target) as client:
        logs = sorted(a.path for a in client.list_artifacts(run_id, "logs"))
    assert logs == ["logs/rank0.txt", "logs/rank1.txt"]

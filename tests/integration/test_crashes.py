"""Crashed runs: a training process SIGKILLed mid-run leaves its run CRASHED within the
server's --crash-after, with the time it was last heard from; a live but idle writer keeps its
run RUNNING; a writer heard again brings the run back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import urllib3

import runstream
from tests.conftest import Server

TRAINING = """
import os, sys, time, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("crashes", record_source=False)
    for step in range(1000):
        run.log_metric("loss", 1 / (step + 1), step=step)
    run.flush()
    print(run.run_id, flush=True)
    time.sleep(600)
"""


def _status(server: Server, run_id: str) -> tuple[str, int]:
    with runstream.Client(server.target) as client:
        run = client.get_run(run_id, all_metrics=False)
    return runstream.wire.status.RUN_STATUS_NAMES[run.status], run.last_heard_ms


def _wait_for(server: Server, run_id: str, status: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(server, run_id)[0] == status:
            return time.time()
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} is {_status(server, run_id)[0]}, not {status}, after {timeout} s")


def test_a_killed_job_is_crashed_and_an_idle_one_is_not(make_server: Any, monkeypatch: Any) -> None:
    server = make_server("--crash-after", "2")
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUNSTREAM_HEARTBEAT_S": "0.3"}
    job = subprocess.Popen([sys.executable, "-c", TRAINING], env=env, stdout=subprocess.PIPE, text=True)
    assert job.stdout is not None
    crashed_id = job.stdout.readline().strip()
    monkeypatch.setenv("RUNSTREAM_HEARTBEAT_S", "0.3")
    with runstream.Client(server.target) as client:
        idle = client.start_run("crashes", record_source=False)  # a live writer that logs nothing
        time.sleep(1.0)
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        killed_at_ms = int(time.time() * 1000)
        marked = _wait_for(server, crashed_id, "CRASHED", timeout=10)
        _, last_heard_ms = _status(server, crashed_id)
        assert killed_at_ms - 1500 <= last_heard_ms <= killed_at_ms
        assert marked - killed_at_ms / 1000 <= 2 + 2  # --crash-after, and the watch's period
        time.sleep(2.5)  # longer than --crash-after: the idle writer's heartbeats keep it RUNNING
        assert _status(server, idle.run_id)[0] == "RUNNING"
        with runstream.QueryClient(server.target) as query:
            found = query.search_runs(filter="attributes.status = 'CRASHED'")
        assert [r.run_id for r in found.runs] == [crashed_id]
        mlflow_view = urllib3.request(
            "GET", f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/runs/get", fields={"run_id": crashed_id}
        ).json()
        assert mlflow_view["run"]["info"]["status"] == "FAILED"  # MLflow has no CRASHED
        assert server.wait_points(crashed_id, 1000) == 1000  # what it logged before it died stays

        back = client.attach(crashed_id, writer_id="rank0-restarted")  # the job comes back
        _wait_for(server, crashed_id, "RUNNING", timeout=5)
        back.end()  # a writer of it, not its creator: the run stays RUNNING
        idle.end()
    assert _status(server, crashed_id)[0] == "RUNNING"
    assert _status(server, idle.run_id)[0] == "FINISHED"

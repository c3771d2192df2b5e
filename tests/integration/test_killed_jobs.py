"""Jobs that die and come back: what a training thread has logged survives a SIGKILL from the
moment `log` returns (the calls not yet spooled live in file mappings of the spool), and
`runstream sync` stores every such point exactly once; a job restarted with `resume` continues
its run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import runstream
from runstream.errors import FailedPrecondition, InvalidArgument
from runstream.wire.status import RUN_STATUS_NAMES
from tests.conftest import Server, cli_sync

LOG_THEN_WAIT = """
import os, sys, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("killed", record_source=False, writer_id="rank0")
    print(run.run_id, flush=True)
    for step in range(100_000):
        run.log_metric("loss", step * 0.5, step=step)
    print("logged", flush=True)
    sys.stdin.readline()  # never comes: SIGKILL
"""

# Resumes the run of RUNSTREAM_RESUME and logs from step START on, saying each step once its
# log call has returned, until it is killed.
LOG_UNTIL_KILLED = """
import os, sys, runstream
start = int(os.environ["START"])
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("killed", record_source=False, writer_id="rank0", batch_points=2_000)
    print("ready", flush=True)
    for step in range(start, start + 10_000_000):
        run.log_metrics({"loss": step * 0.5, "acc": -step}, step=step)
        if step % 7 == 0:
            run.log_metric("lr", 1.0, step=step)
        sys.stdout.write(f"{step}\\n")
        sys.stdout.flush()
"""


def test_points_logged_just_before_a_sigkill_are_stored_once_after_sync(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUNSTREAM_SPOOL_DIR": str(tmp_path)}
    job = subprocess.Popen(
        [sys.executable, "-c", LOG_THEN_WAIT], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert job.stdout is not None
    try:
        run_id = job.stdout.readline().strip()
        assert job.stdout.readline().strip() == "logged"
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        job.kill()
    cli_sync(server, tmp_path)
    assert server.wait_points(run_id, 100_000) == 100_000
    steps, values = server.stored(run_id)[("loss", "rank0")]
    np.testing.assert_array_equal(steps, np.arange(100_000))  # each exactly once
    np.testing.assert_array_equal(values, np.arange(100_000) * 0.5)
    assert not (tmp_path / run_id).exists()


def test_twenty_kills_at_random_points_then_sync_store_every_logged_point_once(server: Server, tmp_path: Path) -> None:
    """A job restarted 20 times under RUNSTREAM_RESUME, each time SIGKILLed at a random moment
    of its logging: every step whose log call returned is stored once, for each of its keys."""
    rng = random.Random(28)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("killed").run_id
    env = {
        **os.environ,
        "RUNSTREAM_URL": server.target,
        "RUNSTREAM_SPOOL_DIR": str(tmp_path),
        "RUNSTREAM_RESUME": run_id,
        "RUNSTREAM_SYNC_ON_START": "1",  # a restart sends what the killed one left, as jobs do
    }
    logged: list[tuple[int, int]] = []  # (first step, last step said logged) of each process
    for i in range(20):
        start = i * 10_000_000
        job = subprocess.Popen(
            [sys.executable, "-c", LOG_UNTIL_KILLED],
            env={**env, "START": str(start)},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert job.stdout is not None
        try:
            assert job.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 1.0))
            job.send_signal(signal.SIGKILL)
            lines = job.stdout.read().split("\n")
            job.wait(10)
        finally:
            job.kill()
        said = [int(x) for x in lines if x.strip().isdigit()]
        assert said, "the job logged nothing before it was killed"
        logged.append((start, said[-1]))
    cli_sync(server, tmp_path)
    with runstream.Client(server.target) as client:
        assert RUN_STATUS_NAMES[client.get_run(run_id).status] in ("RUNNING", "CRASHED")

    least = sum(2 * (last - first + 1) + (last // 7 - (first - 1) // 7) for first, last in logged)
    server.wait_points(run_id, least)
    stored = server.stored(run_id)
    for key in ("loss", "acc", "lr"):
        steps = stored[(key, "rank0")][0]
        assert len(np.unique(steps)) == len(steps), f"{key}: a step stored twice"
        for first, last in logged:
            mine = steps[(steps >= first) & (steps < first + 10_000_000)]
            want = np.arange(first, last + 1)
            if key == "lr":
                want = want[want % 7 == 0]
            # Every step said logged is stored; at most the one logged after it was said, too.
            assert np.isin(want, mine).all(), f"{key}: {len(np.setdiff1d(want, mine))} logged steps lost"
            assert len(mine) - len(want) in (0, 1), (key, first, last, len(mine), len(want))
    assert not list(tmp_path.glob(f"{run_id}/writers/*")), "sync left spools behind"


def test_resume_continues_the_run_from_a_new_process(server: Server) -> None:
    with runstream.Client(server.target) as client:
        first = client.start_run("resumed", record_source=False, params={"lr": 0.1})
        first.log_metric("loss", 1.0, step=0)
        first.flush(visible=True)
        first.end("FAILED")
        again = client.start_run("resumed", record_source=False, resume=first.run_id)
        assert again.run_id == first.run_id and again.epoch > 0
        assert RUN_STATUS_NAMES[client.get_run(first.run_id).status] == "RUNNING"
        assert client.get_run(first.run_id).end_time_ms == 0
        again.log_metric("loss", 0.5, step=1)
        again.flush(visible=True)
        again.end()
        run = client.get_run(first.run_id)
        assert RUN_STATUS_NAMES[run.status] == "FINISHED" and run.params["lr"] == "0.1"
        history = client_history(server, first.run_id)
        assert history == [(0, 1.0), (1, 0.5)]
        # A launcher's id the server has not seen yet: the first start creates the run.
        fresh = "5f0c7a52-8d0e-4c55-9a9e-1b5b7c0e4a11"
        made = client.start_run("resumed", "from the launcher", record_source=False, resume=fresh)
        assert made.run_id == fresh and client.get_run(fresh).name == "from the launcher"
        made.end()
        # A deleted run is not resumed behind its owner's back; an id that is no run id is refused.
        client.delete_run(fresh)
        with pytest.raises(FailedPrecondition, match="deleted; restore it"):
            client.start_run("resumed", record_source=False, resume=fresh)
        with pytest.raises(InvalidArgument):
            client.start_run("resumed", record_source=False, resume="../../etc/passwd")
        with pytest.raises(ValueError, match="offline"):
            client.start_run("resumed", record_source=False, resume=fresh, offline=True)


def client_history(server: Server, run_id: str) -> list[tuple[int, float]]:
    with runstream.QueryClient(server.target) as query:
        history = query.get_metric_history(run_id, "loss")
    return list(zip(history.step.tolist(), history.value.tolist(), strict=True))

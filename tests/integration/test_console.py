"""Console capture: what each writer's process prints is stored with the run as
logs/<writer>.txt, in order, while the process prints as before; `runstream runs logs` shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

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


LOUD = """
import os, runstream
client = runstream.Client(os.environ["RUNSTREAM_URL"])
run = client.attach(os.environ["RUN_ID"], writer_id="loud")
for i in range(30_000):
    print(f"line {i:06d} " + "x" * 90)
if os.environ["CLOSE"] == "1":
    client.close()
"""  # about 3 MiB, left for the last upload: the run is not ended


@pytest.mark.parametrize("close", [False, True], ids=["at-exit", "client-closed"])
def test_a_log_larger_than_a_part_is_uploaded_when_the_client_closes_or_at_exit(make_server: Any, close: bool) -> None:
    """The last upload runs when the client closes (its channel still open) or else in an
    atexit hook, where no thread pool may start: a log large enough to go up in parts still
    arrives whole."""
    server = make_server("--artifact-part-size", "1MiB")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("console-exit").run_id
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUN_ID": run_id, "RUNSTREAM_CONSOLE": "1"}
    env["CLOSE"] = str(int(close))
    done = subprocess.run([sys.executable, "-c", LOUD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "runstream" not in done.stderr, done.stderr[-2000:]
    with runstream.Client(server.target) as client:
        (log,) = client.list_artifacts(run_id, "logs")
    assert log.path == "logs/loud.txt" and log.size == len(done.stdout.encode()) > 3 * 2**20 - 2**20


FORKS = """
import logging, os, sys, runstream
logging.basicConfig(level=logging.INFO, format="%(message)s")  # holds the wrapped stderr
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.attach(os.environ["RUN_ID"], writer_id="parent")
    print("before the fork", flush=True)
    child = os.fork()
    if child == 0:  # a data-loader worker: prints, exits normally (its atexit hooks run)
        print("child line", flush=True)
        sys.exit(0)
    os.waitpid(child, 0)
    print("after the fork", flush=True)
    run.end()
    logging.info("logged after the end")  # through a stream kept from before: written through only
"""


def test_a_forked_child_leaves_the_parents_log_whole_and_a_stream_kept_past_the_end_writes_through(
    server: Server,
) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("console-fork").run_id
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUN_ID": run_id, "RUNSTREAM_CONSOLE": "1"}
    done = subprocess.run([sys.executable, "-c", FORKS], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Logging error" not in done.stderr and "could not be uploaded" not in done.stderr, done.stderr
    assert "logged after the end" in done.stderr
    cli = [sys.executable, "-m", "runstream.cli", "runs", "logs", run_id, "--url", server.target]
    shown = subprocess.run([*cli, "--writer", "parent"], capture_output=True, text=True, timeout=60)
    assert shown.stdout.splitlines() == ["before the fork", "child line", "after the fork"], shown.stdout

"""A user's mistakes at the command line print one line and exit non-zero, never a traceback:
unusable database URLs, an unreachable server, an http:// URL, output piped into `head`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import runstream
from tests.conftest import Server, free_port


def _runstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--postgres-url", "postgresql://postgres:hunter2@127.0.0.1:{port}/x"], "cannot use PostgreSQL at"),
        (["--postgres-url", "htp://nowhere"], "invalid DSN"),
        (["--redis-url", "redis://127.0.0.1:{port}/0"], "cannot use Redis at redis://127.0.0.1:"),
        (["--redis-url", "rdis://nowhere"], "Redis URL must specify"),
    ],
)
def test_an_unusable_database_url_is_one_line(server: Server, tmp_path: Path, flags: list[str], expected: str) -> None:
    given = {"--postgres-url": server.db_url, "--redis-url": server.redis_url}
    given[flags[0]] = flags[1].format(port=free_port())
    args = [a for pair in given.items() for a in pair]
    line = _one_line(_runstream("server", *args, "--data-dir", str(tmp_path), "--port", str(free_port())))
    assert expected in line and flags[0] in line
    assert "hunter2" not in line


def test_an_unreachable_server_is_one_line_naming_it() -> None:
    port = free_port()
    line = _one_line(_runstream("runs", "ls", "--url", f"127.0.0.1:{port}"))
    assert f"127.0.0.1:{port}" in line


def test_an_http_url_says_what_form_it_takes() -> None:
    line = _one_line(_runstream("experiments", "ls", env={"RUNSTREAM_URL": "http://127.0.0.1:50051"}))
    assert "grpcs://host:port" in line


def test_output_piped_into_head_ends_quietly(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run = client.start_run("piped", record_source=False)
        for step in range(50_000):
            run.log_metric("loss", step * 0.5, step=step)
        run.end()
    assert server.wait_points(run.run_id, 50_000) == 50_000
    reader = subprocess.Popen(
        [sys.executable, "-m", "runstream.cli", "metrics", "--url", server.target, run.run_id, "loss", "--all"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline()  # what `head -1` reads; then it goes away
    reader.stdout.close()
    assert reader.wait(60) != 0
    assert reader.stderr.read() == ""

"""The first start on a fresh machine is quiet: a few lines say what listens where, the data
directory and the versions; the embedded PostgreSQL's setup goes to a log file. Ctrl-C (SIGINT
to the whole foreground process group, as a terminal sends it) drains and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import runstream
from tests.conftest import free_port


def test_the_first_start_is_quiet_and_ctrl_c_drains(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    command = [sys.executable, "-m", "runstream.cli", "server", "--data-dir", str(data), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, "--http-port", str(free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, to send it a terminal's Ctrl-C
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "runstream listening on" in line or len(lines) > 50:
                break
        text = "".join(lines)
        assert "runstream listening on" in text, text
        assert len(lines) <= 6, text
        for noise in ("pgserver", "initdb", "Warning", "pg_ctl", "Traceback"):
            assert noise not in text, text
        assert f"data directory {data}" in text and "PostgreSQL 1" in text and "Redis " in text
        assert "initdb" in (data / "logs" / "postgres-setup.log").read_text()

        with runstream.Client(f"127.0.0.1:{port}") as client:
            run = client.start_run("first", record_source=False)
            for step in range(2_000):
                run.log_metric("loss", float(step), step=step)
            run.end()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches every process of the group
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, rest
    assert "loader round failed" not in rest and "Traceback" not in rest, rest
    assert "points=2000" in rest  # the loader drained what was acknowledged, with Redis still up

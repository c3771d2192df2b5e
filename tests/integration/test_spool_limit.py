"""A bounded spool (RUNSTREAM_SPOOL_MAX_BYTES): under a long outage a writer never holds more
than the limit on disk; on_full="block" stops the job (BufferFull) and loses nothing it took,
on_full="drop" drops the oldest unsent batches, counted by flush() and by `runstream sync`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.client import spool
from runstream.errors import BufferFull, PointsDropped
from runstream.settings import SettingError
from tests.conftest import Server, cli_sync

LIMIT = 1 << 20


def _spool_bytes(root: Path) -> int:
    """The segments' bytes (one the writer trims meanwhile counts as gone)."""
    total = 0
    for path in root.rglob("*.seg"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


@pytest.fixture
def bounded(monkeypatch: Any, tmp_path: Path) -> Path:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("RUNSTREAM_SPOOL_MAX_BYTES", "1MiB")
    return tmp_path


def test_block_stops_the_job_at_the_limit_and_loses_nothing_it_took(make_server: Any, bounded: Path) -> None:
    server: Server = make_server()
    with runstream.Client(server.target) as client:
        run = client.start_run(
            "bounded", record_source=False, batch_points=1_000, max_buffer_points=20_000, block_timeout=3
        )
        run.log_metric("loss", 0.0, step=0)
        run.flush()
        server.stop(signal.SIGKILL)
        logged = 1
        with pytest.raises(BufferFull):
            for step in range(1, 2_000_000):
                run.log_metric("loss", step * 0.5, step=step)
                logged += 1
                if step % 1_000 == 0:
                    assert _spool_bytes(bounded) <= LIMIT + 64 * 1024  # the limit, and one batch
        assert logged < 2_000_000, "the job was never stopped"
        assert _spool_bytes(bounded) > LIMIT // 2  # the spool did fill up to its limit
        server.start()
        run.flush(timeout=120)
        run.end()
    assert server.wait_points(run.run_id, logged) == logged
    steps, values = server.stored(run.run_id)[("loss", run.writer_id)]
    np.testing.assert_array_equal(steps, np.arange(logged))
    np.testing.assert_array_equal(values, np.arange(logged) * 0.5)


def test_drop_keeps_the_newest_within_the_limit_and_counts_the_dropped(make_server: Any, bounded: Path) -> None:
    server: Server = make_server()
    logged = 300_000
    with runstream.Client(server.target) as client:
        run = client.start_run(
            "bounded", record_source=False, batch_points=1_000, max_buffer_points=20_000, on_full="drop"
        )
        run.log_metric("loss", 0.0, step=0)
        run.flush()
        server.stop(signal.SIGKILL)
        for step in range(1, logged):
            run.log_metric("loss", step * 0.5, step=step)
            if step % 1_000 == 0:
                assert _spool_bytes(bounded) <= LIMIT + 64 * 1024
        run.writer.persist(30)
        server.start()
        with pytest.raises(PointsDropped) as raised:
            run.flush(timeout=120)
        dropped = raised.value.dropped
        run.flush(timeout=60)  # said once: nothing more is missing
        run.end()
    assert 0 < dropped < logged
    stored = server.wait_points(run.run_id, logged - dropped)
    assert stored == logged - dropped
    steps, _ = server.stored(run.run_id)[("loss", run.writer_id)]
    assert len(np.unique(steps)) == len(steps) and steps[-1] == logged - 1  # the newest are kept


def test_sync_counts_what_a_full_spool_dropped(server: Server, bounded: Path) -> None:
    logged = 300_000
    with runstream.Client("127.0.0.1:1") as client:  # nothing listens: offline needs no server
        run = client.start_run("bounded", record_source=False, offline=True, batch_points=1_000, on_full="drop")
        for step in range(logged):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush()
        assert _spool_bytes(bounded) <= LIMIT + 64 * 1024
        with pytest.raises(PointsDropped) as raised:
            run.end()  # the job hears it too
    (writer,) = spool.spooled_writers(bounded, run.run_id)
    dropped = sum(points for _, _, points in spool.read_dropped(writer.directory))
    assert 0 < dropped < logged and raised.value.dropped == dropped
    done = cli_sync(server, bounded, "--format", "json")
    (row,) = json.loads(done.stdout)
    assert row["run"] == run.run_id and row["dropped"] == dropped and row["points"] == logged - dropped, row
    assert "dropped" in done.stderr and "RUNSTREAM_SPOOL_MAX_BYTES" in done.stderr
    assert server.wait_points(run.run_id, logged - dropped) == logged - dropped
    assert not (bounded / run.run_id).exists()


def test_drop_never_counts_what_the_server_takes(server: Server, bounded: Path) -> None:
    """With the server up the spool is trimmed by acknowledgements: nothing is dropped, however
    fast the job logs past the limit."""
    logged = 300_000
    with runstream.Client(server.target) as client:
        run = client.start_run("bounded", record_source=False, batch_points=1_000, on_full="drop")
        for step in range(logged):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush(timeout=120)  # no PointsDropped
        run.end()
    assert run.writer.dropped_points == 0
    assert server.wait_points(run.run_id, logged) == logged


@pytest.mark.parametrize("limit", ["1", "1000KB", "abc", "-5", "1.5GiB"])
def test_a_spool_limit_that_cannot_be_is_refused_in_one_line(monkeypatch: Any, limit: str) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_MAX_BYTES", limit)
    with pytest.raises(SettingError, match="RUNSTREAM_SPOOL_MAX_BYTES"):
        spool.SpoolWriter(Path("/nonexistent"), "r", "w", 1, "t")


FULL_DISK_JOB = """
import os, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("full", record_source=False, batch_points=1_000)
    for step in range(200_000):
        run.log_metric("loss", step * 0.5, step=step)
    run.flush(timeout=120)
    print(run.run_id, flush=True)
    run.end()
"""


def test_a_full_spool_disk_is_said_and_the_job_goes_on_from_memory(server: Server, tmp_path: Path) -> None:
    """The pending files' blocks are taken before they are mapped: a disk that cannot hold them
    is an error said once, never a SIGBUS in the training thread."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(tiny)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        (tiny / "filler").write_bytes(bytes(3 * 2**20 - 256 * 1024))  # 256 KiB left
        env = {**os.environ, "RUNSTREAM_URL": server.target, "RUNSTREAM_SPOOL_DIR": str(tiny / "spool")}
        done = subprocess.run(
            [sys.executable, "-c", FULL_DISK_JOB], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
        assert "No space left" in done.stderr, done.stderr[-2000:]
        run_id = done.stdout.strip()
        assert server.wait_points(run_id, 200_000) == 200_000
    finally:
        subprocess.run(["umount", str(tiny)], check=False)

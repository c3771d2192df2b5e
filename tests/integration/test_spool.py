"""The disk spool, offline runs and `runstream sync`: a training process SIGKILLed with batches
unacknowledged loses nothing once synced; a job whose server is down from start to end
finishes at its own speed and syncs later under the same run id; auto mode turns a run offline
while the server is away and sends it once the server starts; a sync repeated, or run while the
job still writes, never doubles a point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.client import offline, spool, sync
from runstream.errors import AlreadyExists, InvalidArgument
from tests.conftest import Server, cli_sync, free_port

TRAINING = """
import os, sys, runstream
with runstream.Client(os.environ["RUNSTREAM_URL"]) as client:
    run = client.start_run("spool", record_source=False, batch_points=5_000)
    for step in range(50_000):
        run.log_metric("loss", step * 0.5, step=step)
    run.flush()
    print(run.run_id, flush=True)
    sys.stdin.readline()  # the test has stopped the server
    for step in range(50_000, 100_000):
        run.log_metric("loss", step * 0.5, step=step)
    run.writer.persist(30)
    print("spooled", len(run.writer._sender.unacked), flush=True)
    sys.stdin.readline()  # never comes: SIGKILL
"""


def _steps_once(server: Server, run_id: str, key: str, expected: np.ndarray) -> None:
    steps, values = server.stored(run_id)[(key, next(w for k, w in server.stored(run_id) if k == key))]
    order = np.argsort(steps)
    np.testing.assert_array_equal(steps[order], expected)  # each step exactly once
    np.testing.assert_array_equal(values[order], expected * 0.5)


def _killed_with_unacked_batches(server: Server, spool_dir: Path) -> str:
    """Run TRAINING against `server`, stop the server once the first half is stored, SIGKILL
    the job once the second half is spooled and unacknowledged; the run's id."""
    env = {**os.environ, "RUNSTREAM_URL": server.target, "RUNSTREAM_SPOOL_DIR": str(spool_dir)}
    job = subprocess.Popen(
        [sys.executable, "-c", TRAINING], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert job.stdin is not None and job.stdout is not None
    try:
        run_id = job.stdout.readline().strip()
        assert server.wait_points(run_id, 50_000) == 50_000  # the first half is acked and stored
        server.stop(signal.SIGKILL)
        job.stdin.write("go\n")
        job.stdin.flush()
        spooled = job.stdout.readline().split()
        assert spooled[0] == "spooled" and int(spooled[1]) > 0, spooled  # batches wait unacknowledged
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        job.kill()
    return run_id


def test_a_killed_job_with_unacked_batches_loses_nothing_after_sync(make_server: Any, tmp_path: Path) -> None:
    server = make_server()
    run_id = _killed_with_unacked_batches(server, tmp_path)
    writers = spool.spooled_writers(tmp_path, run_id)
    assert len(writers) == 1 and not spool.is_live(writers[0].directory)

    server.start()
    out = cli_sync(server, tmp_path)
    assert run_id[:8] in out.stdout and "done" in out.stdout, out.stdout
    assert server.wait_points(run_id, 100_000) == 100_000
    _steps_once(server, run_id, "loss", np.arange(100_000))
    assert not (tmp_path / run_id).exists()  # sent: the spool is gone
    again = cli_sync(server, tmp_path)  # nothing left, nothing doubled
    assert "0 points" in again.stdout
    assert server.wait_points(run_id, 100_000) == 100_000


def test_an_online_run_keeps_its_spool_trimmed_and_removes_it_at_the_end(
    server: Server, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 256 * 1024)
    with runstream.Client(server.target) as client:
        run = client.start_run("spool", record_source=False, batch_points=2_000)
        most = 0
        for block in range(40):
            steps = range(block * 5_000, (block + 1) * 5_000)
            for step in steps:
                run.log_metric("loss", step * 0.5, step=step)
            run.flush()
            most = max(most, len(list(run.writer.spool.directory.glob("*.seg"))))  # type: ignore[union-attr]
        directory = run.writer.spool.directory  # type: ignore[union-attr]
        assert directory.is_dir() and most <= 2, most  # acked segments are dropped as the run goes
        run.end()
    assert not directory.exists() and not (tmp_path / run.run_id).exists()
    assert server.wait_points(run.run_id, 200_000) == 200_000


@pytest.mark.parametrize("mode", ["offline", "auto"])
def test_a_job_with_the_server_down_throughout_syncs_later_under_its_run_id(
    make_server: Any, tmp_path: Path, monkeypatch: Any, mode: str
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("RUNSTREAM_MODE", mode)
    server = make_server(start=False)  # nothing listens on its port while the job runs
    model = tmp_path.parent / "model.bin"
    model.write_bytes(os.urandom(300_000))
    steps = np.arange(200_000)
    with runstream.Client(server.target) as client:
        t0 = time.perf_counter()
        run = client.start_run("offline", "no-server", params={"lr": 0.01}, tags={"team": "a"})
        assert run.offline
        for step in steps.tolist():
            run.log_metrics({"loss": step * 0.5, "acc": step * 0.5}, step=step)
        run.log_input("wine", source="s3://data/wine.csv", digest="abc", context="training")
        run.log_artifact(model, "weights")
        run.log_text("hello <b>offline</b>\n", "notes/readme.txt")
        run.set_tag("stage", "done")
        run.end()
        elapsed = time.perf_counter() - t0
    assert elapsed < 20, elapsed  # no waiting on an absent server
    run_id = run.run_id
    assert (tmp_path / run_id / "run.jsonl").is_file()

    server.start()
    out = cli_sync(server, tmp_path)
    assert "yes" in out.stdout  # the run was created by the sync
    assert server.wait_points(run_id, 400_000) == 400_000
    _steps_once(server, run_id, "loss", steps)
    _steps_once(server, run_id, "acc", steps)
    with runstream.Client(server.target) as client:
        got = client.get_run(run_id)
        assert got.name == "no-server" and got.params["lr"] == "0.01"
        assert got.tags["team"] == "a" and got.tags["stage"] == "done"
        assert runstream.wire.status.RUN_STATUS_NAMES[got.status] == "FINISHED"
        assert got.end_time_ms > 0
        paths = {a.path: a.size for a in client.list_artifacts(run_id, "weights")}
        assert paths == {"weights/model.bin": 300_000}
        fetched = client.download_artifacts(run_id, "weights/model.bin", tmp_path.parent / "fetched")
        assert fetched.read_bytes() == model.read_bytes()
        text = client.download_artifacts(run_id, "notes/readme.txt", tmp_path.parent / "fetched")
        assert text.read_text() == "hello <b>offline</b>\n"
    assert not (tmp_path / run_id).exists()
    cli_sync(server, tmp_path)  # again: nothing doubled
    assert server.wait_points(run_id, 400_000) == 400_000
    assert len(server.sql("SELECT 1 FROM run_inputs WHERE run_id = $1", run_id)) == 1


def test_sync_while_an_offline_job_runs_sends_what_is_there_and_never_doubles(
    server: Server, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    with runstream.Client(server.target) as client:
        run = client.start_run("offline", record_source=False, offline=True, batch_points=5_000)
        for step in range(30_000):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush()  # offline: everything logged is in the spool
        first = cli_sync(server, tmp_path)
        assert "live" in first.stdout, first.stdout
        assert server.wait_points(run.run_id, 30_000) == 30_000
        assert (tmp_path / run.run_id).is_dir()  # the job still writes: its spool stays
        for step in range(30_000, 60_000):
            run.log_metric("loss", step * 0.5, step=step)
        run.end()
    cli_sync(server, tmp_path)
    assert server.wait_points(run.run_id, 60_000) == 60_000
    _steps_once(server, run.run_id, "loss", np.arange(60_000))
    assert not (tmp_path / run.run_id).exists()


def test_auto_mode_goes_offline_and_sends_the_run_once_the_server_starts(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("RUNSTREAM_MODE", "auto")
    server = make_server(start=False)
    with runstream.Client(server.target) as client:
        run = client.start_run("auto", record_source=False, params={"lr": 0.1}, batch_points=5_000)
        assert run.offline and run.follower is not None
        for step in range(50_000):
            run.log_metric("loss", step * 0.5, step=step)
        server.start()  # halfway through the job
        for step in range(50_000, 100_000):
            run.log_metric("loss", step * 0.5, step=step)
            if step % 10_000 == 0:
                time.sleep(0.5)
        assert run.follower.online or run.follower.finished.is_set() or _eventually(lambda: run.follower.online)
        run.end()
    assert run.follower.finished.is_set()
    assert server.wait_points(run.run_id, 100_000) == 100_000
    _steps_once(server, run.run_id, "loss", np.arange(100_000))
    with runstream.Client(server.target) as client:
        got = client.get_run(run.run_id)
        assert got.params["lr"] == "0.1" and runstream.wire.status.RUN_STATUS_NAMES[got.status] == "FINISHED"
        assert got.last_heard_ms > 0  # the follower's heartbeats: the run would be CRASHED if the job died
    assert not (tmp_path / run.run_id).exists()


def _eventually(check: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_the_next_start_sends_what_a_killed_job_left(make_server: Any, tmp_path: Path, monkeypatch: Any) -> None:
    server = make_server()
    run_id = _killed_with_unacked_batches(server, tmp_path)
    server.start()
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    monkeypatch.setenv("RUNSTREAM_SYNC_ON_START", "1")
    monkeypatch.setattr(runstream.client.lifecycle, "_orphans_claimed", False)
    with runstream.Client(server.target) as client:
        client.start_run("spool", record_source=False).end()  # the next job on this machine
        assert server.wait_points(run_id, 100_000, timeout=60) == 100_000
    _steps_once(server, run_id, "loss", np.arange(100_000))
    assert _eventually(lambda: not (tmp_path / run_id).exists())


def test_create_run_with_a_client_made_id_is_idempotent(server: Server) -> None:
    run_id = "0f6a4c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
    with runstream.Client(server.target) as client:
        first = client.create_run("client-ids", "mine", {"a": "1"}, run_id=run_id)
        again = client.create_run("client-ids", "mine", {"a": "1"}, run_id=run_id.replace("-", "").upper())
        assert first.run_id == again.run_id == run_id and again.tags["a"] == "1"
        with pytest.raises(AlreadyExists, match="taken by a run of another experiment"):
            client.create_run("another-experiment", run_id=run_id)
        with pytest.raises(InvalidArgument):
            client.create_run("client-ids", run_id="not-a-uuid")
    assert len(server.sql("SELECT 1 FROM runs WHERE run_id = $1", run_id)) == 1


def test_sync_of_a_missing_spool_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "sync", str(tmp_path / "none"), "--url", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "nothing to sync" in done.stderr


OFFLINE_JOB = """
import os, time, runstream
client = runstream.Client("127.0.0.1:1")  # no server at all
run = client.start_run("offline", record_source=False, offline=True, params={"seed": 7})
for step in range(20_000):
    run.log_metric("loss", step * 0.5, step=step)
run.flush()
print(run.run_id, flush=True)
time.sleep(600)
"""


def test_a_job_that_ends_while_sync_reads_its_journal_is_finished_not_crashed(
    server: Server, tmp_path: Path, monkeypatch: Any
) -> None:
    """The race CI once lost: the job recorded its end and let go of its spool between the
    sync's reading of the journal and its look at whether the job lives."""
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    with runstream.Client(server.target) as client:
        run = client.start_run("offline", record_source=False, offline=True, params={"lr": 0.1})
        run.log_metric("loss", 1.0, step=0)
        run.flush()
        read = offline.lines

        def read_then_end(run_dir: Path) -> Any:
            got = read(run_dir)
            if not run.ended:
                run.end()  # what the job's thread does meanwhile
            return got

        monkeypatch.setattr(offline, "lines", read_then_end)
        first = sync.sync_run(client, tmp_path / run.run_id)
        monkeypatch.setattr(offline, "lines", read)
        assert not first.done and (tmp_path / run.run_id).is_dir()  # the end is for the next sync
        assert sync.sync_run(client, tmp_path / run.run_id).done
        got = client.get_run(run.run_id)
    assert runstream.wire.status.RUN_STATUS_NAMES[got.status] == "FINISHED" and got.params["lr"] == "0.1"
    assert not (tmp_path / run.run_id).exists()


def test_an_offline_job_killed_before_its_end_is_synced_as_crashed(server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "RUNSTREAM_SPOOL_DIR": str(tmp_path)}
    job = subprocess.Popen([sys.executable, "-c", OFFLINE_JOB], env=env, stdout=subprocess.PIPE, text=True)
    assert job.stdout is not None
    try:
        run_id = job.stdout.readline().strip()
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    finally:
        job.kill()
    cli_sync(server, tmp_path)
    assert server.wait_points(run_id, 20_000) == 20_000
    _steps_once(server, run_id, "loss", np.arange(20_000))
    with runstream.Client(server.target) as client:
        got = client.get_run(run_id)
    assert runstream.wire.status.RUN_STATUS_NAMES[got.status] == "CRASHED" and got.params["seed"] == "7"
    assert not (tmp_path / run_id).exists()


def test_a_long_outage_spills_to_the_spool_instead_of_blocking_the_job(
    make_server: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))
    server = make_server()
    with runstream.Client(server.target) as client:
        run = client.start_run(
            "spool", record_source=False, batch_points=5_000, max_buffer_points=100_000, block_timeout=3
        )
        for step in range(50_000):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush()
        server.stop(signal.SIGKILL)
        for step in range(50_000, 400_000):  # 3.5 buffers' worth: without the spool, BufferFull
            run.log_metric("loss", step * 0.5, step=step)
        run.writer.persist(30)
        assert run.writer._sender.spilled_points >= 200_000 and run.writer._batcher.buffered_points <= 100_000
        server.start()
        run.flush(timeout=120)  # the spilled batches are read back from the spool and sent
        run.end()
    assert server.wait_points(run.run_id, 400_000) == 400_000
    _steps_once(server, run.run_id, "loss", np.arange(400_000))
    assert not (tmp_path / run.run_id).exists()


def test_a_failing_spool_is_said_once_and_an_online_run_goes_on_from_memory(
    server: Server, tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))

    def full(self: Any, seq: int, data: bytes, points: int = 0) -> None:
        raise OSError(28, "No space left on device")

    with runstream.Client(server.target) as client:
        run = client.start_run("spool", record_source=False, batch_points=5_000)
        monkeypatch.setattr(spool.SpoolWriter, "append", full)
        for step in range(30_000):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush(timeout=60)  # sent from memory: nothing lost, nothing raised
        run.end()
    assert server.wait_points(run.run_id, 30_000) == 30_000
    failures = [r for r in caplog.records if "the spool" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == 1 and "No space left" in failures[0].getMessage()


def test_an_offline_run_whose_spool_fails_says_what_was_lost(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("RUNSTREAM_SPOOL_DIR", str(tmp_path))

    def full(self: Any, seq: int, data: bytes, points: int = 0) -> None:
        raise OSError(28, "No space left on device")

    with runstream.Client(f"127.0.0.1:{free_port()}") as client:
        run = client.start_run("offline", record_source=False, offline=True)
        monkeypatch.setattr(spool.SpoolWriter, "append", full)
        for step in range(1_000):
            run.log_metric("loss", step, step=step)
        with pytest.raises(runstream.RunstreamError, match=r"1,000 points of offline run .* were lost"):
            run.flush(timeout=30)
        run.end()

"""The ingest path end to end: nothing lost, nothing doubled — across processes, resends,
loaders killed mid-transaction, and restarts of the embedded server."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import urllib3

import runstream
from runstream.server.streams.keys import DEFAULT_SHARDS, LOADER_GROUP, Keys
from runstream.wire import batch as wire
from tests.conftest import Server, free_port, raw_log
from tests.workers import KEYS, expected_values, log_points


def test_four_processes_of_250_000_points_land_exactly_once(server: Server) -> None:
    ranks, steps = 4, 25_000  # 25,000 steps x 10 keys = 250,000 points per process
    with runstream.Client(server.target) as client:
        run_id = client.create_run("exactly-once").run_id
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=log_points, args=(server.target, run_id, r, steps)) for r in range(ranks)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(240)
        assert [p.exitcode for p in procs] == [0] * ranks
        assert server.wait_points(run_id, ranks * steps * len(KEYS)) == 1_000_000

        stored = server.stored(run_id)
        assert len(stored) == ranks * len(KEYS)  # one series per key and rank
        for k, key in enumerate(KEYS):
            for r in range(ranks):
                got_steps, got_values = stored[(key, f"rank{r}")]
                np.testing.assert_array_equal(got_steps, np.arange(steps))
                np.testing.assert_array_equal(got_values, expected_values(r, steps, k))
        summaries = {m.key: m for m in client.get_run(run_id).metrics}
        for k, key in enumerate(KEYS):
            total = sum(float(expected_values(r, steps, k).sum()) for r in range(ranks))
            assert summaries[key].count == ranks * steps
            assert sum(float(stored[(key, f"rank{r}")][1].sum()) for r in range(ranks)) == pytest.approx(total)
            assert summaries[key].max_value == expected_values(ranks - 1, steps, k)[-1]
            assert summaries[key].last_step == steps - 1


def test_a_batch_resent_after_its_ack_is_not_doubled(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("resend").run_id
        first = wire.encode(run_id, "w", 1, ["x"], np.zeros(500), np.arange(500), None, np.ones(500))
        second = wire.encode(run_id, "w", 2, ["x"], np.zeros(500), np.arange(500, 1000), None, np.ones(500))
        assert raw_log(client, first).points == 500
        assert raw_log(client, first).points == 500  # a resend right away: maybe in the same loader read
        assert server.wait_points(run_id, 500) == 500
        assert raw_log(client, first).code == 0  # a resend long after the first was loaded
        assert raw_log(client, second).code == 0
        assert server.wait_points(run_id, 1000) == 1000
        steps, values = server.stored(run_id)[("x", "w")]
        np.testing.assert_array_equal(np.sort(steps), np.arange(1000))
        assert values.sum() == 1000
        rows = server.sql("SELECT seq FROM ingested_batches WHERE run_id = $1 ORDER BY seq", run_id)
        assert [r["seq"] for r in rows] == [1, 2]


def _wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("failpoint", ["loader.after_copy", "loader.after_commit"])
def test_a_loader_killed_mid_load_loses_and_doubles_nothing(make_server, failpoint: str) -> None:  # type: ignore[no-untyped-def]
    ingest = make_server("--role", "ingest")
    doomed = make_server("--role", "load", like=ingest, env={"RUNSTREAM_FAILPOINT": f"{failpoint}:600"})
    batches, per_batch = 20, 5_000
    with runstream.Client(ingest.target) as client:
        run_id = client.create_run("crash").run_id
        for seq in range(1, batches + 1):
            steps = np.arange((seq - 1) * per_batch // 2, seq * per_batch // 2).repeat(2)
            data = wire.encode(
                run_id, "w", seq, ["a", "b"], np.tile([0, 1], per_batch // 2), steps, None, steps.astype(np.float64)
            )
            assert raw_log(client, data).code == 0

        if failpoint == "loader.after_copy":
            # The doomed loader has COPYed and sits inside its open transaction.
            _wait_for(
                lambda: (
                    ingest.sql(
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = "
                        "'runstream-load' AND state = 'idle in transaction'"
                    )[0]["n"]
                    == 1
                ),
                what="the loader to pause inside its transaction",
            )
        else:
            _wait_for(
                lambda: ingest.sql("SELECT count(*) AS n FROM ingested_batches")[0]["n"] > 0,
                what="the loader to commit",
            )
        committed_before = ingest.sql("SELECT count(*) AS n FROM ingested_batches")[0]["n"]
        doomed.stop(signal.SIGKILL)
        keys = Keys(ingest.prefix, DEFAULT_SHARDS)
        r = redis.Redis.from_url(ingest.redis_url)
        pending = sum(r.xpending(s, LOADER_GROUP)["pending"] for s in keys.streams())
        assert pending > 0  # the killed loader took entries and never acknowledged them
        if failpoint == "loader.after_copy":
            assert committed_before == 0  # its transaction died with it
        else:
            # Committed but not acknowledged (plus what it had read ahead): a claim must not redo them.
            assert 0 < committed_before <= pending

        rescuer = make_server("--role", "load", like=ingest)
        total = batches * per_batch
        assert ingest.wait_points(run_id, total) == total
        _wait_for(lambda: any("claimed" in line for line in rescuer.output), what="the rescuer to claim entries")
        stored = ingest.stored(run_id)
        for key in ["a", "b"]:
            steps, values = stored[(key, "w")]
            assert len(steps) == total // 2
            np.testing.assert_array_equal(np.sort(steps), np.arange(total // 2))
            np.testing.assert_array_equal(values, steps.astype(np.float64))
        assert sum(r.xpending(s, LOADER_GROUP)["pending"] for s in keys.streams()) == 0
        assert sum(r.xlen(s) for s in keys.streams()) == 0  # loaded entries are trimmed


def test_the_embedded_server_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    args = ["--data-dir", str(tmp_path / "data"), "--http-port", str(free_port())]
    server = Server("", "", "", free_port(), args, env, tmp_path / "data" / "artifacts")
    server.start(timeout=120)
    try:
        assert "at postgresql://" in "".join(server.output) and str(tmp_path) in "".join(server.output)
        with runstream.Client(server.target) as client:
            run = client.start_run("embedded", "kept", params={"lr": 0.1})
            for step in range(1000):
                run.log_metric("loss", 1.0 / (step + 1), step=step)
            run.flush(30)
            run.log_text("kept too", "notes.txt")  # the default artifact store is in the data dir
        assert server.stop() == 0  # SIGTERM: drain into PostgreSQL, stop both services
        assert list((tmp_path / "data" / "redis").glob("appendonly*"))  # Redis keeps its append-only file

        server.output.clear()
        server.start(timeout=120)
        with runstream.Client(server.target) as client:
            got = client.get_run(run.run_id)
            assert got.name == "kept" and dict(got.params) == {"lr": "0.1"}
            assert got.metrics[0].count == 1000 and got.metrics[0].last_step == 999
            notes = client.download_artifacts(run.run_id, "notes.txt", tmp_path / "down")
            assert notes.read_text() == "kept too"
            again = client.attach(run.run_id, writer_id="after-restart")
            again.log_metric("loss", 0.5, step=1000)
            again.end()
            deadline = time.monotonic() + 60
            while client.get_run(run.run_id).metrics[0].count < 1001 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get_run(run.run_id).metrics[0].count == 1001
    finally:
        server.stop()


def test_the_summary_keeps_the_latest_point_when_ranks_share_a_step(server: Server) -> None:
    """Loaded in two transactions, the later-loaded but earlier point must not win."""
    with runstream.Client(server.target) as client:
        run_id = client.create_run("shared-step").run_id
        late = wire.encode(
            run_id, "rank0", 1, ["loss"], np.zeros(2), np.array([1, 2]), np.array([10, 3000]), np.array([1.0, 0.25])
        )
        early = wire.encode(
            run_id, "rank1", 1, ["loss"], np.zeros(2), np.array([1, 2]), np.array([10, 2000]), np.array([1.0, 0.75])
        )
        assert raw_log(client, late).code == 0
        assert server.wait_points(run_id, 2) == 2
        assert raw_log(client, early).code == 0
        assert server.wait_points(run_id, 4) == 4
        loss = {m.key: m for m in client.get_run(run_id).metrics}["loss"]
        assert (loss.last_value, loss.last_step, loss.count) == (0.25, 2, 4)


def _loader_children(pid: int, timeout: float = 30.0) -> list[int]:
    """The spawned loader processes of a role-all server (not its compactor, nor multiprocessing's
    resource tracker): each names itself once it runs (ps shows runstream-load, runstream-compa)."""
    deadline = time.monotonic() + timeout
    while True:
        names = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                names[int(entry)] = name
        if all(n.startswith("runstream-") for n in names.values()) or time.monotonic() > deadline:
            return [p for p, n in names.items() if n == "runstream-load"]
        time.sleep(0.05)


def test_a_loader_process_that_dies_is_replaced_and_its_entries_loaded(server: Server) -> None:
    assert server.proc is not None
    (victim,) = _loader_children(server.proc.pid)
    os.kill(victim, signal.SIGKILL)
    with runstream.Client(server.target) as client:
        run = client.start_run("supervised")
        for step in range(5_000):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 5_000}, step=step)
        run.end()
        assert server.wait_points(run.run_id, 10_000) == 10_000
    _wait_for(lambda: any("starting another" in line for line in server.output), what="the replacement")
    (successor,) = _loader_children(server.proc.pid)
    assert successor != victim
    metrics = urllib3.request("GET", f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).data.decode()
    assert "runstream_loader_restarts_total 1.0" in metrics
    assert server.stop() == 0

"""The SDK against a real server: logging never waits on the network, survives the server
going away and coming back, says what it dropped, and works from forked and spawned ranks."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.errors import DeadlineExceeded
from runstream.wire.proto import tracking_pb2 as pb
from tests.conftest import Server
from tests.workers import KEYS, log_points, log_with_module_api


def test_points_logged_while_the_server_is_down_arrive_once_it_is_back(server: Server, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="runstream.client.writer")
    client = runstream.Client(server.target)
    run = client.start_run("outage", writer_id="w")
    for step in range(100):
        run.log_metrics({"a": step, "b": -step}, step=step)
    run.flush(30)
    server.stop()

    started = time.monotonic()
    for step in range(100, 20_100):
        run.log_metrics({"a": step, "b": -step}, step=step)
    assert time.monotonic() - started < 5  # 20,000 calls with no server: none waits on the network
    with pytest.raises(runstream.DeadlineExceeded, match="not acknowledged"):
        run.flush(0.5)

    server.start()
    run.flush(60)
    run.end()
    assert server.wait_points(run.run_id, 40_200) == 40_200
    steps, values = server.stored(run.run_id)[("a", "w")]
    np.testing.assert_array_equal(np.sort(steps), np.arange(20_100))
    assert values.sum() == sum(range(20_100))
    said = [r.getMessage() for r in caplog.records if r.name == "runstream.client.writer"]
    assert sum("is unreachable" in m for m in said) == 1, said  # said once when it began, not per retry
    assert sum("again after" in m for m in said) == 1, said
    client.close()


def test_a_full_buffer_drops_with_a_count_or_blocks_then_raises(server: Server, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Without the spool: with it, unacked batches leave memory instead (tests/integration/test_spool.py).
    monkeypatch.setenv("RUNSTREAM_SPOOL", "0")
    client = runstream.Client(server.target)
    run_id = client.create_run("full").run_id
    dropping = client.attach(run_id, writer_id="drop", on_full="drop", max_buffer_points=1000)
    blocking = client.attach(run_id, writer_id="block", on_full="block", max_buffer_points=100, block_timeout=0.5)
    server.stop()

    with caplog.at_level(logging.WARNING, logger="runstream.client.writer"):
        for step in range(500):  # 5,000 points into room for 1,000
            dropping.log_metrics(dict.fromkeys(KEYS, 1.0), step=step)
    assert dropping.writer.dropped_points == 4000
    assert any("dropped 10 points so far" in r.getMessage() for r in caplog.records)

    for step in range(10):
        blocking.log_metrics(dict.fromkeys(KEYS, 1.0), step=step)
    started = time.monotonic()
    with pytest.raises(runstream.BufferFull, match="held 100 points"):
        blocking.log_metrics(dict.fromkeys(KEYS, 1.0), step=10)
    assert time.monotonic() - started >= 0.5

    server.start()
    with pytest.raises(runstream.PointsDropped, match=r"4,000 points .* were dropped") as err:
        dropping.flush(60)  # the rest is acknowledged, and flush says what was not
    assert err.value.dropped == 4000
    dropping.flush(60)  # reported once
    dropping.log_metrics(dict.fromkeys(KEYS, 2.0), step=500)
    dropping.end(timeout=60)
    blocking.end(timeout=60)
    assert server.wait_points(run_id, 1110) == 1110
    client.close()


def test_ranks_started_with_fork_and_spawn_log_into_one_run(server: Server) -> None:
    client = runstream.Client(server.target)
    run = client.start_run("ranks", writer_id="parent")
    run.log_metrics(dict.fromkeys(KEYS, 0.5), step=0)  # the parent's writer threads are running when it forks
    run.flush(30)
    procs = [
        multiprocessing.get_context(method).Process(target=log_points, args=(server.target, run.run_id, rank, 1000))
        for rank, method in enumerate(["fork", "spawn", "fork", "spawn"], start=1)
    ]
    os.environ["RUNSTREAM_RUN_ID"], os.environ["RUNSTREAM_URL"] = run.run_id, server.target
    try:
        procs.append(multiprocessing.get_context("spawn").Process(target=log_with_module_api, args=(500,)))
        for p in procs:
            p.start()
    finally:
        del os.environ["RUNSTREAM_RUN_ID"], os.environ["RUNSTREAM_URL"]
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    run.log_metrics(dict.fromkeys(KEYS, 0.25), step=1)  # the parent's writer carries on after the forks
    run.end()
    assert server.wait_points(run.run_id, 20 + 4 * 10_000 + 500) == 40_520
    writers = {w for _, w in server.stored(run.run_id)}
    assert writers == {"parent", "rank1", "rank2", "rank3", "rank4", "module-rank"}
    assert client.get_run(run.run_id).status == pb.RUN_STATUS_FINISHED
    client.close()


def test_statuses_become_typed_exceptions(server: Server) -> None:
    with runstream.Client(server.target) as client:
        with pytest.raises(runstream.RunNotFound, match="does not exist"):
            client.attach("6f1c7c9e-2d55-4b9e-8c43-0c1b8e0c6f00")
        run = client.start_run("typed")
        with pytest.raises(runstream.InvalidArgument, match="metric key 'bad,key'"):
            run.log_metric("bad,key", 1.0)
        run.end()
    with (
        runstream.Client("127.0.0.1:1", timeout=1) as client,
        pytest.raises((runstream.Unavailable, runstream.DeadlineExceeded)),
    ):
        client.create_run("nowhere")


def test_runs_as_context_managers_finish_or_fail(server: Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNSTREAM_URL", server.target)
    monkeypatch.setattr(runstream, "_client", None)  # the module's client is made on first use, from the env
    with runstream.start_run(experiment="ctx", name="ok", params={"lr": 0.1}) as run:
        runstream.log_metrics({"loss": 0.5, "acc": 0.9}, step=0)
        runstream.log_metric("loss", 0.25)  # no step: the writer's own counter goes on (step 1)
        assert runstream.active_run() is run
    assert runstream.active_run() is None
    with pytest.raises(ZeroDivisionError), runstream.start_run(experiment="ctx", name="boom") as failed:
        runstream.log_metric("loss", 1.0, step=0)
        _ = 1 / 0
    with runstream.Client(server.target) as client:
        ok, boom = client.get_run(run.run_id), client.get_run(failed.run_id)
        assert (ok.status, boom.status) == (pb.RUN_STATUS_FINISHED, pb.RUN_STATUS_FAILED)
        assert dict(ok.params) == {"lr": "0.1"}
        assert server.wait_points(run.run_id, 3) == 3
        loss = {m.key: m for m in client.get_run(run.run_id).metrics}["loss"]
        assert (loss.last_step, loss.last_value, loss.count) == (1, 0.25, 2)


def test_leaving_a_run_with_the_server_gone_says_what_was_not_delivered(server: Server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNSTREAM_FLUSH_TIMEOUT", "2")
    client = runstream.Client(server.target)
    started = None
    undelivered = pytest.raises(
        runstream.DeadlineExceeded, match=r"1,000 points of run .* not acknowledged after 2\.0 s"
    )
    with undelivered, client.start_run("gone", writer_id="w", record_source=False) as run:
        server.stop()
        for step in range(500):
            run.log_metrics({"a": step, "b": step}, step=step)
        started = time.monotonic()
    assert started is not None and time.monotonic() - started < 10  # bounded by RUNSTREAM_FLUSH_TIMEOUT
    client.close()


def test_flush_visible_returns_once_everything_is_queryable(server: Server) -> None:
    with runstream.Client(server.target) as client, runstream.QueryClient(server.target) as query:
        run = client.start_run("visible", record_source=False)
        for step in range(60_000):
            run.log_metrics({"loss": float(step), "acc": step / 60_000}, step=step)
        run.flush(visible=True, timeout=120)
        history = query.get_metric_history(run.run_id, "loss", max_points=100_000)  # no polling
        assert history.total_points == 60_000 and history.step.tolist() == list(range(60_000))
        assert {m.key: m.count for m in client.get_run(run.run_id).metrics} == {"loss": 60_000, "acc": 60_000}
        run.end()


def test_flush_visible_says_what_is_not_stored_when_no_loader_runs(make_server: Any) -> None:
    server = make_server("--loaders", "0")
    with runstream.Client(server.target) as client:
        run = client.start_run("no loader", record_source=False)
        for step in range(100):
            run.log_metric("loss", float(step), step=step)
        run.flush()  # acknowledged: in Redis
        with pytest.raises(DeadlineExceeded, match=r"0 of 1 acknowledged batches .* stored after 2.0 s"):
            run.flush(visible=True, timeout=2)

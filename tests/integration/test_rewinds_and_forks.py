"""Rewinds and forks through the real server: a job resumed with `rewind_to` supersedes what
its ranks logged above the step (for hot, compacted and cold data, and for batches of the dead
job that arrive after), every read shows the new points, the old ones stay as a branch; a fork
reads its parent's points up to the fork step and its own after."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

import grpc
import numpy as np
import pytest

import runstream
from runstream.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RunNotFound,
    Unavailable,
)
from runstream.wire import batch as wire
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import query_pb2_grpc
from tests.conftest import Server, raw_log
from tests.integration.test_cold import Cold

RANKS = ("rank0", "rank1")


def _log(client: runstream.Client, run_id: str, steps: range, sign: float, **start: Any) -> None:
    """Every rank logs loss = sign * (step + rank / 10) at `steps`, in a new session of its writer."""
    handles = [client.start_run(record_source=False, writer_id=RANKS[0], **start)]
    handles += [client.attach(handles[0].run_id, writer_id=w) for w in RANKS[1:]]
    assert handles[0].run_id == run_id or not run_id
    for step in steps:
        for r, h in enumerate(handles):
            h.log_metric("loss", sign * (step + r / 10), step=step)
    for h in handles[::-1]:  # the owner last: it marks the run ended
        h.flush(visible=True)
        h.end()


def _expected(segments: list[tuple[range, float]]) -> dict[str, dict[int, float]]:
    """What reads should show per rank: later segments replace earlier ones from their first step on."""
    shown: dict[str, dict[int, float]] = {w: {} for w in RANKS}
    for steps, sign in segments:
        for r, w in enumerate(RANKS):
            shown[w] = {s: v for s, v in shown[w].items() if s < steps.start}
            shown[w].update({s: sign * (s + r / 10) for s in steps})
    return shown


def _history(server: Server, run_id: str, branch: int = 0) -> dict[str, dict[int, float]]:
    with grpc.insecure_channel(server.target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        req = qpb.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=200_000, by_writer=True, branch=branch)
        h = stub.GetMetricHistory(req, timeout=30)
    return {w: dict(zip(p.step, p.value, strict=True)) for w, p in zip(h.writers, h.per_writer, strict=True)}


def _check_reads(server: Server, run_id: str, shown: dict[str, dict[int, float]]) -> None:
    """Histories (per writer, merged, bucketed), whole series, summaries, search, compare and
    MLflow's get-history all show `shown`."""
    assert _history(server, run_id) == shown
    every = sorted((s, v) for w in RANKS for s, v in shown[w].items())
    with runstream.QueryClient(server.target) as q:
        merged = q.get_metric_history(run_id, "loss", max_points=200_000)
        # The latest point by (step, time, value), as summaries choose it (the ranks log a step in
        # the same millisecond, or not).
        latest = max(zip(merged.step.tolist(), merged.timestamp_ms.tolist(), merged.value.tolist(), strict=True))
        assert sorted(zip(merged.step.tolist(), merged.value.tolist(), strict=True)) == every
        buckets = _merged(server, run_id, 0, max_points=7)
        assert buckets.downsampled and sum(buckets.bucket_count) == len(every)
        assert (min(buckets.bucket_min), max(buckets.bucket_max)) == (
            min(v for _, v in every),
            max(v for _, v in every),
        )
        read = sorted(
            (int(s), float(v)) for p in q.read_metrics(run_id, "loss") for s, v in zip(p.step, p.value, strict=True)
        )
        assert read == every
        compared = q.compare_runs([run_id], ["loss"], max_points=100_000).series["loss"][0]
        assert compared.total_points == len(every)
    with runstream.Client(server.target) as client:
        run = client.get_run(run_id)
    (summary,) = run.metrics
    last_step = max(s for s, _ in every)
    assert (summary.count, summary.last_step) == (len(every), last_step)
    assert (summary.last_step, summary.last_timestamp_ms, summary.last_value) == latest
    with runstream.QueryClient(server.target) as q:  # search on the last value finds it by the new one
        found = q.search_runs([run.experiment_id], f"metrics.loss = {summary.last_value!r}", include_deleted=True)
    assert run_id in [r.run_id for r in found.runs]
    assert (summary.min_value, summary.max_value) == (min(v for _, v in every), max(v for _, v in every))
    url = f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key=loss"
    mlflow = json.loads(urllib.request.urlopen(url, timeout=30).read())["metrics"]
    assert sorted((m["step"], m["value"]) for m in mlflow) == every


@pytest.mark.parametrize("state", ["hot", "compacted", "cold"])
def test_a_rewind_from_several_ranks_shows_the_new_points_and_keeps_the_old_as_a_branch(
    make_server: Any, state: str
) -> None:
    if state == "cold":
        cold = Cold(make_server, "local", None)
        server = cold.server
    else:
        server = make_server("--compact-delay", "0") if state == "compacted" else make_server()
    with runstream.Client(server.target) as client:
        run_id = client.create_run("rewinds").run_id
        _log(client, run_id, range(0, 3000), 1.0, resume=run_id)
        if state == "compacted":
            server.wait_compacted(run_id)
        elif state == "cold":
            mover = cold.mover()
            cold.wait_cold(run_id)
            mover.stop()
        _log(client, run_id, range(1201, 1801), -1.0, resume=run_id, rewind_to=1200)
        run = client.get_run(run_id)
    shown = _expected([(range(0, 3000), 1.0), (range(1201, 1801), -1.0)])
    _check_reads(server, run_id, shown)
    (rewind,) = run.rewinds
    assert (rewind.number, rewind.step, rewind.superseded_points) == (1, 1200, 2 * 1799)
    old = _history(server, run_id, branch=1)
    assert old == {w: {s: s + r / 10 for s in range(1201, 3000)} for r, w in enumerate(RANKS)}

    # A batch of the first job's session that arrives now (its spool, synced late) is superseded
    # above the step and shown at or below it.
    with runstream.Client(server.target) as client:
        data = wire.encode(run_id, "rank0", 10**6, ["loss"], np.zeros(4), [-5, -3, 2500, 2600], None, [7.0] * 4, 1)
        assert raw_log(client, data).code == 0
    shown["rank0"] = {-5: 7.0, -3: 7.0, **shown["rank0"]}
    assert server.wait_points(run_id, sum(map(len, shown.values()))) == sum(map(len, shown.values()))
    _check_reads(server, run_id, shown)
    with runstream.QueryClient(server.target) as q:
        branch = q.get_metric_history(run_id, "loss", writer="rank0", branch=1, max_points=200_000)
    assert branch.total_points == 1799 + 2  # the late points above the step joined the branch
    assert sorted(branch.value[branch.step == 2500].tolist()) == [7.0, 2500.0]


def test_three_rewinds_each_supersede_what_came_before_them(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.start_run("rewinds", record_source=False, writer_id=RANKS[0]).run_id
        segments = [(range(0, 1000), 1.0)]
        _log(client, run_id, segments[0][0], 1.0, resume=run_id)
        for rewind_to, stop, sign in ((800, 1500, 2.0), (300, 600, 3.0), (500, 2000, 4.0)):
            _log(client, run_id, range(rewind_to + 1, stop), sign, resume=run_id, rewind_to=rewind_to)
            segments.append((range(rewind_to + 1, stop), sign))
        run = client.get_run(run_id)
    _check_reads(server, run_id, _expected(segments))
    assert [(r.number, r.step) for r in run.rewinds] == [(1, 800), (2, 300), (3, 500)]
    # Each branch holds what its rewind superseded: nothing is lost.
    stored = sum(p.total_points for b in (1, 2, 3) for p in [_merged(server, run_id, b)])
    shown = sum(map(len, _expected(segments).values()))
    logged = 2 * sum(len(steps) for steps, _ in segments)
    assert stored + shown == logged


def _merged(server: Server, run_id: str, branch: int, max_points: int = 200_000) -> Any:
    with grpc.insecure_channel(server.target) as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        req = qpb.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=max_points, branch=branch)
        return stub.GetMetricHistory(req, timeout=30)


def test_rewinds_that_cannot_be_are_refused_and_change_nothing(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run = client.start_run("rewinds", record_source=False)
        run.log_metric("loss", 1.0, step=5)
        run.end()
        with pytest.raises(ValueError, match="resume"):
            client.start_run("rewinds", record_source=False, rewind_to=3)
        with pytest.raises(RunNotFound):
            client.rewind_run("7" * 32, 3)
        with pytest.raises(InvalidArgument):
            client.rewind_run("not-a-run", 3)
        client.delete_run(run.run_id)
        before = server.fingerprint()
        with pytest.raises(FailedPrecondition, match="deleted"):
            client.rewind_run(run.run_id, 3)
        assert server.fingerprint() == before
        with runstream.QueryClient(server.target) as q:  # nothing superseded there: no points
            assert q.get_metric_history(run.run_id, "loss", branch=4).total_points == 0
            with pytest.raises(NotFound):
                q.get_metric_history("7" * 32, "loss", branch=1)
        with runstream.QueryClient(server.target) as q, pytest.raises(InvalidArgument, match="branch"):
            q.get_metric_history(run.run_id, "loss", branch=-1)


@pytest.mark.parametrize("state", ["hot", "cold"])
def test_a_fork_reads_its_parents_points_up_to_the_step_and_its_own_after(make_server: Any, state: str) -> None:
    if state == "cold":
        cold = Cold(make_server, "local", None)
        server = cold.server
    else:
        server = make_server()
    with runstream.Client(server.target) as client:
        parent = client.start_run("forks", record_source=False, writer_id=RANKS[0], params={"lr": 0.1}, tags={"t": "p"})
        parent_id = parent.run_id
        parent.end()
        _log(client, parent_id, range(0, 2000), 1.0, resume=parent_id)
        if state == "cold":
            mover = cold.mover()
            cold.wait_cold(parent_id)
            mover.stop()
        fork = client.fork(parent_id, 700, record_source=False, writer_id=RANKS[0], params={"lr": 0.01})
        fork_id = fork.run_id
        fork.end()
        _log(client, fork_id, range(701, 1000), -1.0, resume=fork_id)
        with pytest.raises(InvalidArgument, match="parent's experiment"):
            client.create_run("other experiment", fork_of=fork_id, fork_step=900)
        grandchild = client.fork(fork_id, 900, "grandchild", record_source=False, writer_id=RANKS[0])
        grand_id = grandchild.run_id
        grandchild.end()
        _log(client, grand_id, range(901, 950), 5.0, resume=grand_id)
        got_parent, got_fork, got_grand = (client.get_run(r) for r in (parent_id, fork_id, grand_id))
    _check_reads(server, parent_id, _expected([(range(0, 2000), 1.0)]))
    _check_reads(server, fork_id, _expected([(range(0, 701), 1.0), (range(701, 1000), -1.0)]))
    _check_reads(server, grand_id, _expected([(range(0, 701), 1.0), (range(701, 901), -1.0), (range(901, 950), 5.0)]))
    assert (got_fork.parent_run_id, got_fork.fork_step) == (parent_id, 700)
    assert list(got_parent.fork_ids) == [fork_id] and list(got_fork.fork_ids) == [grand_id]
    assert got_fork.params == {"lr": "0.01"} and got_fork.tags["t"] == "p"
    assert got_grand.experiment_id == got_fork.experiment_id == got_parent.experiment_id
    # No point was copied: the fork stores only its own.
    own = server.sql(
        "SELECT count(DISTINCT s.series_id) AS series, sum(c.n) AS points FROM metric_chunks c "
        "JOIN metric_series s USING (series_id) WHERE s.run_id = $1",
        fork_id,
    )[0]
    assert (own["series"], own["points"]) == (2, 2 * 299)

    with runstream.Client(server.target) as client:
        with pytest.raises(FailedPrecondition, match="forks made above step 600"):
            client.rewind_run(parent_id, 600)
        client.delete_run(parent_id)  # forks stay readable; a purge is refused while they exist
        purged = client.admin.purge_runs(run_ids=[parent_id])
    assert "forked from it" in str(purged)
    _check_reads(server, fork_id, _expected([(range(0, 701), 1.0), (range(701, 1000), -1.0)]))


def test_forks_that_cannot_be_are_refused_and_change_nothing(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run = client.start_run("forks", record_source=False)
        run.end()
        before = server.fingerprint()
        with pytest.raises(RunNotFound):
            client.fork("7" * 32, 10, record_source=False)
        with pytest.raises(InvalidArgument):
            client.fork("nope", 10, record_source=False)
        client.delete_run(run.run_id)
        before = server.fingerprint()
        with pytest.raises(FailedPrecondition, match="deleted"):
            client.fork(run.run_id, 10, record_source=False)
        assert server.fingerprint() == before


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def test_rewinds_and_forks_at_the_ends_of_the_step_range(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run = client.start_run("edges", record_source=False, writer_id="rank0")
        for step in range(-3, 4):
            run.log_metric("loss", float(step), step=step)
        run.end()
        everything = client.fork(run.run_id, INT64_MAX, record_source=False)
        everything.end()
        nothing = client.fork(run.run_id, INT64_MIN, record_source=False)
        nothing.end()
        # The parent's points may be committed after the forks were made: the forks count them then.
        assert server.wait_points(everything.run_id, 7) == 7
        assert [(m.count, m.last_step) for m in client.get_run(everything.run_id).metrics] == [(7, 3)]
        assert list(client.get_run(nothing.run_id).metrics) == []
        with runstream.QueryClient(server.target) as q:
            assert q.get_metric_history(everything.run_id, "loss").step.tolist() == list(range(-3, 4))
            assert q.get_metric_history(nothing.run_id, "loss").total_points == 0
        client.rewind_run(run.run_id, INT64_MAX)
        assert client.get_run(run.run_id).metrics[0].count == 7
        with pytest.raises(FailedPrecondition, match="forks made above"):
            client.rewind_run(run.run_id, 0)
        client.delete_run(everything.run_id)  # a deleted fork still holds its parent's points
        with pytest.raises(FailedPrecondition, match="forks made above"):
            client.rewind_run(run.run_id, 0)


def test_forks_nest_to_a_bounded_depth(server: Server) -> None:
    with runstream.Client(server.target) as client:
        parent = client.start_run("deep", record_source=False)
        parent.log_metric("loss", 1.0, step=0)
        parent.end()
        chain = [parent.run_id]
        with pytest.raises(FailedPrecondition, match="forks nest at most 64 deep"):
            for _ in range(64):
                chain.append(client.create_run("deep", fork_of=chain[-1], fork_step=10).run_id)
        assert len(chain) == 64  # 63 forks below the first run
        assert server.wait_points(chain[-1], 1) == 1  # the first run's point, counted down the line
        with runstream.QueryClient(server.target) as q:
            assert q.get_metric_history(chain[-1], "loss").step.tolist() == [0]


def test_a_fork_rewound_below_its_fork_step_reads_its_parent_only_up_to_there(server: Server) -> None:
    with runstream.Client(server.target) as client:
        parent = client.create_run("forks").run_id
        _log(client, parent, range(0, 1000), 1.0, resume=parent)
        fork = client.fork(parent, 700, record_source=False, writer_id=RANKS[0])
        fork_id = fork.run_id
        fork.end()
        _log(client, fork_id, range(701, 800), -1.0, resume=fork_id)
        _log(client, fork_id, range(501, 600), 2.0, resume=fork_id, rewind_to=500)
        got = client.get_run(fork_id)
    assert (got.parent_run_id, got.fork_step) == (parent, 500)
    _check_reads(server, fork_id, _expected([(range(0, 501), 1.0), (range(501, 600), 2.0)]))
    assert _history(server, fork_id, branch=1) == {
        w: {s: -(s + r / 10) for s in range(701, 800)} for r, w in enumerate(RANKS)
    }


def test_live_tails_read_a_forks_lineage_and_end_when_the_run_is_rewound(server: Server) -> None:
    with runstream.Client(server.target) as client:
        parent = client.create_run("tails").run_id
        _log(client, parent, range(0, 100), 1.0, resume=parent)
        fork = client.fork(parent, 50, record_source=False, writer_id=RANKS[0])
        fork.end()
        _log(client, fork.run_id, range(51, 60), -1.0, resume=fork.run_id)
    with runstream.QueryClient(server.target, timeout=60) as q:
        got: dict[str, list[int]] = {w: [] for w in RANKS}
        for piece in q.tail_metrics([fork.run_id], ["loss"], from_step=0):
            got[piece.writer] += piece.step.tolist()
            if sum(map(len, got.values())) >= 2 * 60:
                break
        assert got == {w: list(range(0, 60)) for w in RANKS}  # the parent's up to the fork step, then its own

        with runstream.Client(server.target) as client:
            client.update_run(parent, status="RUNNING")  # a tail of an ended run ends by itself
        tail = q.tail_metrics([parent], ["loss"], from_step=95)
        first = next(iter(tail))
        assert first.step.tolist()[0] == 95
        with runstream.Client(server.target) as client:
            client.rewind_run(parent, 60)
        with pytest.raises(FailedPrecondition, match="rewound to step 60"):
            for _ in tail:
                pass


def test_forks_and_rewinds_whose_connections_are_killed_happen_whole_or_not_at_all(server: Server) -> None:
    """PostgreSQL backends of the server's database are killed every 0-50 ms while forks are made
    (client-made ids, retried) and the parent is rewound: each fork that exists counts exactly
    its parent's points up to its step, and the parent's current points plus its branches are
    everything it logged."""
    n = 30_000
    with runstream.Client(server.target) as client:
        parent = client.start_run("faults", record_source=False, writer_id="w")
        for step in range(n):
            parent.log_metrics({"loss": float(step), "acc": -float(step)}, step=step)
        parent.flush(visible=True)
        parent.end()
    database = server.db_url.rsplit("/", 1)[1].split("?")[0]
    stop = threading.Event()
    kills = [0]

    def killer() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            time.sleep(rng.uniform(0.0, 0.05))
            kills[0] += server.sql(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid() AND state <> 'idle'",
                database,
            )[0]["n"]

    def retried(call: Any) -> Any:
        for _ in range(50):
            try:
                return call()
            except (Unavailable, DeadlineExceeded):
                time.sleep(0.05)
        raise AssertionError("never got through")

    rng = random.Random(3)
    forks: dict[str, int] = {}
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        with runstream.Client(server.target, timeout=30) as client:
            for _ in range(30):
                fork_id, step = str(uuid.uuid4()), rng.randrange(n - 10_000)
                retried(lambda f=fork_id, s=step: client.create_run("", run_id=f, fork_of=parent.run_id, fork_step=s))
                forks[fork_id] = step
            rewinds = [n - 1 - 1000 * i for i in range(1, 6)]
            for step in rewinds:
                retried(lambda s=step: client.rewind_run(parent.run_id, s))
    finally:
        stop.set()
        thread.join()
    assert kills[0] > 0
    with runstream.Client(server.target) as client, runstream.QueryClient(server.target) as q:
        for fork_id, step in forks.items():
            got = sorted((m.key, m.count, m.last_step) for m in client.get_run(fork_id).metrics)
            assert got == [("acc", step + 1, step), ("loss", step + 1, step)], (fork_id, step)
        run = client.get_run(parent.run_id)
        current = q.get_metric_history(parent.run_id, "loss", max_points=10).total_points
        branches = sum(
            q.get_metric_history(parent.run_id, "loss", branch=r.number, max_points=10).total_points
            for r in run.rewinds
        )
    lowest = min(r.step for r in run.rewinds)
    assert lowest == min(rewinds) and current == lowest + 1 and current + branches == n
    assert sorted((m.key, m.count) for m in run.metrics) == [("acc", lowest + 1), ("loss", lowest + 1)]
    assert not [line for line in server.output if "Traceback" in line]


def test_the_cli_shows_rewinds_and_lineage_and_reads_a_branch(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("cli").run_id
        _log(client, run_id, range(0, 100), 1.0, resume=run_id)
        _log(client, run_id, range(41, 50), -1.0, resume=run_id, rewind_to=40)
        fork = client.fork(run_id, 30, record_source=False)
        fork.end()

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "runstream.cli", *args, "--url", server.target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    shown = cli("runs", "show", run_id)
    assert f"forks    {fork.run_id}" in shown
    (row,) = [line for line in shown.splitlines() if line.lstrip().startswith("1 ")]
    assert "40" in row and f"{2 * 59:,}" in row  # rewind 1: to step 40, 118 points superseded
    assert f"forked from {run_id} at step 30" in cli("runs", "show", fork.run_id)
    branch = json.loads(cli("metrics", run_id, "loss", "--branch", "1", "--format", "json"))
    assert branch["total_points"] == 2 * 59 and {r["step"] for r in branch["rows"]} == set(range(41, 100))

"""Reads from PostgreSQL streaming replicas (--postgres-read-url), on a real primary and replica
(tests/replica.py): queries go to the replica; a client reads its own writes even from a
replica that has stopped replaying (it is waited for, then the primary answers), while a
client that wrote nothing may read the replica's older state; a replica that is down costs
nothing but a fallback to the primary; a hostile read-after position is refused."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import runstream
from runstream.client import channel
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import query_pb2_grpc
from tests.replica import Replication, RoundRobinProxy

WAIT_S = 0.5


@pytest.fixture(scope="module")
def replication() -> Iterator[Replication]:
    made = Replication(Path(tempfile.mkdtemp(prefix="rs-replica-")))
    try:
        yield made.start()
    finally:
        made.stop()


@pytest.fixture(autouse=True)
def _fresh_position() -> Iterator[None]:
    """Each test starts as a process that has written nothing yet."""
    channel._CallMetadata.position = 0
    yield
    channel._CallMetadata.position = 0


def _on_replica(make_server: Any, replication: Replication, *extra: str) -> Any:
    return make_server(
        "--postgres-read-url", replication.replica_url, "--replica-wait", str(WAIT_S), *extra,
        database=replication.primary_url,
    )  # fmt: skip


def _reads(server: Any) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r'^runstream_reads_total\{on="(\w+)"\} ([0-9.e+]+)$', text, re.M)}


def _logged(server: Any, steps: int) -> str:
    with runstream.Client(server.target) as client:
        run = client.start_run("replicas", record_source=False)
        for step in range(steps):
            run.log_metric("loss", step * 0.5, step=step)
        run.flush(visible=True)
        run.end()
        return run.run_id


def _history_points(server: Any, run_id: str) -> int:
    with runstream.QueryClient(server.target) as query:
        return query.get_metric_history(run_id, "loss", max_points=100_000).total_points


def test_queries_read_the_replica(make_server: Any, replication: Replication) -> None:
    server = _on_replica(make_server, replication)
    run_id = _logged(server, 1_000)
    replication.wait_replayed()
    before = _reads(server)
    for _ in range(5):
        assert _history_points(server, run_id) == 1_000
    after = _reads(server)
    assert after.get("replica", 0) - before.get("replica", 0) >= 5
    assert after.get("primary", 0) == before.get("primary", 0)
    assert any("runstream listening on" in line for line in server.output)


def test_a_client_reads_its_writes_from_a_replica_that_stopped_replaying(
    make_server: Any, replication: Replication
) -> None:
    """The writes go through one process (role all), the reads through a --role query process
    that served none of them: only the caller's read-after position tells it what to wait for."""
    server = _on_replica(make_server, replication)
    query = _on_replica(make_server, replication, "--role", "query")
    earlier = _logged(server, 100)  # a run the replica has
    replication.wait_replayed()
    replication.pause()
    try:
        run_id = _logged(server, 2_000)  # flush(visible=True): stored on the primary, not replayed
        assert channel._CallMetadata.position > 0  # the write calls told this process where its writes are
        before = _reads(query)
        started = time.monotonic()
        assert _history_points(query, run_id) == 2_000  # its own writes, from the primary after the wait
        assert time.monotonic() - started >= WAIT_S * 0.9
        assert _reads(query).get("primary", 0) > before.get("primary", 0)
        assert _history_points(server, run_id) == 2_000  # the process that served the writes knows them too
        # Another process, which wrote nothing, reads the replica as it is: the run is not there
        # yet (a lag it accepts), while what the replica has replayed is served.
        assert _other_reads(query, run_id, earlier) == ["not-yet", "100"]
    finally:
        replication.resume()
    replication.wait_replayed()
    assert _other_reads(query, run_id, earlier) == ["2000", "100"]


def _other_reads(server: Any, run_id: str, earlier: str) -> list[str]:
    other = subprocess.run(
        [sys.executable, "-c", _OTHER, server.target, run_id, earlier], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr
    return other.stdout.split()


_OTHER = """
import sys, runstream
target, run_id, earlier = sys.argv[1:]
with runstream.QueryClient(target) as query:
    try:
        print(query.get_metric_history(run_id, "loss", max_points=100_000).total_points)
    except runstream.NotFound:
        print("not-yet")
    print(query.get_metric_history(earlier, "loss", max_points=100_000).total_points)
"""


def test_a_replica_that_is_down_leaves_reads_to_the_primary(make_server: Any, replication: Replication) -> None:
    server = _on_replica(make_server, replication)
    run_id = _logged(server, 500)
    replication.wait_replayed()
    replication.stop_replica()
    try:
        before = _reads(server)
        for _ in range(3):
            assert _history_points(server, run_id) == 500
        assert _reads(server).get("primary", 0) - before.get("primary", 0) == 3
        assert any("cannot be read" in line for line in server.output)
    finally:
        replication.start_replica()
    time.sleep(5.5)  # the replica is tried again once DOWN_S has passed
    before = _reads(server)
    assert _history_points(server, run_id) == 500
    assert _reads(server).get("replica", 0) > before.get("replica", 0)


def test_a_read_after_position_that_is_no_wal_position_is_refused(make_server: Any, replication: Replication) -> None:
    server = _on_replica(make_server, replication)
    with grpc.insecure_channel(server.target) as chan:
        stub = query_pb2_grpc.QueryServiceStub(chan)
        for position in ["-1", "abc", "1" * 30, str(2**64), ""]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListExperiments(
                    qpb.ListExperimentsQuery(), metadata=(("runstream-read-after", position),), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, position
            assert "WAL position" in (refused.value.details() or "")
        assert stub.ListExperiments(qpb.ListExperimentsQuery(), metadata=(("runstream-read-after", "1"),), timeout=10)


def test_reads_cut_short_while_waiting_leave_the_replica_pool_whole(make_server: Any, replication: Replication) -> None:
    """Callers that give up while their read waits for a lagging replica (more of them than the
    pool has connections) leave nothing behind: once the replica catches up, reads are fast and
    on the replica again."""
    server = _on_replica(make_server, replication)
    query = _on_replica(make_server, replication, "--role", "query", "--replica-wait", "5")
    replication.wait_replayed()
    replication.pause()
    try:
        run_id = _logged(server, 100)
        with grpc.insecure_channel(query.target) as chan:
            stub = query_pb2_grpc.QueryServiceStub(chan)
            position = (("runstream-read-after", str(channel._CallMetadata.position)),)
            for _ in range(12):  # the pool holds 8
                with pytest.raises(grpc.RpcError) as gave_up:
                    stub.GetMetricHistory(
                        qpb.GetMetricHistoryRequest(run_id=run_id, key="loss"), metadata=position, timeout=0.3
                    )
                assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        replication.resume()
    replication.wait_replayed()
    time.sleep(0.5)  # the server notices the cancellations
    before = _reads(query)
    started = time.monotonic()
    assert _history_points(query, run_id) == 100
    assert time.monotonic() - started < 1.0
    assert _reads(query).get("replica", 0) > before.get("replica", 0)


def test_a_position_beyond_the_primarys_makes_no_read_wait(make_server: Any, replication: Replication) -> None:
    server = _on_replica(make_server, replication, "--replica-wait", "5")
    run_id = _logged(server, 10)
    replication.wait_replayed()
    with grpc.insecure_channel(server.target) as chan:
        stub = query_pb2_grpc.QueryServiceStub(chan)
        started = time.monotonic()
        for _ in range(5):
            reply = stub.GetMetricHistory(
                qpb.GetMetricHistoryRequest(run_id=run_id, key="loss"),
                metadata=(("runstream-read-after", str(2**64 - 1)),),
                timeout=10,
            )
            assert reply.total_points == 10
    assert time.monotonic() - started < 2.0  # not 5 x 5 s


def test_a_read_url_that_is_no_replica_of_this_database_is_refused_at_start(
    make_server: Any, replication: Replication
) -> None:
    other = replication.url(replication.replica_port, "postgres")  # the replica's server, another database
    server = make_server("--postgres-read-url", other, database=replication.primary_url, start=False)
    with pytest.raises(RuntimeError, match="is not a replica of this deployment's database"):
        server.start()
    bad = make_server(
        "--postgres-read-url", "postgresql://127.0.0.1:notaport/x", database=replication.primary_url, start=False
    )
    with pytest.raises(RuntimeError, match="is not a PostgreSQL URL"):
        bad.start()


def test_behind_one_url_that_balances_two_replicas_a_writer_reads_its_writes(
    make_server: Any, replication: Replication
) -> None:
    """One read URL whose connections reach either of two replicas, one of them paused: each
    read asks its own connection how far it has replayed, so none serves the writer stale data."""
    second = replication.add_replica()
    proxy = RoundRobinProxy([replication.replica_port, second])
    try:
        replication.wait_replayed()
        server = make_server(
            "--postgres-read-url", replication.url(proxy.port, replication.database), "--replica-wait", str(WAIT_S),
            database=replication.primary_url,
        )  # fmt: skip
        replication.pause(second)
        run_id = _logged(server, 100)
        assert all(_history_points(server, run_id) == 100 for _ in range(20))
        assert _reads(server).get("replica", 0) >= 1  # the replica that keeps up still serves some
    finally:
        replication.resume(second)
        replication.remove_replica(second)
        proxy.close()

"""Writer sessions (epochs): a rank restarted under the same writer_id loses nothing (its
batches once counted as resends of the first process's), and a seq reused with other points
is refused at once where ingest can know it, and set aside with the reason where only the
loader can — never silently dropped."""

from __future__ import annotations

import uuid

import grpc
import pytest
import redis

import runstream
from runstream.server.streams.keys import FIELD_BATCH, FIELD_RECEIVED_MS, Keys
from runstream.wire import batch as wire
from tests.conftest import raw_log
from tests.integration.test_dead_letters import _metric

STEPS = 3_000


def _log(target: str, run_id: str, first: int) -> None:
    with runstream.Client(target) as client:
        run = client.attach(run_id, writer_id="rank0")  # the same writer id every time
        for step in range(first, first + STEPS):
            run.log_metrics({"loss": float(step)}, step=step)
        run.end()


def test_a_rank_restarted_under_the_same_writer_id_loses_nothing(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("epochs", "restarts").run_id
    for attempt in range(3):  # the job crashed twice and came back as rank0
        _log(server.target, run_id, attempt * STEPS)
    assert server.wait_points(run_id, 3 * STEPS) == 3 * STEPS
    steps, values = server.stored(run_id)[("loss", "rank0")]
    assert steps.tolist() == list(range(3 * STEPS)) and values.tolist() == [float(s) for s in range(3 * STEPS)]
    epochs = server.sql("SELECT DISTINCT epoch FROM ingested_batches ORDER BY 1")
    assert [r["epoch"] for r in epochs] == [1, 2, 3]


def test_each_session_gets_the_next_epoch(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("epochs", "numbered").run_id
        assert [client.open_writer(run_id, "w") for _ in range(3)] == [1, 2, 3]
        assert client.open_writer(run_id, "other") == 1
        with pytest.raises(runstream.RunNotFound):
            client.open_writer(str(uuid.uuid4()), "w")
        with pytest.raises(runstream.InvalidArgument, match="writer_id"):
            client.open_writer(run_id, "bad\x00")


def _points(run_id: str, seq: int, value: float, epoch: int) -> bytes:
    return wire.encode(run_id, "w", seq, ["loss"], [0, 0], [seq * 10, seq * 10 + 1], [0, 0], [value, value], epoch)


def test_a_seq_reused_with_other_points_is_refused_at_once(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("epochs", "reused").run_id
        epoch = client.open_writer(run_id, "w")
        assert raw_log(client, _points(run_id, 1, 1.0, epoch)).code == 0
        assert raw_log(client, _points(run_id, 1, 1.0, epoch)).code == 0  # a resend: the same bytes
        with pytest.raises(grpc.RpcError) as err:
            raw_log(client, _points(run_id, 1, 2.0, epoch))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "writer 'w' sent seq 1" in err.value.details() and "other points" in err.value.details()
        assert raw_log(client, _points(run_id, 1, 2.0, epoch + 1)).code == 0  # another session: fine
    assert server.wait_points(run_id, 4) == 4
    assert sorted(server.stored(run_id)[("loss", "w")][1].tolist()) == [1.0, 1.0, 2.0, 2.0]


def test_a_reuse_only_the_loader_can_see_is_set_aside_with_the_reason(server) -> None:
    """The first batch went through another ingester (here: written into the stream), so the
    ingest that takes the second never saw it."""
    with runstream.Client(server.target) as client:
        run_id = client.create_run("epochs", "late").run_id
        epoch = client.open_writer(run_id, "w")
        r = redis.Redis.from_url(server.redis_url)
        keys = Keys(server.prefix)
        r.xadd(keys.stream_of(run_id), {FIELD_BATCH: _points(run_id, 7, 1.0, epoch), FIELD_RECEIVED_MS: 0})
        assert server.wait_points(run_id, 2) == 2
        assert raw_log(client, _points(run_id, 7, 5.0, epoch)).code == 0  # this ingester cannot know
        assert raw_log(client, _points(run_id, 8, 3.0, epoch)).code == 0
        assert server.wait_points(run_id, 4) == 4
        letters = client.admin.dead_letters()
    assert [d.seq for d in letters] == [7]
    assert "seq 7 of writer 'w' (epoch 1) was stored before with other points" in letters[0].reason
    assert server.stored(run_id)[("loss", "w")][1].tolist() == [1.0, 1.0, 3.0, 3.0]
    assert _metric(server, "runstream_entries_dead_lettered_total") == 1

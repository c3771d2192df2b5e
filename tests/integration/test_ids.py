"""One run, one spelling: a run id in upper case or without hyphens reaches the same run through
every service and stores every point (it once lost them all as 'duplicates'); braces,
`urn:uuid:`, `²` and out-of-range numbers are INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest
import redis

import runstream
from runstream.server.streams.keys import FIELD_BATCH, FIELD_RECEIVED_MS, Keys
from runstream.wire import batch as wire
from runstream.wire.proto import query_pb2 as qpb
from runstream.wire.proto import query_pb2_grpc as qpb_grpc
from runstream.wire.proto import tracking_pb2 as pb
from runstream.wire.proto import tracking_pb2_grpc as pb_grpc

STEPS = 500


def spellings(run_id: str) -> list[str]:
    return [run_id.upper(), run_id.replace("-", ""), run_id.replace("-", "").upper()]


def _log_as(target: str, run_id: str, writer: str) -> None:
    with runstream.Client(target) as client:
        run = client.attach(run_id, writer_id=writer)
        for step in range(STEPS):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / STEPS}, step=step)
        run.flush(30)


def test_every_spelling_of_a_run_id_stores_every_point_under_the_one_run(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("ids", "spellings").run_id
    writers = {}
    for i, spelled in enumerate(spellings(run_id)):
        writers[f"w{i}"] = spelled
        _log_as(server.target, spelled, f"w{i}")
    expected = len(writers) * 2 * STEPS
    assert server.wait_points(run_id, expected) == expected
    stored = server.stored(run_id)
    assert sorted(stored) == sorted((key, w) for w in writers for key in ("acc", "loss"))
    for (key, _writer), (steps, values) in stored.items():
        assert steps.tolist() == list(range(STEPS))
        want = [1.0 / (s + 1) for s in range(STEPS)] if key == "loss" else [s / STEPS for s in range(STEPS)]
        assert values.tolist() == want
    assert server.sql("SELECT count(*) AS n FROM runs")[0]["n"] == 1
    assert {r["run_id"] for r in server.sql("SELECT DISTINCT run_id::text FROM ingested_batches")} == {run_id}


def test_every_service_answers_for_the_run_in_any_spelling(server, tmp_path) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("ids", "services").run_id
        _log_as(server.target, run_id, "w")
        assert server.wait_points(run_id, 2 * STEPS) == 2 * STEPS
        query = runstream.QueryClient(server.target)
        (tmp_path / "model.txt").write_text("weights")
        for spelled in spellings(run_id):
            assert client.get_run(spelled).run_id == run_id
            client.set_tags(spelled, {"spelled": spelled})
            client.log_params(spelled, {"p": 1})  # the same value again: no conflict across spellings
            assert query.get_metric_history(spelled, "loss", max_points=1000).total_points == STEPS
            assert [r.run_id for r in query.compare_runs([spelled], ["loss"]).runs] == [run_id]
            assert sum(len(p.step) for p in query.read_metrics(spelled, "acc")) == STEPS
        client.log_artifact(run_id.upper(), tmp_path / "model.txt", "model")
        assert [a.path for a in client.list_artifacts(run_id.replace("-", ""), "model")] == ["model/model.txt"]
        version = client.register_model(run_id.upper(), "model", "ids-model")
        assert version.run_id == run_id
        lineage = client.registry.lineage(f"models:/ids-model/{version.version}")
        assert lineage.run.run_id == run_id
        assert client.get_run(run_id).tags["spelled"] == spellings(run_id)[-1]
    shown = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "runs", "show", run_id.upper(), "--url", server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "services" in shown.stdout


BAD_RUN_IDS = [
    "{" + "0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21" + "}",
    "urn:uuid:0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21",
    "0b3d2a4e-8f4c4d0e-9a51-3c1f0e6a7b21",  # hyphens in some places only
    "0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b2",
    "²b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21",
    "x" * 5000,
]


@pytest.mark.parametrize("bad", BAD_RUN_IDS)
def test_what_is_not_a_run_id_is_invalid_argument_everywhere(server, bad: str) -> None:
    channel = grpc.insecure_channel(server.target)
    tracking, query = pb_grpc.TrackingServiceStub(channel), qpb_grpc.QueryServiceStub(channel)
    calls = [
        lambda: tracking.GetRun(pb.GetRunRequest(run_id=bad), timeout=10),
        lambda: tracking.LogParams(pb.LogParamsRequest(run_id=bad, params={"a": "1"}), timeout=10),
        lambda: query.GetMetricHistory(qpb.GetMetricHistoryRequest(run_id=bad, key="loss"), timeout=10),
        lambda: query.CompareRuns(qpb.CompareRunsRequest(run_ids=[bad]), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "is not a run id" in err.value.details()
    data = wire.encode(bad, "w", 1, ["loss"], [0], [0], [0], [1.0])
    log_metrics = channel.unary_unary(
        "/runstream.v1.TrackingService/LogMetrics",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )
    with pytest.raises(grpc.RpcError) as err:
        log_metrics(data, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


@pytest.mark.parametrize("bad", ["²", "1²", "-1", "9" * 19, str(2**63), "0x10", " 1", "1.0"])
def test_what_is_not_an_experiment_id_is_invalid_argument(server, bad: str) -> None:
    with runstream.Client(server.target) as client:
        with pytest.raises(runstream.InvalidArgument, match="not an experiment id"):
            client.get_experiment(bad)
        with pytest.raises(runstream.InvalidArgument, match="not an experiment id"):
            runstream.QueryClient(server.target).search_runs([bad])
        with pytest.raises(runstream.InvalidArgument, match="not an experiment id"):
            client.delete_experiment(bad)


def test_model_references_out_of_shape_are_invalid_argument(server, tmp_path) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("ids", "models").run_id
        (tmp_path / "m.txt").write_text("m")
        client.log_artifact(run_id, tmp_path / "m.txt", "m")
        client.register_model(run_id, "m", "shaped")
        for uri in ("models:/shaped/²", "models:/shaped/99999999999999999999"):
            with pytest.raises(runstream.InvalidArgument):
                client.get_model_version(uri)


def test_the_loader_stores_an_entry_in_another_spelling_under_the_run(server) -> None:
    """Entries that did not come through this ingest (an older one, or written by hand)."""
    with runstream.Client(server.target) as client:
        run_id = client.create_run("ids", "by hand").run_id
    r = redis.Redis.from_url(server.redis_url)
    keys = Keys(server.prefix)
    for seq, spelled in enumerate([run_id.upper(), run_id.replace("-", "")], start=1):
        data = wire.encode(spelled, "hand", seq, ["loss"], [0, 0], [seq * 10, seq * 10 + 1], [0, 0], [1.0, 2.0])
        r.xadd(keys.stream(keys.shard_of(run_id)), {FIELD_BATCH: data, FIELD_RECEIVED_MS: int(time.time() * 1000)})
    assert server.wait_points(run_id, 4) == 4
    steps, values = server.stored(run_id)[("loss", "hand")]
    assert steps.tolist() == [10, 11, 20, 21] and values.tolist() == [1.0, 2.0, 1.0, 2.0]


def test_one_batch_sent_again_under_another_spelling_is_a_resend_not_a_reused_seq(server) -> None:
    """A batch's digest covers what it holds, not its bytes: the same batch sent in the stored
    spelling and again in another (re-encoded by ingest) is acknowledged both times and stored
    once, never refused as a seq reused with other points, nor dead-lettered by the loader."""
    from tests.conftest import raw_log
    from tests.integration.test_dead_letters import POINTS, _batch

    with runstream.Client(server.target) as client:
        run_id = client.create_run("ids", "resent").run_id
        for spelled in [run_id, *spellings(run_id)]:
            assert raw_log(client, _batch(spelled, "raw", 7)).code == 0
    assert server.wait_points(run_id, POINTS) == POINTS
    time.sleep(1)  # a doubled batch would show by now
    assert server.wait_points(run_id, POINTS) == POINTS
    assert server.dead_letters() == 0

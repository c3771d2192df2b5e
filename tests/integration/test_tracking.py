"""The TrackingService over real gRPC: experiments, runs, params, tags and every limit."""

import math
import time

import grpc
import numpy as np
import pytest

import runstream
from runstream.server.storage import codec
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb
from tests.conftest import raw_log


@pytest.fixture
def client(server):
    with runstream.Client(server.target) as c:
        yield c


def test_experiments_are_created_found_and_listed(client) -> None:
    e = client.create_experiment("vision", tags={"team": "cv"})
    assert e.name == "vision" and e.tags["team"] == "cv" and e.lifecycle_stage == "active"
    assert client.get_experiment(e.experiment_id).name == "vision"
    assert client.get_experiment(name="vision").experiment_id == e.experiment_id
    with pytest.raises(runstream.AlreadyExists, match="'vision' already exists"):
        client.create_experiment("vision")
    with pytest.raises(runstream.ExperimentNotFound, match="'nope' does not exist"):
        client.get_experiment(name="nope")
    client.create_run("made-by-run")  # CreateRun creates a missing experiment
    assert {"vision", "made-by-run"} <= {x.name for x in client.list_experiments()}


def test_run_lifecycle_params_and_tags(client) -> None:
    run = client.create_run("exp", "first", tags={"git": "abc"})
    assert run.status == pb.RUN_STATUS_RUNNING and run.name == "first" and run.tags["git"] == "abc"
    client.log_params(run.run_id, {"lr": 0.01, "layers": 3})
    client.log_params(run.run_id, {"lr": 0.01})  # the same value again is fine
    with pytest.raises(runstream.ParamConflict) as err:
        client.log_params(run.run_id, {"lr": 0.02})
    assert "'lr'" in str(err.value) and "'0.01'" in str(err.value) and "'0.02'" in str(err.value)
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    client.set_tags(run.run_id, {"git": "def", "note": "x"})
    client.delete_tag(run.run_id, "note")
    with pytest.raises(runstream.NotFound, match="tag 'note' is not set"):
        client.delete_tag(run.run_id, "note")
    done = client.update_run(run.run_id, status="FINISHED", name="renamed")
    assert done.status == pb.RUN_STATUS_FINISHED and done.end_time_ms >= done.start_time_ms and done.name == "renamed"
    got = client.get_run(run.run_id)
    assert dict(got.params) == {"lr": "0.01", "layers": "3"} and dict(got.tags) == {"git": "def"}


def test_unknown_and_malformed_runs(client) -> None:
    missing = "0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21"
    with pytest.raises(runstream.RunNotFound, match=f"run {missing} does not exist"):
        client.get_run(missing)
    with pytest.raises(runstream.RunNotFound):
        client.log_params(missing, {"a": 1})
    with pytest.raises(runstream.InvalidArgument, match="not a run id"):
        client.get_run("12")
    with pytest.raises(grpc.RpcError) as err:
        raw_log(client, wire.encode(missing, "w", 1, ["x"], [0], [0], None, [1.0]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and missing in err.value.details()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bad key!": "1"}, "keys are 1-250 characters"),
        ({"k" * 251: "1"}, "keys are 1-250"),
        ({"ok": "v" * 6001}, "6,000"),
    ],
)
def test_param_limits(client, params, message) -> None:
    run = client.create_run("limits")
    with pytest.raises(runstream.InvalidArgument, match=message):
        client.log_params(run.run_id, params)
    client.log_params(run.run_id, {"ok": "v" * 6000, "k" * 250: "1", "a-b_c.d/e f:g": "1"})


def test_batch_limits_get_invalid_argument_and_good_batches_still_land(server, client) -> None:
    run = client.create_run("limits").run_id
    n = wire.MAX_POINTS + 1
    bad = {
        "100,000 points": wire.encode(run, "w", 1, ["x"], np.zeros(n), None, None, np.zeros(n)),
        "4 MiB": wire.encode(
            run, "w", 1, ["x"], np.zeros(100_000), np.zeros(100_000), np.zeros(100_000), np.zeros(100_000)
        )
        + wire.encode("", "", 0, ["y" * 250] * 6000, None, None, None, []),
        "keys are": wire.encode(run, "w", 1, ["no;"], [0], [0], None, [1.0]),
        "key_index refers": wire.encode(run, "w", 1, ["x"], [3], [0], None, [1.0]),
        "step has": wire.encode(run, "w", 1, ["x"], [0, 0], [0], None, [1.0, 2.0]),
        "writer_id is 251": wire.encode(run, "w" * 251, 1, ["x"], [0], [0], None, [1.0]),
        "seq must count": wire.encode(run, "w", 0, ["x"], [0], [0], None, [1.0]),
        "not a run id": wire.encode("run-1", "w", 1, ["x"], [0], [0], None, [1.0]),
        "timestamp_ms has": wire.encode(run, "w", 1, ["x"], [0, 0], None, [5], [1.0, 2.0]),
    }
    for message, data in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            raw_log(client, data)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    # Far above the limit: gRPC itself refuses before our handler sees it.
    huge = np.zeros(1_200_000)
    with pytest.raises(grpc.RpcError) as err:
        raw_log(client, wire.encode(run, "w", 1, ["x"], huge, None, None, huge))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    values = [math.nan, math.inf, -math.inf, 2.5]
    ack = raw_log(client, wire.encode(run, "w", 1, ["x"], [0] * 4, [0, 1, 2, 3], None, values))
    assert ack.code == 0 and ack.points == 4 and ack.seq == 1
    assert server.wait_points(run, 4) == 4
    rows = server.sql(
        "SELECT c.codec, c.steps, c.timestamps, c.vals FROM metric_chunks c JOIN metric_series s "
        "USING (series_id) WHERE s.run_id = $1",
        run,
    )
    steps, stamps, vals = codec.decode(rows[0]["codec"], rows[0]["steps"], rows[0]["timestamps"], rows[0]["vals"])
    assert steps.tolist() == [0, 1, 2, 3]
    assert math.isnan(vals[0]) and vals[1] == math.inf and vals[2] == -math.inf and vals[3] == 2.5
    assert abs(int(stamps[0]) - time.time() * 1000) < 60_000  # no timestamps sent: the server's clock
    summary = client.get_run(run).metrics[0]
    assert (summary.key, summary.count, summary.min_value, summary.max_value) == ("x", 4, -math.inf, math.inf)
    assert summary.last_step == 3 and summary.last_value == 2.5


def test_a_rejected_batch_on_a_stream_gets_its_status_and_the_stream_goes_on(server, client) -> None:
    run = client.create_run("stream").run_id
    good1 = wire.encode(run, "w", 1, ["x"], [0, 0], [0, 1], None, [1.0, 2.0])
    bad = wire.encode(run, "w", 2, ["x"], [0, 0], [0], None, [1.0, 2.0])
    good2 = wire.encode(run, "w", 3, ["x"], [0], [2], None, [3.0])
    call = client.channel.stream_stream(
        "/runstream.v1.TrackingService/StreamMetrics",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )
    acks = list(call(iter([good1, bad, good2]), timeout=30))
    assert [(a.seq, a.code) for a in acks] == [(1, 0), (2, grpc.StatusCode.INVALID_ARGUMENT.value[0]), (3, 0)]
    assert "step has 1 entries" in acks[1].message
    assert server.wait_points(run, 3) == 3


def test_metric_summary_tracks_last_min_max_count(server, client) -> None:
    run = client.start_run("summary", writer_id="rank0")
    for step in range(100):
        run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 100}, step=step)
    run.flush(30)
    assert server.wait_points(run.run_id, 200) == 200
    metrics = {m.key: m for m in run.info().metrics}
    assert metrics["loss"].last_value == 1.0 / 100 and metrics["loss"].last_step == 99
    assert metrics["loss"].min_value == 1.0 / 100 and metrics["loss"].max_value == 1.0
    assert metrics["acc"].count == 100 and metrics["acc"].max_value == 0.99
    run.end()
    assert client.get_run(run.run_id).status == pb.RUN_STATUS_FINISHED


def test_a_deleted_run_takes_no_params_tags_inputs_or_metrics_until_restored(server) -> None:
    """Every call that writes to a run checks, in one place (rpc/fields.py), that it exists and
    is not deleted, as MLflow does: params, tags, a tag's deletion, inputs, a writer session."""
    with runstream.Client(server.target) as client:
        run = client.start_run("deleted-runs", record_source=False)
        run.set_tags({"kept": "yes"})
        run.end()
        client.delete_run(run.run_id)
        for write in (
            lambda: client.log_params(run.run_id, {"lr": "0.1"}),
            lambda: client.set_tags(run.run_id, {"late": "1"}),
            lambda: client.delete_tag(run.run_id, "kept"),
            lambda: client.log_inputs(run.run_id, [{"name": "wine", "digest": "d", "source": "", "context": ""}]),
            lambda: client.open_writer(run.run_id, "late"),
        ):
            with pytest.raises(runstream.FailedPrecondition, match="is deleted; restore it before"):
                write()
        client.restore_run(run.run_id)
        client.log_params(run.run_id, {"lr": "0.1"})
        got = client.get_run(run.run_id)
        assert dict(got.params) == {"lr": "0.1"} and dict(got.tags)["kept"] == "yes"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tags": {"": "x"}}, "tag"),
        ({"tags": {"bad\nkey": "x"}}, "tag"),
        ({"tags": {"t": "x" * 8001}}, "the limit is 8,000"),
        ({"tags": {"t": "a\x00b"}}, "NUL"),
        ({"artifact_location": "s3://b/" + "x" * 2001}, "artifact_location"),
    ],
)
def test_an_experiments_tags_and_location_are_checked_as_a_runs_are(server, kwargs, message) -> None:
    with runstream.Client(server.target) as client:
        with pytest.raises(runstream.InvalidArgument, match=message):
            client.create_experiment("checked", **kwargs)
        assert "checked" not in [e.name for e in client.list_experiments()]  # refused: nothing made

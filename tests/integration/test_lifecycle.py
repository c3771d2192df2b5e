"""Soft delete and restore of runs and experiments, as in MLflow."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb
from tests.conftest import Server, raw_log


def test_a_deleted_run_is_hidden_refuses_metrics_and_comes_back(server: Server) -> None:
    with runstream.Client(server.target) as client, runstream.QueryClient(server.target) as q:
        kept, gone = client.create_run("life", "kept").run_id, client.create_run("life", "gone").run_id
        experiment = client.get_experiment(name="life").experiment_id
        assert client.delete_run(gone).lifecycle_stage == "deleted"
        assert [r.name for r in q.search_runs([experiment]).runs] == ["kept"]
        assert {r.name for r in q.search_runs([experiment], include_deleted=True).runs} == {"kept", "gone"}
        with pytest.raises(grpc.RpcError) as err:
            raw_log(client, wire.encode(gone, "w", 1, ["x"], [0], [0], None, [1.0]))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "restore it" in err.value.details()

        assert client.restore_run(gone).lifecycle_stage == "active"
        assert raw_log(client, wire.encode(gone, "w", 1, ["x"], np.zeros(3), [0, 1, 2], None, [1.0] * 3)).code == 0
        assert server.wait_points(gone, 3) == 3
        assert len(q.search_runs([experiment]).runs) == 2
        with pytest.raises(runstream.RunNotFound):
            client.delete_run("7d9e2c1a-0b3f-4e5d-8a6b-1c2d3e4f5a6b")
        with pytest.raises(runstream.InvalidArgument):
            client.delete_run("nope")
        assert client.get_run(kept).lifecycle_stage == "active"


def test_deleting_an_experiment_deletes_its_runs(server: Server) -> None:
    with runstream.Client(server.target) as client, runstream.QueryClient(server.target) as q:
        runs = [client.create_run("doomed", f"r{i}").run_id for i in range(3)]
        other = client.create_run("safe").run_id
        experiment = client.get_experiment(name="doomed").experiment_id
        assert client.delete_experiment(experiment).lifecycle_stage == "deleted"
        assert {client.get_run(r).lifecycle_stage for r in runs} == {"deleted"}
        assert q.search_runs([experiment]).runs == [] and client.get_run(other).lifecycle_stage == "active"
        assert client.restore_experiment(experiment).lifecycle_stage == "active"
        assert len(q.search_runs([experiment]).runs) == 3
        with pytest.raises(runstream.ExperimentNotFound):
            client.delete_experiment("999999")
        assert client.get_run(runs[0]).status == pb.RUN_STATUS_RUNNING

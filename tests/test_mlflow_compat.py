"""MLflow's own client (mlflow-skinny, pinned in the dev extras) against runstream's MLflow REST
API on the HTTP port: the tracking core. What MLflow logs is what runstream's clients read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow  # mlflow-skinny, pinned in the dev extras
import urllib3

import runstream
from tests.conftest import Server


def _uri(server: Server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def test_mlflows_client_logs_and_reads_back_what_runstream_reads(server: Server) -> None:
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-compat")
    with mlflow.start_run(run_name="through mlflow") as active:
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"layers": 3, "opt": "adam"})
        for step in range(200):
            mlflow.log_metric("loss", 1 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.875, "odd": float("nan")}, step=200)
        mlflow.set_tag("team", "vision")
    run_id = active.info.run_id
    assert server.wait_points(run_id, 202) == 202

    client = MlflowClient(_uri(server))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "through mlflow"
    assert run.data.params == {"lr": "0.1", "layers": "3", "opt": "adam"}
    assert run.data.tags["team"] == "vision"
    assert run.data.metrics["acc"] == 0.875 and math.isnan(run.data.metrics["odd"])
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(200))
    assert [m.value for m in history] == [1 / (s + 1) for s in range(200)]
    assert client.get_experiment_by_name("mlflow-compat").experiment_id == run.info.experiment_id

    with runstream.Client(server.target) as ours, runstream.QueryClient(server.target) as query:
        same = ours.get_run(run_id)
        ours_history = query.get_metric_history(run_id, "loss", max_points=1000)
    assert dict(same.params) == run.data.params and same.name == "through mlflow"
    assert ours_history.step.tolist() == list(range(200))
    assert ours_history.value.tolist() == [m.value for m in history]
    assert set(ours_history.writer) == {"mlflow"}


def _post(server: Server, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return urllib3.request(
        "POST",
        f"{_uri(server)}/api/2.0/mlflow/{path}",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=10,
    )


def test_a_retried_log_batch_stores_each_point_once(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("retried").run_id
    batch = {
        "run_id": run_id,
        "metrics": [
            {"key": "loss", "value": 0.5 * s, "timestamp": 1_700_000_000_000 + s, "step": s} for s in range(50)
        ],
        "params": [{"key": "lr", "value": "0.1"}],
    }
    for _ in range(3):  # what MLflow's client does after a timeout
        assert _post(server, "runs/log-batch", batch).status == 200
    other = {**batch, "metrics": [{"key": "loss", "value": 9.0, "timestamp": 1, "step": 50}]}
    assert _post(server, "runs/log-batch", other).status == 200
    assert server.wait_points(run_id, 51) == 51  # 50 once, and the different batch


def test_errors_come_in_mlflows_shape(server: Server) -> None:
    missing = urllib3.request(
        "GET", f"{_uri(server)}/api/2.0/mlflow/experiments/get-by-name?experiment_name=nope", timeout=10
    )
    assert missing.status == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    bad = _post(server, "runs/log-batch", {"run_id": "not-a-run", "metrics": []})
    assert bad.status == 400 and bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    unknown = _post(server, "registered-models/create", {"name": "m"})
    assert unknown.status == 404 and unknown.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_mlflow_tracking_token_is_a_runstream_token(make_server: Any, tmp_path: Path) -> None:
    server = make_server("--auth", "--data-dir", str(tmp_path))
    token = (tmp_path / "admin-token").read_text().strip()
    refused = _post(server, "experiments/create", {"name": "x"})
    assert refused.status == 401 and refused.json()["error_code"] == "UNAUTHENTICATED"
    made = _post(server, "experiments/create", {"name": "x"}, {"Authorization": f"Bearer {token}"})
    assert made.status == 200 and made.json()["experiment_id"]


def test_mlflows_search_delete_and_restore(server: Server) -> None:
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(_uri(server))
    experiment = mlflow.set_experiment("mlflow-search")
    accuracy = {}
    for i, acc in enumerate([0.5, 0.9, 0.7]):
        with mlflow.start_run(run_name=f"r{i}") as run:
            mlflow.log_metric("acc", acc)
            mlflow.log_param("i", i)
            mlflow.set_tag("drop", "me")
        accuracy[run.info.run_id] = acc
    for run_id in accuracy:
        assert server.wait_points(run_id, 1) == 1
    found = mlflow.search_runs(
        experiment_names=["mlflow-search"], filter_string="metrics.acc > 0.6", order_by=["metrics.acc DESC"]
    )
    assert found["metrics.acc"].tolist() == [0.9, 0.7] and found["params.i"].tolist() == ["1", "2"]

    client = MlflowClient(_uri(server))
    listed = client.search_experiments(filter_string="name = 'mlflow-search'")
    assert [e.experiment_id for e in listed] == [experiment.experiment_id]
    first = next(iter(accuracy))
    client.delete_tag(first, "drop")
    assert "drop" not in client.get_run(first).data.tags
    client.delete_run(first)
    assert client.get_run(first).info.lifecycle_stage == "deleted"
    active = client.search_runs([experiment.experiment_id])
    assert first not in {r.info.run_id for r in active} and len(active) == 2
    client.restore_run(first)
    assert len(client.search_runs([experiment.experiment_id])) == 3


def test_mlflows_log_input_records_the_dataset(server: Server) -> None:
    import pandas as pd

    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-inputs")
    frame = pd.DataFrame({"alcohol": [13.2, 12.4], "label": [0, 1]})
    dataset = mlflow.data.from_pandas(frame, source="s3://data/wine.csv", name="wine")
    with mlflow.start_run() as run:
        mlflow.log_input(dataset, context="training")
    rows = server.sql("SELECT name, digest, source, context FROM run_inputs WHERE run_id = $1", run.info.run_id)
    assert [(r["name"], r["digest"], r["context"]) for r in rows] == [("wine", dataset.digest, "training")]
    assert "wine.csv" in rows[0]["source"]

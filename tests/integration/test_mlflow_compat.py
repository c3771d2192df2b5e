"""MLflow's own client (mlflow-skinny, pinned in the dev extras) against runstream's MLflow REST
API on the HTTP port: the tracking core. What MLflow logs is what runstream's clients read."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import mlflow  # mlflow-skinny, pinned in the dev extras
import pytest
import urllib3

import runstream
from runstream.wire import batch as wire
from tests.conftest import Server, raw_log
from tests.integration.test_artifacts import MiB, s3_server


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
        timeout=60,  # a log-batch answers once its points are queryable: on a loaded machine, seconds
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
    unknown = _post(server, "traces/search", {})
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


def test_mlflows_artifacts_land_in_runstreams_store(server: Server, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-artifacts")
    files = tmp_path / "out"
    (files / "plots").mkdir(parents=True)
    (files / "plots" / "loss.png").write_bytes(bytes(range(256)) * 40)
    (files / "config.yaml").write_text("lr: 0.1\n")
    single = tmp_path / "weights.bin"
    single.write_bytes(b"\x00\x01" * 50_000)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(single), "model")
        mlflow.log_artifacts(str(files))
        mlflow.log_text("hello", "notes/a.txt")
        mlflow.log_dict({"a": 1}, "notes/b.json")
    run_id = run.info.run_id
    client = MlflowClient(_uri(server))
    assert {(f.path, f.is_dir) for f in client.list_artifacts(run_id)} == {
        ("config.yaml", False),
        ("model", True),
        ("notes", True),
        ("plots", True),
    }
    assert [(f.path, f.file_size) for f in client.list_artifacts(run_id, "notes")] == [
        ("notes/a.txt", 5),
        ("notes/b.json", len(json.dumps({"a": 1}, indent=2))),
    ]
    back = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(tmp_path / "back")))
    assert (back / "model" / "weights.bin").read_bytes() == single.read_bytes()
    assert (back / "plots" / "loss.png").read_bytes() == (files / "plots" / "loss.png").read_bytes()
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/a.txt") == "hello"

    with runstream.Client(server.target) as ours:  # the same files, through runstream's SDK
        listed = {a.path: a.size for a in ours.list_artifacts(run_id, "model")}
        assert listed == {"model/weights.bin": 100_000}
        got = ours.download_artifacts(run_id, "plots/loss.png", tmp_path / "sdk")
        assert got.read_bytes() == (files / "plots" / "loss.png").read_bytes()

    gone = urllib3.request(
        "DELETE",
        f"{_uri(server)}/api/2.0/mlflow-artifacts/artifacts/{run.info.experiment_id}/{run_id}/artifacts/notes",
        timeout=10,
    )
    assert gone.status == 200
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.yaml", "model", "plots"}


def test_autolog_log_model_register_and_load_by_alias(server: Server) -> None:
    from mlflow import MlflowClient
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-models")
    features, labels = load_wine(return_X_y=True)
    mlflow.sklearn.autolog(log_models=False)
    try:
        with mlflow.start_run() as autologged:
            model = LogisticRegression(max_iter=5000).fit(features, labels)
    finally:
        mlflow.sklearn.autolog(disable=True)
    client = MlflowClient(_uri(server))
    logged = client.get_run(autologged.info.run_id)
    assert logged.data.params["max_iter"] == "5000"
    assert 0.9 < logged.data.metrics["training_accuracy_score"] <= 1.0
    assert "training_confusion_matrix.png" in {f.path for f in client.list_artifacts(autologged.info.run_id)}

    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="wine-model", input_example=features[:2])
    assert info.model_uri.startswith("models:/m-")
    assert client.get_logged_model(info.model_id).status.to_int() == 2  # READY (MLflow's enum value)
    version = mlflow.register_model(info.model_uri, "wine")
    assert version.version == "1" and version.run_id == run.info.run_id
    client.transition_model_version_stage("wine", "1", "Staging")
    client.set_registered_model_alias("wine", "champion", "1")
    loaded = mlflow.pyfunc.load_model("models:/wine@champion")
    assert loaded.predict(features[:10]).tolist() == model.predict(features[:10]).tolist()

    with runstream.Client(server.target) as ours:  # the same version, with our event history
        same = ours.registry.get_model_version("wine", 1)
        assert (same.stage, list(same.aliases), same.run_id) == ("Staging", ["champion"], run.info.run_id)
        assert same.artifact_path == f"models/{info.model_id}"
        kinds = [e.kind for e in ours.registry.history("wine", 1)]
    assert kinds[:3] == ["created", "stage", "alias_set"]
    assert [v.version for v in client.search_model_versions("name = 'wine'")] == ["1"]
    assert [m.name for m in mlflow.search_registered_models(filter_string="name LIKE 'win%'")] == ["wine"]


def test_histories_paged_and_bulk_interval(server: Server) -> None:
    from mlflow import MlflowClient

    with runstream.Client(server.target) as ours:
        run = ours.start_run("mlflow-histories", record_source=False)
        for step in range(100_000):
            run.log_metric("loss", 50.0 if step == 77_777 else 1.0, step=step)
        run.end()
    assert server.wait_points(run.run_id, 100_000) == 100_000
    client = MlflowClient(_uri(server))
    history = client.get_metric_history(run.run_id, "loss")
    assert len(history) == 100_000 and max(m.value for m in history) == 50.0
    first = _get(server, "metrics/get-history", run_id=run.run_id, metric_key="loss", max_results=40_000)
    second = _get(
        server,
        "metrics/get-history",
        run_id=run.run_id,
        metric_key="loss",
        max_results=40_000,
        page_token=first["next_page_token"],
    )
    third = _get(
        server,
        "metrics/get-history",
        run_id=run.run_id,
        metric_key="loss",
        max_results=40_000,
        page_token=second["next_page_token"],
    )
    paged = [m["step"] for page in (first, second, third) for m in page["metrics"]]
    assert paged == list(range(100_000)) and "next_page_token" not in third
    bulk = _get(server, "metrics/get-history-bulk-interval", run_ids=run.run_id, metric_key="loss", max_results=500)
    assert 400 <= len(bulk["metrics"]) <= 501 and {m["run_id"] for m in bulk["metrics"]} == {run.run_id}
    window = _get(
        server,
        "metrics/get-history-bulk-interval",
        run_ids=run.run_id,
        metric_key="loss",
        start_step=77_770,
        end_step=77_790,
        max_results=500,
    )
    assert [m["step"] for m in window["metrics"]] == list(range(77_770, 77_791))
    assert [m["value"] for m in window["metrics"]].count(50.0) == 1


def test_history_pages_resume_where_they_ended_across_writers_and_repeated_steps(server: Server) -> None:
    """Page tokens hold where a page ended (writer, step, points of that step given): pages of
    every size give exactly the unpaged history, even cut between points of one step that lie
    in different chunks, and across writers whose ids sort differently by collation."""
    from mlflow import MlflowClient

    batches = [[0, 1, 1], [1, 2, 3], [3, 3, 4]]  # one chunk each: steps 1 and 3 span two chunks
    writers = ["rank_2", "rank:1", "Rank0"]
    with runstream.Client(server.target) as ours:
        run = ours.start_run("mlflow-history-pages", record_source=False)
        for w, writer in enumerate(writers):
            for seq, steps in enumerate(batches, start=1):
                values = [w * 100 + seq * 10 + i for i in range(len(steps))]
                data = wire.encode(run.run_id, writer, seq, ["loss"], [0] * len(steps), steps, None, values)
                assert raw_log(ours, data).code == 0
        run.end()
    assert server.wait_points(run.run_id, 27) == 27
    whole = [
        (m["step"], m["value"])
        for m in _get(server, "metrics/get-history", run_id=run.run_id, metric_key="loss")["metrics"]
    ]
    assert (
        len(set(whole)) == 27 and [v // 100 for _, v in whole] == [2] * 9 + [1] * 9 + [0] * 9
    )  # Rank0, rank:1, rank_2
    for size in range(1, 11):
        paged, token = [], ""
        while True:
            fields = {"run_id": run.run_id, "metric_key": "loss", "max_results": size}
            page = _get(server, "metrics/get-history", **fields, **({"page_token": token} if token else {}))
            assert len(page["metrics"]) <= size
            paged += [(m["step"], m["value"]) for m in page["metrics"]]
            token = page.get("next_page_token", "")
            if not token:
                break
        assert paged == whole, size
    read = MlflowClient(_uri(server)).get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in read] == whole
    bad = urllib3.request(
        "GET",
        f"{_uri(server)}/api/2.0/mlflow/metrics/get-history",
        fields={"run_id": run.run_id, "metric_key": "loss", "max_results": 2, "page_token": "12"},
        timeout=10,
    )
    assert bad.status == 400 and "not one this server gave out" in bad.json()["message"]


def test_histories_carry_nan_and_the_infinities_as_mlflow_writes_them(server: Server) -> None:
    from mlflow import MlflowClient

    odd = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 0.1]
    with runstream.Client(server.target) as ours:
        run = ours.start_run("mlflow-odd-values", record_source=False)
        for step, value in enumerate(odd):
            run.log_metric("odd", value, step=step)
        run.end()
    assert server.wait_points(run.run_id, len(odd)) == len(odd)
    raw = _get(server, "metrics/get-history", run_id=run.run_id, metric_key="odd")["metrics"]
    assert [m["value"] for m in raw[:3]] == ["NaN", "Infinity", "-Infinity"] and raw[3:][-1]["value"] == 0.1
    bulk = _get(server, "metrics/get-history-bulk-interval", run_ids=run.run_id, metric_key="odd", max_results=10)
    assert [m["value"] for m in bulk["metrics"]][:3] == ["NaN", "Infinity", "-Infinity"]
    read = [m.value for m in MlflowClient(_uri(server)).get_metric_history(run.run_id, "odd")]
    assert math.isnan(read[0]) and read[1:] == odd[1:] and math.copysign(1.0, read[3]) == -1.0


def _get(server: Server, path: str, **params: Any) -> Any:
    reply = urllib3.request("GET", f"{_uri(server)}/api/2.0/mlflow/{path}", fields=params, timeout=30)
    assert reply.status == 200, reply.data[:300]
    return reply.json()


def test_experiment_update_tags_and_the_server_endpoints(server: Server) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(_uri(server))
    experiment_id = client.create_experiment("mlflow-rename")
    client.rename_experiment(experiment_id, "mlflow-renamed")
    client.set_experiment_tag(experiment_id, "team", "vision")
    client.set_experiment_tag(experiment_id, "drop", "me")
    client.delete_experiment_tag(experiment_id, "drop")
    got = client.get_experiment(experiment_id)
    assert got.name == "mlflow-renamed" and got.tags == {"team": "vision"}
    assert urllib3.request("GET", f"{_uri(server)}/version", timeout=10).data.decode().startswith("3.")
    assert urllib3.request("GET", f"{_uri(server)}/health", timeout=10).data == b"OK"
    info = urllib3.request("GET", f"{_uri(server)}/api/3.0/mlflow/server-info", timeout=10).json()
    assert info["multipart_uploads_enabled"] is True and info["multipart_downloads_enabled"] is True


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_700_mib_artifact_goes_to_the_store_in_parts(
    where: str, make_server: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """From 500 MB MLflow's client takes the multipart flow server-info advertises: a signed URL
    of the store per 10 MB part, so the bytes go straight to the store; the download is a
    redirect to the store."""
    from mlflow import MlflowClient

    server = make_server() if where == "local" else s3_server(make_server, request.getfixturevalue("moto_s3")).server
    big = tmp_path / "checkpoint.bin"
    block = os.urandom(MiB)
    with big.open("wb") as out:
        for i in range(700):
            out.write(bytes([i % 256]) + block[1:])
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-big")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(big), "ckpt")
    with runstream.Client(server.target) as ours:
        stored = {a.path: a for a in ours.list_artifacts(run.info.run_id, "ckpt")}
    assert stored["ckpt/checkpoint.bin"].size == 700 * MiB and stored["ckpt/checkpoint.bin"].sha256 == digest
    back = MlflowClient(_uri(server)).download_artifacts(run.info.run_id, "ckpt/checkpoint.bin", str(tmp_path / "back"))
    assert hashlib.sha256(Path(back).read_bytes()).hexdigest() == digest
    metrics = urllib3.request("GET", f"{_uri(server)}/metrics", timeout=10).data.decode()
    assert 'runstream_artifact_uploads_signed_total{kind="unsized"} 1.0' in metrics  # MLflow's parts, not a PUT


def test_a_file_put_through_the_server_is_stored_in_parts(make_server: Any, tmp_path: Path) -> None:
    """Below MLflow's multipart threshold the client PUTs the file to the server, which puts it
    into the store in parts above --artifact-part-size, checksummed as the SDK's."""
    server = make_server("--artifact-part-size", str(5 * MiB))
    data = os.urandom(12 * MiB + 5)
    (tmp_path / "weights.bin").write_bytes(data)
    mlflow.set_tracking_uri(_uri(server))
    mlflow.set_experiment("mlflow-put")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "weights.bin"))
    with runstream.Client(server.target) as ours:
        got = ours.download_artifacts(run.info.run_id, "weights.bin", tmp_path / "back")
    assert got.read_bytes() == data
    metrics = urllib3.request("GET", f"{_uri(server)}/metrics", timeout=10).data.decode()
    assert 'runstream_artifact_uploads_signed_total{kind="multipart"} 1.0' in metrics


def test_registry_and_logged_model_details_through_mlflows_client(server: Server, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(_uri(server))
    experiment = mlflow.set_experiment("mlflow-registry")
    client = MlflowClient(_uri(server))
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/weights.txt")
        logged = mlflow.initialize_logged_model(name="scratch", model_type="toy", tags={"stage": "dev"})
    client.log_model_params(logged.model_id, {"depth": "3"})
    client.set_logged_model_tags(logged.model_id, {"owner": "ana"})
    client.delete_logged_model_tag(logged.model_id, "stage")
    got = client.get_logged_model(logged.model_id)
    assert (got.name, got.model_type, got.source_run_id) == ("scratch", "toy", run.info.run_id)
    assert got.params == {"depth": "3"} and got.tags["owner"] == "ana" and "stage" not in got.tags
    found = client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert [m.model_id for m in found] == [logged.model_id]

    client.create_registered_model("toy", tags={"team": "a"}, description="first")
    version = client.create_model_version("toy", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    assert version.version == "1" and version.source == f"runs:/{run.info.run_id}/model"
    client.set_model_version_tag("toy", "1", "checked", "yes")
    client.update_model_version("toy", "1", description="the first")
    client.update_registered_model("toy", description="renamed soon")
    client.set_registered_model_tag("toy", "drop", "me")
    client.delete_registered_model_tag("toy", "drop")
    client.rename_registered_model("toy", "toy2")
    model = client.get_registered_model("toy2")
    assert (model.description, model.tags) == ("renamed soon", {"team": "a"})
    same = client.get_model_version("toy2", "1")
    assert (same.description, same.tags) == ("the first", {"checked": "yes"})
    assert client.get_model_version_download_uri("toy2", "1").endswith(f"/{run.info.run_id}/artifacts/model")
    assert [m.name for m in client.search_registered_models("tags.team = 'a'")] == ["toy2"]
    client.transition_model_version_stage("toy2", "1", "production")
    assert [v.version for v in client.get_latest_versions("toy2", ["Production"])] == ["1"]
    client.set_registered_model_alias("toy2", "live", "1")
    client.delete_registered_model_alias("toy2", "live")
    assert client.get_registered_model("toy2").aliases == {}
    client.delete_model_version("toy2", "1")
    assert client.search_model_versions("name = 'toy2'") == []
    client.delete_registered_model("toy2")
    assert mlflow.search_registered_models(filter_string="name = 'toy2'") == []


@pytest.mark.parametrize(
    "bad",
    [
        {"tags": [{"key": "t", "value": "a\u0000b"}]},  # PostgreSQL's text has no NUL
        {"params": [{"key": "p", "value": "\ud800"}]},  # a lone surrogate: not Unicode text
        {"tags": [{"key": "t", "value": "x" * 8001}]},
    ],
    ids=["nul", "surrogate", "long tag"],
)
def test_a_log_batch_refused_for_its_text_stores_none_of_its_metrics(server: Server, bad: dict[str, Any]) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("refused-text").run_id
    body = {"run_id": run_id, "metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 1}], **bad}
    raw = json.dumps(body).encode()  # json escapes the surrogate as \ud800, as a client would send it
    reply = urllib3.request(
        "POST",
        f"{_uri(server)}/api/2.0/mlflow/runs/log-batch",
        body=raw,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert reply.status == 400 and reply.json()["error_code"] == "INVALID_PARAMETER_VALUE", reply.data
    time.sleep(1.5)  # what was appended would be loaded by now
    assert server.sql("SELECT count(*) AS n FROM metric_summaries WHERE run_id = $1", run_id)[0]["n"] == 0
    assert not server.sql("SELECT 1 FROM params WHERE run_id = $1", run_id)
    assert not server.sql("SELECT 1 FROM tags WHERE run_id = $1 AND key = 't'", run_id)
    assert "Traceback" not in "".join(server.output)


def test_multipart_create_and_complete_say_what_is_missing(server: Server) -> None:
    """MLflow's multipart flow with no parts asked for or none given: a 400 naming the field."""
    with runstream.Client(server.target) as client:
        run = client.create_run("mpu-edges")
    base = f"{_uri(server)}/api/2.0/mlflow-artifacts/mpu"
    where = f"{run.experiment_id}/{run.run_id}/artifacts"
    for body in ({"path": "a.bin"}, {"path": "a.bin", "num_parts": 0}):
        reply = urllib3.request("POST", f"{base}/create/{where}", json=body, timeout=30)
        assert reply.status == 400 and "num_parts" in reply.json()["message"], reply.data
    made = urllib3.request("POST", f"{base}/create/{where}", json={"path": "a.bin", "num_parts": 2}, timeout=30)
    upload_id = made.json()["upload_id"]
    body = {"path": "a.bin", "upload_id": upload_id, "parts": []}
    reply = urllib3.request("POST", f"{base}/complete/{where}", json=body, timeout=30)
    assert reply.status == 400 and "every part, 1 to 1" in reply.json()["message"], reply.data

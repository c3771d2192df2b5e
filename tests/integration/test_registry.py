"""The model registry over real gRPC and PostgreSQL: gap-free version numbers under concurrent
creation, stages with archive_existing, atomic alias moves, reviews with an append-only history,
and lineage from a version back to the run's params, code, data and artifact digest."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import runstream
from runstream.client import transfer
from runstream.client.registry import RegistryClient
from tests.conftest import Server


def _model_run(client: runstream.Client, tmp_path: Path, **start: Any) -> str:
    """A run with params, a metric and a model directory logged as artifacts under `model/`."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "MLmodel").write_text("flavor: sklearn\n")
    (folder / "model.pkl").write_bytes(b"\x80\x04weights" * 100)
    run = client.start_run("registry", params={"alpha": 0.5}, **start)
    run.log_metrics({"rmse": 0.71}, step=1)
    run.log_artifacts(folder, "model")
    run.end()
    return run.run_id


def _as(server: Server, user: str) -> RegistryClient:
    client = runstream.Client(server.target)
    return RegistryClient(client.channel, client.artifacts, 30, user=user)


def test_twenty_concurrent_versions_are_numbered_one_to_twenty(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        with ThreadPoolExecutor(20) as pool:
            versions = list(pool.map(lambda _: client.register_model(run_id, "model", "wine").version, range(20)))
        assert sorted(versions) == list(range(1, 21))
        listed = client.registry.list_model_versions("wine")
        assert [v.version for v in listed] == list(range(20, 0, -1))
        v = client.get_model_version("wine", 7)
        assert (v.run_id, v.artifact_path, v.stage, v.source_files) == (run_id, "model", "None", 2)
        # A version whose source is missing takes no number: the next one is still 21.
        with pytest.raises(runstream.FailedPrecondition, match="has no artifact at 'nope'"):
            client.register_model(run_id, "nope", "wine")
        assert client.register_model(run_id, "model/MLmodel", "wine").version == 21


def test_stages_archive_existing_and_clear_statuses(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        for _ in range(3):
            client.register_model(run_id, "model", "wine")
        reg = client.registry
        reg.transition_stage("wine", 1, "Production")
        reg.transition_stage("wine", 2, "staging")  # stage names are case-insensitive
        reg.transition_stage("wine", 2, "Production", archive_existing=True)
        assert [v.version for v in reg.list_model_versions("wine", ["Production"])] == [2]
        assert reg.get_model_version("wine", 1).stage == "Archived"
        # Concurrent promotions with archive_existing still leave exactly one version in Production.
        reg.transition_stage("wine", 3, "Staging")
        reg.transition_stage("wine", 1, "Staging")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: reg.transition_stage("wine", n, "Production", archive_existing=True), (1, 3)))
        assert len(reg.list_model_versions("wine", ["Production"])) == 1
        production = reg.get_model_version("models:/wine/Production")
        assert production.version in (1, 3) and production.stage == "Production"

        with pytest.raises(runstream.FailedPrecondition, match="already in Production"):
            reg.transition_stage("wine", production.version, "Production")
        archived = 2
        with pytest.raises(runstream.FailedPrecondition, match="cannot go from Archived to Production"):
            reg.transition_stage("wine", archived, "Production")
        with pytest.raises(runstream.InvalidArgument, match="stage 'Prod' is not one of"):
            reg.transition_stage("wine", 1, "Prod")
        with pytest.raises(runstream.NotFound, match="registered model 'beer' does not exist"):
            reg.transition_stage("beer", 1, "Staging")
        with pytest.raises(runstream.NotFound, match="'wine' has no version 99"):
            reg.get_model_version("wine", 99)
        with pytest.raises(runstream.InvalidArgument, match="is not a model URI"):
            reg.get_model_version("runs:/abc/model")
        with pytest.raises(runstream.AlreadyExists, match="'wine' already exists"):
            reg.create_registered_model("wine")
        with pytest.raises(runstream.InvalidArgument, match="model name 'a/b' is not valid"):
            client.register_model(run_id, "model", "a/b")
        with pytest.raises(runstream.RunNotFound):
            client.register_model("00000000-0000-4000-8000-000000000000", "model", "wine")


def test_aliases_move_atomically_and_resolve(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        for _ in range(3):
            client.register_model(run_id, "model", "wine")
        reg = client.registry
        reg.set_alias("wine", "champion", 1)
        reg.set_alias("wine", "champion", 2)  # moved: one version holds it, never two or none
        assert reg.get_model_version("models:/wine@champion").version == 2
        assert list(reg.get_model_version("wine", 1).aliases) == []
        assert dict(reg.get_registered_model("wine").aliases) == {"champion": 2}
        # Many concurrent moves: the alias always resolves, and ends on exactly one version.
        with ThreadPoolExecutor(6) as pool:
            moves = pool.map(lambda n: reg.set_alias("wine", "champion", 1 + n % 3), range(30))
            reads = pool.map(lambda _: reg.get_model_version("models:/wine@champion").version, range(30))
            list(moves)
            assert set(reads) <= {1, 2, 3}
        holders = [v.version for v in reg.list_model_versions("wine") if "champion" in v.aliases]
        assert len(holders) == 1
        assert reg.get_model_version("models:/wine/latest").version == 3
        assert reg.get_model_version("models:/wine/2").version == 2
        reg.delete_alias("wine", "champion")
        with pytest.raises(runstream.NotFound, match="has no alias 'champion'"):
            reg.get_model_version("models:/wine@champion")
        with pytest.raises(runstream.InvalidArgument, match="alias 'v3' is not valid"):
            reg.set_alias("wine", "v3", 1)
        with pytest.raises(runstream.NotFound, match="has no version 9"):
            reg.set_alias("wine", "candidate", 9)


def test_reviews_and_an_append_only_history_of_every_change(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
    alice, bob, nobody = _as(server, "alice"), _as(server, "bob"), _as(server, "")
    alice.register_model(run_id, "model", "wine", description="first cut")
    alice.update_model_version("wine", 1, description="gradient boosted", set_tags={"team": "fraud"})
    alice.comment("wine", 1, "rmse is fine on the holdout")
    request = alice.request_transition("wine", 1, "Production", "ready to ship")
    with pytest.raises(runstream.FailedPrecondition, match="alice requested this transition; someone else must"):
        alice.approve_transition(request.request_id)
    with pytest.raises(runstream.Unauthenticated, match="say who you are"):
        nobody.approve_transition(request.request_id)
    rejected = bob.reject_transition(request.request_id, "needs a drift check")
    assert (rejected.status, rejected.decided_by) == ("rejected", "bob")
    with pytest.raises(runstream.FailedPrecondition, match="already rejected by bob"):
        bob.approve_transition(request.request_id)
    again = alice.request_transition("wine", 1, "Production", "drift checked")
    approved = bob.approve_transition(again.request_id, "ok")
    assert approved.status == "approved" and bob.get_model_version("wine", 1).stage == "Production"
    bob.set_alias("wine", "champion", 1)
    assert [(r.status, r.requested_by) for r in alice.transition_requests("wine", 1)] == [
        ("rejected", "alice"),
        ("approved", "alice"),
    ]
    events = [(e.kind, e.actor, e.from_value, e.to_value, e.comment) for e in alice.history("wine", 1)]
    assert events == [
        ("created", "alice", "", f"runs:/{run_id}/model", ""),
        ("description", "alice", "first cut", "gradient boosted", ""),
        ("tag_set", "alice", "", "team=fraud", ""),
        ("comment", "alice", "", "", "rmse is fine on the holdout"),
        ("transition_requested", "alice", "None", "Production", "ready to ship"),
        ("transition_rejected", "bob", "None", "Production", "needs a drift check"),
        ("transition_requested", "alice", "None", "Production", "drift checked"),
        ("stage", "bob", "None", "Production", "ok"),
        ("transition_approved", "bob", "None", "Production", "ok"),
        ("alias_set", "bob", "", "champion", ""),
    ]
    # The history cannot be edited, even by someone with the database's password.
    for statement in ("UPDATE model_version_events SET actor = 'mallory'", "DELETE FROM model_version_events"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            server.sql(statement)
    alice.delete_model_version("wine", 1)
    assert alice.history("wine", 1)[-1].kind == "deleted"  # kept after the version is gone


def test_lineage_reaches_params_code_data_and_the_artifact_digest(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        run = runstream.Run(client, run_id, owner=False)
        run.log_input("wine-quality", source="s3://data/wine.csv", digest="sha256:ab12", context="training")
        run.log_input("wine-quality", source="s3://data/wine.csv", digest="sha256:ab12", context="training")
        client.register_model(run_id, "model", "wine")
        client.register_model(run_id, "model/model.pkl", "wine-file")
        assert server.wait_points(run_id, 1) == 1
        lineage = client.registry.lineage("models:/wine/1")
        assert lineage.run.run_id == run_id and lineage.experiment_name == "registry"
        assert dict(lineage.run.params) == {"alpha": "0.5"}
        assert [(m.key, m.last_value) for m in lineage.run.metrics] == [("rmse", 0.71)]
        tags = dict(lineage.run.tags)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(sys.argv[0]).parent
        )
        if head.returncode == 0:  # the test runner runs from a checkout: its commit is the code version
            assert tags["runstream.source.git.commit"] == head.stdout.strip()
            assert tags["runstream.source.git.dirty"] in ("true", "false")
        assert tags["runstream.source.python"] == sys.version.split()[0]
        assert "numpy==" in tags["runstream.source.packages"]
        assert [(i.name, i.source, i.digest, i.context) for i in lineage.inputs] == [
            ("wine-quality", "s3://data/wine.csv", "sha256:ab12", "training")
        ]
        model_pkl = transfer.sha256_of(tmp_path / "model" / "model.pkl")
        mlmodel = transfer.sha256_of(tmp_path / "model" / "MLmodel")
        digest = hashlib.sha256(f"MLmodel {mlmodel}\nmodel.pkl {model_pkl}\n".encode()).hexdigest()
        v = lineage.version
        assert (v.source_files, v.source_size, v.source_digest) == (2, 16 + 900, digest)
        single = client.get_model_version("wine-file", 1)
        assert (single.source_files, single.source_size, single.source_digest) == (1, 900, model_pkl)
        got = client.download_model("models:/wine/1", tmp_path / "down")
        assert transfer.sha256_of(got / "model.pkl") == model_pkl
        with pytest.raises(runstream.FailedPrecondition, match="source of model 'wine' version 1; delete that"):
            client.artifacts.delete_artifact(run_id, "model/MLmodel")
        client.registry.delete_model_version("wine", 1)
        client.artifacts.delete_artifact(run_id, "model/MLmodel")  # no version uses it any more


def test_models_search_rename_and_delete(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        reg = client.registry
        for name in ("wine-red", "wine-white", "beer"):
            client.register_model(run_id, "model", name)
        reg.update_registered_model("wine-red", description="reds", set_tags={"team": "a"})
        reg.update_registered_model("beer", set_tags={"team": "a"})
        assert [m.name for m in reg.search_registered_models("wine%")] == ["wine-red", "wine-white"]
        assert [m.name for m in reg.search_registered_models(tags={"team": "a"})] == ["beer", "wine-red"]
        assert [m.name for m in reg.search_registered_models(max_results=1)] == ["beer", "wine-red", "wine-white"]
        names = [m.name for m in reg.search_registered_models(order_by="name DESC")]
        assert names == ["wine-white", "wine-red", "beer"]
        with pytest.raises(runstream.InvalidArgument, match="order_by 'size'"):
            reg.search_registered_models(order_by="size")
        reg.rename_registered_model("beer", "ale")
        assert reg.get_model_version("models:/ale/1").run_id == run_id
        with pytest.raises(runstream.AlreadyExists):
            reg.rename_registered_model("ale", "wine-red")
        reg.delete_registered_model("ale")
        with pytest.raises(runstream.NotFound, match="'ale' does not exist"):
            reg.get_registered_model("ale")
        latest = reg.get_registered_model("wine-red").latest_versions
        assert [(v.version, v.stage) for v in latest] == [(1, "None")]


def test_cli_lists_registers_promotes_aliases_and_shows_lineage(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = _model_run(client, tmp_path)
        runstream.Run(client, run_id, owner=False).log_input("wine", "s3://d/wine.csv", "v7", "training")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runstream.cli", "models", *args, "--url", server.target],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert (
        cli("register", run_id, "model", "wine").stdout.strip()
        == f"registered wine version 1 from runs:/{run_id}/model"
    )
    assert cli("register", run_id, "model", "wine").returncode == 0
    assert cli("promote", "wine", "2", "Production").stdout.strip() == "wine version 2 is now in Production"
    assert cli("alias", "wine", "champion", "2").stdout.strip() == "wine@champion -> version 2"
    versions = cli("versions", "wine").stdout.splitlines()
    assert versions[0].split()[:4] == ["version", "stage", "aliases", "source"]
    assert [line.split()[:3] for line in versions[2:]] == [
        ["2", "Production", "champion"],
        ["1", "None", f"runs:/{run_id}/model"],
    ]
    listing = cli("ls").stdout.splitlines()
    assert listing[2].startswith("wine") and "Production: v2" in listing[2] and "champion: v2" in listing[2]
    lineage = cli("lineage", "models:/wine@champion").stdout
    assert lineage.startswith("wine version 2 (Production, champion)")
    assert f"runs:/{run_id}/model  2 file(s)" in lineage and "param      alpha = 0.5" in lineage
    assert "dataset    wine v7 from s3://d/wine.csv (training)" in lineage
    bad = cli("promote", "wine", "2", "Production")
    assert bad.returncode == 1 and "wine version 2 is already in Production" in bad.stderr


def test_registry_tags_and_texts_are_checked(server, tmp_path: Path) -> None:
    """Model and version tags have the run tags' limits; texts PostgreSQL cannot store are refused
    up front (never a 500)."""
    with runstream.Client(server.target) as client:
        for bad in ({"t": "x" * 8001}, {"": "x"}, {"t": "nul\x00"}):
            with pytest.raises(runstream.InvalidArgument):
                client.registry.create_registered_model("checked-model", tags=bad)
        with pytest.raises(runstream.InvalidArgument, match="NUL"):
            client.registry.create_registered_model("checked-model", description="a\x00b")
        client.registry.create_registered_model("checked-model", tags={"team": "vision"})
        with pytest.raises(runstream.InvalidArgument, match="the limit is 8,000"):
            client.registry.update_registered_model("checked-model", set_tags={"team": "x" * 8001})
        assert dict(client.registry.get_registered_model("checked-model").tags) == {"team": "vision"}

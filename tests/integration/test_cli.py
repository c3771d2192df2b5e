"""The CLI people live in: short run ids and unique prefixes, --format table|json|csv, runs ls
columns, experiments by name or id, runs end/delete/restore/tail/tags, models delete-version,
--version, and help text on every option."""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import runstream
from runstream.cli import parser
from tests.conftest import Server


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", *args, "--url", server.target],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ok(server: Server, *args: str) -> str:
    done = _cli(server, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def seeded(make_module_server: Any) -> tuple[Server, list[str]]:
    server = make_module_server()
    ids = []
    with runstream.Client(server.target) as client:
        for i in range(3):
            run = client.start_run("cli-exp", f"run{i}", record_source=False)
            run.log_params({"lr": str(0.1 * (i + 1))})
            for step in range(10):
                run.log_metrics({"loss": 1.0 / (step + 1 + i), "acc": step / 10}, step=step)
            run.end()
            ids.append(run.run_id)
    for run_id in ids:
        assert server.wait_points(run_id, 20) == 20
    return server, ids


def test_listings_show_short_ids_and_commands_take_unique_prefixes(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    table = _ok(server, "runs", "ls", "--experiment", "cli-exp")
    for run_id in ids:
        assert run_id[:8] in table and run_id not in table
    shown = _ok(server, "runs", "show", ids[0][:6])
    assert ids[0] in shown and "lr" in shown
    assert ids[1] in _ok(server, "runs", "show", ids[1].replace("-", "")[:10].upper())
    # Two runs whose ids share a prefix: the prefix lists both, a longer one picks one.
    twin = ids[2][:9] + "ffff-ffff-ffff-ffffffffffff"
    server.sql(
        "INSERT INTO runs (run_id, experiment_id, name, status, start_time_ms, lifecycle_stage) "
        "SELECT $1::uuid, experiment_id, 'twin', 1, 0, 'active' FROM runs WHERE run_id = $2",
        twin,
        ids[2],
    )
    ambiguous = _cli(server, "runs", "show", ids[2][:8])
    assert ambiguous.returncode == 1
    assert ids[2] in ambiguous.stderr and twin in ambiguous.stderr and "ambiguous" in ambiguous.stderr
    missing = _cli(server, "runs", "show", "abcdef" if not ids[0].startswith("abcdef") else "fedcba")
    assert missing.returncode == 1 and "no run id starts with" in missing.stderr
    too_short = _cli(server, "runs", "show", ids[0][:4])
    assert too_short.returncode == 1 and "at least 6" in too_short.stderr
    server.sql("DELETE FROM runs WHERE run_id = $1::uuid", twin)


def test_listings_take_json_and_csv(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    runs = json.loads(_ok(server, "runs", "ls", "--experiment", "cli-exp", "--format", "json"))
    assert sorted(r["id"] for r in runs) == sorted(ids)  # whole ids for scripts
    assert all(isinstance(r["points"], int) and r["start"].endswith("+00:00") for r in runs)
    rows = list(csv.DictReader(io.StringIO(_ok(server, "runs", "ls", "--experiment", "cli-exp", "--format", "csv"))))
    assert sorted(r["id"] for r in rows) == sorted(ids) and {r["status"] for r in rows} == {"FINISHED"}
    experiments = json.loads(_ok(server, "experiments", "ls", "--format", "json"))
    assert any(e["name"] == "cli-exp" and e["runs"] == 3 for e in experiments)
    for listing in (["models", "ls"], ["dead-letters", "ls"], ["experiments", "ls"]):
        assert isinstance(json.loads(_ok(server, *listing, "--format", "json")), list)


def test_runs_ls_picks_columns_and_experiments_by_name_or_id(seeded: tuple[Server, list[str]]) -> None:
    server, ids = seeded
    with runstream.Client(server.target) as client:
        experiment_id = client.get_run(ids[0]).experiment_id
    by_id = json.loads(_ok(server, "runs", "ls", "--experiment", experiment_id, "--format", "json"))
    by_name = json.loads(_ok(server, "runs", "ls", "--experiment", "cli-exp", "--format", "json"))
    assert by_id == by_name and len(by_id) == 3
    picked = json.loads(
        _ok(server, "runs", "ls", "--experiment", "cli-exp", "--columns", "metrics.loss,params.lr", "--format", "json")
    )
    assert set(picked[0]) == {"id", "name", "status", "start", "duration", "metrics.loss", "params.lr", "points"}
    by_run = {r["id"]: r for r in picked}
    assert by_run[ids[0]]["params.lr"] == "0.1" and by_run[ids[0]]["metrics.loss"] == pytest.approx(0.1)


def test_runs_end_delete_restore_and_tags(seeded: tuple[Server, list[str]]) -> None:
    server, _ = seeded
    with runstream.Client(server.target) as client:
        run_id = client.create_run("cli-exp", "lifecycle").run_id
    assert "KILLED" in _ok(server, "runs", "end", run_id[:8], "--status", "KILLED")
    assert server.sql("SELECT status FROM runs WHERE run_id = $1", run_id)[0]["status"] == 4
    _ok(server, "runs", "delete", run_id[:8])
    assert server.sql("SELECT lifecycle_stage FROM runs WHERE run_id = $1", run_id)[0]["lifecycle_stage"] == "deleted"
    _ok(server, "runs", "restore", run_id[:8])
    assert server.sql("SELECT lifecycle_stage FROM runs WHERE run_id = $1", run_id)[0]["lifecycle_stage"] == "active"
    tags = json.loads(
        _ok(server, "runs", "tags", run_id[:8], "--set", "team=vision", "--set", "x=1", "--format", "json")
    )
    assert {"tag": "team", "value": "vision"} in tags
    tags = json.loads(_ok(server, "runs", "tags", run_id[:8], "--delete", "x", "--format", "json"))
    assert [t["tag"] for t in tags] == ["team"]


def test_runs_tail_follows_a_run_until_it_ends(seeded: tuple[Server, list[str]]) -> None:
    server, _ = seeded
    with runstream.Client(server.target) as client:
        run = client.start_run("cli-exp", "tailed", record_source=False)
        tail = subprocess.Popen(
            [sys.executable, "-m", "runstream.cli", "runs", "tail", run.run_id[:8], "loss", "--url", server.target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # the tail is open before the points come
        for step in range(300):
            run.log_metrics({"loss": float(step), "other": 1.0}, step=step)
        run.end()
        out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "step\tkey\twriter\tvalue"
    steps = [int(line.split("\t")[0]) for line in lines[1:]]
    assert steps == list(range(300)) and all("\tloss\t" in line for line in lines[1:])


def test_models_delete_version_and_version_flag(seeded: tuple[Server, list[str]], tmp_path: Path) -> None:
    server, ids = seeded
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"w" * 100)
    with runstream.Client(server.target) as client:
        client.log_artifact(ids[0], weights)
    name = f"cli-model-{uuid.uuid4().hex[:6]}"
    _ok(server, "models", "register", ids[0][:8], "w.bin", name)
    assert "deleted" in _ok(server, "models", "delete-version", name, "1")
    assert json.loads(_ok(server, "models", "versions", name, "--format", "json")) == []
    version = subprocess.run([sys.executable, "-m", "runstream.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("runstream 0.")


def _actions(p: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _actions(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_option_and_command_has_help_text() -> None:
    actions = _actions(parser(), "runstream")
    assert len(actions) > 100
    missing = [f"{path} {a.dest}" for path, a in actions if not a.help]
    assert not missing, missing
    for action in parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions)

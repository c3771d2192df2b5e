"""The layout is enforced, not just described: import-linter's contracts (pyproject.toml) break
on a copy of the package that imports across a layer or in a circle, and the architecture page's
table of services (docs/architecture.md) names the module that serves every RPC."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runstream.wire.proto
from tests.conftest import ROOT

LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def _lint(package_root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the project's contracts on the package found under package_root."""
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_root,
        env={**os.environ, "PYTHONPATH": str(package_root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "runstream", tmp_path / "runstream", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _kept_and_broken(output: str) -> tuple[int, list[str]]:
    kept = len(re.findall(r"\bKEPT$", output, re.M))
    broken = re.findall(r"^(.*?)\s*BROKEN$", output, re.M)
    return kept, broken


def test_the_package_keeps_every_contract(package_copy: Path) -> None:
    done = _lint(package_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _kept_and_broken(done.stdout) == (4, [])


def test_an_sdk_module_that_imports_the_server_breaks_the_layers(package_copy: Path) -> None:
    query = package_copy / "runstream" / "client" / "query.py"
    query.write_text(query.read_text() + "\nfrom runstream.server.storage import runs  # noqa: E402\n")
    done = _lint(package_copy)
    assert done.returncode != 0
    assert "runstream.client.query -> runstream.server.storage.runs" in done.stdout
    kept, broken = _kept_and_broken(done.stdout)
    assert kept == 2 and len(broken) == 2  # layers and light-sdk; still no circle, storage still beneath


def test_a_server_package_in_the_sdk_breaks_the_light_sdk_contract(package_copy: Path) -> None:
    writer = package_copy / "runstream" / "client" / "writer.py"
    writer.write_text(writer.read_text() + "\nimport redis  # noqa: E402\n")
    done = _lint(package_copy)
    assert done.returncode != 0
    assert "runstream.client.writer -> redis" in done.stdout


def test_storage_that_imports_a_service_breaks_the_storage_contract(package_copy: Path) -> None:
    artifacts = package_copy / "runstream" / "server" / "storage" / "artifacts.py"
    artifacts.write_text(artifacts.read_text() + "\nfrom runstream.server.artifacts import paths  # noqa: E402\n")
    done = _lint(package_copy)
    assert done.returncode != 0
    assert "runstream.server.storage.artifacts -> runstream.server.artifacts.paths" in done.stdout
    assert "Storage (server/storage/) imports no service, handler or process code" in _kept_and_broken(done.stdout)[1]


def test_an_import_circle_breaks_the_acyclic_contract(package_copy: Path) -> None:
    channel = package_copy / "runstream" / "client" / "channel.py"
    channel.write_text(channel.read_text() + "\nfrom runstream.client import tracking  # noqa: E402\n")
    done = _lint(package_copy)
    assert done.returncode != 0
    assert "No cycles are allowed in runstream.client" in done.stdout


def test_the_architecture_page_names_the_module_of_every_rpc() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \([a-z]+\.proto\) \| ((?:`server/[\w/]+\.py`(?:, )?)+) \|", page, re.M)
    served = {service: re.findall(r"`server/([\w/]+)\.py`", modules) for service, modules in rows}
    generated = [
        importlib.import_module(f"runstream.wire.proto.{m.name}")
        for m in pkgutil.iter_modules(runstream.wire.proto.__path__)
        if m.name.endswith("_pb2")
    ]
    services = {service for g in generated for service in g.DESCRIPTOR.services_by_name.values()}
    assert len(services) >= 5
    assert {s.name for s in services} == set(served)
    for service in services:
        modules = [importlib.import_module("runstream.server." + m.replace("/", ".")) for m in served[service.name]]
        servicers = [
            c
            for module in modules
            for c in vars(module).values()
            if isinstance(c, type) and c.__module__ == module.__name__
        ]
        missing = [m.name for m in service.methods if not any(callable(getattr(c, m.name, None)) for c in servicers)]
        assert not missing, f"{service.name}: {served[service.name]} serve none of {missing}"

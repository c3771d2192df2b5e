"""TLS with a CA made here: the SDK logs, queries and moves artifacts over grpcs:// and https;
a plaintext client on the TLS port fails fast with a clear message; with --tls-client-ca a
client without a certificate is refused and one with a certificate of that CA gets in."""

from __future__ import annotations

import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.errors import RunstreamError, Unavailable
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_args(pki: Pki) -> list[str]:
    return ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]


def test_the_sdk_logs_queries_and_moves_artifacts_over_tls(
    make_server: Any, pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = make_server(*_tls_args(pki))
    assert any(f"grpcs://127.0.0.1:{server.port}" in line for line in server.output)
    monkeypatch.setenv("RUNSTREAM_TLS_CA", str(pki.ca))
    target = f"grpcs://{server.target}"
    model = tmp_path / "model.bin"
    model.write_bytes(np.random.default_rng(1).bytes(200_000))
    with runstream.Client(target) as client:
        run = client.start_run("tls", record_source=False)
        for step in range(2_000):
            run.log_metric("loss", 1 / (step + 1), step=step)
        run.log_artifact(model)
        run.end()
        assert server.wait_points(run.run_id, 2_000) == 2_000
        client.artifacts.download_artifacts(run.run_id, "model.bin", tmp_path / "back")
    assert (tmp_path / "back" / "model.bin").read_bytes() == model.read_bytes()
    with runstream.QueryClient(target) as query:
        history = query.get_metric_history(run.run_id, "loss", max_points=10_000)
    assert history.step.tolist() == list(range(2_000))
    context = ssl.create_default_context(cafile=str(pki.ca))  # /metrics is on the TLS HTTP port too
    with urllib.request.urlopen(f"https://127.0.0.1:{server.http_port}/metrics", context=context, timeout=10) as r:
        assert b"runstream_points_received_total" in r.read()
    with urllib.request.urlopen(f"https://127.0.0.1:{server.http_port}/healthz", context=context, timeout=10) as r:
        assert r.read() == b"SERVING\n"


def test_a_plaintext_client_on_a_tls_port_fails_fast_and_says_why(make_server: Any, pki: Pki) -> None:
    server = make_server(*_tls_args(pki))
    t0 = time.monotonic()
    with runstream.Client(server.target, timeout=20) as client, pytest.raises(Unavailable) as refused:
        client.create_run("plaintext")
    assert time.monotonic() - t0 < 10
    assert "grpcs://" in str(refused.value), str(refused.value)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    make_server: Any, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(*_tls_args(pki), "--tls-client-ca", str(pki.ca))
    monkeypatch.setenv("RUNSTREAM_TLS_CA", str(pki.ca))
    target = f"grpcs://{server.target}"
    with runstream.Client(target, timeout=10) as client, pytest.raises(RunstreamError):
        client.create_run("no certificate")
    monkeypatch.setenv("RUNSTREAM_TLS_CLIENT_CERT", str(pki.client_cert))
    monkeypatch.setenv("RUNSTREAM_TLS_CLIENT_KEY", str(pki.client_key))
    with runstream.Client(target) as client:
        assert client.create_run("with certificate").run_id

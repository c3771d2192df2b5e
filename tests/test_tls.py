"""TLS with a CA made here: the SDK logs, queries and moves artifacts over grpcs:// and https;
a plaintext client on the TLS port fails fast with a clear message; with --tls-client-ca a
client without a certificate is refused and one with a certificate of that CA gets in."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import runstream
from runstream.errors import RunstreamError, Unavailable


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _issue(ca_cert: x509.Certificate, ca_key: Any, common: str, server: bool) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("runstream test CA"))
        .issuer_name(_name("runstream test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca, _ = _write(folder, "ca", ca_cert, ca_key)
    server_cert, server_key = _write(folder, "server", *_issue(ca_cert, ca_key, "127.0.0.1", server=True))
    client_cert, client_key = _write(folder, "client", *_issue(ca_cert, ca_key, "trainer", server=False))
    return Pki(ca, server_cert, server_key, client_cert, client_key)


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

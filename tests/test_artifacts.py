"""Artifacts through the local store (the embedded default): uploads straight to signed URLs
on the server's HTTP port, multipart in parallel, listing, downloads checked by SHA-256, and
URLs that cannot be bent to another key, size or time."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import runstream
from runstream.artifacts import transfer
from runstream.client import typed_errors
from runstream.proto import artifacts_pb2 as apb
from tests.conftest import Server

MiB = 1024 * 1024


def _file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of `size` pseudo-random bytes, written a MiB at a time."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with path.open("wb") as f:
        for offset in range(0, size, MiB):
            f.write(block[: min(MiB, size - offset)])
    return path


@typed_errors
def _rpc(client: runstream.Client, method: str, request: object) -> object:
    """An ArtifactService call as the SDK makes it, statuses mapped to typed exceptions."""
    return getattr(client.artifacts._stub, method)(request, timeout=30)


def _put(url: str, body: bytes) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("PUT", f"{parts.path}?{parts.query}", body=body)
    status = conn.getresponse().status
    conn.close()
    return status


def test_files_round_trip_byte_exact_small_and_multipart(server: Server, tmp_path: Path) -> None:
    small = tmp_path / "config.json"
    small.write_text('{"lr": 0.1}')
    big = _file(tmp_path / "model.bin", 150 * MiB + 123)  # 3 parts of 64 MiB
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        a = run.log_artifact(small)
        b = run.log_artifact(big, "checkpoints")
        assert (a.path, a.size, a.sha256) == ("config.json", small.stat().st_size, transfer.sha256_of(small))
        assert (b.path, b.size) == ("checkpoints/model.bin", big.stat().st_size)
        top = client.list_artifacts(run.run_id)
        assert [(x.path, x.is_dir, x.size) for x in top] == [
            ("checkpoints", True, big.stat().st_size),
            ("config.json", False, small.stat().st_size),
        ]
        out = client.download_artifacts(run.run_id, "checkpoints/model.bin", tmp_path / "down")
        assert out.stat().st_size == big.stat().st_size and transfer.sha256_of(out) == transfer.sha256_of(big)
        assert (client.download_artifacts(run.run_id, "config.json", tmp_path / "down")).read_text() == '{"lr": 0.1}'
    assert not list((server.artifacts / ".uploads").iterdir())  # the parts were put together and removed


def test_directories_upload_list_and_download(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "plots"
    (src / "val").mkdir(parents=True)
    (src / "loss.svg").write_text("<svg/>")
    (src / "val" / "acc.csv").write_text("step,acc\n1,0.5\n")
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        run.log_artifacts(src, "figures")
        run.log_text("hello", "notes/readme.txt")
        assert [x.path for x in client.list_artifacts(run.run_id)] == ["figures", "notes"]
        assert [(x.path, x.is_dir) for x in client.list_artifacts(run.run_id, "figures/")] == [
            ("figures/loss.svg", False),
            ("figures/val", True),
        ]
        got = client.download_artifacts(run.run_id, "figures", tmp_path / "copy")
        assert (got / "val" / "acc.csv").read_text() == "step,acc\n1,0.5\n" and (
            got / "loss.svg"
        ).read_text() == "<svg/>"
        text = client.list_artifacts(run.run_id, "notes")[0]
        assert text.content_type.startswith("text/plain") and text.size == 5


def test_an_upload_never_completed_is_not_listed(server: Server) -> None:
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        stub = client.artifacts._stub
        body = b"x" * 100
        upload = stub.CreateUpload(
            apb.CreateUploadRequest(
                run_id=run.run_id, path="half.bin", size=100, sha256=hashlib.sha256(body).hexdigest()
            )
        )
        assert _put(upload.url, body) == 200  # the bytes landed, but nobody completed the upload
        assert client.list_artifacts(run.run_id) == []
        with pytest.raises(runstream.NotFound, match=r"no artifact 'half\.bin'"):
            client.download_artifacts(run.run_id, "half.bin", "/tmp")
        stub.AbortUpload(apb.UploadRef(upload_id=upload.upload_id))
        with pytest.raises(runstream.NotFound, match="does not exist"):
            _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=upload.upload_id))
        wrong = stub.CreateUpload(apb.CreateUploadRequest(run_id=run.run_id, path="w.bin", size=10, sha256="0" * 64))
        with pytest.raises(runstream.FailedPrecondition, match="nothing was uploaded"):
            _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=wrong.upload_id))


def test_a_signed_url_cannot_write_another_key_size_or_time(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--artifact-url-expiry", "2")
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        upload = client.artifacts._stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run.run_id, path="a.txt", size=3, sha256="0" * 64)
        )
        assert _put(upload.url.replace("/a.txt?", "/b.txt?"), b"abc") == 403  # another key
        other_run = upload.url.replace(run.run_id, "00000000-0000-4000-8000-000000000000")
        assert _put(other_run, b"abc") == 403
        assert _put(upload.url.replace("s=3", "s=4"), b"abcd") == 403  # another size
        assert _put(upload.url, b"abcd") == 400  # more bytes than signed for
        time.sleep(3)
        assert _put(upload.url, b"abc") == 403  # expired
    assert not any(p.is_file() for p in (server.artifacts / "objects").rglob("*"))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", "'..' segment"),
        ("/etc/passwd", "is absolute"),
        ("a/../../b", "'..' segment"),
        ("a\x00b", "control character"),
        ("x" * 1025, "1,025 bytes; the limit is 1,024"),
        ("a\\b", "backslash"),
        ("C:/windows", "is absolute"),
        ("a//b", "empty"),
        ("", "is empty"),
    ],
)
def test_hostile_paths_are_invalid(server: Server, path: str, message: str) -> None:
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        with pytest.raises(runstream.InvalidArgument, match=message):
            _rpc(client, "CreateUpload", apb.CreateUploadRequest(run_id=run.run_id, path=path, size=1, sha256="0" * 64))


def test_server_memory_stays_flat_while_a_gib_goes_through(server: Server, tmp_path: Path) -> None:
    big = _file(tmp_path / "huge.bin", 1024 * MiB, seed=3)
    assert server.proc is not None
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        run.log_artifact(big)
        out = client.download_artifacts(run.run_id, "huge.bin", tmp_path / "back")
        assert transfer.sha256_of(out) == transfer.sha256_of(big)
    status = Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
    peak_kib = int(next(line for line in status if line.startswith("VmHWM")).split()[1])
    assert peak_kib < 400 * 1024, f"server peak RSS {peak_kib // 1024} MiB while moving 1 GiB"
    os.unlink(out)

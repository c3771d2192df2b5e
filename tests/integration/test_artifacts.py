"""Artifacts through both stores, the local one (the embedded default, signed URLs served on the
server's HTTP port) and S3 (moto's standalone server on loopback): uploads straight to signed
URLs, multipart in parallel, listing, downloads checked by SHA-256, and URLs that cannot be bent
to another key, size or time."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import numpy as np
import pytest

import runstream
from runstream.client import transfer
from runstream.client.channel import typed_errors
from runstream.errors import ResourceExhausted
from runstream.wire.proto import artifacts_pb2 as apb
from tests.conftest import S3, S3_CREDENTIALS, Server

MiB = 1024 * 1024


def _file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of `size` random bytes (no two parts alike), written 16 MiB at a time."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        for offset in range(0, size, 16 * MiB):
            f.write(rng.bytes(min(16 * MiB, size - offset)))
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


@dataclass
class Store:
    """A server on one kind of store, and a way to look into that store behind its back."""

    server: Server
    s3: S3 | None = None
    bucket: str = ""

    def unfinished_uploads(self) -> int:
        if self.s3 is None:
            return len(list((self.server.artifacts / ".uploads").iterdir()))
        return len(self.s3.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def objects(self) -> list[str]:
        if self.s3 is None:
            root = self.server.artifacts / "objects"
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        listing = self.s3.client.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return sorted(o["Key"] for o in listing)


def s3_server(make_server: Any, s3: S3, *extra: str) -> Store:
    bucket = s3.new_bucket()
    server = make_server(
        "--artifacts", f"s3://{bucket}/team/a", "--s3-endpoint-url", s3.endpoint, *extra, env=S3_CREDENTIALS
    )
    return Store(server, s3, bucket)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, make_server: Any) -> Store:
    if request.param == "local":
        return Store(make_server())
    return s3_server(make_server, request.getfixturevalue("moto_s3"))


def test_files_round_trip_byte_exact_small_and_multipart(store: Store, tmp_path: Path) -> None:
    server = store.server
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
    assert store.unfinished_uploads() == 0  # the parts were put together and removed
    assert store.objects()[-1].endswith(f"runs/{run.run_id}/artifacts/config.json")


def test_directories_upload_list_and_download(store: Store, tmp_path: Path) -> None:
    server = store.server
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
        assert got == tmp_path / "copy" / "figures"
        assert (got / "val" / "acc.csv").read_text() == "step,acc\n1,0.5\n" and (
            got / "loss.svg"
        ).read_text() == "<svg/>"
        text = client.list_artifacts(run.run_id, "notes")[0]
        assert text.content_type.startswith("text/plain") and text.size == 5


def test_an_upload_never_completed_is_not_listed(store: Store) -> None:
    server = store.server
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
        assert [k for k in store.objects() if k.endswith("half.bin")]
        stub.AbortUpload(apb.UploadRef(upload_id=upload.upload_id))
        assert store.objects() == []  # aborting removed the bytes nobody recorded
        with pytest.raises(runstream.NotFound, match="does not exist"):
            _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=upload.upload_id))
        wrong = stub.CreateUpload(apb.CreateUploadRequest(run_id=run.run_id, path="w.bin", size=10, sha256="0" * 64))
        with pytest.raises(runstream.FailedPrecondition, match="nothing was uploaded"):
            _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=wrong.upload_id))


def test_a_signed_url_cannot_write_another_key_size_content_or_time(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--artifact-url-expiry", "2")
    abc = hashlib.sha256(b"abc").hexdigest()
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        upload = client.artifacts._stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run.run_id, path="a.txt", size=3, sha256=abc)
        )
        assert _put(upload.url.replace("/a.txt?", "/b.txt?"), b"abc") == 403  # another key
        other_run = upload.url.replace(run.run_id, "00000000-0000-4000-8000-000000000000")
        assert _put(other_run, b"abc") == 403
        assert _put(upload.url.replace("s=3", "s=4"), b"abcd") == 403  # another size
        abd = hashlib.sha256(b"abd").hexdigest()
        assert _put(upload.url.replace(abc, abd), b"abd") == 403  # another checksum
        assert _put(upload.url, b"abcd") == 400  # more bytes than signed for
        assert _put(upload.url, b"abd") == 400  # other bytes than signed for
        assert not any(p.is_file() for p in (server.artifacts / "objects").rglob("*"))
        time.sleep(3)
        assert _put(upload.url, b"abc") == 403  # expired
    assert not any(p.is_file() for p in (server.artifacts / "objects").rglob("*"))


def test_parts_are_signed_one_by_one_for_their_checksums(make_server: Any, tmp_path: Path) -> None:
    server = make_server("--artifact-part-size", str(5 * MiB))
    src = _file(tmp_path / "w.bin", 11 * MiB, seed=9)
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        stub = client.artifacts._stub
        upload = stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run.run_id, path="w.bin", size=11 * MiB, sha256=transfer.sha256_of(src))
        )
        assert [(p.part_number, p.offset, p.size, p.url) for p in upload.parts] == [
            (1, 0, 5 * MiB, ""),
            (2, 5 * MiB, 5 * MiB, ""),
            (3, 10 * MiB, MiB, ""),
        ]
        sums = [transfer.sha256_of(src, p.offset, p.size) for p in upload.parts]
        signed = stub.SignParts(
            apb.SignPartsRequest(
                upload_id=upload.upload_id,
                parts=[apb.PartChecksum(part_number=n, sha256=h) for n, h in zip((1, 2, 3), sums, strict=True)],
            )
        ).parts
        with src.open("rb") as f:
            bodies = [f.read(p.size) for p in upload.parts]
        assert _put(signed[0].url, bodies[1]) == 400  # part 2's bytes under part 1's checksum
        etags = [transfer.put_range(p.url, src, p.offset, p.size, p.headers) for p in signed]
        with pytest.raises(runstream.InvalidArgument, match="every part's sha256"):
            _rpc(
                client,
                "CompleteUpload",
                apb.CompleteUploadRequest(
                    upload_id=upload.upload_id,
                    parts=[apb.CompletedPart(part_number=n, etag=e) for n, e in zip((1, 2, 3), etags, strict=True)],
                ),
            )
        with pytest.raises(runstream.InvalidArgument, match=r"part_number 4 is not a part of this upload \(1 to 3\)"):
            _rpc(
                client,
                "SignParts",
                apb.SignPartsRequest(
                    upload_id=upload.upload_id, parts=[apb.PartChecksum(part_number=4, sha256=sums[0])]
                ),
            )
        done = stub.CompleteUpload(
            apb.CompleteUploadRequest(
                upload_id=upload.upload_id,
                parts=[
                    apb.CompletedPart(part_number=n, etag=e, sha256=h)
                    for n, e, h in zip((1, 2, 3), etags, sums, strict=True)
                ],
            )
        )
        assert (done.size, done.sha256) == (11 * MiB, transfer.sha256_of(src))
        single = stub.CreateUpload(apb.CreateUploadRequest(run_id=run.run_id, path="s", size=1, sha256="0" * 64))
        with pytest.raises(runstream.FailedPrecondition, match="it has no parts"):
            _rpc(client, "SignParts", apb.SignPartsRequest(upload_id=single.upload_id))


def _sigv4_signature(url: str, method: str, headers: dict[str, str], secret: str) -> str:
    """The SigV4 query signature of `url` recomputed from scratch (AWS's documented algorithm),
    so the test knows exactly which method, key, headers and expiry the URL is bound to."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query))
    signed = dict(query)["X-Amz-SignedHeaders"]
    canonical_headers = "".join(f"{h}:{headers[h]}\n" for h in signed.split(";"))
    request = "\n".join([method, parts.path, canonical_query, canonical_headers, signed, "UNSIGNED-PAYLOAD"])
    amz_date = dict(query)["X-Amz-Date"]
    scope = dict(query)["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for piece in scope.split("/"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_s3_urls_are_signed_for_one_key_size_and_expiry(make_server: Any, moto_s3: S3) -> None:
    # moto checks neither presigned signatures nor checksums, so the test checks what S3 would: the
    # signature covers exactly this bucket/key, Content-Length, SHA-256 and lifetime, nothing else.
    store = s3_server(make_server, moto_s3, "--artifact-url-expiry", "120", "--artifact-part-size", str(5 * MiB))
    secret = S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    host = urlsplit(moto_s3.endpoint).netloc
    with runstream.Client(store.server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        before = datetime.now(timezone.utc).replace(microsecond=0)
        abc = hashlib.sha256(b"abc").hexdigest()
        single = client.artifacts._stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run.run_id, path="dir/a b.txt", size=3, sha256=abc)
        )
        multi = client.artifacts._stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run.run_id, path="big.bin", size=11 * MiB, sha256="0" * 64)
        )
        part_sums = [hashlib.sha256(str(n).encode()).hexdigest() for n in (1, 2, 3)]
        parts = client.artifacts._stub.SignParts(
            apb.SignPartsRequest(
                upload_id=multi.upload_id,
                parts=[apb.PartChecksum(part_number=n, sha256=h) for n, h in zip((1, 2, 3), part_sums, strict=True)],
            )
        ).parts
    url = urlsplit(single.url)
    query = dict(parse_qsl(url.query))
    assert url.path == f"/{store.bucket}/team/a/runs/{run.run_id}/artifacts/dir/a%20b.txt"
    assert query["X-Amz-Expires"] == "120"
    assert query["X-Amz-SignedHeaders"] == "content-length;host;x-amz-checksum-sha256"
    checksum = base64.b64encode(bytes.fromhex(abc)).decode()
    assert dict(single.headers) == {"x-amz-checksum-sha256": checksum}  # what the client must send
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert 0 <= (signed_at - before).total_seconds() < 10
    headers = {"content-length": "3", "host": host, "x-amz-checksum-sha256": checksum}
    assert _sigv4_signature(single.url, "PUT", headers, secret) == query["X-Amz-Signature"]
    for bent in (
        single.url.replace("a%20b.txt", "b.txt"),
        single.url.replace("X-Amz-Expires=120", "X-Amz-Expires=9999"),
    ):
        assert _sigv4_signature(bent, "PUT", headers, secret) != query["X-Amz-Signature"]
    for other in ({"content-length": "4"}, {"x-amz-checksum-sha256": "A" + checksum[1:]}):
        assert _sigv4_signature(single.url, "PUT", {**headers, **other}, secret) != query["X-Amz-Signature"]
    assert [(p.part_number, p.size) for p in parts] == [(1, 5 * MiB), (2, 5 * MiB), (3, MiB)]
    for part, part_sum in zip(parts, part_sums, strict=True):
        q = dict(parse_qsl(urlsplit(part.url).query))
        assert (q["partNumber"], q["X-Amz-Expires"]) == (str(part.part_number), "120")
        part_checksum = base64.b64encode(bytes.fromhex(part_sum)).decode()
        assert dict(part.headers) == {"x-amz-checksum-sha256": part_checksum}
        part_headers = {"content-length": str(part.size), "host": host, "x-amz-checksum-sha256": part_checksum}
        assert _sigv4_signature(part.url, "PUT", part_headers, secret) == q["X-Amz-Signature"]


def test_a_server_pointed_at_a_missing_bucket_says_so(make_server: Any, moto_s3: S3) -> None:
    server = make_server(
        "--artifacts",
        "s3://no-such-bucket-here/x",
        "--s3-endpoint-url",
        moto_s3.endpoint,
        env=S3_CREDENTIALS,
        start=False,
    )
    with contextlib.suppress(RuntimeError):  # start() may or may not see its loader start first
        server.start(timeout=30)
    assert server.proc is not None and server.proc.wait(30) != 0
    time.sleep(0.5)  # the last lines of output
    assert re.search(
        r"cannot use the artifact store s3://no-such-bucket-here/x: .*bucket 'no-such-bucket-here'.*404",
        "".join(server.output),
    )


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


CLI = [sys.executable, "-m", "runstream.cli", "artifacts"]


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--url", server.target], capture_output=True, text=True, timeout=120)


def test_cli_puts_lists_gets_and_removes(server: Server, tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "weights").mkdir(parents=True)
    (model / "MLmodel").write_text("flavor: sklearn\n")
    _file(model / "weights" / "w.bin", 3 * MiB + 7, seed=5)
    with runstream.Client(server.target) as client:
        run_id = client.create_run("artifacts").run_id
    put = _cli(server, "put", run_id, str(model), "--path", "model")
    assert put.returncode == 0, put.stderr
    assert put.stdout.splitlines() == ["uploaded model/MLmodel (16 B)", "uploaded model/weights/w.bin (3.0 MiB)"]
    ls = _cli(server, "ls", run_id, "model")
    assert ls.returncode == 0, ls.stderr
    header, _, *rows = ls.stdout.splitlines()
    assert header.split() == ["path", "size", "type", "sha256", "created"]
    assert [r.split()[:3] for r in rows] == [["model/MLmodel", "16", "B"], ["model/weights/", "3.0", "MiB"]]
    got = _cli(server, "get", run_id, "model", "-o", str(tmp_path / "down"))
    assert got.returncode == 0, got.stderr
    assert transfer.sha256_of(tmp_path / "down" / "model" / "weights" / "w.bin") == transfer.sha256_of(
        model / "weights" / "w.bin"
    )
    assert _cli(server, "rm", run_id, "model/MLmodel").returncode == 0
    assert [r.split()[0] for r in _cli(server, "ls", run_id, "model").stdout.splitlines()[2:]] == ["model/weights/"]
    missing = _cli(server, "get", run_id, "model/MLmodel", "-o", str(tmp_path))
    assert missing.returncode == 1 and f"run {run_id} has no artifact 'model/MLmodel'" in missing.stderr
    empty = _cli(server, "ls", run_id, "nothing/here")
    assert empty.stdout.strip() == f"run {run_id} has no artifacts under 'nothing/here'"


def test_figures_and_dicts_are_logged_with_their_types(server: Server, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [3, 1, 2])
    with runstream.Client(server.target) as client:
        run = runstream.Run(client, client.create_run("artifacts").run_id)
        png = run.log_figure(fig, "plots/loss.png", dpi=50)
        svg = run.log_figure(fig, "plots/loss.svg")
        cfg = run.log_dict({"lr": 0.1, "layers": [64, 32]}, "config.json")
        with pytest.raises(runstream.InvalidArgument, match="name the figure with its format"):
            run.log_figure(fig, "plots/loss")
        assert (png.content_type, svg.content_type, cfg.content_type) == (
            "image/png",
            "image/svg+xml",
            "application/json",
        )
        back = client.download_artifacts(run.run_id, "plots", tmp_path)
        assert back == tmp_path / "plots"
        assert (back / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (back / "loss.svg").read_bytes()[:1000]
        got = client.download_artifacts(run.run_id, "config.json", tmp_path)
        assert json.loads(got.read_text()) == {"layers": [64, 32], "lr": 0.1}
    plt.close(fig)


def _begin(client: runstream.Client, run_id: str, path: str, body: bytes) -> Any:
    """CreateUpload for `body` at `path`, and its single PUT sent (not completed)."""
    upload: Any = _rpc(
        client,
        "CreateUpload",
        apb.CreateUploadRequest(run_id=run_id, path=path, size=len(body), sha256=hashlib.sha256(body).hexdigest()),
    )
    parts = urlsplit(upload.url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("PUT", f"{parts.path}?{parts.query}", body=body, headers=dict(upload.headers))
    assert conn.getresponse().status == 200
    conn.close()
    return upload


def test_a_replacement_leaves_the_recorded_bytes_alone_until_it_completes(store: Store, tmp_path: Path) -> None:
    v1, v2, v3 = b"weights v1", b"weights v2, longer", b"v3"
    with runstream.Client(store.server.target) as client:
        run_id = client.create_run("replace").run_id
        first = _begin(client, run_id, "model.bin", v1)
        _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=first.upload_id))
        canonical = [k for k in store.objects() if k.endswith(f"runs/{run_id}/artifacts/model.bin")]
        assert len(canonical) == 1

        second = _begin(client, run_id, "model.bin", v2)  # bytes sent, not completed
        assert client.download_artifacts(run_id, "model.bin", tmp_path / "a").read_bytes() == v1
        _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=second.upload_id))
        assert client.download_artifacts(run_id, "model.bin", tmp_path / "b").read_bytes() == v2
        assert [a.size for a in client.list_artifacts(run_id)] == [len(v2)]
        mine = [k for k in store.objects() if f"runs/{run_id}/" in k]
        assert len(mine) == 1 and canonical[0] not in mine  # the replaced object is gone

        third = _begin(client, run_id, "model.bin", v3)  # then abandoned
        _rpc(client, "AbortUpload", apb.UploadRef(upload_id=third.upload_id))
        assert client.download_artifacts(run_id, "model.bin", tmp_path / "c").read_bytes() == v2
        assert [k for k in store.objects() if f"runs/{run_id}/" in k] == mine


def test_a_model_versions_source_cannot_be_replaced(server: Server, tmp_path: Path) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("registered").run_id
        upload = _begin(client, run_id, "model/weights.bin", b"w1")
        _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=upload.upload_id))
        open_replacement = _begin(client, run_id, "model/weights.bin", b"w2")  # before the registration
        client.register_model(run_id, "model", "replace-guard")
        for path in ("model/weights.bin", "model/new.txt"):
            with pytest.raises(runstream.errors.FailedPrecondition, match="'replace-guard' version 1"):
                _begin(client, run_id, path, b"other")
        with pytest.raises(runstream.errors.FailedPrecondition, match="'replace-guard' version 1"):
            _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=open_replacement.upload_id))
        assert client.download_artifacts(run_id, "model/weights.bin", tmp_path).read_bytes() == b"w1"


def test_uploads_past_the_size_limits_are_resource_exhausted_naming_them(make_server: Any, tmp_path: Path) -> None:
    server = make_server("--max-upload-size", "1MiB", "--max-run-artifacts-size", "3MiB")
    sha = hashlib.sha256(b"").hexdigest()
    with runstream.Client(server.target) as client:
        run = client.start_run("limits", record_source=False)
        with pytest.raises(ResourceExhausted, match=r"1,048,576 bytes \(server flag --max-upload-size\)"):
            _rpc(
                client, "CreateUpload", apb.CreateUploadRequest(run_id=run.run_id, path="big", size=MiB + 1, sha256=sha)
            )
        for i in range(2):  # 2 MiB stored
            client.artifacts.log_artifact(run.run_id, _file(tmp_path / f"f{i}", MiB, seed=i))
        pending = _rpc(
            client, "CreateUpload", apb.CreateUploadRequest(run_id=run.run_id, path="p", size=MiB, sha256=sha)
        )
        with pytest.raises(
            ResourceExhausted, match=r"3,145,728 bytes of artifacts stored or under way.*--max-run-artifacts"
        ):
            _rpc(client, "CreateUpload", apb.CreateUploadRequest(run_id=run.run_id, path="q", size=1, sha256=sha))
        _rpc(client, "AbortUpload", apb.UploadRef(upload_id=pending.upload_id))  # room again
        client.artifacts.log_artifact(run.run_id, _file(tmp_path / "f2", MiB, seed=2))
        listed = client.artifacts.list_artifacts(run.run_id)
    assert sorted(a.path for a in listed) == ["f0", "f1", "f2"]


def test_an_unsized_upload_holds_the_largest_upload_in_the_run_budget_until_it_completes(make_server: Any) -> None:
    """MLflow's multipart flow says no size: each open unsized upload holds --max-upload-size of
    the run's --max-run-artifacts-size, so many of them cannot pass it together, and its parts
    together are capped at --max-upload-size by the local store (not each part)."""
    server = make_server("--max-upload-size", "1MiB", "--max-run-artifacts-size", "2148KiB")  # 2 MiB + 100 KiB
    with runstream.Client(server.target) as client:
        run_id = client.create_run("unsized-budget").run_id

        def unsized(path: str) -> apb.Upload:
            request = apb.CreateUploadRequest(run_id=run_id, path=path, unsized_parts=2)
            return _rpc(client, "CreateUpload", request)  # type: ignore[no-any-return]

        first, second = unsized("a.bin"), unsized("b.bin")
        with pytest.raises(ResourceExhausted, match=r"an upload of unknown size.*--max-run-artifacts-size"):
            unsized("c.bin")

        def put(url: str, body: bytes) -> tuple[int, str]:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.netloc, timeout=30)
            conn.request("PUT", f"{parts.path}?{parts.query}", body=body)
            reply = conn.getresponse()
            conn.close()
            return reply.status, reply.getheader("ETag", "")

        assert put(first.parts[0].url, b"x" * (MiB // 2))[0] == 200
        assert put(first.parts[1].url, b"y" * (MiB // 2 + 1))[0] == 413  # the parts together pass the cap
        status, etag1 = put(first.parts[0].url, b"x" * (50 * 1024))  # sent again: it replaces, not adds
        assert status == 200
        status, etag2 = put(first.parts[1].url, b"y" * (50 * 1024))
        assert status == 200
        etags = [apb.CompletedPart(part_number=1, etag=etag1), apb.CompletedPart(part_number=2, etag=etag2)]
        completed = _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=first.upload_id, parts=etags))
        assert completed.size == 100 * 1024  # type: ignore[attr-defined]
        unsized("c.bin")  # the reservation gave way to the 100 KiB stored: room for another MiB
        # Parts sent at once share the cap too: of two 600 KiB parts, one is refused.
        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(lambda part: put(part.url, b"z" * (600 * 1024))[0], second.parts))
        assert statuses == [200, 413]
        _rpc(client, "AbortUpload", apb.UploadRef(upload_id=second.upload_id))
    assert not list((server.artifacts / ".uploads").glob("tmp-*"))


def test_an_upload_is_completed_or_aborted_once_and_leaves_no_bytes_unrecorded(
    make_server: Any, tmp_path: Path
) -> None:
    """Completions and aborts of one upload come one at a time (whoever is second finds it gone,
    NOT_FOUND), so parallel completions cannot interleave their bytes; a part still arriving
    then is a 404, not a 500; and an abort deletes bytes a refused completion put together."""
    server = make_server()
    with runstream.Client(server.target) as client:
        run_id = client.create_run("once").run_id

        def unsized(path: str, parts: int) -> apb.Upload:
            request = apb.CreateUploadRequest(run_id=run_id, path=path, unsized_parts=parts)
            return _rpc(client, "CreateUpload", request)  # type: ignore[no-any-return]

        def put(url: str, body: bytes) -> tuple[int, str]:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.netloc, timeout=30)
            conn.request("PUT", f"{parts.path}?{parts.query}", body=body)
            reply = conn.getresponse()
            conn.close()
            return reply.status, reply.getheader("ETag", "")

        def complete(upload: apb.Upload, etags: list[str]) -> str:
            done = [apb.CompletedPart(part_number=n, etag=e) for n, e in enumerate(etags, 1)]
            try:
                _rpc(client, "CompleteUpload", apb.CompleteUploadRequest(upload_id=upload.upload_id, parts=done))
            except runstream.NotFound:
                return "not found"
            return "completed"

        blocks = [bytes([65 + n]) * MiB for n in range(4)]
        upload = unsized("twice.bin", 4)
        etags = [put(part.url, block)[1] for part, block in zip(upload.parts, blocks, strict=True)]
        with ThreadPoolExecutor(3) as pool:
            outcomes = sorted(pool.map(lambda _: complete(upload, etags), range(3)))
        assert outcomes == ["completed", "not found", "not found"]
        back = client.download_artifacts(run_id, "twice.bin", tmp_path / "back")
        assert back.read_bytes() == b"".join(blocks)
        with pytest.raises(runstream.NotFound, match="completed, aborted or never created"):
            _rpc(client, "AbortUpload", apb.UploadRef(upload_id=upload.upload_id))
        # A part arriving while its upload is aborted: 404, and nothing of it left.
        late = unsized("late.bin", 1)
        url = urlsplit(late.parts[0].url)
        with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
            head = f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {MiB}\r\n\r\n"
            raw.sendall(head.encode() + b"x" * 1000)
            time.sleep(0.5)
            _rpc(client, "AbortUpload", apb.UploadRef(upload_id=late.upload_id))
            raw.sendall(b"x" * (MiB - 1000))
            assert raw.recv(1000).startswith(b"HTTP/1.1 404"), "a part of an aborted upload"
        # A completion refused after the store put the parts together (the path became a model's
        # source meanwhile): the abort that follows deletes those bytes.
        (tmp_path / "model.bin").write_bytes(b"v1")
        client.artifacts.log_file(run_id, tmp_path / "model.bin", "model.bin")
        replacement = unsized("model.bin", 1)
        client.register_model(run_id, "model.bin", "once-model")
        etag = put(replacement.parts[0].url, b"v2")[1]
        with pytest.raises(runstream.FailedPrecondition, match="source"):
            complete(replacement, [etag])
        _rpc(client, "AbortUpload", apb.UploadRef(upload_id=replacement.upload_id))
    objects = server.artifacts / "objects"
    stored = sorted(p.relative_to(objects).as_posix() for p in objects.rglob("*.bin"))
    assert stored == [f"runs/{run_id}/artifacts/model.bin", f"runs/{run_id}/artifacts/twice.bin"]
    assert "Traceback" not in "".join(server.output)
    assert not list((server.artifacts / ".uploads").glob("tmp-*"))


SERVED = [  # (file name, the type it must be served with)
    ("report.html", "text/plain; charset=utf-8"),
    ("page.htm", "text/plain; charset=utf-8"),
    ("page.xhtml", "text/plain; charset=utf-8"),
    ("drawing.svg", "image/svg+xml"),
    ("script.js", "text/plain; charset=utf-8"),
    ("data.xml", "text/plain; charset=utf-8"),
    ("notes.txt", "text/plain; charset=utf-8"),
    ("config.json", "text/plain; charset=utf-8"),
    ("plot.png", "image/png"),
    ("weights", "application/octet-stream"),
    ('we"ird näme.html', "text/plain; charset=utf-8"),
    ("archive.tar.gz", "application/octet-stream"),
]
HOSTILE_HTML = b"<!doctype html><script>fetch('/api/v1/runstream.v1.AdminService/CreateToken')</script>"


def test_stored_files_are_served_as_attachments_that_never_run(store: Store, tmp_path: Path) -> None:
    """An HTML report uploaded by anyone with the write scope must not run as the UI when an
    admin opens its link (issue 33, item 6): attachment, a type that does not execute, nosniff
    and a sandboxing CSP (the local store on the UI's origin), for every store."""
    import urllib.request

    with runstream.Client(store.server.target) as client:
        run_id = client.create_run("served").run_id
        for name, _ in SERVED:
            (tmp_path / name).write_bytes(HOSTILE_HTML)
            client.artifacts.log_file(run_id, tmp_path / name, name, content_type="text/html")  # what it claims
        for name, served_as in SERVED:
            url = _rpc(client, "GetDownloadUrl", apb.ArtifactRef(run_id=run_id, path=name)).url
            with urllib.request.urlopen(url, timeout=30) as response:
                assert response.read() == HOSTILE_HTML  # the bytes, as they are
                headers = response.headers
            assert headers["Content-Type"] == served_as, name
            disposition = headers["Content-Disposition"]
            assert disposition.startswith("attachment;") and quote(name, safe="") in disposition, disposition
            if store.s3 is None:  # served by runstream on the UI's origin: never a document that runs
                assert headers["X-Content-Type-Options"] == "nosniff"
                assert "sandbox" in headers["Content-Security-Policy"].split(";")[-1]
                assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_an_unsized_part_url_is_capped_and_a_stalled_upload_cut_off(make_server: Any) -> None:
    """A signed URL of an unsized upload's part (MLflow's multipart flow) is bound to its number
    only: the local store caps what it takes at --max-upload-size (413) and cuts off a client
    that stops sending (--http-request-timeout), so a URL cannot hold the disk or a task."""
    import socket

    server = make_server("--max-upload-size", str(MiB), "--http-request-timeout", "2")
    with runstream.Client(server.target) as client:
        run_id = client.create_run("artifacts").run_id
        upload = client.artifacts._stub.CreateUpload(
            apb.CreateUploadRequest(run_id=run_id, path="big.bin", unsized_parts=2)
        )
    url = urlsplit(upload.parts[0].url)
    assert _put(upload.parts[0].url, b"x" * (MiB + 1)) == 413
    assert _put(upload.parts[0].url, b"x" * MiB) == 200  # at the cap: taken
    with socket.create_connection((url.hostname, url.port), timeout=30) as raw:
        raw.sendall(
            f"PUT {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"y" * 10
        )  # and then nothing more
        started = time.monotonic()
        answer = raw.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
        assert time.monotonic() - started < 10
    assert not list((server.artifacts / ".uploads").glob("tmp-*"))  # nothing left of either


def test_a_download_is_the_stored_file_never_a_sibling_and_ranges_are_exact(server: Server, tmp_path: Path) -> None:
    """aiohttp's FileResponse serves `<key>.gz` to a client that accepts gzip: anyone who may
    write a run's artifacts could swap the bytes served for a registered model's source. The
    local store serves exactly the stored file (and single byte ranges of it, for previews)."""
    import gzip

    (tmp_path / "model.pkl").write_bytes(b"GOOD MODEL")
    (tmp_path / "model.pkl.gz").write_bytes(gzip.compress(b"EVIL MODEL"))
    with runstream.Client(server.target) as client:
        run_id = client.create_run("siblings").run_id
        client.artifacts.log_file(run_id, tmp_path / "model.pkl", "model.pkl")
        client.register_model(run_id, "model.pkl", "sibling-model")
        client.artifacts.log_file(run_id, tmp_path / "model.pkl.gz", "model.pkl.gz")
        url = urlsplit(_rpc(client, "GetDownloadUrl", apb.ArtifactRef(run_id=run_id, path="model.pkl")).url)

    def get(**headers: str) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(url.netloc, timeout=30)
        conn.request("GET", f"{url.path}?{url.query}", headers=headers)
        reply = conn.getresponse()
        got = (reply.status, reply.read(), dict(reply.getheaders()))
        conn.close()
        return got

    status, data, headers = get(**{"Accept-Encoding": "gzip, deflate, br"})
    assert (status, data) == (200, b"GOOD MODEL") and "Content-Encoding" not in headers
    assert get(Range="bytes=0-3")[:2] == (206, b"GOOD")
    status, data, headers = get(Range="bytes=-5")
    assert (status, data, headers["Content-Range"]) == (206, b"MODEL", "bytes 5-9/10")
    assert get(Range="bytes=5-100")[:2] == (206, b"MODEL")
    assert get(Range="bytes=10-")[0] == 416
    assert get(Range="pages=1")[:2] == (200, b"GOOD MODEL")  # a unit it does not read: the whole file

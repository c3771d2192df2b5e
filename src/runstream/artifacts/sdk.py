"""Artifacts from the SDK: ask the server for signed URLs, move the bytes straight to and from
the store (parts in parallel, with retries), and record the upload once it has landed."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from runstream.artifacts import transfer
from runstream.client import typed_errors
from runstream.proto import artifacts_pb2 as apb
from runstream.proto import artifacts_pb2_grpc as apb_grpc

PARALLEL_PARTS = 4
PROGRESS_ABOVE = 64 * 1024 * 1024  # show a progress bar (tqdm, when installed) for bigger transfers


class ArtifactClient:
    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub: Any = apb_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> apb.Artifact:
        """Upload a file as `artifact_path/<file name>` (or at the top) of the run's artifacts."""
        local = Path(local_path)
        path = f"{artifact_path.strip('/')}/{local.name}" if artifact_path else local.name
        return self._upload(run_id, local, path)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> list[apb.Artifact]:
        """Upload every file under `local_dir`, keeping its layout under `artifact_path`."""
        root = Path(local_dir)
        base = artifact_path.strip("/") + "/" if artifact_path else ""
        return [
            self._upload(run_id, f, base + f.relative_to(root).as_posix())
            for f in sorted(root.rglob("*"))
            if f.is_file()
        ]

    def log_text(self, run_id: str, text: str, artifact_file: str) -> apb.Artifact:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "text"
            local.write_text(text, encoding="utf-8")
            return self._upload(run_id, local, artifact_file, "text/plain; charset=utf-8")

    @typed_errors
    def list_artifacts(self, run_id: str, path: str = "") -> list[apb.Artifact]:
        """Files and directories directly under `path` ("" for the top)."""
        reply = self._stub.ListArtifacts(apb.ListArtifactsRequest(run_id=run_id, prefix=path), timeout=self.timeout)
        return list(reply.artifacts)

    @typed_errors
    def download_artifacts(self, run_id: str, path: str, dst: str | Path) -> Path:
        """Download a file, or a directory with everything under it, into the directory `dst`;
        each file's SHA-256 is checked against the recorded one. Returns the local path."""
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        path = path.strip("/")
        listing = self._stub.ListArtifacts(apb.ListArtifactsRequest(run_id=run_id, prefix=path), timeout=self.timeout)
        if listing.artifacts:  # a directory
            for entry in listing.artifacts:
                name = entry.path.rsplit("/", 1)[-1]
                if entry.is_dir:
                    self.download_artifacts(run_id, entry.path, dst / name)
                else:
                    self._download(run_id, entry.path, dst / name)
            return dst
        target = dst / path.rsplit("/", 1)[-1]
        self._download(run_id, path, target)
        return target

    @typed_errors
    def delete_artifact(self, run_id: str, path: str) -> None:
        self._stub.DeleteArtifact(apb.ArtifactRef(run_id=run_id, path=path), timeout=self.timeout)

    @typed_errors
    def _upload(self, run_id: str, local: Path, path: str, content_type: str = "") -> apb.Artifact:
        size = local.stat().st_size
        upload = self._stub.CreateUpload(
            apb.CreateUploadRequest(
                run_id=run_id, path=path, size=size, sha256=transfer.sha256_of(local), content_type=content_type
            ),
            timeout=self.timeout,
        )
        try:
            with _progress(size, f"upload {path}") as advance:
                if upload.parts:
                    etags = transfer.put_parts(list(upload.parts), local, PARALLEL_PARTS, advance)
                    parts = [apb.CompletedPart(part_number=n, etag=e) for n, e in etags]
                else:
                    transfer.put_range(upload.url, local, 0, size)
                    advance(size)
                    parts = []
        except BaseException:
            self._stub.AbortUpload(apb.UploadRef(upload_id=upload.upload_id), timeout=self.timeout)
            raise
        done: apb.Artifact = self._stub.CompleteUpload(
            apb.CompleteUploadRequest(upload_id=upload.upload_id, parts=parts), timeout=self.timeout
        )
        return done

    def _download(self, run_id: str, path: str, target: Path) -> None:
        link = self._stub.GetDownloadUrl(apb.ArtifactRef(run_id=run_id, path=path), timeout=self.timeout)
        with _progress(link.artifact.size, f"download {path}") as advance:
            transfer.get_to_file(link.url, target, link.artifact.sha256, advance)


class _progress:
    """A tqdm bar for big transfers when tqdm is installed; otherwise nothing."""

    def __init__(self, total: int, label: str) -> None:
        self.bar: Any = None
        if total >= PROGRESS_ABOVE:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,import-not-found,unused-ignore]
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False)

    def __enter__(self) -> Callable[[int], None]:
        bar = self.bar
        return bar.update if bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

"""Artifacts from the SDK: ask the server for signed URLs, move the bytes straight to and from
the store (parts in parallel, with retries), and record the upload once it has landed."""

from __future__ import annotations

import json
import mimetypes
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from runstream.client import transfer
from runstream.client.channel import typed_errors
from runstream.errors import InvalidArgument
from runstream.wire.proto import artifacts_pb2 as apb
from runstream.wire.proto import artifacts_pb2_grpc as apb_grpc

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
        return self._upload(run_id, local, path, mimetypes.guess_type(local.name)[0] or "")

    def log_file(
        self, run_id: str, local_path: str | Path, artifact_file: str, content_type: str = "", *, progress: bool = True
    ) -> apb.Artifact:
        """Upload a file as exactly `artifact_file` in the run's artifacts (with a progress bar
        for a big one, when tqdm is installed, unless `progress` is False)."""
        local = Path(local_path)
        content_type = content_type or mimetypes.guess_type(artifact_file)[0] or ""
        return self._upload(run_id, local, artifact_file, content_type, progress=progress)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> list[apb.Artifact]:
        """Upload every file under `local_dir`, keeping its layout under `artifact_path`."""
        root = Path(local_dir)
        base = artifact_path.strip("/") + "/" if artifact_path else ""
        return [
            self._upload(run_id, f, base + f.relative_to(root).as_posix(), mimetypes.guess_type(f.name)[0] or "")
            for f in sorted(root.rglob("*"))
            if f.is_file()
        ]

    def log_text(self, run_id: str, text: str, artifact_file: str) -> apb.Artifact:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "text"
            local.write_text(text, encoding="utf-8")
            return self._upload(run_id, local, artifact_file, "text/plain; charset=utf-8")

    def log_dict(self, run_id: str, dictionary: Any, artifact_file: str) -> apb.Artifact:
        """A JSON-serialisable object as a JSON artifact (e.g. a config or a label map)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "dict.json"
            local.write_text(json.dumps(dictionary, indent=2, sort_keys=True), encoding="utf-8")
            return self._upload(run_id, local, artifact_file, "application/json")

    def log_figure(self, run_id: str, figure: Any, artifact_file: str, **savefig: Any) -> apb.Artifact:
        """A matplotlib figure saved in the format its name says (png, svg, pdf...)."""
        suffix = Path(artifact_file).suffix
        if not suffix:
            raise InvalidArgument(f"{artifact_file!r}: name the figure with its format, e.g. 'loss.png' or 'loss.svg'")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / f"figure{suffix}"
            figure.savefig(local, **savefig)
            content_type = mimetypes.guess_type(artifact_file)[0] or "application/octet-stream"
            return self._upload(run_id, local, artifact_file, content_type)

    @typed_errors
    def list_artifacts(self, run_id: str, path: str = "") -> list[apb.Artifact]:
        """Files and directories directly under `path` ("" for the top)."""
        reply = self._stub.ListArtifacts(apb.ListArtifactsRequest(run_id=run_id, prefix=path), timeout=self.timeout)
        return list(reply.artifacts)

    @typed_errors
    def download_artifacts(self, run_id: str, path: str, dst: str | Path) -> Path:
        """Download a file, or a directory with everything under it, into the directory `dst`
        (as MLflow does: `plots` arrives as `dst/plots/...`, "" as everything in `dst`); each
        file's SHA-256 is checked against the recorded one. Returns the local path."""
        path = path.strip("/")
        target = Path(dst) / path.rsplit("/", 1)[-1] if path else Path(dst)
        listing = self._stub.ListArtifacts(apb.ListArtifactsRequest(run_id=run_id, prefix=path), timeout=self.timeout)
        if listing.artifacts:  # a directory
            self._download_tree(run_id, listing.artifacts, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._download(run_id, path, target)
        return target

    def _download_tree(self, run_id: str, entries: Any, into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            local = into / entry.path.rsplit("/", 1)[-1]
            if entry.is_dir:
                listing = self._stub.ListArtifacts(
                    apb.ListArtifactsRequest(run_id=run_id, prefix=entry.path), timeout=self.timeout
                )
                self._download_tree(run_id, listing.artifacts, local)
            else:
                self._download(run_id, entry.path, local)

    @typed_errors
    def delete_artifact(self, run_id: str, path: str) -> None:
        self._stub.DeleteArtifact(apb.ArtifactRef(run_id=run_id, path=path), timeout=self.timeout)

    @typed_errors
    def _upload(
        self, run_id: str, local: Path, path: str, content_type: str = "", progress: bool = True
    ) -> apb.Artifact:
        size = local.stat().st_size
        upload = self._stub.CreateUpload(
            apb.CreateUploadRequest(
                run_id=run_id, path=path, size=size, sha256=transfer.sha256_of(local), content_type=content_type
            ),
            timeout=self.timeout,
        )
        try:
            with _progress(size if progress else 0, f"upload {path}") as advance:
                if upload.parts:
                    done = transfer.put_parts(
                        list(upload.parts), local, self._part_signer(upload.upload_id), PARALLEL_PARTS, advance
                    )
                    parts = [apb.CompletedPart(part_number=n, etag=e, sha256=h) for n, e, h in done]
                else:
                    transfer.put_range(upload.url, local, 0, size, upload.headers)
                    advance(size)
                    parts = []
        except BaseException:
            self._stub.AbortUpload(apb.UploadRef(upload_id=upload.upload_id), timeout=self.timeout)
            raise
        artifact: apb.Artifact = self._stub.CompleteUpload(
            apb.CompleteUploadRequest(upload_id=upload.upload_id, parts=parts), timeout=self.timeout
        )
        return artifact

    def _part_signer(self, upload_id: str) -> Callable[[int, str], apb.UploadPart]:
        def sign(part_number: int, sha256: str) -> apb.UploadPart:
            request = apb.SignPartsRequest(
                upload_id=upload_id, parts=[apb.PartChecksum(part_number=part_number, sha256=sha256)]
            )
            signed: apb.UploadPart = self._stub.SignParts(request, timeout=self.timeout).parts[0]
            return signed

        return sign

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

"""MLflow's artifact API (`/api/2.0/mlflow-artifacts/artifacts/...`), on our artifact store.

A run's artifact URI is `mlflow-artifacts:/<experiment>/<run>/artifacts`, so MLflow's client
sends its files here. MLflow's client PUTs a whole file to the server: the server spools it to
a temporary file (for its size and SHA-256, which our uploads are bound to), then puts it into
the store through the same signed URLs, multipart above the part size, as the SDK does, and
records it with CompleteUpload. Downloads are a redirect to a signed URL of the store, so the
bytes come straight from it (files from 500 MB: the signed URL itself, `presigned/`, which MLflow's
client reads in parallel ranges). Listing and deleting call ListArtifacts and DeleteArtifact.

MLflow's multipart flow (`mpu/create|complete|abort`, which MLflow's client uses for files from
MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE, 500 MB, as server-info advertises) answers with a
signed URL of the store per part, so those bytes never pass through the server; MLflow's client
cannot say the parts' checksums, so the upload is unsized (artifacts.proto) and the store tells
its size and SHA-256 at completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import posixpath
import tempfile
from typing import IO, Any

import aiohttp
from aiohttp import web

from runstream.errors import InvalidArgument, NotFound, Unavailable
from runstream.server.artifacts.paths import check_path
from runstream.server.web.body import stream
from runstream.server.web.calls import HttpCall
from runstream.server.web.mlflow.core import Body, MlflowApi, endpoint, integer, objects, text
from runstream.wire.proto import artifacts_pb2 as apb

SERVICE = "ArtifactService"
BLOCK = 1 << 20
MAX_PARTS = 10_000  # S3's, which MLflow's client follows


def run_path(path: str) -> tuple[str, str]:
    """(run id, path in the run) of `<experiment>/<run>/artifacts[/<path>]`."""
    parts = path.strip("/").split("/", 3)
    if len(parts) < 3 or parts[2] != "artifacts":
        raise InvalidArgument(
            f"{path!r} is not an artifact of a run: runstream's artifact paths are <experiment>/<run>/artifacts/<path>"
        )
    return parts[1], parts[3] if len(parts) == 4 else ""


@endpoint("artifacts/{path:path}", "PUT", prefix="mlflow-artifacts")
async def upload(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    run_id, path = run_path(body["path"])
    check_path(path)
    content_type = ctx.request.headers.get("Content-Type", "")
    # The token and the run are checked before a byte is read.
    await api.admit(SERVICE, "CreateUpload", apb.CreateUploadRequest(run_id=run_id, path=path), ctx)
    with tempfile.TemporaryFile() as spool:
        size, sha256 = await _spool(ctx.request, spool)
        req = apb.CreateUploadRequest(run_id=run_id, path=path, size=size, sha256=sha256, content_type=content_type)
        made: apb.Upload = await api.call(SERVICE, "CreateUpload", req, ctx)
        try:
            done = await _put(api, ctx, made, spool, size)
        except BaseException:
            await api.call(SERVICE, "AbortUpload", apb.UploadRef(upload_id=made.upload_id), ctx)
            raise
        await api.call(SERVICE, "CompleteUpload", done, ctx)
    return {}


async def _spool(request: web.Request, spool: IO[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    async for block in stream(request, BLOCK):
        await asyncio.to_thread(_absorb, block, digest, spool)
        size += len(block)
    return size, digest.hexdigest()


def _absorb(block: bytes, digest: Any, spool: IO[bytes]) -> None:
    digest.update(block)
    spool.write(block)


async def _put(api: MlflowApi, ctx: HttpCall, made: apb.Upload, spool: IO[bytes], size: int) -> Any:
    """The spooled file into the store through the upload's signed URL(s)."""
    done = apb.CompleteUploadRequest(upload_id=made.upload_id)
    async with aiohttp.ClientSession() as http:
        if made.url:
            data = await asyncio.to_thread(_read, spool, 0, size)
            await _send(http, made.url, dict(made.headers), data)
            return done
        for layout in made.parts:
            data = await asyncio.to_thread(_read, spool, layout.offset, layout.size)
            sha256 = hashlib.sha256(data).hexdigest()
            req = apb.SignPartsRequest(
                upload_id=made.upload_id, parts=[apb.PartChecksum(part_number=layout.part_number, sha256=sha256)]
            )
            signed: apb.SignPartsResponse = await api.call(SERVICE, "SignParts", req, ctx)
            part = signed.parts[0]
            etag = await _send(http, part.url, dict(part.headers), data)
            done.parts.add(part_number=layout.part_number, etag=etag, sha256=sha256)
    return done


def _read(spool: IO[bytes], offset: int, size: int) -> bytes:
    spool.seek(offset)
    return spool.read(size)


async def _send(http: aiohttp.ClientSession, url: str, headers: dict[str, str], data: bytes) -> str:
    async with http.put(url, data=data, headers=headers) as reply:
        if reply.status >= 300:
            detail = (await reply.text())[:200]
            raise Unavailable(f"the artifact store refused the upload ({reply.status}): {detail}")
        return reply.headers.get("ETag", "")


@endpoint("artifacts/{path:path}", "GET", prefix="mlflow-artifacts")
async def download(api: MlflowApi, body: Body, ctx: HttpCall) -> web.StreamResponse:
    """A redirect to the store's signed URL: the bytes never pass through the server."""
    run_id, path = run_path(body["path"])
    found: apb.DownloadUrl = await api.call(SERVICE, "GetDownloadUrl", apb.ArtifactRef(run_id=run_id, path=path), ctx)
    return web.Response(status=302, headers={"Location": found.url})


@endpoint("presigned/{path:path}", "GET", prefix="mlflow-artifacts")
async def presigned(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """The store's signed URL and the size: MLflow's client fetches large files from it in
    parallel ranges (the local store serves ranges as S3 does)."""
    run_id, path = run_path(body["path"])
    found: apb.DownloadUrl = await api.call(SERVICE, "GetDownloadUrl", apb.ArtifactRef(run_id=run_id, path=path), ctx)
    return {"url": found.url, "headers": {}, "file_size": found.artifact.size}


@endpoint("artifacts", "GET", prefix="mlflow-artifacts")
async def list_artifacts(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    run_id, prefix = run_path(text(body, "path"))
    return {"files": await listing(api, ctx, run_id, prefix)}


async def listing(api: MlflowApi, ctx: HttpCall, run_id: str, prefix: str) -> list[Body]:
    """The files and directories directly under `prefix`, named relative to it, as MLflow's FileInfo."""
    req = apb.ListArtifactsRequest(run_id=run_id, prefix=prefix)
    found: apb.ListArtifactsResponse = await api.call(SERVICE, "ListArtifacts", req, ctx)
    files = []
    for a in found.artifacts:
        entry: Body = {"path": posixpath.relpath(a.path, prefix) if prefix else a.path, "is_dir": a.is_dir}
        if not a.is_dir:
            entry["file_size"] = a.size
        files.append(entry)
    return files


@endpoint("artifacts/{path:path}", "DELETE", prefix="mlflow-artifacts")
async def delete(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """A file, or a directory with everything under it."""
    run_id, path = run_path(body["path"])
    try:
        await api.call(SERVICE, "DeleteArtifact", apb.ArtifactRef(run_id=run_id, path=path), ctx)
        return {}
    except NotFound:
        files = await _files_under(api, ctx, run_id, path)
        if not files:
            raise
    for file in files:
        await api.call(SERVICE, "DeleteArtifact", apb.ArtifactRef(run_id=run_id, path=file), ctx)
    return {}


async def _files_under(api: MlflowApi, ctx: HttpCall, run_id: str, prefix: str) -> list[str]:
    req = apb.ListArtifactsRequest(run_id=run_id, prefix=prefix)
    found: apb.ListArtifactsResponse = await api.call(SERVICE, "ListArtifacts", req, ctx)
    files = []
    for a in found.artifacts:
        files += await _files_under(api, ctx, run_id, a.path) if a.is_dir else [a.path]
    return files


def _multipart_target(body: Body) -> tuple[str, str]:
    """(run id, artifact path) of MLflow's mpu calls: the URL names the directory, the body's
    `path` the local file, whose name the artifact takes."""
    run_id, directory = run_path(body["path_in_url"])
    name = posixpath.basename(text(body, "path").replace("\\", "/"))
    return run_id, check_path(posixpath.join(directory, name) if directory else name)


@endpoint("mpu/create/{path_in_url:path}", "POST", prefix="mlflow-artifacts")
async def multipart_create(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """Every part's URL at once, straight to the store; MLflow's client PUTs the parts there."""
    run_id, path = _multipart_target(body)
    parts = integer(body, "num_parts", 0, (1, MAX_PARTS))
    if not parts:
        raise InvalidArgument(f"num_parts is missing: give the number of parts, 1 to {MAX_PARTS:,}")
    req = apb.CreateUploadRequest(
        run_id=run_id,
        path=path,
        unsized_parts=parts,
        content_type=_guess_type(path),
    )
    made: apb.Upload = await api.call(SERVICE, "CreateUpload", req, ctx)
    credentials = [{"url": p.url, "part_number": p.part_number, "headers": dict(p.headers)} for p in made.parts]
    return {"upload_id": made.upload_id, "credentials": credentials}


@endpoint("mpu/complete/{path_in_url:path}", "POST", prefix="mlflow-artifacts")
async def multipart_complete(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    _multipart_target(body)
    parts = [
        apb.CompletedPart(
            part_number=integer(p, "part_number", 0, (0, MAX_PARTS)), etag=text(p, "etag", required=False)
        )
        for p in objects(body, "parts")
    ]
    req = apb.CompleteUploadRequest(upload_id=text(body, "upload_id"), parts=parts)
    await api.call(SERVICE, "CompleteUpload", req, ctx)
    return {}


@endpoint("mpu/abort/{path_in_url:path}", "POST", prefix="mlflow-artifacts")
async def multipart_abort(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    _multipart_target(body)
    await api.call(SERVICE, "AbortUpload", apb.UploadRef(upload_id=text(body, "upload_id")), ctx)
    return {}


def _guess_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


@endpoint("server-info", "GET", prefix="3.0/mlflow", public=True)
async def server_info(api: MlflowApi, body: Body, ctx: HttpCall) -> Body:
    """What MLflow's client asks before large transfers: files from 500 MB (MLflow's default
    threshold) go in parts straight to the store, and come back from it in parallel ranges."""
    return {
        "store_type": "runstream",
        "workspaces_enabled": False,
        "trace_archival_enabled": False,
        "multipart_uploads_enabled": True,
        "multipart_downloads_enabled": True,
        "presigned_upload_run_id_supported": False,
        "presigned_upload_model_id_supported": False,
        "features_enabled": {"gateway": False},
    }

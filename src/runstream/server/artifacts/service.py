"""The ArtifactService: sign uploads and downloads, record what landed. Artifact bytes go
between the client and the store; this service only talks to the store about keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import Any

import asyncpg

from runstream.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, RunNotFound
from runstream.server.artifacts.paths import check_path, check_prefix, object_key, replacement_key
from runstream.server.artifacts.stores import ObjectStore, Part, StoreSettings, StoreUnavailable
from runstream.server.rpc import fields
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import artifacts, db, registry, runs
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_upload_id
from runstream.wire.proto import artifacts_pb2 as apb

log = logging.getLogger(__name__)

MAX_SIZE = 5 * 1024**4  # 5 TiB, S3's object limit
MAX_PARTS = 10_000  # S3's part limit
SHA256 = re.compile(r"[0-9a-f]{64}")
STALE_AFTER_MS = 24 * 3600 * 1000  # unfinished uploads older than this are aborted
SWEEP_S = 600.0


class Artifacts:
    def __init__(
        self, pool: asyncpg.Pool, objects: ObjectStore, settings: StoreSettings, metrics: Metrics | None = None
    ) -> None:
        self.pool = pool
        self.metrics = metrics or Metrics()
        self.objects = objects
        self.settings = settings
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def CreateUpload(self, req: apb.CreateUploadRequest, ctx: Any) -> apb.Upload:
        wire.check_run_id(req.run_id)
        path = check_path(req.path)
        if len(req.content_type) > 255:
            raise InvalidArgument("content_type is longer than 255 characters")
        if req.unsized_parts:
            return await self._create_unsized(req, path)
        if not 0 <= req.size <= MAX_SIZE:
            raise InvalidArgument(f"size is {req.size:,} bytes; it must be between 0 and {MAX_SIZE:,} (5 TiB)")
        if not SHA256.fullmatch(req.sha256):
            raise InvalidArgument("sha256 must be the content's SHA-256 as 64 lowercase hex digits")
        part_size = self.settings.part_size
        parts = -(-req.size // part_size) if req.size > part_size else 0
        if parts > MAX_PARTS:
            raise InvalidArgument(f"{req.size:,} bytes would take {parts:,} parts; the limit is {MAX_PARTS:,}")
        self._check_upload_size(req.size)
        async with self.pool.acquire() as conn, conn.transaction():
            await fields.active_run(conn, req.run_id, "adding artifacts")
            await _not_a_model_source(conn, req.run_id, path)
            await _room_in_run(conn, req.run_id, req.size, self.settings.max_run_bytes)
            content_type = req.content_type or "application/octet-stream"
            expires = self.settings.expires_s
            out = apb.Upload(upload_id=str(uuid.uuid4()), expires_at_ms=db.now_ms() + expires * 1000)
            key = object_key(req.run_id, path)
            await artifacts.lock_object_key(conn, key)
            if await artifacts.object_key_taken(conn, req.run_id, key):
                key = replacement_key(req.run_id, path, out.upload_id)
            multipart_id = None
            if parts:  # the layout only: SignParts signs each part for its checksum
                multipart_id = await self.objects.create_multipart(key, content_type)
                for n in range(1, parts + 1):
                    offset, size = _part(n, req.size, part_size)
                    out.parts.add(part_number=n, offset=offset, size=size)
            else:
                signed = await self.objects.presign_put(key, req.size, req.sha256, expires)
                out.url = signed.url
                out.headers.update(signed.headers)
            await artifacts.create_upload(
                conn,
                upload_id=out.upload_id,
                run_id=req.run_id,
                path=path,
                object_key=key,
                size=req.size,
                sha256=req.sha256,
                content_type=content_type,
                multipart_id=multipart_id,
                part_size=part_size,
            )
        self.metrics.uploads_signed.labels("multipart" if parts else "single").inc()
        return out

    def _check_upload_size(self, size: int) -> None:
        if size > self.settings.max_upload_bytes:
            raise ResourceExhausted(
                f"{size:,} bytes is more than one upload may be: the limit is "
                f"{self.settings.max_upload_bytes:,} bytes (server flag --max-upload-size)"
            )

    async def _create_unsized(self, req: apb.CreateUploadRequest, path: str) -> apb.Upload:
        """A multipart upload whose size and SHA-256 come to light at completion: every part
        signed now, bound to its number only."""
        if req.size or req.sha256:
            raise InvalidArgument("an upload with unsized_parts has no size or sha256; give one or the other")
        if not 0 < req.unsized_parts <= MAX_PARTS:
            raise InvalidArgument(f"unsized_parts is {req.unsized_parts:,}; it must be between 1 and {MAX_PARTS:,}")
        content_type = req.content_type or "application/octet-stream"
        expires = self.settings.expires_s
        out = apb.Upload(upload_id=str(uuid.uuid4()), expires_at_ms=db.now_ms() + expires * 1000)
        # Its bytes are unknown until it completes, so it holds the most one upload may be in the
        # run's budget: open unsized uploads cannot pass --max-run-artifacts-size together.
        reserved = self.settings.max_upload_bytes
        async with self.pool.acquire() as conn, conn.transaction():
            await fields.active_run(conn, req.run_id, "adding artifacts")
            await _not_a_model_source(conn, req.run_id, path)
            await _room_in_run(
                conn,
                req.run_id,
                reserved,
                self.settings.max_run_bytes,
                "an upload of unknown size (up to --max-upload-size)",
            )
            key = object_key(req.run_id, path)
            await artifacts.lock_object_key(conn, key)
            if await artifacts.object_key_taken(conn, req.run_id, key):
                key = replacement_key(req.run_id, path, out.upload_id)
            multipart_id = await self.objects.create_multipart(key, content_type, checksums=False)
            for n in range(1, req.unsized_parts + 1):
                signed = await self.objects.presign_part(key, multipart_id, n, -1, "", expires)
                out.parts.add(part_number=n, offset=-1, size=-1, url=signed.url, headers=signed.headers)
            await artifacts.create_upload(
                conn,
                upload_id=out.upload_id,
                run_id=req.run_id,
                path=path,
                object_key=key,
                size=reserved,  # until completed: then what was stored
                sha256="",  # marks an unsized upload
                content_type=content_type,
                multipart_id=multipart_id,
                part_size=0,
            )
        self.metrics.uploads_signed.labels("unsized").inc()
        return out

    async def SignParts(self, req: apb.SignPartsRequest, ctx: Any) -> apb.SignPartsResponse:
        async with self.pool.acquire() as conn:
            upload = await _upload(conn, req.upload_id)
        if upload.multipart_id is None:
            raise FailedPrecondition(f"upload {req.upload_id} is one PUT to the URL CreateUpload gave; it has no parts")
        if not upload.sha256:
            raise FailedPrecondition(f"upload {req.upload_id} is unsized: CreateUpload signed all of its parts")
        count = -(-upload.size // upload.part_size)
        expires = self.settings.expires_s
        out = apb.SignPartsResponse(expires_at_ms=db.now_ms() + expires * 1000)
        for p in req.parts:
            if not 1 <= p.part_number <= count:
                raise InvalidArgument(f"part_number {p.part_number} is not a part of this upload (1 to {count})")
            if not SHA256.fullmatch(p.sha256):
                raise InvalidArgument(f"part {p.part_number}: sha256 must be 64 lowercase hex digits")
            offset, size = _part(p.part_number, upload.size, upload.part_size)
            signed = await self.objects.presign_part(
                upload.object_key, upload.multipart_id, p.part_number, size, p.sha256, expires
            )
            out.parts.add(part_number=p.part_number, offset=offset, size=size, url=signed.url, headers=signed.headers)
        return out

    async def CompleteUpload(self, req: apb.CompleteUploadRequest, ctx: Any) -> apb.Artifact:
        upload_id = canonical_upload_id(req.upload_id)
        async with self.pool.acquire() as conn, artifacts.upload_held(conn, upload_id):
            upload = await _upload(conn, upload_id)
            unsized = not upload.sha256
            if upload.multipart_id is not None:
                numbers = sorted(p.part_number for p in req.parts)
                # An unsized upload has as many parts as were sent (at least one); a sized one, its layout's.
                expected = max(numbers[-1:] or [1]) if unsized else -(-upload.size // upload.part_size)
                if numbers != list(range(1, expected + 1)):
                    raise InvalidArgument(f"give the ETag of every part, 1 to {expected}, once each")
                if not unsized and not all(SHA256.fullmatch(p.sha256) for p in req.parts):
                    raise InvalidArgument("give every part's sha256 as signed by SignParts (64 lowercase hex digits)")
                await self.objects.complete_multipart(
                    upload.object_key,
                    upload.multipart_id,
                    [Part(p.part_number, p.etag, "" if unsized else p.sha256) for p in req.parts],
                )
            if unsized:
                upload = await self._measure(conn, upload)
            stored = await self.objects.size_of(upload.object_key)
            if stored is None:
                raise FailedPrecondition(f"nothing was uploaded for {upload.path!r}; PUT the file first")
            if stored != upload.size:
                raise FailedPrecondition(f"{upload.path!r} has {stored:,} bytes stored, {upload.size:,} announced")
            async with conn.transaction():
                await artifacts.lock_object_key(conn, object_key(upload.run_id, upload.path))
                await _not_a_model_source(conn, upload.run_id, upload.path)
                row, replaced = await artifacts.record_artifact(conn, upload)
                await artifacts.delete_upload(conn, req.upload_id)
        if replaced is not None and replaced != upload.object_key:
            await self.objects.delete(replaced)  # recorded no more: the new bytes are in place
        self.metrics.uploads_completed.inc()
        self.metrics.upload_bytes.inc(upload.size)
        return _artifact(row, is_dir=False)

    async def _measure(self, conn: Any, upload: artifacts.UploadRow) -> artifacts.UploadRow:
        """An unsized upload, completed: its size and SHA-256 from the store, within the limits
        (or the object is deleted and the upload forgotten)."""
        size, sha256 = await self.objects.digest_of(upload.object_key)
        try:
            self._check_upload_size(size)
            async with conn.transaction():
                # The run's bytes under way count this upload's reservation: it gives way to the size.
                await _room_in_run(conn, upload.run_id, size - upload.size, self.settings.max_run_bytes)
        except ResourceExhausted:
            await self.objects.delete(upload.object_key)
            await artifacts.delete_upload(conn, upload.upload_id)
            raise
        return upload._replace(size=size, sha256=sha256)

    async def AbortUpload(self, req: apb.UploadRef, ctx: Any) -> apb.AbortUploadResponse:
        upload_id = canonical_upload_id(req.upload_id)
        async with self.pool.acquire() as conn, artifacts.upload_held(conn, upload_id):
            upload = await _upload(conn, upload_id)
            await self._abort(conn, upload)
        return apb.AbortUploadResponse()

    async def ListArtifacts(self, req: apb.ListArtifactsRequest, ctx: Any) -> apb.ListArtifactsResponse:
        wire.check_run_id(req.run_id)
        prefix = check_prefix(req.prefix)
        async with self.pool.acquire() as conn:
            await _run(conn, req.run_id)
            rows = await artifacts.list_artifacts(conn, req.run_id, prefix + "/" if prefix else "")
        return apb.ListArtifactsResponse(artifacts=[_artifact(r, r.is_dir) for r in rows])

    async def GetDownloadUrl(self, req: apb.ArtifactRef, ctx: Any) -> apb.DownloadUrl:
        row = await self._artifact(req)
        expires = self.settings.expires_s
        return apb.DownloadUrl(
            url=await self.objects.presign_get(row.object_key, expires),
            artifact=_artifact(row, is_dir=False),
            expires_at_ms=db.now_ms() + expires * 1000,
        )

    async def DeleteArtifact(self, req: apb.ArtifactRef, ctx: Any) -> apb.DeleteArtifactResponse:
        wire.check_run_id(req.run_id)
        path = check_path(req.path)
        async with self.pool.acquire() as conn, conn.transaction():
            await _not_a_model_source(conn, req.run_id, path)
            key = await artifacts.delete_artifact(conn, req.run_id, path)
        if key is None:
            raise NotFound(f"run {req.run_id} has no artifact {path!r}")
        await self.objects.delete(key)
        return apb.DeleteArtifactResponse()

    async def _artifact(self, req: apb.ArtifactRef) -> artifacts.ArtifactRow:
        wire.check_run_id(req.run_id)
        path = check_path(req.path)
        async with self.pool.acquire() as conn:
            row = await artifacts.get_artifact(conn, req.run_id, path)
            if row is None:
                await _run(conn, req.run_id)
                raise NotFound(f"run {req.run_id} has no artifact {path!r}")
        return row

    async def _abort(self, conn: Any, upload: artifacts.UploadRow) -> None:
        if upload.multipart_id is not None:
            await self.objects.abort_multipart(upload.object_key, upload.multipart_id)
        if not await _recorded(conn, upload):
            # A single PUT may have landed, or parts been put together by a completion that was
            # then refused (a model's source): bytes no artifact records.
            await self.objects.delete(upload.object_key)
        await artifacts.delete_upload(conn, upload.upload_id)

    async def _sweep_forever(self) -> None:
        """Abort uploads nobody completed within STALE_AFTER_MS, freeing their parts."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    for u in await artifacts.stale_uploads(conn, db.now_ms() - STALE_AFTER_MS):
                        async with artifacts.upload_held(conn, u.upload_id):
                            if await artifacts.get_upload(conn, u.upload_id) is None:
                                continue  # completed or aborted meanwhile
                            await self._abort(conn, u)
                        log.info("aborted stale upload %s (%s)", u.upload_id, u.object_key)
            except (OSError, asyncpg.PostgresError, StoreUnavailable) as exc:
                log.warning("sweeping stale uploads failed: %s", exc)
            await asyncio.sleep(SWEEP_S)


async def _run(conn: Any, run_id: str) -> str:
    stage = await runs.run_lifecycle(conn, run_id)
    if stage is None:
        raise RunNotFound(f"run {run_id} does not exist")
    return stage


async def _recorded(conn: Any, upload: artifacts.UploadRow) -> bool:
    row = await artifacts.get_artifact(conn, upload.run_id, upload.path)
    return row is not None and row.object_key == upload.object_key


async def _not_a_model_source(conn: Any, run_id: str, path: str) -> None:
    """A registered model version's bytes never change: its source cannot be replaced or deleted."""
    used = await registry.model_version_using(conn, run_id, path)
    if used is not None:
        raise FailedPrecondition(
            f"{path!r} is the source of model {used[0]!r} version {used[1]}; delete that version first"
        )


async def _room_in_run(conn: Any, run_id: str, size: int, limit: int, what: str = "") -> None:
    """The run's artifacts, stored and under way, stay within `limit` with `size` more. The
    run's lock makes concurrent uploads to one run count one after the other."""
    await artifacts.lock_run_artifacts(conn, run_id)
    used = await artifacts.run_artifact_bytes(conn, run_id)
    if used + size > limit:
        raise ResourceExhausted(
            f"run {run_id} has {used:,} bytes of artifacts stored or under way; {what or 'the upload'} "
            f"({size:,} bytes more) would pass the limit of {limit:,} bytes per run (server flag "
            "--max-run-artifacts-size)"
        )


async def _upload(conn: Any, upload_id: str) -> artifacts.UploadRow:
    upload_id = canonical_upload_id(upload_id)
    upload = await artifacts.get_upload(conn, upload_id)
    if upload is None:
        raise NotFound(f"upload {upload_id} does not exist (completed, aborted or never created)")
    return upload


def _part(number: int, size: int, part_size: int) -> tuple[int, int]:
    """Offset and size of part `number` (from 1) of `size` bytes cut into `part_size` pieces."""
    offset = (number - 1) * part_size
    return offset, min(part_size, size - offset)


def _artifact(row: artifacts.ArtifactRow | artifacts.ListedArtifact, is_dir: bool) -> apb.Artifact:
    return apb.Artifact(
        path=row.path,
        is_dir=is_dir,
        size=row.size,
        sha256="" if is_dir else row.sha256,
        content_type="" if is_dir else row.content_type,
        created_ms=row.created_ms,
    )

"""The S3 store (`--artifacts s3://bucket/prefix`): AWS S3, MinIO, Ceph or anything speaking the
S3 API. The server signs SigV4 URLs (bound to method, key and, for uploads, Content-Length) and
talks to the store only to start, finish, inspect and delete objects; no bytes pass through it,
except one read to learn the SHA-256 of an upload whose client could not say it (MLflow's
multipart flow).

Credentials and region come from botocore's usual chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, instance
roles...). Only S3 API calls every S3-compatible store implements are used.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from runstream.server.artifacts import serving
from runstream.server.artifacts.stores import (
    ObjectMissing,
    Part,
    PartsRejected,
    S3Options,
    SignedUrl,
    StoreUnavailable,
)

T = TypeVar("T")
READ_BLOCK = 1024 * 1024
SERVER_PART = 64 * 1024 * 1024  # the server's own objects go up in parts of this
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 20.0


class S3Store:
    def __init__(self, bucket: str, prefix: str, api: Any, signer: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._api = api  # calls from the server
        self._signer = signer  # signs URLs for clients (another endpoint behind NAT or a proxy)
        self._exits = contextlib.AsyncExitStack()

    @classmethod
    async def open(cls, bucket: str, prefix: str, options: S3Options) -> S3Store:
        session = get_session()
        style = options.addressing_style
        if style == "auto" and options.endpoint_url:
            style = "path"  # custom endpoints rarely have a wildcard DNS name per bucket
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"mode": "standard", "total_max_attempts": 3},
            # A store that takes connections and never answers fails a call in bounded time
            # (a cold run's read is then UNAVAILABLE), not after botocore's 60 s per attempt.
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
        )
        kwargs: dict[str, Any] = {"config": config}
        if options.region:
            kwargs["region_name"] = options.region
        elif not session.get_config_variable("region"):
            kwargs["region_name"] = "us-east-1"
        exits = contextlib.AsyncExitStack()
        api = await exits.enter_async_context(session.create_client("s3", endpoint_url=options.endpoint_url, **kwargs))
        signer = api
        if options.presign_endpoint_url:
            signer = await exits.enter_async_context(
                session.create_client("s3", endpoint_url=options.presign_endpoint_url, **kwargs)
            )
        store = cls(bucket, prefix, api, signer)
        store._exits = exits
        try:
            await store.check()
        except BaseException:
            await exits.aclose()
            raise
        return store

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def _sign(self, method: str, params: dict[str, Any], expires_s: int) -> str:
        url: str = await self._signer.generate_presigned_url(
            method, Params={"Bucket": self.bucket, **params}, ExpiresIn=expires_s
        )
        return url

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except ClientError as exc:
            raise StoreUnavailable(f"the artifact store refused {what}: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"the artifact store is unreachable ({what}): {exc}") from None

    async def check(self) -> None:
        """Fail at start, not at the first upload, when the bucket or the credentials are wrong."""
        await self._call(f"access to bucket {self.bucket!r}", self._api.head_bucket(Bucket=self.bucket))

    # ------------------------------------------------------------ ObjectStore

    async def presign_put(self, key: str, size: int, sha256: str, expires_s: int) -> SignedUrl:
        checksum = _base64(sha256)  # signed in: S3 verifies the content against it
        params = {"Key": self._key(key), "ContentLength": size, "ChecksumSHA256": checksum}
        return SignedUrl(await self._sign("put_object", params, expires_s), {"x-amz-checksum-sha256": checksum})

    async def create_multipart(self, key: str, content_type: str, checksums: bool = True) -> str:
        extra = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
        call = self._api.create_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), ContentType=content_type, **extra
        )
        reply = await self._call("a multipart upload", call)
        return str(reply["UploadId"])

    async def presign_part(
        self, key: str, upload_id: str, part_number: int, size: int, sha256: str, expires_s: int
    ) -> SignedUrl:
        params: dict[str, Any] = {"Key": self._key(key), "UploadId": upload_id, "PartNumber": part_number}
        if not sha256:  # a part of an unsized upload
            return SignedUrl(await self._sign("upload_part", params, expires_s))
        checksum = _base64(sha256)
        params.update(ContentLength=size, ChecksumSHA256=checksum)
        return SignedUrl(await self._sign("upload_part", params, expires_s), {"x-amz-checksum-sha256": checksum})

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        listed = [
            {"PartNumber": p.number, "ETag": p.etag, **({"ChecksumSHA256": _base64(p.sha256)} if p.sha256 else {})}
            for p in sorted(parts, key=lambda p: p.number)
        ]
        try:
            await self._api.complete_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id, MultipartUpload={"Parts": listed}
            )
        except ClientError as exc:
            if _code(exc) in ("InvalidPart", "InvalidPartOrder", "NoSuchUpload", "EntityTooSmall", "BadDigest"):
                raise PartsRejected(f"cannot complete the upload: {_message(exc)}") from None
            raise StoreUnavailable(f"the artifact store refused to complete an upload: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"the artifact store is unreachable (completing an upload): {exc}") from None

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._api.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # already gone is what we wanted
                raise StoreUnavailable(f"the artifact store refused an abort: {_message(exc)}") from None

    async def size_of(self, key: str) -> int | None:
        try:
            head = await self._api.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StoreUnavailable(f"the artifact store refused a HEAD: {_message(exc)}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"the artifact store is unreachable (HEAD): {exc}") from None
        return int(head["ContentLength"])

    async def digest_of(self, key: str) -> tuple[int, str]:
        reply = await self._call("a read", self._api.get_object(Bucket=self.bucket, Key=self._key(key)))
        digest, size = hashlib.sha256(), 0
        async with reply["Body"] as body:
            while block := await body.read(READ_BLOCK):
                digest.update(block)
                size += len(block)
        return size, digest.hexdigest()

    async def presign_get(self, key: str, expires_s: int) -> str:
        overrides = {
            "ResponseContentType": serving.served_type(key),
            "ResponseContentDisposition": serving.disposition(key),
        }
        return await self._sign("get_object", {"Key": self._key(key), **overrides}, expires_s)

    async def read_range(self, key: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        call = self._api.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{stop - 1}")
        try:
            reply = await call
            async with reply["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(f"the object {key} is missing from bucket {self.bucket!r}") from None
            raise StoreUnavailable(f"the artifact store refused a read of {key}: {_message(exc)}") from None
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"the artifact store is unreachable (reading {key}): {exc}") from None
        return data

    async def put_file(self, key: str, path: Path, sha256: str) -> None:
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= SERVER_PART:
            body = await asyncio.to_thread(path.read_bytes)
            call = self._api.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=body, ChecksumSHA256=_base64(sha256)
            )
            await self._call(f"storing {key}", call)
            return
        upload_id = await self.create_multipart(key, "application/octet-stream")
        try:
            parts = []
            with path.open("rb") as f:
                for number in range(1, -(-size // SERVER_PART) + 1):
                    block = await asyncio.to_thread(f.read, SERVER_PART)
                    checksum = (await asyncio.to_thread(hashlib.sha256, block)).hexdigest()
                    call = self._api.upload_part(
                        Bucket=self.bucket, Key=self._key(key), UploadId=upload_id, PartNumber=number, Body=block,
                        ChecksumSHA256=_base64(checksum),
                    )  # fmt: skip
                    reply = await self._call(f"storing {key}", call)
                    parts.append(Part(number, str(reply["ETag"]), checksum))
            await self.complete_multipart(key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.abort_multipart(key, upload_id)
            raise

    async def delete(self, key: str) -> None:
        await self._call("a delete", self._api.delete_object(Bucket=self.bucket, Key=self._key(key)))

    async def close(self) -> None:
        await self._exits.aclose()


def _base64(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"

"""Object stores behind the ArtifactService. Both sign URLs that clients use directly; the
service itself never moves artifact bytes. The server moves only its own objects through them
(the cold tier: compaction/cold.py writes, archive.chunk_bytes reads ranges). The server's main
opens the one `--artifacts` names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runstream.errors import DataLoss, FailedPrecondition, Unavailable


class PartsRejected(FailedPrecondition):
    """The store would not put the parts the client named together (missing, re-sent, wrong ETag)."""


class StoreUnavailable(Unavailable):
    """The store did not answer, or refused the server (credentials, bucket)."""


class ObjectMissing(DataLoss):
    """An object the server wrote itself (a cold run's points) is not in the store."""


@dataclass
class S3Options:
    endpoint_url: str | None = None  # None: AWS (or AWS_ENDPOINT_URL)
    presign_endpoint_url: str | None = None  # where clients reach the store, if not endpoint_url
    region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION / profile, else us-east-1
    addressing_style: str = "auto"  # path for MinIO/Ceph without wildcard DNS


@dataclass
class StoreSettings:
    url: str  # file:///dir or s3://bucket/prefix
    public_url: str = ""  # local store: how clients reach the server's HTTP port
    expires_s: int = 15 * 60
    part_size: int = 64 * 1024 * 1024
    s3: S3Options = field(default_factory=S3Options)
    max_upload_bytes: int = 100 * 2**30
    max_run_bytes: int = 2**40
    stall_s: float = 30.0  # local store: an upload to a signed URL sends its next block within this


@dataclass
class SignedUrl:
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # the client sends these with the request


@dataclass
class Part:
    number: int
    etag: str
    sha256: str  # hex


class ObjectStore(Protocol):
    """What the service needs of a store; keys are relative to the store's root. Upload URLs
    are bound to the content's size and SHA-256 (hex), so the store refuses other bytes; a
    part of an unsized upload (`checksums=False`; size -1, sha256 "") is bound to its key,
    upload and number only."""

    async def presign_put(self, key: str, size: int, sha256: str, expires_s: int) -> SignedUrl: ...
    async def create_multipart(self, key: str, content_type: str, checksums: bool = True) -> str: ...
    async def presign_part(
        self, key: str, upload_id: str, part_number: int, size: int, sha256: str, expires_s: int
    ) -> SignedUrl: ...
    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...
    async def size_of(self, key: str) -> int | None: ...
    async def digest_of(self, key: str) -> tuple[int, str]:
        """(size, SHA-256 hex) of a stored object, read by the store's side."""
        ...

    async def presign_get(self, key: str, expires_s: int) -> str: ...
    async def read_range(self, key: str, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of an object the server wrote (ObjectMissing if it is not there)."""
        ...

    async def put_file(self, key: str, path: Path, sha256: str) -> None:
        """Store a file of the server's own (a cold run's object) at `key`, bound to its SHA-256."""
        ...

    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...

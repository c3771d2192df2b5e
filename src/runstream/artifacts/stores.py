"""Object stores behind the ArtifactService. Both sign URLs that clients use directly; the
service itself never moves artifact bytes. `open_store` picks one from `--artifacts`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


@dataclass
class StoreSettings:
    url: str  # file:///dir
    public_url: str = ""  # local store: how clients reach the server's HTTP port
    expires_s: int = 15 * 60
    part_size: int = 64 * 1024 * 1024


class ObjectStore(Protocol):
    """What the service needs of a store; keys are relative to the store's root."""

    async def presign_put(self, key: str, size: int, expires_s: int) -> str: ...
    async def create_multipart(self, key: str, content_type: str) -> str: ...
    async def presign_part(self, key: str, upload_id: str, part_number: int, size: int, expires_s: int) -> str: ...
    async def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...
    async def size_of(self, key: str) -> int | None: ...
    async def presign_get(self, key: str, expires_s: int) -> str: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


def open_store(settings: StoreSettings) -> ObjectStore:
    parsed = urlparse(settings.url)
    if parsed.scheme == "file":
        from runstream.artifacts.local import LocalStore

        return LocalStore(Path(parsed.path), settings.public_url)
    raise ValueError(f"--artifacts {settings.url!r}: use file:///a/directory")

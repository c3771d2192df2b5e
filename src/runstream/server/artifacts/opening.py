"""Opening the object store `--artifacts` names, the same way in every role that uses it: the
ArtifactService and query reads in the server, the cold tier's mover in compactors."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from runstream.server.artifacts.local import LocalStore
from runstream.server.artifacts.stores import ObjectStore, S3Options, StoreSettings
from runstream.server.runtime.config import Settings


def store_settings(settings: Settings) -> StoreSettings:
    s3 = S3Options(
        settings.s3_endpoint_url, settings.s3_public_endpoint_url, settings.s3_region, settings.s3_addressing_style
    )
    return StoreSettings(
        settings.artifacts_url,
        settings.http_url,
        settings.artifact_url_expiry_s,
        settings.artifact_part_size,
        s3,
        settings.max_upload_bytes,
        settings.max_run_artifact_bytes,
        settings.http_request_timeout_s,
    )


async def open_store(settings: StoreSettings) -> ObjectStore:
    """The store at settings.url; ValueError for a URL it cannot be, StoreUnavailable when the
    bucket or the credentials do not work."""
    parsed = urlparse(settings.url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)), settings.public_url, settings.max_upload_bytes, settings.stall_s)
    if parsed.scheme == "s3" and parsed.netloc:
        from runstream.server.artifacts.s3 import S3Store  # aiobotocore loads only for S3

        return await S3Store.open(parsed.netloc, unquote(parsed.path), settings.s3)
    raise ValueError(f"--artifacts {settings.url!r}: use file:///a/directory or s3://bucket/prefix")

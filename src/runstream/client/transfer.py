"""Moving artifact bytes between files and signed URLs: PUTs of whole files or byte ranges
(parts upload in parallel, each retried), and GETs streamed to disk with the SHA-256 checked.
Plain http.client: bodies stream from and to files, never whole in memory."""

from __future__ import annotations

import hashlib
import http.client
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from runstream.client.channel import http_tls_context

CHUNK = 1024 * 1024
RETRIES = 3


class TransferError(OSError):
    """A PUT or GET the store refused or that kept failing."""


class _Range:
    """A read-only window of a file, so http.client streams one part without loading it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=http_tls_context())
    else:
        conn = http.client.HTTPConnection(parts.netloc, timeout=timeout)
    return conn, parts.path + (f"?{parts.query}" if parts.query else "")


def put_range(
    url: str, path: Path, offset: int, size: int, headers: Mapping[str, str] | None = None, timeout: float = 300.0
) -> str:
    """PUT `size` bytes of `path` from `offset` (with the `headers` the URL was signed for);
    returns the ETag. Retried on failure."""
    for attempt in range(1, RETRIES + 1):
        conn, target = _connection(url, timeout)
        try:
            with path.open("rb") as f:
                f.seek(offset)
                conn.putrequest("PUT", target, skip_accept_encoding=True)
                conn.putheader("Content-Length", str(size))
                for name, value in (headers or {}).items():
                    conn.putheader(name, value)
                conn.endheaders()
                body = _Range(f, size)
                while chunk := body.read(CHUNK):
                    conn.send(chunk)
            response = conn.getresponse()
            detail = response.read().decode(errors="replace")[:300]
            if response.status == 200:
                return response.getheader("ETag") or ""
            if response.status < 500:  # the URL or the size is wrong: retrying will not help
                raise TransferError(f"upload refused ({response.status}): {detail}")
            error: Exception = TransferError(f"upload failed ({response.status}): {detail}")
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, TransferError):
                raise
            error = exc
        finally:
            conn.close()
        if attempt < RETRIES:
            time.sleep(0.5 * attempt)
    raise TransferError(f"upload failed after {RETRIES} attempts: {error}")


def put_parts(
    parts: list[Any], path: Path, sign: Callable[[int, str], Any], workers: int, progress: Callable[[int], None]
) -> list[tuple[int, str, str]]:
    """PUT every part (part_number, offset, size) of `path`, `workers` at a time: each is hashed,
    signed for its hash by `sign(part_number, sha256)` (which answers with url and headers) just
    before it is sent, then sent. Returns (number, ETag, sha256) of each part."""

    def one(part: Any) -> tuple[int, str, str]:
        sha256 = sha256_of(path, part.offset, part.size)
        signed = sign(part.part_number, sha256)
        etag = put_range(signed.url, path, part.offset, part.size, signed.headers)
        progress(part.size)
        return part.part_number, etag, sha256

    try:
        pool = ThreadPoolExecutor(max_workers=workers)
        futures = [pool.submit(one, p) for p in parts]
    except RuntimeError:  # at interpreter exit (a console log's last upload) no pool may start
        return [one(p) for p in parts]
    with pool:
        return [f.result() for f in futures]


def get_to_file(url: str, dst: Path, sha256: str, progress: Callable[[int], None], timeout: float = 300.0) -> None:
    """GET `url` into `dst` (via a temporary file), failing if the content's SHA-256 differs."""
    conn, target = _connection(url, timeout)
    tmp = dst.with_name(f".{dst.name}.part-{os.getpid()}")
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        if response.status != 200:
            raise TransferError(
                f"download refused ({response.status}): {response.read()[:300].decode(errors='replace')}"
            )
        digest = hashlib.sha256()
        with tmp.open("wb") as out:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                progress(len(chunk))
        if digest.hexdigest() != sha256:
            raise TransferError(f"{dst.name}: downloaded content does not match its recorded SHA-256")
        os.replace(tmp, dst)
    finally:
        conn.close()
        tmp.unlink(missing_ok=True)


def sha256_of(path: Path, offset: int = 0, size: int = -1) -> str:
    """SHA-256 (hex) of `size` bytes of `path` from `offset` (all of it by default)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(offset)
        body: Any = _Range(f, size) if size >= 0 else f
        while chunk := body.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

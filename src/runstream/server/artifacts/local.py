"""The local directory store: the embedded default. The server signs URLs itself (HMAC-SHA256
over method, key, size, content SHA-256, upload and expiry) and serves them on its HTTP port,
streaming bodies to and from disk, so a URL for one key can write nothing else, no other bytes,
and dies at its expiry. Stored files are served so that they never run as the UI (serving.py).

Layout under the root: `objects/<key>` for stored objects, `.uploads/<id>/<part>` for the parts
of unfinished multipart uploads, `.secret` for the signing key (shared by servers that share
the directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from aiohttp import web

from runstream.server.artifacts import serving
from runstream.server.artifacts.stores import ObjectMissing, Part, PartsRejected, SignedUrl, StoreUnavailable

CHUNK = 1024 * 1024


class LocalStore:
    def __init__(self, root: Path, public_url: str, max_bytes: int = 100 * 2**30, stall_s: float = 30.0) -> None:
        self.root = root
        self.max_bytes = max_bytes  # the parts of an unsized upload, together, are bound by this, not their URLs
        # Bytes an unsized upload holds in this process's view, stored or arriving, by upload id:
        # one count per upload, so parts sent at once cannot each see room the others take.
        self._held: dict[str, int] = {}
        self.stall_s = stall_s
        self.objects = root / "objects"
        self.uploads = root / ".uploads"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/")
        self._secret = _secret(root / ".secret")

    # ------------------------------------------------------------ signing

    def _signature(self, method: str, key: str, expires: int, size: int, sha256: str, upload: str, part: int) -> str:
        message = "\n".join([method, key, str(expires), str(size), sha256, upload, str(part)]).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _url(
        self, method: str, key: str, expires_s: int, size: int = -1, sha256: str = "", upload: str = "", part: int = 0
    ) -> str:
        expires = int(time.time()) + expires_s
        query: dict[str, str | int] = {"e": expires, "s": size, "h": sha256, "u": upload, "p": part}
        query["sig"] = self._signature(method, key, expires, size, sha256, upload, part)
        return f"{self.public_url}/objects/{quote(key)}?{urlencode(query)}"

    def _path(self, key: str) -> Path:
        path = (self.objects / key).resolve()
        if not path.is_relative_to(self.objects.resolve()):
            raise web.HTTPForbidden(text="key outside the store")
        return path

    # ------------------------------------------------------------ ObjectStore

    async def presign_put(self, key: str, size: int, sha256: str, expires_s: int) -> SignedUrl:
        return SignedUrl(self._url("PUT", key, expires_s, size, sha256))

    async def create_multipart(self, key: str, content_type: str, checksums: bool = True) -> str:
        upload_id = uuid.uuid4().hex
        (self.uploads / upload_id).mkdir()
        return upload_id

    async def presign_part(
        self, key: str, upload_id: str, part_number: int, size: int, sha256: str, expires_s: int
    ) -> SignedUrl:
        return SignedUrl(self._url("PUT", key, expires_s, size, sha256, upload_id, part_number))

    async def complete_multipart(self, key: str, upload_id: str, parts: list[Part]) -> None:
        try:
            await asyncio.to_thread(self._concatenate, key, upload_id, parts)
        except FileNotFoundError:
            raise PartsRejected("cannot complete the upload: its parts are gone (completed or aborted)") from None
        except OSError as exc:  # a full or failing disk: the store's trouble, not the database's
            raise StoreUnavailable(f"the local artifact store could not put the parts together: {exc}") from None
        self._held.pop(upload_id, None)

    def _concatenate(self, key: str, upload_id: str, parts: list[Part]) -> None:
        folder = self.uploads / upload_id
        files = []
        for p in sorted(parts, key=lambda p: p.number):
            part = folder / str(p.number)
            if not part.exists() or _etag(part) != p.etag.strip('"'):
                raise PartsRejected(
                    f"cannot complete the upload: part {p.number} was not uploaded (or was uploaded again since)"
                )
            files.append(part)
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"complete-{uuid.uuid4().hex}"  # never shared, should two completions meet
        with tmp.open("wb") as out:
            for part in files:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, CHUNK)
        os.replace(tmp, target)
        shutil.rmtree(folder, ignore_errors=True)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        self._held.pop(upload_id, None)
        await asyncio.to_thread(shutil.rmtree, self.uploads / upload_id, True)

    async def size_of(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def digest_of(self, key: str) -> tuple[int, str]:
        return await asyncio.to_thread(_digest, self._path(key))

    async def presign_get(self, key: str, expires_s: int) -> str:
        return self._url("GET", key, expires_s)

    async def read_range(self, key: str, start: int, stop: int) -> bytes:
        try:
            return await asyncio.to_thread(_read_range, self._path(key), start, stop)
        except FileNotFoundError:
            raise ObjectMissing(f"the object {key} is missing from the local artifact store") from None
        except OSError as exc:
            raise StoreUnavailable(f"the local artifact store could not read {key}: {exc}") from None

    async def put_file(self, key: str, path: Path, sha256: str) -> None:
        try:
            await asyncio.to_thread(self._put_file, key, path, sha256)
        except OSError as exc:  # a full or failing disk
            raise StoreUnavailable(f"the local artifact store could not store {key}: {exc}") from None

    def _put_file(self, key: str, path: Path, sha256: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.uploads / f"tmp-{uuid.uuid4().hex}"
        try:
            with path.open("rb") as src, tmp.open("wb") as out:
                digest = hashlib.sha256()
                while block := src.read(CHUNK):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())  # on disk before PostgreSQL lets the rows go
            if digest.hexdigest() != sha256:
                raise StoreUnavailable(f"the file for {key} changed while it was stored")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------ serving the URLs

    def add_routes(self, app: web.Application) -> None:
        """Serve the signed URLs on `app`: uploads are streamed to disk, not read whole."""
        app.router.add_put("/objects/{key:.+}", self._put)
        app.router.add_get("/objects/{key:.+}", self._get)

    def _check(self, request: web.Request, method: str) -> tuple[str, int, str, str, int]:
        key = request.match_info["key"]
        q = request.query
        try:
            expires, size, sha256, upload, part = int(q["e"]), int(q["s"]), q["h"], q["u"], int(q["p"])
            sig = q["sig"]
        except (KeyError, ValueError):
            raise web.HTTPForbidden(text="not a signed URL") from None
        want = self._signature(method, key, expires, size, sha256, upload, part)
        if not hmac.compare_digest(want, sig):
            raise web.HTTPForbidden(text="signature does not match this method, key, size and content")
        if time.time() > expires:
            raise web.HTTPForbidden(text="URL expired")
        return key, size, sha256, upload, part

    async def _put(self, request: web.Request) -> web.StreamResponse:
        key, size, sha256, upload, part = self._check(request, "PUT")
        bound = size >= 0  # a part of an unsized upload is bound to its number only
        if bound and request.content_length is not None and request.content_length != size:
            raise web.HTTPBadRequest(text=f"this URL takes exactly {size} bytes, not {request.content_length}")
        if upload and not (self.uploads / upload).is_dir():
            raise web.HTTPNotFound(text="no such upload (completed or aborted)")
        target = self.uploads / upload / str(part) if upload else self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.uploads / f"tmp-{uuid.uuid4().hex}"
        written = 0
        digest = hashlib.sha256()
        if not bound and upload not in self._held:  # first seen by this process: what is on disk
            self._held[upload] = _bytes_in(target.parent)
        replacing = target.stat().st_size if not bound and target.exists() else 0
        stored, replaced = False, 0
        try:
            with tmp.open("wb") as out:
                # Hashing and writing go to a thread a MiB at a time (both release the GIL), so
                # an upload does not hold up the gRPC handlers sharing this event loop.
                pending: list[bytes] = []
                while data := await self._next_block(request):
                    written += len(data)
                    if bound and written > size:
                        raise web.HTTPBadRequest(text=f"this URL takes exactly {size} bytes")
                    if not bound:  # the upload's parts together, this one replacing its old bytes
                        if upload not in self._held:  # completed or aborted while this part came
                            raise web.HTTPNotFound(text="no such upload (completed or aborted)")
                        self._held[upload] += len(data)
                        if self._held[upload] - replacing > self.max_bytes:
                            raise web.HTTPRequestEntityTooLarge(self.max_bytes, written)
                    elif written > self.max_bytes:
                        raise web.HTTPRequestEntityTooLarge(self.max_bytes, written)
                    pending.append(data)
                    if sum(map(len, pending)) >= CHUNK:
                        await asyncio.to_thread(_absorb, pending, digest, out)
                        pending = []
                await asyncio.to_thread(_absorb, pending, digest, out)
            if bound and written != size:
                raise web.HTTPBadRequest(text=f"got {written} bytes; this URL takes exactly {size}")
            if bound and digest.hexdigest() != sha256:
                raise web.HTTPBadRequest(text="the content does not match the SHA-256 this URL was signed for")
            replaced = target.stat().st_size if target.exists() else 0
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # its upload was completed or aborted while the part came
                raise web.HTTPNotFound(text="no such upload (completed or aborted)") from None
            stored = True
        finally:
            tmp.unlink(missing_ok=True)
            if not bound and upload in self._held:  # stored: the old part's bytes go; else what came
                self._held[upload] -= replaced if stored else written
        return web.Response(status=200, headers={"ETag": f'"{_etag(target)}"'})

    async def _next_block(self, request: web.Request) -> bytes:
        """The upload's next block; a client that stalls is cut off (it holds a task and a file)."""
        try:
            return await asyncio.wait_for(request.content.read(CHUNK), self.stall_s)
        except asyncio.TimeoutError:
            raise web.HTTPRequestTimeout(text=f"the upload stalled: nothing came for {self.stall_s:g} s") from None
        except ConnectionResetError:  # never taken for the end of the body: the upload is dropped
            raise web.HTTPBadRequest(text="the client closed the connection before sending the whole body") from None

    async def _get(self, request: web.Request) -> web.StreamResponse:
        key, _, _, _, _ = self._check(request, "GET")
        path = self._path(key)
        if not path.is_file():
            raise web.HTTPNotFound(text="no such object")
        headers = {
            **serving.HEADERS,
            "Content-Type": serving.served_type(key),
            "Content-Disposition": serving.disposition(key),
        }
        return await _send_file(request, path, headers)


async def _send_file(request: web.Request, path: Path, headers: dict[str, str]) -> web.StreamResponse:
    """Exactly the stored file, or one byte range of it. Not aiohttp's FileResponse: that serves
    `<key>.gz` instead of `<key>` to a client that accepts gzip, and anyone who may write a run's
    artifacts can store a `<key>.gz` beside a model's source."""
    f = await asyncio.to_thread(path.open, "rb")
    with f:
        size = os.fstat(f.fileno()).st_size
        start, stop = 0, size
        try:
            wanted = request.http_range
        except ValueError:
            wanted = slice(None, None)  # a Range this server does not read: the whole file, as RFC 9110 allows
        if wanted.start is not None or wanted.stop is not None:
            start = max(size + wanted.start, 0) if (wanted.start or 0) < 0 else (wanted.start or 0)
            stop = min(wanted.stop, size) if wanted.stop is not None else size
            if start >= size:
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        partial = (start, stop) != (0, size)
        response = web.StreamResponse(
            status=206 if partial else 200,
            headers={**headers, "Accept-Ranges": "bytes", "Content-Length": str(stop - start)}
            | ({"Content-Range": f"bytes {start}-{stop - 1}/{size}"} if partial else {}),
        )
        await response.prepare(request)
        f.seek(start)
        left = stop - start
        while left > 0:
            block = await asyncio.to_thread(f.read, min(CHUNK, left))
            if not block:
                break
            await response.write(block)
            left -= len(block)
    await response.write_eof()
    return response


def _absorb(blocks: list[bytes], digest: Any, out: BinaryIO) -> None:
    for block in blocks:
        digest.update(block)
        out.write(block)


def _read_range(path: Path, start: int, stop: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(max(stop - start, 0))


def _digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _etag(path: Path) -> str:
    """Identifies one upload of a part: its size and modification time."""
    st = path.stat()
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _secret(path: Path) -> bytes:
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_bytes(secrets.token_bytes(32))
        tmp.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # first writer wins when servers start together
        tmp.unlink()
    return path.read_bytes()


def _bytes_in(folder: Path) -> int:
    """Bytes of the files in `folder`: an unsized upload's parts stored so far."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

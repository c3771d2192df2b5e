"""Artifacts: uploads under way, the artifacts recorded when they complete, the locks that keep
object keys and a run's total size straight, and a model version's source as a set of files."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import NamedTuple

import asyncpg

from runstream.server.storage.db import Conn, now_ms


class UploadRow(NamedTuple):
    """An upload under way. An unsized one (its size and SHA-256 known at completion) has
    size 0 and sha256 ""; a single PUT has no multipart_id."""

    upload_id: str
    run_id: str
    path: str
    object_key: str
    size: int
    sha256: str
    content_type: str
    multipart_id: str | None
    part_size: int
    created_ms: int


_UPLOAD_COLUMNS = """upload_id::text AS upload_id, run_id::text AS run_id, path, object_key, size, sha256,
    content_type, multipart_id, part_size, created_ms"""


class ArtifactRow(NamedTuple):
    """A recorded artifact: the file at `path` in the run's artifacts, stored under `object_key`."""

    path: str
    object_key: str
    size: int
    sha256: str
    content_type: str
    created_ms: int


_ARTIFACT_COLUMNS = "path, object_key, size, sha256, content_type, created_ms"


class ListedArtifact(NamedTuple):
    """A file or directory directly under a listed prefix; a directory sums the files under it."""

    path: str
    is_dir: bool
    size: int
    sha256: str
    content_type: str
    created_ms: int


class ArtifactSource(NamedTuple):
    """An artifact as a model version's source: one file, or every file under a directory."""

    size: int
    digest: str
    files: int


async def create_upload(
    conn: Conn,
    *,
    upload_id: str,
    run_id: str,
    path: str,
    object_key: str,
    size: int,
    sha256: str,
    content_type: str,
    multipart_id: str | None,
    part_size: int,
) -> None:
    await conn.execute(
        """INSERT INTO artifact_uploads (upload_id, run_id, path, object_key, size, sha256, content_type,
                                         multipart_id, part_size, created_ms)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        upload_id,
        run_id,
        path,
        object_key,
        size,
        sha256,
        content_type,
        multipart_id,
        part_size,
        now_ms(),
    )


async def lock_object_key(conn: Conn, key: str) -> None:
    """Serialize, until the transaction ends, everyone choosing or replacing this key."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)


async def object_key_taken(conn: Conn, run_id: str, key: str) -> bool:
    """Whether a recorded artifact or an open upload of the run uses `key`."""
    taken: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM artifacts WHERE run_id = $1::uuid AND object_key = $2)
               OR EXISTS (SELECT 1 FROM artifact_uploads WHERE run_id = $1::uuid AND object_key = $2)""",
        run_id,
        key,
    )
    return taken


@contextlib.asynccontextmanager
async def upload_held(conn: Conn, upload_id: str) -> AsyncIterator[None]:
    """One completion or abort of an upload at a time, across server processes: a session lock,
    since the store's part of the work runs outside any transaction. Whoever comes second finds
    the upload gone."""
    await conn.execute("SELECT pg_advisory_lock(hashtextextended('upload ' || $1, 0))", upload_id)
    try:
        yield
    finally:  # a connection that died took its lock with it; the pool's reset drops any other
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("SELECT pg_advisory_unlock(hashtextextended('upload ' || $1, 0))", upload_id)


async def lock_run_artifacts(conn: Conn, run_id: str) -> None:
    """Until the transaction ends: one upload of this run is counted at a time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('artifacts of ' || $1, 0))", run_id)


async def run_artifact_bytes(conn: Conn, run_id: str) -> int:
    """Bytes of the run's stored artifacts plus its uploads under way."""
    used: int = await conn.fetchval(
        """SELECT coalesce((SELECT sum(size) FROM artifacts WHERE run_id = $1), 0)
                + coalesce((SELECT sum(size) FROM artifact_uploads WHERE run_id = $1), 0)""",
        run_id,
    )
    return int(used)


async def get_upload(conn: Conn, upload_id: str) -> UploadRow | None:
    row = await conn.fetchrow(f"SELECT {_UPLOAD_COLUMNS} FROM artifact_uploads WHERE upload_id = $1::uuid", upload_id)
    return UploadRow(**row) if row is not None else None


async def delete_upload(conn: Conn, upload_id: str) -> None:
    await conn.execute("DELETE FROM artifact_uploads WHERE upload_id = $1::uuid", upload_id)


async def stale_uploads(conn: Conn, created_before_ms: int) -> list[UploadRow]:
    rows = await conn.fetch(f"SELECT {_UPLOAD_COLUMNS} FROM artifact_uploads WHERE created_ms < $1", created_before_ms)
    return [UploadRow(**r) for r in rows]


async def run_of_upload(conn: Conn, upload_id: str) -> str | None:
    value = await conn.fetchval("SELECT run_id::text FROM artifact_uploads WHERE upload_id = $1::uuid", upload_id)
    return str(value) if value is not None else None


async def record_artifact(conn: Conn, upload: UploadRow) -> tuple[ArtifactRow, str | None]:
    """Record a completed upload as the run's artifact at its path; returns the row and the
    object key of the artifact it replaced (None when the path was new)."""
    replaced: str | None = await conn.fetchval(
        "SELECT object_key FROM artifacts WHERE run_id = $1::uuid AND path = $2 FOR UPDATE",
        upload.run_id,
        upload.path,
    )
    row = await conn.fetchrow(
        f"""INSERT INTO artifacts (run_id, path, object_key, size, sha256, content_type, created_ms)
            VALUES ($1::uuid, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (run_id, path) DO UPDATE SET object_key = excluded.object_key, size = excluded.size,
                sha256 = excluded.sha256, content_type = excluded.content_type, created_ms = excluded.created_ms
            RETURNING {_ARTIFACT_COLUMNS}""",
        upload.run_id,
        upload.path,
        upload.object_key,
        upload.size,
        upload.sha256,
        upload.content_type,
        now_ms(),
    )
    assert row is not None
    return ArtifactRow(**row), replaced


async def get_artifact(conn: Conn, run_id: str, path: str) -> ArtifactRow | None:
    row = await conn.fetchrow(
        f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = $1::uuid AND path = $2",
        run_id,
        path,
    )
    return ArtifactRow(**row) if row is not None else None


async def delete_artifact(conn: Conn, run_id: str, path: str) -> str | None:
    """The deleted artifact's object key, or None when there was none."""
    key: str | None = await conn.fetchval(
        "DELETE FROM artifacts WHERE run_id = $1::uuid AND path = $2 RETURNING object_key", run_id, path
    )
    return key


async def list_artifacts(conn: Conn, run_id: str, prefix: str) -> list[ListedArtifact]:
    """Files and directories directly under `prefix` ("" or ending in "/"): one row per name,
    a directory's size summing everything under it."""
    rows = await conn.fetch(
        """SELECT $2 || split_part(rest, '/', 1) AS path, strpos(rest, '/') > 0 AS is_dir,
                  sum(size)::int8 AS size, max(sha256) AS sha256, max(content_type) AS content_type,
                  max(created_ms) AS created_ms
           FROM (SELECT substr(path, length($2) + 1) AS rest, size, sha256, content_type, created_ms
                 FROM artifacts WHERE run_id = $1::uuid AND starts_with(path, $2)) under
           GROUP BY 1, 2 ORDER BY 1, 2""",
        run_id,
        prefix,
    )
    return [ListedArtifact(**r) for r in rows]


async def artifact_source(conn: Conn, run_id: str, path: str) -> ArtifactSource | None:
    """The run's artifact at `path`: one file, or every file under the directory `path` (digest:
    sha256 of its "path sha256" lines in path order). None if absent."""
    rows = await conn.fetch(
        """SELECT path, size, sha256 FROM artifacts
           WHERE run_id = $1 AND (path = $2 OR (path >= $3 AND path < $4)) ORDER BY path""",
        run_id,
        path,
        path + "/",
        path + "0",  # "0" follows "/": the range is everything under path/
    )
    if not rows:
        return None
    if len(rows) == 1 and rows[0]["path"] == path:
        return ArtifactSource(rows[0]["size"], rows[0]["sha256"], 1)

    lines = "".join(f"{r['path'][len(path) + 1 :]} {r['sha256']}\n" for r in rows)
    return ArtifactSource(sum(r["size"] for r in rows), hashlib.sha256(lines.encode()).hexdigest(), len(rows))

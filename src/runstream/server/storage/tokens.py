"""API tokens: the public id and the SHA-256 of each token's secret, its scopes, and the
experiments it is limited to (auth/)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from runstream.errors import AlreadyExists
from runstream.server.storage.db import Conn


class TokenRow(NamedTuple):
    token_id: str
    name: str
    secret_hash: bytes
    scopes: list[str]
    experiments: str | None
    created_by: str
    created_ms: int
    expires_ms: int | None
    revoked_ms: int | None


_TOKEN_COLUMNS = """token_id, name, secret_hash, scopes, experiments, created_by,
    (extract(epoch FROM created_at) * 1000)::int8 AS created_ms,
    (extract(epoch FROM expires_at) * 1000)::int8 AS expires_ms,
    (extract(epoch FROM revoked_at) * 1000)::int8 AS revoked_ms"""


def _token(row: asyncpg.Record) -> TokenRow:
    return TokenRow(**{**dict(row), "scopes": list(row["scopes"])})


async def insert_token(
    conn: Conn,
    token_id: str,
    name: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    experiments: str | None,
    created_by: str,
    expires_in_s: int | None,
) -> TokenRow:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO api_tokens (token_id, name, secret_hash, scopes, experiments, created_by, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
                RETURNING {_TOKEN_COLUMNS}""",
            token_id,
            name,
            secret_hash,
            list(scopes),
            experiments,
            created_by,
            expires_in_s,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"a token named {name!r} exists; revoke it first or choose another name") from None
    assert row is not None  # INSERT ... RETURNING
    return _token(row)


async def token_by_id(conn: Conn, token_id: str) -> TokenRow | None:
    row = await conn.fetchrow(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_id = $1", token_id)
    return _token(row) if row else None


async def list_tokens(conn: Conn, include_revoked: bool) -> list[TokenRow]:
    rows = await conn.fetch(
        f"""SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL
            ORDER BY created_at, token_id""",
        include_revoked,
    )
    return [_token(r) for r in rows]


async def revoke_token(conn: Conn, name: str) -> TokenRow | None:
    """Revoke the live token named `name`; None when there is none."""
    row = await conn.fetchrow(
        f"""UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
            RETURNING {_TOKEN_COLUMNS}""",
        name,
    )
    return _token(row) if row else None


async def has_live_admin_token(conn: Conn) -> bool:
    found: bool = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM api_tokens WHERE 'admin' = ANY (scopes) AND revoked_at IS NULL
            AND (expires_at IS NULL OR expires_at > now()))"""
    )
    return found

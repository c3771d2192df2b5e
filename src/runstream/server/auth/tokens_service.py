"""AdminService's token methods: make a token (its text is answered once and then only its
hash is kept), list, revoke, and tell a caller who their token says they are; and the first
admin token of an installation, written to a file only its owner can read."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import asyncpg

from runstream.errors import AlreadyExists, InvalidArgument, NotFound
from runstream.server.auth import credentials
from runstream.server.auth.guard import ANONYMOUS, CURRENT, Guard, acting_user
from runstream.server.auth.policy import ADMIN, SCOPES
from runstream.server.storage import tokens
from runstream.wire.proto import admin_pb2 as adm

log = logging.getLogger(__name__)
MAX_NAME = 100
MAX_PATTERN = 200
MAX_EXPIRY_S = 10 * 366 * 86_400
BOOTSTRAP_NAME = "admin"


class TokenAdmin:
    def __init__(self, pool: asyncpg.Pool, guard: Guard) -> None:
        self.pool = pool
        self.guard = guard

    async def CreateToken(self, req: adm.CreateTokenRequest, ctx: Any) -> adm.CreatedToken:
        name = req.name.strip()
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidArgument(f"a token needs a printable name of 1 to {MAX_NAME} characters")
        unknown = sorted(set(req.scopes) - set(SCOPES))
        if not req.scopes or unknown:
            raise InvalidArgument(
                f"scopes must be some of {', '.join(SCOPES)}" + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            )
        if len(req.experiments) > MAX_PATTERN or not req.experiments.isprintable():
            raise InvalidArgument(f"the experiments pattern must be printable and at most {MAX_PATTERN} characters")
        if req.experiments and ADMIN in req.scopes:
            raise InvalidArgument(
                "the admin scope cannot be limited to experiments (deletes, dead letters and tokens span them all): "
                "make the admin token without --experiments, or leave admin out of the limited one"
            )
        if not 0 <= req.expires_in_s <= MAX_EXPIRY_S:
            raise InvalidArgument(f"expires_in_s is {req.expires_in_s:,}; it must be between 0 and {MAX_EXPIRY_S:,}")
        token_id, text, secret_hash = credentials.new_token()
        async with self.pool.acquire() as conn:
            row = await tokens.insert_token(
                conn,
                token_id,
                name,
                secret_hash,
                [s for s in SCOPES if s in req.scopes],
                req.experiments or None,
                acting_user(ctx),
                req.expires_in_s or None,
            )
        log.info("token %r (%s) created by %s with scopes %s", name, token_id, row.created_by, ",".join(row.scopes))
        return adm.CreatedToken(token=token_message(row), secret=text)

    async def ListTokens(self, req: adm.ListTokensRequest, ctx: Any) -> adm.ListTokensResponse:
        async with self.pool.acquire() as conn:
            rows = await tokens.list_tokens(conn, req.include_revoked)
        return adm.ListTokensResponse(tokens=[token_message(r) for r in rows])

    async def RevokeToken(self, req: adm.RevokeTokenRequest, ctx: Any) -> adm.ApiToken:
        async with self.pool.acquire() as conn:
            row = await tokens.revoke_token(conn, req.name)
        if row is None:
            raise NotFound(f"no live token is named {req.name!r}")
        self.guard.forget(row.token_id)
        log.info("token %r (%s) revoked by %s", row.name, row.token_id, acting_user(ctx))
        return token_message(row)

    async def WhoAmI(self, req: adm.WhoAmIRequest, ctx: Any) -> adm.ApiToken:
        principal = CURRENT.get()
        if principal is ANONYMOUS:
            return adm.ApiToken(name=acting_user(ctx), scopes=list(SCOPES))
        return adm.ApiToken(
            name=principal.name,
            scopes=[s for s in SCOPES if s in principal.scopes],
            experiments=principal.experiments or "",
            token_id=principal.token_id,
        )


def token_message(row: tokens.TokenRow) -> adm.ApiToken:
    return adm.ApiToken(
        name=row.name,
        scopes=row.scopes,
        experiments=row.experiments or "",
        created_by=row.created_by,
        created_ms=row.created_ms,
        expires_ms=row.expires_ms or 0,
        revoked_ms=row.revoked_ms or 0,
        token_id=row.token_id,
    )


async def bootstrap_admin(pool: asyncpg.Pool, token_file: Path, given: str | None = None) -> str | None:
    """With auth on and no live admin token, make one: `given` (RUNSTREAM_ADMIN_TOKEN, from
    `runstream tokens generate`, e.g. a Kubernetes Secret) or a new one written to
    `token_file` (mode 0600). Says what it did, or None when an admin token exists. Servers
    starting together make one between them (the name is unique among live tokens)."""
    if given is not None:
        parsed = credentials.parse(given.strip())
        if parsed is None:
            raise ValueError("RUNSTREAM_ADMIN_TOKEN is not a runstream token; `runstream tokens generate` makes one")
        token_id, secret_hash = parsed
        text = None
    else:
        token_id, text, secret_hash = credentials.new_token()
    async with pool.acquire() as conn:
        if await tokens.has_live_admin_token(conn):
            return None
        try:
            await tokens.insert_token(conn, token_id, BOOTSTRAP_NAME, secret_hash, SCOPES, None, "server start", None)
        except AlreadyExists:
            return None
    if text is None:
        return "the admin token is the one in RUNSTREAM_ADMIN_TOKEN"
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.chmod(token_file, 0o600)
    return f"made the first admin token; it is in {token_file} (readable by you only)"

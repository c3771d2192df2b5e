"""Page tokens: opaque to callers, signed by the server and bound to the query they page.

A token carries a position (an offset, an id to continue after) and a digest of its query,
signed with HMAC-SHA256 under a key that every server process of the installation reads from
PostgreSQL (installation.server_secret), so any replica accepts another's tokens. A forged, altered
or borrowed token is INVALID_ARGUMENT, never a page of something else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import asyncpg

from runstream.errors import InvalidArgument
from runstream.server.storage import installation

Position = int | str


class PageTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, position: Position, query: str) -> str:
        body = json.dumps({"p": position, "q": _digest(query)}, separators=(",", ":")).encode()
        return _b64(body) + "." + _b64(self._sign(body))

    def read(self, token: str, query: str, kind: type[int] | type[str] = int) -> Position:
        """The position in `token`; InvalidArgument unless this installation issued it for `query`."""
        body_text, _, sig_text = token.partition(".")
        try:
            body, sig = _unb64(body_text), _unb64(sig_text)
        except ValueError:
            raise InvalidArgument("page_token is not one this server gave out") from None
        canonical = _b64(body) == body_text and _b64(sig) == sig_text  # one spelling per token
        if len(token) > 1_000 or not canonical or not hmac.compare_digest(sig, self._sign(body)):
            raise InvalidArgument("page_token is not one this server gave out")
        page = json.loads(body)
        if page.get("q") != _digest(query):
            raise InvalidArgument("page_token belongs to another search (its filter, order or scope differ)")
        position = page.get("p")
        if not isinstance(position, kind) or isinstance(position, bool):
            raise InvalidArgument("page_token is not one this server gave out")
        return position

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]


async def page_tokens(pool: asyncpg.Pool) -> PageTokens:
    async with pool.acquire() as conn:
        return PageTokens(await installation.server_secret(conn, "page-tokens"))


def _digest(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None

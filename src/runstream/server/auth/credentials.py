"""The API token format: `rst_<token id>_<secret>`. The id is public (it names the token in
logs and in the database); the server stores only the SHA-256 of the secret, which is 256
random bits, so a plain hash is enough and a stolen table grants nothing."""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "rst"


def new_token() -> tuple[str, str, bytes]:
    """A fresh token: its id, its whole text (shown once) and the hash the server keeps."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIX}_{token_id}_{secret}", digest(secret)


def parse(text: str) -> tuple[str, bytes] | None:
    """The token id and the hash of the secret of a token's text; None if it is not one."""
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 12 or not parts[2]:
        return None
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1], digest(parts[2])


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def same(stored: bytes, presented: bytes) -> bool:
    """Compare hashes in constant time."""
    return hmac.compare_digest(stored, presented)

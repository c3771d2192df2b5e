"""How stored files reach a browser: never as something that runs.

Anyone with the write scope can upload a file, and an admin may open its link while signed in
to the UI on the same origin (the local store serves /objects/ on the UI's port). So a stored
file is always an attachment (a browser that navigates to it downloads it), in a type that does
not execute (HTML, XML, scripts and anything unknown become text/plain or octet-stream; images
stay images so the UI can preview them in an <img>, where nothing runs), with nosniff, and, where
the server sets the headers itself, a CSP that sandboxes it (no script, no origin) even if a
browser rendered it after all. S3 serves from its own origin and takes the type and disposition
as signed overrides of the GET.
"""

from __future__ import annotations

import mimetypes
from urllib.parse import quote

# Rendered by browsers without running anything of the file's (SVG only inside an <img>; opened
# on its own it is an attachment under the sandbox below).
PASSIVE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/svg+xml"}
)
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"
# What the local store adds to every stored file it serves.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox",
    "Cache-Control": "private, no-store",
}


def served_type(key: str) -> str:
    """The Content-Type a stored file is served with, from its name."""
    guessed, _ = mimetypes.guess_type(key.rsplit("/", 1)[-1], strict=False)
    if guessed in PASSIVE_TYPES:
        return guessed
    if guessed is not None and (guessed.startswith("text/") or guessed.endswith(("json", "xml", "javascript"))):
        return TEXT  # readable in the UI's text preview, never a document or a script
    return BINARY


def disposition(key: str) -> str:
    """Content-Disposition: an attachment named like the file (RFC 6266, any characters)."""
    name = key.rsplit("/", 1)[-1]
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"

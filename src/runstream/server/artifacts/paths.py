"""Artifact paths: relative, "/"-separated, confined to their run. Checked before anything is
signed, so no URL can name a key outside the run's prefix."""

from __future__ import annotations

import re

from runstream.errors import InvalidArgument

MAX_PATH_BYTES = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_path(path: str, what: str = "artifact path") -> str:
    """`path` if it is a safe relative path; INVALID_ARGUMENT naming the problem otherwise."""
    shown = repr(path[:80] + ("..." if len(path) > 80 else ""))
    if not path:
        raise InvalidArgument(f"{what} is empty")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{what} is {len(path.encode()):,} bytes; the limit is {MAX_PATH_BYTES:,}")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise InvalidArgument(f"{what} {shown} contains a control character")
    if "\\" in path:
        raise InvalidArgument(f"{what} {shown} contains a backslash; separate directories with /")
    if path.startswith("/") or _DRIVE.match(path):
        raise InvalidArgument(f"{what} {shown} is absolute; give a path relative to the run's artifacts")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidArgument(f"{what} {shown} has an empty, '.' or '..' segment")
    return path


def check_prefix(prefix: str) -> str:
    """A directory to list: "" for the top, else a checked path (a trailing / is allowed)."""
    trimmed = prefix.rstrip("/")
    return check_path(trimmed, "prefix") if trimmed else ""


def object_key(run_id: str, path: str) -> str:
    """Where a run's artifact lives, relative to the store's root: a run's keys share one prefix."""
    return f"runs/{run_id}/artifacts/{path}"


def replacement_key(run_id: str, path: str, upload_id: str) -> str:
    """Where an upload goes while `object_key` is taken (by the recorded artifact or another
    upload): the recorded bytes stay untouched until the replacement is complete."""
    return f"runs/{run_id}/uploads/{upload_id}/{path}"

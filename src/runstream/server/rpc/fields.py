"""Checks of requests that several services share."""

from __future__ import annotations

from runstream.errors import FailedPrecondition, InvalidArgument, RunNotFound
from runstream.server.storage import db, runs
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_experiment_id

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


def check_values(values: dict[str, str], what: str, limit: int) -> None:
    """Keys as metric keys are; values at most `limit` characters of text PostgreSQL can store
    (no NUL, no lone surrogate)."""
    for key, value in values.items():
        wire.check_key(key, what)
        if len(value) > limit:
            raise InvalidArgument(f"{what} {key!r} value is {len(value):,} characters; the limit is {limit:,}")
        check_text(value, f"{what} {key!r} value")


def check_text(text: str, what: str) -> None:
    """Text PostgreSQL can store: valid UTF-8 without NUL."""
    if "\x00" in text:
        raise InvalidArgument(f"{what} contains a NUL character")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what} is not valid Unicode text (a lone surrogate)") from None


def experiment_id(text: str, what: str = "experiment_id") -> int:
    return int(canonical_experiment_id(text, what))


async def active_run(conn: db.Conn, run_id: str, doing: str) -> None:
    """The run exists and is not deleted, or the error says what to do before `doing`: the one
    check of every call that writes to a run."""
    check_stage(run_id, await runs.run_lifecycle(conn, run_id), doing)


def check_stage(run_id: str, stage: str | None, doing: str) -> None:
    """A run's lifecycle stage (None: no such run) allows `doing`, or the error says why not."""
    if stage is None:
        raise RunNotFound(f"run {run_id} does not exist")
    if stage != "active":
        raise FailedPrecondition(f"run {run_id} is deleted; restore it before {doing}")

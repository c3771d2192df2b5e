"""Checks of requests that several services share."""

from __future__ import annotations

from runstream.errors import FailedPrecondition, InvalidArgument, RunNotFound
from runstream.server.storage import store
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_experiment_id

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


def check_values(values: dict[str, str], what: str, limit: int) -> None:
    """Keys as metric keys are; values at most `limit` characters."""
    for key, value in values.items():
        wire.check_key(key, what)
        if len(value) > limit:
            raise InvalidArgument(f"{what} {key!r} value is {len(value):,} characters; the limit is {limit:,}")


def experiment_id(text: str, what: str = "experiment_id") -> int:
    return int(canonical_experiment_id(text, what))


async def active_run(conn: store.Conn, run_id: str, doing: str) -> None:
    """The run exists and is not deleted, or the error says what to do before `doing`."""
    stage = await store.run_lifecycle(conn, run_id)
    if stage is None:
        raise RunNotFound(f"run {run_id} does not exist")
    if stage != "active":
        raise FailedPrecondition(f"run {run_id} is deleted; restore it before {doing}")

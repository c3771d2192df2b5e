"""What the SDK keeps per process, and what becomes of it when the process forks or exits.

Kept in one module because the rules belong to the process, not to any one object: a fork must
wait until every writer's threads are out of gRPC (gRPC's fork handlers only run then), a child
must forget the parent's writers (their threads did not come along), and at exit the console
capture uploads, the active run ends and the writers of runs close, in that order. It imports
nothing of the SDK's (they import it), so it sees writers through the `Writer` protocol.
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Callable
from typing import Protocol


class Writer(Protocol):
    """What the process needs of a MetricWriter (client/writer.py)."""

    def close(self, timeout: float | None = ...) -> None: ...

    def _pause_for_fork(self) -> None: ...

    def _resume_after_fork(self) -> None: ...

    def _forget_after_fork(self) -> None: ...


_started: weakref.WeakSet[Writer] = weakref.WeakSet()  # every writer whose threads run here
_of_runs: weakref.WeakSet[Writer] = weakref.WeakSet()  # closed by flush_all
_orphans_claimed = False


def writer_started(writer: Writer) -> None:
    """Called by a MetricWriter as its threads start: a fork waits for them to leave gRPC."""
    _started.add(writer)


def run_writer(writer: Writer) -> None:
    """Called by Run for the writer it starts: flush_all (at exit) closes it."""
    _of_runs.add(writer)


def flush_all(timeout: float = 30.0) -> None:
    """Flush every live writer of this process (run at interpreter exit)."""
    for writer in list(_of_runs):
        writer.close(timeout)


def claim_orphans() -> bool:
    """True the first time this process asks: what earlier processes left in the spool is
    looked for once."""
    global _orphans_claimed
    if _orphans_claimed:
        return False
    _orphans_claimed = True
    return True


def at_exit(call: Callable[[], object]) -> None:
    """Call `call` at interpreter exit, before what was registered earlier (atexit's order): a
    console capture, started with a run's writer, uploads before runstream/__init__'s hook ends the
    active run and closes the writers of runs."""
    atexit.register(call)


def in_child(call: Callable[[], object]) -> None:
    """Call `call` in a forked child, after the parent's writers are forgotten."""
    os.register_at_fork(after_in_child=call)


def around_fork(
    *, before: Callable[[], object], in_parent: Callable[[], object], in_child: Callable[[], object]
) -> None:
    """Call `before` ahead of a fork, then `in_parent` in the parent and `in_child` in the child
    (after the parent's writers are forgotten): what must not be copied half-done holds a lock
    across the fork."""
    os.register_at_fork(before=before, after_in_parent=in_parent, after_in_child=in_child)


def _before_fork() -> None:
    for writer in list(_started):
        writer._pause_for_fork()


def _after_fork_in_parent() -> None:
    for writer in list(_started):
        writer._resume_after_fork()


def _after_fork_in_child() -> None:
    # The parent's writers have no threads here: they are not the child's to run or to flush.
    for writer in list(_started):
        writer._forget_after_fork()
    _started.clear()
    _of_runs.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

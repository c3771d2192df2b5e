"""Live tails of runs' metrics for dashboards.

Loaders NOTIFY `runstream_loaded` with the run ids of every commit. One LISTEN connection per
server wakes the tails of those runs; each tail keeps a step cursor per series and sends the
points beyond it, in step order. Tails also look again every second, so a missed
notification (a reconnect) delays points but never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np

from runstream.server.notifications import Notifications
from runstream.server.storage import chunks, store
from runstream.wire import points

log = logging.getLogger(__name__)

POLL_S = 1.0
QUIET_S = 2.0  # after the runs ended, this long without new points ends the tail
TERMINAL = {2, 3, 4, 5}  # FINISHED, FAILED, KILLED, CRASHED


async def tail(
    notifications: Notifications, run_ids: list[str], keys: list[str], from_step: int | None
) -> AsyncIterator[bytes]:
    """Serialized MetricPoints messages (points.py)."""
    pool = notifications.pool
    await notifications.listen()
    wake = notifications.register(set(run_ids))
    cursors: dict[int, int] = {}  # series id -> last step sent
    try:
        async with pool.acquire() as conn:
            known = await store.tail_series(conn, run_ids, keys)
            if from_step is None:
                latest = await store.last_steps(conn, [s["series_id"] for s in known])
                cursors = {s["series_id"]: latest.get(s["series_id"], -(2**63)) for s in known}
            else:
                cursors = {s["series_id"]: from_step - 1 for s in known}
        quiet_since: float | None = None
        while True:
            wake.clear()
            async with pool.acquire() as conn:
                # Statuses first: points committed before a run ended are then read below.
                ended = all(s in TERMINAL for s in (await store.run_statuses(conn, run_ids)).values())
                series = await store.tail_series(conn, run_ids, keys)
                for s in series:  # series that appeared since: all of their points are new
                    cursors.setdefault(s["series_id"], -(2**63) if from_step is None else from_step - 1)
                ids = [s["series_id"] for s in series]
                rows = await store.chunks_after(conn, ids, [cursors[i] for i in ids])
            by_series: dict[int, list[asyncpg.Record]] = {}
            for r in rows:
                by_series.setdefault(r["series_id"], []).append(r)
            sent = False
            for s in series:
                new = _new_points(by_series.get(s["series_id"], []), cursors[s["series_id"]])
                if new is None:
                    continue
                steps, stamps, values = new
                cursors[s["series_id"]] = int(steps[-1])
                sent = True
                yield points.encode(s["run_id"], s["key"], s["writer_id"], steps, values, stamps)
            # A run's last points may still be on their way through Redis when it ends:
            # stop only after the runs ended and nothing new came for QUIET_S.
            if not ended or sent:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_S)
    finally:
        notifications.unregister(wake)


def _new_points(rows: list[asyncpg.Record], after: int) -> tuple[Any, Any, Any] | None:
    """The points of a series' chunks beyond `after`, in step order (None when there are none)."""
    if not rows:
        return None
    parts = [chunks.unpack(r["steps"], r["timestamps"], r["vals"]) for r in rows]
    steps, stamps, values = (np.concatenate(column) for column in zip(*parts, strict=True))
    keep = steps > after
    if not keep.any():
        return None
    order = np.argsort(steps[keep], kind="stable")
    return steps[keep][order], stamps[keep][order], values[keep][order]

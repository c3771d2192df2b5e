"""The shared reader of live tails: one Feed per run, whatever the number of tails following
it and whatever keys they ask for (tail.py holds the tails and their limits).

A Feed reads the series of the keys its tails ask for, together (every series of the run while
one of them asks for all keys); a key that a joining tail is the first to ask for starts being
read from its last stored step, and one that no tail asks for any more stops being read. It
wakes when a loader NOTIFYs a commit of its run, or every POLL_S in case a notification was lost
(a reconnect), but no sooner after handing points out than its tails / 2,000 seconds (at most
0.5 s; 500 tails: four times a second). Each wake it reads the chunks beyond how far it has read
each series (`heads`), decodes them once, encodes one MetricPoints message per series
(points.py) and hands every tail the messages of its keys, the same objects for all, one tail
per turn of the event loop. A tail that needs stored points (its from_step, or after it fell
behind) reads them itself up to the heads, so between its own read and the feed's messages
nothing is missed and nothing is sent twice. Database work goes through `TailDatabase`, a
bounded share of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import numpy as np

from runstream.errors import FailedPrecondition, RunNotFound
from runstream.server.loading.notifications import Notifications
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import archive, codec, lineage, metrics, runs
from runstream.wire import points

log = logging.getLogger(__name__)

POLL_S = 1.0
QUIET_S = 2.0  # after the run ended, this long without new points ends its feed
TERMINAL = {2, 3, 4, 5}  # FINISHED, FAILED, KILLED, CRASHED
NO_STEP = -(2**63)  # the head of a series with no points yet
MAX_STEP = 2**63 - 1
MESSAGE_POINTS = 65_536  # points per message at most: ~1.5 MB, far under gRPC's 8 MiB
TAIL_WAKES_PER_S = 2_000
MAX_PAUSE_S = 0.5

Keys = frozenset[str] | None  # the keys a tail asks for; None: every key of the run


class TailDatabase:
    """The share of the PostgreSQL pool that live tails may use: at most `connections` at once,
    so however many tails are open, other calls still find connections free."""

    def __init__(
        self, pool: asyncpg.Pool, connections: int, metrics: Metrics, store: archive.RangeReader | None
    ) -> None:
        self.pool = pool
        self.store = store  # where cold chunks' points are
        self._slots = asyncio.Semaphore(connections)
        self._reads = {kind: metrics.tail_reads.labels(kind) for kind in ("shared", "own")}

    @asynccontextmanager
    async def connection(self, kind: str) -> AsyncIterator[Any]:
        """A pooled connection for one read; `kind` is "shared" (a feed's) or "own" (a tail's)."""
        async with self._slots, self.pool.acquire() as conn:
            self._reads[kind].inc()
            yield conn


@dataclass(frozen=True)
class Series:
    run_id: str
    key: str
    writer: str
    upto: int | None = None  # an ancestor's series a fork reads: up to its fork step


class Message:
    """Points of one series in step order, encoded once and sent as they are to every tail."""

    __slots__ = ("data", "event", "first_step", "key", "last_step", "points", "series_id")

    def __init__(self, series_id: int, series: Series, steps: Any, stamps: Any, values: Any) -> None:
        self.series_id, self.key = series_id, series.key
        self.first_step, self.last_step, self.points = int(steps[0]), int(steps[-1]), len(steps)
        self.data = points.encode(series.run_id, series.key, series.writer, steps, values, stamps)
        self.event: bytes | None = None  # its server-sent event (web/ui.py), made once for all tails

    def after(self, step: int) -> Message | None:
        """This message without the points at or before `step` (None if that is all of them)."""
        if self.first_step > step:
            return self
        if self.last_step <= step:
            return None
        p = points.decode(self.data)
        keep = p.step > step
        return Message(
            self.series_id, Series(p.run_id, p.key, p.writer), p.step[keep], p.timestamp_ms[keep], p.value[keep]
        )


def messages(
    series_id: int, series: Series, chunks: list[archive.ChunkBytes], after: int, upto: int | None
) -> list[Message]:
    """The points of one series' `chunks` in (after, upto], in step order, as messages."""
    if not chunks:
        return []
    if series.upto is not None:
        upto = series.upto if upto is None else min(upto, series.upto)
    try:
        parts = [codec.decode(c.codec, c.steps, c.timestamps, c.vals) for c in chunks]
    except codec.CorruptChunk as exc:  # name what is damaged, for a person to act on
        raise codec.CorruptChunk(
            f"metric {series.key!r} of run {series.run_id} (writer {series.writer!r}): {exc}"
        ) from None
    steps, stamps, values = (np.concatenate(column) for column in zip(*parts, strict=True))
    keep = (steps > after) if upto is None else (steps > after) & (steps <= upto)
    if not keep.any():
        return []
    order = np.argsort(steps[keep], kind="stable")
    steps, stamps, values = steps[keep][order], stamps[keep][order], values[keep][order]
    return [
        Message(
            series_id,
            series,
            steps[i : i + MESSAGE_POINTS],
            stamps[i : i + MESSAGE_POINTS],
            values[i : i + MESSAGE_POINTS],
        )
        for i in range(0, len(steps), MESSAGE_POINTS)
    ]


async def by_series(
    rows: list[asyncpg.Record], store: archive.RangeReader | None
) -> dict[int, list[archive.ChunkBytes]]:
    """The columns of chunk rows (metrics.chunks_after's), by series."""
    grouped: dict[int, list[archive.ChunkBytes]] = {}
    for r, chunk in zip(rows, await archive.chunk_bytes(rows, store), strict=True):
        grouped.setdefault(r["series_id"], []).append(chunk)
    return grouped


class Subscriber(Protocol):
    def offer(self, new: list[Message]) -> None: ...

    def ended(self, feed: Feed) -> None: ...

    def failed(self, exc: Exception) -> None: ...


class Feed:
    """One run's new points, read once for all its tails, each handed those of its own keys."""

    def __init__(
        self,
        run_id: str,
        db: TailDatabase,
        notifications: Notifications,
        on_done: Callable[[Feed], None],
    ) -> None:
        self.run_id = run_id
        self.series: dict[int, Series] = {}  # the series read, by id
        self.heads: dict[int, int] = {}  # series id -> last step read
        self.subscribers: dict[Subscriber, Keys] = {}
        self.users = 0  # tails joined or joining (tail.py's count: the feed closes at 0)
        self.done = False  # ended or failed: no more messages
        self._db, self._notifications, self._on_done = db, notifications, on_done
        self._failure: Exception | None = None
        self._rewinds = 0  # the run's rewinds when the feed started: one more ends its tails
        # The keys asked for by tails joined or joining, and how many of those ask for all.
        self._asked: Counter[str] = Counter()
        self._asking_all = 0
        # The keys whose series `heads` follows (None: all); they change, and so do the heads,
        # only under `_lock`: in a read, or as a tail joins.
        self._reading: set[str] | None = set()
        self._lock = asyncio.Lock()
        # Registered before the first read, so no commit slips between it and the first wait.
        self._wake = notifications.register({run_id})
        self._started = asyncio.ensure_future(self._start())
        self._task: asyncio.Task[None] | None = None

    async def started(self) -> None:
        """Once the run is known to exist (RunNotFound if it does not). Shielded: one caller
        giving up does not stop the start for the others."""
        await asyncio.shield(self._started)

    async def join(self, subscriber: Subscriber, keys: Keys) -> dict[int, int]:
        """Hand `subscriber` the messages of `keys` from now on; the heads of their series as it
        joins, where its cursors start when it wants only what comes next. The first tail to ask
        for a key has the feed read its series from their last stored steps (with the keys of
        every other tail waiting to join: one read for many)."""
        self._count(keys, 1)
        try:
            async with self._lock:
                if not self.done and not _covers(self._reading, keys):
                    await self._follow(self._wanted())
        except BaseException:
            self._count(keys, -1)
            raise
        self.subscribers[subscriber] = keys  # no await from here on: no read comes between
        if self._failure is not None:
            subscriber.failed(self._failure)
        elif self.done:
            subscriber.ended(self)
        return self.heads_of(keys)

    def leave(self, subscriber: Subscriber) -> None:
        """It gets nothing more; keys no other tail asks for stop being read at the next read."""
        if subscriber in self.subscribers:
            self._count(self.subscribers.pop(subscriber), -1)

    def heads_of(self, keys: Keys) -> dict[int, int]:
        """How far the feed has read each series of `keys`."""
        if keys is None:
            return dict(self.heads)
        return {i: head for i, head in self.heads.items() if self.series[i].key in keys}

    def close(self, failure: Exception | None = None) -> None:
        """No tail follows it any more, or (with `failure`) the server stops: its tails and any
        that still join get the failure."""
        self._notifications.unregister(self._wake)
        self._started.cancel()
        if self._task is not None:
            self._task.cancel()
        if failure is not None:
            self.done, self._failure = True, failure
            for subscriber in list(self.subscribers):
                subscriber.failed(failure)

    def _count(self, keys: Keys, by: int) -> None:
        if keys is None:
            self._asking_all += by
            return
        for key in keys:
            self._asked[key] += by
            if not self._asked[key]:
                del self._asked[key]

    def _wanted(self) -> set[str] | None:
        """The keys tails joined or joining ask for (None: all)."""
        return None if self._asking_all else set(self._asked)

    async def _start(self) -> None:
        try:
            async with self._db.connection("shared") as conn:
                if not await runs.run_statuses(conn, [self.run_id]):
                    raise RunNotFound(f"run {self.run_id} does not exist")
                self._rewinds = len(await lineage.rewinds_since(conn, self.run_id, 0))
        except Exception:
            self._finish(None)
            raise
        self._task = asyncio.create_task(self._run())

    async def _follow(self, keys: set[str] | None) -> None:
        """Under `_lock`: read the series of `keys` (None: all) too, from their last stored steps."""
        if self._reading is None:
            return
        new = None if keys is None else sorted(keys - self._reading)
        if new == []:
            return
        async with self._db.connection("shared") as conn:
            rows = await metrics.tail_series(conn, self.run_id, new or [])  # [] means every key
            rows = [r for r in rows if r.series_id not in self.heads]
            latest = await metrics.last_steps(conn, [r.series_id for r in rows])
        for r in rows:
            self.series[r.series_id] = Series(self.run_id, r.key, r.writer_id, r.upto)
            self.heads[r.series_id] = latest.get(r.series_id, NO_STEP)
        self._reading = None if new is None else self._reading | set(new)

    def _narrow(self) -> None:
        """Under `_lock`: stop reading the series of keys no tail asks for any more."""
        wanted = self._wanted()
        if wanted is None or (self._reading is not None and self._reading <= wanted):
            return
        # Reading every key covers every key wanted; reading some, joins added those wanted.
        self._reading = wanted if self._reading is None else self._reading & wanted
        for series_id in [i for i, s in self.series.items() if s.key not in wanted]:
            del self.series[series_id], self.heads[series_id]

    async def _run(self) -> None:
        quiet_since: float | None = None
        try:
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_S)
                self._wake.clear()
                ended, new = await self._read()
                if new:
                    await self._hand_out(new)
                    # Commits that come meanwhile wait for the next read: the more tails, the
                    # fewer and larger their writes, so the tails of a run cost the server at most
                    # about TAIL_WAKES_PER_S wakes a second, however often loaders commit.
                    await asyncio.sleep(min(len(self.subscribers) / TAIL_WAKES_PER_S, MAX_PAUSE_S))
                # A run's last points may still be on their way through Redis when it ends:
                # stop only after it ended and nothing new came for QUIET_S.
                if not ended or new:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= QUIET_S:
                    self._finish(None)
                    return
        except asyncio.CancelledError:
            raise
        except FailedPrecondition as exc:  # rewound: every tail of the run is told so
            self._finish(exc)
        except Exception as exc:  # the database went away, or a bug: every tail of the run gets the status
            log.warning("live tail reader of run %s stopped: %r", self.run_id, exc)
            self._finish(exc)

    async def _hand_out(self, new: list[Message]) -> None:
        """To every tail the messages of its keys (one list for all tails asking for the same
        keys), one tail per turn of the event loop: each wakes a task that writes to its client,
        and other calls' steps run between them rather than after hundreds of them (500 tails at
        once held GetRun's p99 at 60-90 ms, one at a time at about 20)."""
        by_key: dict[str, list[Message]] = {}
        for message in new:
            by_key.setdefault(message.key, []).append(message)
        for_keys: dict[Keys, list[Message]] = {None: new}
        for subscriber, keys in list(self.subscribers.items()):
            mine = for_keys.get(keys)
            if mine is None:
                assert keys is not None
                mine = for_keys[keys] = [m for key in by_key.keys() & keys for m in by_key[key]]
            if mine:
                subscriber.offer(mine)
                await asyncio.sleep(0)

    async def _read(self) -> tuple[bool, list[Message]]:
        """Whether the run has ended, and the points of the keys read committed since the last
        read."""
        async with self._lock:
            self._narrow()
            async with self._db.connection("shared") as conn:
                # Status first: points committed before the run ended are then read below.
                status = (await runs.run_statuses(conn, [self.run_id])).get(self.run_id)
                rewound = await lineage.rewinds_since(conn, self.run_id, self._rewinds)
                if rewound:  # its points above the step were superseded: the tails start again
                    raise FailedPrecondition(
                        f"run {self.run_id} was rewound to step {min(rewound):,}: its points above it were "
                        "superseded; open the tail again to follow the new ones"
                    )
                rows: list[asyncpg.Record] = []
                if self._reading is None or self._reading:
                    keys = [] if self._reading is None else sorted(self._reading)  # [] means every key
                    for r in await metrics.tail_series(conn, self.run_id, keys):
                        if r.series_id not in self.series:  # a series that appeared: all its points are new
                            self.series[r.series_id] = Series(self.run_id, r.key, r.writer_id, r.upto)
                            self.heads[r.series_id] = NO_STEP
                    # An ancestor's series a fork reads up to its fork step: done once read that far.
                    ids = [i for i, head in self.heads.items() if head < _last_read(self.series[i])]
                    rows = await metrics.chunks_after(conn, ids, [self.heads[i] for i in ids])
            new: list[Message] = []
            for series_id, chunks in (await by_series(rows, self._db.store)).items():
                found = messages(series_id, self.series[series_id], chunks, self.heads[series_id], None)
                if found:
                    self.heads[series_id] = found[-1].last_step
                    new += found
        return status is None or status in TERMINAL, new

    def _finish(self, failure: Exception | None) -> None:
        self.done, self._failure = True, failure
        self._notifications.unregister(self._wake)
        self._on_done(self)
        for subscriber in list(self.subscribers):
            if failure is None:
                subscriber.ended(self)
            else:
                subscriber.failed(failure)


def _last_read(series: Series) -> int:
    return MAX_STEP if series.upto is None else series.upto


def _covers(reading: set[str] | None, keys: Keys) -> bool:
    """Whether reading the series of `reading` (None: all) reads those of `keys` (None: all)."""
    return reading is None or (keys is not None and keys <= reading)

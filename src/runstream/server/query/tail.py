"""Live tails of runs' metrics (TailMetrics, and the web UI's /api/v1/tail): every tail of one
run follows one shared reader (feed.py), whatever keys it asks for, and the tails of a server
are bounded.

A tail keeps its own cursor per series of its keys and takes the feed's messages past it, in
step order.
One that asks for stored points (from_step) reads them itself, once, up to where the feed has
read, then goes on with the feed's messages. Each tail holds at most MAX_QUEUED_POINTS points
(or MAX_QUEUED_MESSAGES messages) its caller has not taken yet: a slower caller does not hold
the reader or the other tails back, nor the server's memory; it drops what waits and, when it
reads again, catches up from the store (the same read as from_step), so it still gets every
point exactly once and in order, only later.

Limits: at most `max_open` tails per server process and `max_per_caller` per token (per client
address while auth is off), else RESOURCE_EXHAUSTED naming the limit and its flag. All tails'
database reads share `connections` pooled connections, so other calls keep the rest of the pool.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from runstream.errors import ResourceExhausted, Unavailable
from runstream.server.loading.notifications import Notifications
from runstream.server.query.feed import NO_STEP, Feed, Keys, Message, TailDatabase, by_series, messages
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import archive, metrics

MAX_QUEUED_POINTS = 100_000
MAX_QUEUED_MESSAGES = 10_000


@dataclass(frozen=True)
class Caller:
    """Who opens a tail, for the per-token limit."""

    key: str  # a token's id, or a client's address while auth is off
    name: str  # how refusals name it


@dataclass(frozen=True)
class TailLimits:
    max_open: int  # per server process (--max-tails)
    max_per_caller: int  # per token, or client address while auth is off (--max-tails-per-token)


class Tails:
    """Every live tail of this server process: the shared feeds by run, and the counts the
    limits hold."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: Metrics,
        limits: TailLimits,
        connections: int,
        store: archive.RangeReader | None = None,
    ) -> None:
        self.notifications = Notifications(pool)
        self.db = TailDatabase(pool, connections, metrics, store)
        self.limits = limits
        self.metrics = metrics
        self._feeds: dict[str, Feed] = {}
        self._by_caller: Counter[str] = Counter()
        self._open = 0

    async def open(self, run_ids: list[str], keys: list[str], from_step: int | None, caller: Caller) -> Tail:
        """A tail of the runs' `keys` (every key when empty): RunNotFound for a run that does
        not exist, ResourceExhausted beyond a limit."""
        self._admit(caller)
        feeds: list[Feed] = []
        try:
            await self.notifications.listen()
            for run_id in run_ids:
                feeds.append(await self._feed(run_id))
        except BaseException:
            for feed in feeds:
                self._unuse(feed)
            self._release(caller)
            raise
        tail = Tail(self, feeds, frozenset(keys) or None, from_step, caller)
        try:
            await tail.join()
        except BaseException:
            tail.close()
            raise
        return tail

    async def close(self) -> None:
        """At shutdown: every tail still open ends with UNAVAILABLE, so callers reconnect."""
        stopping = Unavailable("the server is stopping; tail again once it (or another) is back")
        for feed in list(self._feeds.values()):
            self._forget(feed)
            feed.close(stopping)
        await self.notifications.close()

    def _admit(self, caller: Caller) -> None:
        if self._open >= self.limits.max_open:
            self.metrics.tails_refused.labels("server").inc()
            raise ResourceExhausted(
                f"this server has {self._open:,} live tails open, its limit (--max-tails {self.limits.max_open:,}); "
                "close one, or retry later"
            )
        held = self._by_caller[caller.key]
        if held >= self.limits.max_per_caller:
            self.metrics.tails_refused.labels("token").inc()
            raise ResourceExhausted(
                f"{caller.name} has {held:,} live tails open, the most one token (or, without auth, one client "
                f"address) may have (--max-tails-per-token {self.limits.max_per_caller:,}); close one first"
            )
        self._open += 1
        self._by_caller[caller.key] += 1
        self.metrics.tails_open.inc()

    def _release(self, caller: Caller) -> None:
        self._open -= 1
        self._by_caller[caller.key] -= 1
        if not self._by_caller[caller.key]:
            del self._by_caller[caller.key]
        self.metrics.tails_open.dec()

    async def _feed(self, run_id: str) -> Feed:
        """The run's feed, started, counted as used once more."""
        feed = self._feeds.get(run_id)
        if feed is None:
            feed = Feed(run_id, self.db, self.notifications, self._forget)
            self._feeds[run_id] = feed
            self.metrics.tail_readers.inc()
        feed.users += 1
        try:
            await feed.started()
        except BaseException:
            self._unuse(feed)
            raise
        return feed

    def _unuse(self, feed: Feed) -> None:
        feed.users -= 1
        if feed.users == 0:
            self._forget(feed)
            feed.close()

    def _forget(self, feed: Feed) -> None:
        """No new tail joins `feed`: it ended, failed, or has no tails left."""
        if self._feeds.get(feed.run_id) is feed:
            del self._feeds[feed.run_id]
            self.metrics.tail_readers.dec()


class Tail:
    """One caller's tail: the messages of its feeds for its keys (None: all) past its own cursor
    per series."""

    def __init__(self, tails: Tails, feeds: list[Feed], keys: Keys, from_step: int | None, caller: Caller) -> None:
        self._tails, self._feeds, self._keys, self._caller = tails, feeds, keys, caller
        self._from_step = from_step
        self._first = NO_STEP if from_step is None else from_step - 1  # cursor of a series not seen yet
        self._cursors: dict[int, int] = {}  # series id -> last step sent
        self._queue: deque[Message] = deque()
        self._queued_points = 0
        self._behind: set[Feed] = set()  # feeds whose points up to their heads come from the store first
        self._dropping = False  # fell behind: the feeds' messages are not kept until it catches up
        self._ended: set[Feed] = set()
        self._failure: Exception | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._timed_out = False

    async def join(self) -> None:
        """Follow its feeds (Tails.open's step, before the tail is handed out)."""
        for feed in self._feeds:
            heads = await feed.join(self, self._keys)
            if self._from_step is None:
                self._cursors.update(heads)  # from where the feed is: only what it reads next
            else:
                self._behind.add(feed)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while (batch := await self.take()) is not None:
            for message in batch:
                yield message

    async def take(self, wait: float | None = None) -> list[Message] | None:
        """The messages ready now, in order (waiting for some), [] when `wait` seconds passed
        without any, None once every run has ended; the feed's failure is raised."""
        while True:
            if self._behind:
                out = await self._catch_up()
            elif self._queue:
                out = self._drain()
            elif self._failure is not None:
                raise self._failure
            elif len(self._ended) == len(self._feeds):
                return None
            else:
                if not await self._wait(wait):
                    return []
                continue
            if out:
                return out

    async def _wait(self, wait: float | None) -> bool:
        """Until a feed offers something (True) or `wait` seconds pass (False); a timer rather
        than wait_for, which costs a task per call and every tail calls this after each send."""
        self._ready.clear()
        timer = None if wait is None else asyncio.get_running_loop().call_later(wait, self._time_up)
        self._timed_out = False
        try:
            await self._ready.wait()
        finally:
            if timer is not None:
                timer.cancel()
        return not self._timed_out

    def _time_up(self) -> None:
        self._timed_out = True
        self._ready.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for feed in self._feeds:
            feed.leave(self)
            self._tails._unuse(feed)
        self._tails._release(self._caller)

    # what feeds call

    def offer(self, new: list[Message]) -> None:
        if self._dropping or self._closed:
            return
        points = sum(m.points for m in new)
        if self._queue and (
            self._queued_points + points > MAX_QUEUED_POINTS or len(self._queue) + len(new) > MAX_QUEUED_MESSAGES
        ):
            # Too far behind: read it all from the store later, rather than hold the memory.
            self._queue.clear()
            self._queued_points = 0
            self._dropping = True
            self._behind.update(self._feeds)
            self._tails.metrics.tails_behind.inc()
        else:
            self._queue.extend(new)
            self._queued_points += points
        self._ready.set()

    def ended(self, feed: Feed) -> None:
        self._ended.add(feed)
        self._ready.set()

    def failed(self, exc: Exception) -> None:
        self._failure = exc
        self._ready.set()

    # its own reads

    def _drain(self) -> list[Message]:
        out = []
        while self._queue:
            message = self._queue.popleft()
            self._queued_points -= message.points
            rest = message.after(self._cursors.get(message.series_id, self._first))
            if rest is not None:
                self._cursors[message.series_id] = rest.last_step
                out.append(rest)
        return out

    async def _catch_up(self) -> list[Message]:
        """Stored points past the cursors up to the feeds' heads as they are now; what the feeds
        read from now on comes through the queue (points it also holds are dropped there)."""
        feeds, self._behind, self._dropping = self._behind, set(), False
        wanted = [
            (series_id, self._cursors.get(series_id, self._first), head, feed.series[series_id])
            for feed in feeds
            for series_id, head in feed.heads_of(self._keys).items()
            if head > self._cursors.get(series_id, self._first)
        ]
        if not wanted:
            return []
        async with self._tails.db.connection("own") as conn:
            found = await metrics.chunks_between(
                conn, [w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted]
            )
        rows = await by_series(found, self._tails.db.store)
        out = []
        for series_id, after, upto, series in wanted:
            out += messages(series_id, series, rows.get(series_id, []), after, upto)
            self._cursors[series_id] = max(upto, self._cursors.get(series_id, self._first))
        return out

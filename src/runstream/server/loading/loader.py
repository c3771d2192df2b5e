"""Loaders move metric batches from the Redis streams into PostgreSQL, exactly once.

Each loader keeps one read of the consumer group in flight per shard (a shard's stream is in
one hash slot: a Redis Cluster refuses a read across slots), and what the reads bring becomes one
transaction: record the batches' keys
(run, writer, seq) and drop those already recorded (client retries), COPY the new points
as chunks, fold them into the per-key summaries. Only after the commit are the entries
acknowledged and deleted from the stream, shard by shard (a shard's acknowledgements and dead
letters in one Redis transaction of its slot). Entries a crashed loader left pending are
claimed by another loader once they have been idle for `claim_idle_ms`.

An entry that cannot be decoded or stored (a value PostgreSQL refuses, a run that does not
exist) never holds up the others: the read is stored batch by batch and such entries move to
the dead-letter stream with the reason, where `runstream dead-letters` shows and replays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from runstream.errors import InvalidArgument
from runstream.server.loading import lineage as runs_lineage
from runstream.server.runtime.failpoints import failpoint
from runstream.server.runtime.metrics import Metrics
from runstream.server.storage import chunks, db, lineage, metrics
from runstream.server.storage.failures import database_away, refused_value
from runstream.server.streams import strays
from runstream.server.streams.client import REDIS_ERRORS, RedisClient
from runstream.server.streams.deployment import DeploymentConflict, bind
from runstream.server.streams.keys import (
    FIELD_BATCH,
    FIELD_DEPLOYMENT,
    FIELD_ENTRY_ID,
    FIELD_FAILED_MS,
    FIELD_REASON,
    FIELD_RECEIVED_MS,
    FIELD_SOURCE,
    LOADER_GROUP,
    Keys,
)
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_run_id

log = logging.getLogger(__name__)

Entry = tuple[str, bytes, dict[bytes, bytes]]  # (stream, entry id, fields)
Loaded = tuple[Entry, wire.Batch, int, bytes]  # an entry, its batch, when ingest received it (ms), its digest
SERIES_CACHE_MAX = 1_000_000
RETRY_S = 1.0  # pause after a round failed on PostgreSQL or Redis
# A commit that takes longer is taken for a connection that hangs (a COPY whose connection was
# killed can wait forever): it is cancelled, the connection dropped, and the round retried.
COMMIT_TIMEOUT_S = 120.0
FOREIGN_LOG_S = 60.0  # entries of another deployment are said at most this often
PARKED_IDLE_MS = 86_400_000


def caused_by_entry(exc: BaseException) -> bool:
    """Whether a failed load can be blamed on what some entry holds: a value PostgreSQL or
    asyncpg refuses (entries are decoded and checked before). Anything else (the database or
    Redis away, a connection killed mid-operation, asyncpg's client left in a bad state by it,
    a bug) is not the entry's fault: the entries stay pending in Redis and are loaded again on
    a fresh connection, never dead-lettered."""
    return refused_value(exc)


@dataclass
class LoadStats:
    entries: int = 0
    batches: int = 0
    duplicates: int = 0
    points: int = 0
    transactions: int = 0
    read_s: float = 0.0  # waiting for and reading stream entries
    commit_s: float = 0.0  # decode, pack, COPY and commit
    ack_s: float = 0.0  # XACK + XDEL after the commit


class Loader:
    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: RedisClient,
        keys: Keys,
        *,
        read_count: int = 200,
        claim_idle_ms: int = 30_000,
        block_ms: int = 200,
        consumer: str | None = None,
        metrics: Metrics | None = None,
        database: str = "?",
    ) -> None:
        self.pool = pool
        self.metrics = metrics or Metrics()
        self.redis = redis
        self.keys = keys
        self.database = database  # where it loads into, printable: named in the keyspace's binding
        self.read_count = read_count
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = LoadStats()
        self._series: dict[chunks.SeriesKey, int] = {}
        self._last_claim = 0.0
        self._foreign_said = -FOREIGN_LOG_S
        # First the entries pending under this consumer name: a loader of the same name (the
        # process this one replaces) read them and died before acknowledging them.
        self._recovering = True
        self._retrying = False  # the pending entries are this loader's own, from a round that failed
        self._fresh: dict[str, asyncio.Task[list[Entry]]] = {}  # the read in flight of each shard

    async def setup(self) -> None:
        """Bind the keyspace to this deployment (if Redis lost the binding) and create the
        consumer group on every shard (from the start of the stream). Another deployment's
        binding is said, and loading goes on: this loader takes only its own entries."""
        try:
            await bind(self.redis, self.keys, self.database)
        except DeploymentConflict as exc:
            log.error("%s", exc)
        if moved := await strays.adopt(self.redis, self.keys):
            log.warning("moved %d stream entries from keys of an earlier version or of shards no longer used", moved)
        for stream in self.keys.streams():
            try:
                await self.redis.xgroup_create(stream, LOADER_GROUP, id="0", mkstream=True)
            except aioredis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        """Load until `stop` is set, then drain: keep loading until nothing is left.

        The next read is in flight while a transaction commits, so Redis and PostgreSQL
        work at the same time; entries are still loaded in stream order. When PostgreSQL
        or Redis fail, the loader waits and goes on: what it had read stays pending in
        Redis and is claimed again after `claim_idle_ms`."""
        reading: asyncio.Task[list[Entry]] | None = None
        grouped = False  # the consumer groups exist (Redis may be away at start, or lose them)
        while True:
            try:
                if not grouped:
                    await self.setup()
                    grouped = True
                if reading is None:
                    reading = asyncio.create_task(self.read(block=not stop.is_set()))
                entries = await reading
                reading = None
                if entries:
                    if not self._recovering:  # reading ahead would return the same pending entries
                        reading = asyncio.create_task(self.read(block=not stop.is_set()))
                    await self.load(entries)
                elif stop.is_set() and await self._own_pending() == 0:
                    return
            except Exception as exc:  # PostgreSQL or Redis away, full or read-only: wait, then go on
                self.metrics.loader_errors.inc()
                if reading is not None:
                    reading.cancel()
                    reading = None
                self._forget_reads()  # what they had read is pending under this consumer: taken first
                self._last_claim = 0.0  # look for the entries left pending at the next read
                self._recovering = self._retrying = True  # and first take its own again, at once
                if _group_lost(exc):
                    log.error("Redis lost consumer group %r (restarted without its data?); creating it", LOADER_GROUP)
                    grouped = False
                    continue
                transient = database_away(exc) or isinstance(exc, REDIS_ERRORS)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "loader round failed, retrying in %.0f s: %s: %s",
                    RETRY_S,
                    type(exc).__name__,
                    exc,
                    exc_info=not transient,  # not the database or Redis: a bug, with its traceback
                )
                await asyncio.sleep(RETRY_S)

    async def read(self, block: bool = True) -> list[Entry]:
        """The next entries to load: stale ones another loader left, else new ones."""
        t0 = time.perf_counter()
        entries = await self._own_pending_entries() if self._recovering else []
        if not entries:
            entries = await self._claim_stale()
        if not entries:
            entries = await self._read_new(block)
        self.stats.read_s += time.perf_counter() - t0
        return entries

    async def _read_new(self, block: bool) -> list[Entry]:
        """New entries of whichever shards have some. Each shard has one read in flight, kept
        across calls, so a shard that answers while others are being loaded is taken next time;
        without `block` (draining) every shard answers at once."""
        for stream in self.keys.streams():
            if stream not in self._fresh:
                task = self._fresh[stream] = asyncio.create_task(self._read_shard(stream, ">", block))
                # One failed read fails the round (below); the others, dropped with it, are looked
                # at here so asyncio does not log them as errors never retrieved.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.wait(
            self._fresh.values(), return_when=asyncio.FIRST_COMPLETED if block else asyncio.ALL_COMPLETED
        )
        entries: list[Entry] = []
        for stream, task in list(self._fresh.items()):
            if task.done():
                del self._fresh[stream]
                entries += task.result()  # a failed read raises here: the round is retried
        return entries

    async def _read_shard(self, stream: str, start: str, block: bool = False) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            LOADER_GROUP, self.consumer, {stream: start}, count=self.read_count, block=self.block_ms if block else None
        )
        return _entries(reply)

    def _forget_reads(self) -> None:
        for task in self._fresh.values():
            task.cancel()
        self._fresh.clear()

    async def _own_pending_entries(self) -> list[Entry]:
        """Entries pending under this consumer's name (read by a predecessor of that name),
        until there are none left; entries deleted meanwhile are acknowledged."""
        found = [e for stream in self.keys.streams() for e in await self._read_shard(stream, "0")]
        gone = [(stream, eid) for stream, eid, fields in found if not fields]
        for stream, eid in gone:
            await self.redis.xack(stream, LOADER_GROUP, eid)
        entries = [e for e in found if e[2]]
        if not found:
            self._recovering = self._retrying = False
        elif entries and not self._retrying:
            self.metrics.entries_taken_over.inc(len(entries))
            log.warning("taking over %d entries its predecessor %s had read", len(entries), self.consumer)
        return entries

    async def _claim_stale(self) -> list[Entry]:
        now = time.monotonic()
        if now - self._last_claim < min(self.claim_idle_ms / 1000 / 2, 5.0):
            return []
        self._last_claim = now
        claimed: list[Entry] = []
        for stream in self.keys.streams():
            reply = await self.redis.xautoclaim(
                stream, LOADER_GROUP, self.consumer, self.claim_idle_ms, start_id="0-0", count=self.read_count
            )
            claimed += [(stream, eid, fields) for eid, fields in reply[1] if fields]
            for eid in reply[2] if len(reply) > 2 else []:  # entries deleted while pending
                await self.redis.xack(stream, LOADER_GROUP, eid)
        if claimed:
            self.metrics.entries_claimed.inc(len(claimed))
            log.warning("claimed %d entries left pending by another loader", len(claimed))
        return claimed

    async def _own_pending(self) -> int:
        total = 0
        for stream in self.keys.streams():
            info = await self.redis.xpending_range(stream, LOADER_GROUP, "-", "+", 1, consumername=self.consumer)
            total += len(info)
        return total

    async def load(self, entries: list[Entry]) -> None:
        """Store the entries' batches in one transaction, then acknowledge and delete them. An
        error that is not transient must come from some entry: the entries are then stored one
        by one, and each that still fails goes to the dead-letter stream, so it blocks nothing."""
        if foreign := [e for e in entries if not self.keys.owns(e[2])]:
            await self._leave(foreign)
            entries = [e for e in entries if self.keys.owns(e[2])]
        batches: list[Loaded] = []
        dead: list[tuple[Entry, str]] = []
        seen: set[tuple[str, str, int, int]] = set()
        for entry in entries:
            stream, eid, fields = entry
            try:
                b = wire.decode(fields[FIELD_BATCH])
                run_id = canonical_run_id(b.run_id)  # ingest already did; entries may come from elsewhere
            except (InvalidArgument, KeyError) as exc:
                dead.append((entry, f"undecodable: {exc}"))
                continue
            writer = b.writer_id or wire.DEFAULT_WRITER
            ident = (run_id, writer, b.epoch, b.seq)
            if ident in seen:  # the same batch appended twice and read together
                self.stats.duplicates += 1
                self.metrics.batches_deduplicated.inc()
                continue
            seen.add(ident)
            digest = wire.batch_digest(b)
            if writer != b.writer_id or run_id != b.run_id:
                b = replace(b, run_id=run_id, writer_id=writer)
            batches.append((entry, b, int(fields.get(FIELD_RECEIVED_MS, b"0")), digest))

        t0 = time.perf_counter()
        if batches:
            try:
                dead += _reused(await self._commit(batches))
            except Exception as exc:
                if not caused_by_entry(exc):
                    raise
                log.warning(
                    "a load of %d batches failed (%s: %s); storing them one by one",
                    len(batches),
                    type(exc).__name__,
                    exc,
                )
                dead += await self._commit_one_by_one(batches)
        t1 = time.perf_counter()
        failpoint("loader.after_commit")
        by_stream: dict[str, list[bytes]] = {}
        for stream, eid, _ in entries:
            by_stream.setdefault(stream, []).append(eid)
        await asyncio.gather(*(self._acknowledge(stream, ids, dead) for stream, ids in by_stream.items()))
        for (stream, eid, _), reason in dead:
            log.error("dead-lettered stream entry %s %s: %s", stream, eid.decode(), reason)
        self.metrics.entries_dead_lettered.inc(len(dead))
        self.stats.entries += len(entries)
        self.stats.transactions += 1
        self.stats.commit_s += t1 - t0
        if batches:
            self.metrics.commit_latency.observe(t1 - t0)
        self.stats.ack_s += time.perf_counter() - t1

    async def _acknowledge(self, stream: str, ids: list[bytes], dead: list[tuple[Entry, str]]) -> None:
        """One shard's entries acknowledged and deleted, and its dead letters kept: one
        transaction of the shard's slot, so both happen or neither."""
        letters = self.keys.dead_letters(self.keys.shard_of_stream(stream))
        async with self.redis.pipeline(transaction=True) as pipe:
            for (source, eid, fields), reason in dead:
                if source == stream:
                    pipe.xadd(letters, _dead_letter(stream, eid, fields, reason))
            pipe.xack(stream, LOADER_GROUP, *ids)
            pipe.xdel(stream, *ids)
            await pipe.execute()

    async def _leave(self, foreign: list[Entry]) -> None:
        """Entries of another deployment (its server shares this Redis keyspace, which start-up
        refuses, unless the binding was lost): never loaded here. They are handed to a consumer
        named after their deployment, where that deployment's loaders claim them."""
        for stream, eid, fields in foreign:
            owner = uuid.UUID(bytes=fields[FIELD_DEPLOYMENT]) if len(fields[FIELD_DEPLOYMENT]) == 16 else "?"
            # Idle for a day as far as Redis is concerned: the owner's claim takes it at once, whatever
            # its --claim-idle-ms, and a claim here never makes it look fresh again.
            await self.redis.xclaim(
                stream, LOADER_GROUP, f"deployment-{owner}", 0, [eid], idle=PARKED_IDLE_MS, justid=True
            )
        self.metrics.entries_foreign.inc(len(foreign))
        now = time.monotonic()
        if now - self._foreign_said >= FOREIGN_LOG_S:
            self._foreign_said = now
            log.error(
                "%d stream entries in %s are for another deployment (database) than this one (%s): left to it. "
                "Two deployments share this Redis keyspace: give each its own --redis-prefix",
                len(foreign),
                foreign[0][0],
                self.keys.deployment,
            )

    async def _commit_one_by_one(self, batches: list[Loaded]) -> list[tuple[Entry, str]]:
        """Each batch in its own transaction; returns those that fail for a reason of their own.
        Any other failure ends the attempt: the round is retried, and what was stored here is
        recorded, so the retry skips it."""
        dead = []
        for loaded in batches:
            try:
                dead += _reused(await self._commit([loaded]))
            except Exception as exc:
                if not caused_by_entry(exc):
                    raise
                dead.append((loaded[0], f"{type(exc).__name__}: {exc}"[:1000]))
        return dead

    async def _commit(self, loaded: list[Loaded]) -> list[Loaded]:
        """One transaction: record the batches, COPY the new ones, fold in their summaries.
        Returns the batches whose (run, writer, epoch, seq) was stored before with other points.
        A commit cut short (timed out, its connection killed) may have committed or not: its
        retry finds the batches recorded or not, and stores each once either way."""
        return await asyncio.wait_for(self._transaction(loaded), COMMIT_TIMEOUT_S)

    async def _transaction(self, loaded: list[Loaded]) -> list[Loaded]:
        async with self.pool.acquire() as conn:
            try:
                return await self._write(conn, loaded)
            except BaseException as exc:
                # Cut short (timed out, cancelled, its connection killed): its state is unknown, so
                # the pool makes a new connection instead of resetting this one mid-transaction.
                if isinstance(exc, asyncio.CancelledError) or database_away(exc):
                    with contextlib.suppress(asyncpg.InterfaceError):  # already closed and let go by the pool
                        conn.terminate()
                raise

    async def _write(self, conn: db.Conn, loaded: list[Loaded]) -> list[Loaded]:
        missing = [k for k in chunks.series_of([b for _, b, _, _ in loaded]) if k not in self._series]
        if missing:
            if len(self._series) > SERIES_CACHE_MAX:
                self._series.clear()
            self._series.update(await metrics.series_ids(conn, missing))
        async with conn.transaction():
            new, conflicting = await metrics.record_batches(
                conn, [(b.run_id, b.writer_id, b.epoch, b.seq, b.points, d) for _, b, _, d in loaded]
            )
            fresh = [(b, r) for _, b, r, _ in loaded if (b.run_id, b.writer_id, b.epoch, b.seq) in new]
            reused = [x for x in loaded if (x[1].run_id, x[1].writer_id, x[1].epoch, x[1].seq) in conflicting]
            resent = len(loaded) - len(fresh) - len(reused)
            self.stats.duplicates += resent
            self.metrics.batches_deduplicated.inc(resent)
            if not fresh:
                return reused
            run_ids = {b.run_id for b, _ in fresh}
            await lineage.hold_runs(conn, run_ids)  # then rewinds under way are done, and seen
            rewinds, forks = await lineage.rewinds_and_forks(conn, run_ids)
            current, taken = runs_lineage.route(fresh, rewinds) if rewinds else (fresh, {})
            packed = chunks.pack([b for b, _ in current], [r for _, r in current], self._series.__getitem__)
            records, points, summaries = packed.chunk_records, packed.points, packed.summary_columns
            if forks:  # the forks that read these points count them in their summaries too (not in chunks)
                counted = current + runs_lineage.shared(current, forks)
                summaries = chunks.pack([b for b, _ in counted], [r for _, r in counted], _no_series).summary_columns
            for number, part in taken.items():  # points an earlier rewind superseded: to its branch
                ids = await metrics.series_ids(conn, chunks.series_of([b for b, _ in part]), branch=number)
                branch = chunks.pack([b for b, _ in part], [r for _, r in part], ids.__getitem__)
                records, points = records + branch.chunk_records, points + branch.points
            await metrics.copy_chunks(conn, records)
            failpoint("loader.after_copy")
            await metrics.upsert_summaries(conn, summaries)
            await metrics.notify_loaded(conn, run_ids)  # delivered on commit
        self.stats.batches += len(fresh)
        self.stats.points += points
        self.metrics.batches_committed.inc(len(fresh))
        self.metrics.points_committed.inc(points)
        self.metrics.copy_points.observe(points)
        return reused


def _no_series(key: chunks.SeriesKey) -> int:
    return 0  # chunks packed only for their summaries are never stored


def _reused(batches: list[Loaded]) -> list[tuple[Entry, str]]:
    """Batches whose seq was stored before with other points: dead letters, with the reason."""
    return [
        (entry, f"seq {b.seq} of writer {b.writer_id!r} (epoch {b.epoch}) was stored before with other points")
        for entry, b, _, _ in batches
    ]


async def backlog(redis: RedisClient, keys: Keys) -> int:
    """Entries in the streams not yet loaded (waiting or pending)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in keys.streams():
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())


def _dead_letter(stream: str, eid: bytes, fields: dict[bytes, bytes], reason: str) -> dict[Any, Any]:
    return {
        FIELD_BATCH: fields.get(FIELD_BATCH, b""),
        FIELD_RECEIVED_MS: fields.get(FIELD_RECEIVED_MS, b"0"),
        FIELD_SOURCE: stream,
        FIELD_ENTRY_ID: eid,
        FIELD_REASON: reason,
        FIELD_FAILED_MS: int(time.time() * 1000),
    }


def _entries(reply: Any) -> list[Entry]:
    """XREADGROUP's [[stream, [(id, fields), ...]], ...] as (stream, id, fields) tuples."""
    return [(stream.decode(), eid, fields) for stream, items in reply for eid, fields in items]


def _group_lost(exc: Exception) -> bool:
    """Redis answers NOGROUP once the consumer group is gone, e.g. after a restart without its data."""
    return isinstance(exc, aioredis.ResponseError) and str(exc).startswith("NOGROUP")

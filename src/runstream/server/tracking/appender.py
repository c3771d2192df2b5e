"""Ordered, pipelined appends to one Redis stream.

Every ingest handler hands its batch to the appender of the batch's shard and gets a future.
One task per shard sends whatever has queued up as one pipeline over one connection, so
appends keep the order they were submitted in (a writer's batches stay in seq order in the
stream) and many concurrent senders share each Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode
from redis.exceptions import OutOfMemoryError

from runstream.errors import ResourceExhausted, RunstreamError, Unavailable
from runstream.server.streams.client import REDIS_ERRORS, RedisClient, master_of
from runstream.server.streams.keys import Fields

log = logging.getLogger(__name__)

MAX_PIPELINE = 256  # entries per round trip


@dataclass(frozen=True)
class Durability:
    """What an ack waits for beyond Redis taking the entry: `replicas` Redis replicas to confirm
    it (WAIT), within `timeout_ms`; otherwise the batches get UNAVAILABLE and are resent."""

    replicas: int = 0
    timeout_ms: int = 1_000


class StreamAppender:
    def __init__(self, redis: RedisClient, stream: str, durability: Durability = Durability()) -> None:
        self.redis = redis
        self.stream = stream
        self.durability = durability
        self._queue: asyncio.Queue[tuple[Fields, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.failing = False  # the last round's appends failed (logged once, until they work again)

    def submit(self, fields: Fields) -> asyncio.Future[None]:
        """Queue one entry; the future resolves once Redis has appended it (in submit order)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"append {self.stream}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A sender that stopped waiting (its stream ended on an earlier refusal) never looks at
        # this one's outcome: look here, so asyncio does not log it as an error never retrieved.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.put_nowait((fields, done))
        return done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        """Never ends but by cancellation: whatever Redis answers reaches each batch's future as
        success or a retryable status, and the next round starts afresh."""
        while True:
            work = [await self._queue.get()]
            while len(work) < MAX_PIPELINE and not self._queue.empty():
                work.append(self._queue.get_nowait())
            replicas = self.durability.replicas
            try:
                results = await self._append([fields for fields, _ in work], replicas)
            except Exception as exc:  # unreachable, timed out, or anything else: no batch was taken
                results = [exc] * (len(work) + bool(replicas))
            if replicas:
                confirmed = results.pop()
                if isinstance(confirmed, int) and confirmed < replicas:
                    short = Unavailable(
                        f"{confirmed} of {replicas} Redis replicas confirmed the append within "
                        f"{self.durability.timeout_ms} ms; retry"
                    )
                    results = [short if not isinstance(r, Exception) else r for r in results]
            failed = 0
            for (_, done), result in zip(work, results, strict=True):
                if done.done():
                    continue
                if isinstance(result, Exception):
                    failed += 1
                    done.set_exception(refusal(result))
                else:
                    done.set_result(None)
            self._report(failed, results)

    async def _append(self, entries: list[Fields], replicas: int) -> list[Any]:
        """XADD each entry, then (with `replicas`) WAIT, in one pipeline: one connection, so
        WAIT counts the replicas that have these appends. On a cluster WAIT goes to the master
        of the shard's slot; if the slot moved meanwhile (a failover, a resharding), the appends
        may have gone elsewhere than WAIT looked, so the round is refused and resent."""
        master = await master_of(self.redis, self.stream) if replicas else None
        async with self.redis.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
            if replicas:
                pipe.execute_command("WAIT", replicas, self.durability.timeout_ms, **_on(master))
            results: list[Any] = await pipe.execute(raise_on_error=False)
        if master is not None and await master_of(self.redis, self.stream) != master:
            moved = Unavailable(f"the Redis Cluster slot of {self.stream} moved during the append; retry")
            results = [moved] * len(results)
        return results

    def _report(self, failed: int, results: list[object]) -> None:
        """One log line when appends start failing and one when they work again."""
        if failed and not self.failing:
            first = next(r for r in results if isinstance(r, Exception))
            log.warning("appends to %s refused: %s", self.stream, refusal(first))
        elif not failed and self.failing:
            log.warning("appends to %s work again", self.stream)
        self.failing = bool(failed)


def _on(master: ClusterNode | None) -> dict[str, Any]:
    return {"target_nodes": master} if master is not None else {}


def refusal(exc: BaseException) -> RunstreamError:
    """A failed append as the sender sees it: always a status to retry on."""
    if isinstance(exc, RunstreamError):
        return exc
    if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM"):
        return ResourceExhausted("the ingest log (Redis) is out of memory (maxmemory); retry later")
    return Unavailable(f"the ingest log (Redis) did not take the batch: {type(exc).__name__}: {exc}")


async def describe_durability(redis: RedisClient, durability: Durability) -> str:
    """One line on what an ack means with this Redis' persistence settings."""
    try:
        config: Any = await redis.config_get("appendonly")
        config.update(await redis.config_get("appendfsync"))
        aof, fsync = str(config.get("appendonly", "?")), str(config.get("appendfsync", "?"))
    except REDIS_ERRORS:  # managed services often hide CONFIG
        aof, fsync = "?", "?"
    if aof == "no":
        local = "acked batches live in Redis' memory until loaded: a Redis restart loses those not yet loaded"
    elif fsync == "always":
        local = "every ack is on Redis' disk (appendfsync always): a host crash loses nothing acknowledged"
    elif fsync == "everysec":
        local = (
            "a Redis process crash loses nothing acknowledged; a host crash up to ~1 s of acks (appendfsync everysec)"
        )
    elif fsync == "no":
        local = "a host crash can lose acks the OS had not written yet (appendfsync no)"
    else:
        local = "Redis' persistence settings are not readable here (CONFIG GET refused)"
    if durability.replicas:
        local += f"; each ack also waits for {durability.replicas} replica(s) (WAIT, {durability.timeout_ms} ms)"
    return f"acks: {local}"

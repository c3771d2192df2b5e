"""Ordered, pipelined appends to one Redis stream.

Every ingest handler hands its batch to the appender of the batch's shard and gets a future.
One task per shard sends whatever has queued up as one pipeline over one connection, so
appends keep the order they were submitted in (a writer's batches stay in seq order in the
stream) and many concurrent senders share each Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from runstream.errors import Unavailable

log = logging.getLogger(__name__)

MAX_PIPELINE = 256  # entries per round trip

Fields = dict[bytes, bytes | int]


class StreamAppender:
    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self._queue: asyncio.Queue[tuple[Fields, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def submit(self, fields: Fields) -> asyncio.Future[None]:
        """Queue one entry; the future resolves once Redis has appended it (in submit order)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"append {self.stream}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fields, done))
        return done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            work = [await self._queue.get()]
            while len(work) < MAX_PIPELINE and not self._queue.empty():
                work.append(self._queue.get_nowait())
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for fields, _ in work:
                        pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
                    await pipe.execute()
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                error = Unavailable(f"the ingest log (Redis) is unreachable: {exc}")
                for _, done in work:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, done in work:
                if not done.done():
                    done.set_result(None)

"""The AdminService: the dead letters the loaders set aside, listed and replayed.

A dead letter keeps the serialized batch as ingest appended it, where it was read from and why
it could not be stored (loader.py). Replaying puts it back on a metric stream in the same
Redis transaction that removes it from the dead letters, so it is never in neither or both.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from runstream.errors import InvalidArgument
from runstream.server.rpc.paging import PageTokens
from runstream.server.streams.keys import (
    FIELD_BATCH,
    FIELD_ENTRY_ID,
    FIELD_FAILED_MS,
    FIELD_REASON,
    FIELD_RECEIVED_MS,
    FIELD_SOURCE,
    Keys,
)
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_run_id
from runstream.wire.proto import admin_pb2 as adm

DEFAULT_MAX_RESULTS = 100
MAX_RESULTS = 1_000


class Admin:
    def __init__(self, redis: aioredis.Redis, keys: Keys, tokens: PageTokens) -> None:
        self.redis = redis
        self.keys = keys
        self.tokens = tokens

    async def ListDeadLetters(self, req: adm.ListDeadLettersRequest, ctx: Any) -> adm.ListDeadLettersResponse:
        limit = req.max_results or DEFAULT_MAX_RESULTS
        if not 0 < limit <= MAX_RESULTS:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and {MAX_RESULTS:,}")
        start = "-" if not req.page_token else "(" + str(self.tokens.read(req.page_token, "dead letters", str))
        entries = await self._range(start, "+", limit + 1)
        total = await self.redis.xlen(self.keys.dead_letters)
        page = [_message(eid, fields) for eid, fields in entries[:limit]]
        more = len(entries) > limit
        return adm.ListDeadLettersResponse(
            dead_letters=page,
            next_page_token=self.tokens.issue(page[-1].id, "dead letters") if more else "",
            total=int(total),
        )

    async def RetryDeadLetters(self, req: adm.RetryDeadLettersRequest, ctx: Any) -> adm.RetryDeadLettersResponse:
        if req.all == bool(req.ids):
            raise InvalidArgument("name the dead letters to retry (ids) or set all, not both")
        if req.all:
            found = await self._range("-", "+")
            missing: list[str] = []
        else:
            ids = [_entry_id(i, "id") for i in req.ids]
            found, missing = [], []
            for i in ids:
                got = await self._range(i, i)
                if got:
                    found += got
                else:
                    missing.append(i)
        async with self.redis.pipeline(transaction=True) as pipe:
            for eid, fields in found:
                entry = self.keys.entry(fields.get(FIELD_BATCH, b""), int(fields.get(FIELD_RECEIVED_MS, b"0")))
                pipe.xadd(self._stream_for(fields), entry)  # type: ignore[arg-type]
                pipe.xdel(self.keys.dead_letters, eid)
            await pipe.execute()
        return adm.RetryDeadLettersResponse(retried=len(found), not_found=missing)

    async def _range(self, start: str, end: str, count: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self.redis.xrange(self.keys.dead_letters, min=start, max=end, count=count)
        return list(reply)

    def _stream_for(self, fields: dict[bytes, bytes]) -> str:
        """The shard of the batch's run (shards may have changed since), else where it came from."""
        try:
            return self.keys.stream_of(canonical_run_id(wire.decode(fields[FIELD_BATCH]).run_id))
        except (InvalidArgument, KeyError):
            return fields.get(FIELD_SOURCE, self.keys.stream(0).encode()).decode()


def _entry_id(text: str, what: str) -> str:
    ms, dash, seq = text.partition("-")
    if not (ms.isascii() and ms.isdigit() and dash and seq.isascii() and seq.isdigit()) or len(text) > 41:
        raise InvalidArgument(f"{what} {text[:60]!r} is not a dead letter id (like 1732370000000-0)")
    return text


def _message(eid: bytes, fields: dict[bytes, bytes]) -> adm.DeadLetter:
    data = fields.get(FIELD_BATCH, b"")
    msg = adm.DeadLetter(
        id=eid.decode(),
        stream=fields.get(FIELD_SOURCE, b"").decode(errors="replace"),
        entry_id=fields.get(FIELD_ENTRY_ID, b"").decode(errors="replace"),
        reason=fields.get(FIELD_REASON, b"").decode(errors="replace"),
        failed_ms=int(fields.get(FIELD_FAILED_MS, b"0")),
        received_ms=int(fields.get(FIELD_RECEIVED_MS, b"0")),
        size=len(data),
    )
    try:
        b = wire.decode(data)
    except InvalidArgument:
        return msg
    msg.run_id, msg.writer_id, msg.seq, msg.points = b.run_id[:100], b.writer_id[:300], b.seq, b.points
    return msg

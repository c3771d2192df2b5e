"""The AdminService: the dead letters the loaders set aside, listed and replayed.

A dead letter keeps the serialized batch as ingest appended it, where it was read from and why
it could not be stored (loader.py). Each shard keeps its own dead letters, next to its stream
in one hash slot; an id names the shard and the entry ("2/1732370000000-0"). Replaying puts a
dead letter back on a metric stream in the same Redis transaction that removes it from the dead
letters, so it is never in neither or both (see _retry for a run whose shard changed).
"""

from __future__ import annotations

from typing import Any

from runstream.errors import InvalidArgument
from runstream.server.rpc.paging import PageTokens
from runstream.server.streams.client import RedisClient
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
    def __init__(self, redis: RedisClient, keys: Keys, tokens: PageTokens) -> None:
        self.redis = redis
        self.keys = keys
        self.tokens = tokens

    async def ListDeadLetters(self, req: adm.ListDeadLettersRequest, ctx: Any) -> adm.ListDeadLettersResponse:
        """Oldest first over every shard's dead letters; a page token holds where each shard is."""
        limit = req.max_results or DEFAULT_MAX_RESULTS
        if not 0 < limit <= MAX_RESULTS:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and {MAX_RESULTS:,}")
        after = ["-"] * self.keys.shards
        if req.page_token:
            told = str(self.tokens.read(req.page_token, "dead letters", str)).split(",")
            after = [told[i] if i < len(told) else "-" for i in range(self.keys.shards)]
        found: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        for shard, start in enumerate(after):
            got = await self._range(shard, "-" if start == "-" else "(" + start, "+", limit + 1)
            found += [(shard, eid, fields) for eid, fields in got]
        found.sort(key=lambda f: (_order(f[1]), f[0]))
        page = found[:limit]
        for shard, eid, _ in page:
            after[shard] = eid.decode()
        async with self.redis.pipeline(transaction=False) as pipe:
            for letters in self.keys.all_dead_letters():
                pipe.xlen(letters)
            total = sum(int(n) for n in await pipe.execute())
        more = len(found) > limit
        return adm.ListDeadLettersResponse(
            dead_letters=[_message(shard, eid, fields) for shard, eid, fields in page],
            next_page_token=self.tokens.issue(",".join(after), "dead letters") if more else "",
            total=total,
        )

    async def RetryDeadLetters(self, req: adm.RetryDeadLettersRequest, ctx: Any) -> adm.RetryDeadLettersResponse:
        if req.all == bool(req.ids):
            raise InvalidArgument("name the dead letters to retry (ids) or set all, not both")
        found: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        missing: list[str] = []
        if req.all:
            for shard in range(self.keys.shards):
                found += [(shard, eid, fields) for eid, fields in await self._range(shard, "-", "+")]
        for text in req.ids:
            shards, wanted = _dead_letter_id(text, self.keys.shards)
            got = [(shard, e, fields) for shard in shards for e, fields in await self._range(shard, wanted, wanted)]
            found += got
            missing += [] if got else [text]
        for shard, eid, fields in found:
            await self._retry(shard, eid, fields)
        return adm.RetryDeadLettersResponse(retried=len(found), not_found=missing)

    async def _retry(self, shard: int, eid: bytes, fields: dict[bytes, bytes]) -> None:
        """Back on the metric stream of its run's shard, and out of the dead letters: in one
        transaction when that is its own shard (one hash slot); otherwise appended first, so it
        is never in neither (in both for a moment at worst, and the loaders store a seq once)."""
        target = self._shard_for(fields, shard)
        entry = self.keys.entry(fields.get(FIELD_BATCH, b""), int(fields.get(FIELD_RECEIVED_MS, b"0")))
        async with self.redis.pipeline(transaction=target == shard) as pipe:
            pipe.xadd(self.keys.stream(target), entry)  # type: ignore[arg-type]
            pipe.xdel(self.keys.dead_letters(shard), eid)
            await pipe.execute()

    async def _range(
        self, shard: int, start: str | bytes, end: str | bytes, count: int | None = None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self.redis.xrange(self.keys.dead_letters(shard), min=start, max=end, count=count)
        return list(reply)

    def _shard_for(self, fields: dict[bytes, bytes], kept_in: int) -> int:
        """The shard of the batch's run (shards may have changed since), else where it was kept."""
        try:
            return self.keys.shard_of(canonical_run_id(wire.decode(fields[FIELD_BATCH]).run_id))
        except (InvalidArgument, KeyError):
            return kept_in


def _order(eid: bytes) -> tuple[int, int]:
    ms, _, seq = eid.partition(b"-")
    return int(ms), int(seq or 0)


def _dead_letter_id(text: str, shards: int) -> tuple[range, str]:
    """A dead letter id as ListDeadLetters gives it, "<shard>/<entry id>" (which shard, and its
    id there); a bare entry id is looked for in every shard."""
    shard, slash, eid = text.rpartition("/")
    if slash and not (shard.isascii() and shard.isdigit() and int(shard) < shards):
        raise InvalidArgument(f"id {text[:60]!r} names no shard of this server (0 to {shards - 1})")
    return (range(int(shard), int(shard) + 1) if slash else range(shards)), _entry_id(eid, "id")


def _entry_id(text: str, what: str) -> str:
    ms, dash, seq = text.partition("-")
    if not (ms.isascii() and ms.isdigit() and dash and seq.isascii() and seq.isdigit()) or len(text) > 41:
        raise InvalidArgument(f"{what} {text[:60]!r} is not a dead letter id (like 1732370000000-0)")
    return text


def _message(shard: int, eid: bytes, fields: dict[bytes, bytes]) -> adm.DeadLetter:
    data = fields.get(FIELD_BATCH, b"")
    msg = adm.DeadLetter(
        id=f"{shard}/{eid.decode()}",
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

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

# KEYS: a shard's dead letters and its stream; ARGV: the dead letter's id, then the entry's fields.
_MOVE_BACK = """
local added = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then return 1 end
redis.call('XDEL', KEYS[2], added)
return 0
"""
DEFAULT_MAX_RESULTS = 100
MAX_RESULTS = 1_000


class Admin:
    def __init__(self, redis: RedisClient, keys: Keys, tokens: PageTokens) -> None:
        self.redis = redis
        self.keys = keys
        self.tokens = tokens

    async def ListDeadLetters(self, req: adm.ListDeadLettersRequest, ctx: Any) -> adm.ListDeadLettersResponse:
        """Oldest first over every shard's dead letters, in (id, shard) order; a page token holds
        the last (id, shard) given."""
        limit = req.max_results or DEFAULT_MAX_RESULTS
        if not 0 < limit <= MAX_RESULTS:
            raise InvalidArgument(f"max_results is {limit:,}; it must be between 1 and {MAX_RESULTS:,}")
        last: tuple[str, int] | None = None  # the (id, shard) the previous page ended with
        if req.page_token:
            eid, _, shard_text = str(self.tokens.read(req.page_token, "dead letters", str)).partition("@")
            if not shard_text.isdigit():  # issued by an earlier version, whose pages were shard by shard
                raise InvalidArgument("page_token is from an earlier version of this server; list again from the start")
            last = (_entry_id(eid, "page_token"), int(shard_text))
        found: list[tuple[int, bytes, dict[bytes, bytes]]] = []
        for shard in range(self.keys.shards):
            # Pages run in (id, shard) order: a shard after the last one may still hold its id.
            start = "-" if last is None else last[0] if shard > last[1] else "(" + last[0]
            found += [(shard, eid, fields) for eid, fields in await self._range(shard, start, "+", limit + 1)]
        found.sort(key=lambda f: (_order(f[1]), f[0]))
        page = found[:limit]
        async with self.redis.pipeline(transaction=False) as pipe:
            for letters in self.keys.all_dead_letters():
                pipe.xlen(letters)
            total = sum(int(n) for n in await pipe.execute())
        more = len(found) > limit
        return adm.ListDeadLettersResponse(
            dead_letters=[_message(shard, eid, fields) for shard, eid, fields in page],
            next_page_token=self.tokens.issue(f"{page[-1][1].decode()}@{page[-1][0]}", "dead letters") if more else "",
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
        unique = {(shard, eid): fields for shard, eid, fields in found}  # an id named twice is one dead letter
        retried = 0
        for (shard, eid), fields in unique.items():
            retried += await self._retry(shard, eid, fields)
        return adm.RetryDeadLettersResponse(retried=retried, not_found=missing)

    async def _retry(self, shard: int, eid: bytes, fields: dict[bytes, bytes]) -> bool:
        """Back on the metric stream of its run's shard, and out of the dead letters, once:
        whether this call moved it (a retry running at the same time may have). Appended first,
        so it is never in neither; the append is taken back when the dead letter had gone. In one
        script when the stream is in its own shard (one hash slot), so never in both either;
        across shards it may be in both for a moment, and the loaders store a seq once."""
        target = self._shard_for(fields, shard)
        entry = self.keys.entry(fields.get(FIELD_BATCH, b""), int(fields.get(FIELD_RECEIVED_MS, b"0")))
        letters, stream = self.keys.dead_letters(shard), self.keys.stream(target)
        if target == shard:
            pairs = [x for item in entry.items() for x in item]
            return bool(await self.redis.eval(_MOVE_BACK, 2, letters, stream, eid, *pairs))
        added = await self.redis.xadd(stream, entry)  # type: ignore[arg-type]
        if await self.redis.xdel(letters, eid):
            return True
        await self.redis.xdel(stream, added)
        return False

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
    if slash and not (shard.isascii() and shard.isdigit() and len(shard) <= 6 and int(shard) < shards):
        raise InvalidArgument(f"id {text[:60]!r} names no shard of this server (0 to {shards - 1})")
    return (range(int(shard), int(shard) + 1) if slash else range(shards)), _entry_id(eid, "id")


def _entry_id(text: str, what: str) -> str:
    ms, dash, seq = text.partition("-")
    numbers = ms.isascii() and ms.isdigit() and dash and seq.isascii() and seq.isdigit() and len(text) <= 41
    if not numbers or int(ms) >= 2**64 or int(seq) >= 2**64:  # Redis' stream ids are two 64-bit numbers
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

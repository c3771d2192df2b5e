"""Entries under keys that are not today's, moved to today's keys when a loader starts:

- the key names of versions before shards had hash tags (`<prefix>:metrics:<n>`,
  `<prefix>:dead-letters`);
- the streams and dead letters of shards this deployment no longer has (`--shards` lowered).

Each entry goes to the stream (or dead letters) of its run's shard today, so it is loaded, or
listed and replayed. One loader moves at a time (a lease in Redis). On one Redis each chunk moves
in one transaction; a cluster cannot join keys of two hash slots in one, so there an entry is
appended before it is deleted: a mover that dies in between leaves it in both, and the loaders
store a (writer, seq) once (a dead letter would be listed twice).
"""

from __future__ import annotations

import uuid
from typing import Any

from runstream.errors import InvalidArgument
from runstream.server.streams.client import RedisClient, is_cluster
from runstream.server.streams.keys import FIELD_BATCH, Keys
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_run_id

CHUNK = 500
LEASE_S = 60


async def adopt(redis: RedisClient, keys: Keys) -> int:
    """Move every stray entry to where it belongs today; returns how many moved (0 while
    another loader moves them)."""
    lease, me = f"{keys.prefix}:moving-strays", uuid.uuid4().hex
    if not await redis.set(lease, me, nx=True, ex=LEASE_S):
        return 0
    try:
        moved = 0
        for old, kind in await _strays(redis, keys):
            moved += await _move(redis, keys, old, kind)
        return moved
    finally:
        if await redis.get(lease) == me.encode():
            await redis.delete(lease)


async def _strays(redis: RedisClient, keys: Keys) -> list[tuple[str, str]]:
    """(key, "metrics" or "dead-letters") of every stray key of this prefix."""
    today = {*keys.streams(), *keys.all_dead_letters()}
    patterns = {
        f"{keys.prefix}:metrics:*": "metrics",
        keys.legacy_dead_letters: "dead-letters",
        f"{{{keys.prefix}:*}}:metrics": "metrics",
        f"{{{keys.prefix}:*}}:dead-letters": "dead-letters",
    }
    found = []
    for pattern, kind in patterns.items():
        async for key in redis.scan_iter(match=pattern, count=1000):  # { and } are no glob characters
            name = key.decode() if isinstance(key, bytes) else str(key)
            if name not in today and _ours(name, keys.prefix):
                found.append((name, kind))
    return sorted(set(found))


def _ours(name: str, prefix: str) -> bool:
    """A key of exactly this prefix (not of a longer one that starts with it)."""
    if name.startswith(f"{{{prefix}:"):
        shard = name[len(prefix) + 2 :].partition("}")[0]
        return shard.isdigit()
    return name == f"{prefix}:dead-letters" or (
        name.startswith(f"{prefix}:metrics:") and name[len(prefix) + 9 :].isdigit()
    )


async def _move(redis: RedisClient, keys: Keys, old: str, kind: str) -> int:
    moved = 0
    while entries := await _first(redis, old):
        if is_cluster(redis):
            for eid, fields in entries:
                await redis.xadd(_target(keys, kind, fields), fields)  # type: ignore[arg-type]
                await redis.xdel(old, eid)
        else:
            async with redis.pipeline(transaction=True) as pipe:
                for eid, fields in entries:
                    pipe.xadd(_target(keys, kind, fields), fields)  # type: ignore[arg-type]
                    pipe.xdel(old, eid)
                await pipe.execute()
        moved += len(entries)
    return moved


async def _first(redis: RedisClient, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply: Any = await redis.xrange(key, count=CHUNK)
    return list(reply)


def _target(keys: Keys, kind: str, fields: dict[Any, Any]) -> str:
    """The stream, or the dead letters, of the entry's run's shard today (0 when its batch
    cannot be decoded: the loaders then set it aside with the reason)."""
    try:
        shard = keys.shard_of(canonical_run_id(wire.decode(fields[FIELD_BATCH]).run_id))
    except (InvalidArgument, KeyError):
        shard = 0
    return keys.stream(shard) if kind == "metrics" else keys.dead_letters(shard)

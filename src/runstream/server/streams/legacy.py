"""Entries an earlier version left under the key names it used before shards had hash tags
(`<prefix>:metrics:<n>`, `<prefix>:dead-letters`): moved to today's keys when a loader starts.

Each chunk moves in one transaction that appends the entries to the new key and deletes them
from the old one, watched so that two loaders starting together never move an entry twice.
An entry an old loader had read and stored before the upgrade is stored once all the same
(the loaders drop a (writer, seq) they stored before). Only a single Redis can hold such keys:
the versions that wrote them did not run on a cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import WatchError

from runstream.errors import InvalidArgument
from runstream.server.streams.client import RedisClient, is_cluster
from runstream.server.streams.keys import FIELD_BATCH, Keys
from runstream.wire import batch as wire
from runstream.wire.ids import canonical_run_id

CHUNK = 500


async def adopt(redis: RedisClient, keys: Keys) -> int:
    """Move every entry of the old keys to the new ones; returns how many moved."""
    if is_cluster(redis):
        return 0
    moved = 0
    for shard, old in enumerate(keys.legacy_streams()):
        moved += await _move(redis, old, _always(keys.stream(shard)))
    moved += await _move(redis, keys.legacy_dead_letters, lambda fields: keys.dead_letters(_shard(keys, fields)))
    return moved


Route = Callable[[dict[bytes, bytes]], str]  # where an entry goes


def _always(key: str) -> Route:
    return lambda _fields: key


async def _move(redis: RedisClient, old: str, route: Route) -> int:
    moved = 0
    while True:
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(old)
                entries: Any = await pipe.xrange(old, count=CHUNK)
                if not entries:
                    return moved
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                for eid, fields in entries:
                    pipe.xadd(route(fields), fields)
                    pipe.xdel(old, eid)
                await pipe.execute()
            except WatchError:  # another loader moved some meanwhile: look again
                continue
        moved += len(entries)


def _shard(keys: Keys, fields: dict[bytes, bytes]) -> int:
    """The shard of a dead letter's run (0 when it cannot be decoded)."""
    try:
        return keys.shard_of(canonical_run_id(wire.decode(fields[FIELD_BATCH]).run_id))
    except (InvalidArgument, KeyError):
        return 0

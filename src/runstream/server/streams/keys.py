"""Redis key names and the layout of the metric streams, in one place.

Batches of one run always go to the same shard, so a writer's batches keep their order;
every loader reads every shard through one consumer group. A shard's keys (its stream and its
dead letters) share one hash tag, `{<prefix>:<shard>}`, so on a Redis Cluster they live in one
hash slot: each transaction touches one shard's keys, and the shards spread over the masters.
Every entry names the deployment
(the PostgreSQL database) it is for, and the keyspace is bound to that deployment
(streams/deployment.py): a loader takes only its own deployment's entries.
"""

from __future__ import annotations

import uuid
import zlib

DEFAULT_PREFIX = "runstream"
DEFAULT_SHARDS = 4
LOADER_GROUP = "loaders"

# Fields of one stream entry: the serialized MetricBatch, the ingester's clock (ms), and the
# deployment it is for (16 bytes of its uuid; entries written before there was one have none).
FIELD_BATCH = b"b"
FIELD_RECEIVED_MS = b"t"
FIELD_DEPLOYMENT = b"d"
# A dead letter keeps those two and says where the entry was, why it failed and when.
FIELD_SOURCE = b"stream"
FIELD_ENTRY_ID = b"entry"
FIELD_REASON = b"reason"
FIELD_FAILED_MS = b"failed"


Fields = dict[bytes, bytes | int]


class Keys:
    def __init__(
        self, prefix: str = DEFAULT_PREFIX, shards: int = DEFAULT_SHARDS, deployment: str = "", instance: str = ""
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.shards = shards
        self.deployment = deployment  # the uuid of the database these streams load into
        self.instance = instance  # and where that database is (streams/deployment.py)
        self._deployment_bytes = uuid.UUID(deployment).bytes if deployment else b""

    @property
    def binding(self) -> str:
        """Which deployment this keyspace serves (a hash: its id and database)."""
        return f"{self.prefix}:deployment"

    def patterns(self) -> list[str]:
        """SCAN patterns that find every key of this keyspace (and no other prefix's)."""
        return [f"{self.prefix}:*", f"{{{self.prefix}:*"]

    def entry(self, batch: bytes, received_ms: int) -> Fields:
        """A stream entry of this deployment."""
        return {FIELD_BATCH: batch, FIELD_RECEIVED_MS: received_ms, FIELD_DEPLOYMENT: self._deployment_bytes}

    def owns(self, fields: dict[bytes, bytes]) -> bool:
        """Whether an entry is this deployment's (entries from before deployments were named are)."""
        theirs = fields.get(FIELD_DEPLOYMENT)
        return not theirs or theirs == self._deployment_bytes

    def stream(self, shard: int) -> str:
        return f"{self._tag(shard)}:metrics"

    def streams(self) -> list[str]:
        return [self.stream(i) for i in range(self.shards)]

    def shard_of(self, run_id: str) -> int:
        return zlib.crc32(run_id.encode()) % self.shards

    def stream_of(self, run_id: str) -> str:
        return self.stream(self.shard_of(run_id))

    def shard_of_stream(self, stream: str | bytes) -> int:
        """The shard whose stream is `stream` (by its hash tag); 0 for a name of no shard."""
        name = stream.decode(errors="replace") if isinstance(stream, bytes) else stream
        tag = f"{{{self.prefix}:"
        if name.startswith(tag) and (end := name.find("}", len(tag))) > 0:
            number = name[len(tag) : end]
            if number.isascii() and number.isdigit() and int(number) < self.shards:
                return int(number)
        return 0

    def dead_letters(self, shard: int) -> str:
        """Entries a loader could not store, kept with the reason until replayed or removed."""
        return f"{self._tag(shard)}:dead-letters"

    def all_dead_letters(self) -> list[str]:
        return [self.dead_letters(i) for i in range(self.shards)]

    def legacy_streams(self) -> list[str]:
        """Where versions before hash tags kept the shards and the dead letters (streams/legacy.py)."""
        return [f"{self.prefix}:metrics:{i}" for i in range(self.shards)]

    @property
    def legacy_dead_letters(self) -> str:
        return f"{self.prefix}:dead-letters"

    def _tag(self, shard: int) -> str:
        return f"{{{self.prefix}:{shard}}}"

"""Redis key names and the layout of the metric streams, in one place.

Batches of one run always go to the same shard, so a writer's batches keep their order;
every loader reads every shard through one consumer group.
"""

from __future__ import annotations

import zlib

DEFAULT_PREFIX = "runstream"
DEFAULT_SHARDS = 4
LOADER_GROUP = "loaders"

# Fields of one stream entry: the serialized MetricBatch and the ingester's clock (ms).
FIELD_BATCH = b"b"
FIELD_RECEIVED_MS = b"t"
# A dead letter keeps those two and says where the entry was, why it failed and when.
FIELD_SOURCE = b"stream"
FIELD_ENTRY_ID = b"entry"
FIELD_REASON = b"reason"
FIELD_FAILED_MS = b"failed"


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX, shards: int = DEFAULT_SHARDS) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.shards = shards

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:metrics:{shard}"

    def streams(self) -> list[str]:
        return [self.stream(i) for i in range(self.shards)]

    def shard_of(self, run_id: str) -> int:
        return zlib.crc32(run_id.encode()) % self.shards

    @property
    def dead_letters(self) -> str:
        """Entries a loader could not store, kept with the reason until replayed or removed."""
        return f"{self.prefix}:dead-letters"

    def stream_of(self, run_id: str) -> str:
        return self.stream(self.shard_of(run_id))

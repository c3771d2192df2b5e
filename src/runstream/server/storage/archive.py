"""The cold tier's object format: one object per run holding its compacted chunks, and reading
chunks' bytes back, wherever they are (a row, or a byte range of the run's object).

An object (documented in docs/storage.md, "The cold tier") is:

    MAGIC | chunk 0 | chunk 1 | ... | footer (JSON, UTF-8) | footer length (8 bytes, LE) | MAGIC

Each chunk is its three PCO columns (codec.py: steps, timestamps, values, each pcodec pages
behind a page table with CRC-32s) back to back, exactly the bytes its row held. The footer
names the run, the codec, and per series (key, writer) its chunks' first and last step, point
count, offset and the three column sizes: a reader needs nothing else. PostgreSQL keeps the same
offsets in each chunk's row, so a read fetches one byte range per chunk, never the object.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from runstream.server.storage import codec

MAGIC = b"RSCOLD01"
FORMAT = "runstream-cold"
VERSION = 1
_LENGTH = struct.Struct("<Q")
MAX_FOOTER = 256 * 2**20
MERGE_GAP = 256 * 1024  # chunks this close in one object are fetched in one range
MAX_RANGE = 16 * 2**20  # ... up to this many bytes a request
FETCHES_AT_ONCE = 8


class RangeReader(Protocol):
    """What reads of cold chunks need of the object store (artifacts/stores.ObjectStore)."""

    async def read_range(self, key: str, start: int, stop: int) -> bytes: ...


@dataclass(frozen=True)
class ChunkBytes:
    codec: int
    steps: bytes
    timestamps: bytes | None
    vals: bytes


@dataclass
class Placed:
    """Where a chunk went in an object: its offset and its three column sizes."""

    offset: int
    sizes: tuple[int, int, int]


@dataclass
class ArchiveWriter:
    """Writes one run's object to `out` chunk by chunk (memory stays one chunk), hashing it."""

    out: BinaryIO
    run_id: str
    size: int = 0
    series: dict[tuple[str, str, int], list[dict[str, Any]]] = field(default_factory=dict)
    _digest: Any = field(default_factory=hashlib.sha256)

    def __post_init__(self) -> None:
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self._digest.update(data)
        self.size += len(data)

    def add(
        self, key: str, writer_id: str, first_step: int, last_step: int, n: int, chunk: ChunkBytes, branch: int = 0
    ) -> Placed:
        if chunk.codec != codec.PCO or chunk.timestamps is None:
            raise ValueError("only compacted chunks with their timestamps go to the cold tier")
        placed = Placed(self.size, (len(chunk.steps), len(chunk.timestamps), len(chunk.vals)))
        for column in (chunk.steps, chunk.timestamps, chunk.vals):
            self._write(column)
        self.series.setdefault((key, writer_id, branch), []).append(
            {"first_step": first_step, "last_step": last_step, "n": n, "offset": placed.offset, "sizes": placed.sizes}
        )
        return placed

    def finish(self) -> str:
        """Write the footer; returns the object's SHA-256 (hex)."""
        footer = json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "run_id": self.run_id,
                "codec": "pcodec pages (runstream codec 1)",
                "series": [
                    {"key": k, "writer_id": w, **({"branch": b} if b else {}), "chunks": c}
                    for (k, w, b), c in self.series.items()
                ],
            },
            separators=(",", ":"),
        ).encode()
        self._write(footer + _LENGTH.pack(len(footer)) + MAGIC)
        return str(self._digest.hexdigest())


def footer_length(tail: bytes) -> int:
    """The footer's length from an object's last 16 bytes."""
    if len(tail) < _LENGTH.size + len(MAGIC) or tail[-len(MAGIC) :] != MAGIC:
        raise codec.CorruptChunk("not a runstream cold object (no trailing magic)")
    (length,) = _LENGTH.unpack_from(tail, len(tail) - len(MAGIC) - _LENGTH.size)
    if length > MAX_FOOTER:
        raise codec.CorruptChunk(f"a cold object's footer claims {length:,} bytes")
    return int(length)


def read_footer(data: bytes) -> dict[str, Any]:
    """The footer of a whole object (tools and tests; the server reads ranges)."""
    if data[: len(MAGIC)] != MAGIC:
        raise codec.CorruptChunk("not a runstream cold object (no leading magic)")
    length = footer_length(data[-16:])
    end = len(data) - _LENGTH.size - len(MAGIC)
    footer: dict[str, Any] = json.loads(data[end - length : end])
    return footer


def cold(row: Any) -> bool:
    """Whether a chunk row's points are in the object store (its columns then NULL)."""
    return row["cold_key"] is not None


async def chunk_bytes(rows: Sequence[Any], store: RangeReader | None, with_time: bool = True) -> list[ChunkBytes]:
    """The columns of chunk rows (records with codec, steps, timestamps, vals, cold_key,
    cold_offset and cold_sizes), in order: a row's own, or read from the run's object, the
    chunks close together in one object fetched as one byte range."""
    out: list[ChunkBytes | None] = [
        None if cold(r) else ChunkBytes(r["codec"], r["steps"], r["timestamps"] if with_time else None, r["vals"])
        for r in rows
    ]
    wanted = sorted((r["cold_key"], r["cold_offset"], i) for i, r in enumerate(rows) if out[i] is None)
    if not wanted:
        return out  # type: ignore[return-value]
    if store is None:
        raise codec.CorruptChunk("these points are in the object store, and this process has none configured")
    spans: list[tuple[str, int, int, list[int]]] = []  # key, start, stop, rows
    for key, offset, i in wanted:
        stop = offset + sum(rows[i]["cold_sizes"])
        last = spans[-1] if spans else None
        if last and last[0] == key and offset - last[2] <= MERGE_GAP and stop - last[1] <= MAX_RANGE:
            spans[-1] = (key, last[1], max(last[2], stop), [*last[3], i])
        else:
            spans.append((key, offset, stop, [i]))
    gate = asyncio.Semaphore(FETCHES_AT_ONCE)

    async def fetch(key: str, start: int, stop: int) -> bytes:
        async with gate:
            data = await store.read_range(key, start, stop)
        if len(data) != stop - start:
            raise codec.CorruptChunk(f"the cold object {key} is shorter than its chunks' rows say")
        return data

    blobs = await asyncio.gather(*(fetch(key, start, stop) for key, start, stop, _ in spans))
    for (_, start, _, members), blob in zip(spans, blobs, strict=True):
        for i in members:
            r = rows[i]
            a = r["cold_offset"] - start
            s, t, v = r["cold_sizes"]
            out[i] = ChunkBytes(
                r["codec"],
                blob[a : a + s],
                blob[a + s : a + s + t] if with_time else None,
                blob[a + s + t : a + s + t + v],
            )
    return out  # type: ignore[return-value]

"""The cold tier's object format: what the writer puts in, a reader without the server gets back,
and chunk_bytes reads each chunk from a byte range (neighbours in one range)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from runstream.server.storage import archive, codec


class Ranges:
    """An object in memory that counts the byte ranges asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    async def read_range(self, key: str, start: int, stop: int) -> bytes:
        self.asked.append((start, stop))
        return self.data[start:stop]


def _chunks(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        steps = np.arange(i * 10_000, i * 10_000 + 5_000, dtype=np.int64)
        out.append((steps, 1_700_000_000_000 + steps * 7, rng.standard_normal(5_000)))
    return out


def test_an_object_holds_its_chunks_and_a_footer_that_finds_them() -> None:
    out = io.BytesIO()
    w = archive.ArchiveWriter(out, "run-1")
    rows = []
    for i, (s, t, v) in enumerate(_chunks(3)):
        chunk = archive.ChunkBytes(codec.PCO, *codec.encode(s, t, v))
        placed = w.add("loss", f"w{i % 2}", int(s[0]), int(s[-1]), len(s), chunk)
        rows.append({"cold_key": "k", "cold_offset": placed.offset, "cold_sizes": list(placed.sizes),
                     "codec": codec.PCO, "steps": None, "timestamps": None, "vals": None})  # fmt: skip
    digest = w.finish()
    data = out.getvalue()
    assert len(data) == w.size and digest == __import__("hashlib").sha256(data).hexdigest()
    footer = archive.read_footer(data)
    assert footer["run_id"] == "run-1" and [s["writer_id"] for s in footer["series"]] == ["w0", "w1"]
    assert sum(c["n"] for s in footer["series"] for c in s["chunks"]) == 15_000

    store = Ranges(data)
    got = asyncio.run(archive.chunk_bytes(rows, store))
    assert len(store.asked) == 1  # neighbours in one range, never the footer or the whole object
    assert store.asked[0][0] == len(archive.MAGIC) and store.asked[0][1] < len(data) - 16
    for (s, t, v), c in zip(_chunks(3), got, strict=True):
        steps, stamps, values = codec.decode(c.codec, c.steps, c.timestamps, c.vals)
        assert steps.tolist() == s.tolist() and stamps.tolist() == t.tolist() and values.tolist() == v.tolist()


def test_a_truncated_object_is_named_corrupt() -> None:
    with pytest.raises(codec.CorruptChunk, match="magic"):
        archive.read_footer(b"RSCOLD01 and then nothing")
    rows = [{"cold_key": "k", "cold_offset": 8, "cold_sizes": [10, 10, 10], "codec": codec.PCO,
             "steps": None, "timestamps": None, "vals": None}]  # fmt: skip
    with pytest.raises(codec.CorruptChunk, match="shorter"):
        asyncio.run(archive.chunk_bytes(rows, Ranges(b"RSCOLD01" + b"x" * 12)))

"""A damaged spool: the reader finds every record past a corrupt one (a flipped bit, a flipped
length, garbage between records) and reports the bytes it could not read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runstream.client import spool


def test_the_reader_finds_every_record_no_flipped_bit_touched(tmp_path: Path) -> None:
    """Bits flipped anywhere in a segment: every record they did not touch is read, every one
    they touched lies in a reported Damage (a unit test of the reader, no server)."""
    rng = np.random.default_rng(33)
    writer = spool.SpoolWriter(tmp_path, "run", "w", 1, "127.0.0.1:1")
    batches = {seq: rng.bytes(int(rng.integers(40, 3_000))) for seq in range(1, 41)}
    for seq, data in batches.items():
        writer.append(seq, data)
    writer.close(all_acked=False, upto=0)
    [spooled] = spool.spooled_writers(tmp_path)
    assert dict(spooled.records()) == batches
    [segment] = spooled.directory.glob("*.seg")
    clean = segment.read_bytes()
    spans, at = {}, len(spool.SEGMENT_HEADER)
    for seq, data in batches.items():
        spans[seq] = (at, at + spool.RECORD_HEADER + len(data))
        at = spans[seq][1]
    for _ in range(200):
        blob = bytearray(clean)
        where = np.arange(len(spool.SEGMENT_HEADER), len(blob))
        flipped = [int(i) for i in rng.choice(where, int(rng.integers(1, 5)), replace=False)]
        for i in flipped:
            blob[i] ^= 1 << int(rng.integers(8))
        segment.write_bytes(bytes(blob))
        damaged: list[spool.Damage] = []
        read = dict(spooled.records(damaged=damaged))
        for seq, (start, end) in spans.items():
            hit = [i for i in flipped if start <= i < end]
            if not hit:
                assert read[seq] == batches[seq]
            else:
                assert seq not in read and any(d.start <= i < d.end for d in damaged for i in hit), (seq, damaged)

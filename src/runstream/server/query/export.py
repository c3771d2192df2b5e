"""Whole series streamed back (ReadMetrics): each writer's points in step order, in messages
of at most MESSAGE_POINTS, read through a cursor so memory stays bounded.

Chunks come in first-step order. Chunks of one series may overlap in steps, so points are
held back until no later chunk can come before them: once a chunk starting at step s is
read, every pending point below s is final.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import numpy.typing as npt

from runstream.server.storage import archive, codec, metrics
from runstream.wire import points

MESSAGE_POINTS = 65_536  # ~1.5 MiB a message, well under gRPC's 4 MiB default limit

Columns = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]  # steps, stamps, values


async def read_series(
    conn: Any,
    run_id: str,
    key: str,
    series: list[metrics.SeriesRow],
    lo: int,
    hi: int,
    store: archive.RangeReader | None = None,
) -> AsyncIterator[bytes]:
    """Serialized MetricPoints of every series in `series` (in order), within [lo, hi]; cold
    chunks' points come from `store`, a byte range each."""
    for s in series:
        pending: list[Columns] = []
        held = 0
        top = hi if s.upto is None else min(hi, s.upto)  # a fork reads its ancestor up to where it forked
        async for row in metrics.series_chunk_cursor(conn, s.series_id, lo, top):
            if held >= MESSAGE_POINTS:
                final, rest = _split(pending, row["first_step"])
                pending, held = [rest], len(rest[0])
                for message in _messages(run_id, key, s.writer_id, final):
                    yield message
            try:
                (chunk,) = await archive.chunk_bytes([row], store)
                cols = codec.decode(chunk.codec, chunk.steps, chunk.timestamps, chunk.vals)
            except codec.CorruptChunk as exc:  # name what is damaged, for a person to act on
                raise codec.CorruptChunk(f"metric {key!r} of run {run_id} (writer {s.writer_id!r}): {exc}") from None
            if row["first_step"] < lo or row["last_step"] > top:
                keep = (cols[0] >= lo) & (cols[0] <= top)
                cols = (cols[0][keep], cols[1][keep], cols[2][keep])
            pending.append(cols)
            held += len(cols[0])
        if pending:
            final, _ = _split(pending, None)
            for message in _messages(run_id, key, s.writer_id, final):
                yield message


def _split(parts: list[Columns], below: int | None) -> tuple[Columns, Columns]:
    """The points of `parts` in step order: those with steps below `below` (all if None), and the rest."""
    steps, stamps, values = (np.concatenate(c) for c in zip(*parts, strict=True))
    if np.any(steps[1:] < steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, stamps, values = steps[order], stamps[order], values[order]
    cut = len(steps) if below is None else int(np.searchsorted(steps, below))
    if below is not None and cut >= MESSAGE_POINTS:
        cut -= cut % MESSAGE_POINTS  # whole messages now, the remainder with the next chunks
    return (steps[:cut], stamps[:cut], values[:cut]), (steps[cut:], stamps[cut:], values[cut:])


def _messages(run_id: str, key: str, writer: str, cols: Columns) -> list[bytes]:
    steps, stamps, values = cols
    return [
        points.encode(
            run_id,
            key,
            writer,
            steps[a : a + MESSAGE_POINTS],
            values[a : a + MESSAGE_POINTS],
            stamps[a : a + MESSAGE_POINTS],
        )
        for a in range(0, len(steps), MESSAGE_POINTS)
    ]

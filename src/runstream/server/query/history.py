"""One key's history from its stored chunks, decoding as few points as the answer allows.

What is known of the chunks overlapping the range comes first (storage.metrics.history_chunks:
their summaries and sketches, no points). The chunks across the window's ends say how many points
it holds and where they start and end. A history of at most `max_points` points, or one
aggregated across writers, returns the points: of a compacted chunk, only the pages holding the
window's sketch entries are decoded. A longer one is bucketed (storage/history.py, aligned
buckets of a width the steps present ask for) from items: a chunk inside one bucket is one item
(its summary); a compacted chunk whose finest sketch scale divides the width gives the entries
of its coarsest level that does; only the pages of the entries the window's ends cut, and ingest
chunks across a bucket edge, are decoded, fetched in one more query.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from runstream.server.storage import archive, codec, history, metrics
from runstream.wire.proto import query_pb2 as qpb

AGGREGATES = {qpb.AGGREGATE_MEAN: "mean", qpb.AGGREGATE_MIN: "min", qpb.AGGREGATE_MAX: "max"}


class _Chunks:
    """The chunks of one history read: their bytes fetched once, on demand, and only the pages
    of a compacted chunk that hold the points asked for decoded."""

    def __init__(self, conn: Any, series: list[metrics.SeriesRow], store: archive.RangeReader | None) -> None:
        self.conn = conn
        self.store = store  # where cold chunks' points are
        self.names = {r.series_id: f"metric {r.key!r} of run {r.run_id} (writer {r.writer_id!r})" for r in series}
        self.fetched: dict[Any, archive.ChunkBytes] = {}  # by ctid
        self.sketches: dict[tuple[Any, int | None], codec.Sketch] = {}
        self.cuts: dict[tuple[Any, int], tuple[npt.NDArray[np.bool_], codec.Columns]] = {}  # by ctid, scale

    async def fetch(self, rows: list[asyncpg.Record], with_time: bool) -> None:
        wanted = [
            r["ctid"]
            for r in rows
            if r["ctid"] not in self.fetched or (with_time and self.fetched[r["ctid"]].timestamps is None)
        ]
        if wanted:
            found = await metrics.chunk_points(self.conn, wanted, with_time)
            records = [found[ctid] for ctid in wanted]
            got = await archive.chunk_bytes(records, self.store, with_time)
            self.fetched |= dict(zip(wanted, got, strict=True))

    def sketch(self, r: asyncpg.Record, width: int | None = None) -> codec.Sketch | None:
        """A compacted chunk's sketch: the level buckets of `width` hold whole, or the finest."""
        if r["codec"] == codec.RAW or r["sketch"] is None:
            return None
        key = (r["ctid"], width)
        if key not in self.sketches:
            with self._naming(r):
                self.sketches[key] = codec.decode_sketch(r["sketch"], width)
        return self.sketches[key]

    @contextlib.contextmanager
    def _naming(self, r: asyncpg.Record) -> Iterator[None]:
        """A damaged chunk's error names the run, key and writer, for a person to act on."""
        try:
            yield
        except codec.CorruptChunk as exc:
            raise codec.CorruptChunk(f"{self.names[r['series_id']]}: {exc}") from None

    def _part(self, r: asyncpg.Record, first: int, stop: int | None, lo: int, hi: int) -> codec.Columns:
        """Points [first, stop) of a fetched chunk (or the pages holding them), those in [lo, hi]."""
        f = self.fetched[r["ctid"]]
        with self._naming(r):
            (steps, stamps, values), start = codec.decode_part(f.codec, f.steps, f.timestamps, f.vals, first, stop)
        cut = slice(first - start, None if stop is None else stop - start)  # whole pages came: trim them
        steps, stamps, values = steps[cut], stamps[cut] if len(stamps) else stamps, values[cut]
        keep = (steps >= lo) & (steps <= hi)
        return steps[keep], stamps[keep] if len(stamps) else stamps, values[keep]

    def window(self, r: asyncpg.Record, lo: int, hi: int) -> codec.Columns:
        """A fetched chunk's points in [lo, hi]: of a compacted chunk, only the pages holding the
        sketch entries that overlap the window are decoded."""
        s = self.sketch(r)
        if s is None:
            return self._part(r, 0, None, lo, hi)
        a, z = np.searchsorted(s.last_step, lo), np.searchsorted(s.first_step, hi, side="right")
        if a >= z:
            return _no_points()
        ends = np.cumsum(s.count)
        return self._part(r, int(ends[a - 1]) if a else 0, int(ends[z - 1]), lo, hi)

    def cut(self, r: asyncpg.Record, s: codec.Sketch, lo: int, hi: int) -> tuple[npt.NDArray[np.bool_], codec.Columns]:
        """Which sketch entries of a fetched compacted chunk lie inside [lo, hi], and the points
        in [lo, hi] of the (at most two) entries that reach beyond it."""
        key = (r["ctid"], s.scale)
        if key in self.cuts:
            return self.cuts[key]
        inside = (s.first_step >= lo) & (s.last_step <= hi)
        overlapping = (s.last_step >= lo) & (s.first_step <= hi)
        ends = np.cumsum(s.count)
        parts = [
            self._part(r, int(ends[e - 1]) if e else 0, int(ends[e]), lo, hi)
            for e in np.flatnonzero(overlapping & ~inside).tolist()
        ]
        columns = tuple(np.concatenate(c) for c in zip(*parts, strict=True)) if parts else _no_points()
        self.cuts[key] = inside, columns  # type: ignore[assignment]
        return self.cuts[key]

    def within(self, r: asyncpg.Record, lo: int, hi: int) -> tuple[int, int, int]:
        """How many points of a fetched chunk lie in [lo, hi], and their first and last step
        (0, hi, lo when none), from the finest sketch and the pages of the entries cut."""
        s = self.sketch(r)
        if s is None:
            steps = self.window(r, lo, hi)[0]
            return (len(steps), int(steps.min()), int(steps.max())) if len(steps) else (0, hi, lo)
        inside, (cut, _, _) = self.cut(r, s, lo, hi)
        firsts = [*s.first_step[inside][:1].tolist(), *cut[:1].tolist()]  # each in step order
        lasts = [*s.last_step[inside][-1:].tolist(), *cut[-1:].tolist()]
        count = int(s.count[inside].sum()) + len(cut)
        return (count, min(firsts), max(lasts)) if count else (0, hi, lo)


def _no_points() -> codec.Columns:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)


async def read(
    conn: Any,
    key: str,
    series: list[metrics.SeriesRow],
    lo: int,
    hi: int,
    max_points: int,
    aggregate: qpb.Aggregate,
    fixed_range: bool,
    with_time: bool = False,
    store: archive.RangeReader | None = None,
) -> qpb.MetricHistory:
    """The history of `series` (one key's writers) in [lo, hi]. Without `fixed_range` the
    range shrinks to the steps present; with it, buckets cover exactly [lo, hi]. `with_time`
    gives each bucket the timestamp of its last point. Reads in one snapshot: a compactor may
    swap the chunks between the two queries it makes."""
    if not conn.is_in_transaction():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await read(conn, key, series, lo, hi, max_points, aggregate, fixed_range, with_time, store)
    writers = list(dict.fromkeys(r.writer_id for r in series))  # a fork's writer has its ancestors' series too
    out = qpb.MetricHistory(key=key, writers=writers)
    rows = await metrics.history_chunks(conn, series, lo, hi)
    if not rows:
        return out
    # The chunks across the window's ends say how many points it holds and where they start and
    # end (with their times, in case the points are the answer); the others are decoded only if
    # the answer is points.
    chunks = _Chunks(conn, series, store)
    crossing = [r for r in rows if r["first_step"] < lo or r["last_step"] > top(r, hi)]
    await chunks.fetch(crossing, with_time=True)
    inside = [r for r in rows if lo <= r["first_step"] and r["last_step"] <= top(r, hi)]
    edges = [chunks.within(r, lo, top(r, hi)) for r in crossing]
    edges += [(r["n"], r["first_step"], r["last_step"]) for r in inside]
    in_window = sum(n for n, _, _ in edges)
    if not in_window:
        return out
    if not fixed_range:  # the steps present, whatever the chunks around them hold
        lo, hi = min(first for n, first, _ in edges if n), max(last for n, _, last in edges if n)
    width = history.bucket_width(lo, hi, max_points)
    if aggregate != qpb.AGGREGATE_UNSPECIFIED or in_window <= max_points:
        await chunks.fetch(rows, with_time=True)
        writer_of = {r.series_id: writers.index(r.writer_id) for r in series}
        parts = [(writer_of[r["series_id"]], chunks.window(r, lo, top(r, hi))) for r in rows]
        return _points(out, parts, lo, hi, max_points, aggregate)
    per_series: dict[int, list[asyncpg.Record]] = {}
    for r in rows:
        per_series.setdefault(r["series_id"], []).append(r)
    await chunks.fetch([r for r in rows if needs_points(r, lo, hi, width, with_time)], with_time)
    buckets = [history.downsample(_items(part, chunks, lo, hi, width), width) for part in per_series.values()]
    folded = buckets[0] if len(buckets) == 1 else history.downsample(history.Items.concat(buckets), width)
    out.total_points = int(folded.count.sum())
    _with_buckets(out, folded)
    if with_time:
        out.bucket_last_timestamp_ms.extend(folded.last_time.tolist())
    return out


def top(r: asyncpg.Record, hi: int) -> int:
    """The last step read of a chunk: `hi`, or before it where a fork's ancestor's series ends."""
    upto: int | None = r["upto"]
    return hi if upto is None else min(hi, upto)


def _whole(r: asyncpg.Record, lo: int, hi: int, width: int) -> bool:
    """A chunk inside the window and inside one bucket: its summary is its item."""
    return bool(
        lo <= r["first_step"]
        and r["last_step"] <= top(r, hi)
        and history.bucket_of(r["first_step"], width) == history.bucket_of(r["last_step"], width)
    )


def _sketched(r: asyncpg.Record, width: int) -> bool:
    """A compacted chunk whose sketch sub-ranges fit in buckets of `width`."""
    scale: int | None = r["sketch_scale"]
    return r["codec"] != codec.RAW and scale is not None and width % scale == 0


def needs_points(r: asyncpg.Record, lo: int, hi: int, width: int, with_time: bool) -> bool:
    """Whether a chunk's points are needed for a bucketed history."""
    if _whole(r, lo, hi, width) and not (with_time and r["last_timestamp"] is None):
        return False
    if _sketched(r, width):
        return bool(r["first_step"] < lo or r["last_step"] > top(r, hi))  # only sub-ranges cut by the window's ends
    return True


def _items(rows: list[asyncpg.Record], chunks: _Chunks, lo: int, hi: int, width: int) -> history.Items:
    """One series' chunks as items."""
    parts = []
    summaries = []  # consecutive whole chunks, made into items at once
    for r in rows:
        if r["ctid"] not in chunks.fetched and _whole(r, lo, hi, width):
            summaries.append(r)
            continue
        if summaries:
            parts.append(_summary_items(summaries))
            summaries = []
        s = chunks.sketch(r, width) if _sketched(r, width) else None
        if s is not None:
            parts.append(_sketch_items(r, s, chunks, lo, hi))
        else:
            steps, stamps, values = chunks.window(r, lo, top(r, hi))
            parts.append(history.Items.of_points(steps, values, stamps if len(stamps) else None))
    if summaries:
        parts.append(_summary_items(summaries))
    return parts[0] if len(parts) == 1 else history.Items.concat(parts)


def _sketch_items(r: asyncpg.Record, s: codec.Sketch, chunks: _Chunks, lo: int, hi: int) -> history.Items:
    """A compacted chunk's sketch entries inside [lo, hi], and the points in [lo, hi] of the
    entries the window cuts, in step order."""
    entries = history.Items(s.first_step, s.last_step, s.first, s.last, s.min, s.max, s.count, s.last_time)
    hi = top(r, hi)
    if lo <= r["first_step"] and r["last_step"] <= hi:
        return entries
    inside, (steps, stamps, values) = chunks.cut(r, s, lo, hi)
    cut_points = history.Items.of_points(steps, values, stamps if len(stamps) else None)
    merged = history.Items.concat([entries.select(inside), cut_points])
    return merged.select(np.argsort(merged.first_step, kind="stable"))


def _summary_items(rows: list[asyncpg.Record]) -> history.Items:
    ints = np.array([(r["first_step"], r["last_step"], r["n"], r["last_timestamp"] or 0) for r in rows], np.int64)
    floats = np.array([(r["first_value"], r["last_value"], r["min_value"], r["max_value"]) for r in rows], np.float64)
    return history.Items(
        ints[:, 0], ints[:, 1], floats[:, 0], floats[:, 1], floats[:, 2], floats[:, 3], ints[:, 2], ints[:, 3]
    )


def _points(
    out: qpb.MetricHistory,
    parts: list[tuple[int, codec.Columns]],
    lo: int,
    hi: int,
    max_points: int,
    aggregate: qpb.Aggregate,
) -> qpb.MetricHistory:
    """Every point in [lo, hi] (`parts`: each chunk's, by writer index, in writer then step order),
    merged across writers in step order, or aggregated per step and bucketed if there are
    still more than `max_points`."""
    merged = history.merge([_chunk_points(columns, writer) for writer, columns in parts], lo, hi)
    out.total_points = len(merged)
    if aggregate != qpb.AGGREGATE_UNSPECIFIED:
        steps, values = history.aggregate(merged, AGGREGATES[aggregate])
        if len(steps) <= max_points:
            out.step.extend(steps.tolist())
            out.value.extend(values.tolist())
            return out
        width = history.bucket_width(lo, hi, max_points)
        return _with_buckets(out, history.downsample(history.Items.of_points(steps, values), width))
    out.step.extend(merged.step.tolist())
    out.value.extend(merged.value.tolist())
    out.timestamp_ms.extend(merged.timestamp_ms.tolist())
    out.writer_index.extend(merged.writer.tolist())
    return out


def _chunk_points(columns: codec.Columns, writer: int) -> history.Points:
    steps, stamps, values = columns
    return history.Points(steps, values, stamps, np.full(len(steps), writer, dtype=np.uint32))


def _with_buckets(out: qpb.MetricHistory, b: history.Items) -> qpb.MetricHistory:
    out.downsampled = True
    out.bucket_first_step.extend(b.first_step.tolist())
    out.bucket_last_step.extend(b.last_step.tolist())
    out.bucket_first.extend(b.first.tolist())
    out.bucket_last.extend(b.last.tolist())
    out.bucket_min.extend(b.min.tolist())
    out.bucket_max.extend(b.max.tolist())
    out.bucket_count.extend(b.count.tolist())
    return out

"""Turn decoded batches into per-series chunks of packed points, and a series' chunks into
compacted ones.

A loader hands over every new batch of one transaction; points are grouped by series
(run x key x writer) with a stable radix sort, kept in step order, cut into chunks of at
most CHUNK_POINTS, and summarised per chunk and per (run, key). The compactor hands over a
series' chunks; their points are merged in step order and cut into chunks of at most
COMPACTED_POINTS, encoded with a sketch (codec.py). Python loops run over series and chunks;
every per-point operation is a numpy call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runstream.server.storage import codec
from runstream.wire.batch import Batch

CHUNK_POINTS = 1000
COMPACTED_POINTS = 65_536

SeriesKey = tuple[str, str, str]  # (run_id, key, writer_id)


@dataclass
class Packed:
    """What one loader transaction writes: chunk records and per-(run, key) summaries."""

    chunk_records: list[tuple[Any, ...]]
    summary_columns: list[list[Any]]
    points: int


def series_of(batches: Sequence[Batch]) -> list[SeriesKey]:
    """The distinct series the batches write to, in first-seen order."""
    seen: dict[SeriesKey, None] = {}
    for b in batches:
        for key in b.keys:
            seen[(b.run_id, key, b.writer_id)] = None
    return list(seen)


def pack(
    batches: Sequence[Batch],
    received_ms: Sequence[int],
    series_id: Callable[[SeriesKey], int],
) -> Packed:
    """Group the points of `batches` into chunk rows; `received_ms[i]` stamps batch i's
    points that came without timestamps, and `series_id` maps a series to its id."""
    local: dict[SeriesKey, int] = {}  # series -> dense index in this transaction
    parts_local, parts_step, parts_ts, parts_val = [], [], [], []
    for b, recv in zip(batches, received_ms, strict=True):
        n = b.points
        if not n:
            continue
        lut = np.array([local.setdefault((b.run_id, key, b.writer_id), len(local)) for key in b.keys], dtype=np.int64)
        parts_local.append(lut[b.key_index])
        parts_step.append(b.step if len(b.step) else np.full(n, b.seq, dtype=np.int64))
        parts_ts.append(b.timestamp_ms if len(b.timestamp_ms) else np.full(n, recv, dtype=np.int64))
        parts_val.append(b.value)
    if not local:
        return Packed([], [[] for _ in range(8)], 0)

    series_idx = np.concatenate(parts_local)
    # numpy's stable sort is a radix sort for 16-bit keys; beyond that it is still stable.
    sort_key = series_idx.astype(np.uint16) if len(local) <= 65536 else series_idx
    order = np.argsort(sort_key, kind="stable")
    series_idx = series_idx[order]
    steps = np.concatenate(parts_step)[order]
    stamps = np.concatenate(parts_ts)[order]
    values = np.concatenate(parts_val)[order]

    counts = np.bincount(series_idx, minlength=len(local))
    bounds = np.concatenate(([0], np.cumsum(counts)))
    _sort_unordered_series(steps, stamps, values, bounds)

    # Cut every series into chunks of at most CHUNK_POINTS: starts and ends per chunk.
    chunk_starts_list = [np.arange(bounds[i], bounds[i + 1], CHUNK_POINTS) for i in range(len(local))]
    starts = np.concatenate(chunk_starts_list)
    ends = np.append(starts[1:], len(values))  # series are contiguous, so a chunk ends where the next starts
    mins = np.fmin.reduceat(values, starts)  # fmin skips NaN unless all are NaN
    maxs = np.fmax.reduceat(values, starts)
    first_steps, last_steps = steps[starts].tolist(), steps[ends - 1].tolist()
    first_vals, last_vals = values[starts].tolist(), values[ends - 1].tolist()
    last_stamps = stamps[ends - 1].tolist()
    chunk_series = series_idx[starts].tolist()

    ids = [series_id(key) for key in local]
    steps_b, stamps_b, values_b = steps.tobytes(), stamps.tobytes(), values.tobytes()
    records = []
    for i, (a, z) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        records.append(
            (
                ids[chunk_series[i]],
                first_steps[i],
                last_steps[i],
                z - a,
                float(mins[i]),
                float(maxs[i]),
                first_vals[i],
                last_vals[i],
                steps_b[8 * a : 8 * z],
                stamps_b[8 * a : 8 * z],
                values_b[8 * a : 8 * z],
                last_stamps[i],
            )
        )
    return Packed(records, _summaries(list(local), bounds, steps, stamps, values), len(values))


def _sort_unordered_series(
    steps: npt.NDArray[np.int64],
    stamps: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    bounds: npt.NDArray[np.int64],
) -> None:
    """Put each series in step order in place; only series that arrived out of order are sorted."""
    backwards = np.flatnonzero(np.diff(steps) < 0) + 1  # index of the later point of each descent
    if not len(backwards):
        return
    # A descent at a series boundary is not disorder: it starts the next series.
    backwards = backwards[~np.isin(backwards, bounds)]
    for s in np.unique(np.searchsorted(bounds, backwards, side="right") - 1).tolist():
        a, z = int(bounds[s]), int(bounds[s + 1])
        o = np.argsort(steps[a:z], kind="stable") + a
        steps[a:z], stamps[a:z], values[a:z] = steps[o], stamps[o], values[o]


def _summaries(
    keys: list[SeriesKey],
    bounds: npt.NDArray[np.int64],
    steps: npt.NDArray[np.int64],
    stamps: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
) -> list[list[Any]]:
    """Per (run, key) summary columns for metrics.upsert_summaries, combining writers."""
    starts, ends = bounds[:-1], bounds[1:]
    nonempty = ends > starts
    mins = np.full(len(keys), np.nan)
    maxs = np.full(len(keys), np.nan)
    mins[nonempty] = np.fmin.reduceat(values, starts[nonempty])
    maxs[nonempty] = np.fmax.reduceat(values, starts[nonempty])
    combined: dict[tuple[str, str], list[Any]] = {}
    for i, (run_id, key, _writer) in enumerate(keys):
        if not nonempty[i]:
            continue
        last = _latest(steps, stamps, values, int(starts[i]), int(ends[i]))
        entry = [
            float(values[last]),
            int(steps[last]),
            int(stamps[last]),
            float(mins[i]),
            float(maxs[i]),
            int(ends[i] - starts[i]),
        ]
        have = combined.get((run_id, key))
        if have is None:
            combined[(run_id, key)] = entry
            continue
        if _latest_order(entry) > _latest_order(have):
            have[0:3] = entry[0:3]
        have[3] = float(np.fmin(have[3], entry[3]))
        have[4] = float(np.fmax(have[4], entry[4]))
        have[5] += entry[5]
    ordered = sorted(combined.items())  # one lock order for concurrent loaders
    columns: list[list[Any]] = [[run for (run, _), _ in ordered], [key for (_, key), _ in ordered]]
    for j in range(6):
        columns.append([entry[j] for _, entry in ordered])
    return columns


def _latest(
    steps: npt.NDArray[np.int64],
    stamps: npt.NDArray[np.int64],
    values: npt.NDArray[np.float64],
    start: int,
    end: int,
) -> int:
    """Index of a step-sorted series' latest point: the highest step, then timestamp, then
    value (MLflow's rule), so the summary does not depend on arrival or load order."""
    last = end - 1
    first = last
    while first > start and steps[first - 1] == steps[last]:  # the rare repeats of the last step
        first -= 1
    if first == last:
        return last
    return max(range(first, end), key=lambda j: (int(stamps[j]), value_order(float(values[j]))))


def value_order(value: float) -> tuple[int, float]:
    """NaN above every number, as PostgreSQL orders float8, so both sides pick the same point."""
    return (1, 0.0) if math.isnan(value) else (0, value)


def _latest_order(entry: list[Any]) -> tuple[int, int, tuple[int, float]]:
    return (entry[1], entry[2], value_order(entry[0]))


def compacted(series_id: int, parts: Sequence[codec.Columns]) -> list[tuple[Any, ...]]:
    """Compacted chunk records (COMPACTED_COLUMNS' order) of one series' points, given as the
    decoded columns of its chunks in first-step order: merged in step order (a stable sort,
    so points of one step keep the order readers gave them) and cut every COMPACTED_POINTS."""
    steps = np.concatenate([p[0] for p in parts])
    stamps = np.concatenate([p[1] for p in parts])
    values = np.concatenate([p[2] for p in parts])
    if np.any(steps[1:] < steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, stamps, values = steps[order], stamps[order], values[order]
    records = []
    for a in range(0, len(steps), COMPACTED_POINTS):
        s, t, v = steps[a : a + COMPACTED_POINTS], stamps[a : a + COMPACTED_POINTS], values[a : a + COMPACTED_POINTS]
        scale = codec.scale_for(s)
        encoded = codec.encode(s, t, v)
        records.append(
            (
                series_id,
                int(s[0]),
                int(s[-1]),
                len(s),
                float(np.fmin.reduce(v)),
                float(np.fmax.reduce(v)),
                float(v[0]),
                float(v[-1]),
                *encoded,
                int(t[-1]),
                codec.PCO,
                scale,
                codec.encode_sketch(codec.sketch_of(s, t, v, scale)),
            )
        )
    return records

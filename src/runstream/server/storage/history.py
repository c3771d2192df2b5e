"""Metric histories from stored chunks, with numpy: merge writers in step order, aggregate
across writers per step, and downsample into buckets that keep first, last, min, max, count
and the time of the last point.

Buckets are aligned: bucket k holds the steps [k * width, (k + 1) * width), and a width is 1, 2
or 5 times a power of ten (bucket_width), so every history of the same width shares its edges
and a compacted chunk's sketch sub-ranges (a power of ten of steps, codec.py) fit in buckets.

Downsampling takes "items": a whole chunk inside one bucket, or a sketch entry, is one item
carrying its summary (first/last step and value, min, max, count, last time), so its points are
never decoded; a decoded point is an item of count 1. Buckets are reductions over items
sorted by bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass
class Points:
    step: I64
    value: F64
    timestamp_ms: I64
    writer: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class Items:
    """Summarised pieces of a series: whole chunks, single points, or the buckets that
    downsample() folds them into (each bucket is an item of its own)."""

    first_step: I64
    last_step: I64
    first: F64
    last: F64
    min: F64
    max: F64
    count: I64
    last_time: I64  # the timestamp of the last point (zeros where times were not asked for)

    @staticmethod
    def of_points(step: I64, value: F64, time: I64 | None = None) -> Items:
        last_time = np.zeros(len(step), np.int64) if time is None or len(time) != len(step) else time
        return Items(step, step, value, value, value, value, np.broadcast_to(np.int64(1), len(step)), last_time)

    @staticmethod
    def concat(parts: list[Items]) -> Items:
        fields = ("first_step", "last_step", "first", "last", "min", "max", "count", "last_time")
        return Items(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def select(self, keep: npt.NDArray[Any]) -> Items:
        """The items a boolean mask or an index array picks."""
        fields = ("first_step", "last_step", "first", "last", "min", "max", "count", "last_time")
        return Items(*(getattr(self, f)[keep] for f in fields))


def merge(parts: list[Points], lo: int, hi: int) -> Points:
    """Points of several chunks and writers within [lo, hi], in step order then writer order;
    `parts` must come in writer order and, within a writer, in first-step order."""
    if not parts:
        return Points(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty(0, np.uint32))
    step = np.concatenate([p.step for p in parts])
    keep = (step >= lo) & (step <= hi)
    value = np.concatenate([p.value for p in parts])[keep]
    stamp = np.concatenate([p.timestamp_ms for p in parts])[keep]
    writer = np.concatenate([p.writer for p in parts])[keep]
    step = step[keep]
    # Parts come in writer order, each in step order: a stable merge sort by step is cheap
    # and keeps writer order among equal steps.
    order = np.argsort(step, kind="stable")
    return Points(step[order], value[order], stamp[order], writer[order])


def aggregate(points: Points, how: str) -> tuple[I64, F64]:
    """One value per step across writers: mean, min or max (NaN-skipping for min and max)."""
    if not len(points):
        return points.step, points.value
    steps, starts = np.unique(points.step, return_index=True)  # points are in step order
    if how == "mean":
        counts = np.diff(np.append(starts, len(points)))
        return steps, np.add.reduceat(points.value, starts) / counts
    reduce = np.fmin if how == "min" else np.fmax
    return steps, reduce.reduceat(points.value, starts)


def downsample(items: Items, width: int) -> Items:
    """Fold items into buckets [k*width, (k+1)*width) by their first step (ONE_BUCKET: all in
    one); an item must lie in one bucket."""
    if not len(items.count):
        return items
    if width == ONE_BUCKET:
        bucket = np.zeros(len(items.count), np.int64)
    elif _ascending(items.first_step) and (items.last_step is items.first_step or _ascending(items.last_step)):
        return _fold(items, width)  # one series in step order (the usual case): no sorting
    else:
        bucket = items.first_step // width
    # Several series: order by bucket, then by first step for first values; the stable sort is
    # a merge sort, fast on what it gets (runs already in step order). An item lies within one
    # bucket, but items of different series may overlap, so last values need their own order.
    by_first = np.argsort(items.first_step, kind="stable")
    by_last = np.lexsort((items.last_step, bucket))
    sorted_bucket = bucket[by_first]
    starts = np.flatnonzero(np.diff(sorted_bucket, prepend=sorted_bucket[0] - 1))
    ends = np.append(starts[1:], len(sorted_bucket))
    return Items(
        first_step=items.first_step[by_first][starts],
        last_step=items.last_step[by_last][ends - 1],
        first=items.first[by_first][starts],
        last=items.last[by_last][ends - 1],
        min=np.fmin.reduceat(items.min[by_first], starts),
        max=np.fmax.reduceat(items.max[by_first], starts),
        count=np.add.reduceat(items.count[by_first], starts),
        last_time=items.last_time[by_last][ends - 1],
    )


def _ascending(a: I64) -> bool:
    return bool(np.all(a[1:] >= a[:-1]))


def _fold(items: Items, width: int) -> Items:
    """Buckets of items in step order: each bucket is a run of consecutive items, found by
    binary search for the bucket edges rather than a pass over every item."""
    steps = items.first_step
    first_bucket, last_bucket = int(steps[0]) // width, int(steps[-1]) // width
    # The first bucket starts at the first item: its edge may lie below int64's range.
    edges = np.arange(first_bucket + 1, last_bucket + 1, dtype=np.int64) * width
    starts = np.concatenate(([0], np.searchsorted(steps, edges)))
    starts = starts[np.diff(starts, append=len(steps)) > 0]  # skip empty buckets
    ends = np.append(starts[1:], len(steps))
    single_points = items.first is items.min is items.max
    count = ends - starts if single_points else np.add.reduceat(items.count, starts)
    return Items(
        first_step=steps[starts],
        last_step=items.last_step[ends - 1],
        first=items.first[starts],
        last=items.last[ends - 1],
        min=np.fmin.reduceat(items.min, starts),
        max=np.fmax.reduceat(items.max, starts),
        count=count.astype(np.int64),
        last_time=items.last_time[ends - 1],
    )


MAX_WIDTH = 5 * 10**18  # the widest that int64 bucket edges hold
ONE_BUCKET = 0  # the width that puts the whole range in one bucket


def bucket_width(lo: int, hi: int, buckets: int) -> int:
    """The smallest width of 1, 2 or 5 times a power of ten whose aligned buckets over [lo, hi]
    number at most `buckets`; ONE_BUCKET when none does (a single bucket asked for a range
    across zero, or a few across most of the int64 range)."""
    decade = 1
    while True:
        for width in (decade, 2 * decade, 5 * decade):
            if hi // width - lo // width + 1 <= buckets:
                return width
            if width == MAX_WIDTH:
                return ONE_BUCKET
        decade *= 10


def bucket_of(step: int, width: int) -> int:
    return step // width if width != ONE_BUCKET else 0

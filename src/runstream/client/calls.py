"""Logging calls as the writer holds them, and the columnar MetricBatches made of them: by the
batcher thread (client/buffer.py), and by `runstream sync` from the calls a killed process left
(client/pending.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from runstream.wire import batch as wire

Call = tuple[tuple[str, ...], int, int, list[float]]  # one logging call: keys, step, timestamp_ms, values


def split_calls(calls: list[Call], limit: int) -> Iterator[list[Call]]:
    """Consecutive runs of calls holding at most `limit` points (a call is never split)."""
    part: list[Call] = []
    n = 0
    for call in calls:
        if part and n + len(call[3]) > limit:
            yield part
            part, n = [], 0
        part.append(call)
        n += len(call[3])
    if part:
        yield part


def encode_calls(run_id: str, writer_id: str, seq: int, calls: list[Call], epoch: int = 0) -> tuple[bytes, int]:
    """One MetricBatch from buffered calls (keys, step, timestamp, values): the key
    dictionary is built per distinct key tuple, the columns with numpy."""
    dictionary: dict[str, int] = {}
    index_of: dict[tuple[str, ...], np.ndarray] = {}
    for keys, _, _, _ in calls:
        if keys not in index_of:
            index_of[keys] = np.array([dictionary.setdefault(k, len(dictionary)) for k in keys], dtype=np.uint32)
    lengths = np.fromiter((len(c[3]) for c in calls), dtype=np.int64, count=len(calls))
    total = int(lengths.sum())
    if len(index_of) == 1:
        key_index = np.tile(next(iter(index_of.values())), len(calls))
    else:
        key_index = np.concatenate([index_of[c[0]] for c in calls])
    value = np.fromiter(itertools.chain.from_iterable(c[3] for c in calls), dtype=np.float64, count=total)
    step = np.repeat(np.fromiter((c[1] for c in calls), dtype=np.int64, count=len(calls)), lengths)
    stamp = np.repeat(np.fromiter((c[2] for c in calls), dtype=np.int64, count=len(calls)), lengths)
    return wire.encode(run_id, writer_id, seq, list(dictionary), key_index, step, stamp, value, epoch), total

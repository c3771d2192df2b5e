"""Packing batches into per-series chunks: grouping, order, chunk size and summaries."""

import math

import numpy as np

from runstream.server.storage import chunks, codec
from runstream.wire import batch as wire

RUN = "0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21"


def make(writer: str, seq: int, keys: list[str], key_index, step, value, ts=None) -> wire.Batch:
    return wire.decode(wire.encode(RUN, writer, seq, keys, key_index, step, ts, value))


def test_points_are_grouped_by_series_in_step_order_and_cut_into_chunks() -> None:
    n = 2500
    a = make("r0", 1, ["loss", "acc"], np.arange(2 * n) % 2, np.arange(2 * n) // 2, np.arange(2 * n, dtype=float))
    # rank 1 sends its steps backwards: they must come out sorted
    b = make("r1", 1, ["loss"], np.zeros(10), np.arange(10)[::-1], np.arange(10, dtype=float)[::-1])
    ids = {}
    packed = chunks.pack([a, b], [0, 0], lambda k: ids.setdefault(k, len(ids) + 1))
    assert packed.points == 2 * n + 10
    by_series: dict[int, list] = {}
    for rec in packed.chunk_records:
        assert rec[3] <= chunks.CHUNK_POINTS
        by_series.setdefault(rec[0], []).append(rec)
    assert {len(v) for v in by_series.values()} == {3, 1}  # 2,500 points -> 1,000 + 1,000 + 500
    for recs in by_series.values():
        steps = np.concatenate([codec.decode(codec.RAW, r[8], r[9], r[10])[0] for r in recs])
        assert (np.diff(steps) >= 0).all()
        assert recs[0][1] == steps[0] and recs[-1][2] == steps[-1]
    r1 = by_series[ids[(RUN, "loss", "r1")]][0]
    s, _, v = codec.decode(codec.RAW, r1[8], r1[9], r1[10])
    assert s.tolist() == list(range(10)) and v.tolist() == [float(x) for x in range(10)]


def test_summaries_combine_writers_and_skip_nan() -> None:
    a = make("r0", 1, ["loss"], [0, 0, 0], [1, 2, 3], [5.0, math.nan, 1.0])
    b = make("r1", 1, ["loss"], [0, 0], [4, 0], [math.nan, 9.0])
    packed = chunks.pack([a, b], [0, 0], lambda k: 1)
    runs, keys, last, last_step, _, mins, maxs, counts = packed.summary_columns
    assert (runs, keys, last_step, mins, maxs, counts) == ([RUN], ["loss"], [4], [1.0], [9.0], [5])
    assert math.isnan(last[0])  # the value at the highest step, NaN included


def test_missing_steps_and_timestamps_are_filled() -> None:
    b = make("r0", 4, ["x"], [0, 0], None, [1.0, 2.0])
    packed = chunks.pack([b], [1234], lambda k: 1)
    steps, ts, _ = codec.decode(codec.RAW, *packed.chunk_records[0][8:11])
    assert steps.tolist() == [4, 4] and ts.tolist() == [1234, 1234]


def test_the_last_value_is_the_latest_point_whatever_the_arrival_order() -> None:
    # Two ranks log "loss" at the same last step; rank 1's point is the later one (timestamp).
    r0 = make("r0", 1, ["loss"], [0, 0], [1, 2], [9.0, 0.5], ts=[100, 200])
    r1 = make("r1", 1, ["loss"], [0, 0], [1, 2], [8.0, 0.7], ts=[100, 300])
    # One writer repeating its last step at one timestamp: the larger value, as MLflow picks.
    r2 = make("r2", 1, ["acc"], [0, 0, 0], [4, 4, 4], [0.2, 0.9, 0.4], ts=[50, 50, 50])
    for order in ([r0, r1, r2], [r2, r1, r0]):
        columns = chunks.pack(order, [0] * 3, lambda k: hash(k) & 0xFFFF).summary_columns
        summary = {key: [col[i] for col in columns[2:]] for i, key in enumerate(columns[1])}
        assert summary["loss"][:3] == [0.7, 2, 300]
        assert summary["acc"][:3] == [0.9, 4, 50]

"""Compacted chunks (storage/codec.py, chunks.compacted) and aligned buckets (history.bucket_width):
lossless columns, sketches equal to what the points say, and folding sketches equal to folding
points."""

import math

import numpy as np
import pytest

from runstream.server.storage import chunks, codec, history

SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]


def _series(rng: np.random.Generator, n: int, stride: int = 1) -> codec.Columns:
    steps = np.sort(rng.choice(np.arange(-n, n * stride), n, replace=False)).astype(np.int64)
    stamps = (1_764_000_000_000 + steps * 200 + rng.integers(0, 5, n)).astype(np.int64)
    values = rng.standard_normal(n)
    values[rng.integers(0, n, 20)] = rng.choice(SPECIAL, 20)
    return steps, stamps, values


def test_columns_round_trip_bit_for_bit_including_nan_and_infinities() -> None:
    steps, stamps, values = _series(np.random.default_rng(1), 10_000, 3)
    out = codec.decode(codec.PCO, *codec.encode(steps, stamps, values))
    assert out[0].tolist() == steps.tolist() and out[1].tolist() == stamps.tolist()
    assert out[2].view(np.int64).tolist() == values.view(np.int64).tolist()


def test_damaged_columns_and_unknown_codecs_are_named_not_misread() -> None:
    steps, stamps, values = codec.encode(np.arange(100), np.arange(100), np.ones(100))
    with pytest.raises(codec.CorruptChunk, match="truncated"):
        codec.decode(codec.PCO, steps[:5], stamps, values)
    with pytest.raises(codec.CorruptChunk, match="not as long as its page table"):
        codec.decode(codec.PCO, steps[:-3], stamps, values)
    for i in range(len(values)):  # any byte changed anywhere: caught, never read as other numbers
        damaged = values[:i] + bytes([values[i] ^ 0x10]) + values[i + 1 :]
        try:
            read = codec.decode(codec.PCO, steps, stamps, damaged)[2]
        except codec.CorruptChunk:
            continue
        assert read.tolist() == [1.0] * 100, i  # only a header field that changes nothing read
    with pytest.raises(codec.CorruptChunk, match="holds int64"):
        codec.decode(codec.PCO, steps, stamps, steps)  # steps where values belong
    with pytest.raises(codec.CorruptChunk, match="codec 7"):
        codec.decode(7, steps, stamps, values)
    sketch = codec.encode_sketch(codec.sketch_of(np.arange(100), np.arange(100), np.ones(100), 10))
    for damaged in (sketch[:3], sketch[:15], sketch[:20] + bytes([sketch[20] ^ 1]) + sketch[21:], b""):
        with pytest.raises(codec.CorruptChunk):
            codec.decode_sketch(damaged)


def test_steps_across_the_whole_int64_range_get_a_scale_that_divides_them() -> None:
    for steps in ([0, 1_700_000_000_000_000_000], [-(2**63), 2**63 - 1], [*list(range(50)), 2**63 - 1]):
        s = np.array(steps, np.int64)
        scale = codec.scale_for(s)
        assert scale <= codec.MAX_SCALE
        sketch = codec.decode_sketch(codec.encode_sketch(codec.sketch_of(s, s, np.ones(len(s)), scale)))
        assert int(sketch.count.sum()) == len(s)
        records = chunks.compacted(1, [(s, s, np.ones(len(s)))])
        assert codec.decode(records[0][12], *records[0][8:11])[0].tolist() == steps


@pytest.mark.parametrize("n", [1, codec.PAGE_POINTS, 3 * codec.PAGE_POINTS + 17])
def test_part_of_a_chunk_decodes_from_the_pages_that_hold_it(n: int) -> None:
    steps, stamps, values = _series(np.random.default_rng(n), n)
    encoded = codec.encode(steps, stamps, values)
    raw = (steps.tobytes(), stamps.tobytes(), values.tobytes())
    for first, stop in [
        (0, None),
        (0, 1),
        (n - 1, n),
        (n // 2, n // 2 + 3),
        (codec.PAGE_POINTS - 1, codec.PAGE_POINTS + 1),
    ]:
        if not 0 <= first < (stop or n) <= n:
            continue
        for kind, data in ((codec.PCO, encoded), (codec.RAW, raw)):
            (s, t, v), start = codec.decode_part(kind, *data, first, stop)
            assert start <= first and start + len(s) >= (stop or n)
            assert kind == codec.RAW or start % codec.PAGE_POINTS == 0  # whole pages
            assert s.tolist() == steps[start : start + len(s)].tolist()
            assert t.tolist() == stamps[start : start + len(s)].tolist()
            assert v.view(np.int64).tolist() == values[start : start + len(s)].view(np.int64).tolist()


@pytest.mark.parametrize("stride", [1, 7, 1000])
def test_a_sketch_is_what_its_points_say(stride: int) -> None:
    steps, stamps, values = _series(np.random.default_rng(stride), 5_000, stride)
    scale = codec.scale_for(steps)
    assert scale in {10**k for k in range(19)}
    sketch = codec.decode_sketch(codec.encode_sketch(codec.sketch_of(steps, stamps, values, scale)))
    assert sketch.scale == scale and int(sketch.count.sum()) == len(steps)
    for i, r in enumerate(sketch.ranges().tolist()):
        inside = steps // scale == r
        s, t, v = steps[inside], stamps[inside], values[inside]
        assert (sketch.first_step[i], sketch.last_step[i], sketch.count[i]) == (s[0], s[-1], len(s))
        assert sketch.last_time[i] == t[-1]
        assert sketch.first[i].tobytes() == v[0].tobytes() and sketch.last[i].tobytes() == v[-1].tobytes()
        np.testing.assert_equal(sketch.min[i], np.fmin.reduce(v))
        np.testing.assert_equal(sketch.max[i], np.fmax.reduce(v))
    # about POINTS_PER_RANGE points or more per entry, so the sketch stays small beside the points
    assert len(steps) / len(sketch) >= codec.POINTS_PER_RANGE / 10


def test_compaction_merges_overlapping_chunks_in_step_order_and_cuts_full_chunks() -> None:
    rng = np.random.default_rng(3)
    a = _series(rng, 70_000)
    late = (np.array([5, 5, 6], np.int64), np.array([1, 2, 3], np.int64), np.array([0.5, 0.25, 0.125]))
    records = chunks.compacted(42, [a, late])
    full, rest = divmod(70_003, chunks.COMPACTED_POINTS)
    assert [r[3] for r in records] == [chunks.COMPACTED_POINTS] * full + [rest]
    decoded = [codec.decode(r[12], r[8], r[9], r[10]) for r in records]
    steps = np.concatenate([d[0] for d in decoded])
    assert np.all(steps[1:] >= steps[:-1]) and len(steps) == 70_003
    at5 = np.concatenate([d[2] for d in decoded])[steps == 5]
    assert at5[-2:].tolist() == [0.5, 0.25]  # points of one step keep the order they were given in
    for r, (s, t, v) in zip(records, decoded, strict=True):
        assert r[0] == 42 and (r[1], r[2]) == (s[0], s[-1]) and r[11] == t[-1]
        np.testing.assert_equal((r[4], r[5], r[6], r[7]), (np.fmin.reduce(v), np.fmax.reduce(v), v[0], v[-1]))


WIDTH_CASES = [(0, 999_999, 1000), (-5, 5, 1), (3, 3, 7), (-(2**63), 2**63 - 1, 2), (17, 123_456_789, 640),
               (0, 99, 1000), (-999, -1, 10), (-5, 5, 2)]  # fmt: skip


@pytest.mark.parametrize(("lo", "hi", "buckets"), WIDTH_CASES)
def test_bucket_widths_are_the_smallest_one_two_or_five_that_fit(lo: int, hi: int, buckets: int) -> None:
    def count(w: int) -> int:
        return hi // w - lo // w + 1

    nice = [m * 10**k for k in range(19) for m in (1, 2, 5)]
    width = history.bucket_width(lo, hi, buckets)
    if width == history.ONE_BUCKET:  # no aligned width fits: one bucket holds the whole range
        assert all(count(w) > buckets for w in nice)
        return
    assert width in nice and count(width) <= buckets
    assert all(count(w) > buckets for w in nice if w < width)


@pytest.mark.parametrize("seed", range(6))
def test_folding_sketches_equals_folding_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps, stamps, values = _series(rng, 20_000, int(rng.integers(1, 50)))
    scale = codec.scale_for(steps)
    sketch = codec.sketch_of(steps, stamps, values, scale)
    for buckets in (1, 3, 50, 1000):
        width = history.bucket_width(int(steps[0]), int(steps[-1]), buckets)
        if width % scale:
            continue  # a zoom finer than the sketch: those buckets are folded from points
        entries = history.Items(*(getattr(sketch, f) for f in ("first_step", "last_step", "first", "last", "min",
                                                              "max", "count", "last_time")))  # fmt: skip
        got = history.downsample(entries, width)
        want = history.downsample(history.Items.of_points(steps, values, stamps), width)
        for field in ("first_step", "last_step", "first", "last", "min", "max", "count", "last_time"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.parametrize("origin", [-(2**63), 2**63 - 4_001, -5, 0])
def test_buckets_count_every_point_at_the_ends_of_int64(origin: int) -> None:
    steps = np.arange(origin, origin + 4_001, dtype=np.int64)
    values = np.sin(np.arange(4_001.0))
    for buckets in (1, 2, 3, 10, 99, 100, 1_000):
        width = history.bucket_width(int(steps[0]), int(steps[-1]), buckets)
        got = history.downsample(history.Items.of_points(steps, values), width)
        assert int(got.count.sum()) == 4_001 and len(got.count) <= buckets, (buckets, width)
        two = history.Items.concat([history.Items.of_points(steps, values), history.Items.of_points(steps, values)])
        assert int(history.downsample(two, width).count.sum()) == 8_002  # the path for several series

"""How a chunk's points are encoded, and the sketch a compacted chunk carries.

A loader writes raw chunks (RAW: the columns as little-endian 8-byte arrays, cheap to write).
The compactor rewrites a series' raw chunks as compacted ones (PCO): each column encoded on its
own with pcodec, a codec for numeric columns (steps and timestamps take well under a byte a
point, float values about what their entropy allows), in pages of PAGE_POINTS points that
decode on their own (a window's ends decode a page, not the chunk), and a sketch: for each non-empty
sub-range [k * scale, (k + 1) * scale) of steps, the count, first and last step and value, min,
max and the timestamp of the last point. History buckets are aligned to multiples of their
width (history.bucket_width), a width that the scale divides, so a bucket is made of whole
sub-ranges and folds their sketches without decoding a point.

Every chunk row names its codec, so chunks written by an older version stay readable.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pcodec
from pcodec import standalone

from runstream.errors import DataLoss

RAW = 0
PCO = 1
CODECS = (RAW, PCO)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Columns = tuple[I64, I64, F64]  # steps, timestamps, values

POINTS_PER_RANGE = 64  # about what one sketch entry stands for: its scale is the power of ten above it
_CONFIG = pcodec.ChunkConfig(compression_level=4)  # level 8 saves ~1 % of the bytes at a third of the speed
_SKETCH_VERSION = 1
PAGE_POINTS = 4096
# A PCO column: points per page and pages, then each page's length, then each page's CRC-32
# (pcodec decodes most damaged bytes into other numbers without a word), then the pages.
_PAGES = struct.Struct("<II")
MAX_SCALE = 10**18  # the widest sub-range int64 steps can be divided by


class CorruptChunk(DataLoss):
    """A stored chunk's bytes do not decode: storage was damaged or written by a bug."""


def encode(steps: I64, stamps: I64, values: F64) -> tuple[bytes, bytes, bytes]:
    """The PCO columns of one chunk's points (in step order)."""
    return _encode_column(steps, np.int64), _encode_column(stamps, np.int64), _encode_column(values, np.float64)


def decode(codec: int, steps: bytes, stamps: bytes | None, values: bytes) -> Columns:
    """A stored chunk's columns; timestamps may be left out (None), then they come back empty."""
    columns, _ = decode_part(codec, steps, stamps, values, 0, None)
    return columns


def decode_part(
    codec: int, steps: bytes, stamps: bytes | None, values: bytes, first: int, stop: int | None
) -> tuple[Columns, int]:
    """The points [first, stop) of a chunk (stop None: to the end), or of the pages holding them:
    the columns, and the index in the chunk of their first point."""
    if codec == RAW:
        if len(steps) % 8 or len(values) % 8 or (stamps is not None and len(stamps) % 8):
            raise CorruptChunk("an ingest chunk's columns are not whole 8-byte numbers")
        end = len(steps) // 8 if stop is None else stop
        columns: Columns = (
            np.frombuffer(steps, dtype="<i8")[first:end],
            np.frombuffer(stamps, dtype="<i8")[first:end] if stamps is not None else np.empty(0, np.int64),
            np.frombuffer(values, dtype="<f8")[first:end],
        )
        start = first
    elif codec == PCO:
        (s, start), (v, _) = _decode_pages(steps, np.int64, first, stop), _decode_pages(values, np.float64, first, stop)
        t = _decode_pages(stamps, np.int64, first, stop)[0] if stamps is not None else np.empty(0, np.int64)
        columns = (s, t, v)
    else:
        raise CorruptChunk(f"a chunk names codec {codec}, which this version does not know")
    if len(columns[0]) != len(columns[2]) or (stamps is not None and len(columns[1]) != len(columns[0])):
        raise CorruptChunk("a chunk's columns disagree in length")
    return columns, start


def _encode_column(a: npt.NDArray[Any], dtype: type) -> bytes:
    a = np.ascontiguousarray(a, dtype)
    pages = [standalone.simple_compress(a[i : i + PAGE_POINTS], _CONFIG) for i in range(0, len(a), PAGE_POINTS)]
    lengths = np.array([len(p) for p in pages], "<u4").tobytes()
    crcs = np.array([zlib.crc32(p) for p in pages], "<u4").tobytes()
    return b"".join([_PAGES.pack(PAGE_POINTS, len(pages)), lengths, crcs, *pages])


def _decode_pages(data: bytes, dtype: type, first: int, stop: int | None) -> tuple[Any, int]:
    """The pages of a PCO column holding points [first, stop), and the index of their first point."""
    try:
        page_points, pages = _PAGES.unpack_from(data)
    except struct.error:
        raise CorruptChunk("a compacted chunk's column is truncated") from None
    if page_points < 1 or len(data) < _PAGES.size + 8 * pages:
        raise CorruptChunk("a compacted chunk's column has a damaged page table")
    lengths = np.frombuffer(data, "<u4", count=pages, offset=_PAGES.size).astype(np.int64)
    crcs = np.frombuffer(data, "<u4", count=pages, offset=_PAGES.size + 4 * pages).tolist()
    offsets = (_PAGES.size + 8 * pages + np.concatenate(([0], np.cumsum(lengths)))).tolist()
    if offsets[-1] != len(data):
        raise CorruptChunk("a compacted chunk's column is not as long as its page table says")
    a = min(first // page_points, pages)
    z = pages if stop is None else min(pages, -(-stop // page_points))
    parts = []
    for p in range(a, z):
        page = data[offsets[p] : offsets[p + 1]]
        if zlib.crc32(page) != crcs[p]:
            raise CorruptChunk(f"a compacted chunk's column fails its checksum (page {p})")
        parts.append(_column(page, dtype))
    if any(len(part) != page_points for part in parts[:-1]) or (z < pages and parts and len(parts[-1]) != page_points):
        raise CorruptChunk("a compacted chunk's page holds the wrong number of points")
    return (np.concatenate(parts) if len(parts) != 1 else parts[0]) if parts else np.empty(0, dtype), a * page_points


def _column(data: bytes, dtype: type) -> Any:
    """A pcodec array of `dtype` (int64 or float64)."""
    try:
        out = standalone.simple_decompress(data)
    except Exception as exc:  # pcodec's RuntimeError, or whatever damaged bytes make of its parser
        raise CorruptChunk(f"a compacted chunk's column does not decode: {exc}") from None
    if out is None:  # pcodec's answer to some damaged headers
        raise CorruptChunk("a compacted chunk's column does not decode")
    if out.dtype != dtype:
        raise CorruptChunk(f"a compacted chunk's column holds {out.dtype}, not {np.dtype(dtype)}")
    return out


@dataclass
class Sketch:
    """One entry per non-empty sub-range of `scale` steps, in step order."""

    scale: int
    first_step: I64
    last_step: I64
    count: I64
    last_time: I64
    first: F64
    last: F64
    min: F64
    max: F64

    def __len__(self) -> int:
        return len(self.count)

    def ranges(self) -> I64:
        """The sub-range number (step // scale) of each entry."""
        return self.first_step // self.scale


def scale_for(steps: I64) -> int:
    """The power of ten that puts about POINTS_PER_RANGE points in a sub-range of these steps."""
    span = int(steps[-1]) - int(steps[0]) + 1
    wanted = POINTS_PER_RANGE * span / len(steps)
    return min(MAX_SCALE, 10 ** max(0, math.ceil(math.log10(wanted)))) if wanted > 1 else 1


def sketch_of(steps: I64, stamps: I64, values: F64, scale: int) -> Sketch:
    """The sketch of a chunk's points, in step order."""
    ranges = steps // scale
    starts = np.flatnonzero(np.diff(ranges, prepend=ranges[0] - 1))
    ends = np.append(starts[1:], len(steps)) - 1
    return Sketch(
        scale=scale,
        first_step=steps[starts],
        last_step=steps[ends],
        count=(ends - starts + 1).astype(np.int64),
        last_time=stamps[ends],
        first=values[starts],
        last=values[ends],
        min=np.fmin.reduceat(values, starts),
        max=np.fmax.reduceat(values, starts),
    )


def coarser(s: Sketch) -> Sketch:
    """The same sketch with sub-ranges ten times wider."""
    scale = s.scale * 10
    ranges = s.first_step // scale
    starts = np.flatnonzero(np.diff(ranges, prepend=ranges[0] - 1))
    ends = np.append(starts[1:], len(ranges)) - 1
    return Sketch(
        scale=scale,
        first_step=s.first_step[starts],
        last_step=s.last_step[ends],
        count=np.add.reduceat(s.count, starts),
        last_time=s.last_time[ends],
        first=s.first[starts],
        last=s.last[ends],
        min=np.fmin.reduceat(s.min, starts),
        max=np.fmax.reduceat(s.max, starts),
    )


_SKETCH_INTS = ("first_step", "last_step", "count", "last_time")
_SKETCH_FLOATS = ("first", "last", "min", "max")
_LEVELS = struct.Struct("<BB")  # version, levels
_LEVEL = struct.Struct("<qIII")  # scale, entries, bytes of the int column, bytes of the float column
_CRC = struct.Struct("<I")  # a sketch ends with the CRC-32 of what comes before


def encode_sketch(s: Sketch) -> bytes:
    """The sketch at its own scale and at every scale ten times coarser down to a single entry
    (about a ninth more), so a wide bucket reads few entries. Each level is two pcodec columns,
    its integer fields end to end and its float fields end to end."""
    levels = [s]
    while len(levels[-1]) > 1 and levels[-1].scale < MAX_SCALE:
        levels.append(coarser(levels[-1]))
    table, data = [_LEVELS.pack(_SKETCH_VERSION, len(levels))], []
    for level in levels:
        ints = standalone.simple_compress(np.concatenate([getattr(level, f) for f in _SKETCH_INTS]), _CONFIG)
        floats = standalone.simple_compress(np.concatenate([getattr(level, f) for f in _SKETCH_FLOATS]), _CONFIG)
        table.append(_LEVEL.pack(level.scale, len(level), len(ints), len(floats)))
        data += [ints, floats]
    body = b"".join(table + data)
    return body + _CRC.pack(zlib.crc32(body))


def decode_sketch(data: bytes, width: int | None = None) -> Sketch:
    """The level of a sketch with the widest sub-ranges that buckets of `width` hold whole (a
    width of 0, one bucket: the coarsest); without a width, the finest level."""
    if len(data) < _CRC.size or zlib.crc32(data[: -_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        raise CorruptChunk("a compacted chunk's sketch fails its checksum")
    data = data[: -_CRC.size]
    try:
        version, count = _LEVELS.unpack_from(data)
        levels = [_LEVEL.unpack_from(data, _LEVELS.size + i * _LEVEL.size) for i in range(count)]
    except struct.error:
        raise CorruptChunk("a compacted chunk's sketch is truncated") from None
    if version != _SKETCH_VERSION or not levels or any(scale < 1 for scale, *_ in levels):
        raise CorruptChunk(f"a compacted chunk's sketch has version {version} and {count} levels")
    pick = 0
    if width is not None:
        fits = [i for i, (scale, *_) in enumerate(levels) if width % scale == 0]
        pick = fits[-1] if fits else 0
    pos = _LEVELS.size + count * _LEVEL.size + sum(ints + floats for _, _, ints, floats in levels[:pick])
    scale, entries, ints_len, floats_len = levels[pick]
    ints = _column(data[pos : pos + ints_len], np.int64)
    floats = _column(data[pos + ints_len : pos + ints_len + floats_len], np.float64)
    if len(ints) != 4 * entries or len(floats) != 4 * entries:
        raise CorruptChunk("a compacted chunk's sketch does not hold what its header says")
    fields = dict(zip(_SKETCH_INTS, ints.reshape(4, entries), strict=True))
    fields |= dict(zip(_SKETCH_FLOATS, floats.reshape(4, entries), strict=True))
    return Sketch(scale=scale, **fields)

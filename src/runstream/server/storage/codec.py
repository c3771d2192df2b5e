"""How a chunk's points are encoded, and the sketch a compacted chunk carries.

A loader writes raw chunks (RAW: the columns as little-endian 8-byte arrays, cheap to write).
The compactor rewrites a series' raw chunks as compacted ones (PCO): each column encoded on its
own with pcodec, a codec for numeric columns (steps and timestamps take well under a byte a
point, float values about what their entropy allows), and a sketch: for each non-empty
sub-range [k * scale, (k + 1) * scale) of steps, the count, first and last step and value, min,
max and the timestamp of the last point. History buckets are aligned to multiples of their
width (history.bucket_width), a width that the scale divides, so a bucket is made of whole
sub-ranges and folds their sketches without decoding a point.

Every chunk row names its codec, so chunks written by an older version stay readable.
"""

from __future__ import annotations

import math
import struct
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
_CONFIG = pcodec.ChunkConfig(compression_level=8)
_SKETCH_VERSION = 1
_HEADER = struct.Struct("<BqI")  # version, scale, entries
_LENGTH = struct.Struct("<I")


class CorruptChunk(DataLoss):
    """A stored chunk's bytes do not decode: storage was damaged or written by a bug."""


def encode(steps: I64, stamps: I64, values: F64) -> tuple[bytes, bytes, bytes]:
    """The PCO columns of one chunk's points (in step order)."""
    return (
        standalone.simple_compress(np.ascontiguousarray(steps, np.int64), _CONFIG),
        standalone.simple_compress(np.ascontiguousarray(stamps, np.int64), _CONFIG),
        standalone.simple_compress(np.ascontiguousarray(values, np.float64), _CONFIG),
    )


def decode(codec: int, steps: bytes, stamps: bytes | None, values: bytes) -> Columns:
    """A stored chunk's columns; timestamps may be left out (None), then they come back empty."""
    if codec == RAW:
        if len(steps) % 8 or len(values) % 8 or (stamps is not None and len(stamps) % 8):
            raise CorruptChunk("an ingest chunk's columns are not whole 8-byte numbers")
        columns: Columns = (
            np.frombuffer(steps, dtype="<i8"),
            np.frombuffer(stamps, dtype="<i8") if stamps is not None else np.empty(0, np.int64),
            np.frombuffer(values, dtype="<f8"),
        )
    elif codec == PCO:
        columns = (
            _column(steps, np.int64),
            _column(stamps, np.int64) if stamps is not None else np.empty(0, np.int64),
            _column(values, np.float64),
        )
    else:
        raise CorruptChunk(f"a chunk names codec {codec}, which this version does not know")
    if len(columns[0]) != len(columns[2]) or (stamps is not None and len(columns[1]) != len(columns[0])):
        raise CorruptChunk("a chunk's columns disagree in length")
    return columns


def _column(data: bytes, dtype: type) -> Any:
    """A pcodec column of `dtype` (an int64 or float64 array)."""
    try:
        out = standalone.simple_decompress(data)
    except RuntimeError as exc:  # pcodec's error for bytes that are not its format
        raise CorruptChunk(f"a compacted chunk's column does not decode: {exc}") from None
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
    return 10 ** max(0, math.ceil(math.log10(wanted))) if wanted > 1 else 1


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


_SKETCH_INTS = ("first_step", "last_step", "count", "last_time")
_SKETCH_FLOATS = ("first", "last", "min", "max")


def encode_sketch(s: Sketch) -> bytes:
    parts = [_HEADER.pack(_SKETCH_VERSION, s.scale, len(s))]
    for name in _SKETCH_INTS + _SKETCH_FLOATS:
        column = standalone.simple_compress(np.ascontiguousarray(getattr(s, name)), _CONFIG)
        parts += [_LENGTH.pack(len(column)), column]
    return b"".join(parts)


def decode_sketch(data: bytes) -> Sketch:
    try:
        version, scale, entries = _HEADER.unpack_from(data)
    except struct.error:
        raise CorruptChunk("a compacted chunk's sketch is truncated") from None
    if version != _SKETCH_VERSION or scale < 1:
        raise CorruptChunk(f"a compacted chunk's sketch has version {version} and scale {scale}")
    pos = _HEADER.size
    columns: dict[str, Any] = {}
    for name in _SKETCH_INTS + _SKETCH_FLOATS:
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += _LENGTH.size
        columns[name] = _column(data[pos : pos + length], np.int64 if name in _SKETCH_INTS else np.float64)
        if len(columns[name]) != entries:
            raise CorruptChunk("a compacted chunk's sketch columns disagree in length")
        pos += length
    return Sketch(scale=scale, **columns)

"""The columnar MetricBatch on the wire: encode from numpy columns, decode into numpy views.

The metric columns are fixed-width packed protobuf fields, so their wire bytes are already
the little-endian arrays we want. Decoding walks the message field by field (a handful of
fields, never one step per point) and hands out `np.frombuffer` views; encoding writes the
arrays' bytes behind their tags. Anything the fast path does not expect (an unpacked
repeated field, a field split in two) is still valid protobuf and goes through the
protobuf library instead, so every valid encoding of a MetricBatch is accepted.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runstream.errors import InvalidArgument
from runstream.proto import tracking_pb2

MAX_POINTS = 100_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_KEY_LEN = 250
MAX_WRITER_ID_LEN = 250
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-./ :]{1,250}")
KEY_RULE = "1-250 characters of letters, digits and _ - . / space :"
DEFAULT_WRITER = "default"

_I64 = np.dtype("<i8")
_F64 = np.dtype("<f8")
_U32 = np.dtype("<u4")

# (field number, wire type LEN) tags of the packed columns, and their dtypes.
_COLUMNS: dict[int, tuple[str, np.dtype[Any]]] = {
    5: ("key_index", _U32),
    6: ("step", _I64),
    7: ("timestamp_ms", _I64),
    8: ("value", _F64),
}


@dataclass(frozen=True)
class Batch:
    """One decoded MetricBatch; the arrays may be read-only views of the wire bytes."""

    run_id: str
    writer_id: str
    seq: int
    keys: list[str]
    key_index: npt.NDArray[np.uint32]
    step: npt.NDArray[np.int64]
    timestamp_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]

    @property
    def points(self) -> int:
        return len(self.value)


class _Unexpected(Exception):
    """The fast path met a valid encoding it does not handle; use the protobuf library."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise InvalidArgument("batch: truncated message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise InvalidArgument("batch: malformed varint")


def decode(data: bytes) -> Batch:
    """Decode a serialized MetricBatch; raises InvalidArgument when it is not one."""
    try:
        return _decode_fast(data)
    except _Unexpected:
        return _decode_slow(data)


def _decode_fast(data: bytes) -> Batch:
    run_id = writer_id = ""
    seq = 0
    keys: list[str] = []
    columns: dict[str, np.ndarray] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise InvalidArgument("batch: truncated message")
            if field in _COLUMNS:
                name, dtype = _COLUMNS[field]
                if name in columns or length % dtype.itemsize:
                    raise _Unexpected
                columns[name] = np.frombuffer(data, dtype=dtype, count=length // dtype.itemsize, offset=pos)
            elif field in (1, 2, 4):
                try:
                    text = data[pos : pos + length].decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidArgument("batch: a string field is not valid UTF-8") from None
                if field == 1:
                    run_id = text
                elif field == 2:
                    writer_id = text
                else:
                    keys.append(text)
            pos += length
        elif wire == 0:
            value, pos = _varint(data, pos)
            if field == 3:
                seq = value
        elif field in _COLUMNS:
            raise _Unexpected  # an unpacked repeated column
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise InvalidArgument(f"batch: unsupported wire type {wire}")
    if pos != end:
        raise InvalidArgument("batch: truncated message")
    empty_i64 = np.empty(0, dtype=_I64)
    return Batch(
        run_id=run_id,
        writer_id=writer_id,
        seq=seq,
        keys=keys,
        key_index=columns.get("key_index", np.empty(0, dtype=_U32)),
        step=columns.get("step", empty_i64),
        timestamp_ms=columns.get("timestamp_ms", empty_i64),
        value=columns.get("value", np.empty(0, dtype=_F64)),
    )


def _decode_slow(data: bytes) -> Batch:
    msg = tracking_pb2.MetricBatch()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # the protobuf runtime raises its own DecodeError type
        raise InvalidArgument(f"batch: not a MetricBatch ({exc})") from None
    return Batch(
        run_id=msg.run_id,
        writer_id=msg.writer_id,
        seq=msg.seq,
        keys=list(msg.keys),
        key_index=np.array(msg.key_index, dtype=_U32),
        step=np.array(msg.step, dtype=_I64),
        timestamp_ms=np.array(msg.timestamp_ms, dtype=_I64),
        value=np.array(msg.value, dtype=_F64),
    )


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, field: int, payload: bytes) -> None:
    out.append((field << 3) | 2)
    _put_varint(out, len(payload))
    out += payload


def encode(
    run_id: str,
    writer_id: str,
    seq: int,
    keys: list[str],
    key_index: npt.ArrayLike,
    step: npt.ArrayLike | None,
    timestamp_ms: npt.ArrayLike | None,
    value: npt.ArrayLike,
) -> bytes:
    """Serialize a MetricBatch from columns; the result parses with any protobuf library."""
    out = bytearray()
    if run_id:
        _put_bytes(out, 1, run_id.encode())
    if writer_id:
        _put_bytes(out, 2, writer_id.encode())
    if seq:
        out.append(3 << 3)
        _put_varint(out, seq)
    for key in keys:
        _put_bytes(out, 4, key.encode())
    for field, column in ((5, key_index), (6, step), (7, timestamp_ms), (8, value)):
        if column is None:
            continue
        dtype = _COLUMNS[field][1]
        arr = np.ascontiguousarray(column, dtype=dtype)
        if arr.size:
            _put_bytes(out, field, arr.tobytes())
    return bytes(out)


def check_key(key: str, what: str = "metric key") -> None:
    if not KEY_PATTERN.fullmatch(key):
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise InvalidArgument(f"{what} {shown!r} is invalid: keys are {KEY_RULE}")


def check_run_id(run_id: str) -> None:
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise InvalidArgument(f"run_id {run_id[:80]!r} is not a run id (a UUID)") from None


def validate(batch: Batch, size: int, known_keys: set[str]) -> None:
    """Cheap checks of a decoded batch; raises InvalidArgument naming the field and limit.

    `known_keys` caches key names already found valid, so the regex runs once per name.
    """
    if size > MAX_BATCH_BYTES:
        raise InvalidArgument(f"batch is {size:,} bytes; the limit is {MAX_BATCH_BYTES:,} bytes (4 MiB)")
    check_run_id(batch.run_id)
    if len(batch.writer_id) > MAX_WRITER_ID_LEN:
        raise InvalidArgument(f"writer_id is {len(batch.writer_id)} characters; the limit is {MAX_WRITER_ID_LEN}")
    if batch.seq < 1:
        raise InvalidArgument("seq must count the writer's batches from 1")
    n = batch.points
    if n > MAX_POINTS:
        raise InvalidArgument(f"batch has {n:,} points; the limit is {MAX_POINTS:,} points per batch")
    if len(batch.key_index) != n:
        raise InvalidArgument(f"key_index has {len(batch.key_index)} entries but value has {n}")
    for name, column in (("step", batch.step), ("timestamp_ms", batch.timestamp_ms)):
        if len(column) not in (0, n):
            raise InvalidArgument(f"{name} has {len(column)} entries but value has {n} (or send none)")
    for key in batch.keys:
        if key not in known_keys:
            check_key(key)
            known_keys.add(key)
    if n and int(batch.key_index.max()) >= len(batch.keys):
        raise InvalidArgument(
            f"key_index refers to key {int(batch.key_index.max())} but the batch names {len(batch.keys)} keys"
        )

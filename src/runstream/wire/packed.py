"""Protobuf messages made of strings, varints and packed fixed-width columns, encoded from
and decoded into numpy arrays without per-point work.

A packed fixed-width repeated field's wire bytes are already the little-endian array, so
decoding walks the message field by field (a handful of fields, never one per point) and
hands out `np.frombuffer` views; encoding writes arrays' bytes behind their tags. A valid
encoding this fast path does not expect (an unpacked repeated column, a column split in
two) raises `Unexpected`, and the caller falls back on the protobuf library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEN, VARINT, I64, I32 = 2, 0, 1, 5


class Malformed(ValueError):
    """The bytes are not a protobuf message."""


class Unexpected(Exception):
    """A valid encoding the fast path does not handle; use the protobuf library."""


@dataclass
class Fields:
    strings: dict[int, list[str]] = field(default_factory=dict)
    varints: dict[int, int] = field(default_factory=dict)
    columns: dict[int, np.ndarray] = field(default_factory=dict)

    def string(self, number: int) -> str:
        values = self.strings.get(number)
        return values[-1] if values else ""  # proto3: the last one wins


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise Malformed("truncated message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Malformed("malformed varint")


def decode(data: bytes, columns: Mapping[int, np.dtype[Any]], strings: set[int]) -> Fields:
    """The string fields, varint fields and packed `columns` (field number -> dtype) of `data`;
    other fields are skipped."""
    out = Fields()
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == LEN:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise Malformed("truncated message")
            if number in columns:
                dtype = columns[number]
                if number in out.columns or length % dtype.itemsize:
                    raise Unexpected
                out.columns[number] = np.frombuffer(data, dtype=dtype, count=length // dtype.itemsize, offset=pos)
            elif number in strings:
                try:
                    out.strings.setdefault(number, []).append(data[pos : pos + length].decode("utf-8"))
                except UnicodeDecodeError:
                    raise Malformed("a string field is not valid UTF-8") from None
            pos += length
        elif wire == VARINT:
            out.varints[number], pos = _varint(data, pos)
        elif number in columns:
            raise Unexpected  # an unpacked repeated column
        elif wire == I64:
            pos += 8
        elif wire == I32:
            pos += 4
        else:
            raise Malformed(f"unsupported wire type {wire}")
    if pos != end:
        raise Malformed("truncated message")
    return out


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_bytes(out: bytearray, number: int, payload: bytes) -> None:
    _put_varint(out, (number << 3) | LEN)
    _put_varint(out, len(payload))
    out += payload


def put_string(out: bytearray, number: int, text: str) -> None:
    if text:
        put_bytes(out, number, text.encode())


def put_varint(out: bytearray, number: int, value: int) -> None:
    if value:
        _put_varint(out, number << 3 | VARINT)
        _put_varint(out, value)


def put_column(out: bytearray, number: int, column: Any, dtype: np.dtype[Any]) -> None:
    arr = np.ascontiguousarray(column, dtype=dtype)
    if arr.size:
        put_bytes(out, number, arr.tobytes())


def put_columns(out: bytearray, columns: Sequence[tuple[int, Any, np.dtype[Any]]]) -> None:
    for number, column, dtype in columns:
        if column is not None:
            put_column(out, number, column, dtype)

"""Protobuf messages as JSON (protobuf's JSON mapping, .proto field names), with long numeric
columns (a history's steps and values, thousands per answer) converted by numpy in C rather than
value by value by json_format, which costs about a microsecond per number. The rest of each
message goes through json_format, so enums, maps, bytes and defaults keep the standard mapping."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message

_FLOATS = {F.TYPE_DOUBLE, F.TYPE_FLOAT}
_INTS_AS_STRINGS = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64, F.TYPE_UINT64, F.TYPE_FIXED64}
_INTS = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32, F.TYPE_UINT32, F.TYPE_FIXED32}
LONG = 64  # shorter columns are not worth the detour


def dumps(message: Message) -> bytes:
    """The message as JSON (orjson writes it: a long history's answer is mostly numbers)."""
    return orjson.dumps(as_dict(message))


def as_dict(message: Message) -> dict[str, Any]:
    """json_format.MessageToDict(message, preserving_proto_field_name=True), faster for long
    numeric columns and for messages nested in lists."""
    done: dict[str, Any] = {}
    for field, value in message.ListFields():
        repeated = _repeated(field)
        if field.type == F.TYPE_MESSAGE and not _is_map(field):
            done[field.name] = [as_dict(m) for m in value] if repeated else as_dict(value)
        elif repeated and len(value) >= LONG and field.type in _FLOATS | _INTS_AS_STRINGS | _INTS:
            done[field.name] = _column(value, field.type)
    if not done:
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    rest = type(message)()
    rest.CopyFrom(message)
    for name in done:
        rest.ClearField(name)
    out = json_format.MessageToDict(rest, preserving_proto_field_name=True)
    out.update(done)
    return out


def _repeated(field: Any) -> bool:
    # protobuf 6 names it is_repeated; older ones only have label
    return bool(field.is_repeated if hasattr(field, "is_repeated") else field.label == F.LABEL_REPEATED)


def _is_map(field: F) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _column(values: Any, kind: int) -> list[Any]:
    if kind in _INTS_AS_STRINGS:  # 64-bit integers are strings in protobuf's JSON
        dtype = np.uint64 if kind in (F.TYPE_UINT64, F.TYPE_FIXED64) else np.int64
        strings: list[Any] = np.asarray(values, dtype=dtype).astype(str).tolist()
        return strings
    if kind in _INTS:
        return np.asarray(values).tolist()  # type: ignore[no-any-return]
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if finite.all():
        return array.tolist()  # type: ignore[no-any-return]
    cells = array.astype(object)
    odd = array[~finite]
    cells[~finite] = np.where(np.isnan(odd), "NaN", np.where(odd > 0, "Infinity", "-Infinity")).astype(object)
    return cells.tolist()  # type: ignore[no-any-return]

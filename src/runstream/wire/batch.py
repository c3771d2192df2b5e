"""The columnar MetricBatch on the wire: encode from numpy columns, decode into numpy views.

The metric columns are fixed-width packed protobuf fields, read and written as arrays by
packed.py. Anything its fast path does not expect is still valid protobuf and goes through
the protobuf library instead, so every valid encoding of a MetricBatch is accepted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runstream.errors import InvalidArgument
from runstream.wire import packed
from runstream.wire.ids import canonical_run_id
from runstream.wire.proto import tracking_pb2

MAX_POINTS = 100_000
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_KEY_LEN = 250
MAX_WRITER_ID_LEN = 250
MAX_SEQ = 2**63 - 1  # seq is a PostgreSQL bigint
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
    epoch: int = 0  # the writer's session (OpenWriter); 0 from senders that never asked

    @property
    def points(self) -> int:
        return len(self.value)


def decode(data: bytes) -> Batch:
    """Decode a serialized MetricBatch; raises InvalidArgument when it is not one."""
    try:
        return _decode_fast(data)
    except packed.Unexpected:
        return _decode_slow(data)


def _decode_fast(data: bytes) -> Batch:
    try:
        fields = packed.decode(data, {n: dtype for n, (_, dtype) in _COLUMNS.items()}, strings={1, 2, 4})
    except packed.Malformed as exc:
        raise InvalidArgument(f"batch: {exc}") from None
    columns = {name: fields.columns[n] for n, (name, _) in _COLUMNS.items() if n in fields.columns}
    empty_i64 = np.empty(0, dtype=_I64)
    return Batch(
        run_id=fields.string(1),
        writer_id=fields.string(2),
        seq=fields.varints.get(3, 0),
        keys=fields.strings.get(4, []),
        key_index=columns.get("key_index", np.empty(0, dtype=_U32)),
        step=columns.get("step", empty_i64),
        timestamp_ms=columns.get("timestamp_ms", empty_i64),
        value=columns.get("value", np.empty(0, dtype=_F64)),
        epoch=fields.varints.get(9, 0),
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
        epoch=msg.epoch,
    )


def encode(
    run_id: str,
    writer_id: str,
    seq: int,
    keys: list[str],
    key_index: npt.ArrayLike,
    step: npt.ArrayLike | None,
    timestamp_ms: npt.ArrayLike | None,
    value: npt.ArrayLike,
    epoch: int = 0,
) -> bytes:
    """Serialize a MetricBatch from columns; the result parses with any protobuf library."""
    out = bytearray()
    packed.put_string(out, 1, run_id)
    packed.put_string(out, 2, writer_id)
    packed.put_varint(out, 3, seq)
    if epoch:
        packed.put_varint(out, 9, epoch)
    for key in keys:
        packed.put_bytes(out, 4, key.encode())
    packed.put_columns(
        out,
        [
            (n, column, _COLUMNS[n][1])
            for n, column in zip(_COLUMNS, (key_index, step, timestamp_ms, value), strict=True)
        ],
    )
    return bytes(out)


def batch_digest(batch: Batch) -> bytes:
    """What tells two batches with one (run, writer, epoch, seq) apart: 8 bytes of BLAKE2b over
    what they hold (keys and columns), not their bytes, so one batch sent again under another
    spelling of its run id, or encoded by another protobuf library, is the same batch."""
    digest = hashlib.blake2b("\0".join(batch.keys).encode(), digest_size=8)
    for column in (batch.key_index, batch.step, batch.timestamp_ms, batch.value):
        digest.update(len(column).to_bytes(8, "little"))
        digest.update(column.tobytes())
    return digest.digest()


def check_key(key: str, what: str = "metric key") -> None:
    if not KEY_PATTERN.fullmatch(key):
        shown = key if len(key) <= 60 else key[:57] + "..."
        raise InvalidArgument(f"{what} {shown!r} is invalid: keys are {KEY_RULE}")


def check_writer_id(writer_id: str) -> None:
    """Writer ids follow the rule of keys; empty means the default writer."""
    if len(writer_id) > MAX_WRITER_ID_LEN:
        raise InvalidArgument(f"writer_id is {len(writer_id)} characters; the limit is {MAX_WRITER_ID_LEN}")
    if writer_id and not KEY_PATTERN.fullmatch(writer_id):
        check_key(writer_id, "writer_id")  # raises, naming the rule


def check_run_id(run_id: str) -> None:
    """InvalidArgument unless run_id is a run id (the server's edge has made it canonical)."""
    canonical_run_id(run_id)


def validate(batch: Batch, size: int, known_keys: set[str]) -> None:
    """Cheap checks of a decoded batch; raises InvalidArgument naming the field and limit.

    `known_keys` caches key names already found valid, so the regex runs once per name.
    """
    if size > MAX_BATCH_BYTES:
        raise InvalidArgument(f"batch is {size:,} bytes; the limit is {MAX_BATCH_BYTES:,} bytes (4 MiB)")
    check_run_id(batch.run_id)
    check_writer_id(batch.writer_id)
    if batch.seq < 1:
        raise InvalidArgument("seq must count the writer's batches from 1")
    if batch.seq > MAX_SEQ:
        raise InvalidArgument(f"seq is {batch.seq}; the limit is 2^63-1")
    if batch.epoch > MAX_SEQ:
        raise InvalidArgument(f"epoch is {batch.epoch}; the limit is 2^63-1")
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

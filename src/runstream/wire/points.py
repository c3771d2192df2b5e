"""MetricPoints on the wire: one series' points (run x key x writer) as packed columns,
written by the server and read by the SDK without a Python object per point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runstream.wire import packed
from runstream.wire.proto import query_pb2 as qpb

_I64 = np.dtype("<i8")
_F64 = np.dtype("<f8")
_COLUMNS = {4: _I64, 5: _F64, 6: _I64}  # step, value, timestamp_ms


@dataclass
class SeriesPoints:
    """Points of one series, in step order."""

    run_id: str
    key: str
    writer: str
    step: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    timestamp_ms: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.step)

    def to_pandas(self) -> Any:
        import pandas as pd  # type: ignore[import-untyped,import-not-found,unused-ignore]  # optional

        return pd.DataFrame(
            {"step": self.step, "value": self.value, "timestamp_ms": self.timestamp_ms, "writer": self.writer}
        )


def encode(run_id: str, key: str, writer: str, step: Any, value: Any, timestamp_ms: Any) -> bytes:
    out = bytearray()
    packed.put_string(out, 1, run_id)
    packed.put_string(out, 2, key)
    packed.put_string(out, 3, writer)
    packed.put_columns(out, [(4, step, _I64), (5, value, _F64), (6, timestamp_ms, _I64)])
    return bytes(out)


def decode(data: bytes) -> SeriesPoints:
    try:
        fields = packed.decode(data, _COLUMNS, strings={1, 2, 3})
    except packed.Unexpected:  # valid, but not how our server writes it
        msg = qpb.MetricPoints.FromString(data)
        return SeriesPoints(
            msg.run_id,
            msg.key,
            msg.writer,
            np.array(msg.step, _I64),
            np.array(msg.value, _F64),
            np.array(msg.timestamp_ms, _I64),
        )
    empty = np.empty(0, _I64)
    return SeriesPoints(
        fields.string(1),
        fields.string(2),
        fields.string(3),
        fields.columns.get(4, empty),
        fields.columns.get(5, np.empty(0, _F64)),
        fields.columns.get(6, empty),
    )

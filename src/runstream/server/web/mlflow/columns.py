"""MLflow's metric lists (`[{"key": …, "value": …, "timestamp": …, "step": …}, …]`) written as
JSON straight from numpy columns: orjson turns each column into text in C (floats by Ryu, the
shortest text that reads back as the same double), and one bytes format stitches the objects
together. A history of 100,000 points takes ~30 ms this way against ~300 ms through a dict per
point and json.dumps, whose float repr alone costs nearly a microsecond per value."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import orjson

# MLflow (protobuf's JSON) writes the non-finite doubles as these strings.
NAN, INF, NEG_INF = b'"NaN"', b'"Infinity"', b'"-Infinity"'


def metric_objects(
    key: str,
    step: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    timestamp: npt.NDArray[np.int64],
    run_id: str | None = None,
) -> bytes:
    """The JSON objects of one key's points, comma-separated (no brackets, so that pieces can be
    joined); `run_id` adds that field to each (get-history-bulk-interval)."""
    n = len(step)
    if n == 0:
        return b""
    head = b'{"key":' + orjson.dumps(key)
    if run_id is not None:
        head += b',"run_id":' + orjson.dumps(run_id)
    one = head.replace(b"%", b"%%") + b',"value":%s,"timestamp":%s,"step":%s}'
    cells: list[bytes] = [b""] * (3 * n)  # value, timestamp, step of each point in turn
    cells[0::3] = _texts(np.asarray(value, dtype=np.float64))
    cells[1::3] = _texts(np.asarray(timestamp, dtype=np.int64))
    cells[2::3] = _texts(np.asarray(step, dtype=np.int64))
    return b",".join([one] * n) % tuple(cells)


def _texts(column: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> list[bytes]:
    """Each number's JSON text. orjson writes NaN and the infinities as null: those (rare) are
    put back as MLflow's strings."""
    texts: list[bytes] = orjson.dumps(column, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    if column.dtype.kind == "f" and not (finite := np.isfinite(column)).all():
        for i in np.flatnonzero(~finite).tolist():
            texts[i] = NAN if np.isnan(column[i]) else (INF if column[i] > 0 else NEG_INF)
    return texts

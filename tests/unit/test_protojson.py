"""The JSON API's encoder (server/web/protojson.py) gives exactly protobuf's JSON mapping:
long numeric columns go through numpy, everything else through json_format."""

from __future__ import annotations

import json

from google.protobuf import json_format

from runstream.server.web import protojson
from runstream.wire.proto import query_pb2, tracking_pb2


def _same(message: object) -> None:
    fast = json.loads(protojson.dumps(message))  # type: ignore[arg-type]
    standard = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))  # type: ignore[arg-type]
    assert fast == standard


def test_long_columns_nested_messages_and_odd_numbers_match_json_format() -> None:
    history = query_pb2.MetricHistory(
        key="loss",
        writers=["rank0", "rank1"],
        total_points=5,
        downsampled=True,
        bucket_first_step=list(range(-50, 50)),
        bucket_last=[i / 7 for i in range(97)] + [float("nan"), float("inf"), float("-inf")],
        bucket_min=[1e-300] * 100,
        bucket_count=[2**62] * 100,
        writer_index=list(range(70)),
        step=[-(2**63)] * 70,
    )
    history.per_writer.add(key="loss", step=list(range(200)), value=[0.1] * 200, timestamp_ms=[1] * 200)
    history.per_writer.add(key="loss", step=[1, 2], value=[float("nan"), 3.0])  # short: json_format's path
    _same(history)
    compare = query_pb2.CompareRunsResponse(
        runs=[
            tracking_pb2.Run(
                run_id="r", status=tracking_pb2.RUN_STATUS_CRASHED, params={"a": "<b>"}, tags={"t": "1"}, metrics=[]
            )
        ]
    )
    compare.series.add(key="loss").histories.append(history)
    compare.metrics.add(key="loss", last=[float("nan")] * 80, present=[True] * 80, best=-1)
    _same(compare)
    _same(query_pb2.MetricPoints(run_id="r", key="k", writer="w", step=list(range(100)), value=[0.5] * 100))


def test_mlflow_metric_lists_from_columns_match_json_dumps() -> None:
    """server/web/mlflow/columns.py writes what a dict per point through json.dumps would, with
    MLflow's strings for the non-finite values, every double read back bit for bit."""
    import math
    import struct

    import numpy as np

    from runstream.server.web.mlflow import columns

    rng = np.random.default_rng(7)
    odd = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 1e-300, 1.7976931348623157e308, 0.1, 1e16]
    value = np.concatenate([odd, rng.standard_normal(5_000) * 10.0 ** rng.integers(-30, 30, 5_000)])
    step = np.concatenate([[-(2**63), 2**63 - 1], rng.integers(-(2**40), 2**40, len(value) - 2)]).astype(np.int64)
    stamp = rng.integers(0, 2**62, len(value)).astype(np.int64)
    for run_id in (None, "8d0e5c7a-3f1b-4c2d-9e8f-0a1b2c3d4e5f"):
        got = json.loads(b"[" + columns.metric_objects("a b/c:d", step, value, stamp, run_id=run_id) + b"]")
        strings = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
        assert [m["value"] for m in got[:3]] == ["NaN", "Infinity", "-Infinity"]
        assert all(m["key"] == "a b/c:d" and m.get("run_id") == run_id for m in got)
        assert [m["step"] for m in got] == step.tolist() and [m["timestamp"] for m in got] == stamp.tolist()
        read = [strings[v] if isinstance(v, str) else v for v in (m["value"] for m in got)]
        assert [struct.pack("<d", v) for v in read] == [struct.pack("<d", v) for v in value.tolist()]
    assert columns.metric_objects("k", np.array([], np.int64), np.array([]), np.array([], np.int64)) == b""

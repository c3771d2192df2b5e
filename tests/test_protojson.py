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

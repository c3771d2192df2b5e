"""The wire format both sides share: the generated protobuf code (proto/), the MetricBatch codec
(batch), packed columns (packed) and query results as numpy views (points)."""

from __future__ import annotations

from pathlib import Path


def proto_path() -> Path:
    """The directory to give protoc (-I) for runstream's .proto files: the copy inside the
    installed wheel, or protos/ of a source checkout (an editable install)."""
    here = Path(__file__).resolve().parent
    shipped = here / "protos"
    if (shipped / "runstream" / "v1").is_dir():
        return shipped
    return here.parents[2] / "protos"

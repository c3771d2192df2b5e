"""The MetricBatch codec against the protobuf library, and the cheap validation rules."""

import math

import numpy as np
import pytest

from runstream.errors import InvalidArgument
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

RUN = "0b3d2a4e-8f4c-4d0e-9a51-3c1f0e6a7b21"


def sample(n: int = 1000) -> dict:
    rng = np.random.default_rng(1)
    return dict(
        run_id=RUN,
        writer_id="host/rank3",
        seq=7,
        keys=["loss", "acc", "lr"],
        key_index=rng.integers(0, 3, n).astype(np.uint32),
        step=np.arange(n) - 5,
        timestamp_ms=np.arange(n) + 1_700_000_000_000,
        value=rng.normal(size=n),
    )


def test_encoded_batch_parses_with_protobuf() -> None:
    s = sample()
    msg = pb.MetricBatch.FromString(wire.encode(**s))
    assert (msg.run_id, msg.writer_id, msg.seq, list(msg.keys)) == (RUN, "host/rank3", 7, ["loss", "acc", "lr"])
    assert list(msg.key_index) == s["key_index"].tolist()
    assert list(msg.step) == s["step"].tolist()
    assert list(msg.timestamp_ms) == s["timestamp_ms"].tolist()
    assert list(msg.value) == s["value"].tolist()


def test_protobuf_serialized_batch_decodes_to_the_same_columns() -> None:
    s = sample()
    msg = pb.MetricBatch(**{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in s.items()})
    b = wire.decode(msg.SerializeToString())
    assert (b.run_id, b.writer_id, b.seq, b.keys) == (RUN, "host/rank3", 7, ["loss", "acc", "lr"])
    for name in ("key_index", "step", "timestamp_ms", "value"):
        np.testing.assert_array_equal(getattr(b, name), s[name])


def test_unpacked_columns_take_the_slow_path() -> None:
    # An encoder may legally send repeated scalars unpacked: field 8 as separate doubles.
    data = wire.encode(RUN, "w", 1, ["x"], [0, 0], [1, 2], None, [0.0, 0.0])
    data = data[: data.index(bytes([8 << 3 | 2]))]
    for v in (1.5, -2.5):
        data += bytes([8 << 3 | 1]) + np.float64(v).tobytes()
    b = wire.decode(data)
    assert b.value.tolist() == [1.5, -2.5] and b.step.tolist() == [1, 2]


def test_nan_and_infinities_survive() -> None:
    values = [math.nan, math.inf, -math.inf, 0.0]
    b = wire.decode(wire.encode(RUN, "w", 1, ["x"], [0] * 4, [0, 1, 2, 3], None, values))
    assert math.isnan(b.value[0]) and b.value[1] == math.inf and b.value[2] == -math.inf


def test_garbage_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        wire.decode(b"\x0a\xff\xff\xff\xff\x0f")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(run_id="not-a-uuid"), "not a run id"),
        (dict(seq=0), "seq must count"),
        (dict(keys=["bad key!"], key_index=[0]), "keys are 1-250 characters"),
        (dict(keys=["x" * 251], key_index=[0]), "keys are 1-250 characters"),
        (dict(key_index=[0, 0]), "key_index has 2 entries but value has 1"),
        (dict(step=[1, 2]), "step has 2 entries"),
        (dict(timestamp_ms=[1, 2]), "timestamp_ms has 2 entries"),
        (dict(key_index=[5]), "key_index refers to key 5"),
        (dict(writer_id="w" * 251), "writer_id is 251 characters"),
    ],
)
def test_validation_names_the_field_and_the_limit(change: dict, message: str) -> None:
    s = dict(run_id=RUN, writer_id="w", seq=1, keys=["x"], key_index=[0], step=[1], timestamp_ms=[1], value=[1.0])
    s.update(change)
    data = wire.encode(**s)
    with pytest.raises(InvalidArgument, match=message):
        wire.validate(wire.decode(data), len(data), set())


def test_points_and_bytes_limits() -> None:
    n = wire.MAX_POINTS + 1
    data = wire.encode(RUN, "w", 1, ["x"], np.zeros(n), None, None, np.zeros(n))
    with pytest.raises(InvalidArgument, match="100,000 points per batch"):
        wire.validate(wire.decode(data), len(data), set())
    with pytest.raises(InvalidArgument, match="4 MiB"):
        wire.validate(wire.decode(data), wire.MAX_BATCH_BYTES + 1, set())

"""Bytes that are not the message a method expects get INVALID_ARGUMENT and one short log line
(rate-limited), never UNKNOWN, INTERNAL or a traceback; the server goes on serving and storing."""

from __future__ import annotations

import random

import grpc
import pytest

import runstream
from runstream.wire.proto import admin_pb2, artifacts_pb2, query_pb2, registry_pb2, tracking_pb2

SERVICES = [
    (m, service)
    for m in (tracking_pb2, query_pb2, registry_pb2, artifacts_pb2, admin_pb2)
    for service in m.DESCRIPTOR.services_by_name.values()
]
# Field 1 as a length-delimited value that claims 2^35 bytes: no parser can read it.
TRUNCATED = b"\x0a\xff\xff\xff\xff\x0f"


def _call(channel: grpc.Channel, service, method, data: bytes) -> grpc.StatusCode:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
            list(call(iter([data]), timeout=10))
        elif method.server_streaming:
            call = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            list(call(data, timeout=10))
        else:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            call(data, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _methods():
    return [(service, method) for _, service in SERVICES for method in service.methods]


@pytest.fixture(scope="module")
def hostile_server(make_module_server):
    return make_module_server()


@pytest.mark.parametrize(("service", "method"), _methods(), ids=lambda x: getattr(x, "name", ""))
def test_an_undecodable_request_is_invalid_argument(hostile_server, service, method) -> None:
    with grpc.insecure_channel(hostile_server.target) as channel:
        code = _call(channel, service, method, TRUNCATED)
    if method.client_streaming:  # StreamMetrics answers each batch with an ack carrying the code
        assert code == grpc.StatusCode.OK
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_random_requests_never_break_the_server(hostile_server) -> None:
    rng = random.Random(1414)
    methods = [m for m in _methods() if not m[1].client_streaming]
    seen = {}
    with grpc.insecure_channel(hostile_server.target) as channel:
        for _ in range(600):
            service, method = rng.choice(methods)
            data = rng.randbytes(rng.randint(1, 200))
            code = _call(channel, service, method, data)
            seen[code] = seen.get(code, 0) + 1
    assert grpc.StatusCode.UNKNOWN not in seen and grpc.StatusCode.INTERNAL not in seen, seen
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 300
    output = "".join(hostile_server.output)
    assert "Traceback" not in output
    refusals = output.count("INVALID_ARGUMENT")
    assert 0 < refusals <= 100, refusals  # rate-limited: 20 a window, then a count
    # Still serving, and storing.
    with runstream.Client(hostile_server.target) as client:
        run = client.start_run("hostile", "after", record_source=False)
        for step in range(100):
            run.log_metrics({"loss": step * 1.0}, step=step)
        run.end()
    assert hostile_server.wait_points(run.run_id, 100) == 100

"""Bytes that are not the message a method expects get INVALID_ARGUMENT and one short log line
(rate-limited), never UNKNOWN, INTERNAL or a traceback; the server goes on serving and storing."""

from __future__ import annotations

import random
import time

import grpc
import pytest

import runstream
from runstream.wire import batch as wire
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
    assert 0 < refusals <= 150, refusals  # rate-limited (20 per 10 s): far fewer lines than the 654 refusals
    # Still serving, and storing.
    with runstream.Client(hostile_server.target) as client:
        run = client.start_run("hostile", "after", record_source=False)
        for step in range(100):
            run.log_metrics({"loss": step * 1.0}, step=step)
        run.end()
    assert hostile_server.wait_points(run.run_id, 100) == 100


def _invalid(call) -> str:
    with pytest.raises(runstream.InvalidArgument) as err:
        call()
    return str(err.value)


def test_filters_past_their_limits_and_bad_patterns_are_invalid_argument(hostile_server) -> None:
    q = runstream.QueryClient(hostile_server.target)
    with runstream.Client(hostile_server.target) as client:
        client.create_run("limits", "one")
    deep = "(" * 2_000 + "metrics.a > 1" + ")" * 2_000
    assert "nest deeper than 32" in _invalid(lambda: q.search_runs([], deep))
    many = " or ".join(f"metrics.a > {i}" for i in range(20_000))
    assert "characters; the limit is 20,000" in _invalid(lambda: q.search_runs([], many))
    terms = " or ".join(f"metrics.a > {i}" for i in range(300))
    assert "more than 200 comparisons" in _invalid(lambda: q.search_runs([], terms))
    assert "ends with an escape" in _invalid(lambda: q.list_experiments(name_like="vision\\"))
    with runstream.Client(hostile_server.target) as client:
        assert "ends with an escape" in _invalid(lambda: client.registry.search_registered_models(name_like="m\\"))
    assert len(q.list_experiments(name_like="lim%\\\\").experiments) == 0  # an escaped backslash is fine
    assert "order_by has 11 clauses" in _invalid(lambda: q.search_runs([], order_by=["metrics.a"] * 11))


def test_page_tokens_are_signed_and_bound_to_their_query(hostile_server, make_server) -> None:
    q = runstream.QueryClient(hostile_server.target)
    with runstream.Client(hostile_server.target) as client:
        for i in range(5):
            client.create_run("tokens", f"run{i}")
        client.create_run("tokens-too", "another experiment: ListExperiments has a second page")
    first = q.search_runs([], max_results=2)
    assert first.next_page_token
    assert len(q.search_runs([], max_results=2, page_token=first.next_page_token).runs) == 2
    body, _, sig = first.next_page_token.partition(".")

    def changed(text: str, at: int) -> str:  # another character where every bit counts
        return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1 :]

    forged = [
        changed(body, len(body) // 2) + "." + sig,  # another position
        body + "." + changed(sig, len(sig) // 2),  # another signature
        body[:-1] + ("A" if body[-1] != "A" else "B") + "." + sig,  # the same bytes spelled otherwise
        body,
        "garbage!",
        "x" * 5_000,
    ]
    for token in forged:
        assert "not one this server gave out" in _invalid(
            lambda t=token: q.search_runs([], max_results=2, page_token=t)
        )
    assert "another search" in _invalid(
        lambda: q.search_runs([], "metrics.a > 0", max_results=2, page_token=first.next_page_token)
    )
    # Another installation (another database, so another key) does not take this one's tokens.
    other = runstream.QueryClient(make_server().target)
    assert "not one this server gave out" in _invalid(
        lambda: other.search_runs([], max_results=2, page_token=first.next_page_token)
    )
    # Every listing that pages signs its tokens.
    with runstream.Client(hostile_server.target) as client:
        stub = client.channel.unary_unary(
            "/runstream.v1.TrackingService/ListExperiments",
            request_serializer=tracking_pb2.ListExperimentsRequest.SerializeToString,
            response_deserializer=tracking_pb2.ListExperimentsResponse.FromString,
        )
        page = stub(tracking_pb2.ListExperimentsRequest(max_results=1), timeout=10)
        assert page.next_page_token and not page.next_page_token.isdigit()
        with pytest.raises(grpc.RpcError) as err:
            stub(tracking_pb2.ListExperimentsRequest(max_results=1, page_token="2"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_internal_error_says_nothing_of_the_servers_insides() -> None:
    from runstream.server.rpc import status_for

    code, message = status_for(KeyError("SELECT secret FROM server_secrets"))
    assert code == grpc.StatusCode.INTERNAL
    assert "server_secrets" not in message and "KeyError" not in message and "server log" in message


def _mutations(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        if kind == 0 and out:  # flip a byte
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif kind == 1 and out:  # cut
            del out[rng.randrange(len(out)) :]
        elif kind == 2:  # insert
            pos = rng.randrange(len(out) + 1)
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:  # a large or negative varint where one is expected
            out += bytes([0x18]) + b"\xff" * 9 + b"\x01"
    return bytes(out)


def test_mutated_valid_messages_to_every_method_never_break_the_server(hostile_server) -> None:
    with runstream.Client(hostile_server.target) as client:
        run_id = client.create_run("fuzz", "target").run_id
    valid = [
        tracking_pb2.GetRunRequest(run_id=run_id).SerializeToString(),
        tracking_pb2.LogParamsRequest(run_id=run_id, params={"lr": "0.1"}).SerializeToString(),
        query_pb2.SearchRunsRequest(filter="metrics.a > 1 and params.lr = '0.1'", max_results=5).SerializeToString(),
        query_pb2.GetMetricHistoryRequest(run_id=run_id, key="loss", max_points=10).SerializeToString(),
        registry_pb2.ModelRef(name="m").SerializeToString(),
        artifacts_pb2.ListArtifactsRequest(run_id=run_id).SerializeToString(),
        admin_pb2.ListDeadLettersRequest(max_results=3).SerializeToString(),
        wire.encode(run_id, "fuzz", 1, ["loss"], [0, 0], [1, 2], [0, 0], [1.0, 2.0]),
    ]
    rng = random.Random(2026)
    methods = [m for m in _methods() if not m[1].client_streaming]
    seen: dict[grpc.StatusCode, int] = {}
    sent = 0
    with grpc.insecure_channel(hostile_server.target) as channel:
        for service, method in methods:
            for _ in range(25):
                code = _call(channel, service, method, _mutations(rng, rng.choice(valid)))
                seen[code] = seen.get(code, 0) + 1
                sent += 1
    assert sent == 25 * len(methods) >= 1_000
    assert grpc.StatusCode.UNKNOWN not in seen and grpc.StatusCode.INTERNAL not in seen, seen
    assert "Traceback" not in "".join(hostile_server.output)
    with runstream.Client(hostile_server.target) as client:
        run = client.attach(run_id, writer_id="after-fuzz")
        for step in range(500):
            run.log_metrics({"loss": float(step)}, step=step)
        run.end()
    deadline = time.monotonic() + 60  # acked is in Redis; the loader may still be starting
    while (
        len(hostile_server.stored(run_id).get(("loss", "after-fuzz"), ([],))[0]) < 500 and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    stored = hostile_server.stored(run_id)
    assert stored[("loss", "after-fuzz")][0].tolist() == list(range(500))

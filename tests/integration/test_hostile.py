"""Bytes that are not the message a method expects get INVALID_ARGUMENT and one short log line
(rate-limited), never UNKNOWN, INTERNAL or a traceback; the server goes on serving and storing."""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
import urllib3
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from urllib3 import encode_multipart_formdata

import runstream
from runstream.server.main import SERVICE_MODULES
from runstream.server.web.api import unary_methods
from runstream.server.web.mlflow import ENDPOINTS as MLFLOW_ENDPOINTS
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
    from runstream.server.rpc.grpc import status_for

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
        # A fresh run: the fuzz may have deleted, purged or rewound its target, as asked.
        run = client.start_run("fuzz", "after", writer_id="after-fuzz", record_source=False)
        run_id = run.run_id
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


# ------------------------------------------------------------------ the HTTP port

HTTP_CAP = 256 * 1024  # http_server's --max-request-body: an oversized body stays cheap to send
HTTP_TIMEOUT_S = 3  # its --http-request-timeout
http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=30))


@pytest.fixture(scope="module")
def http_server(make_module_server):
    return make_module_server("--max-request-body", "256KiB", "--http-request-timeout", str(HTTP_TIMEOUT_S))


def test_a_header_over_8_kib_is_400_and_one_log_line(http_server) -> None:
    """First of the module's HTTP tests: the refusals it counts are not held back by earlier ones."""
    start = len(http_server.output)
    for _ in range(30):
        reply = http.request(
            "GET", _url(http_server, "/api/2.0/mlflow/experiments/search"), headers={"X-Big": "a" * 9_000}
        )
        assert reply.status == 400
    time.sleep(0.5)
    new = http_server.output[start:]
    assert "Traceback" not in "".join(new)
    refused = [line for line in new if "8190 bytes" in line]
    assert 1 <= len(refused) <= 20, new  # rate-limited like every refusal


def _url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def _mlflow(server, path: str, body: Any, method: str = "POST", headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.request(
        method,
        _url(server, f"/api/2.0/mlflow/{path}"),
        body=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _new_run(server, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    made = _mlflow(server, "runs/create", {"experiment_id": "0", "run_name": "hostile"}, headers=headers)
    assert made.status == 200, made.data
    return str(made.json()["run"]["info"]["run_id"])


def _read_run(server, run_id: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    got = http.request("GET", _url(server, f"/api/2.0/mlflow/runs/get?run_id={run_id}"), headers=headers)
    assert got.status == 200, got.data
    data = got.json()["run"]["data"]
    return {
        "params": {p["key"]: p["value"] for p in data.get("params", [])},
        "tags": {t["key"]: t["value"] for t in data.get("tags", []) if not t["key"].startswith("mlflow.")},
        "metrics": {m["key"] for m in data.get("metrics", [])},
        "stage": got.json()["run"]["info"]["lifecycle_stage"],
    }


GOOD_METRIC = {"key": "good", "value": 1.0, "timestamp": 1_700_000_000_000, "step": 1}
BAD_METRICS = {
    "key": {**GOOD_METRIC, "key": "bad key!"},
    "value": {**GOOD_METRIC, "value": "abc"},
    "fractional step": {**GOOD_METRIC, "step": 1.5},
    "step past int64": {**GOOD_METRIC, "step": 2**63},
    "timestamp past int64": {**GOOD_METRIC, "timestamp": 2**64},
    "not an object": [1],
}


@pytest.mark.parametrize("bad", list(BAD_METRICS), ids=list(BAD_METRICS))
def test_a_refused_mlflow_log_batch_changes_nothing(http_server, bad: str) -> None:
    """Issue 33, item 5: valid params and tags beside one bad metric were stored, and 400 answered."""
    run_id = _new_run(http_server)
    assert _mlflow(http_server, "runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.1"}).status == 200
    before = _read_run(http_server, run_id)
    batch = {
        "run_id": run_id,
        "params": [{"key": "fresh", "value": "1"}],
        "tags": [{"key": "team", "value": "vision"}],
        "metrics": [GOOD_METRIC, BAD_METRICS[bad]],
    }
    refused = _mlflow(http_server, "runs/log-batch", batch)
    assert refused.status == 400 and refused.json()["error_code"] == "INVALID_PARAMETER_VALUE", refused.data
    assert _read_run(http_server, run_id) == before


def test_a_log_batch_with_a_param_logged_before_with_another_value_changes_nothing(http_server) -> None:
    run_id = _new_run(http_server)
    assert _mlflow(http_server, "runs/log-parameter", {"run_id": run_id, "key": "lr", "value": "0.1"}).status == 200
    batch = {
        "run_id": run_id,
        "params": [{"key": "fresh", "value": "1"}, {"key": "lr", "value": "0.2"}],
        "tags": [{"key": "team", "value": "vision"}],
        "metrics": [GOOD_METRIC],
    }
    refused = _mlflow(http_server, "runs/log-batch", batch)
    assert refused.status == 400 and refused.json()["error_code"] == "RESOURCE_ALREADY_EXISTS", refused.data
    assert "0.1" in refused.json()["message"]
    # The same through the JSON API (LogParams): the new param is not kept beside the refusal.
    reply = http.request(
        "POST",
        _url(http_server, "/api/v1/runstream.v1.TrackingService/LogParams"),
        body=json.dumps({"run_id": run_id, "params": {"also-fresh": "1", "lr": "0.3"}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 409 and reply.json()["code"] == "ALREADY_EXISTS"
    assert _mlflow(http_server, "runs/log-metric", {**GOOD_METRIC, "key": "after", "run_id": run_id}).status == 200
    assert _read_run(http_server, run_id) == {
        "params": {"lr": "0.1"},
        "tags": {},
        "metrics": {"after"},
        "stage": "active",
    }


# Issue 33, item 11: each of these answered 500.
HOSTILE_MLFLOW = {
    "nested arrays": ("runs/log-batch", b"[" * 5_000 + b"]" * 5_000),
    "nested objects": ("runs/log-batch", b'{"metrics":' * 3_000 + b"1" + b"}" * 3_000),
    "nested under a field": ("runs/search", b'{"experiment_ids":' + b"[" * 1_000 + b"]" * 1_000 + b"}"),
    "step past int64": ("runs/log-metric", {"key": "a", "value": 1, "timestamp": 1, "step": 2**63}),
    "timestamp past int64": ("runs/log-batch", {"metrics": [{"key": "a", "value": 1, "timestamp": 2**63, "step": 1}]}),
    "start_time past int64": ("runs/create", {"experiment_id": "0", "start_time": 2**64}),
    "end_time past int64": ("runs/update", {"end_time": -(2**63) - 1}),
    "params not a list": ("runs/log-batch", {"params": 5}),
    "metrics not a list": ("runs/log-batch", {"metrics": 5}),
    "tags not a list": ("runs/log-batch", {"tags": "abc"}),
    "experiment_ids not a list": ("runs/search", {"experiment_ids": 5}),
    "order_by of numbers": ("runs/search", {"experiment_ids": ["0"], "order_by": [1]}),
    "order_by a number": ("runs/search", {"experiment_ids": ["0"], "order_by": 5}),
    "datasets not a list": ("runs/log-inputs", {"datasets": 5}),
    "logged model experiment_ids": ("logged-models/search", {"experiment_ids": 5}),
    "fractional step": ("runs/log-metric", {"key": "a", "value": 1, "timestamp": 1, "step": 1.5}),
    "a list as a param value": ("runs/log-parameter", {"key": "p", "value": [1]}),
    "a number as a tag value": ("runs/set-tag", {"key": "t", "value": 5}),
    "tags of numbers": ("experiments/create", {"name": "hostile-tags", "tags": 5}),
    "a list as a name": ("experiments/create", {"name": ["x"]}),
    "a value past a double": (
        "runs/log-metric",
        b'{"key": "a", "value": 1' + b"0" * 400 + b', "timestamp": 1, "step": 1, "run_id": "RUN"}',
    ),
    "deep model_json": ("runs/log-model", {"model_json": "[" * 5_000 + "]" * 5_000}),
}


@pytest.mark.parametrize("case", list(HOSTILE_MLFLOW), ids=list(HOSTILE_MLFLOW))
def test_hostile_mlflow_requests_are_400_in_mlflows_shape(http_server, case: str) -> None:
    run_id = _new_run(http_server)
    path, body = HOSTILE_MLFLOW[case]
    body = body.replace(b"RUN", run_id.encode()) if isinstance(body, bytes) else {"run_id": run_id, **body}
    reply = _mlflow(http_server, path, body)
    assert reply.status == 400, (reply.status, reply.data[:300])
    assert reply.json()["error_code"] == "INVALID_PARAMETER_VALUE" and reply.json()["message"]
    assert _read_run(http_server, run_id)["params"] == {} and _read_run(http_server, run_id)["tags"] == {}


def _hwm_kib(server) -> int:
    """The server process's peak resident memory so far."""
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def _chunks(total: int, block: int = 1 << 20) -> Any:
    sent = 0
    while sent < total:
        yield b"[" + b"1," * (block // 2 - 1) + b"1]" if sent == 0 else b" " * block
        sent += block


def test_bodies_are_capped_before_they_are_read(http_server) -> None:
    """Issue 33, item 9: an 89 MiB log-batch took the server from 85 to 977 MiB, and a chunked body
    without Content-Length skipped the cap of /api/v1."""
    run_id = _new_run(http_server)
    before = _hwm_kib(http_server)
    metrics = [{"key": f"k{i % 900}", "value": i, "timestamp": i, "step": i} for i in range(600_000)]
    big = json.dumps({"run_id": run_id, "metrics": metrics}).encode()
    assert len(big) > 40 * 2**20
    reply = _mlflow(http_server, "runs/log-batch", big)
    assert reply.status == 413 and reply.json()["error_code"] == "RESOURCE_EXHAUSTED", reply.data[:300]
    assert "262,144" in reply.json()["message"]
    for path, headers in (
        ("/api/v1/runstream.v1.QueryService/SearchRuns", {"Content-Type": "application/json"}),
        ("/api/2.0/mlflow/runs/search", {"Content-Type": "application/json"}),
        ("/login", {"Content-Type": "application/x-www-form-urlencoded"}),
    ):
        chunked = http.request("POST", _url(http_server, path), body=_chunks(64 * 2**20), headers=headers, chunked=True)
        assert chunked.status == 413, (path, chunked.status, chunked.data[:300])
    grown = _hwm_kib(http_server) - before
    assert grown < 30 * 1024, f"the server grew by {grown / 1024:.0f} MiB"
    assert _mlflow(http_server, "runs/log-metric", {**GOOD_METRIC, "run_id": run_id}).status == 200


LONG = "a" * 7_000


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/ui/",
        "/ui/a/",
        "/api/v1/",
        "/api/v1/runstream.v1.QueryService/",
        "/api/2.0/mlflow/",
        "/ajax-api/2.0/mlflow/",
        "/api/2.0/mlflow-artifacts/artifacts/",
        "/api/3.0/mlflow/",
        "/objects/",
        "/login/",
        "/metrics/",
    ],
)
def test_a_long_path_is_a_4xx_never_a_500(http_server, path: str) -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        reply = http.request(
            method, _url(http_server, path + LONG), body=b"{}", headers={"Content-Type": "application/json"}
        )
        assert 400 <= reply.status < 500, (method, path, reply.status, reply.data[:200])
    assert "Traceback" not in "".join(http_server.output)


def test_a_client_sending_its_headers_byte_by_byte_is_cut_off(http_server) -> None:
    """Slowloris: a request whose headers never end holds the connection only for a bounded time."""
    with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=10) as sock:
        sock.sendall(b"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HTTP_TIMEOUT_S + 10:
            try:
                sock.sendall(b"X")
                sock.settimeout(0.5)
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset by the server
                closed = True
                break
    assert closed, "the server kept a half-sent request open"
    assert time.monotonic() - started < HTTP_TIMEOUT_S + 3


def test_a_client_gone_mid_body_is_said_as_such_not_as_the_database_away(make_server) -> None:
    """A client that closes after part of its body is one line about the client: an OSError
    there is not PostgreSQL going away (UNAVAILABLE would mislead alerts). A server of its own:
    refusals are logged at most 20 per 10 s."""
    http_server = make_server()
    paths = ["/api/v1/runstream.v1.TrackingService/GetRun", "/api/2.0/mlflow/runs/search"]
    paths.append(f"/api/2.0/mlflow-artifacts/artifacts/0/{_new_run(http_server)}/artifacts/gone.bin")
    for method, path in zip(("POST", "POST", "PUT"), paths, strict=True):
        before = len(http_server.output)
        with socket.create_connection(("127.0.0.1", http_server.http_port), timeout=10) as sock:
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                'Content-Length: 1000\r\n\r\n{"run'.encode()
            )
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            "closed the connection" in line for line in http_server.output[before:]
        ):
            time.sleep(0.1)
        said = "".join(http_server.output[before:])
        assert "closed the connection before sending the whole body" in said, (path, said)
        assert "database is unreachable" not in said and "Traceback" not in said, said


# ------------------------------------------------------------------ the sign-in cookie


@dataclass
class CookieWorld:
    server: Any
    admin: str  # token text
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module")
def cookie_world(make_module_server, tmp_path_factory) -> CookieWorld:
    data_dir = tmp_path_factory.mktemp("cookie-data")
    server = make_module_server("--auth", "--data-dir", str(data_dir))
    admin = (data_dir / "admin-token").read_text().strip()
    with runstream.Client(server.target, token=admin) as client:
        run = client.start_run("cookie/main", params={"lr": "0.1"}, record_source=False)
        run.log_metric("loss", 0.5, step=1)
        run.end()
    assert server.wait_points(run.run_id, 1) == 1
    with runstream.Client(server.target, token=admin) as client:
        experiment_id = client.get_run(run.run_id).experiment_id
    return CookieWorld(server, admin, run.run_id, experiment_id)


def _jar(world: CookieWorld) -> str:
    signed = http.request(
        "POST",
        _url(world.server, "/login"),
        body=f"token={world.admin}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        redirect=False,
    )
    assert signed.status == 303, signed.data
    return signed.headers["set-cookie"].split(";", 1)[0]


SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
ELSEWHERE = [
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "null"},
]


def test_the_cookie_signs_only_the_uis_own_calls(cookie_world: CookieWorld) -> None:
    """Issue 33, item 7: a GET with the cookie deleted a run, and text/plain or form POSTs set tags,
    from a page on another port of the same host."""
    world, jar = cookie_world, _jar(cookie_world)
    base = "/api/2.0/mlflow/runs"
    deleting = http.request("GET", _url(world.server, f"{base}/delete?run_id={world.run_id}"), headers={"Cookie": jar})
    assert deleting.status in (401, 405), deleting.data
    tag = json.dumps({"run_id": world.run_id, "key": "via", "value": "cookie"}).encode()
    form = f"run_id={world.run_id}&key=via&value=cookie".encode()
    for content_type, data in (
        ("text/plain", tag),
        ("application/x-www-form-urlencoded", form),
        ("application/json", tag),
    ):
        for headers in ({}, SAME_ORIGIN):
            reply = http.request(
                "POST",
                _url(world.server, f"{base}/set-tag"),
                body=data,
                headers={"Cookie": jar, "Content-Type": content_type, **headers},
            )
            assert reply.status in (400, 401), (content_type, reply.status, reply.data)
    assert _read_run(world.server, world.run_id, world.admin) == {
        "params": {"lr": "0.1"},
        "tags": {},
        "metrics": {"loss"},
        "stage": "active",
    }
    # The UI's own calls: JSON POSTs to /api/v1 and the live tail, from this origin only.
    whoami = "/api/v1/runstream.v1.AdminService/WhoAmI"
    for headers in ({}, SAME_ORIGIN, {"Origin": f"http://127.0.0.1:{world.server.http_port}"}):
        reply = http.request(
            "POST",
            _url(world.server, whoami),
            body=b"{}",
            headers={"Cookie": jar, "Content-Type": "application/json", **headers},
        )
        assert reply.status == 200 and reply.json()["name"] == "admin", (headers, reply.data)
    tail = f"/api/v1/tail?run_id={world.run_id}&from_step=0"
    assert http.request("GET", _url(world.server, tail), headers={"Cookie": jar, **SAME_ORIGIN}).status == 200
    for headers in ELSEWHERE:
        reply = http.request(
            "POST",
            _url(world.server, whoami),
            body=b"{}",
            headers={"Cookie": jar, "Content-Type": "application/json", **headers},
        )
        assert reply.status == 401, (headers, reply.data)
        assert http.request("GET", _url(world.server, tail), headers={"Cookie": jar, **headers}).status == 401
        signed = http.request(
            "POST",
            _url(world.server, "/login"),
            body=f"token={world.admin}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
            redirect=False,
        )
        assert signed.status == 403 and "set-cookie" not in signed.headers, headers


def test_without_auth_a_simple_request_changes_nothing_either(http_server) -> None:
    """With auth off there is no cookie to steal, but a page on another port could still send
    simple requests: GET and non-JSON bodies change nothing."""
    run_id = _new_run(http_server)
    deleting = http.request("GET", _url(http_server, f"/api/2.0/mlflow/runs/delete?run_id={run_id}"))
    assert deleting.status == 405 and deleting.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert "POST" in deleting.headers["Allow"]
    tag = json.dumps({"run_id": run_id, "key": "via", "value": "text"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        reply = http.request("POST", _url(http_server, "/api/2.0/mlflow/runs/set-tag"), body=tag, headers=headers)
        assert reply.status == 400 and "application/json" in reply.json()["message"], (content_type, reply.data)
    assert _read_run(http_server, run_id)["tags"] == {} and _read_run(http_server, run_id)["stage"] == "active"


# ------------------------------------------------------------------ every route, generated from the route tables

API_ROUTES = sorted(unary_methods(SERVICE_MODULES), key=lambda r: r[2])  # (service, method, path)
MLFLOW_PATHS = sorted({(e.prefix, e.pattern) for e in MLFLOW_ENDPOINTS if not e.public})  # public: no token needed
INTS = {F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_SINT32, F.TYPE_SINT64}
INTS |= {F.TYPE_FIXED32, F.TYPE_FIXED64, F.TYPE_SFIXED32, F.TYPE_SFIXED64}
UNDECODABLE = [b"\xff\xfe\x00{", b'{"a": "\xff\xfe"}', b"{", b"[]", b"5", b"null", b'"x"']
NESTED = [b"[" * 5_000 + b"]" * 5_000, b'{"a":' * 3_000 + b"1" + b"}" * 3_000]
OVERSIZED = b'{"x": "' + b"a" * HTTP_CAP + b'"}'
QUERY_VALUES: list[Any] = ["abc", "1.5", str(2**64), str(-(2**63) - 1), "true", "", "x" * 3_000, ["a", "b"], "\x00"]


def _hostile_values(field: Any) -> list[Any]:
    """JSON values of the wrong type, or out of range, for a protobuf field (ours or MLflow's)."""
    if _repeated(field):
        values: list[Any] = [5, {"a": 1}, [5], [[1]], [None], [{"a": [1]}]]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for nested in field.message_type.fields:  # one element with one bad field
                values += [[{nested.name: v}] for v in _scalar_hostile(nested)[:3]]
        return values
    if field.type == F.TYPE_MESSAGE:
        return [5, "x", [1], {"a": [[[]]]}]
    return _scalar_hostile(field)


def _scalar_hostile(field: Any) -> list[Any]:
    if field.type == F.TYPE_MESSAGE:
        return [5, "x", [1]]
    if field.type in INTS:
        return ["abc", 1.5, True, 2**63, -(2**63) - 1, 2**64, 10**30, ["1"], {"a": 1}]
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return ["abc", True, ["1"], {}, 10**400]
    if field.type == F.TYPE_BOOL:
        return ["maybe", 5, ["true"], {}]
    if field.type == F.TYPE_ENUM:
        return ["NOT_A_VALUE", 10**6, [], {}]
    return [5, 1.5, True, ["a"], {"a": "b"}, 2**64]  # strings and bytes


def _repeated(field: Any) -> bool:
    return bool(field.is_repeated if hasattr(field, "is_repeated") else field.label == F.LABEL_REPEATED)


def _mlflow_schemas() -> dict[tuple[str, str], Any]:
    """MLflow's request message of each (HTTP method, path) its protos declare, paths with their
    variables as *."""
    from mlflow.protos import databricks_pb2, mlflow_artifacts_pb2, model_registry_pb2, service_pb2

    found = {}
    for module in (service_pb2, model_registry_pb2, mlflow_artifacts_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for ep in method.GetOptions().Extensions[databricks_pb2.rpc].endpoints:
                    found[(ep.method, _shape(ep.path))] = method.input_type
    return found


def _shape(path: str) -> str:
    return re.sub(r"<[^>]*>|\{[^}]*\}", "*", path)


@dataclass
class Target:
    """Things of one server that requests can name."""

    run_id: str
    experiment_id: str

    def values(self) -> dict[str, Any]:
        run_path = f"{self.experiment_id}/{self.run_id}/artifacts"
        return {
            "run_id": self.run_id,
            "run_uuid": self.run_id,
            "source_run_id": self.run_id,
            "run_ids": [self.run_id],
            "experiment_id": self.experiment_id,
            "experiment_ids": [self.experiment_id],
            "experiment_name": "hostile",
            "name": "hostile-model",
            "new_name": "hostile-model-2",
            "key": "loss",
            "metric_key": "loss",
            "value": "1",
            "version": "1",
            "alias": "champion",
            "stage": "Staging",
            "source": f"runs:/{self.run_id}/model",
            "model_json": "{}",
            "upload_id": "00000000-0000-0000-0000-000000000000",
            "path": run_path,
            "path_in_url": run_path,
            "model_id": "m-" + "0" * 32,
            "tag_key": "k",
            "timeout_ms": 1,  # WaitCommitted: a valid request need not wait long
            "metrics": [{"key": "loss", "value": 1.0, "timestamp": 1, "step": 7}],
            "params": [{"key": "hostile", "value": "1"}],
            "tags": [{"key": "hostile", "value": "1"}],
        }

    def mlflow_url(self, prefix: str, pattern: str) -> str:
        values = self.values()
        path = re.sub(
            r"\{(\w+)(?::path)?\}", lambda m: str(values[m[1]]) + ("/x.txt" if m[1] == "path" else ""), pattern
        )
        version, api = (prefix.split("/")[0], prefix.split("/")[1]) if "/" in prefix else ("2.0", prefix)
        return f"/api/{version}/{api}/{path}"


def _api_request(target: Target, method: Any) -> bytes:
    """A plausible JSON request of one of our methods, naming the target's run and experiment."""
    if method.input_type.name == "MetricBatch":
        data = wire.encode(target.run_id, "hostile", 1, ["loss"], [0], [9], [0], [1.0])
        message = tracking_pb2.MetricBatch.FromString(data)
    else:
        message = message_factory.GetMessageClass(method.input_type)()
        for name, value in target.values().items():
            field = method.input_type.fields_by_name.get(name)
            if field is None or field.type == F.TYPE_MESSAGE:
                continue
            if _repeated(field) and field.type == F.TYPE_STRING:
                getattr(message, name).extend(value if isinstance(value, list) else [value])
            elif not _repeated(field):
                with contextlib.suppress(TypeError, ValueError):
                    setattr(message, name, int(value) if field.type in INTS else value)
    return json_format.MessageToJson(message, preserving_proto_field_name=True).encode()


@pytest.fixture(scope="module")
def http_target(http_server) -> Target:
    run_id = _new_run(http_server)
    return Target(run_id, _experiment_of(http_server, run_id))


def _experiment_of(server, run_id: str) -> str:
    got = http.request("GET", _url(server, f"/api/2.0/mlflow/runs/get?run_id={run_id}"))
    return str(got.json()["run"]["info"]["experiment_id"])


class Refusals:
    """Collects what a route answered that it should not have: a 5xx, or a 4xx without a clear message."""

    def __init__(self) -> None:
        self.wrong: list[str] = []
        self.sent = 0

    def check(self, what: str, reply: Any, shape: str) -> None:
        self.sent += 1
        waited = reply.status == 504 and b"DEADLINE_EXCEEDED" in reply.data  # WaitCommitted's own answer
        if reply.status >= 500 and not waited:
            self.wrong.append(f"{what}: {reply.status} {reply.data[:200]!r}")
        elif reply.status >= 400:
            try:
                data = json.loads(reply.data) if shape != "html" else None
            except ValueError:
                data = {}
            clear = (
                bool(reply.data.strip())
                if shape == "html"
                else isinstance(data, dict) and bool(data.get("message")) and bool(data.get(shape))
            )
            if not clear:
                self.wrong.append(f"{what}: {reply.status} without a clear message: {reply.data[:200]!r}")

    def assert_none(self) -> None:
        assert not self.wrong, f"{len(self.wrong)} of {self.sent}:\n" + "\n".join(self.wrong[:15])


def _send(server, method: str, path: str, data: bytes | None = None, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {"Content-Type": "application/json"})
    return http.request(method, _url(server, path), body=data, headers=headers, redirect=False, **kwargs)


def _query(values: dict[str, Any]) -> list[tuple[str, str]]:
    """A query string's fields; a list is the name given once per item."""
    return [(k, item) for k, v in values.items() for item in (v if isinstance(v, list) else [v])]


def _bodies() -> list[tuple[str, bytes]]:
    return [("undecodable", b) for b in UNDECODABLE] + [("nested", b) for b in NESTED] + [("oversized", OVERSIZED)]


@pytest.mark.parametrize("route", API_ROUTES, ids=[r[2].rsplit("/", 2)[-1] for r in API_ROUTES])
def test_every_api_route_refuses_hostile_bodies_with_a_clear_4xx(http_server, http_target: Target, route) -> None:
    _, method, path = route
    seen = Refusals()
    for kind, data in _bodies():
        reply = _send(http_server, "POST", path, data)
        seen.check(f"{kind} {data[:30]!r}", reply, "code")
        if kind == "oversized":
            assert reply.status == 413, reply.data[:200]
    base = json.loads(_api_request(http_target, method))
    for field in method.input_type.fields:
        for value in _hostile_values(field):
            reply = _send(http_server, "POST", path, json.dumps({**base, field.name: value}).encode())
            seen.check(f"{field.name}={str(value)[:40]}", reply, "code")
    seen.assert_none()


MLFLOW_SCHEMAS: dict[tuple[str, str], Any] = {}


@pytest.mark.parametrize(
    "spec", MLFLOW_ENDPOINTS, ids=[f"{sorted(e.methods)[0]} {e.prefix}/{e.pattern}" for e in MLFLOW_ENDPOINTS]
)
def test_every_mlflow_endpoint_refuses_hostile_requests_with_a_clear_4xx(
    http_server, http_target: Target, spec
) -> None:
    MLFLOW_SCHEMAS.update(MLFLOW_SCHEMAS or _mlflow_schemas())
    url = http_target.mlflow_url(spec.prefix, spec.pattern)
    seen = Refusals()
    base = http_target.values()
    for method in sorted(spec.methods):
        schema = MLFLOW_SCHEMAS.get((method, _shape(f"/{spec.prefix.split('/')[-1]}/{spec.pattern}")))
        fields = list(schema.fields) if schema is not None else []
        if method == "PUT":  # an artifact's bytes, streamed to the store
            seen.check("bytes", _send(http_server, "PUT", url, b"\xff\xfe" * 1000, headers={}), "error_code")
            continue
        if method == "GET":
            for field in fields:
                for value in QUERY_VALUES:
                    reply = _send(http_server, "GET", url, fields=_query({field.name: value}), headers={})
                    seen.check(f"?{field.name}={str(value)[:40]}", reply, "error_code")
            seen.check("query bytes", _send(http_server, "GET", url + "?run_id=%ff%fe&max_results=%00"), "error_code")
            continue
        for kind, data in _bodies():
            reply = _send(http_server, method, url, data)
            seen.check(f"{method} {kind} {data[:30]!r}", reply, "error_code")
            if kind == "oversized":
                assert reply.status == 413, (method, reply.data[:200])
        given = {f.name: base[f.name] for f in fields if f.name in base}
        for field in fields:
            for value in _hostile_values(field):
                reply = _send(http_server, method, url, json.dumps({**given, field.name: value}).encode())
                seen.check(f"{method} {field.name}={str(value)[:40]}", reply, "error_code")
    seen.assert_none()


def test_the_ui_login_tail_and_store_routes_refuse_hostile_requests_with_a_clear_4xx(
    http_server, http_target: Target
) -> None:
    seen = Refusals()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for kind, data in [*_bodies(), ("form", b"token=" + b"%ff" * 100), ("form", b"a=1&" * 50), ("form", b"token=x")]:
        for headers in (form, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}, {}):
            reply = _send(http_server, "POST", "/login", data, headers=headers)
            seen.check(f"/login {kind} {headers}", reply, "html")
            if kind == "oversized" and headers == form:
                assert reply.status == 413
            assert "set-cookie" not in reply.headers
            seen.check(f"/logout {kind}", _send(http_server, "POST", "/logout", data, headers=headers), "html")
        seen.check(f"POST / {kind}", _send(http_server, "POST", "/", data), "html")
    tail = "/api/v1/tail"
    for query in (
        {"run_id": "5"},
        {"run_id": http_target.run_id, "from_step": "1.5"},
        {"run_id": http_target.run_id, "from_step": str(2**64)},
        {"run_id": ["a", http_target.run_id]},
        {"run_id": http_target.run_id, "key": "\x00" * 10},
        {"run_id": http_target.run_id, "key": "k" * 5_000},
        {"run_id": "00000000-0000-0000-0000-000000000000"},
        {},
    ):
        reply = _send(http_server, "GET", tail, fields=_query(query), headers={}, timeout=urllib3.Timeout(read=5))
        seen.check(f"{tail} {str(query)[:60]}", reply, "code")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        seen.check(f"{method} {tail}", _send(http_server, method, tail, b"{}"), "html")
    for query in ("", "?e=1&s=1&h=x&u=&p=0&sig=x", "?e=99999999999999999999999&s=x", "?e=%ff"):
        for method in ("GET", "PUT"):
            reply = _send(http_server, method, "/objects/a/b" + query, b"x" * 100, headers={})
            seen.check(f"{method} /objects {query}", reply, "html")
    for path in ("/metrics", "/healthz", "/version", "/health", "/favicon.ico", "/ui/app.js"):
        for method in ("GET", "POST"):
            seen.check(f"{method} {path}", _send(http_server, method, path, OVERSIZED), "html")
    seen.assert_none()


def test_after_the_hostile_requests_the_server_serves_and_stores_and_logged_no_traceback(http_server) -> None:
    run_id = _new_run(http_server)
    metrics = [{"key": "after", "value": float(s), "timestamp": 1, "step": s} for s in range(100)]
    assert _mlflow(http_server, "runs/log-batch", {"run_id": run_id, "metrics": metrics}).status == 200
    with runstream.Client(http_server.target) as client:
        run = client.attach(run_id, writer_id="sdk")
        for step in range(100):
            run.log_metrics({"after": float(step)}, step=step)
        run.end()
    assert http_server.wait_points(run_id, 200) == 200
    output = "".join(http_server.output)
    assert "Traceback" not in output and "INTERNAL" not in output


# ------------------------------------------------------------------ the cookie on every route, generated

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
CONTENT_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None)


def _encoded(fields: dict[str, Any], content_type: str | None) -> tuple[bytes, dict[str, str]]:
    """The same request in each content type a page can send (JSON as text/plain or without a type)."""
    if content_type == "application/x-www-form-urlencoded":
        return urlencode(_query({k: v for k, v in fields.items() if not isinstance(v, list | dict)})).encode(), {
            "Content-Type": content_type
        }
    if content_type == "multipart/form-data":
        data, header = encode_multipart_formdata({k: str(v) for k, v in fields.items()})
        return data, {"Content-Type": header}
    return json.dumps(fields).encode(), {"Content-Type": content_type} if content_type else {}


def _with_cookie(
    world: CookieWorld,
    jar: str,
    method: str,
    path: str,
    fields: dict[str, Any],
    content_type: str | None,
    extra: dict[str, str] | None = None,
) -> Any:
    data, headers = _encoded(fields, content_type)
    if method == "GET":  # what an <img> or a link sends: the fields in the query string
        path += ("&" if "?" in path else "?") + urlencode(
            _query({k: v for k, v in fields.items() if not isinstance(v, dict)})
        )
    return http.request(
        method, _url(world.server, path), body=data, headers={"Cookie": jar, **headers, **(extra or {})}, redirect=False
    )


@pytest.fixture(scope="module")
def cookie_jar(cookie_world: CookieWorld) -> str:
    return _jar(cookie_world)


def _cookie_target(world: CookieWorld) -> Target:
    return Target(world.run_id, world.experiment_id)


@pytest.mark.parametrize("route", API_ROUTES, ids=[r[2].rsplit("/", 2)[-1] for r in API_ROUTES])
def test_the_cookie_on_an_api_route_signs_only_a_json_post_of_this_origin(
    cookie_world: CookieWorld, cookie_jar: str, route
) -> None:
    _, method, path = route
    fields = json.loads(_api_request(_cookie_target(cookie_world), method))
    before = cookie_world.server.fingerprint()
    for http_method in METHODS:
        for content_type in CONTENT_TYPES:
            if (http_method, content_type) == ("POST", "application/json"):
                for elsewhere in ELSEWHERE:  # the UI's own call, from another origin
                    reply = _with_cookie(cookie_world, cookie_jar, "POST", path, fields, content_type, elsewhere)
                    assert reply.status == 401, (elsewhere, reply.status, reply.data[:200])
                continue
            reply = _with_cookie(cookie_world, cookie_jar, http_method, path, fields, content_type)
            assert reply.status in (401, 405), (http_method, content_type, reply.status, reply.data[:200])
    assert cookie_world.server.fingerprint() == before, f"the cookie changed something through {path}"


@pytest.mark.parametrize("where", MLFLOW_PATHS, ids=[f"{p}/{pattern}" for p, pattern in MLFLOW_PATHS])
def test_the_cookie_signs_no_mlflow_request(cookie_world: CookieWorld, cookie_jar: str, where) -> None:
    target = _cookie_target(cookie_world)
    fields = {k: v for k, v in target.values().items() if k not in ("path", "path_in_url", "model_id", "tag_key")}
    url = target.mlflow_url(*where)
    before = cookie_world.server.fingerprint()
    for http_method in METHODS:
        for content_type in CONTENT_TYPES:
            # Even from this origin, as the UI would send it: MLflow's routes never read the cookie.
            json_post = (http_method, content_type) == ("POST", "application/json")
            for extra in ({}, SAME_ORIGIN) if json_post else ({},):
                reply = _with_cookie(cookie_world, cookie_jar, http_method, url, fields, content_type, extra)
                assert reply.status in (400, 401, 404, 405), (http_method, content_type, reply.status, reply.data[:200])
    assert cookie_world.server.fingerprint() == before, f"the cookie changed something through {url}"


def test_the_cookie_on_the_tail_login_and_logout(cookie_world: CookieWorld, cookie_jar: str) -> None:
    tail = f"/api/v1/tail?run_id={cookie_world.run_id}"
    fields = {"run_id": cookie_world.run_id}
    # GET is the UI's EventSource (no body): it changes nothing, and is signed from this origin only.
    assert _with_cookie(cookie_world, cookie_jar, "GET", tail, fields, None, SAME_ORIGIN).status == 200
    for http_method in METHODS[1:]:
        for content_type in CONTENT_TYPES:
            reply = _with_cookie(cookie_world, cookie_jar, http_method, tail, fields, content_type)
            assert reply.status == 405, (http_method, content_type, reply.status)
    for extra in ELSEWHERE:
        assert _with_cookie(cookie_world, cookie_jar, "GET", tail, fields, None, extra).status == 401
    token = {"token": cookie_world.admin}
    for http_method in METHODS:
        for content_type in CONTENT_TYPES:
            if (http_method, content_type) == ("POST", "application/x-www-form-urlencoded"):
                continue  # the sign-in form itself
            reply = _with_cookie(cookie_world, cookie_jar, http_method, "/login", token, content_type)
            assert "set-cookie" not in reply.headers, (http_method, content_type, reply.status)
            assert reply.status == 200 if http_method == "GET" else reply.status in (400, 405)
    for extra in ELSEWHERE:
        for path in ("/login", "/logout"):
            reply = _with_cookie(
                cookie_world, cookie_jar, "POST", path, token, "application/x-www-form-urlencoded", extra
            )
            assert reply.status == 403 and "set-cookie" not in reply.headers, (path, extra)

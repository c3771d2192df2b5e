"""Bytes that are not the message a method expects get INVALID_ARGUMENT and one short log line
(rate-limited), never UNKNOWN, INTERNAL or a traceback; the server goes on serving and storing."""

from __future__ import annotations

import json
import random
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import urllib3

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

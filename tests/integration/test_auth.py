"""Tokens and scopes, as a matrix: every RPC of every service (enumerated from the protos) is
called with no token, a malformed, revoked, expired, wrong-scope and other-experiment token,
each refused with UNAUTHENTICATED or PERMISSION_DENIED while PostgreSQL, Redis and the artifact
store stay exactly as they were, and then with the right token, which is let through."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
import urllib3
from google.protobuf import json_format, message_factory

import runstream
from runstream.errors import FailedPrecondition, PermissionDenied, Unauthenticated
from runstream.server.web.mlflow import ENDPOINTS as MLFLOW_ENDPOINTS
from runstream.wire import batch as wire
from runstream.wire.proto import admin_pb2, artifacts_pb2, query_pb2, registry_pb2, tracking_pb2
from tests.conftest import Server

MODULES = (tracking_pb2, query_pb2, registry_pb2, artifacts_pb2, admin_pb2)
METHODS = [
    (service, method)
    for module in MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
UNAUTHENTICATED, PERMISSION_DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
EXPERIMENT_MESSAGES = ("CreateExperimentRequest", "GetExperimentRequest")
TOKEN_MESSAGES = ("CreateTokenRequest", "RevokeTokenRequest")


@dataclass
class World:
    server: Server
    tokens: dict[str, str]  # case -> token text
    run_a: str  # in experiment team-a/main
    experiment_a: str
    upload_a: str
    request_id: int


def _admin_token(data_dir: Path) -> str:
    return (data_dir / "admin-token").read_text().strip()


@pytest.fixture(scope="module")
def world(make_module_server: Any, tmp_path_factory: pytest.TempPathFactory) -> World:
    data_dir = tmp_path_factory.mktemp("auth-data")
    server = make_module_server("--auth", "--data-dir", str(data_dir))
    admin = _admin_token(data_dir)
    with runstream.Client(server.target, token=admin) as client:
        run_a = client.start_run("team-a/main", record_source=False)
        for step in range(100):
            run_a.log_metric("loss", 1 / (step + 1), step=step)
        run_a.log_params({"lr": "0.1"})
        weights = tmp_path_factory.mktemp("weights") / "weights.bin"
        weights.write_bytes(b"w" * 1000)
        run_a.log_artifact(weights, "model")
        run_a.end()
        run_b = client.start_run("team-b/main", record_source=False)
        run_b.end()
        assert server.wait_points(run_a.run_id, 100) == 100
        client.registry.register_model(run_a.run_id, "model/weights.bin", "model-a")
        request = client.registry.request_transition("model-a", 1, "Staging")
        upload = _unary(  # left open: SignParts, CompleteUpload and AbortUpload name it
            server.target,
            "/runstream.v1.ArtifactService/CreateUpload",
            artifacts_pb2.CreateUploadRequest(
                run_id=run_a.run_id, path="pending.bin", size=3, sha256=hashlib.sha256(b"abc").hexdigest()
            ),
            artifacts_pb2.Upload,
            admin,
        )
        experiment_a = client.get_run(run_a.run_id).experiment_id
        made = client.admin
        tokens = {
            "admin": admin,
            "read": made.create_token("reader", ["read"]).secret,
            "write": made.create_token("writer", ["write"]).secret,
            "registry": made.create_token("reviewer", ["registry"]).secret,
            "other experiment": made.create_token("team-b job", ["read", "write"], experiments="team-b/*").secret,
            "revoked": made.create_token("gone", SCOPES_ALL).secret,
            "expired": made.create_token("old", SCOPES_ALL, expires_in_s=1).secret,
            "malformed": "rst_not-a-token",
            "forged": admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB"),
        }
        made.revoke_token("gone")
    time.sleep(1.1)  # "old" expires
    return World(server, tokens, run_a.run_id, experiment_a, upload.upload_id, request.request_id)


SCOPES_ALL = ["read", "write", "registry", "admin"]


def _unary(target: str, path: str, request: Any, response: Any, token: str) -> Any:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=response.FromString)
        return call(request.SerializeToString(), metadata=(("authorization", f"Bearer {token}"),), timeout=10)


def _request(world: World, method: Any) -> bytes:
    """A plausible request of `method` naming things of experiment team-a/main."""
    name = method.input_type.name
    if name == "MetricBatch":
        return wire.encode(world.run_a, "matrix", 1, ["loss"], [0], [1000], [0], [1.0])
    msg = message_factory.GetMessageClass(method.input_type)()
    fields = {f.name: f for f in method.input_type.fields}
    values: dict[str, Any] = {
        "run_id": world.run_a,
        "experiment_id": world.experiment_a,
        "upload_id": world.upload_a,
        "experiment_name": "team-a/main",
        "version": 1,
        "uri": "models:/model-a/1",
        "key": "loss",
        "path": "model/weights.bin",
        "request_id": world.request_id,
        "stage": "Staging",
        "alias": "champion",
        "new_name": "model-a2",
        "comment": "matrix",
        "step": 2**63 - 1,  # RewindRun: to the last step, superseding nothing the other tests read
    }
    for field, value in values.items():
        if field in fields:
            setattr(msg, field, value)
    if "run_ids" in fields:
        msg.run_ids.append(world.run_a)
    if "experiment_ids" in fields:
        msg.experiment_ids.append(world.experiment_a)
    if "name" in fields and name != "CreateRunRequest":
        msg.name = "team-a/main" if name in EXPERIMENT_MESSAGES else "nobody" if name in TOKEN_MESSAGES else "model-a"
    return bytes(msg.SerializeToString())


def _call(target: str, service: Any, method: Any, data: bytes, token: str | None) -> tuple[grpc.StatusCode, str]:
    """The status of one call (for StreamMetrics: of the stream, else of its one ack) and its message."""
    path = f"/{service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(target) as channel:
        try:
            if method.client_streaming:
                call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
                acks = [tracking_pb2.BatchAck.FromString(a) for a in call(iter([data]), metadata=metadata, timeout=10)]
                code = next(c for c in grpc.StatusCode if c.value[0] == acks[0].code)
                return code, acks[0].message
            if method.server_streaming:
                stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                call = stream(data, metadata=metadata, timeout=3)
                with contextlib.suppress(StopIteration):
                    next(iter(call))
                call.cancel()  # a live tail never ends by itself: one item (or none) is enough
                return grpc.StatusCode.OK, ""
            channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                data, metadata=metadata, timeout=10
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return grpc.StatusCode.OK, ""
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _fingerprint(world: World) -> dict[str, Any]:
    return world.server.fingerprint()


def _scope_of(service: Any, method: Any) -> str:
    from runstream.server.auth.policy import scope_of

    return scope_of(service.name, method.name)


WRONG_SCOPE = {"read": "write", "write": "read", "registry": "read", "admin": "write"}
REFUSALS = [
    ("no token", UNAUTHENTICATED),
    ("malformed", UNAUTHENTICATED),
    ("forged", UNAUTHENTICATED),
    ("revoked", UNAUTHENTICATED),
    ("expired", UNAUTHENTICATED),
    ("wrong scope", PERMISSION_DENIED),
    ("other experiment", PERMISSION_DENIED),
]


def test_every_rpc_has_an_access_decision() -> None:
    from runstream.server.auth.policy import RULES

    declared = {f"{service.name}/{method.name}" for service, method in METHODS}
    assert declared == set(RULES), (declared - set(RULES), set(RULES) - declared)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda x: getattr(x, "name", ""))
def test_every_rpc_refuses_what_its_token_does_not_allow_and_changes_nothing(world: World, service, method) -> None:
    scope = _scope_of(service, method)
    data = _request(world, method)
    before = _fingerprint(world)
    for case, expected in REFUSALS:
        if case == "wrong scope" and scope not in WRONG_SCOPE:
            continue  # WhoAmI: any valid token
        if case == "other experiment" and scope not in ("read", "write", "registry", "admin"):
            continue
        token = None if case == "no token" else world.tokens[WRONG_SCOPE[scope] if case == "wrong scope" else case]
        code, message = _call(world.server.target, service, method, data, token)
        assert code == expected, f"{method.name} with {case}: {code} {message}"
        assert message and all(t not in message for t in world.tokens.values()), message
    assert _fingerprint(world) == before, f"a refused {method.name} changed something"


UNARY = [(s, m) for s, m in METHODS if not m.client_streaming and not m.server_streaming]
HTTP_STATUS = {UNAUTHENTICATED: 401, PERMISSION_DENIED: 403}


def _post(world: World, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    reply = urllib3.request(
        "POST",
        f"http://127.0.0.1:{world.server.http_port}{path}",
        body=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    return reply.status, reply.json()


def _http_call(world: World, service: Any, method: Any, token: str | None) -> tuple[int, dict[str, Any]]:
    data = _request(world, method)
    message = message_factory.GetMessageClass(method.input_type).FromString(data)
    body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return _post(world, f"/api/v1/{service.full_name}/{method.name}", body, headers)


@pytest.mark.parametrize(("service", "method"), UNARY, ids=lambda x: getattr(x, "name", ""))
def test_every_api_route_refuses_what_its_token_does_not_allow_and_changes_nothing(
    world: World, service, method
) -> None:
    scope = _scope_of(service, method)
    before = _fingerprint(world)
    for case, expected in REFUSALS:
        if case in ("wrong scope", "other experiment") and scope not in WRONG_SCOPE:
            continue
        if case == "other experiment" and method.name == "LogMetrics":
            continue  # a batch is refused in its ack, with a 200 (checked over gRPC)
        token = None if case == "no token" else world.tokens[WRONG_SCOPE[scope] if case == "wrong scope" else case]
        status, reply = _http_call(world, service, method, token)
        assert status == HTTP_STATUS[expected], f"{method.name} with {case}: {status} {reply}"
        assert reply["code"] == expected.name and reply["message"]
        assert all(t not in reply["message"] for t in world.tokens.values())
    assert _fingerprint(world) == before, f"a refused {method.name} changed something"


def _sign_in(base: str, token: str) -> Any:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    return urllib3.request("POST", f"{base}/login", body=urlencode({"token": token}), headers=form, redirect=False)


def test_a_browser_signs_in_with_a_cookie_that_other_sites_cannot_use(world: World) -> None:
    base = f"http://127.0.0.1:{world.server.http_port}"
    refused = _sign_in(base, world.tokens["revoked"])
    assert refused.status == 401 and b"revoked" in refused.data and "set-cookie" not in refused.headers
    signed = _sign_in(base, world.tokens["read"])
    assert signed.status == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = cookie.split(";", 1)[0]
    status, me = _post(world, "/api/v1/runstream.v1.AdminService/WhoAmI", b"{}", {"Cookie": jar})
    assert (status, me["name"]) == (200, "reader")
    # What a form on another page can send (no JSON content type) is not signed by the cookie.
    form = urllib3.request(
        "POST",
        f"{base}/api/v1/runstream.v1.QueryService/ListExperiments",
        body=b"{}",
        headers={"Cookie": jar, "Content-Type": "text/plain"},
    )
    assert form.status == 401 and form.json()["code"] == "UNAUTHENTICATED"


MLFLOW_GUARDED = [e for e in MLFLOW_ENDPOINTS if not e.public]


@pytest.mark.parametrize(
    "spec", MLFLOW_GUARDED, ids=[f"{sorted(e.methods or {'*'})[0]} {e.prefix}/{e.pattern}" for e in MLFLOW_GUARDED]
)
def test_every_mlflow_endpoint_refuses_without_the_right_token_and_changes_nothing(world: World, spec: Any) -> None:
    run_path = f"{world.experiment_a}/{world.run_a}/artifacts"
    values = {
        "model_id": "m-" + "0" * 32,
        "path": f"{run_path}/model/weights.bin",
        "path_in_url": run_path,
        "tag_key": "k",
    }
    path = re.sub(r"\{(\w+)(?::path)?\}", lambda m: values[m[1]], spec.pattern)
    body = {
        "run_id": world.run_a,
        "run_ids": world.run_a,
        "source_run_id": world.run_a,
        "experiment_id": world.experiment_a,
        "experiment_ids": [world.experiment_a],
        "experiment_name": "team-a/main",
        "name": "model-a",
        "new_name": "model-a2",
        "key": "loss",
        "value": "1",
        "version": "1",
        "alias": "champion",
        "stage": "Staging",
        "status": "LOGGED_MODEL_READY" if spec.pattern.startswith("logged-models") else "FINISHED",
        "source": f"runs:/{world.run_a}/model/weights.bin",
        "model_json": "{}",
        "filter": "name = 'model-a'",
        "upload_id": world.upload_a,
        "num_parts": 2,
        "metric_key": "loss",
        "path": run_path,
        "metrics": [{"key": "loss", "value": 1.0, "timestamp": 1, "step": 5000}],
    }
    method = sorted(spec.methods or {"POST"})[0]
    # A token without the scope the endpoint needs: registry endpoints need read or registry.
    lacking = "write" if spec.pattern.startswith(("registered-models", "model-versions")) else "registry"
    before = _fingerprint(world)
    for token, status in ((None, 401), ("rst_nope", 401), (world.tokens["revoked"], 401), (world.tokens[lacking], 403)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        version = "" if spec.prefix.startswith("3.0") else "2.0/"
        url = f"http://127.0.0.1:{world.server.http_port}/api/{version}{spec.prefix}/{path}"
        if method == "GET":
            reply = urllib3.request(
                method,
                url,
                fields={k: str(v) for k, v in body.items() if not isinstance(v, list)},
                headers=headers,
                timeout=10,
            )
        else:
            data = b"new bytes" if method == "PUT" else json.dumps(body).encode()
            reply = urllib3.request(
                method, url, body=data, headers={"Content-Type": "application/json", **headers}, timeout=10
            )
        assert reply.status == status, (method, path, token and token[:8], reply.data[:200])
        assert reply.json()["error_code"] == ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED")
    assert _fingerprint(world) == before


def test_a_limited_token_logs_into_its_experiments_only(world: World) -> None:
    token = world.tokens["other experiment"]
    with runstream.Client(world.server.target, token=token) as client:
        run = client.start_run("team-b/job", record_source=False)
        for step in range(500):
            run.log_metric("loss", float(step), step=step)
        run.end()
        with pytest.raises(PermissionDenied, match="team-b/\\*"):
            client.start_run("team-a/sneaky", record_source=False)
        with pytest.raises(PermissionDenied):
            client.get_run(world.run_a)
        # A batch for someone else's run is refused in its ack and stored nowhere.
        ack = tracking_pb2.BatchAck.FromString(
            grpc.insecure_channel(world.server.target).unary_unary(
                "/runstream.v1.TrackingService/LogMetrics", request_serializer=None, response_deserializer=None
            )(wire.encode(run.run_id, "w", 1, ["x"], [0], [1], [0], [1.0]), metadata=_bearer(token), timeout=10)
        )
        assert ack.code == 0
        with pytest.raises(grpc.RpcError) as refused:
            grpc.insecure_channel(world.server.target).unary_unary(
                "/runstream.v1.TrackingService/LogMetrics", request_serializer=None, response_deserializer=None
            )(wire.encode(world.run_a, "w", 1, ["x"], [0], [1], [0], [1.0]), metadata=_bearer(token), timeout=10)
        assert refused.value.code() == PERMISSION_DENIED
    assert world.server.wait_points(run.run_id, 501) == 501
    assert (
        world.server.sql("SELECT count(*) AS n FROM metric_series WHERE run_id = $1 AND key = 'x'", world.run_a)[0]["n"]
        == 0
    )


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_a_revoked_token_is_refused_at_once(world: World) -> None:
    with runstream.Client(world.server.target, token=world.tokens["admin"]) as admin:
        text = admin.admin.create_token("short-lived", ["read"]).secret
        with runstream.Client(world.server.target, token=text) as client:
            assert client.admin.whoami().name == "short-lived"
            admin.admin.revoke_token("short-lived")
            with pytest.raises(Unauthenticated, match="revoked"):
                client.admin.whoami()


def test_the_approval_rule_holds_with_real_identities(world: World) -> None:
    with runstream.Client(world.server.target, token=world.tokens["admin"]) as admin:
        alice = admin.admin.create_token("alice", ["registry", "read"]).secret
        bob = admin.admin.create_token("bob", ["registry", "read"]).secret
    with runstream.Client(world.server.target, token=alice) as client:
        client.registry.user = "bob"  # the runstream-user header cannot make alice bob
        request = client.registry.request_transition("model-a", 1, "Production")
        assert request.requested_by == "alice"
        with pytest.raises(FailedPrecondition, match="alice requested this transition"):
            client.registry.approve_transition(request.request_id)
    with runstream.Client(world.server.target, token=bob) as client:
        done = client.registry.approve_transition(request.request_id, "looks good")
        assert (done.status, done.decided_by) == ("approved", "bob")
        events = client.registry.history("model-a", 1)
    assert {e.actor for e in events} >= {"alice", "bob"}


def test_off_loopback_the_server_refuses_to_start_without_auth(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "server", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--auth" in lines[0] and "--insecure" in lines[0], done.stderr
    assert not (tmp_path / "pg").exists()  # refused before anything started


def test_the_first_admin_token_is_private_and_written_once(world: World, make_module_server: Any) -> None:
    data_dir = Path(world.server.args[world.server.args.index("--data-dir") + 1])
    token_file = data_dir / "admin-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    before = token_file.read_text()
    # The module's factory: the function-scoped one would drop the shared database afterwards.
    again = make_module_server("--auth", "--data-dir", str(data_dir), like=world.server)
    assert token_file.read_text() == before  # an admin token exists: nothing new is made
    assert not any("admin token" in line for line in again.output)
    with runstream.Client(again.target, token=before.strip()) as client:
        assert client.admin.whoami().scopes == SCOPES_ALL


# Last: the right tokens delete runs and models the tests above use.
@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda x: getattr(x, "name", ""))
def test_every_rpc_lets_the_right_token_through(world: World, service, method) -> None:
    scope = _scope_of(service, method)
    token = world.tokens["read" if scope == "any valid token" else scope]
    code, message = _call(world.server.target, service, method, _request(world, method), token)
    assert code not in (UNAUTHENTICATED, PERMISSION_DENIED), f"{method.name}: {code} {message}"
    assert code != grpc.StatusCode.INTERNAL, message


@pytest.mark.parametrize(("service", "method"), UNARY, ids=lambda x: getattr(x, "name", ""))
def test_every_api_route_lets_the_right_token_through(world: World, service, method) -> None:
    scope = _scope_of(service, method)
    status, reply = _http_call(world, service, method, world.tokens["read" if scope == "any valid token" else scope])
    assert status not in (401, 403, 500), f"{method.name}: {status} {reply}"


def test_tokens_appear_in_no_log_line_metric_or_message(world: World) -> None:
    text = "".join(world.server.output)
    with urllib.request.urlopen(f"http://127.0.0.1:{world.server.http_port}/metrics", timeout=10) as reply:
        text += reply.read().decode()
    assert "PERMISSION_DENIED" in text and "UNAUTHENTICATED" in text  # the refusals were logged and counted
    for token in world.tokens.values():
        assert token.split("_", 2)[-1] not in text


def test_an_admin_token_can_come_from_a_secret(make_server: Any, tmp_path: Path) -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "tokens", "generate"], capture_output=True, text=True, check=True
    ).stdout.strip()
    server = make_server("--auth", "--data-dir", str(tmp_path), env={"RUNSTREAM_ADMIN_TOKEN": generated})
    assert any("RUNSTREAM_ADMIN_TOKEN" in line for line in server.output)
    assert not (tmp_path / "admin-token").exists()
    with runstream.Client(server.target, token=generated) as client:
        assert client.admin.whoami().scopes == SCOPES_ALL
    refused = make_server("--auth", "--data-dir", str(tmp_path), env={"RUNSTREAM_ADMIN_TOKEN": "hunter2"}, start=False)
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "server", "--port", str(refused.port), *refused.args],
        env=refused.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "runstream tokens generate" in done.stderr.strip().splitlines()[-1]
    assert "hunter2" not in done.stderr + done.stdout


def test_the_ui_live_tail_is_guarded_like_its_rpc(world: World) -> None:
    """GET /api/v1/tail (server-sent events of TailMetrics, for the web UI's live charts)."""
    url = f"http://127.0.0.1:{world.server.http_port}/api/v1/tail?run_id={world.run_a}&from_step=0"

    def get(token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return urllib3.request("GET", url, headers=headers, timeout=30)

    assert get(None).status == 401
    assert get(world.tokens["revoked"]).status == 401
    assert get(world.tokens["other experiment"]).status == 403  # a token of team-b/* reading team-a's run
    events = get(world.tokens["read"])
    assert events.status == 200 and events.headers["Content-Type"] == "text/event-stream"
    body = events.data.decode()
    points = [json.loads(line[6:]) for line in body.splitlines() if line.startswith('data: {"')]
    stored = world.server.sql(
        "SELECT coalesce(sum(count), 0)::int8 AS n FROM metric_summaries WHERE run_id = $1 AND key = 'loss'",
        world.run_a,
    )[0]["n"]  # the fixture's 100, and what earlier tests of the matrix logged as "loss"
    assert stored >= 100 and sum(len(p["step"]) for p in points if p["key"] == "loss") == stored
    assert body.rstrip().endswith("event: end\ndata: {}")


def test_a_limited_registry_token_touches_only_models_of_its_experiments(make_server: Any, tmp_path: Path) -> None:
    """Issue 33, item 8: a registry token limited to vision/* created a version from an nlp run,
    set an alias and archived nlp-model. The glob binds models through their versions' runs."""
    server = make_server("--auth", "--data-dir", str(tmp_path / "data"))
    admin = _admin_token(tmp_path / "data")
    with runstream.Client(server.target, token=admin) as client:
        runs = {}
        for experiment in ("vision/a", "nlp/b"):
            run = client.start_run(experiment, record_source=False)
            run.log_text("weights", "model.txt")
            run.end()
            runs[experiment] = run.run_id
        client.register_model(runs["nlp/b"], "model.txt", "nlp-model")
        client.register_model(runs["vision/a"], "model.txt", "vision-model")
        client.register_model(runs["vision/a"], "model.txt", "mixed-model")
        client.register_model(runs["nlp/b"], "model.txt", "mixed-model")
        request = client.registry.request_transition("nlp-model", 1, "Production")
        registry = client.admin.create_token("vision-registry", ["registry", "read"], experiments="vision/*").secret
        reader = client.admin.create_token("vision-reader", ["read"], experiments="vision/*").secret
        with pytest.raises(runstream.InvalidArgument, match="admin scope cannot be limited"):
            client.admin.create_token("limited-admin", ["admin"], experiments="vision/*")
        before = _registry_state(server)

    with runstream.Client(server.target, token=registry) as limited:
        refusals = [
            lambda: limited.register_model(runs["nlp/b"], "model.txt", "vision-model"),  # a version from nlp
            lambda: limited.register_model(runs["nlp/b"], "model.txt", "fresh-model"),
            lambda: limited.registry.set_alias("nlp-model", "champion", 1),
            lambda: limited.registry.transition_stage("nlp-model", 1, "Archived"),
            lambda: limited.registry.update_registered_model("nlp-model", description="mine"),
            lambda: limited.registry.rename_registered_model("nlp-model", "vision-nlp"),
            lambda: limited.registry.comment("nlp-model", 1, "mine"),
            lambda: limited.registry.approve_transition(request.request_id),
            lambda: limited.registry.set_alias("mixed-model", "champion", 1),  # one version is nlp's
            lambda: limited.registry.get_registered_model("nlp-model"),
        ]
        for refused in refusals:
            with pytest.raises(PermissionDenied, match="vision/\\*"):
                refused()
        assert _registry_state(server) == before  # a refused request changes nothing
        # Through MLflow's API, the same guard.
        reply = urllib3.request(
            "POST",
            f"http://127.0.0.1:{server.http_port}/api/2.0/mlflow/registered-models/alias",
            json={"name": "nlp-model", "alias": "champion", "version": "1"},
            headers={"Authorization": f"Bearer {registry}"},
            timeout=10,
        )
        assert reply.status == 403, reply.data
        assert _registry_state(server) == before
        # Its own experiments' models, new or existing, it may touch.
        limited.register_model(runs["vision/a"], "model.txt", "vision-model")
        limited.registry.set_alias("vision-model", "champion", 2)
        limited.registry.transition_stage("vision-model", 1, "Archived")
        limited.register_model(runs["vision/a"], "model.txt", "new-vision-model")
        limited.registry.create_registered_model("empty-model")  # no version yet: binds nothing
    with runstream.Client(server.target, token=reader) as read_only:
        assert read_only.registry.get_registered_model("vision-model").aliases["champion"] == 2
        for refused in (
            lambda: read_only.registry.get_registered_model("nlp-model"),
            lambda: read_only.registry.list_model_versions("mixed-model"),
            lambda: read_only.registry.get_model_version("models:/nlp-model/1"),
            lambda: read_only.registry.search_registered_models(),  # spans every experiment
        ):
            with pytest.raises(PermissionDenied):
                refused()
    listed = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "tokens", "create", "--name", "cli-limited", "--scope", "registry",
         "--experiments", "vision/*", "--url", server.target],
        capture_output=True, text=True, timeout=60, env={**os.environ, "RUNSTREAM_TOKEN": admin},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "models whose every version comes from a run of those" in listed.stderr


def _registry_state(server: Server) -> list[Any]:
    return [
        [tuple(r) for r in server.sql(query)]
        for query in (
            "SELECT name, description FROM registered_models ORDER BY name",
            "SELECT model_id, version, run_id::text, stage, description FROM model_versions ORDER BY 1, 2",
            "SELECT model_id, alias, version FROM model_aliases ORDER BY 1, 2",
            "SELECT request_id, status FROM transition_requests ORDER BY 1",
            "SELECT count(*) FROM model_version_events",
        )
    ]


def test_a_renamed_experiments_runs_leave_a_limited_tokens_reach(make_server: Any, tmp_path: Path) -> None:
    """The guard caches a run's experiment name: a rename out of a token's glob takes effect at
    once in the process that renamed it, and within the cache's seconds in others."""
    from runstream.server.auth.guard import CACHE_S

    server = make_server("--auth", "--data-dir", str(tmp_path / "data"))
    admin = _admin_token(tmp_path / "data")
    with runstream.Client(server.target, token=admin) as client:
        run = client.start_run("team-a/secret", record_source=False)
        run.end()
        limited = client.admin.create_token("team-a job", ["read", "write"], experiments="team-a/*").secret
    with runstream.Client(server.target, token=limited) as job:
        assert job.get_run(run.run_id).run_id == run.run_id  # cached as team-a's
        job.set_tags(run.run_id, {"before": "1"})
        rename = tracking_pb2.UpdateExperimentRequest(
            experiment_id=job.get_run(run.run_id).experiment_id, new_name="team-b/secret"
        )
        _unary(server.target, "/runstream.v1.TrackingService/UpdateExperiment", rename, tracking_pb2.Experiment, admin)
        for call in (lambda: job.get_run(run.run_id), lambda: job.set_tags(run.run_id, {"after": "1"})):
            with pytest.raises(PermissionDenied, match="not in one"):
                call()
    assert CACHE_S <= 5  # another process's cache forgets the old name this soon


def test_an_empty_experiments_glob_is_refused_not_a_token_of_every_experiment(world: World) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "tokens", "create", "--name", "oops", "--scope", "read",
         "--experiments", "", "--url", world.server.target],
        capture_output=True, text=True, timeout=60, env={**os.environ, "RUNSTREAM_TOKEN": world.tokens["admin"]},
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "runstream: --experiments is empty: give a glob, or leave it out for a token of every experiment"
    ]
    with runstream.Client(world.server.target, token=world.tokens["admin"]) as client:
        assert "oops" not in [t.name for t in client.admin.tokens()]


def test_a_fork_names_its_parent_and_a_token_of_another_experiment_can_neither_fork_nor_rewind_it(
    world: World,
) -> None:
    """A fork reads its parent's points, so forking needs the parent's experiment: a token of
    team-b/* is refused forking team-a's run (into team-b or anywhere), and rewinding it."""
    before = _fingerprint(world)
    for request in (
        tracking_pb2.CreateRunRequest(experiment_name="team-b/main", fork_of=world.run_a, fork_step=10),
        tracking_pb2.CreateRunRequest(fork_of=world.run_a, fork_step=10),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            _unary(
                world.server.target,
                "/runstream.v1.TrackingService/CreateRun",
                request,
                tracking_pb2.Run,
                world.tokens["other experiment"],
            )
        assert refused.value.code() == PERMISSION_DENIED and world.run_a in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        _unary(
            world.server.target,
            "/runstream.v1.TrackingService/RewindRun",
            tracking_pb2.RewindRunRequest(run_id=world.run_a, step=0),
            tracking_pb2.Run,
            world.tokens["other experiment"],
        )
    assert refused.value.code() == PERMISSION_DENIED
    assert _fingerprint(world) == before

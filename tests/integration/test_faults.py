"""The rest of the fault suite, each with exact counts of every (writer, key, step): the whole
server SIGKILLed and restarted, a private Redis killed with -9 (append-only file, fsync always)
and restarted, and 2,000 StreamMetrics calls abandoned by their clients."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np

import runstream
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb
from tests.conftest import free_port
from tests.integration.test_operations import _start_redis

KEYS = ["loss", "acc", "lr", "grad"]


def _train(run: runstream.Run, steps: int, pause: float = 0.0) -> threading.Thread:
    def loop() -> None:
        for step in range(steps):
            run.log_metrics({k: float(step) for k in KEYS}, step=step)
            if pause and step % 100 == 0:
                time.sleep(pause)

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def _exactly(server, run_id: str, writer: str, steps: int) -> None:
    assert server.wait_points(run_id, steps * len(KEYS), timeout=180) == steps * len(KEYS)
    stored = server.stored(run_id)
    for key in KEYS:
        got, values = stored[(key, writer)]
        assert got.tolist() == list(range(steps)) and values.tolist() == [float(s) for s in range(steps)]


def test_the_whole_server_sigkilled_and_restarted_loses_and_doubles_nothing(make_server) -> None:
    server = make_server()
    steps = 50_000
    with runstream.Client(server.target) as client:
        run = client.start_run("faults", "server killed", writer_id="w", record_source=False)
        trainer = _train(run, steps, pause=0.005)
        time.sleep(1.5)
        server.stop(signal.SIGKILL)  # its loaders see their pipe close and drain, or are left pending
        time.sleep(2)
        restarted = make_server(like=server, start=False)
        restarted.port = server.port  # the job reconnects to the same address
        restarted.start()
        trainer.join()
        run.flush(120)
        _exactly(restarted, run.run_id, "w", steps)
        run.end()


def test_redis_killed_and_restarted_with_its_append_only_file_loses_nothing(make_server, tmp_path: Path) -> None:
    port = free_port()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis_proc = _start_redis(port, tmp_path / "redis", *aof)
    try:
        server = make_server(start=False)
        server.args[server.args.index("--redis-url") + 1] = f"redis://127.0.0.1:{port}/0"
        server.redis_url = f"redis://127.0.0.1:{port}/0"
        server.start()
        steps = 40_000
        with runstream.Client(server.target) as client:
            run = client.start_run("faults", "redis killed", writer_id="w", record_source=False)
            trainer = _train(run, steps, pause=0.005)
            time.sleep(1.5)
            redis_proc.send_signal(signal.SIGKILL)
            redis_proc.wait(10)
            time.sleep(3)  # the SDK buffers, ingest answers UNAVAILABLE, the loader retries
            redis_proc = _start_redis(port, tmp_path / "redis", *aof)
            trainer.join()
            run.flush(120)
            _exactly(server, run.run_id, "w", steps)
            run.end()
        assert server.stop() == 0
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def test_two_thousand_abandoned_streams_leave_the_server_serving(server) -> None:
    with runstream.Client(server.target) as client:
        run_id = client.create_run("faults", "abandoned").run_id
        epoch = client.open_writer(run_id, "gone")
    steps = np.arange(10, dtype=np.int64)
    acked = 0
    for round_ in range(10):
        channel = grpc.insecure_channel(server.target)
        method = channel.stream_stream(
            "/runstream.v1.TrackingService/StreamMetrics",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        calls = []
        for i in range(200):
            seq = round_ * 200 + i + 1
            data = wire.encode(run_id, "gone", seq, ["loss"], np.zeros(10), steps + seq * 10, None, steps * 1.0, epoch)
            never_ends = threading.Event()

            def requests(data: bytes = data, never_ends: threading.Event = never_ends):  # type: ignore[no-untyped-def]
                yield data
                never_ends.wait(60)  # the client never closes its side: it just goes away

            call = method(requests())
            ack = next(call)
            acked += ack.code == 0
            calls.append((call, never_ends))
        channel.close()  # 200 calls dropped without a goodbye
        for _, never_ends in calls:
            never_ends.set()
    assert acked == 2_000
    assert server.wait_points(run_id, 20_000) == 20_000
    with runstream.Client(server.target) as client:
        run = client.start_run("faults", "after", record_source=False)
        for step in range(1_000):
            run.log_metrics({"loss": float(step)}, step=step)
        run.end()
    assert server.wait_points(run.run_id, 1_000) == 1_000
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = _active_streams(server)
        if metrics == 0:
            break
        time.sleep(0.5)
    assert metrics == 0


def _active_streams(server) -> float:
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10).read().decode()
    found = re.search(r"^runstream_active_client_streams ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else -1.0

"""Redis out of memory (a private redis-server with maxmemory set below its usage): appends are
refused with a retryable status, health says NOT_SERVING, ingest and loaders survive; once the
limit is lifted every acknowledged point lands exactly once."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

import runstream
from tests.conftest import free_port, raw_log
from tests.integration.test_dead_letters import _batch, _metric
from tests.integration.test_operations import NOT_SERVING, SERVING, _health, _start_redis, wait_for

POINTS = 100


def test_redis_out_of_memory_is_retryable_and_nothing_is_lost(make_server, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="runstream.client.writer")
    port = free_port()
    redis_proc = _start_redis(port, tmp_path)
    r = redis.Redis(port=port)
    try:
        server = make_server(start=False)
        server.args[server.args.index("--redis-url") + 1] = f"redis://127.0.0.1:{port}/0"
        server.redis_url = f"redis://127.0.0.1:{port}/0"
        server.start()
        with runstream.Client(server.target) as client:
            run_id = client.create_run("oom", "full").run_id
            assert raw_log(client, _batch(run_id, "raw", 1)).code == 0
            assert server.wait_points(run_id, POINTS) == POINTS

            r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) // 2))
            with pytest.raises(grpc.RpcError) as err:
                raw_log(client, _batch(run_id, "raw", 2))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "out of memory" in err.value.details()
            wait_for(lambda: _health(server.target) == NOT_SERVING, what="NOT_SERVING while Redis is full")

            # A training job logs on through it: the SDK keeps its points and retries.
            run = client.attach(run_id, writer_id="sdk")
            done = threading.Event()

            def log() -> None:
                for step in range(5_000):
                    run.log_metrics({"loss": float(step), "acc": step / 5_000}, step=step)
                done.set()

            sender = threading.Thread(target=log)
            sender.start()
            time.sleep(3)
            assert done.wait(30)  # logging never blocked the training loop
            stuck = server.sql("SELECT coalesce(sum(count), 0)::int8 AS n FROM metric_summaries")[0]["n"]
            assert stuck == POINTS  # nothing got in while Redis was full

            r.config_set("maxmemory", 0)
            wait_for(lambda: _health(server.target) == SERVING, what="SERVING once Redis has room")
            assert raw_log(client, _batch(run_id, "raw", 2)).code == 0
            run.flush(60)
            sender.join()
            total = POINTS * 2 + 10_000
            assert server.wait_points(run_id, total) == total
            said = [r.getMessage() for r in caplog.records if r.name == "runstream.client.writer"]
            assert sum("pushes back (RESOURCE_EXHAUSTED" in m for m in said) == 1, said  # once, not per retry
            assert sum("again after" in m for m in said) == 1, said
            stored = server.stored(run_id)
            assert stored[("loss", "sdk")][0].tolist() == list(range(5_000))
            assert stored[("loss", "raw")][0].tolist() == list(range(POINTS, 3 * POINTS))
        assert _metric(server, "runstream_loader_restarts_total") == 0
        assert server.stop() == 0
        output = "".join(server.output)
        assert "out of memory" in output and "Traceback" not in output
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def test_acks_can_wait_for_a_redis_replica(make_server, tmp_path: Path) -> None:
    """--redis-wait-replicas 1: without a replica a batch is UNAVAILABLE (and resent); with one,
    acked; what was appended before the refusals is stored once all the same."""
    port, replica_port = free_port(), free_port()
    primary = _start_redis(port, tmp_path / "primary")
    replica = None
    try:
        server = make_server("--redis-wait-replicas", "1", "--redis-wait-timeout-ms", "200", start=False)
        server.args[server.args.index("--redis-url") + 1] = f"redis://127.0.0.1:{port}/0"
        server.redis_url = f"redis://127.0.0.1:{port}/0"
        server.start()
        assert any("acks: acked batches live in Redis' memory" in line for line in server.output)
        assert any("each ack also waits for 1 replica(s)" in line for line in server.output)
        with runstream.Client(server.target) as client:
            run_id = client.create_run("durable", "wait").run_id
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as err:
                    raw_log(client, _batch(run_id, "w", 1))
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "0 of 1 Redis replicas confirmed" in err.value.details()
            replica = _start_redis(replica_port, tmp_path / "replica", "--replicaof", "127.0.0.1", str(port))
            wait_for(lambda: replica_online(port), what="the replica")
            wait_for(lambda: _acked(client, run_id), what="an ack once the replica confirms")
            assert raw_log(client, _batch(run_id, "w", 2)).code == 0
        assert server.wait_points(run_id, 2 * POINTS) == 2 * POINTS  # the refused appends were resends
        assert server.stored(run_id)[("loss", "w")][0].tolist() == list(range(POINTS, 3 * POINTS))
        assert server.stop() == 0  # while its Redis is still there to drain from
    finally:
        for proc in (replica, primary):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def replica_online(port: int) -> bool:
    replica = redis.Redis(port=port).info("replication").get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


def _acked(client, run_id: str) -> bool:
    try:
        return raw_log(client, _batch(run_id, "w", 1)).code == 0
    except grpc.RpcError:
        return False

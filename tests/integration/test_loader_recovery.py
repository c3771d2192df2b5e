"""A loader that dies costs no waiting: its successor takes over what it had read at once
(not after --claim-idle-ms), and a server whose loader died still shuts down, promptly."""

from __future__ import annotations

import os
import signal
import threading
import time

import redis

import runstream
from runstream.server.streams.keys import LOADER_GROUP, Keys
from tests.integration.test_ingest import _loader_children, _wait_for

CLAIM_IDLE_MS = 300_000  # far longer than the test may take: only an immediate takeover passes


def _pending_by_consumer(server) -> dict[str, int]:
    r = redis.Redis.from_url(server.redis_url)
    found: dict[str, int] = {}
    for stream in Keys(server.prefix).streams():
        try:
            consumers = r.xinfo_consumers(stream, LOADER_GROUP)
        except redis.ResponseError:  # no stream or no group yet: the loader is still starting
            continue
        for c in consumers:
            found[c["name"].decode()] = found.get(c["name"].decode(), 0) + int(c["pending"])
    return found


def test_a_successor_takes_over_the_entries_of_the_loader_that_died_at_once(make_server) -> None:
    server = make_server("--claim-idle-ms", str(CLAIM_IDLE_MS))
    (victim,) = _loader_children(server.proc.pid)
    _wait_for(lambda: any(" started" in line and "loader" in line for line in server.output), what="the loader")
    steps, keys = 40_000, ["loss", "acc", "lr", "grad"]
    with runstream.Client(server.target) as client:
        run = client.start_run("takeover", writer_id="w", batch_points=2_000)

        def log() -> None:
            for step in range(steps):
                run.log_metrics(dict.fromkeys(keys, float(step)), step=step)
            run.flush(120)

        logging = threading.Thread(target=log)
        logging.start()
        # Freeze the loader at a moment it holds entries it has read but not acknowledged.
        deadline = time.monotonic() + 60
        while True:
            os.kill(victim, signal.SIGSTOP)
            if sum(_pending_by_consumer(server).values()) > 0:
                break
            os.kill(victim, signal.SIGCONT)
            assert time.monotonic() < deadline, "the loader never held pending entries"
            time.sleep(0.05)
        held = sum(_pending_by_consumer(server).values())
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        logging.join()
        total = steps * len(keys)
        assert server.wait_points(run.run_id, total, timeout=90) == total
        took = time.monotonic() - killed_at
        run.end()
    assert held > 0
    assert took < 60, f"the successor waited {took:.0f} s for the entries it inherited"
    assert not any("claimed" in line for line in server.output)  # taken over, not claimed as a stranger's
    stored = server.stored(run.run_id)
    for key in keys:
        got_steps, values = stored[(key, "w")]
        assert got_steps.tolist() == list(range(steps)) and values.tolist() == [float(s) for s in range(steps)]
    assert sum(_pending_by_consumer(server).values()) == 0


def test_shutdown_ends_after_a_loader_was_killed_while_waiting(make_server) -> None:
    """Killed while idle (the moment it waits for the drain signal), three times over."""
    for _ in range(3):
        server = make_server()
        (victim,) = _loader_children(server.proc.pid)
        time.sleep(1.0)  # idle: nothing to load
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda s=server: any("starting another" in line for line in s.output), what="the replacement")
        started = time.monotonic()
        assert server.stop(timeout=60) == 0
        assert time.monotonic() - started < 30


def test_shutdown_is_bounded_when_a_loader_cannot_drain(make_server) -> None:
    """A loader frozen mid-drain is given --drain-timeout, then stopped; what it held stays in
    Redis for the next start, and the server says how much."""
    server = make_server("--drain-timeout", "3")
    (victim,) = _loader_children(server.proc.pid)
    with runstream.Client(server.target) as client:
        run = client.start_run("frozen", writer_id="w")
        os.kill(victim, signal.SIGSTOP)
        for step in range(1_000):
            run.log_metrics({"loss": float(step)}, step=step)
        run.flush(60)
    started = time.monotonic()
    assert server.stop(timeout=60) == 0
    assert time.monotonic() - started < 20
    output = "".join(server.output)
    assert "did not drain within 3 s" in output
    assert "left in Redis for the next start" in output
    restarted = make_server(like=server)
    assert restarted.wait_points(run.run_id, 1_000) == 1_000

"""The metric writer's parts without a server: the batcher (client/buffer.py) numbers and packs
calls without splitting one, and gives room back only when told; the process's registries
(client/lifecycle.py) pause writers across a fork and are empty in the child."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from runstream.client import lifecycle
from runstream.client.buffer import Batcher
from runstream.client.pending import PendingCalls
from runstream.wire import batch as wire


def _batcher(emitted: list[tuple[int, bytes, int]], max_buffer_points: int = 1000, on_full: str = "block") -> Batcher:
    return Batcher(
        threading.Condition(),
        "run",
        "w",
        3,
        "nowhere:1",
        batch_points=10,
        flush_interval=60.0,
        max_buffer_points=max_buffer_points,
        on_full=on_full,
        block_timeout=1.0,
        emit=lambda seq, data, points: emitted.append((seq, data, points)),
    )


def _settled(batcher: Batcher) -> None:
    with batcher._lock:
        batcher.flush_soon()
        assert batcher._lock.wait_for(lambda: not (batcher.pending or batcher.emitting), timeout=10)


def test_calls_become_numbered_batches_of_whole_calls() -> None:
    emitted: list[tuple[int, bytes, int]] = []
    batcher = _batcher(emitted)
    for step in range(9):
        batcher.log({"a": step, "b": -step, "c": 0.5}, step=step, timestamp_ms=1000 + step)
    batcher.log({"a": 9.0})  # no step: the next after the highest so far
    batcher.start()  # now: it takes all 28 points at once
    _settled(batcher)
    assert [seq for seq, _, _ in emitted] == list(range(1, len(emitted) + 1))
    assert [points for _, _, points in emitted] == [9, 9, 10]  # at most 10 points a batch; no call is split
    decoded = [wire.decode(data) for _, data, _ in emitted]
    assert all(b.run_id == "run" and b.writer_id == "w" and b.epoch == 3 for b in decoded)
    steps = np.concatenate([b.step for b in decoded])
    np.testing.assert_array_equal(steps, np.repeat(np.arange(10), [3] * 9 + [1]))
    assert decoded[0].keys == ["a", "b", "c"] and decoded[-1].timestamp_ms[:3].tolist() == [1006] * 3
    # Nothing is acknowledged here: the points stay counted until the sender releases them.
    with batcher._lock:
        assert batcher.buffered_points == 28
        batcher.release(28)
        batcher.close()
    batcher.join(5)


def test_a_full_buffer_drops_and_counts_when_asked_to() -> None:
    batcher = _batcher([], max_buffer_points=4, on_full="drop")
    for step in range(5):
        batcher.log({"a": 1.0, "b": 2.0}, step=step)
    assert batcher.dropped_points == 6 and batcher.buffered_points == 4
    with batcher._lock:
        assert batcher.take_dropped() == 6 and batcher.take_dropped() == 0


def test_calls_of_mixed_keys_are_read_back_and_encoded_in_order() -> None:
    calls = PendingCalls(None, batch_points=100)
    for keyset, keys, step, values in (
        (0, ("a", "b"), 0, [1.0, 2.0]),
        (1, ("b",), 1, [3]),
        (2, ("c", "a"), 2, [4.0, 5]),
    ):
        calls.add(keyset, keys, step, 10 + step, values)
    calls.taken(1)
    columns = calls.taken_calls()
    assert columns.parts(100) == [(0, 3)] and columns.parts(2) == [(0, 1), (1, 2), (2, 3)]
    assert columns.parts(3) == [(0, 2), (2, 3)]  # whole calls, at most 3 points each
    data, points = columns.encode("run", "w", 7, 0, 3, 4)
    batch = wire.decode(data)
    assert points == 5 and batch.seq == 7 and batch.epoch == 4 and batch.keys == ["a", "b", "c"]
    assert [batch.keys[i] for i in batch.key_index] == ["a", "b", "b", "c", "a"]
    np.testing.assert_array_equal(batch.value, [1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(batch.step, [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(batch.timestamp_ms, [10, 10, 11, 12, 12])


@pytest.mark.parametrize("value", ["0.5", None, "abc", object()])
def test_a_value_that_is_no_number_is_a_type_error_naming_its_key_and_nothing_is_kept(value: object) -> None:
    emitted: list[tuple[int, bytes, int]] = []
    batcher = _batcher(emitted)
    with pytest.raises(TypeError, match="metric 'b'"):
        batcher.log({"a": 1.0, "b": value}, step=0)
    with pytest.raises(TypeError, match=r"step 1\.5 is not an integer"):
        batcher.log({"a": 1.0}, step=1.5)  # type: ignore[arg-type]
    batcher.log({"a": 2.0, "b": np.float32(0.25)}, step=1)
    batcher.start()
    _settled(batcher)
    (batch,) = [wire.decode(data) for _, data, _ in emitted]
    assert batch.step.tolist() == [1, 1] and batch.value.tolist() == [2.0, 0.25]


class _Writer:
    def __init__(self) -> None:
        self.said: list[str] = []

    def close(self, timeout: float | None = 30.0) -> None:
        self.said.append("close")

    def _pause_for_fork(self) -> None:
        self.said.append("pause")

    def _resume_after_fork(self) -> None:
        self.said.append("resume")

    def _forget_after_fork(self) -> None:
        self.said.append("forget")


def test_a_fork_pauses_the_writers_and_the_child_forgets_them() -> None:
    started, of_run = _Writer(), _Writer()
    lifecycle.writer_started(started)
    lifecycle.writer_started(of_run)
    lifecycle.run_writer(of_run)
    pid = os.fork()
    if pid == 0:  # the child: the parent's writers are forgotten, never resumed or closed here
        lifecycle.flush_all()
        forgotten = of_run.said == started.said == ["pause", "forget"]
        os._exit(0 if not lifecycle._started and not lifecycle._of_runs and forgotten else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert started.said == of_run.said == ["pause", "resume"]
    lifecycle.flush_all()
    assert started.said == ["pause", "resume"] and of_run.said == ["pause", "resume", "close"]


FORK_WHILE_LOGGING = """
import os, sys, threading, time, grpc
from runstream.client.writer import MetricWriter
channel = grpc.insecure_channel("127.0.0.1:1")
run_id = "00000000-0000-0000-0000-000000000001"
w = MetricWriter(channel, "127.0.0.1:1", run_id, "w", heartbeat_s=0, flush_interval=0.001)
stop = False
def worker(t):
    i = 0
    while not stop:
        w.log({f"t{t}": float(i)}, step=i)
        i += 1
        if w._batcher.buffered_points > 1_000_000:
            with w._lock:
                w._batcher.release(w._batcher.buffered_points)
for t in range(4):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
hung = 0
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        w.log({"child": 1.0}, step=0)  # the parent's writer: kept in the child's memory, never sent
        os._exit(0)
    deadline = time.monotonic() + 5
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
print("hung", hung, flush=True)
os._exit(0)
"""


def test_a_child_forked_while_other_threads_log_is_not_stuck_on_the_writers_lock() -> None:
    done = subprocess.run([sys.executable, "-c", FORK_WHILE_LOGGING], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "hung 0", done.stdout + done.stderr

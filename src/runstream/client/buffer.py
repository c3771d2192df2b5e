"""The writer's buffer and its batcher thread: logging calls are held as they came, and packed
into columnar MetricBatches with numpy off the training loop's thread.

The calling thread only does a dict lookup and one copy of the call into the pending buffer
(client/pending.py: a shared file mapping of the spool, so that it survives the process) under
the writer's lock. The batcher thread takes what is pending every `flush_interval` (sooner once
`batch_points` wait or a flush asks), reads it back as numpy columns, numbers each batch with
the next `seq` of the writer's epoch and hands it to the sender (client/sender.py).

The buffer is bounded (`max_buffer_points`, counting unsent and unacknowledged points in memory;
the sender gives points back as they are acknowledged or spilled to the spool). When it is full,
`on_full="block"` makes logging calls wait up to `block_timeout` seconds and then raise
BufferFull; `on_full="drop"` drops the call, counts it in `dropped_points` and logs a warning
(the first time, then every 10,000 dropped calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from runstream.client.pending import PendingCalls
from runstream.errors import BufferFull
from runstream.wire import batch as wire

# The writer's logger, for all its parts: what people filter the SDK's delivery warnings by.
log = logging.getLogger("runstream.client.writer")


class Batcher:
    """The buffer of one writer, and the thread that turns it into batches for `emit(seq, data, points)`.

    Its state is guarded by `lock`, the writer's condition, which the sender shares: acks free
    room that blocked logging calls wait for."""

    def __init__(
        self,
        lock: threading.Condition,
        run_id: str,
        writer_id: str,
        epoch: int,
        target: str,
        *,
        batch_points: int,
        flush_interval: float,
        max_buffer_points: int,
        on_full: str,
        block_timeout: float,
        emit: Callable[[int, bytes, int], None],
        pending_calls: PendingCalls | None = None,
    ) -> None:
        self._lock = lock
        # The condition's own lock, for the logging call: entered directly it costs a training
        # loop less than the condition's Python-level __enter__ and __exit__.
        self._mutex: AbstractContextManager[Any] = getattr(lock, "_lock", lock)
        self.run_id = run_id
        self.writer_id = writer_id
        self.epoch = epoch
        self.target = target
        self.batch_points = batch_points
        self.flush_interval = flush_interval
        self.max_buffer_points = max_buffer_points
        self.on_full = on_full
        self.block_timeout = block_timeout
        self._emit = emit
        # The calls not yet taken, in file mappings of the spool that outlive the process
        # (client/pending.py), or in memory without a spool.
        self.pending_calls = pending_calls or PendingCalls(None, batch_points)
        self._pending_count = 0  # calls not yet taken
        self._pending_points = 0
        self.buffered_points = 0  # pending + unacked, in memory
        self.dropped_points = 0
        self._dropped_unreported = 0  # dropped since the last flush, which reports them
        self._drops_logged = 0
        self._auto_step = 0
        self._keysets: dict[tuple[str, ...], int] = {}  # every key tuple logged, checked, numbered
        self._seq = 0  # the last batch made; only the batcher thread moves it
        self._flush_now = False
        self.emitting = False  # the batcher thread holds calls taken from `pending`
        self.closed = False
        self._thread = threading.Thread(target=self._loop, name=f"runstream-batcher-{writer_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    # ---------------------------------------------------------------- calling thread

    def log(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        timestamp_ms: int | None = None,
        *,
        moves_step: bool = True,
    ) -> None:
        """Buffer one call. `moves_step=False` (system metrics, on their own clock) leaves the
        counter that steps calls without a step alone."""
        keys = tuple(metrics)
        keyset = self._keysets.get(keys)
        if keyset is None:
            for key in keys:
                wire.check_key(key)
            keyset = self._keysets[keys] = len(self._keysets)
        ts = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
        n = len(keys)
        with self._mutex:
            if self.closed:
                raise RuntimeError(f"the metric writer of run {self.run_id} is closed")
            if self.buffered_points + n > self.max_buffer_points and not self._wait_for_room(n):
                return
            if step is None:
                step = self._auto_step
            self.pending_calls.add(keyset, keys, step, ts, metrics.values())  # the one copy of the call
            if moves_step:
                self._auto_step = max(self._auto_step, step + 1)
            self._pending_count += 1
            self._pending_points += n
            self.buffered_points += n
            if self._pending_points >= self.batch_points:
                self._lock.notify_all()

    @property
    def pending(self) -> bool:
        """Called holding the lock: whether calls wait to be taken."""
        return self._pending_count > 0

    def count_dropped(self, n: int, why: str) -> None:
        """Called holding the lock: `n` points will never reach the server (on_full="drop"); said
        the first time and every 10,000 times after."""
        self.dropped_points += n
        self._dropped_unreported += n
        if self._drops_logged % 10_000 == 0:
            log.warning("runstream: %s: dropped %d points so far", why, self.dropped_points)
        self._drops_logged += 1

    def _wait_for_room(self, n: int) -> bool:
        """Called holding the lock with the buffer full: True once there is room."""
        if self.on_full == "drop":
            self.count_dropped(n, "the buffer is full (server unreachable?)")
            return False
        deadline = time.monotonic() + self.block_timeout
        while self.buffered_points + n > self.max_buffer_points:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferFull(
                    f"the metric buffer of run {self.run_id} held {self.buffered_points:,} points for "
                    f"{self.block_timeout:.0f} s; is the server at {self.target} reachable?"
                )
            self._lock.wait(left)
        return True

    # ---------------------------------------------------------------- any thread, holding the lock

    def flush_soon(self) -> None:
        """Called holding the lock: batch what is pending now rather than at the next interval."""
        self._flush_now = True
        self._lock.notify_all()

    def release(self, points: int) -> None:
        """Called holding the lock: `points` left memory (acknowledged, spilled or spooled offline)."""
        self.buffered_points -= points

    def take_dropped(self) -> int:
        """Called holding the lock: the points dropped since the last call."""
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        return dropped

    def close(self) -> None:
        """Called holding the lock: refuse new calls; the thread ends once nothing is pending."""
        self.closed = True
        self._lock.notify_all()

    # ---------------------------------------------------------------- batcher thread

    def _loop(self) -> None:
        while True:
            with self._lock:
                deadline = time.monotonic() + self.flush_interval
                while not (self.closed or self._flush_now or self._pending_points >= self.batch_points):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                if self.closed and not self._pending_count:
                    return
                self._flush_now = False
                taken = self._pending_count > 0
                self._pending_count = self._pending_points = 0
                self.emitting = taken
                calls = self.pending_calls
                if taken:
                    calls.taken(self._seq + 1)
            if not taken:
                continue
            last = -1
            try:
                columns = calls.taken_calls()  # outside the lock: nothing writes the taken file
                parts = columns.parts(self.batch_points)
                last = self._seq + len(parts)
                with self._lock:
                    calls.numbered(len(parts))
                for a, b in parts:
                    seq = self._seq + 1
                    data, points = columns.encode(self.run_id, self.writer_id, seq, a, b, self.epoch)
                    self._emit(seq, data, points)
                    self._seq = seq
            finally:
                with self._lock:
                    if self._seq == last:
                        calls.spooled()
                    self.emitting = False
                    self._lock.notify_all()

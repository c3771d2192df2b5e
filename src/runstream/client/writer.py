"""The SDK's metric writer: logging calls append to a buffer and return; background
threads turn the buffer into columnar batches and stream them to the server.

- The calling thread does a dict lookup, a list of floats and one append under a lock.
- The batcher thread packs buffered calls into one MetricBatch with numpy and gives it the
  next `seq`; the batch stays in `unacked` until the server acknowledges it.
- The stream thread keeps one StreamMetrics stream open; after a failure it reconnects
  with backoff and resends every unacked batch with its original `seq`, which the server
  de-duplicates, so a retry never doubles a point.
- A system-metrics thread (client/system.py) samples the process and host into `system/...`.
- Before a batch is sent it is appended to the writer's disk spool (client/spool.py), which is
  trimmed as acks come back; what a dead process leaves there `runstream sync` sends later.
  An offline writer only spools: a sync (or auto mode's follower) sends it.
- The heartbeat thread tells the server every `heartbeat_s` (RUNSTREAM_HEARTBEAT_S, 30 s)
  that this process lives, so a run whose processes all died becomes CRASHED.

The buffer is bounded (`max_buffer_points`, counting unsent and unacked points in memory).
With the spool on, the oldest unacknowledged batches beyond half of it are dropped from memory
(they are on disk) and read back from the spool when they are sent again, so a server away for
hours costs disk, not memory, and does not block the training loop. When the buffer is full,
`on_full="block"` makes logging calls wait up to `block_timeout` seconds and then raise
BufferFull; `on_full="drop"` drops the call, counts it in `dropped_points` and logs a warning
(the first time, then every 10,000 dropped calls).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import numpy as np

from runstream.client import lifecycle, settings, system
from runstream.client.spool import SpooledWriter, SpoolWriter
from runstream.errors import BufferFull, DeadlineExceeded, PointsDropped, RunstreamError, from_status
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb

log = logging.getLogger(__name__)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
}
_CLOSE = None
STATUS_BY_CODE = {c.value[0]: c for c in grpc.StatusCode}
TROUBLE_LOG_S = 60.0  # while the server pushes back or is away, a reminder this often


class MetricWriter:
    def __init__(
        self,
        channel: grpc.Channel,
        target: str,
        run_id: str,
        writer_id: str,
        *,
        epoch: int = 0,
        batch_points: int = 20_000,
        flush_interval: float = 0.2,
        max_buffer_points: int = 5_000_000,
        on_full: str = "block",
        block_timeout: float = 60.0,
        heartbeat_s: float | None = None,
        spool: SpoolWriter | None = None,
        offline: bool = False,
    ) -> None:
        if on_full not in ("block", "drop"):
            raise ValueError("on_full must be 'block' or 'drop'")
        if not 0 < batch_points <= wire.MAX_POINTS:
            raise ValueError(f"batch_points must be between 1 and {wire.MAX_POINTS:,}")
        self.target = target
        self.run_id = run_id
        self.writer_id = writer_id
        self.epoch = epoch  # this process's session as the writer (OpenWriter): seq counts within it
        self.batch_points = batch_points
        self.flush_interval = flush_interval
        self.max_buffer_points = max_buffer_points
        self.on_full = on_full
        self.block_timeout = block_timeout
        # While this process lives the server hears from it; a run none of whose writers it
        # hears from for its --crash-after becomes CRASHED. 0: no heartbeats.
        self.heartbeat_s = settings.current().heartbeat_s if heartbeat_s is None else heartbeat_s
        self.spool = spool
        self._spool_ok = spool is not None  # false once an append failed: spooling stops
        self.offline = offline  # batches go to the spool only; nothing is sent from here
        if offline and spool is None:
            raise ValueError("an offline writer needs a spool")
        self.dropped_points = 0
        self._dropped_unreported = 0  # dropped since the last flush, which reports them
        self.sent_batches = 0
        self.stored_batches = 0  # acknowledged with points: what WaitCommitted counts
        self.errors: list[RunstreamError] = []  # batches the server refused for good

        self._stream_method = channel.stream_stream(
            "/runstream.v1.TrackingService/StreamMetrics",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        self._wait_committed = channel.unary_unary(
            "/runstream.v1.TrackingService/WaitCommitted",
            request_serializer=pb.WaitCommittedRequest.SerializeToString,
            response_deserializer=pb.WaitCommittedResponse.FromString,
        )
        self._heartbeat = channel.unary_unary(
            "/runstream.v1.TrackingService/Heartbeat",
            request_serializer=pb.HeartbeatRequest.SerializeToString,
            response_deserializer=pb.HeartbeatResponse.FromString,
        )
        self._lock = threading.Condition()
        self._pending: list[tuple[tuple[str, ...], int, int, list[float]]] = []
        self._pending_points = 0
        self._buffered_points = 0  # pending + unacked, in memory
        self._spilled_points = 0  # unacked points whose batches are only in the spool now
        self._auto_step = 0
        self._known_keys: dict[tuple[str, ...], bool] = {}
        self._seq = 0
        # seq -> (data, or None when it is only in the spool, points); spilled ones are the oldest
        self._unacked: OrderedDict[int, tuple[bytes | None, int]] = OrderedDict()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._flush_now = False
        self._emitting = False  # the batcher holds calls taken from _pending
        self._closing = False
        self._closed = False
        self._drops_logged = 0
        self._trouble_since: float | None = None  # when the server began to push back or went away
        self._trouble_logged = 0.0
        self._call: Any = None  # the open StreamMetrics call, while the stream thread is inside gRPC
        self._paused = False  # a fork is under way: stay out of gRPC
        self._beating = False  # the heartbeat thread is inside gRPC
        self._batcher = threading.Thread(target=self._batch_loop, name=f"runstream-batcher-{writer_id}", daemon=True)
        self._streamer = threading.Thread(target=self._stream_loop, name=f"runstream-stream-{writer_id}", daemon=True)
        self._beater = threading.Thread(
            target=self._heartbeat_loop, name=f"runstream-heartbeat-{writer_id}", daemon=True
        )
        lifecycle.writer_started(self)
        self._batcher.start()
        if not offline:
            self._streamer.start()
            if self.heartbeat_s > 0:
                self._beater.start()
        self._system = system.start(lambda values, step: self.log(values, step, moves_step=False))

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
        if keys not in self._known_keys:
            for key in keys:
                wire.check_key(key)
            self._known_keys[keys] = True
        values = [float(v) for v in metrics.values()]
        ts = timestamp_ms if timestamp_ms is not None else time.time_ns() // 1_000_000
        n = len(values)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the metric writer of run {self.run_id} is closed")
            if self._buffered_points + n > self.max_buffer_points and not self._wait_for_room(n):
                return
            if step is None:
                step = self._auto_step
            if moves_step:
                self._auto_step = max(self._auto_step, step + 1)
            self._pending.append((keys, step, ts, values))
            self._pending_points += n
            self._buffered_points += n
            if self._pending_points >= self.batch_points:
                self._lock.notify_all()

    def _wait_for_room(self, n: int) -> bool:
        """Called holding the lock with the buffer full: True once there is room."""
        if self.on_full == "drop":
            self.dropped_points += n
            self._dropped_unreported += n
            if self._drops_logged % 10_000 == 0:
                log.warning(
                    "runstream buffer full (server unreachable?): dropped %d points so far", self.dropped_points
                )
            self._drops_logged += 1
            return False
        deadline = time.monotonic() + self.block_timeout
        while self._buffered_points + n > self.max_buffer_points:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferFull(
                    f"the metric buffer of run {self.run_id} held {self._buffered_points:,} points for "
                    f"{self.block_timeout:.0f} s; is the server at {self.target} reachable?"
                )
            self._lock.wait(left)
        return True

    def flush(self, timeout: float | None = None, visible: bool = False) -> None:
        """Wait until every logged point is acknowledged (durable in the server's ingest log);
        raise the first refusal, if any, or PointsDropped when points were dropped
        (on_full="drop") since the last flush. With `visible`, also wait until the loaders have
        stored them all in PostgreSQL, so queries see them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._flush_acked(deadline, timeout)
        if visible:
            left = 600.0 if deadline is None else max(0.001, deadline - time.monotonic())
            request = pb.WaitCommittedRequest(
                run_id=self.run_id,
                writer_id=self.writer_id,
                epoch=self.epoch,
                batches=self.stored_batches,
                timeout_ms=max(1, min(600_000, int(left * 1000))),
            )
            try:
                self._wait_committed(request, timeout=left + 5)
            except grpc.RpcError as exc:
                raise from_status(exc.code(), exc.details() or "") from None

    def persist(self, timeout: float | None = None) -> None:
        """Wait until every point logged so far is in a batch written to the spool (durable as
        RUNSTREAM_SPOOL_FSYNC says), sent or not; raise the first failure since the last call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_now = True
            self._lock.notify_all()
            while self._pending or self._emitting:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(f"persist: points of run {self.run_id} not batched after {timeout} s")
                self._lock.wait(left if left is not None else 1.0)
            if self.errors:
                err, self.errors = self.errors[0], []
                raise err

    def _flush_acked(self, deadline: float | None, timeout: float | None) -> None:
        with self._lock:
            self._flush_now = True
            self._lock.notify_all()
            while self._buffered_points > 0 or self._spilled_points > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(
                        f"flush: {self._buffered_points + self._spilled_points:,} points of run {self.run_id} "
                        "not acknowledged "
                        f"after {timeout} s (is the server at {self.target} reachable?)"
                    )
                self._lock.wait(left if left is not None else 1.0)
            if self.errors:
                err, self.errors = self.errors[0], []
                raise err
            if self._dropped_unreported:
                dropped, self._dropped_unreported = self._dropped_unreported, 0
                raise PointsDropped(
                    f"flush: {dropped:,} points of run {self.run_id} were dropped since the last flush because the "
                    f"buffer was full (on_full='drop'); the rest are acknowledged",
                    dropped,
                )

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then end the stream and the threads."""
        if self._closed:
            return
        if self._system is not None:
            self._system.stop()
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closed = True
                self._closing = True
                self._lock.notify_all()
            self._queue.put(_CLOSE)
            self._batcher.join(5)
            if self._streamer.is_alive():
                self._streamer.join(5)
            if self._beater.is_alive():
                self._beater.join(5)
            self._close_spool()

    def _close_spool(self) -> None:
        if self.spool is None:
            return
        with self._lock:
            unsent = sum(points for _, points in self._unacked.values())
            all_acked = not self.offline and not self._unacked and not self._pending
            upto = 0 if self.offline else self._acked_upto()  # offline: nothing is acknowledged
        self.spool.close(all_acked, upto)
        if unsent:
            log.warning(
                "runstream: %d points of run %s are kept in the spool %s; `runstream sync` sends them",
                unsent,
                self.run_id,
                self.spool.directory,
            )

    def _acked_upto(self) -> int:
        """Called holding the lock: the seq up to which every batch is settled."""
        return next(iter(self._unacked)) - 1 if self._unacked else self._seq

    # ---------------------------------------------------------------- batcher thread

    def _batch_loop(self) -> None:
        while True:
            with self._lock:
                deadline = time.monotonic() + self.flush_interval
                while not (self._closing or self._flush_now or self._pending_points >= self.batch_points):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                if self._closing and not self._pending:
                    return
                self._flush_now = False
                taken, self._pending = self._pending, []
                self._pending_points = 0
                self._emitting = bool(taken)
            try:
                for part in _split(taken, self.batch_points):
                    self._emit(part)
            finally:
                with self._lock:
                    self._emitting = False
                    self._lock.notify_all()

    def _emit(self, calls: list[tuple[tuple[str, ...], int, int, list[float]]]) -> None:
        seq = self._seq + 1  # only this thread moves _seq
        data, points = encode_calls(self.run_id, self.writer_id, seq, calls, self.epoch)
        spooled = self._append_to_spool(seq, data)
        with self._lock:
            self._seq = seq
            if self.offline:  # in the spool is as far as it goes from here
                self._buffered_points -= points
                if not spooled:
                    self.errors.append(
                        RunstreamError(f"{points:,} points of offline run {self.run_id} were lost: the spool failed")
                    )
                self._lock.notify_all()
                return
            self._unacked[seq] = (data, points)
            self._queue.put(data)
            if self._spool_ok and self._buffered_points > self.max_buffer_points // 2:
                self._spill()

    def _append_to_spool(self, seq: int, data: bytes) -> bool:
        """True when the batch is in the spool. A spool that fails (a full or broken disk) is
        said once and given up: an online writer goes on from memory, as without a spool."""
        if not self._spool_ok or self.spool is None:
            return False
        try:
            self.spool.append(seq, data)
            return True
        except OSError as exc:
            self._spool_ok = False
            log.error(
                "runstream: the spool %s failed (%s); run %s goes on %s",
                self.spool.directory,
                exc,
                self.run_id,
                "losing its points" if self.offline else "with unsent points in memory only",
            )
            return False

    def _spill(self) -> None:
        """Called holding the lock: drop the oldest unacked batches' bytes from memory (the
        spool has them) until half the buffer is free."""
        for seq, (data, points) in self._unacked.items():
            if self._buffered_points <= self.max_buffer_points // 2:
                break
            if data is None:
                continue
            self._unacked[seq] = (None, points)
            self._buffered_points -= points
            self._spilled_points += points
        self._lock.notify_all()

    # ---------------------------------------------------------------- heartbeat thread

    def _heartbeat_loop(self) -> None:
        request = pb.HeartbeatRequest(run_id=self.run_id, writer_id=self.writer_id)
        refused = False
        while True:
            with self._lock:
                if self._closing:
                    return
                if self._paused:
                    self._lock.wait(self.heartbeat_s)
                    continue
                self._beating = True
            try:
                self._heartbeat(request, timeout=min(10.0, self.heartbeat_s))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # a server from before heartbeats
                    return
                # Unreachable or pushing back: the stream thread reports that; try again next beat.
                # Anything else (a token without the write scope, a run deleted) is said once.
                if exc.code() not in RETRYABLE and not refused:
                    refused = True
                    log.warning(
                        "heartbeats of run %s are refused (%s): the run may be marked CRASHED",
                        self.run_id,
                        exc.details(),
                    )
            finally:
                with self._lock:
                    self._beating = False
                    self._lock.notify_all()
            with self._lock:
                self._lock.wait_for(lambda: self._closing, timeout=self.heartbeat_s)

    # ---------------------------------------------------------------- stream thread

    def _stream_loop(self) -> None:
        backoff = 0.1
        while True:
            with self._lock:
                while self._paused:
                    self._lock.wait()
                if self._closing and not self._unacked:
                    return
                self._queue = queue.SimpleQueue()  # the batcher now feeds the new stream
                spilled = [seq for seq, (data, _) in self._unacked.items() if data is None]
                for data, _ in self._unacked.values():
                    if data is not None:
                        self._queue.put(data)
                if self._closing:
                    self._queue.put(_CLOSE)
                requests = self._queue
            try:
                with self._lock:
                    call = self._call = self._stream_method(
                        itertools.chain(self._read_spilled(spilled), _drain(requests))
                    )
            except ValueError:  # grpc: "Channel closed!" -- the client was closed under us
                with self._lock:
                    lost = sum(points for _, points in self._unacked.values())
                if lost:
                    log.error("runstream: client closed with %d points of run %s unacknowledged", lost, self.run_id)
                return
            try:
                for ack in call:
                    if not self._on_ack(ack):
                        call.cancel()  # type: ignore[no-untyped-call]  # the server pushed back: resend after a pause, on a new stream
                        break
                    backoff = 0.1
                else:
                    if self._closing:
                        return
            except grpc.RpcError as exc:
                log.debug("metric stream ended (%s: %s); reconnecting in %.1f s", exc.code(), exc.details(), backoff)
                if exc.code() != grpc.StatusCode.CANCELLED:  # not our own cancel after a pushback
                    with self._lock:
                        self._trouble(f"the server at {self.target} is unreachable ({exc.code().name})")
            finally:
                requests.put(_CLOSE)  # release grpc's reader of the old request iterator
                with self._lock:
                    self._call = None
                    self._lock.notify_all()
            with self._lock:
                self._lock.wait(backoff)
                if self._closed and not self._unacked:
                    return
            backoff = min(backoff * 2, 5.0)

    def _read_spilled(self, seqs: list[int]) -> Iterator[bytes]:
        """The spilled batches `seqs` (ascending), read back from the spool as the stream takes them."""
        if not seqs or self.spool is None:
            return
        wanted = set(seqs)
        for seq, data in SpooledWriter.at(self.spool.directory).records(seqs[0] - 1, quiet=True):
            if seq > seqs[-1]:
                return
            if seq in wanted:
                yield data

    def _trouble(self, what: str) -> None:
        """Called holding the lock when sending stops: log it when it starts, then once a
        minute while it lasts, with the points waiting."""
        now = time.monotonic()
        if self._trouble_since is None:
            self._trouble_since = now
        elif now - self._trouble_logged < TROUBLE_LOG_S:
            return
        self._trouble_logged = now
        log.warning(
            "runstream: %s; %d points of run %s wait in the buffer and are resent (for %.0f s so far)",
            what,
            self._buffered_points + self._spilled_points,
            self.run_id,
            now - self._trouble_since,
        )

    def _recovered(self) -> None:
        if self._trouble_since is not None:
            log.warning(
                "runstream: sending to %s again after %.0f s; %d points still to send",
                self.target,
                time.monotonic() - self._trouble_since,
                self._buffered_points,
            )
            self._trouble_since = None
            self._trouble_logged = 0.0

    def _pause_for_fork(self) -> None:
        """Leave gRPC before the process forks: gRPC's fork handlers only run when no
        thread is inside a call. Unacked batches are resent on the next stream."""
        with self._lock:
            self._paused = True
            if self._call is not None:
                self._call.cancel()
            deadline = time.monotonic() + 5.0
            while (self._call is not None or self._beating) and time.monotonic() < deadline:
                self._lock.wait(0.05)

    def _resume_after_fork(self) -> None:
        with self._lock:
            self._paused = False
            self._lock.notify_all()

    def _on_ack(self, ack: pb.BatchAck) -> bool:
        """Settle one batch; False when the server asks for it again later."""
        code = STATUS_BY_CODE.get(ack.code, grpc.StatusCode.UNKNOWN)
        with self._lock:
            if code in RETRYABLE:
                self._trouble(f"the server pushes back ({code.name}: {ack.message})")
                return False  # stays unacked; resent with the same seq on the next stream
            self._recovered()
            entry = self._unacked.pop(ack.seq, None)
            if entry is None:
                return True
            if entry[0] is None:
                self._spilled_points -= entry[1]
            else:
                self._buffered_points -= entry[1]
            self.sent_batches += 1
            if code == grpc.StatusCode.OK and entry[1] > 0:
                self.stored_batches += 1  # appended: a loader will record it under (run, writer, epoch, seq)
            if code != grpc.StatusCode.OK:
                err = from_status(code, ack.message)
                log.error("runstream refused a batch of %d points: %s", entry[1], err)
                self.errors.append(err)
            self._lock.notify_all()
            upto = self._acked_upto()
        if self.spool is not None:
            self.spool.acked(upto)
        return True


def _drain(q: queue.SimpleQueue[bytes | None]) -> Iterator[bytes]:
    while True:
        item = q.get()
        if item is _CLOSE:
            return
        yield item


def _split(
    calls: list[tuple[tuple[str, ...], int, int, list[float]]], limit: int
) -> Iterator[list[tuple[tuple[str, ...], int, int, list[float]]]]:
    """Consecutive runs of calls holding at most `limit` points (a call is never split)."""
    part: list[tuple[tuple[str, ...], int, int, list[float]]] = []
    n = 0
    for call in calls:
        if part and n + len(call[3]) > limit:
            yield part
            part, n = [], 0
        part.append(call)
        n += len(call[3])
    if part:
        yield part


def encode_calls(
    run_id: str, writer_id: str, seq: int, calls: list[tuple[tuple[str, ...], int, int, list[float]]], epoch: int = 0
) -> tuple[bytes, int]:
    """One MetricBatch from buffered calls (keys, step, timestamp, values): the key
    dictionary is built per distinct key tuple, the columns with numpy."""
    dictionary: dict[str, int] = {}
    index_of: dict[tuple[str, ...], np.ndarray] = {}
    for keys, _, _, _ in calls:
        if keys not in index_of:
            index_of[keys] = np.array([dictionary.setdefault(k, len(dictionary)) for k in keys], dtype=np.uint32)
    lengths = np.fromiter((len(c[3]) for c in calls), dtype=np.int64, count=len(calls))
    total = int(lengths.sum())
    if len(index_of) == 1:
        key_index = np.tile(next(iter(index_of.values())), len(calls))
    else:
        key_index = np.concatenate([index_of[c[0]] for c in calls])
    value = np.fromiter(itertools.chain.from_iterable(c[3] for c in calls), dtype=np.float64, count=total)
    step = np.repeat(np.fromiter((c[1] for c in calls), dtype=np.int64, count=len(calls)), lengths)
    stamp = np.repeat(np.fromiter((c[2] for c in calls), dtype=np.int64, count=len(calls)), lengths)
    return wire.encode(run_id, writer_id, seq, list(dictionary), key_index, step, stamp, value, epoch), total

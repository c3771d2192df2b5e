"""The writer's sender: its StreamMetrics stream, the acks that settle batches, and the resends
that make a server going away cost time, not points.

A batch is appended to the writer's disk spool (client/spool.py) before it is sent and stays in
`unacked` until the server acknowledges it; the spool is trimmed as acks come back, and what a
dead process leaves there `runstream sync` sends later. After a failure or a pushback the stream
thread reconnects with backoff and resends every unacked batch with its original `seq`, which
the server de-duplicates, so a retry never doubles a point. With the spool on, the oldest
unacked batches beyond half the buffer leave memory (they are on disk) and are read back from
the spool when they are sent again, so a server away for hours costs disk, not memory. An
offline writer only spools: a sync (or auto mode's follower) sends it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import grpc

from runstream.client.buffer import Batcher
from runstream.client.spool import SpooledWriter, SpoolWriter
from runstream.errors import RunstreamError, from_status
from runstream.wire.proto import tracking_pb2 as pb

log = logging.getLogger("runstream.client.writer")  # the writer's logger, for all its parts

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


class Sender:
    """The batches of one writer from the batcher to the server (or, offline, to the spool).

    Its state is guarded by `lock`, the writer's condition, shared with the batcher, whose
    `buffered_points` it gives back as batches are acknowledged or spilled."""

    def __init__(
        self,
        channel: grpc.Channel,
        lock: threading.Condition,
        batcher: Batcher,
        *,
        spool: SpoolWriter | None,
        offline: bool,
    ) -> None:
        self._lock = lock
        self._batcher = batcher
        self.target = batcher.target
        self.run_id = batcher.run_id
        self.spool = spool
        self._spool_ok = spool is not None  # false once an append failed: spooling stops
        self.offline = offline  # batches go to the spool only; nothing is sent from here
        self._stream_method = channel.stream_stream(
            "/runstream.v1.TrackingService/StreamMetrics",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        self.sent_batches = 0
        self.stored_batches = 0  # acknowledged with points: what WaitCommitted counts
        self.errors: list[RunstreamError] = []  # batches the server refused for good
        self._seq = 0  # the last batch handed over
        # seq -> (data, or None when it is only in the spool, points); spilled ones are the oldest
        self.unacked: OrderedDict[int, tuple[bytes | None, int]] = OrderedDict()
        self.spilled_points = 0  # unacked points whose batches are only in the spool now
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.closing = False
        self.paused = False  # a fork is under way: stay out of gRPC
        self.call: Any = None  # the open StreamMetrics call, while the stream thread is inside gRPC
        self._trouble_since: float | None = None  # when the server began to push back or went away
        self._trouble_logged = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"runstream-stream-{batcher.writer_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---------------------------------------------------------------- batcher thread

    def add(self, seq: int, data: bytes, points: int) -> None:
        """A new batch from the batcher: into the spool, then onto the stream (offline: the
        spool only)."""
        spooled = self._append_to_spool(seq, data, points)
        with self._lock:
            self._seq = seq
            if self.offline:  # in the spool is as far as it goes from here
                self._batcher.release(points)
                if not spooled:
                    self.errors.append(
                        RunstreamError(f"{points:,} points of offline run {self.run_id} were lost: the spool failed")
                    )
                self._lock.notify_all()
                return
            self.unacked[seq] = (data, points)
            self._queue.put(data)
            if self._spool_ok and self._batcher.buffered_points > self._batcher.max_buffer_points // 2:
                self._spill()

    def _append_to_spool(self, seq: int, data: bytes, points: int) -> bool:
        """True when the batch is in the spool. A spool that fails (a full or broken disk) is
        said once and given up: an online writer goes on from memory, as without a spool."""
        if not self._spool_ok or self.spool is None:
            return False
        try:
            self.spool.append(seq, data, points)
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

    def sending_stopped(self) -> bool:
        """Nothing goes to the server now: it is away or pushes back (or the writer is offline)."""
        return self.offline or self._trouble_since is not None

    def dropped_by_spool(self, first: int, last: int, points: int) -> int:
        """The spool, full, removed the batches `first`..`last` of `points` points (on_full="drop"):
        those not acknowledged yet are never sent, and count as dropped. Returns their points."""
        with self._lock:
            if not self.offline:  # (offline, nothing is acknowledged)
                points = 0
                for seq in range(first, last + 1):
                    entry = self.unacked.pop(seq, None)
                    if entry is None:
                        continue
                    points += entry[1]
                    if entry[0] is None:
                        self.spilled_points -= entry[1]
                    else:
                        self._batcher.release(entry[1])
            if points:
                self._batcher.count_dropped(
                    points, "the spool is full (RUNSTREAM_SPOOL_MAX_BYTES; server unreachable?)"
                )
            self._lock.notify_all()
            return points

    def _spill(self) -> None:
        """Called holding the lock: drop the oldest unacked batches' bytes from memory (the
        spool has them) until half the buffer is free."""
        for seq, (data, points) in self.unacked.items():
            if self._batcher.buffered_points <= self._batcher.max_buffer_points // 2:
                break
            if data is None:
                continue
            self.unacked[seq] = (None, points)
            self._batcher.release(points)
            self.spilled_points += points
        self._lock.notify_all()

    # ---------------------------------------------------------------- the writer, closing

    def take_error(self) -> RunstreamError | None:
        """Called holding the lock: the first failure since the last call (the rest are logged)."""
        if not self.errors:
            return None
        err, self.errors = self.errors[0], []
        return err

    def end_stream(self) -> None:
        """After `closing` is set: end the stream once the batches in it are settled."""
        self._queue.put(_CLOSE)

    def close_spool(self) -> None:
        if self.spool is None:
            return
        with self._lock:
            unsent = sum(points for _, points in self.unacked.values())
            all_acked = not self.offline and not self.unacked and not self._batcher.pending
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
        return next(iter(self.unacked)) - 1 if self.unacked else self._seq

    # ---------------------------------------------------------------- stream thread

    def _loop(self) -> None:
        backoff = 0.1
        while True:
            with self._lock:
                while self.paused:
                    self._lock.wait()
                if self.closing and not self.unacked:
                    return
                self._queue = queue.SimpleQueue()  # the batcher now feeds the new stream
                spilled = [seq for seq, (data, _) in self.unacked.items() if data is None]
                for data, _ in self.unacked.values():
                    if data is not None:
                        self._queue.put(data)
                if self.closing:
                    self._queue.put(_CLOSE)
                requests = self._queue
            try:
                with self._lock:
                    call = self.call = self._stream_method(
                        itertools.chain(self._read_spilled(spilled), _drain(requests))
                    )
            except ValueError:  # grpc: "Channel closed!" -- the client was closed under us
                self._closed_under_us()
                return
            try:
                for ack in call:
                    if not self._on_ack(ack):
                        call.cancel()  # type: ignore[no-untyped-call]  # the server pushed back: resend after a pause, on a new stream
                        break
                    backoff = 0.1
                else:
                    if self.closing:
                        return
            except ValueError:  # the same, said by the first read when the channel is intercepted
                self._closed_under_us()
                return
            except grpc.RpcError as exc:
                log.debug("metric stream ended (%s: %s); reconnecting in %.1f s", exc.code(), exc.details(), backoff)
                if exc.code() != grpc.StatusCode.CANCELLED:  # not our own cancel after a pushback
                    with self._lock:
                        self._trouble(f"the server at {self.target} is unreachable ({exc.code().name})")
            finally:
                requests.put(_CLOSE)  # release grpc's reader of the old request iterator
                with self._lock:
                    self.call = None
                    self._lock.notify_all()
            with self._lock:
                self._lock.wait(backoff)
                if self.closing and not self.unacked:
                    return
            backoff = min(backoff * 2, 5.0)

    def _closed_under_us(self) -> None:
        with self._lock:
            lost = sum(points for _, points in self.unacked.values())
        if lost:
            log.error("runstream: client closed with %d points of run %s unacknowledged", lost, self.run_id)

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
            self._batcher.buffered_points + self.spilled_points,
            self.run_id,
            now - self._trouble_since,
        )

    def _recovered(self) -> None:
        if self._trouble_since is not None:
            log.warning(
                "runstream: sending to %s again after %.0f s; %d points still to send",
                self.target,
                time.monotonic() - self._trouble_since,
                self._batcher.buffered_points,
            )
            self._trouble_since = None
            self._trouble_logged = 0.0

    def pause(self) -> None:
        """Called holding the lock before a fork: leave gRPC. Unacked batches are resent on the
        next stream."""
        self.paused = True
        if self.call is not None:
            self.call.cancel()

    def _on_ack(self, ack: pb.BatchAck) -> bool:
        """Settle one batch; False when the server asks for it again later."""
        code = STATUS_BY_CODE.get(ack.code, grpc.StatusCode.UNKNOWN)
        with self._lock:
            if code in RETRYABLE:
                self._trouble(f"the server pushes back ({code.name}: {ack.message})")
                return False  # stays unacked; resent with the same seq on the next stream
            self._recovered()
            entry = self.unacked.pop(ack.seq, None)
            if entry is None:
                return True
            if entry[0] is None:
                self.spilled_points -= entry[1]
            else:
                self._batcher.release(entry[1])
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

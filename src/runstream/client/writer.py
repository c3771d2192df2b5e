"""The SDK's metric writer: logging calls append to a buffer and return; background
threads turn the buffer into columnar batches and stream them to the server.

MetricWriter composes the parts, one job each, around one lock (a training loop blocked on a
full buffer waits for acks):

- the buffer and its batcher thread (client/buffer.py): calls in, numbered MetricBatches out;
- the sender and its stream thread (client/sender.py): spool, send, settle acks, resend;
- the heartbeat thread (client/heartbeat.py), so a run whose processes died becomes CRASHED;
- the system-metrics thread (client/system.py), sampling the process and host into `system/...`.

It holds what spans them: flush and persist, close, and stepping out of gRPC for a fork
(client/lifecycle.py calls that for every started writer).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc

from runstream.client import lifecycle, settings, system
from runstream.client.buffer import Batcher, log
from runstream.client.heartbeat import Heartbeat
from runstream.client.pending import PendingCalls
from runstream.client.sender import Sender
from runstream.client.spool import SpoolWriter
from runstream.errors import DeadlineExceeded, PointsDropped, RunstreamError, from_status
from runstream.wire import batch as wire
from runstream.wire.proto import tracking_pb2 as pb


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
        self.offline = offline  # batches go to the spool only; nothing is sent from here
        if offline and spool is None:
            raise ValueError("an offline writer needs a spool")

        self._wait_committed = channel.unary_unary(
            "/runstream.v1.TrackingService/WaitCommitted",
            request_serializer=pb.WaitCommittedRequest.SerializeToString,
            response_deserializer=pb.WaitCommittedResponse.FromString,
        )
        # One lock for all the parts: the buffer's room is freed by the sender's acks.
        self._lock = threading.Condition()
        # With a spool, the calls not yet spooled are also kept where a killed process leaves them.
        self._pending_calls = (
            _pending_calls(spool, batch_points) if spool is not None and settings.current().spool_pending else None
        )
        self._batcher = Batcher(
            self._lock,
            run_id,
            writer_id,
            epoch,
            target,
            batch_points=batch_points,
            flush_interval=flush_interval,
            max_buffer_points=max_buffer_points,
            on_full=on_full,
            block_timeout=block_timeout,
            # The sender is made next, with the batcher it gives room back to; the thread starts after.
            emit=lambda seq, data, points: self._sender.add(seq, data, points),
            pending_calls=self._pending_calls,
        )
        self._sender = Sender(channel, self._lock, self._batcher, spool=spool, offline=offline)
        if spool is not None:
            spool.bound(on_full, self._sender.dropped_by_spool, self._sender.sending_stopped)
        self._heartbeat = Heartbeat(channel, self._lock, run_id, writer_id, self.heartbeat_s)
        lifecycle.writer_started(self)
        self._batcher.start()
        if not offline:
            self._sender.start()
            if self.heartbeat_s > 0:
                self._heartbeat.start()
        self._system = system.start(lambda values, step: self.log(values, step, moves_step=False))

    @property
    def dropped_points(self) -> int:
        """Points dropped because the buffer was full (on_full="drop")."""
        return self._batcher.dropped_points

    @property
    def sent_batches(self) -> int:
        """Batches the server has settled (stored or refused for good)."""
        return self._sender.sent_batches

    @property
    def stored_batches(self) -> int:
        """Batches acknowledged with points: what WaitCommitted counts."""
        return self._sender.stored_batches

    @property
    def errors(self) -> list[RunstreamError]:
        """Batches the server refused for good, not yet raised by a flush."""
        return self._sender.errors

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
        self._batcher.log(metrics, step, timestamp_ms, moves_step=moves_step)

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
            self._batcher.flush_soon()
            while self._batcher.pending or self._batcher.emitting:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(f"persist: points of run {self.run_id} not batched after {timeout} s")
                self._lock.wait(left if left is not None else 1.0)
            err = self._sender.take_error()
            if err is not None:
                raise err

    def _flush_acked(self, deadline: float | None, timeout: float | None) -> None:
        with self._lock:
            self._batcher.flush_soon()
            while self._batcher.buffered_points > 0 or self._sender.spilled_points > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DeadlineExceeded(
                        f"flush: {self._batcher.buffered_points + self._sender.spilled_points:,} points of run "
                        f"{self.run_id} not acknowledged "
                        f"after {timeout} s (is the server at {self.target} reachable?)"
                    )
                self._lock.wait(left if left is not None else 1.0)
            err = self._sender.take_error()
            if err is not None:
                raise err
            dropped = self._batcher.take_dropped()
            if dropped:
                raise PointsDropped(
                    f"flush: {dropped:,} points of run {self.run_id} were dropped since the last flush because the "
                    "buffer or the spool (RUNSTREAM_SPOOL_MAX_BYTES) was full (on_full='drop'); the rest are "
                    "acknowledged",
                    dropped,
                )

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then end the stream and the threads."""
        if self._batcher.closed:
            return
        if self._system is not None:
            self._system.stop()
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._batcher.close()
                self._sender.closing = True
                self._heartbeat.closing = True
                self._lock.notify_all()
            if self.spool is not None:
                self.spool.stop_waiting()
            self._sender.end_stream()
            self._batcher.join(5)
            self._sender.join(5)
            self._heartbeat.join(5)
            if self._pending_calls is not None:  # the batcher is done: nothing is pending any more
                self._pending_calls.close()
            self._sender.close_spool()

    # ---------------------------------------------------------------- around a fork (client/lifecycle.py)

    def _pause_for_fork(self) -> None:
        """Leave gRPC before the process forks: gRPC's fork handlers only run when no
        thread is inside a call. Unacked batches are resent on the next stream. The writer's
        lock stays held across the fork: a child would otherwise inherit it held by a thread
        it does not have (another thread logging as the fork came), and hang in its first call."""
        self._lock.acquire()
        self._sender.pause()
        self._heartbeat.paused = True
        deadline = time.monotonic() + 5.0
        while (self._sender.call is not None or self._heartbeat.beating) and time.monotonic() < deadline:
            self._lock.wait(0.05)

    def _forget_after_fork(self) -> None:
        """In a forked child: the parent's writer is not the child's to feed. Its pending files
        are the parent's (the mapping is shared), so calls made here must stay out of them."""
        self._batcher.pending_calls = PendingCalls(None, self._batcher.batch_points)
        self._lock.release()  # held across the fork by the thread that is the child's

    def _resume_after_fork(self) -> None:
        self._sender.paused = False
        self._heartbeat.paused = False
        self._lock.notify_all()
        self._lock.release()  # held across the fork


def _pending_calls(spool: SpoolWriter, batch_points: int) -> PendingCalls | None:
    try:
        return PendingCalls(spool.directory, batch_points)
    except OSError as exc:
        log.warning(
            "runstream: the spool %s cannot keep points not yet batched (%s): a killed process loses them",
            spool.directory,
            exc,
        )
        return None

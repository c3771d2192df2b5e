"""The writer's heartbeat: every `heartbeat_s` (RUNSTREAM_HEARTBEAT_S, 30 s) it tells the server
this process lives, so a run whose processes all died becomes CRASHED rather than RUNNING forever.
"""

from __future__ import annotations

import logging
import threading

import grpc

from runstream.client.sender import RETRYABLE
from runstream.wire.proto import tracking_pb2 as pb

log = logging.getLogger("runstream.client.writer")  # the writer's logger, for all its parts


class Heartbeat:
    """The heartbeat thread of one writer. Its flags are guarded by `lock`, the writer's
    condition, so that a fork can wait for it and the stream thread alike to leave gRPC."""

    def __init__(
        self, channel: grpc.Channel, lock: threading.Condition, run_id: str, writer_id: str, interval: float
    ) -> None:
        self._lock = lock
        self.run_id = run_id
        self.writer_id = writer_id
        self.interval = interval
        self._heartbeat = channel.unary_unary(
            "/runstream.v1.TrackingService/Heartbeat",
            request_serializer=pb.HeartbeatRequest.SerializeToString,
            response_deserializer=pb.HeartbeatResponse.FromString,
        )
        self.closing = False
        self.paused = False  # a fork is under way: stay out of gRPC
        self.beating = False  # inside gRPC
        self._thread = threading.Thread(target=self._loop, name=f"runstream-heartbeat-{writer_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        request = pb.HeartbeatRequest(run_id=self.run_id, writer_id=self.writer_id)
        refused = False
        while True:
            with self._lock:
                if self.closing:
                    return
                if self.paused:
                    self._lock.wait(self.interval)
                    continue
                self.beating = True
            try:
                self._heartbeat(request, timeout=min(10.0, self.interval))
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
                    self.beating = False
                    self._lock.notify_all()
            with self._lock:
                self._lock.wait_for(lambda: self.closing, timeout=self.interval)

"""Looking after the pipeline from the SDK: the dead letters the loaders set aside."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from runstream.client.channel import typed_errors
from runstream.wire.proto import admin_pb2 as adm
from runstream.wire.proto import admin_pb2_grpc as adm_grpc


class AdminClient:
    def __init__(self, channel: grpc.Channel, timeout: float) -> None:
        self._stub: Any = adm_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout

    @typed_errors
    def dead_letters(self, page_size: int = 1000) -> list[adm.DeadLetter]:
        """Every dead letter, oldest first (fetched a page at a time)."""
        found: list[adm.DeadLetter] = []
        token = ""
        while True:
            page = self._stub.ListDeadLetters(
                adm.ListDeadLettersRequest(max_results=page_size, page_token=token), timeout=self.timeout
            )
            found.extend(page.dead_letters)
            token = page.next_page_token
            if not token:
                return found

    @typed_errors
    def retry_dead_letters(self, ids: Sequence[str] = (), *, all: bool = False) -> adm.RetryDeadLettersResponse:
        """Put dead letters back on the metric streams; a batch that fails again returns as a new one."""
        return self._stub.RetryDeadLetters(  # type: ignore[no-any-return]
            adm.RetryDeadLettersRequest(ids=list(ids), all=all), timeout=self.timeout
        )

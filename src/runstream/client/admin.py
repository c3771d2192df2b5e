"""Looking after a server from the SDK: the dead letters the loaders set aside, API tokens,
storage, and purging deleted runs."""

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
    def purge_runs(
        self, *, older_than_ms: int = 0, run_ids: Sequence[str] = (), dry_run: bool = False, max_runs: int = 0
    ) -> adm.PurgeRunsResponse:
        """Delete for good runs deleted at least `older_than_ms` ago (those of `run_ids`, or
        any), as `mlflow gc` does; `more` in the answer says to call again."""
        req = adm.PurgeRunsRequest(
            older_than_ms=older_than_ms, run_ids=list(run_ids), dry_run=dry_run, max_runs=max_runs
        )
        return self._stub.PurgeRuns(req, timeout=self.timeout)  # type: ignore[no-any-return]

    @typed_errors
    def storage(self) -> adm.StorageFootprint:
        """What metric points cost in the server's PostgreSQL, and the compactor's backlog."""
        return self._stub.GetStorage(adm.GetStorageRequest(), timeout=self.timeout)  # type: ignore[no-any-return]

    @typed_errors
    def retry_dead_letters(self, ids: Sequence[str] = (), *, all: bool = False) -> adm.RetryDeadLettersResponse:
        """Put dead letters back on the metric streams; a batch that fails again returns as a new one."""
        return self._stub.RetryDeadLetters(  # type: ignore[no-any-return]
            adm.RetryDeadLettersRequest(ids=list(ids), all=all), timeout=self.timeout
        )

    @typed_errors
    def create_token(
        self, name: str, scopes: Sequence[str], *, experiments: str = "", expires_in_s: int = 0
    ) -> adm.CreatedToken:
        """A new token; its text (`.secret`) is in this answer only: the server keeps a hash."""
        request = adm.CreateTokenRequest(
            name=name, scopes=list(scopes), experiments=experiments, expires_in_s=expires_in_s
        )
        return self._stub.CreateToken(request, timeout=self.timeout)  # type: ignore[no-any-return]

    @typed_errors
    def tokens(self, include_revoked: bool = False) -> list[adm.ApiToken]:
        reply = self._stub.ListTokens(adm.ListTokensRequest(include_revoked=include_revoked), timeout=self.timeout)
        return list(reply.tokens)

    @typed_errors
    def revoke_token(self, name: str) -> adm.ApiToken:
        return self._stub.RevokeToken(adm.RevokeTokenRequest(name=name), timeout=self.timeout)  # type: ignore[no-any-return]

    @typed_errors
    def whoami(self) -> adm.ApiToken:
        """The caller's token as the server sees it: name, scopes, experiments."""
        return self._stub.WhoAmI(adm.WhoAmIRequest(), timeout=self.timeout)  # type: ignore[no-any-return]

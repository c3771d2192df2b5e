"""Typed errors shared by the server and the SDK, each tied to one gRPC status code.

The server raises them and the gRPC layer turns them into statuses; the SDK turns
statuses back into them, so callers catch `RunNotFound` rather than parse messages.
"""

from __future__ import annotations

import grpc


class RunstreamError(Exception):
    """Base of every runstream error; `code` is the gRPC status it travels as."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(RunstreamError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RunstreamError, LookupError):
    code = grpc.StatusCode.NOT_FOUND


class RunNotFound(NotFound):
    pass


class ExperimentNotFound(NotFound):
    pass


class AlreadyExists(RunstreamError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ParamConflict(AlreadyExists):
    """A param was logged again with a different value; params are immutable."""


class FailedPrecondition(RunstreamError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RunstreamError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(RunstreamError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RunstreamError, PermissionError):
    """The token is valid but does not allow this call (its scopes or its experiments)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(RunstreamError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RunstreamError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class DataLoss(RunstreamError):
    """The server holds data it cannot read back (damaged storage); what it can read is served."""

    code = grpc.StatusCode.DATA_LOSS


class BufferFull(RunstreamError):
    """The SDK's metric buffer stayed full for longer than its block timeout."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class PointsDropped(RunstreamError):
    """flush(): the buffer or the spool was full with on_full="drop" and points were dropped since
    the last flush; everything else was acknowledged. `dropped` counts the points."""

    code = grpc.StatusCode.DATA_LOSS

    def __init__(self, message: str, dropped: int = 0) -> None:
        super().__init__(message)
        self.dropped = dropped


# The SDK picks the most specific class from the status code and a detail prefix.
_BY_CODE: dict[grpc.StatusCode, type[RunstreamError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        DeadlineExceeded,
        DataLoss,
    )
}
_BY_PREFIX: list[tuple[str, type[RunstreamError]]] = [
    ("run ", RunNotFound),
    ("experiment ", ExperimentNotFound),
    ("param ", ParamConflict),
]


def from_status(code: grpc.StatusCode, details: str) -> RunstreamError:
    """The typed error for a gRPC status, as the SDK raises it."""
    base = _BY_CODE.get(code, RunstreamError)
    for prefix, cls in _BY_PREFIX:
        if issubclass(cls, base) and cls is not base and details.startswith(prefix):
            base = cls
            break
    err = base(details)
    if base is RunstreamError:
        err.code = code
    return err

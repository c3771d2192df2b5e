from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PurgeRunsRequest(_message.Message):
    __slots__ = ("older_than_ms", "run_ids", "dry_run", "max_runs")
    OLDER_THAN_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    older_than_ms: int
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    max_runs: int
    def __init__(self, older_than_ms: _Optional[int] = ..., run_ids: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ..., max_runs: _Optional[int] = ...) -> None: ...

class SkippedRun(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PurgeRunsResponse(_message.Message):
    __slots__ = ("purged", "skipped", "artifacts_deleted", "artifacts_left", "more")
    PURGED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_LEFT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    purged: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedRun]
    artifacts_deleted: int
    artifacts_left: _containers.RepeatedScalarFieldContainer[str]
    more: bool
    def __init__(self, purged: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[_Union[SkippedRun, _Mapping]]] = ..., artifacts_deleted: _Optional[int] = ..., artifacts_left: _Optional[_Iterable[str]] = ..., more: _Optional[bool] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("id", "stream", "entry_id", "reason", "failed_ms", "received_ms", "size", "run_id", "writer_id", "seq", "points")
    ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    stream: str
    entry_id: str
    reason: str
    failed_ms: int
    received_ms: int
    size: int
    run_id: str
    writer_id: str
    seq: int
    points: int
    def __init__(self, id: _Optional[str] = ..., stream: _Optional[str] = ..., entry_id: _Optional[str] = ..., reason: _Optional[str] = ..., failed_ms: _Optional[int] = ..., received_ms: _Optional[int] = ..., size: _Optional[int] = ..., run_id: _Optional[str] = ..., writer_id: _Optional[str] = ..., seq: _Optional[int] = ..., points: _Optional[int] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("max_results", "page_token")
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    max_results: int
    page_token: str
    def __init__(self, max_results: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token", "total")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    total: int
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class RetryDeadLettersRequest(_message.Message):
    __slots__ = ("ids", "all")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class RetryDeadLettersResponse(_message.Message):
    __slots__ = ("retried", "not_found")
    RETRIED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    retried: int
    not_found: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, retried: _Optional[int] = ..., not_found: _Optional[_Iterable[str]] = ...) -> None: ...

class ApiToken(_message.Message):
    __slots__ = ("name", "scopes", "experiments", "created_by", "created_ms", "expires_ms", "revoked_ms", "token_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    experiments: str
    created_by: str
    created_ms: int
    expires_ms: int
    revoked_ms: int
    token_id: str
    def __init__(self, name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., experiments: _Optional[str] = ..., created_by: _Optional[str] = ..., created_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., revoked_ms: _Optional[int] = ..., token_id: _Optional[str] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "scopes", "experiments", "expires_in_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    experiments: str
    expires_in_s: int
    def __init__(self, name: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., experiments: _Optional[str] = ..., expires_in_s: _Optional[int] = ...) -> None: ...

class CreatedToken(_message.Message):
    __slots__ = ("token", "secret")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    token: ApiToken
    secret: str
    def __init__(self, token: _Optional[_Union[ApiToken, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[ApiToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[ApiToken, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStorageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StorageFootprint(_message.Message):
    __slots__ = ("points", "bytes", "chunks", "compacted_points", "backlog_points", "live_bytes", "cold_points", "cold_objects", "cold_bytes")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    COMPACTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_POINTS_FIELD_NUMBER: _ClassVar[int]
    LIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLD_POINTS_FIELD_NUMBER: _ClassVar[int]
    COLD_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    COLD_BYTES_FIELD_NUMBER: _ClassVar[int]
    points: int
    bytes: int
    chunks: int
    compacted_points: int
    backlog_points: int
    live_bytes: int
    cold_points: int
    cold_objects: int
    cold_bytes: int
    def __init__(self, points: _Optional[int] = ..., bytes: _Optional[int] = ..., chunks: _Optional[int] = ..., compacted_points: _Optional[int] = ..., backlog_points: _Optional[int] = ..., live_bytes: _Optional[int] = ..., cold_points: _Optional[int] = ..., cold_objects: _Optional[int] = ..., cold_bytes: _Optional[int] = ...) -> None: ...

from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateUploadRequest(_message.Message):
    __slots__ = ("run_id", "path", "size", "sha256", "content_type", "unsized_parts")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    UNSIZED_PARTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    path: str
    size: int
    sha256: str
    content_type: str
    unsized_parts: int
    def __init__(self, run_id: _Optional[str] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., unsized_parts: _Optional[int] = ...) -> None: ...

class UploadPart(_message.Message):
    __slots__ = ("part_number", "offset", "size", "url", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    part_number: int
    offset: int
    size: int
    url: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, part_number: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("upload_id", "url", "headers", "parts", "expires_at_ms")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    url: str
    headers: _containers.ScalarMap[str, str]
    parts: _containers.RepeatedCompositeFieldContainer[UploadPart]
    expires_at_ms: int
    def __init__(self, upload_id: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., parts: _Optional[_Iterable[_Union[UploadPart, _Mapping]]] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class PartChecksum(_message.Message):
    __slots__ = ("part_number", "sha256")
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    part_number: int
    sha256: str
    def __init__(self, part_number: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SignPartsRequest(_message.Message):
    __slots__ = ("upload_id", "parts")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    parts: _containers.RepeatedCompositeFieldContainer[PartChecksum]
    def __init__(self, upload_id: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[PartChecksum, _Mapping]]] = ...) -> None: ...

class SignPartsResponse(_message.Message):
    __slots__ = ("parts", "expires_at_ms")
    PARTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[UploadPart]
    expires_at_ms: int
    def __init__(self, parts: _Optional[_Iterable[_Union[UploadPart, _Mapping]]] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class CompletedPart(_message.Message):
    __slots__ = ("part_number", "etag", "sha256")
    PART_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    part_number: int
    etag: str
    sha256: str
    def __init__(self, part_number: _Optional[int] = ..., etag: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class CompleteUploadRequest(_message.Message):
    __slots__ = ("upload_id", "parts")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    parts: _containers.RepeatedCompositeFieldContainer[CompletedPart]
    def __init__(self, upload_id: _Optional[str] = ..., parts: _Optional[_Iterable[_Union[CompletedPart, _Mapping]]] = ...) -> None: ...

class UploadRef(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class AbortUploadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("path", "is_dir", "size", "sha256", "content_type", "created_ms")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IS_DIR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    path: str
    is_dir: bool
    size: int
    sha256: str
    content_type: str
    created_ms: int
    def __init__(self, path: _Optional[str] = ..., is_dir: _Optional[bool] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ..., created_ms: _Optional[int] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("run_id", "prefix")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    prefix: str
    def __init__(self, run_id: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("run_id", "path")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    path: str
    def __init__(self, run_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DownloadUrl(_message.Message):
    __slots__ = ("url", "artifact", "expires_at_ms")
    URL_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    url: str
    artifact: Artifact
    expires_at_ms: int
    def __init__(self, url: _Optional[str] = ..., artifact: _Optional[_Union[Artifact, _Mapping]] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class DeleteArtifactResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

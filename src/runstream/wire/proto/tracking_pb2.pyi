from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_FINISHED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_KILLED: _ClassVar[RunStatus]
    RUN_STATUS_CRASHED: _ClassVar[RunStatus]

class LoggedModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOGGED_MODEL_STATUS_UNSPECIFIED: _ClassVar[LoggedModelStatus]
    LOGGED_MODEL_STATUS_PENDING: _ClassVar[LoggedModelStatus]
    LOGGED_MODEL_STATUS_READY: _ClassVar[LoggedModelStatus]
    LOGGED_MODEL_STATUS_FAILED: _ClassVar[LoggedModelStatus]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_FINISHED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_KILLED: RunStatus
RUN_STATUS_CRASHED: RunStatus
LOGGED_MODEL_STATUS_UNSPECIFIED: LoggedModelStatus
LOGGED_MODEL_STATUS_PENDING: LoggedModelStatus
LOGGED_MODEL_STATUS_READY: LoggedModelStatus
LOGGED_MODEL_STATUS_FAILED: LoggedModelStatus

class Experiment(_message.Message):
    __slots__ = ("experiment_id", "name", "artifact_location", "lifecycle_stage", "creation_time_ms", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time_ms: int
    tags: _containers.ScalarMap[str, str]
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., artifact_location: _Optional[str] = ..., lifecycle_stage: _Optional[str] = ..., creation_time_ms: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateExperimentRequest(_message.Message):
    __slots__ = ("name", "artifact_location", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    artifact_location: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., artifact_location: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetExperimentRequest(_message.Message):
    __slots__ = ("experiment_id", "name")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ("max_results", "page_token")
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    max_results: int
    page_token: str
    def __init__(self, max_results: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MetricSummary(_message.Message):
    __slots__ = ("key", "last_value", "last_step", "last_timestamp_ms", "min_value", "max_value", "count")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_VALUE_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    key: str
    last_value: float
    last_step: int
    last_timestamp_ms: int
    min_value: float
    max_value: float
    count: int
    def __init__(self, key: _Optional[str] = ..., last_value: _Optional[float] = ..., last_step: _Optional[int] = ..., last_timestamp_ms: _Optional[int] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "experiment_id", "name", "status", "start_time_ms", "end_time_ms", "lifecycle_stage", "params", "tags", "metrics", "metrics_truncated", "metric_count", "last_heard_ms", "inputs", "parent_run_id", "fork_step", "fork_ids", "rewinds")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRICS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    METRIC_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARD_MS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_STEP_FIELD_NUMBER: _ClassVar[int]
    FORK_IDS_FIELD_NUMBER: _ClassVar[int]
    REWINDS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    experiment_id: str
    name: str
    status: RunStatus
    start_time_ms: int
    end_time_ms: int
    lifecycle_stage: str
    params: _containers.ScalarMap[str, str]
    tags: _containers.ScalarMap[str, str]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricSummary]
    metrics_truncated: bool
    metric_count: int
    last_heard_ms: int
    inputs: _containers.RepeatedCompositeFieldContainer[DatasetInput]
    parent_run_id: str
    fork_step: int
    fork_ids: _containers.RepeatedScalarFieldContainer[str]
    rewinds: _containers.RepeatedCompositeFieldContainer[Rewind]
    def __init__(self, run_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., start_time_ms: _Optional[int] = ..., end_time_ms: _Optional[int] = ..., lifecycle_stage: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Iterable[_Union[MetricSummary, _Mapping]]] = ..., metrics_truncated: _Optional[bool] = ..., metric_count: _Optional[int] = ..., last_heard_ms: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[DatasetInput, _Mapping]]] = ..., parent_run_id: _Optional[str] = ..., fork_step: _Optional[int] = ..., fork_ids: _Optional[_Iterable[str]] = ..., rewinds: _Optional[_Iterable[_Union[Rewind, _Mapping]]] = ...) -> None: ...

class Rewind(_message.Message):
    __slots__ = ("number", "step", "time_ms", "superseded_points")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_POINTS_FIELD_NUMBER: _ClassVar[int]
    number: int
    step: int
    time_ms: int
    superseded_points: int
    def __init__(self, number: _Optional[int] = ..., step: _Optional[int] = ..., time_ms: _Optional[int] = ..., superseded_points: _Optional[int] = ...) -> None: ...

class RewindRunRequest(_message.Message):
    __slots__ = ("run_id", "step")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step: int
    def __init__(self, run_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class ListRunMetricsRequest(_message.Message):
    __slots__ = ("run_id", "max_results", "page_token")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    max_results: int
    page_token: str
    def __init__(self, run_id: _Optional[str] = ..., max_results: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunMetricsResponse(_message.Message):
    __slots__ = ("metrics", "next_page_token")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricSummary]
    next_page_token: str
    def __init__(self, metrics: _Optional[_Iterable[_Union[MetricSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("experiment_id", "experiment_name", "name", "tags", "start_time_ms", "run_id", "fork_of", "fork_step", "params")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_OF_FIELD_NUMBER: _ClassVar[int]
    FORK_STEP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    experiment_name: str
    name: str
    tags: _containers.ScalarMap[str, str]
    start_time_ms: int
    run_id: str
    fork_of: str
    fork_step: int
    params: _containers.ScalarMap[str, str]
    def __init__(self, experiment_id: _Optional[str] = ..., experiment_name: _Optional[str] = ..., name: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., start_time_ms: _Optional[int] = ..., run_id: _Optional[str] = ..., fork_of: _Optional[str] = ..., fork_step: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class UpdateRunRequest(_message.Message):
    __slots__ = ("run_id", "status", "end_time_ms", "name")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: RunStatus
    end_time_ms: int
    name: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[_Union[RunStatus, str]] = ..., end_time_ms: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class RunRef(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ExperimentRef(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class LogParamsRequest(_message.Message):
    __slots__ = ("run_id", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LogParamsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetTagsRequest(_message.Message):
    __slots__ = ("run_id", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SetTagsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTagRequest(_message.Message):
    __slots__ = ("run_id", "key")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class DeleteTagResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DatasetInput(_message.Message):
    __slots__ = ("name", "digest", "source", "context")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    source: str
    context: str
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., source: _Optional[str] = ..., context: _Optional[str] = ...) -> None: ...

class LogInputsRequest(_message.Message):
    __slots__ = ("run_id", "inputs")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[DatasetInput]
    def __init__(self, run_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[DatasetInput, _Mapping]]] = ...) -> None: ...

class LogInputsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("run_id", "writer_id", "seq", "keys", "key_index", "step", "timestamp_ms", "value", "epoch")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    writer_id: str
    seq: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    key_index: _containers.RepeatedScalarFieldContainer[int]
    step: _containers.RepeatedScalarFieldContainer[int]
    timestamp_ms: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[float]
    epoch: int
    def __init__(self, run_id: _Optional[str] = ..., writer_id: _Optional[str] = ..., seq: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., key_index: _Optional[_Iterable[int]] = ..., step: _Optional[_Iterable[int]] = ..., timestamp_ms: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[float]] = ..., epoch: _Optional[int] = ...) -> None: ...

class OpenWriterRequest(_message.Message):
    __slots__ = ("run_id", "writer_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    writer_id: str
    def __init__(self, run_id: _Optional[str] = ..., writer_id: _Optional[str] = ...) -> None: ...

class OpenWriterResponse(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class BatchAck(_message.Message):
    __slots__ = ("seq", "code", "message", "points")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    code: int
    message: str
    points: int
    def __init__(self, seq: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., points: _Optional[int] = ...) -> None: ...

class WaitCommittedRequest(_message.Message):
    __slots__ = ("run_id", "writer_id", "epoch", "batches", "timeout_ms", "seqs")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SEQS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    writer_id: str
    epoch: int
    batches: int
    timeout_ms: int
    seqs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., writer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., batches: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., seqs: _Optional[_Iterable[int]] = ...) -> None: ...

class WaitCommittedResponse(_message.Message):
    __slots__ = ("committed",)
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    committed: int
    def __init__(self, committed: _Optional[int] = ...) -> None: ...

class UpdateExperimentRequest(_message.Message):
    __slots__ = ("experiment_id", "new_name", "set_tags", "delete_tags")
    class SetTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    SET_TAGS_FIELD_NUMBER: _ClassVar[int]
    DELETE_TAGS_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    new_name: str
    set_tags: _containers.ScalarMap[str, str]
    delete_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, experiment_id: _Optional[str] = ..., new_name: _Optional[str] = ..., set_tags: _Optional[_Mapping[str, str]] = ..., delete_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class LoggedModel(_message.Message):
    __slots__ = ("model_id", "experiment_id", "run_id", "artifact_path", "name", "model_type", "status", "status_message", "tags", "params", "created_ms", "updated_ms", "created_by", "lifecycle_stage")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    LIFECYCLE_STAGE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    experiment_id: str
    run_id: str
    artifact_path: str
    name: str
    model_type: str
    status: LoggedModelStatus
    status_message: str
    tags: _containers.ScalarMap[str, str]
    params: _containers.ScalarMap[str, str]
    created_ms: int
    updated_ms: int
    created_by: str
    lifecycle_stage: str
    def __init__(self, model_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., run_id: _Optional[str] = ..., artifact_path: _Optional[str] = ..., name: _Optional[str] = ..., model_type: _Optional[str] = ..., status: _Optional[_Union[LoggedModelStatus, str]] = ..., status_message: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., params: _Optional[_Mapping[str, str]] = ..., created_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., created_by: _Optional[str] = ..., lifecycle_stage: _Optional[str] = ...) -> None: ...

class CreateLoggedModelRequest(_message.Message):
    __slots__ = ("run_id", "name", "model_type", "tags", "params")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    model_type: str
    tags: _containers.ScalarMap[str, str]
    params: _containers.ScalarMap[str, str]
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ..., model_type: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LoggedModelRef(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UpdateLoggedModelRequest(_message.Message):
    __slots__ = ("model_id", "status", "status_message", "set_tags", "delete_tags", "set_params")
    class SetTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SetParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SET_TAGS_FIELD_NUMBER: _ClassVar[int]
    DELETE_TAGS_FIELD_NUMBER: _ClassVar[int]
    SET_PARAMS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    status: LoggedModelStatus
    status_message: str
    set_tags: _containers.ScalarMap[str, str]
    delete_tags: _containers.RepeatedScalarFieldContainer[str]
    set_params: _containers.ScalarMap[str, str]
    def __init__(self, model_id: _Optional[str] = ..., status: _Optional[_Union[LoggedModelStatus, str]] = ..., status_message: _Optional[str] = ..., set_tags: _Optional[_Mapping[str, str]] = ..., delete_tags: _Optional[_Iterable[str]] = ..., set_params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchLoggedModelsRequest(_message.Message):
    __slots__ = ("experiment_ids", "run_id", "max_results", "page_token", "name")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    max_results: int
    page_token: str
    name: str
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., max_results: _Optional[int] = ..., page_token: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SearchLoggedModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoggedModel]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[LoggedModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("run_id", "writer_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    WRITER_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    writer_id: str
    def __init__(self, run_id: _Optional[str] = ..., writer_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ...) -> None: ...

from runstream.wire.proto import tracking_pb2 as _tracking_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATE_UNSPECIFIED: _ClassVar[Aggregate]
    AGGREGATE_MEAN: _ClassVar[Aggregate]
    AGGREGATE_MIN: _ClassVar[Aggregate]
    AGGREGATE_MAX: _ClassVar[Aggregate]
AGGREGATE_UNSPECIFIED: Aggregate
AGGREGATE_MEAN: Aggregate
AGGREGATE_MIN: Aggregate
AGGREGATE_MAX: Aggregate

class ReadMetricsRequest(_message.Message):
    __slots__ = ("run_id", "key", "min_step", "max_step", "writer", "after_writer")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    AFTER_WRITER_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    min_step: int
    max_step: int
    writer: str
    after_writer: str
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., min_step: _Optional[int] = ..., max_step: _Optional[int] = ..., writer: _Optional[str] = ..., after_writer: _Optional[str] = ...) -> None: ...

class ListExperimentsQuery(_message.Message):
    __slots__ = ("include_deleted", "name_like", "max_results", "page_token")
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    NAME_LIKE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    include_deleted: bool
    name_like: str
    max_results: int
    page_token: str
    def __init__(self, include_deleted: _Optional[bool] = ..., name_like: _Optional[str] = ..., max_results: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ExperimentCounts(_message.Message):
    __slots__ = ("experiment", "runs", "running", "finished", "failed", "killed", "deleted_runs", "last_run_start_ms")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    KILLED_FIELD_NUMBER: _ClassVar[int]
    DELETED_RUNS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_START_MS_FIELD_NUMBER: _ClassVar[int]
    experiment: _tracking_pb2.Experiment
    runs: int
    running: int
    finished: int
    failed: int
    killed: int
    deleted_runs: int
    last_run_start_ms: int
    def __init__(self, experiment: _Optional[_Union[_tracking_pb2.Experiment, _Mapping]] = ..., runs: _Optional[int] = ..., running: _Optional[int] = ..., finished: _Optional[int] = ..., failed: _Optional[int] = ..., killed: _Optional[int] = ..., deleted_runs: _Optional[int] = ..., last_run_start_ms: _Optional[int] = ...) -> None: ...

class ExperimentList(_message.Message):
    __slots__ = ("experiments", "next_page_token")
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentCounts]
    next_page_token: str
    def __init__(self, experiments: _Optional[_Iterable[_Union[ExperimentCounts, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TailMetricsRequest(_message.Message):
    __slots__ = ("run_ids", "keys", "from_step")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    keys: _containers.RepeatedScalarFieldContainer[str]
    from_step: int
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., keys: _Optional[_Iterable[str]] = ..., from_step: _Optional[int] = ...) -> None: ...

class MetricPoints(_message.Message):
    __slots__ = ("run_id", "key", "writer", "step", "value", "timestamp_ms")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    writer: str
    step: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[float]
    timestamp_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., writer: _Optional[str] = ..., step: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[float]] = ..., timestamp_ms: _Optional[_Iterable[int]] = ...) -> None: ...

class CompareRunsRequest(_message.Message):
    __slots__ = ("run_ids", "keys", "max_points", "direction")
    class DirectionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    keys: _containers.RepeatedScalarFieldContainer[str]
    max_points: int
    direction: _containers.ScalarMap[str, str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., keys: _Optional[_Iterable[str]] = ..., max_points: _Optional[int] = ..., direction: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ParamRow(_message.Message):
    __slots__ = ("key", "values", "present", "differs")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    DIFFERS_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    present: _containers.RepeatedScalarFieldContainer[bool]
    differs: bool
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., present: _Optional[_Iterable[bool]] = ..., differs: _Optional[bool] = ...) -> None: ...

class MetricRow(_message.Message):
    __slots__ = ("key", "last", "present", "direction", "best")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    key: str
    last: _containers.RepeatedScalarFieldContainer[float]
    present: _containers.RepeatedScalarFieldContainer[bool]
    direction: str
    best: int
    def __init__(self, key: _Optional[str] = ..., last: _Optional[_Iterable[float]] = ..., present: _Optional[_Iterable[bool]] = ..., direction: _Optional[str] = ..., best: _Optional[int] = ...) -> None: ...

class SeriesSet(_message.Message):
    __slots__ = ("key", "histories")
    KEY_FIELD_NUMBER: _ClassVar[int]
    HISTORIES_FIELD_NUMBER: _ClassVar[int]
    key: str
    histories: _containers.RepeatedCompositeFieldContainer[MetricHistory]
    def __init__(self, key: _Optional[str] = ..., histories: _Optional[_Iterable[_Union[MetricHistory, _Mapping]]] = ...) -> None: ...

class CompareRunsResponse(_message.Message):
    __slots__ = ("runs", "params", "metrics", "series")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_tracking_pb2.Run]
    params: _containers.RepeatedCompositeFieldContainer[ParamRow]
    metrics: _containers.RepeatedCompositeFieldContainer[MetricRow]
    series: _containers.RepeatedCompositeFieldContainer[SeriesSet]
    def __init__(self, runs: _Optional[_Iterable[_Union[_tracking_pb2.Run, _Mapping]]] = ..., params: _Optional[_Iterable[_Union[ParamRow, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[MetricRow, _Mapping]]] = ..., series: _Optional[_Iterable[_Union[SeriesSet, _Mapping]]] = ...) -> None: ...

class SearchRunsRequest(_message.Message):
    __slots__ = ("experiment_ids", "filter", "order_by", "max_results", "page_token", "include_deleted", "count_total")
    EXPERIMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    COUNT_TOTAL_FIELD_NUMBER: _ClassVar[int]
    experiment_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: str
    order_by: _containers.RepeatedScalarFieldContainer[str]
    max_results: int
    page_token: str
    include_deleted: bool
    count_total: bool
    def __init__(self, experiment_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[str] = ..., order_by: _Optional[_Iterable[str]] = ..., max_results: _Optional[int] = ..., page_token: _Optional[str] = ..., include_deleted: _Optional[bool] = ..., count_total: _Optional[bool] = ...) -> None: ...

class SearchRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token", "total_count")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_tracking_pb2.Run]
    next_page_token: str
    total_count: int
    def __init__(self, runs: _Optional[_Iterable[_Union[_tracking_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_count: _Optional[int] = ...) -> None: ...

class GetMetricHistoryRequest(_message.Message):
    __slots__ = ("run_id", "key", "min_step", "max_step", "max_points", "writer", "aggregate", "by_writer", "with_time", "branch")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    BY_WRITER_FIELD_NUMBER: _ClassVar[int]
    WITH_TIME_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    key: str
    min_step: int
    max_step: int
    max_points: int
    writer: str
    aggregate: Aggregate
    by_writer: bool
    with_time: bool
    branch: int
    def __init__(self, run_id: _Optional[str] = ..., key: _Optional[str] = ..., min_step: _Optional[int] = ..., max_step: _Optional[int] = ..., max_points: _Optional[int] = ..., writer: _Optional[str] = ..., aggregate: _Optional[_Union[Aggregate, str]] = ..., by_writer: _Optional[bool] = ..., with_time: _Optional[bool] = ..., branch: _Optional[int] = ...) -> None: ...

class MetricHistory(_message.Message):
    __slots__ = ("key", "total_points", "downsampled", "writers", "step", "value", "timestamp_ms", "writer_index", "bucket_first_step", "bucket_last_step", "bucket_first", "bucket_last", "bucket_min", "bucket_max", "bucket_count", "per_writer", "bucket_last_timestamp_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_POINTS_FIELD_NUMBER: _ClassVar[int]
    DOWNSAMPLED_FIELD_NUMBER: _ClassVar[int]
    WRITERS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    WRITER_INDEX_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    BUCKET_LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIRST_FIELD_NUMBER: _ClassVar[int]
    BUCKET_LAST_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MIN_FIELD_NUMBER: _ClassVar[int]
    BUCKET_MAX_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNT_FIELD_NUMBER: _ClassVar[int]
    PER_WRITER_FIELD_NUMBER: _ClassVar[int]
    BUCKET_LAST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    key: str
    total_points: int
    downsampled: bool
    writers: _containers.RepeatedScalarFieldContainer[str]
    step: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[float]
    timestamp_ms: _containers.RepeatedScalarFieldContainer[int]
    writer_index: _containers.RepeatedScalarFieldContainer[int]
    bucket_first_step: _containers.RepeatedScalarFieldContainer[int]
    bucket_last_step: _containers.RepeatedScalarFieldContainer[int]
    bucket_first: _containers.RepeatedScalarFieldContainer[float]
    bucket_last: _containers.RepeatedScalarFieldContainer[float]
    bucket_min: _containers.RepeatedScalarFieldContainer[float]
    bucket_max: _containers.RepeatedScalarFieldContainer[float]
    bucket_count: _containers.RepeatedScalarFieldContainer[int]
    per_writer: _containers.RepeatedCompositeFieldContainer[MetricHistory]
    bucket_last_timestamp_ms: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, key: _Optional[str] = ..., total_points: _Optional[int] = ..., downsampled: _Optional[bool] = ..., writers: _Optional[_Iterable[str]] = ..., step: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[float]] = ..., timestamp_ms: _Optional[_Iterable[int]] = ..., writer_index: _Optional[_Iterable[int]] = ..., bucket_first_step: _Optional[_Iterable[int]] = ..., bucket_last_step: _Optional[_Iterable[int]] = ..., bucket_first: _Optional[_Iterable[float]] = ..., bucket_last: _Optional[_Iterable[float]] = ..., bucket_min: _Optional[_Iterable[float]] = ..., bucket_max: _Optional[_Iterable[float]] = ..., bucket_count: _Optional[_Iterable[int]] = ..., per_writer: _Optional[_Iterable[_Union[MetricHistory, _Mapping]]] = ..., bucket_last_timestamp_ms: _Optional[_Iterable[int]] = ...) -> None: ...

import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from runbox.common.v1 import common_pb2 as _common_pb2
from runbox.events.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteRequest(_message.Message):
    __slots__ = ("run_id", "attempt", "script_name", "script_version", "sha256", "execution_type", "config", "parameters", "secret_parameters", "limits", "isolation", "runtime", "labels", "schedule_id", "parent_run_id", "trace_context", "content")
    class SecretParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SECRET_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    attempt: int
    script_name: str
    script_version: str
    sha256: str
    execution_type: _common_pb2.ExecutionType
    config: _struct_pb2.Struct
    parameters: _struct_pb2.Struct
    secret_parameters: _containers.ScalarMap[str, str]
    limits: _common_pb2.ResourceLimits
    isolation: _common_pb2.Isolation
    runtime: _common_pb2.Runtime
    labels: _containers.ScalarMap[str, str]
    schedule_id: str
    parent_run_id: str
    trace_context: _containers.ScalarMap[str, str]
    content: bytes
    def __init__(self, run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., script_name: _Optional[str] = ..., script_version: _Optional[str] = ..., sha256: _Optional[str] = ..., execution_type: _Optional[_Union[_common_pb2.ExecutionType, str]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., secret_parameters: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[_common_pb2.ResourceLimits, _Mapping]] = ..., isolation: _Optional[_Union[_common_pb2.Isolation, str]] = ..., runtime: _Optional[_Union[_common_pb2.Runtime, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., schedule_id: _Optional[str] = ..., parent_run_id: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., content: _Optional[bytes] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("run_id", "executor_id", "newly_accepted", "accepted_at")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    NEWLY_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    executor_id: str
    newly_accepted: bool
    accepted_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., executor_id: _Optional[str] = ..., newly_accepted: _Optional[bool] = ..., accepted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExecuteBatchRequest(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[ExecuteRequest]
    def __init__(self, runs: _Optional[_Iterable[_Union[ExecuteRequest, _Mapping]]] = ...) -> None: ...

class ExecuteBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ExecuteResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ExecuteResult, _Mapping]]] = ...) -> None: ...

class ExecuteResult(_message.Message):
    __slots__ = ("run_id", "accepted", "code", "message", "subjects")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    accepted: ExecuteResponse
    code: int
    message: str
    subjects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., accepted: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., subjects: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("run_id", "cancelled")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    cancelled: bool
    def __init__(self, run_id: _Optional[str] = ..., cancelled: _Optional[bool] = ...) -> None: ...

class ListActiveRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ActiveRun(_message.Message):
    __slots__ = ("run_id", "state", "since")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: _common_pb2.RunState
    since: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.RunState, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListActiveRunsResponse(_message.Message):
    __slots__ = ("executor_id", "runs")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    runs: _containers.RepeatedCompositeFieldContainer[ActiveRun]
    def __init__(self, executor_id: _Optional[str] = ..., runs: _Optional[_Iterable[_Union[ActiveRun, _Mapping]]] = ...) -> None: ...

class GetPoolStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolClass(_message.Message):
    __slots__ = ("image", "runtime", "resource_class", "idle", "busy", "starting", "min_size", "max_size")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_CLASS_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    STARTING_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    image: str
    runtime: _common_pb2.Runtime
    resource_class: str
    idle: int
    busy: int
    starting: int
    min_size: int
    max_size: int
    def __init__(self, image: _Optional[str] = ..., runtime: _Optional[_Union[_common_pb2.Runtime, str]] = ..., resource_class: _Optional[str] = ..., idle: _Optional[int] = ..., busy: _Optional[int] = ..., starting: _Optional[int] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class GetPoolStatusResponse(_message.Message):
    __slots__ = ("executor_id", "backend", "classes", "capacity", "active_runs")
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNS_FIELD_NUMBER: _ClassVar[int]
    executor_id: str
    backend: str
    classes: _containers.RepeatedCompositeFieldContainer[PoolClass]
    capacity: int
    active_runs: int
    def __init__(self, executor_id: _Optional[str] = ..., backend: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[PoolClass, _Mapping]]] = ..., capacity: _Optional[int] = ..., active_runs: _Optional[int] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("replica_id", "executes", "acks")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    executes: _containers.RepeatedCompositeFieldContainer[LinkExecute]
    acks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, replica_id: _Optional[str] = ..., executes: _Optional[_Iterable[_Union[LinkExecute, _Mapping]]] = ..., acks: _Optional[_Iterable[str]] = ...) -> None: ...

class LinkExecute(_message.Message):
    __slots__ = ("sequence", "request", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    request: ExecuteRequest
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, sequence: _Optional[int] = ..., request: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LinkResponse(_message.Message):
    __slots__ = ("answers", "events")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[LinkAnswer]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.RunEvent]
    def __init__(self, answers: _Optional[_Iterable[_Union[LinkAnswer, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[_events_pb2.RunEvent, _Mapping]]] = ...) -> None: ...

class LinkAnswer(_message.Message):
    __slots__ = ("sequence", "accepted", "code", "message", "status")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted: ExecuteResponse
    code: int
    message: str
    status: bytes
    def __init__(self, sequence: _Optional[int] = ..., accepted: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., status: _Optional[bytes] = ...) -> None: ...

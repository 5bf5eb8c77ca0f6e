import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from runbox.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_EVENT_TYPE_UNSPECIFIED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_SUBMITTED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_QUEUED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_STARTED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_LOG: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_HEARTBEAT: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_FINISHED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_RETRIED: _ClassVar[RunEventType]
    RUN_EVENT_TYPE_DEAD_LETTERED: _ClassVar[RunEventType]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]

class ScriptEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCRIPT_EVENT_TYPE_UNSPECIFIED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_CREATED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_UPDATED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_VERSION_PUBLISHED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_VERSION_DEPRECATED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_VERSION_YANKED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_DELETED: _ClassVar[ScriptEventType]
    SCRIPT_EVENT_TYPE_RESTORED: _ClassVar[ScriptEventType]

class ScheduleEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULE_EVENT_TYPE_UNSPECIFIED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_FIRED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_FIRE_SKIPPED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_FIRE_MISSED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_PAUSED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_RESUMED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_DISABLED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_SCRIPT_RELEASED: _ClassVar[ScheduleEventType]
    SCHEDULE_EVENT_TYPE_FAILING: _ClassVar[ScheduleEventType]
RUN_EVENT_TYPE_UNSPECIFIED: RunEventType
RUN_EVENT_TYPE_SUBMITTED: RunEventType
RUN_EVENT_TYPE_QUEUED: RunEventType
RUN_EVENT_TYPE_STARTED: RunEventType
RUN_EVENT_TYPE_LOG: RunEventType
RUN_EVENT_TYPE_HEARTBEAT: RunEventType
RUN_EVENT_TYPE_FINISHED: RunEventType
RUN_EVENT_TYPE_RETRIED: RunEventType
RUN_EVENT_TYPE_DEAD_LETTERED: RunEventType
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
SCRIPT_EVENT_TYPE_UNSPECIFIED: ScriptEventType
SCRIPT_EVENT_TYPE_CREATED: ScriptEventType
SCRIPT_EVENT_TYPE_UPDATED: ScriptEventType
SCRIPT_EVENT_TYPE_VERSION_PUBLISHED: ScriptEventType
SCRIPT_EVENT_TYPE_VERSION_DEPRECATED: ScriptEventType
SCRIPT_EVENT_TYPE_VERSION_YANKED: ScriptEventType
SCRIPT_EVENT_TYPE_DELETED: ScriptEventType
SCRIPT_EVENT_TYPE_RESTORED: ScriptEventType
SCHEDULE_EVENT_TYPE_UNSPECIFIED: ScheduleEventType
SCHEDULE_EVENT_TYPE_FIRED: ScheduleEventType
SCHEDULE_EVENT_TYPE_FIRE_SKIPPED: ScheduleEventType
SCHEDULE_EVENT_TYPE_FIRE_MISSED: ScheduleEventType
SCHEDULE_EVENT_TYPE_PAUSED: ScheduleEventType
SCHEDULE_EVENT_TYPE_RESUMED: ScheduleEventType
SCHEDULE_EVENT_TYPE_DISABLED: ScheduleEventType
SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED: ScheduleEventType
SCHEDULE_EVENT_TYPE_SCRIPT_RELEASED: ScheduleEventType
SCHEDULE_EVENT_TYPE_FAILING: ScheduleEventType

class LogChunk(_message.Message):
    __slots__ = ("stream", "data", "offset")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stream: LogStream
    data: bytes
    offset: int
    def __init__(self, stream: _Optional[_Union[LogStream, str]] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("event_id", "run_id", "attempt", "sequence", "type", "state", "occurred_at", "started_at", "finished_at", "exit", "usage", "output", "log", "trace_context", "script_name", "script_version", "execution_type", "executor_id", "schedule_id", "labels", "result", "artifacts", "parent_run_id")
    class TraceContextEntry(_message.Message):
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
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    run_id: str
    attempt: int
    sequence: int
    type: RunEventType
    state: _common_pb2.RunState
    occurred_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    exit: _common_pb2.ExitInfo
    usage: _common_pb2.ResourceUsage
    output: _common_pb2.OutputTail
    log: LogChunk
    trace_context: _containers.ScalarMap[str, str]
    script_name: str
    script_version: str
    execution_type: _common_pb2.ExecutionType
    executor_id: str
    schedule_id: str
    labels: _containers.ScalarMap[str, str]
    result: _struct_pb2.Struct
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    parent_run_id: str
    def __init__(self, event_id: _Optional[str] = ..., run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., sequence: _Optional[int] = ..., type: _Optional[_Union[RunEventType, str]] = ..., state: _Optional[_Union[_common_pb2.RunState, str]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., exit: _Optional[_Union[_common_pb2.ExitInfo, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.ResourceUsage, _Mapping]] = ..., output: _Optional[_Union[_common_pb2.OutputTail, _Mapping]] = ..., log: _Optional[_Union[LogChunk, _Mapping]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., script_name: _Optional[str] = ..., script_version: _Optional[str] = ..., execution_type: _Optional[_Union[_common_pb2.ExecutionType, str]] = ..., executor_id: _Optional[str] = ..., schedule_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., result: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ..., parent_run_id: _Optional[str] = ...) -> None: ...

class ScriptEvent(_message.Message):
    __slots__ = ("event_id", "type", "script_name", "version", "sha256", "actor", "occurred_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: ScriptEventType
    script_name: str
    version: str
    sha256: str
    actor: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[_Union[ScriptEventType, str]] = ..., script_name: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., actor: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScheduleEvent(_message.Message):
    __slots__ = ("event_id", "type", "schedule_id", "script_name", "fire_time", "run_id", "reason", "occurred_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_ID_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: ScheduleEventType
    schedule_id: str
    script_name: str
    fire_time: _timestamp_pb2.Timestamp
    run_id: str
    reason: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[_Union[ScheduleEventType, str]] = ..., schedule_id: _Optional[str] = ..., script_name: _Optional[str] = ..., fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

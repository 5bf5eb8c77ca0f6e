import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecutionType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_TYPE_UNSPECIFIED: _ClassVar[ExecutionType]
    EXECUTION_TYPE_PYTHON: _ClassVar[ExecutionType]
    EXECUTION_TYPE_SHELL: _ClassVar[ExecutionType]
    EXECUTION_TYPE_CONTAINER: _ClassVar[ExecutionType]
    EXECUTION_TYPE_HTTP: _ClassVar[ExecutionType]
    EXECUTION_TYPE_SERVERLESS: _ClassVar[ExecutionType]
    EXECUTION_TYPE_LOCAL: _ClassVar[ExecutionType]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_PENDING: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_TIMED_OUT: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
    RUN_STATE_LOST: _ClassVar[RunState]
    RUN_STATE_SCHEDULED: _ClassVar[RunState]

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_EXIT_CODE: _ClassVar[FailureReason]
    FAILURE_REASON_OOM_KILLED: _ClassVar[FailureReason]
    FAILURE_REASON_TIMEOUT: _ClassVar[FailureReason]
    FAILURE_REASON_CANCELLED: _ClassVar[FailureReason]
    FAILURE_REASON_LOST: _ClassVar[FailureReason]
    FAILURE_REASON_INFRASTRUCTURE: _ClassVar[FailureReason]
    FAILURE_REASON_INVALID_CONFIG: _ClassVar[FailureReason]
    FAILURE_REASON_NO_SANDBOX: _ClassVar[FailureReason]

class NetworkPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_POLICY_UNSPECIFIED: _ClassVar[NetworkPolicy]
    NETWORK_POLICY_NONE: _ClassVar[NetworkPolicy]
    NETWORK_POLICY_EGRESS_ALLOWLIST: _ClassVar[NetworkPolicy]

class Isolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ISOLATION_UNSPECIFIED: _ClassVar[Isolation]
    ISOLATION_PER_RUN: _ClassVar[Isolation]
    ISOLATION_REUSE: _ClassVar[Isolation]

class Runtime(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNTIME_UNSPECIFIED: _ClassVar[Runtime]
    RUNTIME_RUNC: _ClassVar[Runtime]
    RUNTIME_RUNSC: _ClassVar[Runtime]
EXECUTION_TYPE_UNSPECIFIED: ExecutionType
EXECUTION_TYPE_PYTHON: ExecutionType
EXECUTION_TYPE_SHELL: ExecutionType
EXECUTION_TYPE_CONTAINER: ExecutionType
EXECUTION_TYPE_HTTP: ExecutionType
EXECUTION_TYPE_SERVERLESS: ExecutionType
EXECUTION_TYPE_LOCAL: ExecutionType
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_PENDING: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_TIMED_OUT: RunState
RUN_STATE_CANCELLED: RunState
RUN_STATE_LOST: RunState
RUN_STATE_SCHEDULED: RunState
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_EXIT_CODE: FailureReason
FAILURE_REASON_OOM_KILLED: FailureReason
FAILURE_REASON_TIMEOUT: FailureReason
FAILURE_REASON_CANCELLED: FailureReason
FAILURE_REASON_LOST: FailureReason
FAILURE_REASON_INFRASTRUCTURE: FailureReason
FAILURE_REASON_INVALID_CONFIG: FailureReason
FAILURE_REASON_NO_SANDBOX: FailureReason
NETWORK_POLICY_UNSPECIFIED: NetworkPolicy
NETWORK_POLICY_NONE: NetworkPolicy
NETWORK_POLICY_EGRESS_ALLOWLIST: NetworkPolicy
ISOLATION_UNSPECIFIED: Isolation
ISOLATION_PER_RUN: Isolation
ISOLATION_REUSE: Isolation
RUNTIME_UNSPECIFIED: Runtime
RUNTIME_RUNC: Runtime
RUNTIME_RUNSC: Runtime

class ScriptRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ResourceLimits(_message.Message):
    __slots__ = ("cpu", "memory_bytes", "disk_bytes", "timeout", "pids", "network", "output_bytes")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu: float
    memory_bytes: int
    disk_bytes: int
    timeout: _duration_pb2.Duration
    pids: int
    network: NetworkPolicy
    output_bytes: int
    def __init__(self, cpu: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., pids: _Optional[int] = ..., network: _Optional[_Union[NetworkPolicy, str]] = ..., output_bytes: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff", "max_backoff", "multiplier", "jitter", "retry_on", "oom_memory_factor", "oom_memory_cap_bytes")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    JITTER_FIELD_NUMBER: _ClassVar[int]
    RETRY_ON_FIELD_NUMBER: _ClassVar[int]
    OOM_MEMORY_FACTOR_FIELD_NUMBER: _ClassVar[int]
    OOM_MEMORY_CAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff: _duration_pb2.Duration
    max_backoff: _duration_pb2.Duration
    multiplier: float
    jitter: float
    retry_on: _containers.RepeatedScalarFieldContainer[FailureReason]
    oom_memory_factor: float
    oom_memory_cap_bytes: int
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_backoff: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., multiplier: _Optional[float] = ..., jitter: _Optional[float] = ..., retry_on: _Optional[_Iterable[_Union[FailureReason, str]]] = ..., oom_memory_factor: _Optional[float] = ..., oom_memory_cap_bytes: _Optional[int] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("cpu_seconds", "peak_memory_bytes", "io_read_bytes", "io_write_bytes", "wall_time", "sandbox")
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    cpu_seconds: float
    peak_memory_bytes: int
    io_read_bytes: int
    io_write_bytes: int
    wall_time: _duration_pb2.Duration
    sandbox: str
    def __init__(self, cpu_seconds: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sandbox: _Optional[str] = ...) -> None: ...

class ExitInfo(_message.Message):
    __slots__ = ("exit_code", "reason", "message", "signal")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    reason: FailureReason
    message: str
    signal: int
    def __init__(self, exit_code: _Optional[int] = ..., reason: _Optional[_Union[FailureReason, str]] = ..., message: _Optional[str] = ..., signal: _Optional[int] = ...) -> None: ...

class OutputTail(_message.Message):
    __slots__ = ("stdout", "stderr", "truncated", "stdout_total_bytes", "stderr_total_bytes")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    truncated: bool
    stdout_total_bytes: int
    stderr_total_bytes: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., truncated: _Optional[bool] = ..., stdout_total_bytes: _Optional[int] = ..., stderr_total_bytes: _Optional[int] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256", "uri")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    uri: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., uri: _Optional[str] = ...) -> None: ...

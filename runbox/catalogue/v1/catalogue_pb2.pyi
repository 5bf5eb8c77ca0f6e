import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
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

class ParameterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAMETER_TYPE_UNSPECIFIED: _ClassVar[ParameterType]
    PARAMETER_TYPE_STRING: _ClassVar[ParameterType]
    PARAMETER_TYPE_INTEGER: _ClassVar[ParameterType]
    PARAMETER_TYPE_FLOAT: _ClassVar[ParameterType]
    PARAMETER_TYPE_BOOLEAN: _ClassVar[ParameterType]
    PARAMETER_TYPE_JSON: _ClassVar[ParameterType]
    PARAMETER_TYPE_EMAIL: _ClassVar[ParameterType]
    PARAMETER_TYPE_URL: _ClassVar[ParameterType]
    PARAMETER_TYPE_PASSWORD: _ClassVar[ParameterType]
    PARAMETER_TYPE_TEXT: _ClassVar[ParameterType]
    PARAMETER_TYPE_SELECT: _ClassVar[ParameterType]
    PARAMETER_TYPE_MULTISELECT: _ClassVar[ParameterType]
    PARAMETER_TYPE_FILE: _ClassVar[ParameterType]
    PARAMETER_TYPE_DATE: _ClassVar[ParameterType]
    PARAMETER_TYPE_DATETIME: _ClassVar[ParameterType]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    VERSION_STATE_ACTIVE: _ClassVar[VersionState]
    VERSION_STATE_DEPRECATED: _ClassVar[VersionState]
    VERSION_STATE_YANKED: _ClassVar[VersionState]

class ScriptOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCRIPT_ORDER_UNSPECIFIED: _ClassVar[ScriptOrder]
    SCRIPT_ORDER_NAME: _ClassVar[ScriptOrder]
    SCRIPT_ORDER_CREATE_TIME_DESC: _ClassVar[ScriptOrder]
    SCRIPT_ORDER_UPDATE_TIME_DESC: _ClassVar[ScriptOrder]
PARAMETER_TYPE_UNSPECIFIED: ParameterType
PARAMETER_TYPE_STRING: ParameterType
PARAMETER_TYPE_INTEGER: ParameterType
PARAMETER_TYPE_FLOAT: ParameterType
PARAMETER_TYPE_BOOLEAN: ParameterType
PARAMETER_TYPE_JSON: ParameterType
PARAMETER_TYPE_EMAIL: ParameterType
PARAMETER_TYPE_URL: ParameterType
PARAMETER_TYPE_PASSWORD: ParameterType
PARAMETER_TYPE_TEXT: ParameterType
PARAMETER_TYPE_SELECT: ParameterType
PARAMETER_TYPE_MULTISELECT: ParameterType
PARAMETER_TYPE_FILE: ParameterType
PARAMETER_TYPE_DATE: ParameterType
PARAMETER_TYPE_DATETIME: ParameterType
VERSION_STATE_UNSPECIFIED: VersionState
VERSION_STATE_ACTIVE: VersionState
VERSION_STATE_DEPRECATED: VersionState
VERSION_STATE_YANKED: VersionState
SCRIPT_ORDER_UNSPECIFIED: ScriptOrder
SCRIPT_ORDER_NAME: ScriptOrder
SCRIPT_ORDER_CREATE_TIME_DESC: ScriptOrder
SCRIPT_ORDER_UPDATE_TIME_DESC: ScriptOrder

class ParameterRules(_message.Message):
    __slots__ = ("pattern", "min_length", "max_length", "min_value", "max_value", "allowed_values", "json_schema", "max_file_size_bytes", "content_types")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    MAX_FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    min_length: int
    max_length: int
    min_value: float
    max_value: float
    allowed_values: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    json_schema: str
    max_file_size_bytes: int
    content_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pattern: _Optional[str] = ..., min_length: _Optional[int] = ..., max_length: _Optional[int] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., allowed_values: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ..., json_schema: _Optional[str] = ..., max_file_size_bytes: _Optional[int] = ..., content_types: _Optional[_Iterable[str]] = ...) -> None: ...

class ParameterCondition(_message.Message):
    __slots__ = ("parameter", "equals")
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    parameter: str
    equals: _struct_pb2.Value
    def __init__(self, parameter: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ParameterUi(_message.Message):
    __slots__ = ("label", "placeholder", "help_text", "group", "order", "advanced")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    HELP_TEXT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    ADVANCED_FIELD_NUMBER: _ClassVar[int]
    label: str
    placeholder: str
    help_text: str
    group: str
    order: int
    advanced: bool
    def __init__(self, label: _Optional[str] = ..., placeholder: _Optional[str] = ..., help_text: _Optional[str] = ..., group: _Optional[str] = ..., order: _Optional[int] = ..., advanced: _Optional[bool] = ...) -> None: ...

class ParameterDefinition(_message.Message):
    __slots__ = ("name", "type", "required", "default_value", "secret", "description", "rules", "condition", "ui")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    UI_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParameterType
    required: bool
    default_value: _struct_pb2.Value
    secret: bool
    description: str
    rules: ParameterRules
    condition: ParameterCondition
    ui: ParameterUi
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParameterType, str]] = ..., required: _Optional[bool] = ..., default_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., secret: _Optional[bool] = ..., description: _Optional[str] = ..., rules: _Optional[_Union[ParameterRules, _Mapping]] = ..., condition: _Optional[_Union[ParameterCondition, _Mapping]] = ..., ui: _Optional[_Union[ParameterUi, _Mapping]] = ...) -> None: ...

class ScriptRunnerConfig(_message.Message):
    __slots__ = ("interpreter", "image")
    INTERPRETER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    interpreter: str
    image: str
    def __init__(self, interpreter: _Optional[str] = ..., image: _Optional[str] = ...) -> None: ...

class ContainerConfig(_message.Message):
    __slots__ = ("image", "command", "args", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HttpConfig(_message.Message):
    __slots__ = ("method", "url", "headers", "body", "timeout", "success_statuses")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_STATUSES_FIELD_NUMBER: _ClassVar[int]
    method: str
    url: str
    headers: _containers.ScalarMap[str, str]
    body: str
    timeout: _duration_pb2.Duration
    success_statuses: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, method: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ..., body: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., success_statuses: _Optional[_Iterable[int]] = ...) -> None: ...

class ServerlessConfig(_message.Message):
    __slots__ = ("function_name", "qualifier", "region", "invocation_type")
    FUNCTION_NAME_FIELD_NUMBER: _ClassVar[int]
    QUALIFIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    function_name: str
    qualifier: str
    region: str
    invocation_type: str
    def __init__(self, function_name: _Optional[str] = ..., qualifier: _Optional[str] = ..., region: _Optional[str] = ..., invocation_type: _Optional[str] = ...) -> None: ...

class LocalConfig(_message.Message):
    __slots__ = ("command", "args")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecutionConfig(_message.Message):
    __slots__ = ("script", "container", "http", "serverless", "local")
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    SERVERLESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    script: ScriptRunnerConfig
    container: ContainerConfig
    http: HttpConfig
    serverless: ServerlessConfig
    local: LocalConfig
    def __init__(self, script: _Optional[_Union[ScriptRunnerConfig, _Mapping]] = ..., container: _Optional[_Union[ContainerConfig, _Mapping]] = ..., http: _Optional[_Union[HttpConfig, _Mapping]] = ..., serverless: _Optional[_Union[ServerlessConfig, _Mapping]] = ..., local: _Optional[_Union[LocalConfig, _Mapping]] = ...) -> None: ...

class Script(_message.Message):
    __slots__ = ("name", "description", "tags", "owner", "execution_type", "config", "default_limits", "default_retry", "isolation", "runtime", "is_template", "latest_version", "create_time", "update_time", "delete_time", "placeholders")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RETRY_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    IS_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    owner: str
    execution_type: _common_pb2.ExecutionType
    config: ExecutionConfig
    default_limits: _common_pb2.ResourceLimits
    default_retry: _common_pb2.RetryPolicy
    isolation: _common_pb2.Isolation
    runtime: _common_pb2.Runtime
    is_template: bool
    latest_version: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    placeholders: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., owner: _Optional[str] = ..., execution_type: _Optional[_Union[_common_pb2.ExecutionType, str]] = ..., config: _Optional[_Union[ExecutionConfig, _Mapping]] = ..., default_limits: _Optional[_Union[_common_pb2.ResourceLimits, _Mapping]] = ..., default_retry: _Optional[_Union[_common_pb2.RetryPolicy, _Mapping]] = ..., isolation: _Optional[_Union[_common_pb2.Isolation, str]] = ..., runtime: _Optional[_Union[_common_pb2.Runtime, str]] = ..., is_template: _Optional[bool] = ..., latest_version: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., placeholders: _Optional[_Iterable[str]] = ...) -> None: ...

class ScriptVersion(_message.Message):
    __slots__ = ("script_name", "version", "sha256", "size_bytes", "parameters", "state", "changelog", "create_time", "created_by", "execution_type")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHANGELOG_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    sha256: str
    size_bytes: int
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterDefinition]
    state: VersionState
    changelog: str
    create_time: _timestamp_pb2.Timestamp
    created_by: str
    execution_type: _common_pb2.ExecutionType
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., parameters: _Optional[_Iterable[_Union[ParameterDefinition, _Mapping]]] = ..., state: _Optional[_Union[VersionState, str]] = ..., changelog: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., execution_type: _Optional[_Union[_common_pb2.ExecutionType, str]] = ...) -> None: ...

class CreateScriptRequest(_message.Message):
    __slots__ = ("script", "idempotency_key")
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    script: Script
    idempotency_key: str
    def __init__(self, script: _Optional[_Union[Script, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetScriptRequest(_message.Message):
    __slots__ = ("name", "include_deleted")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_deleted: bool
    def __init__(self, name: _Optional[str] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class UpdateScriptRequest(_message.Message):
    __slots__ = ("script", "update_mask")
    SCRIPT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    script: Script
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, script: _Optional[_Union[Script, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ListScriptsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix", "tags_all", "tags_any", "execution_type", "owner", "text", "order_by", "templates_only")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TAGS_ALL_FIELD_NUMBER: _ClassVar[int]
    TAGS_ANY_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    tags_all: _containers.RepeatedScalarFieldContainer[str]
    tags_any: _containers.RepeatedScalarFieldContainer[str]
    execution_type: _common_pb2.ExecutionType
    owner: str
    text: str
    order_by: ScriptOrder
    templates_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ..., tags_all: _Optional[_Iterable[str]] = ..., tags_any: _Optional[_Iterable[str]] = ..., execution_type: _Optional[_Union[_common_pb2.ExecutionType, str]] = ..., owner: _Optional[str] = ..., text: _Optional[str] = ..., order_by: _Optional[_Union[ScriptOrder, str]] = ..., templates_only: _Optional[bool] = ...) -> None: ...

class ListScriptsResponse(_message.Message):
    __slots__ = ("scripts", "next_page_token")
    SCRIPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    scripts: _containers.RepeatedCompositeFieldContainer[Script]
    next_page_token: str
    def __init__(self, scripts: _Optional[_Iterable[_Union[Script, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteScriptRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RestoreScriptRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PublishVersionRequest(_message.Message):
    __slots__ = ("script_name", "version", "content", "sha256", "parameters", "changelog", "idempotency_key")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CHANGELOG_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    content: bytes
    sha256: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterDefinition]
    changelog: str
    idempotency_key: str
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ..., content: _Optional[bytes] = ..., sha256: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterDefinition, _Mapping]]] = ..., changelog: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("script_name", "version")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("script_name", "page_size", "page_token", "include_yanked")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_YANKED_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    page_size: int
    page_token: str
    include_yanked: bool
    def __init__(self, script_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_yanked: _Optional[bool] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ScriptVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[ScriptVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResolveVersionRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ScriptRef
    def __init__(self, ref: _Optional[_Union[_common_pb2.ScriptRef, _Mapping]] = ...) -> None: ...

class DeprecateVersionRequest(_message.Message):
    __slots__ = ("script_name", "version", "reason")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    reason: str
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class YankVersionRequest(_message.Message):
    __slots__ = ("script_name", "version", "reason")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    reason: str
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetContentRequest(_message.Message):
    __slots__ = ("script_name", "version", "sha256")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    version: str
    sha256: str
    def __init__(self, script_name: _Optional[str] = ..., version: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class GetContentResponse(_message.Message):
    __slots__ = ("sha256", "size_bytes", "chunk")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    chunk: bytes
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class GetParameterSchemaRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ScriptRef
    def __init__(self, ref: _Optional[_Union[_common_pb2.ScriptRef, _Mapping]] = ...) -> None: ...

class GetParameterSchemaResponse(_message.Message):
    __slots__ = ("schema", "version")
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    schema: _struct_pb2.Struct
    version: str
    def __init__(self, schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class ValidateParametersRequest(_message.Message):
    __slots__ = ("ref", "values")
    REF_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.ScriptRef
    values: _struct_pb2.Struct
    def __init__(self, ref: _Optional[_Union[_common_pb2.ScriptRef, _Mapping]] = ..., values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ValidateParametersResponse(_message.Message):
    __slots__ = ("version", "values", "secret_names")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SECRET_NAMES_FIELD_NUMBER: _ClassVar[int]
    version: ScriptVersion
    values: _struct_pb2.Struct
    secret_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[ScriptVersion, _Mapping]] = ..., values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., secret_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates", "next_page_token")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Script]
    next_page_token: str
    def __init__(self, templates: _Optional[_Iterable[_Union[Script, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class InstantiateTemplateRequest(_message.Message):
    __slots__ = ("template_name", "name", "placeholders", "overrides", "override_mask", "idempotency_key")
    class PlaceholdersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDERS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_MASK_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    template_name: str
    name: str
    placeholders: _containers.ScalarMap[str, str]
    overrides: Script
    override_mask: _field_mask_pb2.FieldMask
    idempotency_key: str
    def __init__(self, template_name: _Optional[str] = ..., name: _Optional[str] = ..., placeholders: _Optional[_Mapping[str, str]] = ..., overrides: _Optional[_Union[Script, _Mapping]] = ..., override_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "actor", "action", "script_name", "version", "before_digest", "after_digest", "time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BEFORE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AFTER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    actor: str
    action: str
    script_name: str
    version: str
    before_digest: str
    after_digest: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., script_name: _Optional[str] = ..., version: _Optional[str] = ..., before_digest: _Optional[str] = ..., after_digest: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAuditRecordsRequest(_message.Message):
    __slots__ = ("script_name", "page_size", "page_token")
    SCRIPT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    script_name: str
    page_size: int
    page_token: str
    def __init__(self, script_name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditRecordsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

"""The `<script>.runbox.yaml` manifest: script metadata and parameter definitions.

The manifest lives next to the script (`hello.py` -> `hello.runbox.yaml`) so both are
reviewed together. It is read with yaml.safe_load into strict pydantic models: an
unknown key or a value of the wrong type is reported with its YAML path
(`parameters[2].rules.pattern: ...`) before anything is sent. The models only check
shape; the catalogue remains the authority on meaning (names, regexes, defaults
against rules), and its field violations are mapped back to manifest paths by
`manifest_field`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from google.protobuf import duration_pb2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
)

SUFFIX = ".runbox.yaml"

ParameterTypeName = Literal[
    "string",
    "integer",
    "float",
    "boolean",
    "json",
    "email",
    "url",
    "password",
    "text",
    "select",
    "multiselect",
    "file",
    "date",
    "datetime",
]
ExecutionTypeName = Literal["python", "shell", "container", "http", "serverless", "local"]
FailureReasonName = Literal[
    "exit_code",
    "oom_killed",
    "timeout",
    "cancelled",
    "lost",
    "infrastructure",
    "invalid_config",
]


class ManifestError(Exception):
    """A manifest that cannot be read; problems are (YAML path, description) pairs."""

    def __init__(self, path: Path, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{where}: {what}" if where else what for where, what in problems]
        super().__init__(f"{path}: invalid manifest\n" + "\n".join(f"  - {x}" for x in lines))


def _json_value(value: Any) -> Any:
    """A YAML value as JSON: dates become ISO strings (YAML parses 2024-01-01 as a date)."""
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("mapping keys must be strings")
        return {k: _json_value(v) for k, v in value.items()}
    raise ValueError(f"unsupported YAML value of type {type(value).__name__}")


_TIMEDELTA = TypeAdapter(dt.timedelta)


def _duration(value: Any) -> Any:
    """Seconds as a number, a protobuf duration ("90s", "0.5s") or ISO 8601 ("PT1M")."""
    if isinstance(value, bool):
        raise ValueError("expected a duration, e.g. 30s")
    if isinstance(value, (int, float)):
        return dt.timedelta(seconds=value)
    if isinstance(value, str):
        proto = duration_pb2.Duration()
        try:
            proto.FromJsonString(value)
            return proto.ToTimedelta()
        except ValueError:
            pass
        try:
            return _TIMEDELTA.validate_python(value)
        except ValidationError:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 1.5s, PT2M)") from None
    return value


JsonValue = Annotated[Any, AfterValidator(_json_value)]
Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]


class _Model(BaseModel):
    # strict: `version: 1.0` (a YAML float) or `required: "no"` is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True)


def _json_schema(value: Any) -> str:
    """A JSON Schema given as a YAML mapping, or as JSON text, becomes JSON text."""
    if isinstance(value, dict):
        return json.dumps(_json_value(value), sort_keys=True)
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg}") from None
        return value
    raise ValueError("expected a mapping (or JSON text)")


class Rules(_Model):
    """Validation rules; the same names as ParameterRules."""

    pattern: str = ""
    min_length: int | None = None
    max_length: int | None = None
    min_value: float | None = None
    max_value: float | None = None
    allowed_values: list[JsonValue] = []
    json_schema: Annotated[Any, AfterValidator(_json_schema)] = ""
    max_file_size_bytes: int | None = None
    content_types: list[str] = []


class Condition(_Model):
    """Show (and require) the parameter only when another one has a value."""

    parameter: str
    equals: JsonValue


class Ui(_Model):
    """Form hints."""

    label: str = ""
    placeholder: str = ""
    help_text: str = ""
    group: str = ""
    order: int = 0
    advanced: bool = False


class Parameter(_Model):
    """One parameter definition; `default` is any YAML value."""

    name: str
    type: ParameterTypeName
    required: bool = False
    default: JsonValue = None
    secret: bool = False
    description: str = ""
    rules: Rules | None = None
    condition: Condition | None = None
    ui: Ui | None = None


class RunnerConfig(_Model):
    interpreter: str = ""
    image: str = ""


class ContainerConfig(_Model):
    image: str
    command: list[str] = []
    args: list[str] = []
    env: dict[str, str] = {}


class HttpConfig(_Model):
    method: str = ""
    url: str
    headers: dict[str, str] = {}
    body: str = ""
    timeout: Duration | None = None
    success_statuses: list[int] = []


class ServerlessConfig(_Model):
    function_name: str
    qualifier: str = ""
    region: str = ""
    invocation_type: str = ""


class LocalConfig(_Model):
    command: str
    args: list[str] = []


class Config(_Model):
    """Type-specific configuration: exactly one key, as in ExecutionConfig."""

    script: RunnerConfig | None = None
    container: ContainerConfig | None = None
    http: HttpConfig | None = None
    serverless: ServerlessConfig | None = None
    local: LocalConfig | None = None


class Limits(_Model):
    cpu: float = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    timeout: Duration | None = None
    pids: int = 0
    network: Literal["none", "egress_allowlist"] | None = None
    output_bytes: int = 0


class Retry(_Model):
    max_attempts: int = 0
    initial_backoff: Duration | None = None
    max_backoff: Duration | None = None
    multiplier: float = 0
    jitter: float = 0
    retry_on: list[FailureReasonName] = []
    oom_memory_factor: float = 0
    oom_memory_cap_bytes: int = 0


class Manifest(_Model):
    """A whole manifest; a key left out leaves that field of an existing script alone."""

    name: str | None = None
    description: str | None = None
    tags: list[str] | None = None
    execution_type: ExecutionTypeName | None = None
    version: str | None = None
    changelog: str = ""
    config: Config | None = None
    limits: Limits | None = None
    retry: Retry | None = None
    isolation: Literal["per_run", "reuse"] | None = None
    runtime: Literal["runc", "runsc"] | None = None
    template: bool | None = None
    parameters: list[Parameter] = []


# Which Config key belongs to which execution type.
CONFIG_KEY = {
    "python": "script",
    "shell": "script",
    "container": "container",
    "http": "http",
    "serverless": "serverless",
    "local": "local",
}


def default_path(script: Path) -> Path:
    """`dir/hello.py` -> `dir/hello.runbox.yaml`."""
    return script.with_name(script.stem + SUFFIX)


def load(path: Path) -> Manifest:
    """Read and check a manifest; raise ManifestError listing every problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ManifestError(path, [("", exc.strerror or str(exc))]) from None
    except yaml.YAMLError as exc:
        raise ManifestError(path, [("", f"not valid YAML: {_yaml_problem(exc)}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ManifestError(path, [("", "the top level must be a mapping of keys")])
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(path, [_problem(e) for e in exc.errors()]) from None
    problems = _config_problems(manifest)
    if problems:
        raise ManifestError(path, problems)
    return manifest


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def yaml_path(loc: tuple[int | str, ...]) -> str:
    """('parameters', 2, 'rules', 'pattern') -> 'parameters[2].rules.pattern'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(error: Any) -> tuple[str, str]:
    """A pydantic error as (YAML path, message a manifest author understands)."""
    loc = tuple(p for p in error["loc"] if not _is_validator_tag(p))
    kind = error["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = f" (expected one of: {', '.join(model.model_fields)})" if model else ""
        return yaml_path(loc), f"unknown key{known}"
    if kind == "missing":
        return yaml_path(loc), "required key is missing"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return yaml_path(loc), f"{error['input']!r} is not one of {allowed}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return yaml_path(loc), message


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model whose keys are expected at loc, to list them for an unknown key."""
    model: type[BaseModel] | None = Manifest
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        model = _inner_model(field.annotation) if field else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """Rules in `Rules | None` or Parameter in `list[Parameter]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _inner_model(arg)) is not None:
            return found
    return None


def _is_validator_tag(part: int | str) -> bool:
    # pydantic adds e.g. 'function-after[_json_value(), any]' to locs of annotated fields.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _config_problems(manifest: Manifest) -> list[tuple[str, str]]:
    if manifest.config is None:
        return []
    given = [key for key in Config.model_fields if getattr(manifest.config, key) is not None]
    if len(given) != 1:
        return [("config", f"exactly one of {', '.join(Config.model_fields)} is required")]
    if manifest.execution_type and CONFIG_KEY[manifest.execution_type] != given[0]:
        want = CONFIG_KEY[manifest.execution_type]
        return [(f"config.{given[0]}", f"execution_type {manifest.execution_type} takes {want}")]
    return []

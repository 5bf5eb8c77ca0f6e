"""The typed view of a job's type-specific config, and the templating its fields allow.

Job.config is the catalogue's ExecutionConfig as JSON; parsing it back into the proto message
gives one well-kept parser for both field spellings (snake_case from the scheduler, camelCase
from MessageToDict) and for Durations ("5s"), with a precise error on anything unknown.

Templated fields (http URL/headers/body, local args) are Jinja2 in the immutable sandbox with
StrictUndefined, the catalogue's style: a missing parameter is an error, not an empty string.
"""

from __future__ import annotations

import functools
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jinja2
from google.protobuf import json_format
from google.protobuf.message import Message
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbox.catalogue.v1 import catalogue_pb2
from services.executor.runners.base import Job
from shared.errors import InvalidArgument


def execution_config(job: Job, kind: str) -> Any:
    """The `kind` member (http, serverless, local) of the job's ExecutionConfig (a copy of
    one parsed per distinct config: a run's config is checked at Execute and read again
    when it runs, and most runs share a few configs)."""
    try:
        key = json.dumps(job.config, sort_keys=True)
    except (TypeError, ValueError):  # not JSON: ParseDict says why
        key = None
    config = _parsed(key) if key is not None else _parse(job.config)
    chosen = config.WhichOneof("config")
    if chosen != kind:
        found = f"has {chosen!r}" if chosen else "is empty"
        raise InvalidArgument.field(f"config.{kind}", f"required (the config {found})")
    member: Message = type(getattr(config, kind))()
    member.CopyFrom(getattr(config, kind))
    return member


@functools.lru_cache(maxsize=256)
def _parsed(key: str) -> catalogue_pb2.ExecutionConfig:
    """Never modified: execution_config hands out copies of its members."""
    return _parse(json.loads(key))


def _parse(config: dict[str, Any]) -> catalogue_pb2.ExecutionConfig:
    parsed = catalogue_pb2.ExecutionConfig()
    try:
        json_format.ParseDict(config, parsed)
    except json_format.ParseError as exc:
        raise InvalidArgument.field("config", f"not a valid ExecutionConfig: {exc}") from exc
    return parsed


def _finalize(value: Any) -> Any:
    """Numbers, booleans, lists and objects render as JSON; strings as themselves."""
    if isinstance(value, str | jinja2.Undefined):
        return value
    return json.dumps(value)


def _defined(value: Any) -> Any:
    """Filters see StrictUndefined as an object; make a missing name fail as one."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # renders URLs, headers, bodies and argv, not HTML
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["tojson"] = lambda value: json.dumps(_defined(value))
    env.filters["urlquote"] = lambda value: urllib.parse.quote(str(_defined(value)), safe="")
    return env


ENV = _environment()


@functools.lru_cache(maxsize=1024)
def _compile(source: str) -> jinja2.Template:
    return ENV.from_string(source)


def render(source: str, values: Mapping[str, Any], field: str) -> str:
    """Render one templated field; any template problem is the field's violation."""
    if "{" not in source:  # the common literal case skips Jinja entirely
        return source
    try:
        return _compile(source).render(values)
    except jinja2.TemplateError as exc:
        raise InvalidArgument.field(field, f"template: {exc.message or exc}") from exc


def referenced(source: str, field: str) -> set[str]:
    """Names a template reads from its context (to refuse secrets where they must not go)."""
    if "{" not in source:
        return set()
    try:
        return meta.find_undeclared_variables(ENV.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidArgument.field(field, f"template: {exc.message or exc}") from exc

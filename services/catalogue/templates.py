"""Templates: scripts marked reusable whose content has Jinja2 placeholders.

`InstantiateTemplate` renders the template's latest version with the caller's placeholder values
in Jinja2's immutable sandbox (no attribute access to Python internals, no mutation of values),
and creates a new script with that content as its first version, in one transaction.

Placeholders are filled once, when a script is made from the template (what to scan, where the
config lives); parameters stay runtime inputs of every run. Values are inserted verbatim: a
template puts them in code through the `tojson` (Python/JSON literal) or `shquote` (shell word)
filters. Comments use `{## ... ##}` so that shell's `${#var}` is not a Jinja comment.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import yaml
from cachetools import LRUCache
from google.protobuf import json_format
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runbox.catalogue.v1 import catalogue_pb2
from services.catalogue.scripts import MUTABLE, Catalogue
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

MAX_PLACEHOLDER_CHARS = 64 * 1024
BUILTIN_ACTOR = "runbox"
# Script fields an instantiation may override (name is the request's own field).
OVERRIDABLE = set(MUTABLE)  # the same fields UpdateScript may change


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # renders scripts, not HTML
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["tojson"] = lambda value: json.dumps(_defined(value))
    env.filters["shquote"] = lambda value: shlex.quote(str(_defined(value)))
    return env


def _defined(value: Any) -> Any:
    """Filters see StrictUndefined as an object; make a missing placeholder fail as one."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


ENV = _environment()
_PLACEHOLDERS: LRUCache[str, list[str]] = LRUCache(maxsize=4_096)


def _source(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument.field(
            "content", f"a template must be UTF-8 text (byte {exc.start} is not)"
        ) from None


def check(content: bytes) -> None:
    """A template's content must parse; INVALID_ARGUMENT with the line if it does not."""
    try:
        ENV.parse(_source(content))
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidArgument.field(
            "content", f"template syntax error at line {exc.lineno}: {exc.message}"
        ) from None


def known_placeholders(sha256: str) -> list[str] | None:
    """The placeholders of content already parsed, without needing the content again."""
    return _PLACEHOLDERS.get(sha256)


def placeholders(sha256: str, content: bytes) -> list[str]:
    """Names the template reads (cached by content digest: content is immutable)."""
    found = _PLACEHOLDERS.get(sha256)
    if found is None:
        found = sorted(meta.find_undeclared_variables(ENV.parse(_source(content))))
        _PLACEHOLDERS[sha256] = found
    return found


def render(label: str, sha256: str, content: bytes, values: dict[str, str]) -> bytes:
    """The content with placeholders filled; every missing or unknown placeholder reported."""
    known = placeholders(sha256, content)
    violations = [
        FieldViolation(f"placeholders[{name}]", f"unknown placeholder; {label} has {known}")
        for name in sorted(set(values) - set(known))
    ]
    violations += [
        FieldViolation(f"placeholders[{name}]", f"at most {MAX_PLACEHOLDER_CHARS} characters")
        for name, value in sorted(values.items())
        if len(value) > MAX_PLACEHOLDER_CHARS
    ]
    if violations:
        raise InvalidArgument("placeholders do not fit the template", violations)
    try:
        return ENV.from_string(_source(content)).render(values).encode()
    except jinja2.UndefinedError as exc:
        missing = [name for name in known if name not in values and f"'{name}'" in str(exc)]
        if missing:
            raise InvalidArgument(
                "placeholders do not fit the template",
                [FieldViolation(f"placeholders[{name}]", "required") for name in missing],
            ) from None
        raise FailedPrecondition(f"{label} does not render: {exc}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise FailedPrecondition(f"{label} tried an unsafe operation: {exc}") from None
    except jinja2.TemplateError as exc:
        raise FailedPrecondition(f"{label} does not render: {exc}") from None
    except Exception as exc:  # template code can raise anything (1/0, bad filter arguments)
        raise FailedPrecondition(f"{label} does not render: {type(exc).__name__}: {exc}") from None


def instance_script(
    template: catalogue_pb2.Script, request: catalogue_pb2.InstantiateTemplateRequest
) -> catalogue_pb2.Script:
    """The new script: the template's settings, the requested overrides, not a template."""
    paths = list(request.override_mask.paths)
    violations = [
        FieldViolation(f"override_mask.paths[{i}]", f"cannot override {path!r}")
        for i, path in enumerate(paths)
        if path not in OVERRIDABLE
    ]
    if violations:
        raise InvalidArgument("invalid override mask", violations)
    script = catalogue_pb2.Script()
    script.CopyFrom(template)
    for name in ("latest_version", "create_time", "update_time", "delete_time", "placeholders"):
        script.ClearField(name)  # type: ignore[arg-type]
    script.name = request.name
    script.is_template = False
    script.owner = ""
    for path in paths:
        script.ClearField(path)  # type: ignore[arg-type]
        if path == "tags":
            script.tags.extend(request.overrides.tags)
        elif path in _MESSAGE_FIELDS:
            if request.overrides.HasField(path):  # type: ignore[arg-type]
                getattr(script, path).CopyFrom(getattr(request.overrides, path))
        else:
            setattr(script, path, getattr(request.overrides, path))
    return script


_MESSAGE_FIELDS = {"config", "default_limits", "default_retry"}


# ---------------------------------------------------------------------------------------------
# Built-in templates, shipped as files next to this module and published at start-up.


@dataclass(frozen=True)
class Builtin:
    """A template Runbox ships: script settings and one version of content."""

    script: catalogue_pb2.Script
    version: catalogue_pb2.PublishVersionRequest


def builtins() -> list[Builtin]:
    """Every template under builtin_templates/ (a manifest YAML plus its content file)."""
    folder = resources.files("services.catalogue") / "builtin_templates"
    found: list[Builtin] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        manifest: dict[str, Any] = yaml.safe_load(entry.read_text())
        content = (folder / manifest.pop("content_file")).read_bytes()
        version = manifest.pop("version")
        changelog = manifest.pop("changelog", "")
        params = manifest.pop("parameters", [])
        script = json_format.ParseDict({**manifest, "is_template": True}, catalogue_pb2.Script())
        request = json_format.ParseDict(
            {"script_name": script.name, "version": version, "changelog": changelog},
            catalogue_pb2.PublishVersionRequest(),
        )
        request.content = content
        for p in params:
            json_format.ParseDict(p, request.parameters.add())
        found.append(Builtin(script, request))
    return found


async def publish_builtins(catalogue: Catalogue) -> None:
    """Make sure every built-in template exists at its shipped version (idempotent; replicas
    racing on it see ALREADY_EXISTS and move on). A template deleted by an operator stays
    deleted: it is only restored by RestoreScript."""
    for builtin in builtins():
        try:
            await catalogue.get_script(builtin.script.name, include_deleted=True)
        except NotFound:
            try:
                await catalogue.create_with_version(
                    builtin.script, builtin.version, actor=BUILTIN_ACTOR
                )
            except AlreadyExists:
                pass
            continue
        try:
            await catalogue.get_version(builtin.script.name, builtin.version.version)
        except NotFound:
            try:
                await catalogue.publish_version(builtin.version, actor=BUILTIN_ACTOR)
            except (AlreadyExists, NotFound):
                pass  # another replica was first, or the template is deleted

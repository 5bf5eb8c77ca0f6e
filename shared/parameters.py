"""Parameter definitions of a version: publish-time checks, run-time validation, JSON Schema.

One compiled `ParameterSet` per version does all three jobs from the same per-parameter JSON
Schema (Draft 2020-12), so the schema a UI builds its form from and the checks a run goes through
cannot drift apart:

- `compile_definitions` checks definitions at publish (types, rules that fit the type, regexes,
  JSON Schemas, defaults that satisfy their own rules, conditions and their cycles) and reports
  every problem at once under `parameters[i]...`.
- `ParameterSet.validate` coerces values (CLIs send strings, Struct numbers arrive as floats),
  evaluates conditions, fills defaults, runs the jsonschema validator of every active parameter and
  reports every violation at once under `values.<name>`.
- `ParameterSet.json_schema` is the whole form as JSON Schema 2020-12, UI hints as annotations.

Secret parameters (PASSWORD, or flagged secret) never have a value or default in a message: error
texts are built from the failing keyword, never from the instance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from typing import Any

import email_validator
import jsonschema
from google.protobuf import json_format
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import AnyUrl, TypeAdapter, ValidationError

from runbox.catalogue.v1 import catalogue_pb2
from shared.errors import FieldViolation, InvalidArgument

PT = catalogue_pb2.ParameterType
Definition = catalogue_pb2.ParameterDefinition

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
MAX_PARAMETERS = 200
MAX_PATTERN_CHARS = 1_000
MAX_UI_TEXT = 500
INT64 = (-(2**63), 2**63 - 1)

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_STRING_TYPES = {
    PT.PARAMETER_TYPE_STRING,
    PT.PARAMETER_TYPE_TEXT,
    PT.PARAMETER_TYPE_PASSWORD,
    PT.PARAMETER_TYPE_EMAIL,
    PT.PARAMETER_TYPE_URL,
    PT.PARAMETER_TYPE_SELECT,
}
_NUMERIC_TYPES = {PT.PARAMETER_TYPE_INTEGER, PT.PARAMETER_TYPE_FLOAT}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_FILE_KEYS = {"name", "content_type", "content_base64"}

# Which rule fields make sense for which types; anything else is refused at publish so a
# definition never carries a rule that silently does nothing.
_RULE_TYPES: dict[str, set[Any]] = {
    "pattern": _STRING_TYPES - {PT.PARAMETER_TYPE_SELECT},
    "min_length": _STRING_TYPES | {PT.PARAMETER_TYPE_MULTISELECT},
    "max_length": _STRING_TYPES | {PT.PARAMETER_TYPE_MULTISELECT},
    "min_value": _NUMERIC_TYPES,
    "max_value": _NUMERIC_TYPES,
    "allowed_values": _STRING_TYPES
    | _NUMERIC_TYPES
    | {PT.PARAMETER_TYPE_MULTISELECT, PT.PARAMETER_TYPE_DATE},
    "json_schema": {PT.PARAMETER_TYPE_JSON},
    "max_file_size_bytes": {PT.PARAMETER_TYPE_FILE},
    "content_types": {PT.PARAMETER_TYPE_FILE},
}


def type_name(t: int) -> str:
    """STRING for PARAMETER_TYPE_STRING; the raw number for a value the enum does not know."""
    try:
        return PT.Name(t).removeprefix("PARAMETER_TYPE_")  # type: ignore[arg-type]
    except ValueError:
        return str(t)


def is_secret(definition: Definition) -> bool:
    """Secret parameters (flagged, or PASSWORD) are never returned, logged or published."""
    return definition.secret or definition.type == PT.PARAMETER_TYPE_PASSWORD


# ---------------------------------------------------------------------------------------------
# Formats: jsonschema asserts these when given a FormatChecker; the checks themselves come from
# email-validator, pydantic's URL parser and the ISO parsers of the standard library.

_URL = TypeAdapter(AnyUrl)
FORMATS = FormatChecker(formats=())


@FORMATS.checks("email", raises=email_validator.EmailNotValidError)
def _is_email(value: object) -> bool:
    if isinstance(value, str):
        email_validator.validate_email(value, check_deliverability=False)
    return True


@FORMATS.checks("uri", raises=ValidationError)
def _is_url(value: object) -> bool:
    if isinstance(value, str):
        url = _URL.validate_python(value)
        return bool(url.scheme and url.host)
    return True


@FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
    return True


@FORMATS.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    if isinstance(value, str):
        return datetime.fromisoformat(value).tzinfo is not None
    return True


# ---------------------------------------------------------------------------------------------
# Coercion: from what clients send to the JSON value the schema describes.


def _coerce(d: Definition, raw: Any) -> Any:
    """The value in its canonical JSON form; ValueError (never quoting a secret) if it cannot be."""
    kind = d.type
    if kind in _STRING_TYPES:
        return _as_text(raw, "a string")
    if kind == PT.PARAMETER_TYPE_INTEGER:
        return _as_int(raw)
    if kind == PT.PARAMETER_TYPE_FLOAT:
        return _as_float(raw)
    if kind == PT.PARAMETER_TYPE_BOOLEAN:
        return _as_bool(raw)
    if kind == PT.PARAMETER_TYPE_JSON:
        if isinstance(raw, str):
            try:
                return json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON: {exc.msg} at line {exc.lineno}") from None
        return raw
    if kind == PT.PARAMETER_TYPE_MULTISELECT:
        items = [i.strip() for i in raw.split(",") if i.strip()] if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise ValueError("expected a list of strings")
        return [_as_text(item, "a list of strings") for item in items]
    if kind == PT.PARAMETER_TYPE_DATE:
        text = _as_text(raw, "a date (YYYY-MM-DD)")
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise ValueError("expected a date (YYYY-MM-DD)") from None
    if kind == PT.PARAMETER_TYPE_DATETIME:
        return _as_datetime(_as_text(raw, "an ISO 8601 date-time"))
    if kind == PT.PARAMETER_TYPE_FILE:
        return _as_file(raw)
    raise ValueError(f"unknown parameter type {type_name(kind)}")


def _as_text(raw: Any, expected: str) -> str:
    if isinstance(raw, (dict, list)) or raw is None:
        raise ValueError(f"expected {expected}")
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))  # JSON/Struct numbers arrive as floats: 7 is "7", not "7.0"
    return str(raw)


def _as_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(raw, float):
        if not raw.is_integer():
            raise ValueError("expected an integer, got a fraction")
        value = int(raw)
    else:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if not INT64[0] <= value <= INT64[1]:
        raise ValueError("integer out of the 64-bit range")
    return value


def _as_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"expected a boolean ({'/'.join(sorted(_TRUE | _FALSE))})")


def _as_datetime(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-01-31T09:30:00Z") from None
    if moment.tzinfo is None:
        raise ValueError("date-time needs a UTC offset or Z: a local time is ambiguous")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _as_file(raw: Any) -> dict[str, Any]:
    """A FILE value: {name, content_type, content_base64}; size and sha256 are computed here."""
    if not isinstance(raw, dict):
        raise ValueError("expected a file object {name, content_type, content_base64}")
    unknown = sorted(set(raw) - _FILE_KEYS - {"size_bytes", "sha256"})
    if unknown:
        raise ValueError(f"unknown file field {unknown[0]!r}")
    name, ctype, data = raw.get("name"), raw.get("content_type"), raw.get("content_base64")
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in {".", ".."}:
        raise ValueError("file name must be a plain, non-empty file name")
    if not isinstance(ctype, str) or "/" not in ctype:
        raise ValueError("file content_type must be a media type like text/plain")
    if not isinstance(data, str):
        raise ValueError("file content_base64 is required")
    try:
        content = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("file content_base64 is not valid base64") from None
    return {
        "name": name,
        "content_type": ctype.lower(),
        "content_base64": data,
        "size_bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------
# Per-parameter JSON Schema: used for the form and, compiled, for validation.


def _value_schema(d: Definition) -> dict[str, Any]:
    """What a valid (coerced) value looks like; annotations are added separately."""
    rules = d.rules
    kind = d.type
    schema: dict[str, Any]
    if kind in _STRING_TYPES:
        schema = {"type": "string"}
        fmt = {PT.PARAMETER_TYPE_EMAIL: "email", PT.PARAMETER_TYPE_URL: "uri"}.get(kind)
        if fmt:
            schema["format"] = fmt
        if rules.pattern:
            schema["pattern"] = f"^(?:{rules.pattern})$"
        if rules.HasField("min_length"):
            schema["minLength"] = rules.min_length
        if rules.HasField("max_length"):
            schema["maxLength"] = rules.max_length
    elif kind in _NUMERIC_TYPES:
        schema = {"type": "integer" if kind == PT.PARAMETER_TYPE_INTEGER else "number"}
        if rules.HasField("min_value"):
            schema["minimum"] = rules.min_value
        if rules.HasField("max_value"):
            schema["maximum"] = rules.max_value
    elif kind == PT.PARAMETER_TYPE_BOOLEAN:
        schema = {"type": "boolean"}
    elif kind == PT.PARAMETER_TYPE_JSON:
        schema = _json_rule(d)
    elif kind == PT.PARAMETER_TYPE_MULTISELECT:
        schema = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
        if rules.HasField("min_length"):
            schema["minItems"] = rules.min_length
        if rules.HasField("max_length"):
            schema["maxItems"] = rules.max_length
    elif kind == PT.PARAMETER_TYPE_DATE:
        schema = {"type": "string", "format": "date"}
    elif kind == PT.PARAMETER_TYPE_DATETIME:
        schema = {"type": "string", "format": "date-time"}
    elif kind == PT.PARAMETER_TYPE_FILE:
        schema = _file_schema(rules)
    else:
        schema = {}
    allowed = [json_format.MessageToDict(v) for v in rules.allowed_values]
    if allowed:
        if kind == PT.PARAMETER_TYPE_MULTISELECT:
            schema["items"] = {"enum": allowed}
        else:
            schema["enum"] = allowed
    return schema


def _json_rule(d: Definition) -> dict[str, Any]:
    """The JSON Schema rule as an embeddable resource: its own $id, so that its local $refs
    still resolve when the whole form is one schema."""
    if not d.rules.json_schema:
        return {}
    parsed = json.loads(d.rules.json_schema)
    if isinstance(parsed, bool):
        return {} if parsed else {"not": {}}
    schema = dict(parsed)
    schema.pop("$schema", None)
    schema.setdefault("$id", f"urn:runbox:parameter:{d.name}")
    return schema


def _file_schema(rules: catalogue_pb2.ParameterRules) -> dict[str, Any]:
    size: dict[str, Any] = {"type": "integer", "minimum": 0}
    if rules.HasField("max_file_size_bytes"):
        size["maximum"] = rules.max_file_size_bytes
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "content_type": {"type": "string"},
            "content_base64": {"type": "string", "contentEncoding": "base64"},
            "size_bytes": size,
            "sha256": {"type": "string"},
        },
        "required": ["name", "content_type", "content_base64"],
        "additionalProperties": False,
    }


def _annotated(p: _Compiled) -> dict[str, Any]:
    """The value schema plus title, description, default and UI hints (x-runbox-*)."""
    d = p.definition
    schema = _value_schema(d)
    ui = d.ui
    schema["title"] = ui.label or d.name
    if ui.help_text or d.description:
        schema["description"] = ui.help_text or d.description
    secret = is_secret(d)
    if p.has_default and not secret:
        schema["default"] = p.default
    if secret:
        schema["writeOnly"] = True
    hints: dict[str, Any] = {"type": type_name(d.type), "order": ui.order}
    for key, value in (
        ("placeholder", ui.placeholder),
        ("group", ui.group),
        ("advanced", ui.advanced),
        ("secret", secret),
        ("default_hidden", secret and p.has_default),
        ("multiline", d.type == PT.PARAMETER_TYPE_TEXT),
        ("content_types", list(d.rules.content_types)),
    ):
        if value:
            hints[key] = value
    if d.HasField("condition"):
        hints["condition"] = {
            "parameter": d.condition.parameter,
            "equals": json_format.MessageToDict(d.condition.equals),
        }
    schema["x-runbox-ui"] = hints
    return schema


# ---------------------------------------------------------------------------------------------
# Compiled parameter sets.


@dataclass
class Validated:
    """Normalised values, split into plain and secret."""

    values: dict[str, Any]
    secrets: dict[str, Any]


@dataclass
class _Compiled:
    definition: Definition
    validator: Draft202012Validator
    default: Any = None
    has_default: bool = False
    equals: Any = None  # the condition's value, coerced through the controlling parameter


@dataclass
class ParameterSet:
    """The compiled definitions of one version. Immutable versions make it safe to cache."""

    definitions: list[Definition]
    _params: dict[str, _Compiled] = field(default_factory=dict)
    _order: list[str] = field(default_factory=list)  # controlling parameters before dependants

    def validate(self, values: Mapping[str, Any]) -> Validated:
        """Coerce, apply conditions, fill defaults and check rules; raise with every violation."""
        violations = [
            FieldViolation(f"values.{name}", "unknown parameter")
            for name in values
            if name not in self._params
        ]
        normalised: dict[str, Any] = {}
        undecided: set[str] = set()  # parameters whose value was invalid: dependants unknown
        for name in self._order:
            p = self._params[name]
            d = p.definition
            where = f"values.{name}"
            given = values.get(name)
            active = self._active(p, normalised, undecided)
            if active is None:
                undecided.add(name)
                continue
            if not active:
                if given is not None:
                    shown = _shown_value(self._params[d.condition.parameter].definition, p.equals)
                    violations.append(
                        FieldViolation(
                            where, f"applies only when {d.condition.parameter} is {shown}"
                        )
                    )
                continue
            if given is None:
                if p.has_default:
                    normalised[name] = p.default
                elif d.required:
                    violations.append(FieldViolation(where, "required"))
                continue
            try:
                value = _coerce(d, given)
            except ValueError as exc:
                violations.append(FieldViolation(where, str(exc)))
                undecided.add(name)
                continue
            problems = _problems(p, value)
            if problems:
                violations.extend(FieldViolation(where, text) for text in problems)
                undecided.add(name)
                continue
            normalised[name] = value
        if violations:
            raise InvalidArgument("parameters are invalid", violations)
        out = Validated({}, {})
        for name, value in normalised.items():
            target = out.secrets if is_secret(self._params[name].definition) else out.values
            target[name] = value
        return out

    def _active(self, p: _Compiled, normalised: dict[str, Any], undecided: set[str]) -> bool | None:
        """Whether the parameter's condition holds; None when that cannot be known."""
        if not p.definition.HasField("condition"):
            return True
        controller = p.definition.condition.parameter
        if controller in undecided:
            return None
        return controller in normalised and normalised[controller] == p.equals

    def json_schema(self, title: str = "", schema_id: str = "") -> dict[str, Any]:
        """The whole form as JSON Schema 2020-12 (conditions as if/then/else)."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        conditions: list[dict[str, Any]] = []
        for name in sorted(self._params, key=self._form_position):
            p = self._params[name]
            d = p.definition
            properties[name] = _annotated(p)
            if not d.HasField("condition"):
                if d.required and not p.has_default:
                    required.append(name)
                continue
            when = {
                "properties": {d.condition.parameter: {"const": p.equals}},
                "required": [d.condition.parameter],
            }
            rule: dict[str, Any] = {"if": when, "else": {"not": {"required": [name]}}}
            if d.required and not p.has_default:
                rule["then"] = {"required": [name]}
            conditions.append(rule)
        schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT}
        if schema_id:
            schema["$id"] = schema_id
        if title:
            schema["title"] = title
        schema.update(type="object", properties=properties, additionalProperties=False)
        if required:
            schema["required"] = required
        if conditions:
            schema["allOf"] = conditions
        return schema

    def _form_position(self, name: str) -> tuple[int, int]:
        d = self._params[name].definition
        return (d.ui.order, [x.name for x in self.definitions].index(name))


def _problems(p: _Compiled, value: Any) -> list[str]:
    """Rule violations of one coerced value, worded from the keyword (never the value)."""
    d = p.definition
    out = [_describe(d, error) for error in p.validator.iter_errors(value)]
    rules = d.rules
    if d.type == PT.PARAMETER_TYPE_FILE and rules.content_types and isinstance(value, dict):
        ctype = str(value.get("content_type", ""))
        if not any(fnmatchcase(ctype, pattern.lower()) for pattern in rules.content_types):
            out.append(f"content type {ctype} is not one of {list(rules.content_types)}")
    return out


def _describe(d: Definition, error: jsonschema.ValidationError) -> str:
    keyword = str(error.validator)
    expected = error.validator_value
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    prefix = f"{where}: " if where else ""
    fixed: dict[str, Callable[[], str]] = {
        "pattern": lambda: f"must match {d.rules.pattern!r}",
        "minLength": lambda: f"must be at least {expected} characters",
        "maxLength": lambda: f"must be at most {expected} characters",
        "minimum": lambda: f"must be >= {expected:g}",
        "maximum": lambda: f"must be <= {expected:g}",
        "minItems": lambda: f"choose at least {expected}",
        "maxItems": lambda: f"choose at most {expected}",
        "uniqueItems": lambda: "choices must not repeat",
        "enum": lambda: f"must be one of {expected}",
        "format": lambda: f"is not a valid {_FORMAT_NAMES.get(str(expected), expected)}",
        "type": lambda: f"expected {expected}",
    }
    if d.type == PT.PARAMETER_TYPE_FILE and keyword == "maximum":
        return f"file is larger than {expected} bytes"
    if keyword in fixed:
        return prefix + fixed[keyword]()
    if is_secret(d):
        return prefix + f"fails the {keyword} rule"
    return prefix + error.message


_FORMAT_NAMES = {"email": "email address", "uri": "URL", "date": "date", "date-time": "date-time"}


def _shown_value(d: Definition, value: Any) -> str:
    return "a secret value" if is_secret(d) else json.dumps(value)


# ---------------------------------------------------------------------------------------------
# Publish-time checks.


def compile_definitions(definitions: Iterable[Definition]) -> ParameterSet:
    """Check definitions as a whole and compile them; InvalidArgument lists every problem."""
    defs = list(definitions)
    violations: list[FieldViolation] = []
    if len(defs) > MAX_PARAMETERS:
        violations.append(FieldViolation("parameters", f"at most {MAX_PARAMETERS} parameters"))
    result = ParameterSet(defs)
    index: dict[str, int] = {}
    for i, d in enumerate(defs):
        where = f"parameters[{i}]"
        problems = _check_definition(d, where)
        if not problems and d.name in index:
            problems = [FieldViolation(f"{where}.name", f"duplicate parameter {d.name!r}")]
        violations += problems
        if problems:
            continue
        index[d.name] = i
        validator = Draft202012Validator(_value_schema(d), format_checker=FORMATS)
        result._params[d.name] = _Compiled(d, validator)
    for name, p in result._params.items():
        violations += _check_default(p, f"parameters[{index[name]}]")
    violations += _check_conditions(result, index)
    if violations:
        raise InvalidArgument("invalid parameter definitions", violations)
    result._order = _dependency_order(result)
    return result


def check_definitions(definitions: list[Definition]) -> list[dict[str, Any]]:
    """Validate definitions at publish time; return them as stored JSON."""
    compile_definitions(definitions)
    return [json_format.MessageToDict(d, preserving_proto_field_name=True) for d in definitions]


def load_definitions(stored: list[dict[str, Any]]) -> list[Definition]:
    """Definitions back from their stored JSON."""
    return [json_format.ParseDict(d, Definition()) for d in stored]


def _check_definition(d: Definition, where: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not _NAME.match(d.name):
        out.append(FieldViolation(f"{where}.name", f"{d.name!r} must match {_NAME.pattern}"))
    if d.type == PT.PARAMETER_TYPE_UNSPECIFIED:
        return [*out, FieldViolation(f"{where}.type", "type is required")]
    if d.type not in PT.values():
        return [*out, FieldViolation(f"{where}.type", f"unknown parameter type {d.type}")]
    out += _check_rules(d, f"{where}.rules")
    ui = d.ui
    for key in ("label", "placeholder", "help_text", "group"):
        if len(getattr(ui, key)) > MAX_UI_TEXT:
            out.append(FieldViolation(f"{where}.ui.{key}", f"at most {MAX_UI_TEXT} characters"))
    if len(d.description) > 4 * MAX_UI_TEXT:
        out.append(FieldViolation(f"{where}.description", "at most 2000 characters"))
    return out


def _check_rules(d: Definition, where: str) -> list[FieldViolation]:
    rules = d.rules
    out: list[FieldViolation] = []
    for name, types in _RULE_TYPES.items():
        present = bool(getattr(rules, name)) if name in _REPEATED_OR_TEXT else rules.HasField(name)
        if present and d.type not in types:
            out.append(FieldViolation(f"{where}.{name}", f"does not apply to {type_name(d.type)}"))
    if out:
        return out
    if rules.pattern:
        out += _check_pattern(rules.pattern, f"{where}.pattern")
    for name in ("min_length", "max_length"):
        if rules.HasField(name) and getattr(rules, name) < 0:
            out.append(FieldViolation(f"{where}.{name}", "must not be negative"))
    for low, high in (("min_length", "max_length"), ("min_value", "max_value")):
        both = rules.HasField(low) and rules.HasField(high)
        if both and getattr(rules, low) > getattr(rules, high):
            out.append(FieldViolation(f"{where}.{low}", f"is greater than {high}"))
    for name in ("min_value", "max_value"):
        if rules.HasField(name) and not math.isfinite(getattr(rules, name)):
            out.append(FieldViolation(f"{where}.{name}", "must be a finite number"))
    if rules.HasField("max_file_size_bytes") and rules.max_file_size_bytes <= 0:
        out.append(FieldViolation(f"{where}.max_file_size_bytes", "must be positive"))
    for j, ctype in enumerate(rules.content_types):
        if not re.fullmatch(r"[a-z0-9!#$&^_.+*-]+/[a-z0-9!#$&^_.+*-]+", ctype.lower()):
            out.append(FieldViolation(f"{where}.content_types[{j}]", "not a media type"))
    if rules.json_schema:
        out += _check_json_schema(rules.json_schema, f"{where}.json_schema")
    out += _check_allowed(d, where)
    return out


_REPEATED_OR_TEXT = {"pattern", "allowed_values", "json_schema", "content_types"}


def _check_pattern(pattern: str, where: str) -> list[FieldViolation]:
    if len(pattern) > MAX_PATTERN_CHARS:
        return [FieldViolation(where, f"at most {MAX_PATTERN_CHARS} characters")]
    try:
        re.compile(pattern)
    except re.error as exc:
        return [FieldViolation(where, f"invalid regex: {exc}")]
    return []


def _check_json_schema(text: str, where: str) -> list[FieldViolation]:
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        return [FieldViolation(where, f"not JSON: {exc.msg} at line {exc.lineno}")]
    if not isinstance(schema, (dict, bool)):
        return [FieldViolation(where, "a JSON Schema is an object or a boolean")]
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(part) for part in exc.absolute_path)
        return [FieldViolation(where, f"invalid JSON Schema at /{path}: {exc.message}")]
    if isinstance(schema, dict) and _has_remote_ref(schema):
        return [FieldViolation(where, "only local $ref (#...) is allowed")]
    return []


def _has_remote_ref(node: Any) -> bool:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return True
        return any(_has_remote_ref(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_remote_ref(v) for v in node)
    return False


def _check_allowed(d: Definition, where: str) -> list[FieldViolation]:
    allowed = [json_format.MessageToDict(v) for v in d.rules.allowed_values]
    if d.type in (PT.PARAMETER_TYPE_SELECT, PT.PARAMETER_TYPE_MULTISELECT) and not allowed:
        return [FieldViolation(f"{where}.allowed_values", f"{type_name(d.type)} needs choices")]
    out: list[FieldViolation] = []
    item = Definition(name=d.name, type=PT.PARAMETER_TYPE_STRING)
    if d.type != PT.PARAMETER_TYPE_MULTISELECT:
        item.type = d.type
    seen: list[Any] = []
    for j, value in enumerate(allowed):
        try:
            coerced = _coerce(item, value)
        except ValueError as exc:
            out.append(FieldViolation(f"{where}.allowed_values[{j}]", str(exc)))
            continue
        if coerced != value:
            out.append(FieldViolation(f"{where}.allowed_values[{j}]", f"write it as {coerced!r}"))
        elif value in seen:
            out.append(FieldViolation(f"{where}.allowed_values[{j}]", "duplicate choice"))
        seen.append(value)
    return out


def _check_default(p: _Compiled, where: str) -> list[FieldViolation]:
    """A default must itself be a valid value, or every run without the value would fail."""
    d = p.definition
    if not d.HasField("default_value"):
        return []
    at = f"{where}.default_value"
    try:
        value = _coerce(d, json_format.MessageToDict(d.default_value))
    except ValueError as exc:
        return [FieldViolation(at, str(exc))]
    problems = _problems(p, value)
    if problems:
        return [FieldViolation(at, f"violates its own rules: {text}") for text in problems]
    p.default, p.has_default = value, True
    return []


def _check_conditions(result: ParameterSet, index: dict[str, int]) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    for name, p in result._params.items():
        d = p.definition
        if not d.HasField("condition"):
            continue
        where = f"parameters[{index[name]}].condition"
        controller = result._params.get(d.condition.parameter)
        if controller is None:
            out.append(
                FieldViolation(f"{where}.parameter", f"no parameter {d.condition.parameter!r}")
            )
            continue
        if is_secret(controller.definition):
            out.append(
                FieldViolation(f"{where}.parameter", "a condition cannot depend on a secret")
            )
            continue
        cycle = _cycle_from(result, name)
        if cycle:
            out.append(
                FieldViolation(f"{where}.parameter", "conditional cycle: " + " -> ".join(cycle))
            )
            continue
        if not d.condition.HasField("equals"):
            out.append(FieldViolation(f"{where}.equals", "required"))
            continue
        try:
            p.equals = _coerce(controller.definition, json_format.MessageToDict(d.condition.equals))
        except ValueError as exc:
            out.append(FieldViolation(f"{where}.equals", str(exc)))
            continue
        if _problems(controller, p.equals):
            out.append(
                FieldViolation(f"{where}.equals", f"{name} could never apply: not a valid value")
            )
    return out


def _cycle_from(result: ParameterSet, start: str) -> list[str]:
    """The names of a conditional cycle through `start`, or [] (each has at most one parent)."""
    path = [start]
    current = start
    while True:
        p = result._params.get(current)
        if p is None or not p.definition.HasField("condition"):
            return []
        current = p.definition.condition.parameter
        if current == start:
            return [*path, start]
        if current in path:
            return []  # a cycle further up, reported from one of its own members
        path.append(current)


def _dependency_order(result: ParameterSet) -> list[str]:
    """Definition order, but every controlling parameter before the ones that depend on it."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        p = result._params[name]
        if p.definition.HasField("condition"):
            visit(p.definition.condition.parameter)
        order.append(name)

    for d in result.definitions:
        visit(d.name)
    return order


def validate(definitions: list[Definition], values: dict[str, Any]) -> Validated:
    """One-off validation (compiles the definitions each call; the servicer caches sets)."""
    return compile_definitions(definitions).validate(values)

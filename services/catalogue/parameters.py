"""Parameter definitions of a version and validation of a value set.

This is the walking-skeleton subset: types are coerced (values arrive as
strings from CLIs or as JSON values), defaults filled, required and unknown
parameters and basic rules reported — every violation at once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from runbox.catalogue.v1 import catalogue_pb2
from shared.errors import FieldViolation, InvalidArgument

PT = catalogue_pb2.ParameterType
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_STRINGS = {
    PT.PARAMETER_TYPE_STRING,
    PT.PARAMETER_TYPE_TEXT,
    PT.PARAMETER_TYPE_PASSWORD,
    PT.PARAMETER_TYPE_EMAIL,
    PT.PARAMETER_TYPE_URL,
    PT.PARAMETER_TYPE_DATE,
    PT.PARAMETER_TYPE_DATETIME,
    PT.PARAMETER_TYPE_SELECT,
    PT.PARAMETER_TYPE_FILE,
}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def is_secret(definition: catalogue_pb2.ParameterDefinition) -> bool:
    """Secret parameters (flagged, or PASSWORD) are never returned, logged or published."""
    return definition.secret or definition.type == PT.PARAMETER_TYPE_PASSWORD


def check_definitions(definitions: list[catalogue_pb2.ParameterDefinition]) -> list[dict[str, Any]]:
    """Validate definitions at publish time; return them as stored JSON."""
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    for i, d in enumerate(definitions):
        where = f"parameters[{i}]"
        if not _NAME.match(d.name):
            violations.append(
                FieldViolation(f"{where}.name", f"{d.name!r} must match {_NAME.pattern}")
            )
        elif d.name in seen:
            violations.append(FieldViolation(f"{where}.name", f"duplicate parameter {d.name!r}"))
        seen.add(d.name)
        if d.type == PT.PARAMETER_TYPE_UNSPECIFIED:
            violations.append(FieldViolation(f"{where}.type", "type is required"))
        if d.rules.pattern:
            try:
                re.compile(d.rules.pattern)
            except re.error as exc:
                violations.append(FieldViolation(f"{where}.rules.pattern", f"invalid regex: {exc}"))
                continue
        violations.extend(_check_default(d, where))
    if violations:
        raise InvalidArgument("invalid parameter definitions", violations)
    return [json_format.MessageToDict(d, preserving_proto_field_name=True) for d in definitions]


def load_definitions(stored: list[dict[str, Any]]) -> list[catalogue_pb2.ParameterDefinition]:
    """Definitions back from their stored JSON."""
    return [json_format.ParseDict(d, catalogue_pb2.ParameterDefinition()) for d in stored]


def _check_default(d: catalogue_pb2.ParameterDefinition, where: str) -> list[FieldViolation]:
    """A default must itself be a valid value, or every run without the value would fail."""
    if d.type == PT.PARAMETER_TYPE_UNSPECIFIED or not d.HasField("default_value"):
        return []
    try:
        _check_rules(d, _coerce(d, json_format.MessageToDict(d.default_value)))
    except ValueError as exc:
        return [FieldViolation(f"{where}.default_value", str(exc))]
    return []


@dataclass
class Validated:
    """Normalised values, split into plain and secret."""

    values: dict[str, Any]
    secrets: dict[str, Any]


def validate(
    definitions: list[catalogue_pb2.ParameterDefinition], values: dict[str, Any]
) -> Validated:
    """Coerce, fill defaults and check rules; raise InvalidArgument with every violation."""
    by_name = {d.name: d for d in definitions}
    violations = [
        FieldViolation(f"values.{name}", "unknown parameter")
        for name in values
        if name not in by_name
    ]
    out = Validated({}, {})
    for d in definitions:
        field = f"values.{d.name}"
        if d.name in values and values[d.name] is not None:
            raw = values[d.name]
        elif d.HasField("default_value"):
            raw = json_format.MessageToDict(d.default_value)
        else:
            if d.required:
                violations.append(FieldViolation(field, "required"))
            continue
        try:
            value = _coerce(d, raw)
            _check_rules(d, value)
        except ValueError as exc:
            violations.append(FieldViolation(field, str(exc)))
            continue
        (out.secrets if is_secret(d) else out.values)[d.name] = value
    if violations:
        raise InvalidArgument("parameters are invalid", violations)
    return out


def _coerce(d: catalogue_pb2.ParameterDefinition, raw: Any) -> Any:
    if d.type in _STRINGS:
        if isinstance(raw, (dict, list)):
            raise ValueError("expected a string")
        if isinstance(raw, float) and raw.is_integer():
            return str(int(raw))  # JSON/Struct numbers arrive as floats: 7 is "7", not "7.0"
        return str(raw).lower() if isinstance(raw, bool) else str(raw)
    if d.type == PT.PARAMETER_TYPE_INTEGER:
        if isinstance(raw, bool):
            raise ValueError("expected an integer")
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {_shown(d, raw)}") from None
    if d.type == PT.PARAMETER_TYPE_FLOAT:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {_shown(d, raw)}") from None
    if d.type == PT.PARAMETER_TYPE_BOOLEAN:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"expected a boolean, got {_shown(d, raw)}")
    if d.type == PT.PARAMETER_TYPE_JSON and isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg}") from None
    if d.type == PT.PARAMETER_TYPE_MULTISELECT and isinstance(raw, str):
        return [item for item in raw.split(",") if item]
    return raw


def _shown(d: catalogue_pb2.ParameterDefinition, value: Any) -> str:
    """A value as error messages may show it: never a secret's."""
    return "a secret value" if is_secret(d) else repr(value)


def _check_rules(d: catalogue_pb2.ParameterDefinition, value: Any) -> None:
    rules = d.rules
    if isinstance(value, str):
        if rules.HasField("min_length") and len(value) < rules.min_length:
            raise ValueError(f"must be at least {rules.min_length} characters")
        if rules.HasField("max_length") and len(value) > rules.max_length:
            raise ValueError(f"must be at most {rules.max_length} characters")
        if rules.pattern and not re.fullmatch(rules.pattern, value):
            raise ValueError(f"must match {rules.pattern!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if rules.HasField("min_value") and value < rules.min_value:
            raise ValueError(f"must be >= {rules.min_value:g}")
        if rules.HasField("max_value") and value > rules.max_value:
            raise ValueError(f"must be <= {rules.max_value:g}")
    if rules.allowed_values:
        allowed = [json_format.MessageToDict(v) for v in rules.allowed_values]
        items = value if isinstance(value, list) else [value]
        bad = [item for item in items if item not in allowed]
        if bad:
            raise ValueError(f"{_shown(d, bad[0])} is not one of {allowed}")

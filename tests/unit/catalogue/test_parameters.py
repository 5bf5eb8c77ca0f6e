"""Parameter definitions (publish time) and value validation (run time)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2
from shared import parameters
from shared.errors import InvalidArgument

PT = catalogue_pb2.ParameterType
Def = catalogue_pb2.ParameterDefinition
Rules = catalogue_pb2.ParameterRules


def _value(raw: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": raw})
    return holder.fields["v"]


def _fields(err: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in err.value.violations}


DEFINITIONS = [
    Def(name="count", type=PT.PARAMETER_TYPE_INTEGER, required=True, rules=Rules(min_value=1)),
    Def(name="ratio", type=PT.PARAMETER_TYPE_FLOAT, default_value=_value(0.5)),
    Def(name="dry_run", type=PT.PARAMETER_TYPE_BOOLEAN, default_value=_value(True)),
    Def(name="label", type=PT.PARAMETER_TYPE_STRING, rules=Rules(pattern=r"[a-z]+", max_length=8)),
    Def(name="token", type=PT.PARAMETER_TYPE_STRING, secret=True),
    Def(name="password", type=PT.PARAMETER_TYPE_PASSWORD, default_value=_value("hunter2")),
]


def test_validate_coerces_types_and_fills_defaults() -> None:
    """Strings from a CLI are coerced to each type; missing optional values take defaults."""
    result = parameters.validate(
        DEFINITIONS, {"count": "3", "ratio": "0.25", "dry_run": "no", "label": "abc"}
    )
    assert result.values == {"count": 3, "ratio": 0.25, "dry_run": False, "label": "abc"}


def test_validate_accepts_json_numbers_for_integers_and_strings() -> None:
    """Struct numbers arrive as floats: 7.0 is the integer 7 and the string "7"."""
    result = parameters.validate(DEFINITIONS, {"count": 7.0, "label": "x"})
    assert result.values["count"] == 7
    text = parameters.validate([Def(name="s", type=PT.PARAMETER_TYPE_STRING)], {"s": 7.0})
    assert text.values == {"s": "7"}


def test_validate_splits_secret_values_from_plain_values() -> None:
    """Secret and PASSWORD values (given or defaulted) never land in the plain values."""
    result = parameters.validate(DEFINITIONS, {"count": 1, "token": "t0k3n"})
    assert set(result.secrets) == {"token", "password"}
    assert "t0k3n" not in str(result.values) and "hunter2" not in str(result.values)


def test_validate_reports_every_violation_at_once() -> None:
    """Missing, unknown, mistyped and out-of-rule values are all reported together."""
    with pytest.raises(InvalidArgument) as err:
        parameters.validate(
            DEFINITIONS,
            {"ratio": "lots", "dry_run": "maybe", "label": "TOO-LONG-AND-UPPER", "extra": 1},
        )
    assert set(_fields(err)) == {
        "values.count",
        "values.ratio",
        "values.dry_run",
        "values.label",
        "values.extra",
    }
    assert _fields(err)["values.count"] == "required"
    assert _fields(err)["values.extra"] == "unknown parameter"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [(0, "must be >= 1"), (2.5, "expected an integer"), (True, "expected an integer")],
)
def test_validate_rejects_bad_integers(raw: Any, problem: str) -> None:
    """Integers reject fractions, booleans and values below min_value."""
    with pytest.raises(InvalidArgument) as err:
        parameters.validate(DEFINITIONS, {"count": raw})
    assert problem in _fields(err)["values.count"]


def test_validate_never_echoes_a_secret_value_in_errors() -> None:
    """A bad secret value is reported without showing it."""
    secret = Def(
        name="pin",
        type=PT.PARAMETER_TYPE_INTEGER,
        secret=True,
        rules=Rules(allowed_values=[_value(1234)]),
    )
    for bad in ("not-a-pin-9876", 9876):
        with pytest.raises(InvalidArgument) as err:
            parameters.validate([secret], {"pin": bad})
        assert "9876" not in str(err.value.violations)


def test_validate_checks_allowed_values_of_selects() -> None:
    """SELECT values must be allowed; MULTISELECT accepts a comma-separated string."""
    colours = Rules(allowed_values=[_value("red"), _value("blue")])
    defs = [
        Def(name="one", type=PT.PARAMETER_TYPE_SELECT, rules=colours),
        Def(name="many", type=PT.PARAMETER_TYPE_MULTISELECT, rules=colours),
    ]
    ok = parameters.validate(defs, {"one": "red", "many": "red,blue"})
    assert ok.values == {"one": "red", "many": ["red", "blue"]}
    with pytest.raises(InvalidArgument) as err:
        parameters.validate(defs, {"one": "green", "many": ["red", "pink"]})
    assert set(_fields(err)) == {"values.one", "values.many"}


def test_check_definitions_round_trips_through_stored_json() -> None:
    """Valid definitions are stored as JSON and load back unchanged."""
    stored = parameters.check_definitions(DEFINITIONS)
    assert parameters.load_definitions(stored) == DEFINITIONS


def test_check_definitions_reports_every_bad_definition() -> None:
    """Bad names, duplicates, missing types, bad regexes and bad defaults are all reported."""
    bad = [
        Def(name="Bad-Name", type=PT.PARAMETER_TYPE_STRING),
        Def(name="dup", type=PT.PARAMETER_TYPE_STRING),
        Def(name="dup", type=PT.PARAMETER_TYPE_STRING),
        Def(name="untyped"),
        Def(name="regex", type=PT.PARAMETER_TYPE_STRING, rules=Rules(pattern="(")),
        Def(name="n", type=PT.PARAMETER_TYPE_INTEGER, default_value=_value("many")),
    ]
    with pytest.raises(InvalidArgument) as err:
        parameters.check_definitions(bad)
    assert set(_fields(err)) == {
        "parameters[0].name",
        "parameters[2].name",
        "parameters[3].type",
        "parameters[4].rules.pattern",
        "parameters[5].default_value",
    }

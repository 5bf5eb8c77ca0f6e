"""The 14 parameter types, their rules, conditions and the JSON Schema of a parameter set."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from google.protobuf import struct_pb2
from jsonschema import Draft202012Validator

from runbox.catalogue.v1 import catalogue_pb2
from shared import parameters
from shared.errors import InvalidArgument

PT = catalogue_pb2.ParameterType
Def = catalogue_pb2.ParameterDefinition
Rules = catalogue_pb2.ParameterRules
Cond = catalogue_pb2.ParameterCondition
Ui = catalogue_pb2.ParameterUi


def _value(raw: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": raw})
    return holder.fields["v"]


def _violations(err: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in err.value.violations:
        out.setdefault(v.field, []).append(v.description)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


CHOICES = Rules(allowed_values=[_value("a"), _value("b"), _value("c")])
ALL_TYPES = [
    Def(name="s", type=PT.PARAMETER_TYPE_STRING),
    Def(name="i", type=PT.PARAMETER_TYPE_INTEGER),
    Def(name="f", type=PT.PARAMETER_TYPE_FLOAT),
    Def(name="b", type=PT.PARAMETER_TYPE_BOOLEAN),
    Def(name="j", type=PT.PARAMETER_TYPE_JSON),
    Def(name="e", type=PT.PARAMETER_TYPE_EMAIL),
    Def(name="u", type=PT.PARAMETER_TYPE_URL),
    Def(name="p", type=PT.PARAMETER_TYPE_PASSWORD),
    Def(name="t", type=PT.PARAMETER_TYPE_TEXT),
    Def(name="sel", type=PT.PARAMETER_TYPE_SELECT, rules=CHOICES),
    Def(name="multi", type=PT.PARAMETER_TYPE_MULTISELECT, rules=CHOICES),
    Def(name="file", type=PT.PARAMETER_TYPE_FILE),
    Def(name="d", type=PT.PARAMETER_TYPE_DATE),
    Def(name="dt", type=PT.PARAMETER_TYPE_DATETIME),
]


def test_every_type_coerces_cli_strings_to_its_canonical_form() -> None:
    """What a CLI sends (strings) becomes typed JSON; PASSWORD lands with the secrets."""
    raw = {
        "s": "x",
        "i": " 42 ",
        "f": "2.5",
        "b": "yes",
        "j": '{"k": [1, 2]}',
        "e": "ops@example.com",
        "u": "https://example.com/path?q=1",
        "p": "hunter2",
        "t": "line 1\nline 2",
        "sel": "b",
        "multi": "a, c",
        "file": {"name": "cfg.txt", "content_type": "Text/Plain", "content_base64": _b64(b"hi")},
        "d": "2026-11-24",
        "dt": "2026-11-24T10:30:00+01:00",
    }
    result = parameters.compile_definitions(ALL_TYPES).validate(raw)
    assert result.secrets == {"p": "hunter2"}
    assert result.values == {
        "s": "x",
        "i": 42,
        "f": 2.5,
        "b": True,
        "j": {"k": [1, 2]},
        "e": "ops@example.com",
        "u": "https://example.com/path?q=1",
        "t": "line 1\nline 2",
        "sel": "b",
        "multi": ["a", "c"],
        "file": {
            "name": "cfg.txt",
            "content_type": "text/plain",
            "content_base64": _b64(b"hi"),
            "size_bytes": 2,
            "sha256": hashlib.sha256(b"hi").hexdigest(),
        },
        "d": "2026-11-24",
        "dt": "2026-11-24T09:30:00Z",
    }


@pytest.mark.parametrize(
    ("name", "raw", "problem"),
    [
        ("i", "12.5", "expected an integer"),
        ("i", str(2**63), "64-bit"),
        ("f", "NaN", "finite"),
        ("b", "maybe", "expected a boolean"),
        ("j", "{not json", "invalid JSON"),
        ("e", "not-an-email", "not a valid email address"),
        ("e", "a@b@c", "not a valid email address"),
        ("u", "not a url", "not a valid URL"),
        ("u", "mailto:x", "not a valid URL"),
        ("sel", "z", "must be one of"),
        ("multi", ["a", "a"], "must not repeat"),
        ("multi", ["a", "z"], "must be one of"),
        ("multi", {"a": 1}, "expected a list"),
        ("file", "plain string", "expected a file object"),
        ("file", {"name": "../x", "content_type": "a/b", "content_base64": ""}, "plain"),
        ("file", {"name": "x", "content_type": "a/b", "content_base64": "!!"}, "base64"),
        ("d", "2026-02-30", "expected a date"),
        ("dt", "2026-11-24T10:30:00", "UTC offset"),
        ("dt", "yesterday", "ISO 8601"),
        ("s", {"nested": True}, "expected a string"),
    ],
)
def test_bad_values_of_each_type_are_reported_precisely(name: str, raw: Any, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions(ALL_TYPES).validate({name: raw})
    assert list(_violations(err)) == [f"values.{name}"]
    assert problem in _violations(err)[f"values.{name}"][0]


def test_string_rules_and_numeric_bounds() -> None:
    defs = [
        Def(
            name="code",
            type=PT.PARAMETER_TYPE_STRING,
            rules=Rules(pattern=r"[A-Z]{2}\d+", min_length=3, max_length=6),
        ),
        Def(name="n", type=PT.PARAMETER_TYPE_FLOAT, rules=Rules(min_value=0.5, max_value=1.5)),
        Def(
            name="tags",
            type=PT.PARAMETER_TYPE_MULTISELECT,
            rules=Rules(allowed_values=CHOICES.allowed_values, min_length=1, max_length=2),
        ),
    ]
    compiled = parameters.compile_definitions(defs)
    assert compiled.validate({"code": "AB12", "n": 1, "tags": "a"}).values == {
        "code": "AB12",
        "n": 1.0,
        "tags": ["a"],
    }
    with pytest.raises(InvalidArgument) as err:
        compiled.validate({"code": "AB12345x", "n": 2, "tags": ["a", "b", "c"]})
    found = _violations(err)
    # Every rule a value breaks is reported, not only the first.
    assert sorted(found["values.code"]) == [
        "must be at most 6 characters",
        "must match '[A-Z]{2}\\\\d+'",
    ]
    assert found["values.n"] == ["must be <= 1.5"]
    assert found["values.tags"] == ["choose at most 2"]


def test_pattern_must_match_the_whole_value() -> None:
    compiled = parameters.compile_definitions(
        [Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(pattern="a|b"))]
    )
    with pytest.raises(InvalidArgument):
        compiled.validate({"x": "ab"})
    assert compiled.validate({"x": "b"}).values == {"x": "b"}


def test_json_values_are_checked_against_their_json_schema_with_paths() -> None:
    rule = {
        "type": "object",
        "properties": {"hosts": {"type": "array", "items": {"$ref": "#/$defs/host"}}},
        "required": ["hosts"],
        "$defs": {"host": {"type": "string", "format": "hostname"}},
    }
    compiled = parameters.compile_definitions(
        [Def(name="cfg", type=PT.PARAMETER_TYPE_JSON, rules=Rules(json_schema=json.dumps(rule)))]
    )
    assert compiled.validate({"cfg": {"hosts": ["a"]}}).values == {"cfg": {"hosts": ["a"]}}
    with pytest.raises(InvalidArgument) as err:
        compiled.validate({"cfg": {"hosts": ["a", 7]}})
    assert _violations(err) == {"values.cfg": ["['hosts'][1]: expected string"]}


def test_file_rules_limit_size_and_content_type() -> None:
    rules = Rules(max_file_size_bytes=4, content_types=["text/*", "application/json"])
    compiled = parameters.compile_definitions(
        [Def(name="f", type=PT.PARAMETER_TYPE_FILE, rules=rules, required=True)]
    )

    def file(ctype: str, data: bytes) -> dict[str, str]:
        return {"name": "f.bin", "content_type": ctype, "content_base64": _b64(data)}

    assert compiled.validate({"f": file("text/csv", b"a,b")}).values["f"]["size_bytes"] == 3
    with pytest.raises(InvalidArgument) as err:
        compiled.validate({"f": file("image/png", b"12345")})
    assert sorted(_violations(err)["values.f"]) == [
        "content type image/png is not one of ['text/*', 'application/json']",
        "file is larger than 4 bytes",
    ]


def test_secret_values_never_appear_in_errors() -> None:
    defs = [
        Def(
            name="pw", type=PT.PARAMETER_TYPE_PASSWORD, rules=Rules(pattern="[a-z]+", min_length=3)
        ),
        Def(
            name="blob",
            type=PT.PARAMETER_TYPE_JSON,
            secret=True,
            rules=Rules(json_schema='{"type": "object", "additionalProperties": false}'),
        ),
    ]
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions(defs).validate(
            {"pw": "SECRET-VALUE-1", "blob": {"SECRET_KEY_2": 1}}
        )
    text = str(err.value.violations)
    assert "SECRET-VALUE-1" not in text and "SECRET_KEY_2" not in text
    assert set(_violations(err)) == {"values.pw", "values.blob"}


# --- conditions -----------------------------------------------------------------------------


def _conditional() -> list[catalogue_pb2.ParameterDefinition]:
    return [
        Def(
            name="mode",
            type=PT.PARAMETER_TYPE_SELECT,
            default_value=_value("simple"),
            rules=Rules(allowed_values=[_value("simple"), _value("advanced")]),
        ),
        Def(
            name="workers",
            type=PT.PARAMETER_TYPE_INTEGER,
            required=True,
            condition=Cond(parameter="mode", equals=_value("advanced")),
        ),
        Def(
            name="tune",
            type=PT.PARAMETER_TYPE_BOOLEAN,
            default_value=_value(False),
            condition=Cond(parameter="mode", equals=_value("advanced")),
        ),
        Def(
            name="level",
            type=PT.PARAMETER_TYPE_INTEGER,
            default_value=_value(1),
            condition=Cond(parameter="tune", equals=_value(True)),
        ),
    ]


def test_conditional_parameters_apply_only_when_their_condition_holds() -> None:
    compiled = parameters.compile_definitions(_conditional())
    # Condition false: not required, defaults not filled, chain inactive too.
    assert compiled.validate({}).values == {"mode": "simple"}
    # Condition true: required, defaults filled down the chain.
    with pytest.raises(InvalidArgument) as err:
        compiled.validate({"mode": "advanced"})
    assert _violations(err) == {"values.workers": ["required"]}
    assert compiled.validate({"mode": "advanced", "workers": "3", "tune": "true"}).values == {
        "mode": "advanced",
        "workers": 3,
        "tune": True,
        "level": 1,
    }


def test_a_value_for_an_inactive_parameter_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions(_conditional()).validate({"workers": 4})
    assert _violations(err) == {"values.workers": ['applies only when mode is "advanced"']}


def test_an_invalid_controlling_value_does_not_pile_up_dependant_errors() -> None:
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions(_conditional()).validate({"mode": "weird", "workers": 2})
    assert list(_violations(err)) == ["values.mode"]


@pytest.mark.parametrize(
    ("defs", "field", "problem"),
    [
        (
            [
                Def(
                    name="a",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="b", equals=_value("x")),
                ),
                Def(
                    name="b",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="a", equals=_value("y")),
                ),
            ],
            "parameters[0].condition.parameter",
            "conditional cycle: a -> b -> a",
        ),
        (
            [
                Def(
                    name="a",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="a", equals=_value("x")),
                )
            ],
            "parameters[0].condition.parameter",
            "conditional cycle: a -> a",
        ),
        (
            [
                Def(
                    name="a",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="zz", equals=_value("x")),
                )
            ],
            "parameters[0].condition.parameter",
            "no parameter 'zz'",
        ),
        (
            [
                Def(name="pw", type=PT.PARAMETER_TYPE_PASSWORD),
                Def(
                    name="a",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="pw", equals=_value("x")),
                ),
            ],
            "parameters[1].condition.parameter",
            "cannot depend on a secret",
        ),
        (
            [
                Def(name="n", type=PT.PARAMETER_TYPE_INTEGER, rules=Rules(max_value=3)),
                Def(
                    name="a",
                    type=PT.PARAMETER_TYPE_STRING,
                    condition=Cond(parameter="n", equals=_value(9)),
                ),
            ],
            "parameters[1].condition.equals",
            "could never apply",
        ),
    ],
    ids=["two-cycle", "self", "missing", "secret", "impossible"],
)
def test_bad_conditions_are_refused_at_publish(defs: list[Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions(defs)
    assert problem in " ".join(_violations(err)[field])


# --- publish-time checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "field", "problem"),
    [
        (Def(name="x", type=99), "parameters[0].type", "unknown parameter type 99"),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_INTEGER, rules=Rules(pattern="a")),
            "parameters[0].rules.pattern",
            "does not apply to INTEGER",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(min_value=1)),
            "parameters[0].rules.min_value",
            "does not apply to STRING",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(pattern="[a-")),
            "parameters[0].rules.pattern",
            "invalid regex",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(min_length=5, max_length=2)),
            "parameters[0].rules.min_length",
            "greater than max_length",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, rules=Rules(min_length=-1)),
            "parameters[0].rules.min_length",
            "negative",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_JSON, rules=Rules(json_schema="{")),
            "parameters[0].rules.json_schema",
            "not JSON",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_JSON, rules=Rules(json_schema='{"type": "nope"}')),
            "parameters[0].rules.json_schema",
            "invalid JSON Schema",
        ),
        (
            Def(
                name="x",
                type=PT.PARAMETER_TYPE_JSON,
                rules=Rules(json_schema='{"$ref": "https://evil.example/s.json"}'),
            ),
            "parameters[0].rules.json_schema",
            "only local $ref",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_SELECT),
            "parameters[0].rules.allowed_values",
            "needs choices",
        ),
        (
            Def(
                name="x",
                type=PT.PARAMETER_TYPE_SELECT,
                rules=Rules(allowed_values=[_value("a"), _value("a")]),
            ),
            "parameters[0].rules.allowed_values[1]",
            "duplicate",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_FILE, rules=Rules(max_file_size_bytes=0)),
            "parameters[0].rules.max_file_size_bytes",
            "positive",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_FILE, rules=Rules(content_types=["nonsense"])),
            "parameters[0].rules.content_types[0]",
            "media type",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_EMAIL, default_value=_value("nope")),
            "parameters[0].default_value",
            "not a valid email",
        ),
        (
            Def(
                name="x",
                type=PT.PARAMETER_TYPE_INTEGER,
                rules=Rules(max_value=5),
                default_value=_value(10),
            ),
            "parameters[0].default_value",
            "violates its own rules: must be <= 5",
        ),
        (
            Def(name="x", type=PT.PARAMETER_TYPE_STRING, ui=Ui(label="l" * 501)),
            "parameters[0].ui.label",
            "at most 500",
        ),
    ],
)
def test_bad_definitions_are_refused_with_the_field(
    definition: catalogue_pb2.ParameterDefinition, field: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        parameters.compile_definitions([definition])
    assert problem in " ".join(_violations(err).get(field, [])), _violations(err)


# --- JSON Schema --------------------------------------------------------------------------------


def _schema_definitions() -> list[catalogue_pb2.ParameterDefinition]:
    return [
        *_conditional(),
        Def(
            name="api_key",
            type=PT.PARAMETER_TYPE_PASSWORD,
            required=True,
            default_value=_value("do-not-show"),
            ui=Ui(label="API key", group="auth"),
        ),
        Def(
            name="target",
            type=PT.PARAMETER_TYPE_URL,
            required=True,
            description="Where to send",
            ui=Ui(
                label="Target",
                placeholder="https://...",
                order=-1,
                advanced=True,
                help_text="The endpoint",
            ),
        ),
        Def(name="notes", type=PT.PARAMETER_TYPE_TEXT, rules=Rules(max_length=100)),
    ]


def test_schema_is_valid_2020_12_with_ui_hints_and_no_secret_defaults() -> None:
    schema = parameters.compile_definitions(_schema_definitions()).json_schema(title="demo@1.0.0")
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert next(iter(schema["properties"])) == "target"  # ui.order sorts the form
    target = schema["properties"]["target"]
    assert target["format"] == "uri" and target["title"] == "Target"
    assert target["description"] == "The endpoint"
    assert target["x-runbox-ui"] == {
        "type": "URL",
        "order": -1,
        "placeholder": "https://...",
        "advanced": True,
    }
    secret = schema["properties"]["api_key"]
    assert secret["writeOnly"] is True and "default" not in secret
    assert "do-not-show" not in json.dumps(schema)
    assert schema["properties"]["notes"]["x-runbox-ui"]["multiline"] is True
    # A secret with a default is optional; the form learns only that a default exists.
    assert schema["required"] == ["target"]
    assert secret["x-runbox-ui"]["default_hidden"] is True


def test_normalised_values_satisfy_the_published_schema() -> None:
    """The schema a form builds from and the server-side validation agree."""
    compiled = parameters.compile_definitions(_schema_definitions())
    schema = compiled.json_schema()
    validator = Draft202012Validator(schema, format_checker=parameters.FORMATS)
    for raw in (
        {"api_key": "k", "target": "https://x.example"},
        {"api_key": "k", "target": "https://x.example", "mode": "advanced", "workers": 2},
    ):
        result = compiled.validate(raw)
        assert not list(validator.iter_errors({**result.values, **result.secrets}))
    # And the schema also refuses what validation refuses: a hidden parameter, a missing one.
    assert list(validator.iter_errors({"api_key": "k", "target": "https://x", "workers": 2}))
    assert list(validator.iter_errors({"api_key": "k", "target": "https://x", "mode": "advanced"}))

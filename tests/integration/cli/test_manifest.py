"""The manifest models against the proto enums and their error paths (no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from cli import manifest as mf
from cli import publish
from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2


def _names(enum: Any, prefix: str) -> set[str]:
    return {
        n.removeprefix(prefix).lower()
        for n in enum.DESCRIPTOR.values_by_name
        if not n.endswith("UNSPECIFIED")
    }


def test_manifest_type_names_match_every_proto_enum_value() -> None:
    """A type added to the protos must be added to the manifest too (and vice versa), but
    for the failure reasons a retry policy may not name."""
    assert set(get_args(mf.ParameterTypeName)) == _names(
        catalogue_pb2.ParameterType, "PARAMETER_TYPE_"
    )
    assert set(get_args(mf.ExecutionTypeName)) == _names(
        common_pb2.ExecutionType, "EXECUTION_TYPE_"
    )
    # no_sandbox is not retryable (services refuse it in retry_on), so manifests omit it.
    assert set(get_args(mf.FailureReasonName)) == _names(
        common_pb2.FailureReason, "FAILURE_REASON_"
    ) - {"no_sandbox"}
    assert set(mf.CONFIG_KEY.values()) == set(
        catalogue_pb2.ExecutionConfig.DESCRIPTOR.fields_by_name
    )


def _load(tmp_path: Path, text: str) -> mf.Manifest:
    path = tmp_path / "m.runbox.yaml"
    path.write_text(text)
    return mf.load(path)


def _problems(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(mf.ManifestError) as err:
        _load(tmp_path, text)
    return err.value.problems


def test_load_reports_every_problem_with_its_yaml_path(tmp_path: Path) -> None:
    """Unknown keys, wrong types and missing keys are all reported at once."""
    problems = _problems(
        tmp_path,
        "version: 1.0\nlimits: {timeout: soon}\nparameters:\n  - {type: string}\n"
        "  - {name: b, type: integer, rules: {min_value: low, shape: round}}\n",
    )
    where = dict(problems)
    assert where["version"] == "Input should be a valid string"
    assert "not a duration" in where["limits.timeout"]
    assert where["parameters[0].name"] == "required key is missing"
    assert where["parameters[1].rules.min_value"] == "Input should be a valid number"
    assert where["parameters[1].rules.shape"].startswith("unknown key (expected one of: pattern,")


def test_load_checks_config_matches_execution_type(tmp_path: Path) -> None:
    """The config section must be the one of the execution type, and only one."""
    problems = _problems(tmp_path, "execution_type: http\nconfig: {local: {command: ls}}\n")
    assert problems == [("config.local", "execution_type http takes http")]
    problems = _problems(tmp_path, "config: {}\n")
    assert problems[0][0] == "config"


def test_yaml_values_become_json_and_durations_parse(tmp_path: Path) -> None:
    """YAML dates turn into ISO strings; 90s, PT2M and plain seconds are durations."""
    manifest = _load(
        tmp_path,
        "execution_type: http\nconfig: {http: {url: 'http://x', timeout: PT2M}}\n"
        "retry: {initial_backoff: 1.5s, max_backoff: 60}\n"
        "parameters:\n  - {name: d, type: date, default: 2024-02-29}\n"
        '  - {name: j, type: json, rules: {json_schema: \'{"type": "array"}\'}}\n',
    )
    script = publish.script_proto(manifest, "x", "http")
    assert script.config.http.timeout.seconds == 120
    assert script.default_retry.initial_backoff.ToMilliseconds() == 1500
    assert script.default_retry.max_backoff.seconds == 60
    params = publish.parameters_proto(manifest)
    assert params[0].default_value.string_value == "2024-02-29"
    assert params[1].rules.json_schema == '{"type": "array"}'


def test_manifest_field_renames_server_fields(tmp_path: Path) -> None:
    """Server violation fields read as manifest paths naming the parameter."""
    manifest = _load(tmp_path, "parameters: [{name: n, type: integer}]\n")
    assert publish.manifest_field("parameters[0].default_value", manifest) == (
        "parameters[0].default (parameter 'n')"
    )
    assert publish.manifest_field("script.default_limits.cpu", manifest) == "limits.cpu"
    assert publish.manifest_field("script.tags[3]", manifest) == "tags[3]"

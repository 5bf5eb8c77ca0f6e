"""`runbox script push`: a script file plus its YAML manifest, against a real catalogue."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.integration.cli.conftest import Cli

SCRIPT = "import json, sys\nprint('hello')\n"

# Every parameter type, and every field of a definition somewhere.
MANIFEST = """\
name: greet
description: Greets someone.
tags: [demo, greeting]
execution_type: python
version: 1.0.0
changelog: first
config:
  script: {interpreter: python3}
limits: {cpu: 0.5, memory_bytes: 67108864, timeout: 30s, network: none}
retry: {max_attempts: 3, initial_backoff: 1s, multiplier: 2, retry_on: [exit_code, oom_killed]}
parameters:
  - name: who
    type: string
    required: true
    default: world
    description: Who to greet.
    rules: {pattern: "[a-z]+", min_length: 1, max_length: 20}
    ui: {label: Name, placeholder: world, help_text: lower case, group: main, order: 1}
  - name: times
    type: integer
    default: 2
    rules: {min_value: 1, max_value: 10}
  - name: ratio
    type: float
    default: 0.5
  - name: loud
    type: boolean
    default: false
  - name: extra
    type: json
    rules:
      json_schema: {type: object, properties: {a: {type: integer}}}
  - name: contact
    type: email
  - name: site
    type: url
  - name: api_key
    type: password
    secret: true
  - name: notes
    type: text
    ui: {advanced: true}
  - name: colour
    type: select
    default: red
    rules: {allowed_values: [red, green]}
  - name: sizes
    type: multiselect
    rules: {allowed_values: [s, m, l]}
  - name: upload
    type: file
    rules: {max_file_size_bytes: 1024, content_types: [text/csv]}
  - name: day
    type: date
    default: 2024-01-31
  - name: at
    type: datetime
    condition: {parameter: loud, equals: true}
"""


def _write(tmp_path: Path, manifest: str = MANIFEST, script: str = SCRIPT) -> Path:
    path = tmp_path / "greet.py"
    path.write_text(script)
    (tmp_path / "greet.runbox.yaml").write_text(manifest)
    return path


async def test_push_publishes_script_and_every_parameter_type_from_manifest(
    cli: Cli, tmp_path: Path
) -> None:
    """The manifest next to the file names, describes and parameterises the version."""
    path = _write(tmp_path)
    result = await cli.ok("script", "push", str(path))
    digest = hashlib.sha256(SCRIPT.encode()).hexdigest()
    assert f"published greet@1.0.0 sha256 {digest}" in result.stdout

    shown = await cli.json("script", "show", "greet@1.0.0")
    script, version = shown["script"], shown["version"]
    assert script["description"] == "Greets someone."
    assert script["tags"] == ["demo", "greeting"]
    assert script["execution_type"] == "EXECUTION_TYPE_PYTHON"
    assert script["config"] == {"script": {"interpreter": "python3"}}
    assert script["default_limits"]["timeout"] == "30s"
    assert script["default_retry"]["retry_on"] == [
        "FAILURE_REASON_EXIT_CODE",
        "FAILURE_REASON_OOM_KILLED",
    ]
    assert version["changelog"] == "first"
    params = {p["name"]: p for p in version["parameters"]}
    types = [p["type"].removeprefix("PARAMETER_TYPE_").lower() for p in version["parameters"]]
    assert types == [
        "string", "integer", "float", "boolean", "json", "email", "url",
        "password", "text", "select", "multiselect", "file", "date", "datetime",
    ]  # fmt: skip
    assert params["who"]["required"] is True
    assert params["who"]["rules"] == {"pattern": "[a-z]+", "min_length": "1", "max_length": "20"}
    assert params["who"]["ui"]["group"] == "main"
    assert params["times"]["default_value"] == 2
    assert params["day"]["default_value"] == "2024-01-31"
    assert params["colour"]["rules"]["allowed_values"] == ["red", "green"]
    assert '"integer"' in params["extra"]["rules"]["json_schema"]
    assert params["upload"]["rules"]["content_types"] == ["text/csv"]
    assert params["at"]["condition"] == {"parameter": "loud", "equals": True}
    assert params["notes"]["ui"]["advanced"] is True


async def test_push_same_version_again_exits_2_with_already_exists(
    cli: Cli, tmp_path: Path
) -> None:
    """Versions are immutable: pushing one twice is refused with the server's message."""
    path = _write(tmp_path)
    await cli.ok("script", "push", str(path))
    again = await cli("script", "push", str(path))
    assert again.exit_code == 2
    assert "ALREADY_EXISTS" in again.stderr
    assert "version 1.0.0 of 'greet' already exists" in again.stderr


async def test_push_updates_changed_metadata_then_publishes_new_version(
    cli: Cli, tmp_path: Path
) -> None:
    """An existing script gets the manifest's new description and tags via UpdateScript."""
    path = _write(tmp_path)
    await cli.ok("script", "push", str(path))
    unchanged = await cli.ok("script", "push", str(path), "--version", "1.0.1")
    assert "updated" not in unchanged.stdout, "an unchanged manifest must not update the script"
    changed = (
        MANIFEST.replace("Greets someone.", "Greets politely.")
        .replace("[demo, greeting]", "[demo, polite]")
        .replace("timeout: 30s", "timeout: 45s")
    )
    _write(tmp_path, changed)
    result = await cli.ok("script", "push", str(path), "--version", "1.1.0")
    assert "updated greet: description, tags, default_limits" in result.stdout
    assert "published greet@1.1.0" in result.stdout
    script = (await cli.json("script", "show", "greet"))["script"]
    assert script["description"] == "Greets politely."
    assert script["tags"] == ["demo", "polite"]
    assert script["default_limits"]["timeout"] == "45s"
    assert script["default_limits"]["cpu"] == 0.5, "fields of a changed message are all kept"
    assert script["latest_version"] == "1.1.0"


async def test_push_refuses_unknown_manifest_key_with_its_yaml_path(
    cli: Cli, tmp_path: Path
) -> None:
    """A typo in the manifest is exit 2 naming where it is; nothing is registered."""
    bad = MANIFEST.replace("    type: integer\n", "    type: integer\n    colour: blue\n")
    path = _write(tmp_path, bad)
    result = await cli("script", "push", str(path))
    assert result.exit_code == 2
    assert "parameters[1].colour: unknown key" in result.stderr
    assert await cli.json("script", "list") == []


async def test_push_refuses_unknown_parameter_type_with_its_yaml_path(
    cli: Cli, tmp_path: Path
) -> None:
    """A wrong type name is exit 2 on parameters[i].type, listing the valid names."""
    path = _write(tmp_path, MANIFEST.replace("type: float", "type: double"))
    result = await cli("script", "push", str(path))
    assert result.exit_code == 2
    assert "parameters[2].type: 'double' is not one of 'string'" in result.stderr


async def test_push_refuses_wrong_value_types_and_bad_yaml(cli: Cli, tmp_path: Path) -> None:
    """Values of the wrong YAML type and unparsable YAML are exit 2 with a location."""
    path = _write(tmp_path, MANIFEST.replace("required: true", "required: maybe"))
    result = await cli("script", "push", str(path))
    assert result.exit_code == 2
    assert "parameters[0].required: Input should be a valid boolean" in result.stderr

    _write(tmp_path, "name: greet\nparameters: [\n")
    result = await cli("script", "push", str(path), "--version", "1.0.0")
    assert result.exit_code == 2
    assert "not valid YAML" in result.stderr
    assert "line 3" in result.stderr


async def test_push_maps_server_violations_back_to_manifest_paths(cli: Cli, tmp_path: Path) -> None:
    """The catalogue's field violations are shown as manifest paths with the parameter name."""
    bad = MANIFEST.replace('pattern: "[a-z]+"', 'pattern: "([a-z"').replace(
        "    default: 2\n", "    default: 99\n"
    )
    path = _write(tmp_path, bad)
    result = await cli("script", "push", str(path))
    assert result.exit_code == 2, result.stdout
    assert "INVALID_ARGUMENT" in result.stderr
    assert "parameters[0].rules.pattern (parameter 'who'): invalid regex" in result.stderr
    assert "parameters[1].default (parameter 'times'): " in result.stderr
    assert "must be <= 10" in result.stderr


async def test_push_with_explicit_manifest_and_flags_overriding_it(
    cli: Cli, tmp_path: Path
) -> None:
    """--manifest picks a manifest elsewhere; --name and --version win over its keys."""
    script = tmp_path / "job.sh"
    script.write_text("echo hi\n")
    manifest = tmp_path / "elsewhere.yaml"
    manifest.write_text("name: ignored\nversion: 9.9.9\nexecution_type: shell\n")
    args = ["script", "push", str(script), "--manifest", str(manifest)]
    result = await cli.ok(*args, "--name", "job", "--version", "0.1.0")
    assert "published job@0.1.0" in result.stdout
    shown = await cli.json("script", "show", "job")
    assert shown["script"]["execution_type"] == "EXECUTION_TYPE_SHELL"
    assert shown["version"]["version"] == "0.1.0"


async def test_push_without_manifest_uses_flags_and_json_parameters(
    cli: Cli, tmp_path: Path
) -> None:
    """The pre-manifest form (--name, --version, --params JSON) keeps working."""
    script = tmp_path / "hello.py"
    script.write_text("print('hi')\n")
    params = tmp_path / "hello.params.json"
    params.write_text('[{"name": "name", "type": "PARAMETER_TYPE_STRING", "default_value": "x"}]')
    published = await cli.json(
        "script", "push", str(script), "--name", "hello", "-v", "1.0.0", "--params", str(params)
    )
    assert published["script_name"] == "hello"
    assert published["parameters"][0]["default_value"] == "x"


async def test_push_without_version_exits_2(cli: Cli, tmp_path: Path) -> None:
    """No --version and no manifest version is a usage error before any call."""
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    result = await cli("script", "push", str(script))
    assert result.exit_code == 2
    assert "no version" in result.stderr


async def test_push_refuses_changing_execution_type_of_existing_script(
    cli: Cli, tmp_path: Path
) -> None:
    """execution_type is fixed at creation: a manifest that changes it is exit 2."""
    path = _write(tmp_path)
    await cli.ok("script", "push", str(path))
    _write(tmp_path, MANIFEST.replace("execution_type: python", "execution_type: shell"))
    result = await cli("script", "push", str(path), "--version", "2.0.0")
    assert result.exit_code == 2
    assert "greet is registered as python; execution_type is fixed at creation" in result.stderr


async def test_push_to_deleted_script_says_to_restore_it(cli: Cli, tmp_path: Path) -> None:
    """A deleted script keeps its name: push explains how to get it back."""
    path = _write(tmp_path)
    await cli.ok("script", "push", str(path))
    await cli.ok("script", "delete", "greet")
    result = await cli("script", "push", str(path), "--version", "1.0.1")
    assert result.exit_code == 2
    assert "`runbox script restore greet` first" in result.stderr


async def test_push_without_write_permission_exits_2(
    cli: Cli, tmp_path: Path, tokens, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A read-only token is refused by the catalogue: PERMISSION_DENIED, exit 2."""
    monkeypatch.setenv("RUNBOX_TOKEN", tokens.reader)
    result = await cli("script", "push", str(_write(tmp_path)))
    assert result.exit_code == 2
    assert "PERMISSION_DENIED" in result.stderr

"""`runbox template list|use` against a real catalogue (built-in templates off)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.cli.conftest import Cli

TEMPLATE = "#!/bin/sh\necho '{{ greeting }}, {{ who }}'\n"


async def _push_template(cli: Cli, tmp_path: Path) -> None:
    script = tmp_path / "greeter.sh"
    script.write_text(TEMPLATE)
    (tmp_path / "greeter.runbox.yaml").write_text(
        "name: greeter\nexecution_type: shell\ntemplate: true\nversion: 1.0.0\n"
        "description: Says something to someone.\ntags: [starter]\n"
    )
    await cli.ok("script", "push", str(script))


async def test_push_registers_template_flag_from_manifest(cli: Cli, tmp_path: Path) -> None:
    """`template: true` in the manifest creates a template, found by list --templates."""
    await _push_template(cli, tmp_path)
    listed = await cli.json("script", "list", "--templates")
    assert [(s["name"], s.get("is_template")) for s in listed] == [("greeter", True)]


async def test_template_list_shows_templates_only(cli: Cli, tmp_path: Path) -> None:
    """Plain scripts are not listed; --json parses and the table names the template."""
    await _push_template(cli, tmp_path)
    plain = tmp_path / "plain.py"
    plain.write_text("print(1)\n")
    await cli.ok("script", "push", str(plain), "--version", "1.0.0")
    templates = await cli.json("template", "list")
    assert [t["name"] for t in templates] == ["greeter"]
    assert sorted(templates[0]["placeholders"]) == ["greeting", "who"]
    assert "greeter" in (await cli.ok("template", "list")).stdout


async def test_template_use_creates_script_with_placeholders_and_overrides(
    cli: Cli, tmp_path: Path
) -> None:
    """The new script exists, is no template, and carries the overridden description."""
    await _push_template(cli, tmp_path)
    result = await cli.ok(
        "template", "use", "greeter", "hello-team",
        "--set", "greeting=Hello", "--set", "who=team=all",
        "--description", "Greets the team.",
    )  # fmt: skip
    assert "created hello-team" in result.stdout
    shown = await cli.json("script", "show", "hello-team")
    assert shown["script"]["description"] == "Greets the team."
    assert shown["script"]["tags"] == ["starter"]  # not overridden: the template's
    assert not shown["script"].get("is_template", False)
    assert shown["version"]["version"] == "1.0.0"
    assert "greeter@1.0.0" in shown["version"]["changelog"]


async def test_template_use_unknown_template_exits_2_with_not_found(cli: Cli) -> None:
    """Instantiating a template that does not exist is NOT_FOUND, exit 2."""
    result = await cli("template", "use", "nothing-here", "new-one")
    assert result.exit_code == 2
    assert "NOT_FOUND" in result.stderr


async def test_template_use_refuses_malformed_set_before_calling(cli: Cli) -> None:
    """--set without '=' is a usage error (exit 2) and no call is made."""
    result = await cli("template", "use", "greeter", "x", "--set", "greeting")
    assert result.exit_code == 2
    assert "--set 'greeting' must be key=value" in result.stderr


async def test_template_use_missing_placeholder_exits_2_naming_it(cli: Cli, tmp_path: Path) -> None:
    """A placeholder left without a value is the server's refusal, shown with its field."""
    await _push_template(cli, tmp_path)
    result = await cli("template", "use", "greeter", "half-done", "--set", "greeting=Hi")
    assert result.exit_code == 2
    assert "who" in result.stderr
    assert (await cli("script", "show", "half-done")).exit_code == 2

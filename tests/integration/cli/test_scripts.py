"""`runbox script list|show|versions|yank|deprecate|delete|restore` against a real catalogue."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.cli.conftest import Cli


async def _push(
    cli: Cli,
    tmp_path: Path,
    name: str,
    version: str = "1.0.0",
    *,
    tags: tuple[str, ...] = (),
    kind: str = "python",
    description: str = "",
) -> None:
    """Push a one-line script with a manifest carrying the metadata."""
    script = tmp_path / f"{name}.{'sh' if kind == 'shell' else 'py'}"
    script.write_text(f"echo {name} {version}\n")
    manifest = {
        "name": name,
        "execution_type": kind,
        "tags": list(tags),
        "description": description,
    }
    (tmp_path / f"{name}.runbox.yaml").write_text(json.dumps(manifest))  # JSON is YAML
    await cli.ok("script", "push", str(script), "--version", version)


async def _names(cli: Cli, *args: str) -> list[str]:
    return [s["name"] for s in await cli.json("script", "list", *args)]


async def test_list_filters_by_prefix_tags_type_and_text(cli: Cli, tmp_path: Path) -> None:
    """Each filter flag reaches ListScripts; --any/--all switch the tag semantics."""
    await _push(cli, tmp_path, "etl-load", tags=("etl", "nightly"), description="Loads rows")
    await _push(cli, tmp_path, "etl-clean", tags=("etl",), kind="shell")
    await _push(cli, tmp_path, "report", tags=("nightly",), description="Mails the report")

    assert await _names(cli) == ["etl-clean", "etl-load", "report"]
    assert await _names(cli, "--prefix", "etl-") == ["etl-clean", "etl-load"]
    assert await _names(cli, "--tag", "etl", "--tag", "nightly") == ["etl-load"]
    assert await _names(cli, "--tag", "etl", "--tag", "nightly", "--any") == [
        "etl-clean",
        "etl-load",
        "report",
    ]
    assert await _names(cli, "--type", "shell") == ["etl-clean"]
    assert await _names(cli, "--text", "report") == ["report"]
    assert await _names(cli, "--owner", "nobody-else") == []
    assert await _names(cli, "--templates") == []
    assert (await _names(cli, "--order", "created"))[0] == "report"


async def test_list_pages_through_tokens_up_to_the_limit(cli: Cli, tmp_path: Path) -> None:
    """With one script per page the CLI follows next_page_token; --limit stops early."""
    for name in ("a1", "a2", "a3", "a4"):
        await _push(cli, tmp_path, name)
    assert await _names(cli, "--page-size", "1", "--limit", "0") == ["a1", "a2", "a3", "a4"]
    assert await _names(cli, "--page-size", "1", "--limit", "3") == ["a1", "a2", "a3"]
    table = (await cli.ok("script", "list")).stdout
    assert "NAME" in table
    assert "a4" in table


async def test_list_refuses_unknown_type_as_usage_error(cli: Cli) -> None:
    """--type takes the lower-case execution type names only."""
    result = await cli("script", "list", "--type", "cobol")
    assert result.exit_code == 2
    assert "cobol" in result.stderr


async def test_show_resolves_latest_range_and_exact_versions(cli: Cli, tmp_path: Path) -> None:
    """NAME shows the latest version, NAME@RANGE resolves, NAME@X.Y.Z is exact."""
    for version in ("1.0.0", "1.2.0", "2.0.0"):
        await _push(cli, tmp_path, "tool", version)
    assert (await cli.json("script", "show", "tool"))["version"]["version"] == "2.0.0"
    assert (await cli.json("script", "show", "tool@^1"))["version"]["version"] == "1.2.0"
    assert (await cli.json("script", "show", "tool@1.0.0"))["version"]["version"] == "1.0.0"
    text = (await cli.ok("script", "show", "tool@1.0.0")).stdout
    assert "tool@1.0.0" in text
    assert "ACTIVE" in text


async def test_show_unknown_script_exits_2_with_not_found(cli: Cli) -> None:
    """A missing script is the server's NOT_FOUND, exit 2."""
    result = await cli("script", "show", "ghost")
    assert result.exit_code == 2
    assert "NOT_FOUND" in result.stderr


async def test_yank_and_deprecate_change_state_shown_by_versions(cli: Cli, tmp_path: Path) -> None:
    """Yanked versions stay listed with their state and are no longer the latest."""
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        await _push(cli, tmp_path, "svc", version)
    yanked = await cli.ok("script", "yank", "svc@1.2.0", "--reason", "broken")
    assert "svc@1.2.0 is YANKED" in yanked.stdout
    deprecated = await cli.json("script", "deprecate", "svc@1.0.0", "--reason", "old")
    assert deprecated["state"] == "VERSION_STATE_DEPRECATED"

    versions = await cli.json("script", "versions", "svc")
    assert [(v["version"], v["state"]) for v in versions] == [
        ("1.2.0", "VERSION_STATE_YANKED"),
        ("1.1.0", "VERSION_STATE_ACTIVE"),
        ("1.0.0", "VERSION_STATE_DEPRECATED"),
    ]
    assert (await cli.json("script", "show", "svc"))["script"]["latest_version"] == "1.1.0"
    table = (await cli.ok("script", "versions", "svc")).stdout
    assert "YANKED" in table


async def test_yank_needs_an_exact_version_and_is_final(cli: Cli, tmp_path: Path) -> None:
    """NAME without @VERSION is a usage error; deprecating a yanked version is refused."""
    await _push(cli, tmp_path, "svc")
    missing = await cli("script", "yank", "svc", "--reason", "x")
    assert missing.exit_code == 2
    assert "expected NAME@VERSION" in missing.stderr
    await cli.ok("script", "yank", "svc@1.0.0", "--reason", "bad")
    again = await cli("script", "deprecate", "svc@1.0.0", "--reason", "x")
    assert again.exit_code == 2
    assert "FAILED_PRECONDITION" in again.stderr


async def test_delete_hides_script_and_restore_brings_it_back(cli: Cli, tmp_path: Path) -> None:
    """A deleted script leaves listings and lookups until it is restored."""
    await _push(cli, tmp_path, "old")
    deleted = await cli.ok("script", "delete", "old")
    assert "deleted old" in deleted.stdout
    assert await _names(cli) == []
    assert (await cli("script", "show", "old")).exit_code == 2
    restored = await cli.json("script", "restore", "old")
    assert restored["name"] == "old"
    assert "delete_time" not in restored
    assert await _names(cli) == ["old"]
    assert (await cli.json("script", "show", "old"))["version"]["version"] == "1.0.0"


async def test_missing_config_exits_2_with_a_hint(cli: Cli, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without a token the CLI explains what to set instead of calling anything."""
    monkeypatch.delenv("RUNBOX_TOKEN")
    result = await cli("script", "list")
    assert result.exit_code == 2
    assert "RUNBOX_TOKEN" in result.stderr

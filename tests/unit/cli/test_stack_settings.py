"""`runbox up`'s per-service settings: what passes through from the environment, what a
settings file may say, and the errors a bad file gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import stack_settings
from cli.stack import Ports, service_env
from cli.stack_settings import SettingsError

PORTS = Ports(
    grpc={"catalogue": 1, "executor": 2, "scheduler": 3, "alerting": 4},
    metrics={"catalogue": 11, "executor": 12, "scheduler": 13, "alerting": 14},
)


def _load(tmp_path: Path, text: str) -> dict[str, dict[str, str]]:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return stack_settings.load(path)


def test_environment_passes_service_variables_but_not_cli_or_stack_ones() -> None:
    """Service RUNBOX_* variables pass; the CLI's vanish; the stack's are dropped by name."""
    kept, dropped = stack_settings.passed_through(
        {
            "RUNBOX_SANDBOX__EGRESS_NETWORK": "host",
            "RUNBOX_CHANNELS__ALLOW_HTTP": "true",
            "RUNBOX_TOKEN": "t",
            "RUNBOX_CONFIG": "c",
            "RUNBOX_SCHEDULER_ADDRESS": "x:1",
            "RUNBOX_GRPC__PORT": "9",
            "RUNBOX_GRPC": "{}",
            "RUNBOX_DATABASE__URL": "sqlite://",
            "PATH": "/bin",
        }
    )
    assert kept == {"RUNBOX_SANDBOX__EGRESS_NETWORK": "host", "RUNBOX_CHANNELS__ALLOW_HTTP": "true"}
    assert dropped == ["RUNBOX_DATABASE__URL", "RUNBOX_GRPC", "RUNBOX_GRPC__PORT"]


def test_service_env_layers_environment_file_then_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file beats the environment; the stack's wiring beats both."""
    monkeypatch.setenv("RUNBOX_SANDBOX__TIMEOUT_S", "5")
    monkeypatch.setenv("RUNBOX_SANDBOX__CPUS", "2")
    monkeypatch.setenv("RUNBOX_GRPC__PORT", "9")
    env = service_env(
        "executor", tmp_path, PORTS, "nats://x", "tok", {"RUNBOX_SANDBOX__TIMEOUT_S": "60"}
    )
    assert env["RUNBOX_SANDBOX__TIMEOUT_S"] == "60"
    assert env["RUNBOX_SANDBOX__CPUS"] == "2"
    assert env["RUNBOX_GRPC__PORT"] == "2"
    assert env["RUNBOX_ANNOUNCE_READY"] == "true"


def test_settings_file_merges_common_into_each_service_that_has_the_key(tmp_path: Path) -> None:
    """common goes where it applies; a service's section wins; values become env text."""
    merged = _load(
        tmp_path,
        "common: {LOG__LEVEL: DEBUG}\n"
        "executor: {SANDBOX__EGRESS_NETWORK: host, SANDBOX__ALLOW_UNSANDBOXED: true}\n"
        "alerting: {CHANNELS__WEBHOOK_ALLOW: [127.0.0.1], LOG__LEVEL: INFO}\n"
        "catalogue: {DATABASE__URL: 'sqlite+aiosqlite:///tmp/c.db'}\n",
    )
    assert merged["executor"] == {
        "RUNBOX_LOG__LEVEL": "DEBUG",
        "RUNBOX_SANDBOX__EGRESS_NETWORK": "host",
        "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED": "true",
    }
    assert merged["alerting"]["RUNBOX_LOG__LEVEL"] == "INFO"
    assert json.loads(merged["alerting"]["RUNBOX_CHANNELS__WEBHOOK_ALLOW"]) == ["127.0.0.1"]
    assert merged["catalogue"]["RUNBOX_DATABASE__URL"] == "sqlite+aiosqlite:///tmp/c.db"
    assert merged["scheduler"] == {"RUNBOX_LOG__LEVEL": "DEBUG"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("executer: {X: 1}\n", "unknown section 'executer'"),
        ("executor: {SANDBOX__EGRESS_NETWRK: host}\n", "EGRESS_NETWRK is not a setting of sandbox"),
        ("alerting: {SANDBOX__EGRESS_NETWORK: host}\n", "SANDBOX is not a setting of the service"),
        ("common: {NO_SUCH: 1}\n", "not a setting of any service"),
        ("executor: {GRPC__PORT: 5}\n", "set by runbox up itself"),
        ("common: {DATABASE__URL: x}\n", "one per service"),
        ("executor: {RUNBOX_SANDBOX__CPUS: 2}\n", "without RUNBOX_"),
        ("executor: {SANDBOX__POOL__MIN_IDLE: 1000}\n", "SANDBOX.POOL.MIN_IDLE"),
        ("executor: [1, 2]\n", "expected a mapping of SETTING: value"),
        ("- a\n", "expected a mapping of sections"),
        ("executor: {SANDBOX__CPUS: }\n", "no value"),
        ("executor: {a: [}\n", "not YAML"),
    ],
)
def test_bad_settings_file_is_refused_with_where_and_why(
    tmp_path: Path, text: str, message: str
) -> None:
    """Unknown sections and keys, stack-owned keys and bad values name the file and key."""
    with pytest.raises(SettingsError) as err:
        _load(tmp_path, text)
    assert message in str(err.value)
    assert str(tmp_path / "settings.yaml") in str(err.value)


def test_missing_settings_file_is_refused(tmp_path: Path) -> None:
    """A file that is not there is a clear error, not a traceback."""
    with pytest.raises(SettingsError, match="No such file"):
        stack_settings.load(tmp_path / "absent.yaml")


def test_up_with_bad_settings_exits_2_before_starting(tmp_path: Path) -> None:
    """`runbox up --settings BAD` says what is wrong and exits 2 without starting anything."""
    from typer.testing import CliRunner

    from cli.main import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("executor: {SANDBOX__EGRESS_NETWRK: host}\n")
    result = CliRunner().invoke(app, ["up", "--var", str(tmp_path / "var"), "--settings", str(bad)])
    assert result.exit_code == 2
    assert "EGRESS_NETWRK is not a setting of sandbox" in result.output
    assert not (tmp_path / "var").exists()

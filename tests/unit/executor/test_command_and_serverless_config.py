"""The local and serverless types' pure pieces: allow-lists, argv rendering, payloads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runbox.common.v1 import common_pb2
from services.executor.config import ExecutorSettings, ServerlessSettings
from services.executor.runners.base import Job, Limits
from services.executor.runners.command_runner import allowed_commands
from services.executor.runners.command_runner import prepare as prepare_command
from services.executor.runners.serverless_runner import function_allowed
from services.executor.runners.serverless_runner import prepare as prepare_invocation
from shared.errors import FailedPrecondition, InvalidArgument

COMMANDS = {"echo": "/bin/echo", "missing": "/nonexistent/tool"}


def job(config: dict[str, Any], params: Any = None, secrets: Any = None) -> Job:
    return Job(
        run_id="r1",
        attempt=1,
        script_name="s",
        script_version="1.0.0",
        sha256="",
        execution_type=common_pb2.EXECUTION_TYPE_LOCAL,
        content=b"",
        parameters=params or {},
        secrets=secrets or {},
        limits=Limits(cpus=1, memory_bytes=1, pids=1, work_bytes=1, timeout_s=5, output_bytes=1),
        config=config,
    )


def test_command_args_render_parameters() -> None:
    """Arguments are literal strings with {{ parameter }} placeholders."""
    command = prepare_command(
        job(
            {"local": {"command": "echo", "args": ["--to={{ who }}", "{{ n }}", "x"]}},
            {"who": "ops", "n": 2},
        ),
        COMMANDS,
    )
    assert command.argv == ["/bin/echo", "--to=ops", "2", "x"]


def test_command_arg_naming_a_secret_is_refused() -> None:
    """A template that reads a secret never renders: secrets do not go in argv."""
    with pytest.raises(InvalidArgument) as exc:
        prepare_command(
            job(
                {"local": {"command": "echo", "args": ["ok", "--pw={{ pw }}"]}},
                {},
                {"pw": "hunter22"},
            ),
            COMMANDS,
        )
    assert exc.value.violations[0].field == "config.local.args[1]"
    assert "hunter22" not in str(exc.value)


def test_command_arg_carrying_a_secret_value_is_refused() -> None:
    """A parameter whose value equals a secret cannot smuggle it into argv either."""
    with pytest.raises(InvalidArgument):
        prepare_command(
            job(
                {"local": {"command": "echo", "args": ["{{ p }}"]}},
                {"p": "x-hunter22-x"},
                {"pw": "hunter22"},
            ),
            COMMANDS,
        )


@pytest.mark.parametrize(
    ("command", "error"),
    [("rm", FailedPrecondition), ("missing", FailedPrecondition), ("", InvalidArgument)],
)
def test_command_must_be_allowed_and_executable(command: str, error: type[Exception]) -> None:
    """Unknown, unexecutable or missing commands are refused on config.local.command."""
    with pytest.raises(error) as exc:
        prepare_command(job({"local": {"command": command}}), COMMANDS)
    assert exc.value.violations[0].field == "config.local.command"  # type: ignore[attr-defined]


def test_allowed_commands_merge_the_older_sandbox_list() -> None:
    """sandbox.local_allowed_commands entries (path or name=path) still count."""
    settings = ExecutorSettings(
        sandbox={"local_allowed_commands": ["/usr/bin/env", "list=/bin/ls"]},
        local={"commands": {"echo": "/bin/echo"}},
    )
    assert allowed_commands(settings) == {
        "env": "/usr/bin/env",
        "list": "/bin/ls",
        "echo": "/bin/echo",
    }


def test_allowed_commands_need_absolute_paths() -> None:
    """A relative path would depend on PATH: refused at startup."""
    with pytest.raises(ValueError):
        allowed_commands(ExecutorSettings(local={"commands": {"echo": "echo"}}))


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("reports-daily", True),
        ("reports-", True),
        ("billing", True),
        ("billing-v2", False),
        ("report", False),
        ("other", False),
    ],
)
def test_function_allow_list_matches_names_and_prefixes(name: str, allowed: bool) -> None:
    """Exact names, or prefixes written with a trailing '*'."""
    assert function_allowed(name, ["reports-*", "billing"]) is allowed


def test_invocation_payload_is_the_parameters_without_secrets_by_default() -> None:
    """Secrets are not sent to a function unless the executor says so."""
    config = {"serverless": {"function_name": "reports-daily"}}
    settings = ServerlessSettings(allowed_functions=["reports-*"])
    call = prepare_invocation(job(config, {"day": "mon"}, {"pw": "hunter22"}), settings)
    assert json.loads(call.payload) == {"day": "mon"}
    assert call.invocation_type == "RequestResponse" and call.region == "us-east-1"
    settings = ServerlessSettings(allowed_functions=["reports-*"], send_secrets=True)
    call = prepare_invocation(job(config, {"day": "mon"}, {"pw": "hunter22"}), settings)
    assert json.loads(call.payload) == {"day": "mon", "secrets": {"pw": "hunter22"}}


@pytest.mark.parametrize(
    ("config", "error", "field"),
    [
        (
            {"serverless": {"function_name": "other"}},
            FailedPrecondition,
            "config.serverless.function_name",
        ),
        ({"serverless": {}}, InvalidArgument, "config.serverless.function_name"),
        (
            {"serverless": {"function_name": "f", "invocation_type": "DryRun"}},
            InvalidArgument,
            "config.serverless.invocation_type",
        ),
        ({"http": {"url": "x"}}, InvalidArgument, "config.serverless"),
    ],
)
def test_invocation_refuses_bad_config_with_the_field(
    config: dict[str, Any], error: type[Exception], field: str
) -> None:
    """Each problem names the config field at fault."""
    with pytest.raises(error) as exc:
        prepare_invocation(job(config), ServerlessSettings(allowed_functions=["f"]))
    assert exc.value.violations[0].field == field  # type: ignore[attr-defined]

"""The container execution type's config: the image allow-list, argv and env rendering,
and the hardened `docker create` options it produces."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from runbox.common.v1 import common_pb2
from services.executor.config import ContainerSettings, ExecutorSettings
from services.executor.runners.base import Job, Limits
from services.executor.runners.container_runner import _oom
from services.executor.runners.container_spec import (
    RUN_LABEL,
    ContainerSpec,
    allowed_entry,
    create_options,
    prepare,
)
from shared.errors import FailedPrecondition, InvalidArgument

SECRET = "s3cr3t-value"


def job(container: dict[str, Any], **kwargs: Any) -> Job:
    values: dict[str, Any] = dict(
        run_id="run-1",
        attempt=1,
        script_name="t",
        script_version="1.0.0",
        sha256="",
        execution_type=common_pb2.EXECUTION_TYPE_CONTAINER,
        content=b"",
        parameters={"who": "ops", "n": 3},
        secrets={"pw": SECRET},
        limits=Limits(
            cpus=0.5,
            memory_bytes=64 << 20,
            pids=32,
            work_bytes=16 << 20,
            timeout_s=10,
            output_bytes=1 << 20,
        ),
        config={"container": container},
    )
    values.update(kwargs)
    return Job(**values)


def settings(*allowed: Any, user: str = "10001:10001") -> ContainerSettings:
    return ContainerSettings(allowed_images=list(allowed), user=user)


def violation(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.violations[0].field)


@pytest.mark.parametrize(
    ("image", "entry"),
    [
        ("app:1.2", "app:1.2"),
        ("app", "app:latest"),
        ("app:latest", "app"),
        ("registry:5000/team/app:3", "registry:5000/team/app:*"),
        ("team/app@sha256:" + "a" * 64, "team/app:*"),
        ("team/app@sha256:" + "a" * 64, "team/app@sha256:" + "a" * 64),
    ],
)
def test_allowed_entry_matches_exact_refs_and_repo_patterns(image: str, entry: str) -> None:
    """Exact references (with Docker's implicit :latest) and repo:* for any tag or digest."""
    assert allowed_entry(image, settings(entry).allowed_images) is not None


@pytest.mark.parametrize(
    ("image", "entry"),
    [
        ("app:1.3", "app:1.2"),
        ("app:1.2", "app"),
        ("team/app-evil:1", "team/app:*"),
        ("team/app/sub:1", "team/app:*"),
        ("other/app:1", "team/app:*"),
        ("docker.io/team/app:1", "team/app:*"),
    ],
)
def test_allowed_entry_refuses_anything_else(image: str, entry: str) -> None:
    """No prefix matching, no registry guessing: a near miss is not allowed."""
    assert allowed_entry(image, settings(entry).allowed_images) is None


@pytest.mark.parametrize("pattern", ["team/*", "*", "team/app:1*", "app:*:*", ""])
def test_settings_refuse_wildcards_other_than_repo_star(pattern: str) -> None:
    """Only whole-repository patterns exist; anything else is an error at start-up."""
    with pytest.raises(ValidationError):
        settings(pattern)


@pytest.mark.parametrize("user", ["root", "1000:", ":1000", "1000:1000:1", ""])
def test_settings_refuse_non_numeric_users(user: str) -> None:
    """Users are numeric uid[:gid], for the default and per allow-list entry."""
    with pytest.raises(ValidationError):
        settings("app:*", user=user)
    with pytest.raises(ValidationError):
        settings({"image": "app:*", "user": user or "x"})


def test_settings_read_allow_list_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNBOX_CONTAINER__ALLOWED_IMAGES takes JSON strings and objects; pull is never."""
    monkeypatch.setenv(
        "RUNBOX_CONTAINER__ALLOWED_IMAGES", '["app:*", {"image": "ops:1", "user": "0:0"}]'
    )
    loaded = ExecutorSettings().container
    assert [(e.image, e.user) for e in loaded.allowed_images] == [("app:*", ""), ("ops:1", "0:0")]
    assert loaded.pull == "never"
    assert loaded.user == "10001:10001"


def test_empty_allow_list_refuses_every_image() -> None:
    """The default allow-list is empty: FAILED_PRECONDITION on config.container.image."""
    with pytest.raises(FailedPrecondition) as exc:
        prepare(job({"image": "app:1"}), ContainerSettings())
    assert violation(exc) == "config.container.image"


def test_missing_image_or_other_config_is_invalid() -> None:
    """No image, or a config of another type, is INVALID_ARGUMENT on the field."""
    with pytest.raises(InvalidArgument) as exc:
        prepare(job({"command": ["true"]}), settings("app:*"))
    assert violation(exc) == "config.container.image"
    with pytest.raises(InvalidArgument) as exc:
        prepare(job({}, config={"local": {"command": "x"}}), settings("app:*"))
    assert violation(exc) == "config.container"


def test_command_replaces_entrypoint_and_args_replace_cmd() -> None:
    """Kubernetes semantics: command alone drops the image's CMD; args alone keep its
    ENTRYPOINT; neither keeps both."""
    s = settings("app:*")
    both = prepare(job({"image": "app:1", "command": ["sh", "-c"], "args": ["echo"]}), s)
    assert (both.entrypoint, both.command) == (["sh", "-c"], ["echo"])
    command = prepare(job({"image": "app:1", "command": ["run"]}), s)
    assert (command.entrypoint, command.command) == (["run"], [])
    args = prepare(job({"image": "app:1", "args": ["--flag"]}), s)
    assert (args.entrypoint, args.command) == (None, ["--flag"])
    neither = prepare(job({"image": "app:1"}), s)
    assert (neither.entrypoint, neither.command) == (None, None)


def test_args_render_parameters() -> None:
    """Arguments are templates over the parameters (numbers render as JSON)."""
    spec = prepare(
        job({"image": "app:1", "args": ["--who={{ who }}", "{{ n }}"]}), settings("app:*")
    )
    assert spec.command == ["--who=ops", "3"]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"command": ["echo", "{{ pw }}"]}, "config.container.command[1]"),
        ({"args": ["--pw={{ pw | urlquote }}"]}, "config.container.args[0]"),
        ({"args": [SECRET]}, "config.container.args[0]"),
        ({"args": ["{{ missing }}"]}, "config.container.args[0]"),
    ],
)
def test_argv_never_carries_a_secret_or_an_unknown_name(config: dict[str, Any], field: str) -> None:
    """A template naming a secret, a literal secret value, or an unknown name is refused."""
    with pytest.raises(InvalidArgument) as exc:
        prepare(job({"image": "app:1", **config}), settings("app:*"))
    assert violation(exc) == field
    assert SECRET not in str(exc.value)


def test_env_carries_params_and_the_secrets_the_config_names() -> None:
    """Parameters as RUNBOX_PARAM_* and RUNBOX_PARAMS_JSON; secrets only where env names them."""
    config = {"image": "app:1", "env": {"TOKEN": "Bearer {{ pw }}", "WHO": "{{ who }}"}}
    env = prepare(job(config), settings("app:*")).env
    assert env["TOKEN"] == f"Bearer {SECRET}"
    assert env["WHO"] == "ops"
    assert env["RUNBOX_PARAM_WHO"] == "ops"
    assert env["RUNBOX_PARAM_N"] == "3"
    assert env["RUNBOX_PARAMS_JSON"] == '{"who": "ops", "n": 3}'
    assert "RUNBOX_PARAM_PW" not in env
    assert [k for k, v in env.items() if SECRET in v] == ["TOKEN"]


@pytest.mark.parametrize("name", ["RUNBOX_PARAM_WHO", "runbox_run_id", "A=B"])
def test_env_refuses_reserved_or_malformed_names(name: str) -> None:
    """The executor's own inputs cannot be overridden, and names cannot hold '='."""
    with pytest.raises(InvalidArgument) as exc:
        prepare(job({"image": "app:1", "env": {name: "x"}}), settings("app:*"))
    assert violation(exc) == f"config.container.env.{name}"


def test_allow_list_entry_user_overrides_the_default() -> None:
    """Only the operator picks a container's user: per allow-list entry, else the default."""
    s = settings({"image": "ops:*", "user": "0:0"}, "app:*", user="2000:3000")
    assert prepare(job({"image": "ops:1"}), s).user == "0:0"
    assert prepare(job({"image": "app:1"}), s).user == "2000:3000"


def test_create_options_are_hardened_and_labelled() -> None:
    """The sandbox's hardened options, the run's limits and label, init as PID 1, and
    nothing of the host inside."""
    spec = ContainerSpec("app:1", ["sh"], ["-c", "true"], {"A": "b"}, "2000:3000")
    one = job({"image": "app:1"})
    options = create_options(spec, one, network="none", runtime="", tmp_bytes=8 << 20)
    assert options["image"] == "app:1"
    assert (options["entrypoint"], options["command"]) == (["sh"], ["-c", "true"])
    assert options["environment"] == {"A": "b"}
    assert options["network_mode"] == "none"
    assert options["read_only"] is True
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["user"] == "2000:3000"
    assert options["init"] is True
    assert options["stdin_open"] is False
    assert options["mem_limit"] == options["memswap_limit"] == 64 << 20
    assert options["pids_limit"] == 32
    assert options["nano_cpus"] == 500_000_000
    assert "uid=2000,gid=3000" in options["tmpfs"]["/work"]
    assert "size=16777216" in options["tmpfs"]["/work"]
    assert "noexec" in options["tmpfs"]["/tmp"]
    assert options["labels"][RUN_LABEL] == "run-1"
    assert "runtime" not in options
    for host in ("volumes", "mounts", "privileged", "cap_add", "devices"):
        assert host not in options


def test_create_options_keep_image_defaults_when_not_given() -> None:
    """No command and no args: the image's ENTRYPOINT and CMD are used as they are."""
    spec = ContainerSpec("app:1", None, None, {}, "10001")
    options = create_options(spec, job({}), network="none", runtime="runsc", tmp_bytes=1 << 20)
    assert "entrypoint" not in options
    assert "command" not in options
    assert options["runtime"] == "runsc"
    assert "uid=10001,gid=10001" in options["tmpfs"]["/work"]


@pytest.mark.parametrize(
    ("flagged", "oom_kills", "status", "signalled", "expected"),
    [
        (True, 0, 137, False, True),  # the engine saw it
        (False, 1, 0, False, True),  # the kernel killed a child; the command went on
        (False, 0, 137, False, True),  # a SIGKILL nobody at the executor sent
        (False, 0, 137, True, False),  # our own SIGKILL (timeout, cancel)
        (False, 0, 1, False, False),
        (False, 0, 143, False, False),
    ],
)
def test_oom_is_the_engine_flag_the_kernel_counter_or_an_unexplained_sigkill(
    flagged: bool, oom_kills: int, status: int, signalled: bool, expected: bool
) -> None:
    """The engine's OOMKilled flag misses some OOM kills; the other evidence fills in."""
    assert _oom(flagged, oom_kills, status, signalled) is expected

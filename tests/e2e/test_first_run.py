"""A new user's first run: `make run` (the README's first command) reaches the demo's
SUCCEEDED and keeps serving, every command its hint prints works as printed, and Ctrl-C
stops it cleanly."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import docker_available, require, sandbox_image_available
from tests.e2e import user_shell
from tests.e2e.user_shell import REPO


@pytest.mark.timeout(600)
def test_make_run_reaches_succeeded_and_its_hint_works(tmp_path: Path) -> None:
    """`make run` demo SUCCEEDED, four services SERVING, each hint command works, clean stop."""
    require(shutil.which("make") is not None, "make is not installed")
    require(docker_available() and sandbox_image_available(), "Docker and the sandbox image")
    var = tmp_path / "var"
    # -o .venv/.installed: use the environment the tests run in instead of reinstalling it
    # when pyproject.toml is newer (CI touches the stamp after installing; a no-op there).
    make = user_shell.start(
        ["make", "-o", ".venv/.installed", "run", f"RUN_ARGS=--var {var}"], tmp_path / "make.log"
    )
    try:
        output = make.wait_for(user_shell.HINT_END, timeout=420)
        demo = output.split("demo:", 1)[1].split(user_shell.HINT_START, 1)[0]
        assert "-> SUCCEEDED" in demo, output[-4000:]
        assert "Hello, Runbox!" in demo
        assert "sandbox   docker" in demo
        assert "demo run exit status 0" in demo
        assert "NO SANDBOX" not in output

        config = var / "runbox.json"
        assert set(user_shell.health(config).values()) == {"SERVING"}

        commands = user_shell.hint_commands(output)
        assert f"export RUNBOX_CONFIG={config}" in commands
        assert "runbox run hello --follow -p name=you" in commands
        ran = user_shell.run_shell(commands)
        failed = {c: r for c, r in ran.items() if r.code != 0}
        assert not failed, failed
        outputs = {c: r.output for c, r in ran.items()}
        assert (
            "published hello@1.0.1"
            in outputs["runbox script push examples/hello.py --version 1.0.1"]
        )
        hello = outputs["runbox run hello --follow -p name=you"]
        assert "Hello, you!" in hello
        assert "-> SUCCEEDED" in hello
        assert "hello" in outputs["runbox runs list"]

        # Still serving after all that.
        assert make.proc.poll() is None, make.text()[-4000:]
        assert set(user_shell.health(config).values()) == {"SERVING"}
        services = user_shell.descendants(make.proc.pid)
    finally:
        _interrupt(make)
        code = make.proc.wait(60)
    assert code == 0, make.text()[-4000:]
    assert make.text().rstrip().endswith("stopped.")
    assert not [pid for pid in services if user_shell.cmdline(pid)], "processes left running"


def _interrupt(make: user_shell.Started) -> None:
    """Ctrl-C for `runbox up` (make then ends with its exit status); make itself if it never
    got that far."""
    if make.proc.poll() is not None:
        return
    try:
        os.kill(user_shell.runbox_up_pid(make.proc.pid), signal.SIGINT)
    except (AssertionError, ProcessLookupError):
        make.proc.send_signal(signal.SIGINT)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("allowed", [False, True])
def test_up_without_sandbox_warns_and_refuses_unless_allowed(tmp_path: Path, allowed: bool) -> None:
    """No sandbox (RUNBOX_SANDBOX__BACKEND=local passed through): runbox up warns; the demo
    run is refused NO_SANDBOX, or with --allow-unsandboxed runs and shows NOT sandboxed."""
    env = user_shell.user_env() | {"RUNBOX_SANDBOX__BACKEND": "local", "COLUMNS": "300"}
    argv = [str(REPO / ".venv" / "bin" / "runbox"), "up", "--demo", "--var", str(tmp_path / "var")]
    up = user_shell.start(argv + ["--allow-unsandboxed"] * allowed, tmp_path / "up.log", env=env)
    try:
        output = up.wait_for(user_shell.HINT_END, timeout=120)
    finally:
        up.proc.send_signal(signal.SIGINT)
        code = up.proc.wait(60)
    assert code == 0, up.text()[-4000:]
    warning = next(line for line in output.splitlines() if "WARNING: NO SANDBOX" in line)
    demo = output.split("demo:", 1)[1]
    if allowed:
        assert "python and shell runs are NOT sandboxed" in warning
        assert "-> SUCCEEDED" in demo
        assert "sandbox   none: NOT sandboxed" in demo
    else:
        assert "python and shell runs will be REFUSED" in warning
        assert "runbox up --allow-unsandboxed" in warning
        assert "-> FAILED" in demo
        assert "reason    NO_SANDBOX" in demo
        assert "demo run exit status 1" in demo

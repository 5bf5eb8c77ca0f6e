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
        outputs = user_shell.run_shell(commands)
        assert set(outputs) == set(commands)
        assert (
            "published hello@1.0.1"
            in outputs["runbox script push examples/hello.py --version 1.0.1"]
        )
        ran = outputs["runbox run hello --follow -p name=you"]
        assert "Hello, you!" in ran
        assert "-> SUCCEEDED" in ran
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

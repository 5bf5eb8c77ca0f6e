"""deploy/dev/run.sh (what `make run` runs) when Docker cannot be had: it stops and names the
opt-in instead of starting an unsandboxed stack, and with the opt-in it goes on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of run.sh whose Docker steps fail and whose `runbox` records its arguments."""
    for rel, body in {
        "deploy/docker/install-docker.sh": "exit 1\n",
        "deploy/sandbox/build-image.sh": "exit 0\n",
        ".venv/bin/runbox": '#!/bin/sh\necho "runbox $*" > "$(dirname "$0")/called"\n',
    }.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        path.chmod(0o755)
    (tmp_path / "deploy/dev").mkdir(parents=True)
    shutil.copy(REPO / "deploy/dev/run.sh", tmp_path / "deploy/dev/run.sh")
    return tmp_path


def _run(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(checkout / "deploy/dev/run.sh"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_run_without_docker_stops_and_names_the_opt_in(checkout: Path) -> None:
    """No Docker: exit 1, say so, print the opt-in command; runbox up never starts."""
    done = _run(checkout, "--var", "/tmp/x")
    assert done.returncode == 1
    assert "no Docker engine could be installed or started" in done.stderr
    assert "make run RUN_ARGS=--allow-unsandboxed" in done.stderr
    assert not (checkout / ".venv/bin/called").exists()


def test_run_without_docker_goes_on_with_the_opt_in(checkout: Path) -> None:
    """With --allow-unsandboxed it warns and starts runbox up with the same arguments."""
    done = _run(checkout, "--allow-unsandboxed")
    assert done.returncode == 0, done.stderr
    assert "NOT sandboxed" in done.stderr
    called = (checkout / ".venv/bin/called").read_text()
    assert called.strip() == "runbox up --demo --allow-unsandboxed"

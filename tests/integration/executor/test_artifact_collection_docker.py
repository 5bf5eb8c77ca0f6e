"""Artifact collection against a real Docker engine and the real sandbox image:
a tar stream produced inside the sandbox (as the agent sends it), read as
hostile input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from services.executor.artifacts import collect_from_tar
from services.executor.config import ArtifactSettings
from tests.conftest import SANDBOX_IMAGE

pytestmark = pytest.mark.usefixtures("docker_engine")
LABEL = {"org.runbox.role": "test-artifacts"}

# What a hostile script leaves: regular files, a symlink and a hardlink to host-looking
# paths, a fifo, a name with a newline, and a result.json.
HOSTILE = r"""
import json, os
a = "/artifacts"
os.makedirs(a + "/sub")
open(a + "/report.txt", "w").write("hello")
open(a + "/sub/data.bin", "wb").write(bytes(range(256)))
os.symlink("/etc/passwd", a + "/passwd")
os.link(a + "/report.txt", a + "/hard.txt")
os.mkfifo(a + "/pipe")
open(a + "/new\nline", "w").write("x")
json.dump({"rows": 3}, open("/work/result.json", "w"))
"""


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A running hardened sandbox whose /work and /artifacts are tmpfs mounts, as a
    pooled sandbox's are, after HOSTILE ran."""
    client = docker.from_env()
    opts = "rw,size=4m,uid=10001,gid=10001,nosuid,nodev,noexec"
    container = client.containers.run(
        SANDBOX_IMAGE,
        ["python3", "-c", HOSTILE + "\nprint('ready', flush=True)\nimport time; time.sleep(120)"],
        detach=True,
        read_only=True,
        network_mode="none",
        user="10001:10001",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        working_dir="/work",
        tmpfs={"/work": opts, "/artifacts": opts},
        labels=LABEL,
    )
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b"ready" in container.logs(), container.logs()
        yield container
    finally:
        container.remove(force=True)
        client.close()


async def test_stream_packed_in_the_sandbox_is_collected_safely(
    sandbox: Any, tmp_path: Path
) -> None:
    """A tar stream written inside the sandbox by Python's tarfile (no link followed)
    goes through collect_from_tar: the result and the regular files; the symlink,
    the hardlink and the fifo are skipped, the newline replaced."""
    pack = (
        "import sys, tarfile\n"
        "with tarfile.open(fileobj=sys.stdout.buffer, mode='w|') as t:\n"
        "    t.add('/work/result.json', arcname='result.json')\n"
        "    t.add('/artifacts', arcname='artifacts')\n"
    )
    exit_code, output = await asyncio.to_thread(
        sandbox.exec_run, ["python3", "-c", pack], stdout=True, stderr=False, demux=True
    )
    assert exit_code == 0
    settings = ArtifactSettings(storage_dir=str(tmp_path / "store"))
    result, files, warnings = await asyncio.to_thread(collect_from_tar, output[0], "r2", settings)
    assert result == {"rows": 3}
    names = {f.name for f in files}
    assert "sub/data.bin" in names and "new_line" in names
    assert len(names & {"report.txt", "hard.txt"}) == 1
    joined = "\n".join(warnings)
    assert "'passwd' skipped: a symlink" in joined and "'pipe' skipped: a fifo" in joined
    assert "skipped: a hardlink" in joined

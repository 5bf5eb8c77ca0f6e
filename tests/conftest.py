"""Shared fixtures: a real nats-server per session, Docker detection, tokens.

A dependency missing locally skips with a clear reason; in CI (CI=true) it
fails the run instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import natsd
from shared.auth import hash_token, new_token

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI, when a real dependency is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


SANDBOX_IMAGE = os.environ.get("RUNBOX_TEST_SANDBOX_IMAGE", "runbox/sandbox-python:latest")


def sandbox_image_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.images.get(SANDBOX_IMAGE)
        client.close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[natsd.NatsServer]:
    """A real nats-server with JetStream for the whole session."""
    try:
        binary = natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
        raise
    assert binary
    server = natsd.start(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture
def docker_engine() -> None:
    """Require a reachable Docker engine and the sandbox image."""
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(
        sandbox_image_available(), f"sandbox image {SANDBOX_IMAGE} missing (make sandbox-image)"
    )


class Tokens:
    """Admin, service, read-only, editor (read/write/delete, no manage), submitter
    (script:execute alone) and no-permission tokens, plus the principals file that
    configures them."""

    def __init__(self, directory: Path) -> None:
        self.admin = new_token()
        self.service = new_token()
        self.reader = new_token()
        self.nobody = new_token()
        self.editor = new_token()
        self.submitter = new_token()
        self.principals_file = directory / "principals.json"
        principals = [
            {"name": "admin", "token_sha256": hash_token(self.admin), "permissions": ["*"]},
            {"name": "svc", "token_sha256": hash_token(self.service), "permissions": ["*"]},
            {
                "name": "reader",
                "token_sha256": hash_token(self.reader),
                "permissions": ["script:read", "script_execution:read"],
            },
            {"name": "nobody", "token_sha256": hash_token(self.nobody), "permissions": []},
            {
                "name": "editor",
                "token_sha256": hash_token(self.editor),
                "permissions": ["script:read", "script:write", "script:delete"],
            },
            {
                "name": "submitter",
                "token_sha256": hash_token(self.submitter),
                "permissions": ["script:execute"],
            },
        ]
        self.principals_file.write_text(json.dumps({"principals": principals}))


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return Tokens(tmp_path_factory.mktemp("auth"))

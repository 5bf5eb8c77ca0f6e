"""Helpers to run services in-process on port 0 for integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.settings import ServiceSettings


def settings_for(
    cls: type[ServiceSettings],
    tmp: Path,
    name: str,
    *,
    nats_url: str,
    principals_file: Path,
    **extra: Any,
) -> Any:
    """Settings of one service bound to loopback port 0 with its own SQLite file.

    A catalogue starts without the built-in templates unless a test asks for them, so that
    tests counting scripts, events or audit records see only their own."""
    if name == "catalogue":
        extra.setdefault("builtin_templates", False)
    return cls(
        instance_id=f"{name}-test",
        grpc={"host": "127.0.0.1", "port": 0},
        database={"url": f"sqlite+aiosqlite:///{tmp / (name + '.db')}"},
        nats={"url": nats_url},
        metrics={"port": -1},
        auth={"principals_file": str(principals_file)},
        log={"json_format": False},
        **extra,
    )

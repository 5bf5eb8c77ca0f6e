"""Where the CLI finds the stack and its token.

Order: explicit flags, then RUNBOX_* environment variables (RUNBOX_SCHEDULER_ADDRESS,
RUNBOX_CATALOGUE_ADDRESS, RUNBOX_TOKEN / RUNBOX_TOKEN_FILE), then the config
file RUNBOX_CONFIG, ./var/runbox.json (written by `runbox up`), or
~/.config/runbox/config.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FILES = (Path("var/runbox.json"), Path.home() / ".config" / "runbox" / "config.json")


class ConfigError(Exception):
    """The CLI cannot find where to connect or which token to use."""


@dataclass(frozen=True)
class ClientConfig:
    catalogue: str
    scheduler: str
    executor: str
    alerting: str
    token: str


def _config_file() -> dict[str, str]:
    explicit = os.environ.get("RUNBOX_CONFIG")
    candidates = [Path(explicit)] if explicit else list(DEFAULT_FILES)
    for path in candidates:
        if path.is_file():
            data = json.loads(path.read_text())
            return {str(k): str(v) for k, v in data.items()}
    if explicit:
        raise ConfigError(f"RUNBOX_CONFIG={explicit} does not exist")
    return {}


def load() -> ClientConfig:
    """Resolve addresses and token; raise ConfigError with a hint if missing."""
    file = _config_file()

    def pick(name: str) -> str:
        return os.environ.get(f"RUNBOX_{name.upper()}_ADDRESS") or file.get(name, "")

    token = os.environ.get("RUNBOX_TOKEN", "")
    token_file = os.environ.get("RUNBOX_TOKEN_FILE") or file.get("token_file", "")
    if not token and token_file:
        token = Path(token_file).read_text().strip()
    config = ClientConfig(
        catalogue=pick("catalogue"),
        scheduler=pick("scheduler"),
        executor=pick("executor"),
        alerting=pick("alerting"),
        token=token,
    )
    if not config.scheduler or not config.catalogue:
        raise ConfigError(
            "no Runbox stack configured: start one with `runbox up` (writes var/runbox.json) "
            "or set RUNBOX_CONFIG / RUNBOX_SCHEDULER_ADDRESS and RUNBOX_CATALOGUE_ADDRESS"
        )
    if not token:
        raise ConfigError("no token: set RUNBOX_TOKEN or RUNBOX_TOKEN_FILE")
    return config

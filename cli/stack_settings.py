"""Per-service settings of `runbox up`: the caller's RUNBOX_* variables and a settings file.

A service of the local stack gets, lowest precedence first:

1. the caller's `RUNBOX_*` variables, except the CLI's own (RUNBOX_CONFIG, RUNBOX_TOKEN,
   RUNBOX_TOKEN_FILE, RUNBOX_<SERVICE>_ADDRESS) and what the stack sets itself;
2. the settings file's `common` section, then its section for the service
   (`runbox up --settings FILE`): keys are the variables' suffixes, e.g.
   `executor: {SANDBOX__EGRESS_NETWORK: host}`;
3. `runbox up`'s own flags (`--allow-unsandboxed`).

What wires the stack together (ports, addresses, NATS, tokens, instance ids) is always the
stack's: a file naming it is refused, a variable naming it is dropped. The storage paths the
stack picks under `--var` (DATABASE__URL, BLOB_DIR, WORK_DIR) may be set per service in the
file, not from the environment (one value there would be shared by all four services).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_origin

import yaml
from pydantic import BaseModel, ValidationError

SERVICES = ("catalogue", "executor", "scheduler", "alerting")
PREFIX = "RUNBOX_"
# Set by the stack to wire its services together (a key or any key under it).
STACK_OWNED = frozenset(
    {
        "INSTANCE_ID",
        "GRPC__HOST",
        "GRPC__PORT",
        "METRICS__HOST",
        "METRICS__PORT",
        "NATS__URL",
        "AUTH__PRINCIPALS_FILE",
        "AUTH__PRINCIPALS",
        "AUTH__SERVICE_TOKEN",
        "CATALOGUE__ADDRESS",
        "SCHEDULER__ADDRESS",
        "EXECUTORS",
        "ANNOUNCE_READY",
    }
)
# Picked by the stack under --var; a settings file may set them for one service.
STACK_DEFAULTS = frozenset({"DATABASE__URL", "BLOB_DIR", "WORK_DIR"})
# The CLI's own variables: where it finds a stack and which token it sends.
CLI_OWNED = frozenset(
    {"CONFIG", "TOKEN", "TOKEN_FILE"} | {f"{s.upper()}_ADDRESS" for s in SERVICES}
)


class SettingsError(Exception):
    """A settings file that cannot be used; the message says where and why."""


def owned(key: str, names: frozenset[str]) -> bool:
    """Whether KEY (a suffix, upper case) is one of NAMES or an object holding one."""
    return key in names or any(name.startswith(key + "__") for name in names)


def passed_through(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The caller's RUNBOX_* variables a service may get, and the names dropped."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in environ.items():
        if not name.upper().startswith(PREFIX):
            continue
        key = name.upper().removeprefix(PREFIX)
        if owned(key, CLI_OWNED):
            continue  # the CLI's, silently: every shell driving a stack has them
        if owned(key, STACK_OWNED | STACK_DEFAULTS):
            dropped.append(name)
            continue
        kept[name] = value
    return kept, sorted(dropped)


def settings_class(service: str) -> type[BaseModel]:
    """The pydantic settings class of one service (imported only when a file is used)."""
    if service == "catalogue":
        from services.catalogue.config import CatalogueSettings

        return CatalogueSettings
    if service == "executor":
        from services.executor.config import ExecutorSettings

        return ExecutorSettings
    if service == "scheduler":
        from services.scheduler.config import SchedulerSettings

        return SchedulerSettings
    from services.alerting.config import AlertingSettings

    return AlertingSettings


def key_problem(model: type[BaseModel], key: str) -> str | None:
    """Why KEY (e.g. SANDBOX__EGRESS_NETWORK) names no setting of MODEL, or None."""
    parts = key.lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:i]) or "the service"
            known = ", ".join(n.upper() for n in model.model_fields)
            return f"{part.upper()} is not a setting of {where} (known: {known})"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if i < len(parts) - 1 and get_origin(annotation) is not dict:
            return f"{'.'.join(parts[: i + 1]).upper()} holds no settings"
        return None
    return None


def env_value(value: Any) -> str:
    """A YAML value as the environment variable text pydantic-settings reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def nested(section: Mapping[str, Any]) -> dict[str, Any]:
    """{"SANDBOX__EGRESS_NETWORK": "host"} as {"sandbox": {"egress_network": "host"}}."""
    tree: dict[str, Any] = {}
    for key, value in section.items():
        *path, last = key.lower().split("__")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def _sections(data: Any, path: Path) -> dict[str, dict[str, Any]]:
    """The file's sections, each a {KEY: value} mapping; refuse anything else."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(
            f"{path}: expected a mapping of sections (common, {', '.join(SERVICES)})"
        )
    sections: dict[str, dict[str, Any]] = {}
    for name, section in data.items():
        if name != "common" and name not in SERVICES:
            raise SettingsError(
                f"{path}: unknown section {name!r}: expected common, {', '.join(SERVICES)}"
            )
        if section is None:
            section = {}
        if not isinstance(section, dict) or not all(isinstance(k, str) for k in section):
            raise SettingsError(f"{path}: {name}: expected a mapping of SETTING: value")
        sections[name] = {k.upper(): v for k, v in section.items()}
    return sections


def _check_keys(path: Path, name: str, section: Mapping[str, Any]) -> None:
    for key, value in section.items():
        where = f"{path}: {name}.{key}"
        if key.startswith(PREFIX):
            raise SettingsError(
                f"{where}: write the key without {PREFIX}: {key.removeprefix(PREFIX)}"
            )
        if owned(key, STACK_OWNED):
            raise SettingsError(f"{where}: set by runbox up itself (ports: --base-port)")
        if name == "common" and owned(key, STACK_DEFAULTS):
            raise SettingsError(f"{where}: one per service: set it in a service's section")
        if value is None:
            raise SettingsError(f"{where}: no value")
        if name == "common":
            # A common key goes to the services that have it; one must.
            if all(key_problem(settings_class(s), key) for s in SERVICES):
                raise SettingsError(f"{where}: not a setting of any service")
        else:
            problem = key_problem(settings_class(name), key)
            if problem:
                raise SettingsError(f"{where}: {problem}")


def load(path: Path) -> dict[str, dict[str, str]]:
    """Read and check a settings file: {service: {RUNBOX_KEY: value}} (common merged in)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not YAML: {exc}") from None
    sections = _sections(data, path)
    for name, section in sections.items():
        _check_keys(path, name, section)
    merged: dict[str, dict[str, str]] = {}
    for service in SERVICES:
        section = {
            k: v
            for k, v in sections.get("common", {}).items()
            if not key_problem(settings_class(service), k)
        } | sections.get(service, {})
        try:
            settings_class(service).model_validate(nested(section))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
            )
            raise SettingsError(f"{path}: {service}: {problems}") from None
        merged[service] = {PREFIX + k: env_value(v) for k, v in section.items()}
    return merged

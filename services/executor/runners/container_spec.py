"""What a container run is made of: the image allow-list, the command and args rendered
from parameters (never secrets), the environment (the one door for secrets), and the
hardened `docker create` options.

`command` replaces the image's ENTRYPOINT and `args` its CMD, as in Kubernetes. Parameters
arrive as RUNBOX_PARAM_<NAME> and RUNBOX_PARAMS_JSON variables; secrets only through the
config's env entries that name them ({{ secret }}). No parameters file is written: the root
is read-only and a wrapper writing one into /work would need a shell in the image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from docker.utils import parse_repository_tag

from services.executor.config import AllowedImage, ContainerSettings
from services.executor.pool import PoolClass, hardened_options
from services.executor.runners.base import Job
from services.executor.runners.job_config import execution_config, referenced, render
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

ROLE_LABEL, ROLE = "org.runbox.role", "container-run"
RUN_LABEL = "org.runbox.run_id"
IMAGE_FIELD = "config.container.image"
# Names a config's env may not set: the executor's own inputs.
RESERVED_ENV = "RUNBOX_"
ENV_NAME = re.compile(r"^[^=\0]+$")


# --- the allow-list ------------------------------------------------------------------------------


def _reference(image: str) -> tuple[str, str]:
    """(repository, "tag:<t>" | "digest:<d>"); no tag means Docker's own default, latest."""
    repo, tag = parse_repository_tag(image)
    if "@" in image:
        return repo, f"digest:{tag}"
    return repo, f"tag:{tag or 'latest'}"


def allowed_entry(image: str, allowed: list[AllowedImage]) -> AllowedImage | None:
    """The allow-list entry matching an image reference: exact (after the implicit
    :latest), or "repo:*" for any tag or digest of that repository."""
    repo, version = _reference(image)
    for entry in allowed:
        if entry.image.endswith(":*"):
            if repo == entry.image.removesuffix(":*"):
                return entry
        elif _reference(entry.image) == (repo, version):
            return entry
    return None


# --- turning a job into a container spec --------------------------------------------------------


@dataclass(frozen=True)
class ContainerSpec:
    """A checked container: what `docker create` gets besides the hardened options."""

    image: str
    entrypoint: list[str] | None  # None = the image's ENTRYPOINT
    command: list[str] | None  # None = the image's CMD (only when entrypoint is None too)
    env: dict[str, str]
    user: str


def prepare(job: Job, settings: ContainerSettings) -> ContainerSpec:
    """Check the image against the allow-list and render command, args and env."""
    config = execution_config(job, "container")
    image = config.image.strip()
    if not image:
        raise InvalidArgument.field(IMAGE_FIELD, "required")
    entry = allowed_entry(image, settings.allowed_images)
    if entry is None:
        raise FailedPrecondition(
            f"{IMAGE_FIELD}: {image!r} is not allowed on this executor (container.allowed_images)",
            [FieldViolation(IMAGE_FIELD, "image not allowed")],
        )
    command = _argv(job, list(config.command), "config.container.command")
    args = _argv(job, list(config.args), "config.container.args")
    entrypoint = command or None
    cmd = args or ([] if entrypoint else None)  # a new ENTRYPOINT drops the image's CMD
    env = environment(job, dict(config.env))
    return ContainerSpec(image, entrypoint, cmd, env, entry.user or settings.user)


def _argv(job: Job, templates: list[str], name: str) -> list[str]:
    """Render argv from parameters only: argv is visible to `docker inspect` and `ps`."""
    secret_values = [v for v in job.secrets.values() if len(v) >= 3]
    out = []
    for i, template in enumerate(templates):
        field_name = f"{name}[{i}]"
        named = sorted(referenced(template, field_name) & set(job.secrets))
        if named:
            raise InvalidArgument.field(
                field_name,
                f"references secret parameter(s) {named}: secrets reach a container only "
                "through config.container.env, never its command or args",
            )
        value = render(template, job.parameters, field_name)
        if "\0" in value or any(secret in value for secret in secret_values):
            raise InvalidArgument.field(
                field_name, "would put a NUL byte or a secret value in argv"
            )
        out.append(value)
    return out


def environment(job: Job, config_env: Mapping[str, str]) -> dict[str, str]:
    """The container's whole environment: the run's inputs, then the config's entries
    (templated with parameters and secrets: the one door for secrets)."""
    env = {
        "RUNBOX_RUN_ID": job.run_id,
        "RUNBOX_WORK_DIR": "/work",
        "RUNBOX_PARAMS_JSON": json.dumps(job.parameters),
        "HOME": "/work",
    }
    for name, value in job.parameters.items():
        env["RUNBOX_PARAM_" + name.upper()] = value if isinstance(value, str) else json.dumps(value)
    values = {**job.parameters, **job.secrets}
    for key in sorted(config_env):
        field_name = f"config.container.env.{key}"
        if not ENV_NAME.match(key) or key.upper().startswith(RESERVED_ENV):
            raise InvalidArgument.field(
                field_name, f"an env name without '=' or NUL, not starting with {RESERVED_ENV}"
            )
        env[key] = render(config_env[key], values, field_name)
    for key, value in env.items():
        if "\0" in value:
            raise InvalidArgument.field(f"environment {key}", "a value holds a NUL byte")
    return env


def create_options(
    spec: ContainerSpec, job: Job, *, network: str, runtime: str, tmp_bytes: int, owner: str = ""
) -> dict[str, Any]:
    """`docker create` options: the sandbox's hardened ones, with this image and command."""
    limits = job.limits
    cls = PoolClass(
        image=spec.image,
        runtime=runtime,
        cpus=limits.cpus,
        memory_bytes=limits.memory_bytes,
        pids=limits.pids,
        work_bytes=limits.work_bytes,
        tmp_bytes=tmp_bytes,
        network=network,
    )
    options = hardened_options(cls, owner)
    uid, _, gid = spec.user.partition(":")
    options.update(
        entrypoint=spec.entrypoint,
        command=spec.command,
        stdin_open=False,
        user=spec.user,
        environment=spec.env,
        init=True,  # PID 1 forwards SIGTERM to the command and reaps what it leaves
        tmpfs={
            "/work": f"rw,nosuid,nodev,size={limits.work_bytes},uid={uid},gid={gid or uid},"
            "mode=0700",
            "/tmp": f"rw,nosuid,nodev,noexec,size={tmp_bytes},mode=1777",  # noqa: S108 - in the container
        },
        labels={**options["labels"], ROLE_LABEL: ROLE, RUN_LABEL: job.run_id},
    )
    del options["labels"]["org.runbox.pool_class"]
    if options["entrypoint"] is None:
        del options["entrypoint"]
    if options["command"] is None:
        del options["command"]
    return options

"""Publishing a version: flags, manifest and file combined into one plan, then sent.

Push creates the script when it is new; when it exists and the manifest changes
mutable metadata (description, tags, config, limits, retry, ...), one UpdateScript
with exactly those fields in its mask brings it in line before the version is
published, so a manifest in version control stays the source of truth. The
catalogue's field violations come back in proto terms and are shown in manifest
terms (`manifest_field`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2

from cli import config as cli_config
from cli import manifest as mf
from cli.rpc import call, fail
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.clients import open_channel

Stub = catalogue_pb2_grpc.CatalogueServiceStub


def _enum(enum: Any, prefix: str, name: str) -> Any:
    return enum.Value(f"{prefix}{name.upper()}")


def execution_type(name: str) -> common_pb2.ExecutionType:
    return _enum(common_pb2.ExecutionType, "EXECUTION_TYPE_", name)  # type: ignore[no-any-return]


def _set_duration(target: duration_pb2.Duration, value: dt.timedelta | None) -> None:
    if value is not None:
        target.FromTimedelta(value)


def _config_proto(config: mf.Config) -> catalogue_pb2.ExecutionConfig:
    out = catalogue_pb2.ExecutionConfig()
    for key in mf.Config.model_fields:
        section = getattr(config, key)
        if section is None:
            continue
        data = section.model_dump(exclude={"timeout"}, exclude_defaults=True)
        json_format.ParseDict(data, getattr(out, key))
        if key == "http":
            _set_duration(out.http.timeout, section.timeout)
    return out


def _limits_proto(limits: mf.Limits) -> common_pb2.ResourceLimits:
    out = common_pb2.ResourceLimits(
        cpu=limits.cpu,
        memory_bytes=limits.memory_bytes,
        disk_bytes=limits.disk_bytes,
        pids=limits.pids,
        output_bytes=limits.output_bytes,
    )
    if limits.network:
        out.network = _enum(common_pb2.NetworkPolicy, "NETWORK_POLICY_", limits.network)
    _set_duration(out.timeout, limits.timeout)
    return out


def _retry_proto(retry: mf.Retry) -> common_pb2.RetryPolicy:
    out = common_pb2.RetryPolicy(
        max_attempts=retry.max_attempts,
        multiplier=retry.multiplier,
        jitter=retry.jitter,
        retry_on=[_enum(common_pb2.FailureReason, "FAILURE_REASON_", r) for r in retry.retry_on],
        oom_memory_factor=retry.oom_memory_factor,
        oom_memory_cap_bytes=retry.oom_memory_cap_bytes,
    )
    _set_duration(out.initial_backoff, retry.initial_backoff)
    _set_duration(out.max_backoff, retry.max_backoff)
    return out


def script_proto(manifest: mf.Manifest, name: str, kind: str) -> catalogue_pb2.Script:
    """The Script to create; `kind` is the execution type (from the manifest or the suffix)."""
    script = catalogue_pb2.Script(
        name=name,
        description=manifest.description or "",
        tags=manifest.tags or [],
        execution_type=execution_type(kind),
        is_template=bool(manifest.template),
    )
    if manifest.config is not None:
        script.config.CopyFrom(_config_proto(manifest.config))
    if manifest.limits is not None:
        script.default_limits.CopyFrom(_limits_proto(manifest.limits))
    if manifest.retry is not None:
        script.default_retry.CopyFrom(_retry_proto(manifest.retry))
    if manifest.isolation:
        script.isolation = _enum(common_pb2.Isolation, "ISOLATION_", manifest.isolation)
    if manifest.runtime:
        script.runtime = _enum(common_pb2.Runtime, "RUNTIME_", manifest.runtime)
    return script


# Manifest key -> Script field UpdateScript may change.
MUTABLE = {
    "description": "description",
    "tags": "tags",
    "config": "config",
    "limits": "default_limits",
    "retry": "default_retry",
    "isolation": "isolation",
    "runtime": "runtime",
}


def changed_fields(
    manifest: mf.Manifest, wanted: catalogue_pb2.Script, current: catalogue_pb2.Script
) -> list[str]:
    """Script fields the manifest sets and the registered script has otherwise."""
    changed = []
    for key, field in MUTABLE.items():
        if getattr(manifest, key) is None:
            continue
        mine, theirs = getattr(wanted, field), getattr(current, field)
        if field == "tags":
            mine, theirs = sorted(set(mine)), sorted(set(theirs))
        elif hasattr(mine, "SerializeToString"):
            mine, theirs = json_format.MessageToDict(mine), json_format.MessageToDict(theirs)
        if mine != theirs:
            changed.append(field)
    return changed


def _value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def parameter_proto(parameter: mf.Parameter) -> catalogue_pb2.ParameterDefinition:
    """One definition; a `default: null` or no default both mean none."""
    out = catalogue_pb2.ParameterDefinition(
        name=parameter.name,
        type=_enum(catalogue_pb2.ParameterType, "PARAMETER_TYPE_", parameter.type),
        required=parameter.required,
        secret=parameter.secret,
        description=parameter.description,
    )
    if parameter.default is not None:
        out.default_value.CopyFrom(_value(parameter.default))
    if parameter.rules is not None:
        rules = parameter.rules.model_dump(exclude={"allowed_values"}, exclude_defaults=True)
        json_format.ParseDict(rules, out.rules)
        out.rules.allowed_values.extend(_value(v) for v in parameter.rules.allowed_values)
    if parameter.condition is not None:
        out.condition.parameter = parameter.condition.parameter
        out.condition.equals.CopyFrom(_value(parameter.condition.equals))
    if parameter.ui is not None:
        json_format.ParseDict(parameter.ui.model_dump(exclude_defaults=True), out.ui)
    return out


def parameters_proto(manifest: mf.Manifest) -> list[catalogue_pb2.ParameterDefinition]:
    return [parameter_proto(p) for p in manifest.parameters]


# Proto field names the server reports -> the manifest's names for them.
_RENAMES = {
    "default_value": "default",
    "default_limits": "limits",
    "default_retry": "retry",
    "is_template": "template",
}
_PARAMETER = re.compile(r"^parameters\[(\d+)\]")


def manifest_field(field: str, manifest: mf.Manifest) -> str:
    """A server violation field as a manifest path, naming the parameter it is about."""
    path = field.removeprefix("script.")
    path = ".".join(_RENAMES.get(part, part) for part in path.split("."))
    match = _PARAMETER.match(path)
    if match and int(match.group(1)) < len(manifest.parameters):
        return f"{path} (parameter {manifest.parameters[int(match.group(1))].name!r})"
    return path


@dataclass(frozen=True)
class Push:
    """Everything one push sends, decided before any call is made."""

    name: str
    version: str
    kind: str
    content: bytes
    changelog: str
    parameters: list[catalogue_pb2.ParameterDefinition]
    manifest: mf.Manifest | None


def _legacy_parameters(path: Path) -> list[catalogue_pb2.ParameterDefinition]:
    """Parameter definitions from a JSON list (proto JSON of ParameterDefinition)."""
    try:
        items = json.loads(path.read_text())
        return [json_format.ParseDict(item, catalogue_pb2.ParameterDefinition()) for item in items]
    except (OSError, ValueError, TypeError, json_format.ParseError) as exc:
        raise fail(f"{path}: {exc}") from None


def plan_push(
    file: Path,
    *,
    name: str | None = None,
    version: str | None = None,
    manifest_path: Path | None = None,
    params_file: Path | None = None,
) -> Push:
    """Combine flags, the manifest (explicit or next to FILE) and FILE; flags win."""
    if manifest_path is None and mf.default_path(file).is_file():
        manifest_path = mf.default_path(file)
    manifest = None
    if manifest_path is not None:
        try:
            manifest = mf.load(manifest_path)
        except mf.ManifestError as exc:
            raise fail(str(exc)) from None
    if manifest is not None and params_file is not None and manifest.parameters:
        raise fail(f"{manifest_path} defines parameters; drop --params")
    version = version or (manifest.version if manifest else None)
    if not version:
        raise fail("no version: pass --version or set `version:` in the manifest")
    suffix_kind = "shell" if file.suffix == ".sh" else "python"
    return Push(
        name=name or (manifest.name if manifest and manifest.name else file.stem),
        version=version,
        kind=(manifest.execution_type if manifest and manifest.execution_type else suffix_kind),
        content=file.read_bytes(),
        changelog=manifest.changelog if manifest else "",
        parameters=(
            parameters_proto(manifest)
            if manifest and manifest.parameters
            else (_legacy_parameters(params_file) if params_file else [])
        ),
        manifest=manifest,
    )


def _kind_name(kind: int) -> str:
    return common_pb2.ExecutionType.Name(kind).removeprefix("EXECUTION_TYPE_").lower()  # type: ignore[arg-type]


async def _existing(
    stub: catalogue_pb2_grpc.CatalogueServiceAsyncStub, name: str
) -> catalogue_pb2.Script:
    """The registered script; a name that exists but cannot be read is a deleted one."""
    try:
        return await stub.GetScript(catalogue_pb2.GetScriptRequest(name=name))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    raise fail(f"script {name!r} is deleted: `runbox script restore {name}` first")


async def _ensure_script(
    stub: catalogue_pb2_grpc.CatalogueServiceAsyncStub, push: Push
) -> list[str]:
    """Create the script, or bring an existing one in line with the manifest.

    Returns the fields UpdateScript changed. Fields fixed at creation that the
    manifest sets differently are a user error: the server would refuse them anyway.
    """
    manifest = push.manifest or mf.Manifest()
    wanted = script_proto(manifest, push.name, push.kind)
    try:
        await stub.CreateScript(catalogue_pb2.CreateScriptRequest(script=wanted))
        return []
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    current = await _existing(stub, push.name)
    if push.manifest is None:
        return []
    if manifest.execution_type and current.execution_type != wanted.execution_type:
        raise fail(
            f"{push.name} is registered as {_kind_name(current.execution_type)}; "
            "execution_type is fixed at creation"
        )
    if manifest.template is not None and current.is_template != manifest.template:
        raise fail(f"{push.name}: the template flag is fixed at creation")
    fields = changed_fields(manifest, wanted, current)
    if fields:
        await stub.UpdateScript(
            catalogue_pb2.UpdateScriptRequest(
                script=wanted, update_mask=field_mask_pb2.FieldMask(paths=fields)
            )
        )
    return fields


def push_version(
    push: Push, *, exist_ok: bool = False
) -> tuple[catalogue_pb2.ScriptVersion, list[str]]:
    """Create or update the script, then publish the version; exit 2 on any refusal."""

    async def go(cfg: cli_config.ClientConfig) -> tuple[catalogue_pb2.ScriptVersion, list[str]]:
        async with open_channel(cfg.catalogue, token=cfg.token) as channel:
            stub = Stub(channel)
            updated = await _ensure_script(stub, push)
            request = catalogue_pb2.PublishVersionRequest(
                script_name=push.name,
                version=push.version,
                content=push.content,
                sha256=hashlib.sha256(push.content).hexdigest(),
                parameters=push.parameters,
                changelog=push.changelog,
            )
            try:
                return await stub.PublishVersion(request), updated
            except grpc.aio.AioRpcError as exc:
                if not (exist_ok and exc.code() == grpc.StatusCode.ALREADY_EXISTS):
                    raise
                found = await stub.GetVersion(
                    catalogue_pb2.GetVersionRequest(script_name=push.name, version=push.version)
                )
                return found, updated

    manifest = push.manifest
    if manifest is None:
        return call(go)
    return call(go, field_name=lambda field: manifest_field(field, manifest))

"""CatalogueService: proto <-> domain translation only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from cachetools import LRUCache
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from services.catalogue import templates
from services.catalogue.models import ScriptRow, VersionRow
from services.catalogue.scripts import Catalogue, Resolved
from shared import parameters
from shared.auth import require
from shared.errors import FailedPrecondition, InvalidArgument
from shared.interceptors import current_principal

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _ts(value: Any) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if value is not None:
        ts.FromDatetime(value)
    return ts


# Serialized Script messages by everything they are built from: listing pages
# then skip the JSON -> message conversions of unchanged scripts.
_SCRIPT_PROTOS: LRUCache[tuple[Any, ...], bytes] = LRUCache(maxsize=20_000)


def script_to_proto(row: ScriptRow, latest: str = "") -> catalogue_pb2.Script:
    # Every input is in the key (timestamps alone may be too coarse on some dialects).
    key = (
        row.id,
        row.name,
        row.updated_at,
        row.deleted_at,
        latest,
        row.description,
        tuple(row.tags),
        row.owner,
        row.execution_type,
        row.isolation,
        row.runtime,
        row.is_template,
        repr(row.config),
        repr(row.default_limits),
        repr(row.default_retry),
        row.created_at,
    )
    cached = _SCRIPT_PROTOS.get(key)
    if cached is not None:
        return catalogue_pb2.Script.FromString(cached)
    script = _build_script(row, latest)
    _SCRIPT_PROTOS[key] = script.SerializeToString()
    return script


def _build_script(row: ScriptRow, latest: str) -> catalogue_pb2.Script:
    script = catalogue_pb2.Script(
        name=row.name,
        description=row.description,
        tags=row.tags,
        owner=row.owner,
        execution_type=row.execution_type,  # type: ignore[arg-type]
        isolation=row.isolation,  # type: ignore[arg-type]
        runtime=row.runtime,  # type: ignore[arg-type]
        is_template=row.is_template,
        latest_version=latest,
        create_time=_ts(row.created_at),
        update_time=_ts(row.updated_at),
    )
    json_format.ParseDict(row.config, script.config)
    json_format.ParseDict(row.default_limits, script.default_limits)
    json_format.ParseDict(row.default_retry, script.default_retry)
    if row.deleted_at is not None:
        script.delete_time.CopyFrom(_ts(row.deleted_at))
    return script


# Serialized ScriptVersion messages: a version is immutable but for its state, which is in the
# key; parsing stored definitions back into messages is most of what building one costs.
_VERSION_PROTOS: LRUCache[tuple[Any, ...], bytes] = LRUCache(maxsize=20_000)


def version_to_proto(script: ScriptRow, row: VersionRow) -> catalogue_pb2.ScriptVersion:
    """A version; defaults of secret parameters are never returned."""
    key = (script.name, script.execution_type, row.id, row.version, row.sha256, row.state)
    cached = _VERSION_PROTOS.get(key)
    if cached is not None:
        return catalogue_pb2.ScriptVersion.FromString(cached)
    message = _build_version(script, row)
    _VERSION_PROTOS[key] = message.SerializeToString()
    return message


# Parameter definitions by their stored JSON (canonical form): many versions share one set
# (every instance of a template, every patch release), so parsing and compiling are shared too.
_PUBLIC_DEFINITIONS: LRUCache[str, list[catalogue_pb2.ParameterDefinition]] = LRUCache(4_096)


def _definitions_key(stored: list[dict[str, Any]]) -> str:
    return json.dumps(stored, sort_keys=True, separators=(",", ":"))


def _public_definitions(stored: list[dict[str, Any]]) -> list[catalogue_pb2.ParameterDefinition]:
    """Definitions as callers see them: defaults of secret parameters removed."""
    key = _definitions_key(stored)
    cached = _PUBLIC_DEFINITIONS.get(key)
    if cached is None:
        cached = parameters.load_definitions(stored)
        for d in cached:
            if parameters.is_secret(d):
                d.ClearField("default_value")
        _PUBLIC_DEFINITIONS[key] = cached
    return cached


def _build_version(script: ScriptRow, row: VersionRow) -> catalogue_pb2.ScriptVersion:
    definitions = _public_definitions(row.parameters)
    return catalogue_pb2.ScriptVersion(
        script_name=script.name,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        parameters=definitions,
        state=row.state,  # type: ignore[arg-type]
        changelog=row.changelog,
        create_time=_ts(row.created_at),
        created_by=row.created_by,
        execution_type=script.execution_type,  # type: ignore[arg-type]
    )


# Compiled parameter sets by version: versions are immutable, so an entry never goes stale
# (the content digest in the key guards against a name+version reused after a purge).
_PARAMETER_SETS: LRUCache[str, parameters.ParameterSet] = LRUCache(maxsize=4_096)


def parameter_set(resolved: Resolved) -> parameters.ParameterSet:
    """The compiled validator of a resolved version's definitions, compiled once per replica
    for all versions that share them (definitions are immutable with their version)."""
    key = _definitions_key(resolved.version.parameters)
    compiled = _PARAMETER_SETS.get(key)
    if compiled is None:
        definitions = parameters.load_definitions(resolved.version.parameters)
        try:
            compiled = parameters.compile_definitions(definitions)
        except InvalidArgument as exc:
            # Accepted at publish under older rules: the caller's values are not at fault.
            name, version = resolved.script.name, resolved.version.version
            raise FailedPrecondition(
                f"{name}@{version} has parameter definitions this catalogue no longer accepts "
                f"({exc.message}); publish a corrected version"
            ) from None
        _PARAMETER_SETS[key] = compiled
    return compiled


class CatalogueServicer(catalogue_pb2_grpc.CatalogueServiceServicer):
    """Every catalogue RPC: translation between protos and the domain layer only."""

    def __init__(self, catalogue: Catalogue, *, chunk_bytes: int) -> None:
        self._catalogue = catalogue
        self._chunk = chunk_bytes

    async def CreateScript(
        self, request: catalogue_pb2.CreateScriptRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        row = await self._catalogue.create_script(
            request.script, actor=current_principal().name, idempotency_key=request.idempotency_key
        )
        return script_to_proto(row, await self._catalogue.latest_version(row))

    async def GetScript(
        self, request: catalogue_pb2.GetScriptRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        if request.include_deleted:
            require(current_principal(), "script:manage")
        row = await self._catalogue.get_script(
            request.name, include_deleted=request.include_deleted
        )
        return script_to_proto(row, await self._catalogue.latest_version(row))

    async def ListScripts(
        self, request: catalogue_pb2.ListScriptsRequest, context: Ctx
    ) -> catalogue_pb2.ListScriptsResponse:
        rows, token = await self._catalogue.list_scripts(request)
        latest = await self._catalogue.latest_versions(rows)
        return catalogue_pb2.ListScriptsResponse(
            scripts=[script_to_proto(r, latest[r.id]) for r in rows], next_page_token=token
        )

    async def PublishVersion(
        self, request: catalogue_pb2.PublishVersionRequest, context: Ctx
    ) -> catalogue_pb2.ScriptVersion:
        current = await self._catalogue.get_script(request.script_name)
        if current.is_template and request.content:
            templates.check(request.content)
        script, row = await self._catalogue.publish_version(request, actor=current_principal().name)
        return version_to_proto(script, row)

    async def GetVersion(
        self, request: catalogue_pb2.GetVersionRequest, context: Ctx
    ) -> catalogue_pb2.ScriptVersion:
        resolved = await self._catalogue.get_version(request.script_name, request.version)
        return version_to_proto(resolved.script, resolved.version)

    async def ListVersions(
        self, request: catalogue_pb2.ListVersionsRequest, context: Ctx
    ) -> catalogue_pb2.ListVersionsResponse:
        script, rows, token = await self._catalogue.list_versions(request)
        return catalogue_pb2.ListVersionsResponse(
            versions=[version_to_proto(script, r) for r in rows], next_page_token=token
        )

    async def ResolveVersion(
        self, request: catalogue_pb2.ResolveVersionRequest, context: Ctx
    ) -> catalogue_pb2.ScriptVersion:
        resolved = await self._catalogue.resolve(request.ref)
        return version_to_proto(resolved.script, resolved.version)

    async def UpdateScript(
        self, request: catalogue_pb2.UpdateScriptRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        row = await self._catalogue.update_script(
            request.script, list(request.update_mask.paths), actor=current_principal().name
        )
        return script_to_proto(row, await self._catalogue.latest_version(row))

    async def DeleteScript(
        self, request: catalogue_pb2.DeleteScriptRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        principal = current_principal()
        if request.force:
            require(principal, "script:manage")
        row = await self._catalogue.delete_script(
            request.name, force=request.force, actor=principal.name
        )
        return script_to_proto(row, await self._catalogue.latest_version(row))

    async def RestoreScript(
        self, request: catalogue_pb2.RestoreScriptRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        row = await self._catalogue.restore_script(request.name, actor=current_principal().name)
        return script_to_proto(row, await self._catalogue.latest_version(row))

    async def DeprecateVersion(
        self, request: catalogue_pb2.DeprecateVersionRequest, context: Ctx
    ) -> catalogue_pb2.ScriptVersion:
        return await self._set_state(request, catalogue_pb2.VERSION_STATE_DEPRECATED)

    async def YankVersion(
        self, request: catalogue_pb2.YankVersionRequest, context: Ctx
    ) -> catalogue_pb2.ScriptVersion:
        return await self._set_state(request, catalogue_pb2.VERSION_STATE_YANKED)

    async def _set_state(
        self,
        request: catalogue_pb2.DeprecateVersionRequest | catalogue_pb2.YankVersionRequest,
        state: catalogue_pb2.VersionState,
    ) -> catalogue_pb2.ScriptVersion:
        resolved = await self._catalogue.set_version_state(
            request.script_name,
            request.version,
            state,
            request.reason,
            actor=current_principal().name,
        )
        return version_to_proto(resolved.script, resolved.version)

    async def ListAuditRecords(
        self, request: catalogue_pb2.ListAuditRecordsRequest, context: Ctx
    ) -> catalogue_pb2.ListAuditRecordsResponse:
        rows, token = await self._catalogue.list_audit(
            request.script_name, request.page_size, request.page_token
        )
        return catalogue_pb2.ListAuditRecordsResponse(
            records=[
                catalogue_pb2.AuditRecord(
                    id=str(r.id),
                    actor=r.actor,
                    action=r.action,
                    script_name=r.script_name,
                    version=r.version,
                    before_digest=r.before_digest,
                    after_digest=r.after_digest,
                    time=_ts(r.created_at),
                )
                for r in rows
            ],
            next_page_token=token,
        )

    async def GetContent(
        self, request: catalogue_pb2.GetContentRequest, context: Ctx
    ) -> AsyncIterator[catalogue_pb2.GetContentResponse]:
        row, content = await self._catalogue.content(
            request.script_name, request.version, request.sha256
        )
        first = True
        async for chunk in self._catalogue.chunks(content, self._chunk):
            if first:
                yield catalogue_pb2.GetContentResponse(
                    sha256=row.sha256, size_bytes=row.size_bytes, chunk=chunk
                )
                first = False
            else:
                yield catalogue_pb2.GetContentResponse(chunk=chunk)

    async def ValidateParameters(
        self, request: catalogue_pb2.ValidateParametersRequest, context: Ctx
    ) -> catalogue_pb2.ValidateParametersResponse:
        resolved = await self._catalogue.resolve(request.ref)
        validated = parameter_set(resolved).validate(json_format.MessageToDict(request.values))
        values = struct_pb2.Struct()
        values.update(validated.values)
        return catalogue_pb2.ValidateParametersResponse(
            version=version_to_proto(resolved.script, resolved.version),
            values=values,
            secret_names=sorted(validated.secrets),
        )

    async def GetParameterSchema(
        self, request: catalogue_pb2.GetParameterSchemaRequest, context: Ctx
    ) -> catalogue_pb2.GetParameterSchemaResponse:
        resolved = await self._catalogue.resolve(request.ref)
        name, version = resolved.script.name, resolved.version.version
        schema = struct_pb2.Struct()
        schema.update(
            parameter_set(resolved).json_schema(
                title=f"{name}@{version}", schema_id=f"urn:runbox:script:{name}:{version}"
            )
        )
        return catalogue_pb2.GetParameterSchemaResponse(schema=schema, version=version)

    async def ListTemplates(
        self, request: catalogue_pb2.ListTemplatesRequest, context: Ctx
    ) -> catalogue_pb2.ListTemplatesResponse:
        rows, token = await self._catalogue.list_scripts(
            catalogue_pb2.ListScriptsRequest(
                templates_only=True, page_size=request.page_size, page_token=request.page_token
            )
        )
        out = catalogue_pb2.ListTemplatesResponse(next_page_token=token)
        for row in rows:
            script = script_to_proto(row, row.latest_version)
            if row.latest_version:
                script.placeholders.extend(await self._placeholders(row.name, row.latest_version))
            out.templates.append(script)
        return out

    async def _placeholders(self, name: str, version: str) -> list[str]:
        """A template version's placeholders; its content is read (and verified) only the
        first time a digest is seen."""
        sha256 = (await self._catalogue.get_version(name, version)).version.sha256
        known = templates.known_placeholders(sha256)
        if known is not None:
            return known
        _, content = await self._catalogue.content(name, version, sha256)
        return templates.placeholders(sha256, content)

    async def InstantiateTemplate(
        self, request: catalogue_pb2.InstantiateTemplateRequest, context: Ctx
    ) -> catalogue_pb2.Script:
        if not request.template_name:
            raise InvalidArgument.field("template_name", "required")
        template = await self._catalogue.get_script(request.template_name)
        if not template.is_template:
            raise InvalidArgument.field(
                "template_name", f"{template.name!r} is a script, not a template"
            )
        resolved = await self._catalogue.resolve(common_pb2.ScriptRef(name=template.name))
        source = resolved.version
        label = f"template {template.name}@{source.version}"
        _, content = await self._catalogue.content(template.name, source.version, source.sha256)
        rendered = templates.render(label, source.sha256, content, dict(request.placeholders))
        script = templates.instance_script(script_to_proto(template), request)
        publish = catalogue_pb2.PublishVersionRequest(
            script_name=request.name,
            version="1.0.0",
            content=rendered,
            # Definitions as stored: secret defaults travel to the new script, never to callers.
            parameters=parameters.load_definitions(source.parameters),
            changelog=f"created from {label}",
        )
        row, _ = await self._catalogue.create_with_version(
            script, publish, actor=current_principal().name, idempotency_key=request.idempotency_key
        )
        return script_to_proto(row, row.latest_version)

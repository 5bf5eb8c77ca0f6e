"""Catalogue domain: scripts and their immutable versions. No gRPC here."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.catalogue import parameters, versions
from services.catalogue.blobs import BlobStore
from services.catalogue.models import ScriptRow, VersionRow
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from shared.outbox import Outbox

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
VS = catalogue_pb2.VersionState


@dataclass
class Resolved:
    """A script with one of its versions."""

    script: ScriptRow
    version: VersionRow


class Catalogue:
    """Scripts, versions and content, backed by SQL and a blob store."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        outbox: Outbox,
        *,
        subjects_prefix: str,
        max_content_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._blobs = blobs
        self._outbox = outbox
        self._prefix = subjects_prefix
        self._max_content = max_content_bytes

    async def create_script(
        self, script: catalogue_pb2.Script, *, actor: str, idempotency_key: str = ""
    ) -> ScriptRow:
        """Register a script; a repeated idempotency key returns the first one."""
        existing = await self._by_idempotency_key(idempotency_key)
        if existing is not None:
            return existing
        _check_script(script)
        now = datetime.now(UTC)
        row = ScriptRow(
            name=script.name,
            description=script.description,
            tags=sorted(set(script.tags)),
            owner=script.owner or actor,
            execution_type=script.execution_type,
            config=_to_dict(script.config),
            default_limits=_to_dict(script.default_limits),
            default_retry=_to_dict(script.default_retry),
            isolation=script.isolation,
            runtime=script.runtime,
            is_template=script.is_template,
            idempotency_key=idempotency_key or None,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
                await session.flush()
                await self._event(
                    session,
                    events_pb2.SCRIPT_EVENT_TYPE_CREATED,
                    row.name,
                    "",
                    "",
                    actor,
                    f"{row.name}:created",
                )
        except IntegrityError:
            winner = await self._by_idempotency_key(idempotency_key)
            if winner is not None:
                return winner
            raise AlreadyExists(f"script {script.name!r} already exists") from None
        self._outbox.notify()
        return row

    async def _by_idempotency_key(self, key: str) -> ScriptRow | None:
        if not key:
            return None
        async with self._sessions() as session:
            return await session.scalar(select(ScriptRow).where(ScriptRow.idempotency_key == key))

    async def get_script(self, name: str, *, include_deleted: bool = False) -> ScriptRow:
        async with self._sessions() as session:
            return await _script(session, name, include_deleted=include_deleted)

    async def latest_version(self, script: ScriptRow) -> str:
        """Highest stable non-yanked version of a script, or ""."""
        return (await self.latest_versions([script]))[script.id]

    async def latest_versions(self, scripts: list[ScriptRow]) -> dict[int, str]:
        """Latest version of each script (by id), in one query."""
        found: dict[int, list[str]] = {s.id: [] for s in scripts}
        if not found:
            return {}
        query = select(VersionRow.script_id, VersionRow.version).where(
            VersionRow.script_id.in_(found), VersionRow.state != VS.VERSION_STATE_YANKED
        )
        async with self._sessions() as session:
            for script_id, version in (await session.execute(query)).all():
                found[script_id].append(version)
        return {sid: versions.best_match("latest", vs) or "" for sid, vs in found.items()}

    async def list_scripts(
        self, request: catalogue_pb2.ListScriptsRequest
    ) -> tuple[list[ScriptRow], str]:
        """Scripts by name, with a cursor that is stable under inserts."""
        size = _page_size(request.page_size)
        query = select(ScriptRow).where(ScriptRow.deleted_at.is_(None)).order_by(ScriptRow.name)
        if request.name_prefix:
            query = query.where(ScriptRow.name.startswith(request.name_prefix, autoescape=True))
        if request.execution_type:
            query = query.where(ScriptRow.execution_type == request.execution_type)
        if request.owner:
            query = query.where(ScriptRow.owner == request.owner)
        if request.page_token:
            query = query.where(ScriptRow.name > _decode_token(request.page_token))
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        token = _encode_token(rows[size - 1].name) if len(rows) > size else ""
        return rows[:size], token

    async def publish_version(
        self, request: catalogue_pb2.PublishVersionRequest, *, actor: str
    ) -> tuple[ScriptRow, VersionRow]:
        """Store content by digest and record an immutable version."""
        parsed = versions.parse(request.version)
        if not request.content:
            raise InvalidArgument.field("content", "content is empty")
        if len(request.content) > self._max_content:
            raise InvalidArgument.field(
                "content",
                f"content is {len(request.content)} bytes; the limit is {self._max_content} bytes",
            )
        digest = hashlib.sha256(request.content).hexdigest()
        if request.sha256 and request.sha256.lower() != digest:
            raise InvalidArgument.field(
                "sha256", f"does not match the content (content digest is {digest})"
            )
        stored_params = parameters.check_definitions(list(request.parameters))
        async with self._sessions() as session:
            script = await _script(session, request.script_name)
            if await _version(session, script.id, str(parsed)) is not None:
                raise AlreadyExists(
                    f"version {parsed} of {script.name!r} already exists; versions are immutable"
                )
        await self._blobs.put(request.content)
        row = VersionRow(
            script_id=script.id,
            version=str(parsed),
            major=parsed.major,
            minor=parsed.minor,
            patch=parsed.patch,
            prerelease=parsed.prerelease or "",
            sha256=digest,
            size_bytes=len(request.content),
            parameters=stored_params,
            state=VS.VERSION_STATE_ACTIVE,
            changelog=request.changelog,
            created_by=actor,
            created_at=datetime.now(UTC),
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
                await session.flush()
                await self._event(
                    session,
                    events_pb2.SCRIPT_EVENT_TYPE_VERSION_PUBLISHED,
                    script.name,
                    row.version,
                    digest,
                    actor,
                    f"{script.name}:{row.version}:published",
                )
        except IntegrityError:
            raise AlreadyExists(f"version {parsed} of {script.name!r} already exists") from None
        self._outbox.notify()
        return script, row

    async def get_version(self, name: str, version: str) -> Resolved:
        """One exact version (yanked ones included: existing runs keep them)."""
        versions.parse(version)
        async with self._sessions() as session:
            script = await _script(session, name)
            row = await _version(session, script.id, version)
        if row is None:
            raise NotFound("version", f"{name}@{version}")
        return Resolved(script, row)

    async def list_versions(
        self, request: catalogue_pb2.ListVersionsRequest
    ) -> tuple[ScriptRow, list[VersionRow], str]:
        """Versions newest first (semver precedence), paged by the last version seen."""
        size = _page_size(request.page_size)
        after = _decode_token(request.page_token) if request.page_token else None
        async with self._sessions() as session:
            script = await _script(session, request.script_name)
            rows = await _versions(session, script.id)
        keyed = sorted(((versions.sort_key(r.version), r.version, r) for r in rows), reverse=True)
        if after is not None:
            cursor = (versions.parse(after, "page_token"), after)
            keyed = [k for k in keyed if (k[0], k[1]) < cursor]
        page = [
            r for _, _, r in keyed if request.include_yanked or r.state != VS.VERSION_STATE_YANKED
        ]
        token = _encode_token(page[size - 1].version) if len(page) > size else ""
        return script, page[:size], token

    async def resolve(self, ref: common_pb2.ScriptRef) -> Resolved:
        """Resolve exact / latest / range to one non-yanked version."""
        if not ref.name:
            raise InvalidArgument.field("ref.name", "script name is required")
        versions.parse_selector(ref.version, "ref.version")
        async with self._sessions() as session:
            script = await _script(session, ref.name)
            rows = [
                r for r in await _versions(session, script.id) if r.state != VS.VERSION_STATE_YANKED
            ]
        chosen = versions.best_match(ref.version, [r.version for r in rows], "ref.version")
        if chosen is None:
            raise NotFound("version", f"{ref.name}@{ref.version or 'latest'}")
        return Resolved(script, next(r for r in rows if r.version == chosen))

    async def content(
        self, name: str, version: str, expected_sha256: str = ""
    ) -> tuple[VersionRow, bytes]:
        """A version's content, verified against its recorded digest."""
        resolved = await self.get_version(name, version)
        row = resolved.version
        if expected_sha256 and expected_sha256.lower() != row.sha256:
            raise FailedPrecondition(
                f"{name}@{version} has sha256 {row.sha256}, not the expected {expected_sha256}"
            )
        return row, await self._blobs.get(row.sha256)

    async def chunks(self, content: bytes, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(content), size):
            yield content[start : start + size]

    async def _event(
        self,
        session: AsyncSession,
        kind: events_pb2.ScriptEventType,
        name: str,
        version: str,
        sha256: str,
        actor: str,
        msg_id: str,
    ) -> None:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.ScriptEvent(
            event_id=msg_id,
            type=kind,
            script_name=name,
            version=version,
            sha256=sha256,
            actor=actor,
            occurred_at=now,  # type: ignore[arg-type]
        )
        await self._outbox.add(
            session,
            subject=f"{self._prefix}.script.{name}",
            msg_id=msg_id,
            payload=event.SerializeToString(),
        )


def _check_script(script: catalogue_pb2.Script) -> None:
    problems = []
    if not NAME.match(script.name):
        problems.append(("script.name", f"{script.name!r} must match {NAME.pattern}"))
    if script.execution_type == common_pb2.EXECUTION_TYPE_UNSPECIFIED:
        problems.append(("script.execution_type", "execution type is required"))
    elif script.execution_type not in common_pb2.ExecutionType.values():
        problems.append(
            ("script.execution_type", f"unknown execution type {script.execution_type}")
        )
    if problems:
        raise InvalidArgument("invalid script", [FieldViolation(f, d) for f, d in problems])


async def _script(session: AsyncSession, name: str, *, include_deleted: bool = False) -> ScriptRow:
    if not name:
        raise InvalidArgument.field("name", "script name is required")
    row = await session.scalar(select(ScriptRow).where(ScriptRow.name == name))
    if row is None or (row.deleted_at is not None and not include_deleted):
        raise NotFound("script", name)
    return row


async def _versions(session: AsyncSession, script_id: int) -> list[VersionRow]:
    return list(
        (await session.scalars(select(VersionRow).where(VersionRow.script_id == script_id))).all()
    )


async def _version(session: AsyncSession, script_id: int, version: str) -> VersionRow | None:
    return await session.scalar(
        select(VersionRow).where(VersionRow.script_id == script_id, VersionRow.version == version)
    )


def _to_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or 50, 500)


def _encode_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None

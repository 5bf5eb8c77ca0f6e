"""Catalogue domain: scripts and their immutable versions. No gRPC here."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache
from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.catalogue import versions
from services.catalogue.blobs import BlobStore
from services.catalogue.models import AuditRow, ScriptRow, ScriptTagRow, VersionRow
from shared import parameters
from shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from shared.outbox import Outbox
from shared.script_notes import Announcer

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TAG = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,62}$")
MAX_TAGS = 32
# Tag filters matching fewer scripts than this read the matches and sort them;
# more common tags walk scripts in page order (see _filtered).
TAG_SHAPE_THRESHOLD = 2000
VS = catalogue_pb2.VersionState
ORDER = catalogue_pb2.ScriptOrder
# Script fields UpdateScript may change; the rest are fixed at creation.
MUTABLE = (
    "description",
    "tags",
    "owner",
    "config",
    "default_limits",
    "default_retry",
    "isolation",
    "runtime",
)
IMMUTABLE = ("name", "execution_type", "is_template")
# Returns the names of active schedules that reference a script.
ScheduleLookup = Callable[[str], Awaitable[list[str]]]


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
        schedules: ScheduleLookup | None = None,
        cache_ttl_s: float = 30.0,
        cache_entries: int = 10_000,
        announcer: Announcer | None = None,
    ) -> None:
        self._schedules = schedules
        self.announcer = announcer
        # Resolution cache: script name -> (script, its non-yanked versions). Dropped
        # on this replica's own writes at once and on other replicas' ScriptEvents
        # (see invalidate); the TTL bounds staleness if an event is missed.
        self._cache: TTLCache[str, tuple[ScriptRow, list[VersionRow]]] | None = (
            TTLCache(maxsize=cache_entries, ttl=cache_ttl_s) if cache_ttl_s > 0 else None
        )
        self._tag_counts: TTLCache[tuple[str, ...], int] = TTLCache(maxsize=1000, ttl=60)
        # Bumped by every invalidation: a read that raced with one is not cached.
        self._generation = 0
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
        row = _new_script_row(script, actor, idempotency_key)
        try:
            async with self._sessions() as session, session.begin():
                await self._insert_script(session, row, actor)
        except IntegrityError:
            winner = await self._by_idempotency_key(idempotency_key)
            if winner is not None:
                return winner
            raise AlreadyExists(f"script {script.name!r} already exists") from None
        await self._changed(row.name)
        return row

    async def _insert_script(self, session: AsyncSession, row: ScriptRow, actor: str) -> None:
        """Add a new script with its tags, audit record and event, in the caller's transaction."""
        session.add(row)
        await session.flush()
        session.add_all(ScriptTagRow(script_id=row.id, tag=t) for t in row.tags)
        await self._record(
            session, actor, "script.create", row.name, before="", after=_digest_script(row)
        )
        await self._event(
            session,
            events_pb2.SCRIPT_EVENT_TYPE_CREATED,
            row.name,
            "",
            "",
            actor,
            f"{row.name}:created",
        )

    async def create_with_version(
        self,
        script: catalogue_pb2.Script,
        request: catalogue_pb2.PublishVersionRequest,
        *,
        actor: str,
        idempotency_key: str = "",
    ) -> tuple[ScriptRow, VersionRow]:
        """A new script and its first version in one transaction: both or neither."""
        existing = await self._by_idempotency_key(idempotency_key)
        if existing is not None:
            async with self._sessions() as session:
                first = await session.scalar(
                    select(VersionRow).where(VersionRow.script_id == existing.id).limit(1)
                )
            if first is not None:
                return existing, first
        row = _new_script_row(script, actor, idempotency_key)
        version = self._new_version_row(request, actor)
        await self._blobs.put(request.content)
        try:
            async with self._sessions() as session, session.begin():
                await self._insert_script(session, row, actor)
                version.script_id = row.id
                await self._insert_version(session, row, version, actor)
        except IntegrityError:
            raise AlreadyExists(f"script {script.name!r} already exists") from None
        await self._changed(row.name)
        return row, version

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
        return script.latest_version

    async def latest_versions(self, scripts: list[ScriptRow]) -> dict[int, str]:
        """Latest version of each script (by id); kept on the script row at write time."""
        return {s.id: s.latest_version for s in scripts}

    async def list_scripts(
        self, request: catalogue_pb2.ListScriptsRequest
    ) -> tuple[list[ScriptRow], str]:
        """Search scripts; the page token is a keyset cursor, stable under inserts."""
        size = _page_size(request.page_size)
        order = request.order_by or ORDER.SCRIPT_ORDER_NAME
        if order not in ORDER.values():
            raise InvalidArgument.field("order_by", f"unknown order {order}")
        if (
            request.execution_type
            and request.execution_type not in common_pb2.ExecutionType.values()
        ):
            raise InvalidArgument.field(
                "execution_type", f"unknown execution type {request.execution_type}"
            )
        fingerprint = _filter_fingerprint(request, order)
        common_tags = await self._tags_are_common(request)
        query = _filtered(
            select(ScriptRow).where(ScriptRow.deleted_at.is_(None)),
            request,
            common_tags=common_tags,
        )
        key = _decode_cursor(request.page_token, fingerprint) if request.page_token else None
        if order == ORDER.SCRIPT_ORDER_NAME:
            query = query.order_by(ScriptRow.name)
            if key is not None:
                query = query.where(ScriptRow.name > str(key))
        elif order == ORDER.SCRIPT_ORDER_CREATE_TIME_DESC:
            # Ids grow with creation, so newest first is id descending.
            query = query.order_by(ScriptRow.id.desc())
            if key is not None:
                query = query.where(ScriptRow.id < int(key))
        else:
            query = query.order_by(ScriptRow.updated_at.desc(), ScriptRow.id.desc())
            if key is not None:
                when, last_id = _cursor_time_id(key)
                query = query.where(
                    or_(
                        ScriptRow.updated_at < when,
                        (ScriptRow.updated_at == when) & (ScriptRow.id < last_id),
                    )
                )
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            cursor: Any
            if order == ORDER.SCRIPT_ORDER_NAME:
                cursor = last.name
            elif order == ORDER.SCRIPT_ORDER_CREATE_TIME_DESC:
                cursor = last.id
            else:
                cursor = [_aware(last.updated_at).isoformat(), last.id]
            token = _encode_cursor(cursor, fingerprint)
        return rows[:size], token

    async def update_script(
        self, script: catalogue_pb2.Script, paths: list[str], *, actor: str
    ) -> ScriptRow:
        """Change mutable metadata; an empty mask means every mutable field."""
        unknown = [p for p in paths if p not in MUTABLE and p not in IMMUTABLE]
        fixed = [p for p in paths if p in IMMUTABLE]
        problems = [
            FieldViolation(f"update_mask.paths[{paths.index(p)}]", f"unknown field {p!r}")
            for p in unknown
        ] + [
            FieldViolation(
                f"update_mask.paths[{paths.index(p)}]",
                f"{p} cannot be changed after creation",
            )
            for p in fixed
        ]
        if problems:
            raise InvalidArgument("invalid update mask", problems)
        fields = paths or list(MUTABLE)
        if "tags" in fields and (tag_problems := _tag_problems(script.tags, "script.tags")):
            raise InvalidArgument("invalid tags", tag_problems)
        if "default_retry" in fields and (
            retry := retry_problems(script.default_retry, "script.default_retry")
        ):
            raise InvalidArgument("invalid retry policy", retry)
        async with self._sessions() as session, session.begin():
            row = await _script(session, script.name)
            before = _digest_script(row)
            for f in fields:
                if f == "tags":
                    row.tags = sorted(set(script.tags))
                    await session.execute(
                        delete(ScriptTagRow).where(ScriptTagRow.script_id == row.id)
                    )
                    session.add_all(ScriptTagRow(script_id=row.id, tag=t) for t in row.tags)
                elif f in ("config", "default_limits", "default_retry"):
                    setattr(row, f, _to_dict(getattr(script, f)))
                elif f == "owner":
                    row.owner = script.owner or row.owner
                else:
                    setattr(row, f, getattr(script, f))
            after = _digest_script(row)
            if after == before:
                return row
            row.updated_at = datetime.now(UTC)
            audit = await self._record(
                session, actor, "script.update", row.name, before=before, after=after
            )
            await self._event(
                session,
                events_pb2.SCRIPT_EVENT_TYPE_UPDATED,
                row.name,
                "",
                "",
                actor,
                f"{row.name}:updated:{audit.id}",
            )
        await self._changed(row.name)
        return row

    async def delete_script(self, name: str, *, force: bool, actor: str) -> ScriptRow:
        """Soft delete: hidden from listing and resolution until restored.

        Refused while active schedules reference the script, unless forced."""
        async with self._sessions() as session:
            row = await _script(session, name)
        if not force and self._schedules is not None:
            referencing = await self._schedules(name)
            if referencing:
                raise FailedPrecondition(
                    f"script {name!r} is used by {len(referencing)} active schedule(s): "
                    f"{', '.join(referencing[:20])}; delete or pause them, or force",
                    [FieldViolation(f"schedule:{s}", "references the script") for s in referencing],
                )
        async with self._sessions() as session, session.begin():
            row = await _script(session, name)
            before = _digest_script(row)
            row.deleted_at = row.updated_at = datetime.now(UTC)
            audit = await self._record(
                session,
                actor,
                "script.delete.forced" if force else "script.delete",
                name,
                before=before,
                after=_digest_script(row),
            )
            await self._event(
                session,
                events_pb2.SCRIPT_EVENT_TYPE_DELETED,
                name,
                "",
                "",
                actor,
                f"{name}:deleted:{audit.id}",
            )
        await self._changed(name)
        return row

    async def restore_script(self, name: str, *, actor: str) -> ScriptRow:
        """Undo a soft delete."""
        async with self._sessions() as session, session.begin():
            row = await _script(session, name, include_deleted=True)
            if row.deleted_at is None:
                raise FailedPrecondition(f"script {name!r} is not deleted")
            before = _digest_script(row)
            row.deleted_at = None
            row.updated_at = datetime.now(UTC)
            audit = await self._record(
                session, actor, "script.restore", name, before=before, after=_digest_script(row)
            )
            await self._event(
                session,
                events_pb2.SCRIPT_EVENT_TYPE_RESTORED,
                name,
                "",
                "",
                actor,
                f"{name}:restored:{audit.id}",
            )
        await self._changed(name)
        return row

    async def set_version_state(
        self, name: str, version: str, state: int, reason: str, *, actor: str
    ) -> Resolved:
        """Deprecate or yank a version. Yanked is final; repeating a change is a no-op."""
        versions.parse(version)
        if len(reason) > 1000:
            raise InvalidArgument.field("reason", "at most 1000 characters")
        if state == VS.VERSION_STATE_DEPRECATED:
            action, kind = "version.deprecate", events_pb2.SCRIPT_EVENT_TYPE_VERSION_DEPRECATED
        else:
            action, kind = "version.yank", events_pb2.SCRIPT_EVENT_TYPE_VERSION_YANKED
        async with self._sessions() as session, session.begin():
            script = await _script(session, name, for_update=True)
            row = await _version(session, script.id, version)
            if row is None:
                raise NotFound("version", f"{name}@{version}")
            if row.state == state:
                return Resolved(script, row)
            if row.state == VS.VERSION_STATE_YANKED:
                raise FailedPrecondition(f"{name}@{version} is yanked; yanking is final")
            before = _digest_version(row)
            row.state = state
            row.state_reason = reason
            await session.flush()
            await _refresh_latest(session, script)
            await self._record(
                session,
                actor,
                action,
                name,
                version=version,
                before=before,
                after=_digest_version(row),
            )
            await self._event(
                session,
                kind,
                name,
                version,
                row.sha256,
                actor,
                f"{name}:{version}:{action.split('.')[1]}",
            )
        await self._changed(name)
        return Resolved(script, row)

    async def list_audit(
        self, script_name: str, page_size: int, page_token: str
    ) -> tuple[list[AuditRow], str]:
        """Audit records, newest first, optionally of one script (deleted ones too)."""
        size = _page_size(page_size)
        fingerprint = hashlib.sha256(f"audit:{script_name}".encode()).hexdigest()[:12]
        query = select(AuditRow).order_by(AuditRow.id.desc())
        if script_name:
            query = query.where(AuditRow.script_name == script_name)
        if page_token:
            query = query.where(AuditRow.id < int(_decode_cursor(page_token, fingerprint)))
        async with self._sessions() as session:
            rows = list((await session.scalars(query.limit(size + 1))).all())
        token = _encode_cursor(rows[size - 1].id, fingerprint) if len(rows) > size else ""
        return rows[:size], token

    async def _tags_are_common(self, request: catalogue_pb2.ListScriptsRequest) -> bool:
        """Whether every tag filter matches at least TAG_SHAPE_THRESHOLD scripts.

        Counts are cached for a minute: they only choose a query shape, and
        both shapes return the same rows."""
        groups: list[tuple[str, ...]] = [(t,) for t in sorted(set(request.tags_all))]
        if request.tags_any:
            groups.append(tuple(sorted(set(request.tags_any))))
        for tags in groups:
            matches = self._tag_counts.get(tags)
            if matches is None:
                async with self._sessions() as session:
                    matches = await _tag_matches(session, list(tags))
                self._tag_counts[tags] = matches
            if matches < TAG_SHAPE_THRESHOLD:
                return False
        return bool(groups)

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached resolution of one script (or of all)."""
        if self._cache is None:
            return
        self._generation += 1
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)

    async def _changed(self, name: str) -> None:
        """After a committed change, before answering it: drop the cache entry, wake the
        outbox relay, and announce it (a change note flushed to NATS: readers that cache
        this script's answers drop them before they serve a request that follows this
        answer; shared/script_notes.py)."""
        self.invalidate(name)
        self._outbox.notify()
        if self.announcer is not None:
            await self.announcer.announce(name)

    async def _record(
        self,
        session: AsyncSession,
        actor: str,
        action: str,
        script_name: str,
        *,
        before: str,
        after: str,
        version: str = "",
    ) -> AuditRow:
        """Write an audit record in the caller's transaction."""
        row = AuditRow(
            actor=actor,
            action=action,
            script_name=script_name,
            version=version,
            before_digest=before,
            after_digest=after,
            created_at=datetime.now(UTC),
        )
        session.add(row)
        await session.flush()
        return row

    async def publish_version(
        self, request: catalogue_pb2.PublishVersionRequest, *, actor: str
    ) -> tuple[ScriptRow, VersionRow]:
        """Store content by digest and record an immutable version."""
        row = self._new_version_row(request, actor)
        async with self._sessions() as session:
            script = await _script(session, request.script_name)
            if await _version(session, script.id, row.version) is not None:
                raise AlreadyExists(
                    f"version {row.version} of {script.name!r} already exists; "
                    "versions are immutable"
                )
        row.script_id = script.id
        await self._blobs.put(request.content)
        try:
            async with self._sessions() as session, session.begin():
                # Serialise publishes of one script (row lock where the dialect has them).
                script = await _script(session, request.script_name, for_update=True)
                await self._insert_version(session, script, row, actor)
        except IntegrityError:
            # The rollback expired `script`: name it from the request.
            raise AlreadyExists(
                f"version {row.version} of {request.script_name!r} already exists"
            ) from None
        await self._changed(script.name)
        return script, row

    def _new_version_row(
        self, request: catalogue_pb2.PublishVersionRequest, actor: str
    ) -> VersionRow:
        """A checked, not yet stored version: semver, size limit, digest, parameter definitions."""
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
        return VersionRow(
            version=str(parsed),
            major=parsed.major,
            minor=parsed.minor,
            patch=parsed.patch,
            prerelease=parsed.prerelease or "",
            sha256=digest,
            size_bytes=len(request.content),
            parameters=parameters.check_definitions(list(request.parameters)),
            state=VS.VERSION_STATE_ACTIVE,
            changelog=request.changelog,
            created_by=actor,
            created_at=datetime.now(UTC),
        )

    async def _insert_version(
        self, session: AsyncSession, script: ScriptRow, row: VersionRow, actor: str
    ) -> None:
        """Add a version, refresh the script's latest, audit and publish, in one transaction."""
        session.add(row)
        await session.flush()
        await _refresh_latest(session, script)
        await self._record(
            session,
            actor,
            "version.publish",
            script.name,
            version=row.version,
            before="",
            after=_digest_version(row),
        )
        await self._event(
            session,
            events_pb2.SCRIPT_EVENT_TYPE_VERSION_PUBLISHED,
            script.name,
            row.version,
            row.sha256,
            actor,
            f"{script.name}:{row.version}:published",
        )

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
        cached = self._cache.get(ref.name) if self._cache is not None else None
        if cached is None:
            generation = self._generation
            # One round trip: the script with its resolvable versions (outer join).
            query = (
                select(ScriptRow, VersionRow)
                .outerjoin(
                    VersionRow,
                    (VersionRow.script_id == ScriptRow.id)
                    & (VersionRow.state != VS.VERSION_STATE_YANKED),
                )
                .where(ScriptRow.name == ref.name, ScriptRow.deleted_at.is_(None))
            )
            async with self._sessions() as session:
                pairs = (await session.execute(query)).all()
            if not pairs:
                raise NotFound("script", ref.name)
            script = pairs[0][0]
            rows = [v for _, v in pairs if v is not None]
            if self._cache is not None and generation == self._generation:
                self._cache[ref.name] = (script, rows)
        else:
            script, rows = cached
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


def name_problem(name: str) -> str | None:
    """Why a script name is unacceptable, precisely, or None."""
    if not name:
        return "a name is required"
    if "\x00" in name:
        return "must not contain NUL bytes"
    if "/" in name or "\\" in name:
        return "must not contain path separators"
    if name in (".", "..") or name.startswith("."):
        return "must not start with a dot"
    odd = [c for c in name if unicodedata.category(c) in ("Cf", "Cc", "Zl", "Zp")]
    if odd:
        return (
            "must not contain invisible or direction-changing characters "
            f"(found {', '.join(f'U+{ord(c):04X}' for c in odd[:5])})"
        )
    if not name.isascii():
        return "must be ASCII: lowercase letters, digits, '.', '_' and '-'"
    if len(name) > 63:
        return f"is {len(name)} characters; at most 63"
    if not NAME.match(name):
        return f"must match {NAME.pattern}"
    return None


def _tag_problems(tags: Any, field: str) -> list[FieldViolation]:
    problems = [
        FieldViolation(f"{field}[{i}]", f"{t!r} must match {TAG.pattern}")
        for i, t in enumerate(tags)
        if not TAG.match(t)
    ]
    if len(tags) > MAX_TAGS:
        problems.append(FieldViolation(field, f"{len(tags)} tags; at most {MAX_TAGS}"))
    return problems


def _new_script_row(script: catalogue_pb2.Script, actor: str, idempotency_key: str) -> ScriptRow:
    """A checked, not yet stored script row."""
    _check_script(script)
    now = datetime.now(UTC)
    return ScriptRow(
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


def retry_problems(retry: common_pb2.RetryPolicy, field: str) -> list[FieldViolation]:
    """NO_SANDBOX is not retryable: the executor has no sandbox until an operator gives it
    one, and 0.1.0 services cannot read a stored policy naming it (docs/upgrades.md)."""
    return [
        FieldViolation(
            f"{field}.retry_on[{i}]",
            "no_sandbox is not retryable: give the executor a Docker sandbox "
            "(or allow unsandboxed runs) instead",
        )
        for i, reason in enumerate(retry.retry_on)
        if reason == common_pb2.FAILURE_REASON_NO_SANDBOX
    ]


def _check_script(script: catalogue_pb2.Script) -> None:
    problems = []
    why = name_problem(script.name)
    if why:
        problems.append(FieldViolation("script.name", why))
    if script.execution_type == common_pb2.EXECUTION_TYPE_UNSPECIFIED:
        problems.append(FieldViolation("script.execution_type", "execution type is required"))
    elif script.execution_type not in common_pb2.ExecutionType.values():
        problems.append(
            FieldViolation(
                "script.execution_type", f"unknown execution type {script.execution_type}"
            )
        )
    problems += _tag_problems(script.tags, "script.tags")
    problems += retry_problems(script.default_retry, "script.default_retry")
    if len(script.description) > 10_000:
        problems.append(FieldViolation("script.description", "at most 10000 characters"))
    if problems:
        raise InvalidArgument("invalid script", problems)


def _filtered(
    query: Select[ScriptRow], request: catalogue_pb2.ListScriptsRequest, *, common_tags: bool
) -> Select[ScriptRow]:
    """Apply the filters. Tag filters take one of two shapes: for common tags a
    correlated EXISTS, so the database walks scripts in page order and stops at
    the page end; for rare tags an IN over the tag index, so it reads only the
    few matches and sorts them. Either shape is bounded (see TAG_SHAPE_THRESHOLD)."""
    if request.name_prefix:
        prefix = request.name_prefix
        # LIKE lets the name index narrow the scan; SQLite's LIKE ignores ASCII
        # case, so comparing the leading characters keeps the match exact everywhere.
        query = query.where(
            ScriptRow.name.startswith(prefix, autoescape=True),
            func.substr(ScriptRow.name, 1, len(prefix)) == prefix,
        )
    if request.execution_type:
        query = query.where(ScriptRow.execution_type == request.execution_type)
    if request.owner:
        query = query.where(ScriptRow.owner == request.owner)
    if request.templates_only:
        query = query.where(ScriptRow.is_template.is_(True))
    groups = [[t] for t in sorted(set(request.tags_all))]
    if request.tags_any:
        groups.append(sorted(set(request.tags_any)))
    for tags in groups:
        if common_tags:
            query = query.where(
                select(ScriptTagRow.script_id)
                .where(ScriptTagRow.script_id == ScriptRow.id, ScriptTagRow.tag.in_(tags))
                .exists()
            )
        else:
            query = query.where(
                ScriptRow.id.in_(select(ScriptTagRow.script_id).where(ScriptTagRow.tag.in_(tags)))
            )
    if request.text:
        needle = request.text.lower()
        query = query.where(
            or_(
                func.lower(ScriptRow.name).contains(needle, autoescape=True),
                func.lower(ScriptRow.description).contains(needle, autoescape=True),
            )
        )
    return query


async def _tag_matches(session: AsyncSession, tags: list[str]) -> int:
    """How many scripts carry any of the tags, counted up to TAG_SHAPE_THRESHOLD
    (a bounded index scan, so it stays cheap for common tags)."""
    bounded = (
        select(ScriptTagRow.script_id)
        .where(ScriptTagRow.tag.in_(tags))
        .limit(TAG_SHAPE_THRESHOLD)
        .subquery()
    )
    return (await session.scalar(select(func.count()).select_from(bounded))) or 0


def _filter_fingerprint(request: catalogue_pb2.ListScriptsRequest, order: int) -> str:
    """Ties a page token to the query that made it."""
    shape = [
        request.name_prefix,
        sorted(set(request.tags_all)),
        sorted(set(request.tags_any)),
        request.execution_type,
        request.owner,
        request.text,
        order,
        request.templates_only,
    ]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:12]


def _encode_cursor(key: Any, fingerprint: str) -> str:
    raw = json.dumps({"k": key, "f": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(token: str, fingerprint: str) -> Any:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        key, made_for = data["k"], data["f"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None
    if made_for != fingerprint:
        raise InvalidArgument.field(
            "page_token", "the page token belongs to a different query (filters or order changed)"
        )
    if not isinstance(key, str | int | list):
        raise InvalidArgument.field("page_token", "malformed page token")
    return key


def _cursor_time_id(key: Any) -> tuple[datetime, int]:
    try:
        when, last_id = key
        return datetime.fromisoformat(when), int(last_id)
    except (ValueError, TypeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _digest(state: dict[str, Any]) -> str:
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _digest_script(row: ScriptRow) -> str:
    """Digest of a script's canonical state (what audit before/after compare)."""
    return _digest(
        {
            "name": row.name,
            "description": row.description,
            "tags": row.tags,
            "owner": row.owner,
            "execution_type": row.execution_type,
            "config": row.config,
            "default_limits": row.default_limits,
            "default_retry": row.default_retry,
            "isolation": row.isolation,
            "runtime": row.runtime,
            "is_template": row.is_template,
            "deleted": row.deleted_at is not None,
        }
    )


def _digest_version(row: VersionRow) -> str:
    return _digest(
        {
            "version": row.version,
            "sha256": row.sha256,
            "parameters": row.parameters,
            "state": row.state,
            "state_reason": row.state_reason,
        }
    )


async def _script(
    session: AsyncSession, name: str, *, include_deleted: bool = False, for_update: bool = False
) -> ScriptRow:
    if not name:
        raise InvalidArgument.field("name", "script name is required")
    query = select(ScriptRow).where(ScriptRow.name == name)
    if for_update:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None or (row.deleted_at is not None and not include_deleted):
        raise NotFound("script", name)
    return row


async def _refresh_latest(session: AsyncSession, script: ScriptRow) -> None:
    """Recompute the script's latest version (highest stable, not yanked) in this transaction."""
    candidates = (
        await session.scalars(
            select(VersionRow.version).where(
                VersionRow.script_id == script.id,
                VersionRow.state != VS.VERSION_STATE_YANKED,
                VersionRow.prerelease == "",
            )
        )
    ).all()
    script.latest_version = versions.best_match("latest", candidates) or ""


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

"""The run lifecycle: submit (prepare, stage, commit), apply an executor's events, fail,
cancel, leases and their loss, with the secret values held until dispatch. Rows are read
and written through the run store (run_store.py), the scheduler's own events staged by
RunEvents (run_events.py), and whoever acts on a submit or a run's end is passed in as
listeners (run_listeners.py). No gRPC server code here; the catalogue is reached through a
small client."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableSequence, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler import handoff
from services.scheduler import state as sm
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.held_secrets import HeldSecrets
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import RunRow, run_record
from services.scheduler.retries import check_policy
from services.scheduler.run_events import RunEvents
from services.scheduler.run_listeners import RunListeners
from services.scheduler.run_store import (
    LEASED,
    RunStore,
    move_runs,
    repeated_proto_dict,
)
from services.scheduler.watch import Change, Dispatched, Watchers
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from shared.outbox import Outbox
from shared.telemetry import inject_context

RS = common_pb2.RunState


def _now() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    """A fresh run id."""
    return uuid.uuid4().hex


class Runs:
    """The run lifecycle."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: RunStore,
        events: RunEvents,
        catalogue: CatalogueClient,
        watchers: Watchers,
        metrics: SchedulerMetrics,
        *,
        lease_s: float,
        listeners: RunListeners | None = None,
    ) -> None:
        self._sessions = sessions
        self.store = store
        self.events = events
        self._outbox = events.outbox
        self.catalogue = catalogue
        self._watchers = watchers
        self._metrics = metrics
        self._core_applies = metrics.event_transactions.labels("core")
        self._orm_applies = metrics.event_transactions.labels("orm")
        self._finished: dict[int, Any] = {}  # run state -> its child of metrics.finished
        self._lease = timedelta(seconds=lease_s)
        self._listeners = listeners or RunListeners()
        # Run id -> monotonic time this replica last renewed its lease (renewals are throttled).
        self._renewed: dict[str, float] = {}
        self._secrets = HeldSecrets()

    @property
    def secrets(self) -> HeldSecrets:
        """The secret values of runs submitted here and not yet dispatched."""
        return self._secrets

    async def submit(
        self, request: scheduler_pb2.SubmitRunRequest, *, actor: str, run_id: str | None = None
    ) -> RunRow:
        """Validate through the catalogue and commit the run PENDING; the run as stored, a
        plain record (models.RunRecord). `run_id`: the new run's id, chosen by the caller
        (SubmitAndWatchRun watches it before the commit); a repeated idempotency key returns
        the existing run, whose id differs."""
        if request.idempotency_key:
            existing = await self.store.by_key(request.idempotency_key)
            if existing is not None:
                return _same_request(existing, request_digest(request, existing.secret_names))
        values, secrets = await self.prepare_values(request, actor=actor, run_id=run_id)
        return await self._insert(values, secrets, request.idempotency_key)

    async def _insert(self, values: dict[str, Any], secrets: dict[str, str], key: str) -> RunRow:
        """`commit_once` of `stage` for a run alone, in one Core transaction: the hand-off's
        claim check, the run and its SUBMITTED event; the run as stored (a record of
        `values`, which the claim may have completed)."""
        message = self.events.event_message(
            values, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted"
        )
        direct = handoff.current()

        def stage_in(conn: Connection) -> None:
            self._outbox.add_in(conn, [message])

        try:
            claimed = await self.store.insert(values, direct, stage_in)
        except IntegrityError:
            existing = await self.store.by_key(key) if key else None
            if existing is None:
                raise
            return _same_request(existing, values["request_sha256"])
        run = run_record(values)
        if claimed and direct is not None:
            direct.claimed = run.id
        self._outbox.committed([message])
        self.submitted(run, secrets, relay=False)
        return run

    async def commit_once(
        self,
        row: RunRow,
        secrets: dict[str, str],
        key: str,
        write: Callable[[AsyncSession], Awaitable[None]],
    ) -> RunRow:
        """Commit a new run with `write`; when a concurrent call with the same idempotency key
        committed first, its run (the unique key makes sure only one exists). The events
        `write` staged go to the relay from memory once committed (no read back)."""
        with self.events.collecting() as staged:
            try:
                async with self._sessions() as session, session.begin():
                    await write(session)
            except IntegrityError:
                existing = await self.store.by_key(key) if key else None
                if existing is None:
                    raise
                return _same_request(existing, row.request_sha256)
        self._outbox.committed(staged)
        self.submitted(row, secrets, relay=False)
        return row

    async def prepare(
        self, request: scheduler_pb2.SubmitRunRequest, *, actor: str, fresh: bool = True
    ) -> tuple[RunRow, dict[str, str]]:
        """Check a request through the catalogue and build its PENDING run, not yet stored,
        with the secret values it carries. SubmitRun and schedule fires share it, so a fired
        run is exactly the run its submission would have been; fires pass fresh=False to
        take the catalogue's answer from the client's cache (see catalogue.py)."""
        values, secrets = await self.prepare_values(request, actor=actor, fresh=fresh)
        return RunRow(**values), secrets

    async def prepare_values(
        self,
        request: scheduler_pb2.SubmitRunRequest,
        *,
        actor: str,
        fresh: bool = True,
        run_id: str | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """`prepare`'s run as the column values of its INSERT (every column, defaults filled
        in), without an ORM object: SubmitRun's path. `run_id`: its id (default: a new one)."""
        if not request.script.name:
            raise InvalidArgument.field("script.name", "script name is required")
        if request.priority < -1000 or request.priority > 1000:
            raise InvalidArgument.field("priority", "must be between -1000 and 1000")
        if request.HasField("retry"):
            check_policy(request.retry)
        checked = await self.catalogue.check(request.script, request.parameters, fresh=fresh)
        validated, script = checked.validated, checked.script
        version = validated.version
        secret_names = list(validated.secret_names)
        now = _now()
        values = new_run_values()
        values.update(
            id=run_id or new_run_id(),
            script_name=version.script_name,
            version_selector=request.script.version,
            script_version=version.version,
            sha256=version.sha256,
            execution_type=version.execution_type,
            state=RS.RUN_STATE_PENDING,
            parameters=json_format.MessageToDict(validated.values),
            secret_names=secret_names,
            config=repeated_proto_dict(script.config),
            priority=request.priority,
            labels=dict(request.labels),
            idempotency_key=request.idempotency_key or None,
            limits=self._limits(script, request),
            retry=repeated_proto_dict(
                request.retry if request.HasField("retry") else script.default_retry
            ),
            isolation=script.isolation,
            runtime=script.runtime,
            submitted_by=actor,
            trace_context=inject_context(),
            created_at=now,
            updated_at=now,
        )
        if request.idempotency_key:
            values["request_sha256"] = request_digest(request, secret_names)
        secrets: dict[str, str] = {}
        if secret_names:
            raw = json_format.MessageToDict(request.parameters)
            secrets = {n: _secret_text(raw.get(n)) for n in secret_names if n in raw}
        return values, secrets

    def submitted(self, row: RunRow, secrets: dict[str, str], *, relay: bool = True) -> None:
        """After the commit of a staged run: keep its secrets, relay its event (unless the
        caller handed the outbox what it committed), count it."""
        self.submitted_id(row.id, secrets, secret_names=row.secret_names, relay=relay)

    def submitted_id(
        self,
        run_id: str,
        secrets: dict[str, str],
        *,
        secret_names: Sequence[str] = (),
        relay: bool = True,
    ) -> None:
        """`submitted` by run id (for runs inserted without an ORM object)."""
        if secrets or secret_names:
            self._secrets.keep(run_id, secrets)
        if relay:
            self._outbox.notify()
        self._metrics.submitted.inc()
        self._listeners.submitted()

    @staticmethod
    def _limits(script: Any, request: scheduler_pb2.SubmitRunRequest) -> dict[str, Any]:
        limits = common_pb2.ResourceLimits()
        limits.CopyFrom(script.default_limits)
        if request.HasField("limits"):
            for field, value in request.limits.ListFields():
                getattr(limits, field.name).CopyFrom(value) if field.message_type else setattr(
                    limits, field.name, value
                )
        if request.HasField("timeout"):
            if request.timeout.ToTimedelta().total_seconds() <= 0:
                raise InvalidArgument.field("timeout", "must be positive")
            limits.timeout.CopyFrom(request.timeout)
        return repeated_proto_dict(limits)

    async def cancel_pending(self, run_id: str) -> RunRow | None:
        """Cancel a run no executor holds yet (SCHEDULED or PENDING); None if it is past."""
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id, with_for_update=True)
            if row is None:
                raise NotFound("run", run_id)
            if sm.is_terminal(row.state):
                raise FailedPrecondition(f"run {run_id} already ended ({RS.Name(row.state)})")
            if row.state not in (RS.RUN_STATE_PENDING, RS.RUN_STATE_SCHEDULED):
                return None
            self._finish(
                row,
                RS.RUN_STATE_CANCELLED,
                common_pb2.FAILURE_REASON_CANCELLED,
                "cancelled while pending",
            )
            await self.events.stage_event(
                session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "cancelled"
            )
            await self._ended(session, row)
        self._after_change(row)
        return row

    async def fail(self, run_id: str, reason: int, message: str) -> None:
        """End a run the scheduler cannot dispatch (invalid config, lost secrets)."""
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id, with_for_update=True)
            if row is None or sm.is_terminal(row.state):
                return
            self._finish(row, RS.RUN_STATE_FAILED, reason, message)
            await self.events.stage_event(
                session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "failed"
            )
            await self._ended(session, row)
        self._after_change(row)

    def _finish(self, row: RunRow, state: int, reason: int, message: str) -> None:
        row.state, row.failure_reason, row.exit_message = state, reason, message
        row.finished_at = row.updated_at = _now()
        self._secrets.drop(row.id)

    async def _ended(self, session: AsyncSession, row: RunRow) -> None:
        await self._ended_many(session, [row])

    async def _ended_many(self, session: AsyncSession, rows: Sequence[RunRow]) -> None:
        for row in rows:
            for hook in self._listeners.run_ended:
                await hook(session, row)
        for many in self._listeners.runs_ended:
            await many.runs_ended(session, rows)

    def _after_change(self, row: RunRow, *, relay: bool = True, own: bool = False) -> None:
        """After a commit that changed `row`: wake the relay (unless the caller knows nothing
        was staged) and the run's watchers, who get the row itself when `own` (the object is
        this commit's alone, so it shows exactly what was committed)."""
        if relay:
            self._outbox.notify()
        self._watchers.notify(Change(row.id, row=row if own else None))
        if sm.is_terminal(row.state):
            finished = self._finished.get(row.state)
            if finished is None:
                name = RS.Name(row.state).removeprefix("RUN_STATE_").lower()
                finished = self._finished[row.state] = self._metrics.finished.labels(name)
            finished.inc()

    async def mark_dispatched_many(
        self, accepted: Sequence[tuple[str, str, str]], release: Sequence[str] = ()
    ) -> None:
        """Record the executors that accepted runs ((run id, executor id, address) each) and
        move the runs to QUEUED unless events already moved them on, in one transaction
        (with the release of the round's runs held back, `release`: one write a round).
        Conditional UPDATEs that decide on each row's state as it is when written: the
        executor's own events may be applied meanwhile (on SQLite a read-then-write could put
        QUEUED back over them)."""
        if not accepted:
            await self.store.release(release)
            return
        by_executor: dict[tuple[str, str], list[str]] = {}
        for run_id, executor_id, address in accepted:
            by_executor.setdefault((executor_id, address), []).append(run_id)
        now, lease = _now(), self.lease_expiry()
        await self.store.mark_dispatched(by_executor, release, lease, now)
        for run_id, executor_id, address in accepted:
            self._secrets.drop(run_id)
            self._watchers.notify(
                Change(run_id, dispatched=Dispatched(executor_id, address, now, lease))
            )

    async def apply(self, event: events_pb2.RunEvent) -> bool:
        """Apply one lifecycle event; False when it changes nothing but the run's lease."""
        return (await self.apply_many([event]))[0]

    async def apply_many(self, events: Sequence[events_pb2.RunEvent]) -> Sequence[bool]:
        """Apply lifecycle events in order, those that move a run in one transaction (its
        runs locked in id order, so concurrent batches never deadlock on them); for each,
        False when it changed nothing but the run's lease. Log chunks and heartbeats of runs
        already held by an executor only renew the lease."""
        changed = [False] * len(events)
        moving: list[int] = []
        for i, event in enumerate(events):
            if event.type == events_pb2.RUN_EVENT_TYPE_LOG:
                await self.renew_lease(event.run_id)
                stream = "stdout" if event.log.stream == events_pb2.LOG_STREAM_STDOUT else "stderr"
                self._watchers.notify(Change(event.run_id, stream, event.log.data))
            elif event.type != events_pb2.RUN_EVENT_TYPE_HEARTBEAT or not await self.renew_lease(
                event.run_id
            ):
                moving.append(i)
        if not moving:
            return changed
        applied = await self.store.apply_moves(
            events, moving, self.lease_expiry(), self._listeners.plan_ends
        )
        if applied is None:  # a run's end needs the run-end hooks' ORM path
            self._orm_applies.inc()
            return await self._apply_orm(events, moving, changed)
        self._core_applies.inc()
        moved, ended, finished = applied
        for i in moved:
            changed[i] = True
        for row in finished:
            self._renewed.pop(row.id, None)
        for row in ended.values():
            self._after_change(row, relay=False, own=True)
        return changed

    async def _apply_orm(
        self,
        events: Sequence[events_pb2.RunEvent],
        moving: Sequence[int],
        changed: MutableSequence[bool],
    ) -> Sequence[bool]:
        """The events' transaction through the ORM, with the run-end hooks."""
        async with self._sessions() as session, session.begin():
            ids = sorted({events[i].run_id for i in moving})
            query = select(RunRow).where(RunRow.id.in_(ids)).order_by(RunRow.id).with_for_update()
            rows = {row.id: row for row in (await session.scalars(query)).all()}
            moved, ended, finished = move_runs(rows, events, moving, self.lease_expiry())
            for i in moved:
                changed[i] = True
            for row in finished:
                self._renewed.pop(row.id, None)
            if finished:
                await self._ended_many(session, finished)
        # Applying an executor's event stages nothing of the scheduler's own, unless a run's
        # end did (a retry, a dead letter): only then is there anything for the relay.
        if Outbox.staged_in(session):
            self._outbox.notify()
        for row in ended.values():
            self._after_change(row, relay=False, own=True)
        return changed

    # Leases: an executor's events keep a QUEUED or RUNNING run's lease; past it, it is LOST.

    def lease_expiry(self) -> datetime:
        return _now() + self._lease

    async def renew_lease(self, run_id: str) -> bool:
        """Extend a QUEUED or RUNNING run's lease; False when the run is in no such state.

        Cheap, for heartbeats and log chunks: one single-column UPDATE by primary key, no
        row read or lock (and the column is not indexed, so PostgreSQL updates in place),
        at most once per quarter lease per run on this replica (a skipped renewal shortens
        the lease by that much at most)."""
        now = time.monotonic()
        if now - self._renewed.get(run_id, -math.inf) < self._lease.total_seconds() / 4:
            return True
        async with self._sessions() as session, session.begin():
            result: Any = await session.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.state.in_(LEASED))
                .values(lease_expires_at=self.lease_expiry())
                .execution_options(synchronize_session=False)
            )
        if not result.rowcount:
            self._renewed.pop(run_id, None)
            return False
        if len(self._renewed) >= 100_000:  # runs that ended elsewhere (another replica)
            self._renewed.clear()
        self._renewed[run_id] = now
        return True

    async def lose_expired(self, now: datetime) -> RunRow | None:
        """End one run whose lease expired before `now` LOST, with its FINISHED event and
        the run-end hooks, in one transaction; None when there is none left.

        Safe with several replicas and racing events: a row another transaction holds is
        skipped (PostgreSQL, SKIP LOCKED), and the claim is an UPDATE conditional on the
        state and the lease, so a run that just ended or reported in is left alone."""
        async with self._sessions() as session, session.begin():
            run_id = await session.scalar(
                select(RunRow.id)
                .where(RunRow.state.in_(LEASED), RunRow.lease_expires_at < now)
                .order_by(RunRow.lease_expires_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if run_id is None:
                return None
            claimed: Any = await session.execute(
                update(RunRow)
                .where(
                    RunRow.id == run_id,
                    RunRow.state.in_(LEASED),
                    RunRow.lease_expires_at < now,
                )
                .values(state=RS.RUN_STATE_LOST)
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:
                return None
            row = await session.get(RunRow, run_id, populate_existing=True)
            assert row is not None
            holder = row.executor_id or row.executor_address or "unknown"
            expired = row.lease_expires_at.isoformat() if row.lease_expires_at else "?"
            self._finish(
                row,
                RS.RUN_STATE_LOST,
                common_pb2.FAILURE_REASON_LOST,
                f"executor {holder} stopped reporting on the run: its lease expired at {expired}",
            )
            await self.events.stage_event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "lost")
            await self._ended(session, row)
        self._renewed.pop(row.id, None)
        self._after_change(row)
        return row


def _column_defaults() -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """The runs table's Python-side defaults: (constant ones, (column, factory) of the
    others)."""
    constant: dict[str, Any] = {}
    made: list[tuple[str, Any]] = []
    for column in RunRow.__table__.columns:
        default: Any = column.default
        if default is None:
            constant[column.key] = None
        elif default.is_callable:
            made.append((column.key, default.arg))
        else:
            constant[column.key] = default.arg
    return constant, tuple(made)


_CONSTANT_DEFAULTS, _MADE_DEFAULTS = _column_defaults()


def new_run_values() -> dict[str, Any]:
    """Every column of a new run at its default (None where it has none)."""
    values = dict(_CONSTANT_DEFAULTS)
    for key, make in _MADE_DEFAULTS:
        values[key] = make(None)
    return values


def column_values(row: RunRow) -> dict[str, Any]:
    """Every column of a run not yet stored, its defaults filled in: what an INSERT without
    the ORM needs (fires insert their runs in bulk)."""
    values: dict[str, Any] = {}
    for column in RunRow.__table__.columns:
        value = getattr(row, column.key)
        if value is None and column.default is not None:
            default: Any = column.default
            value = default.arg(None) if default.is_callable else default.arg
        values[column.key] = value
    return values


def request_digest(request: scheduler_pb2.SubmitRunRequest, secret_names: Sequence[str]) -> str:
    """SHA-256 of a submit request as sent, without the values of its secret parameters (a
    digest of a short secret could be guessed back)."""
    copy = scheduler_pb2.SubmitRunRequest()
    copy.CopyFrom(request)
    for name in secret_names:
        if name in copy.parameters.fields:
            del copy.parameters.fields[name]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _same_request(existing: RunRow, digest: str) -> RunRow:
    """The run an idempotency key already names, if this request is the one that made it."""
    if existing.request_sha256 and digest and existing.request_sha256 != digest:
        raise FailedPrecondition(
            f"idempotency key {existing.idempotency_key!r} was used for a different request "
            f"(run {existing.id})",
            [FieldViolation("idempotency_key", "already used for a different request")],
        )
    return existing


def _secret_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


async def cancel_run(runs: Runs, executors: Mapping[str, Any], run_id: str, reason: str) -> RunRow:
    """Cancel a run: a PENDING one at once, a dispatched one through the executor holding it
    (the run ends when its FINISHED event arrives). CancelRun and a REPLACE schedule share it."""
    cancelled = await runs.cancel_pending(run_id)
    if cancelled is not None:
        return cancelled
    row = await runs.store.get(run_id)
    stub = executors.get(row.executor_address)
    if stub is None:
        raise FailedPrecondition(
            f"run {row.id} is held by an unknown executor {row.executor_address!r}"
        )
    await stub.Cancel(executor_pb2.CancelRequest(run_id=row.id, reason=reason))
    return await runs.store.get(run_id)

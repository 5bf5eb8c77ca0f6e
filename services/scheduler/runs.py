"""Runs: submit, read, list, cancel, and apply lifecycle events. No gRPC
server code here; the catalogue is reached through a small client."""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableSequence, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from google.protobuf import json_format, timestamp_pb2
from sqlalchemy import Table, bindparam, case, func, insert, select, update
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
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import QuarantineRow, RunRow
from services.scheduler.retries import check_policy
from services.scheduler.watch import Change, Watchers
from shared.db_transactions import Transactions, transactions_of
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from shared.outbox import Outbox, OutboxMessage
from shared.telemetry import inject_context

RS = common_pb2.RunState
# States in which an executor holds a run and its lease runs.
LEASED = (RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)
# Runs claimed per UPDATE statement (bounded IN lists).
CLAIM_CHUNK = 1000
RUNS = cast(Table, RunRow.__table__)
# The hot path's statements, built once (their cache keys are computed once, not per call).
_INSERT = insert(RUNS)
_BY_ID = select(RUNS).where(RUNS.c.id == bindparam("run_id"))
_BY_KEY = select(RUNS).where(RUNS.c.idempotency_key == bindparam("key"))
_BY_IDS = (
    select(RUNS)
    .where(RUNS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(RUNS.c.id)
    .with_for_update()
)
# The columns set are the parameters' other keys.
_UPDATE_BY_ID = update(RUNS).where(RUNS.c.id == bindparam("run_id_"))
_PENDING = RUNS.c.state == RS.RUN_STATE_PENDING
_NOW = bindparam("now", type_=RUNS.c.updated_at.type)
# The executor that accepted runs; QUEUED (and a lease) unless events already moved them on.
# The state is assigned last: MariaDB evaluates SET left to right, so the conditions on the
# state that come after it would see the new one (the run's queued_at stayed NULL there).
_DISPATCHED = (
    update(RUNS)
    .where(RUNS.c.id.in_(bindparam("ids", expanding=True)))
    .ordered_values(
        (RUNS.c.executor_id, bindparam("executor_id", type_=RUNS.c.executor_id.type)),
        (RUNS.c.executor_address, bindparam("address", type_=RUNS.c.executor_address.type)),
        (RUNS.c.queued_at, case((_PENDING, _NOW), else_=RUNS.c.queued_at)),
        (
            RUNS.c.lease_expires_at,
            case(
                (
                    RUNS.c.state.in_([RS.RUN_STATE_PENDING, *LEASED]),
                    bindparam("lease", type_=RUNS.c.lease_expires_at.type),
                ),
                else_=RUNS.c.lease_expires_at,
            ),
        ),
        (RUNS.c.updated_at, _NOW),
        (RUNS.c.state, case((_PENDING, RS.RUN_STATE_QUEUED), else_=RUNS.c.state)),
    )
)
# What a batch of events did: the events that moved a run, the runs moved (by id), those ended.
Applied = tuple[list[int], dict[str, RunRow], list[RunRow]]


def _now() -> datetime:
    return datetime.now(UTC)


def _dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Runs:
    """The run table's domain operations."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        catalogue: CatalogueClient,
        watchers: Watchers,
        metrics: SchedulerMetrics,
        *,
        subjects_prefix: str,
        lease_s: float,
        transactions: Transactions | None = None,
    ) -> None:
        self._sessions = sessions
        # The hot paths (submit, get, dispatched, applied events) as Core transactions, one
        # thread hop each on SQLite (shared/db_transactions.py); the rest stays ORM.
        self._tx = transactions or transactions_of(sessions)
        self._outbox = outbox
        self.catalogue = catalogue
        self._watchers = watchers
        self._metrics = metrics
        self._prefix = subjects_prefix
        self._lease = timedelta(seconds=lease_s)
        # Run id -> monotonic time this replica last renewed its lease (renewals are throttled).
        self._renewed: dict[str, float] = {}
        # Secret values live only here, in memory, until the run is dispatched.
        self.secrets: dict[str, dict[str, str]] = {}
        self.on_submitted: list[Any] = []
        # Inside _commit_once: the run events its transaction stages, relayed from memory
        # after the commit.
        self._staging: contextvars.ContextVar[list[OutboxMessage] | None] = contextvars.ContextVar(
            "staging", default=None
        )
        # Called inside the transaction that ends a run, whichever way it ends (an executor's
        # event, a cancel while pending, a dispatch failure, a lost lease): what follows from
        # it (a retry, a dead letter, a schedule's failure count) commits with it or not at all.
        self.on_terminal: list[Callable[[AsyncSession, RunRow], Awaitable[None]]] = []
        # The same, for hooks that handle the runs one transaction ends at once (after every
        # on_terminal hook has seen each of them): a batch of events ends many.
        self.on_terminal_many: list[
            Callable[[AsyncSession, Sequence[RunRow]], Awaitable[None]]
        ] = []

    async def submit(self, request: scheduler_pb2.SubmitRunRequest, *, actor: str) -> RunRow:
        """Validate through the catalogue and commit the run PENDING."""
        if request.idempotency_key:
            existing = await self._by_key(request.idempotency_key)
            if existing is not None:
                return _same_request(existing, request_digest(request, existing.secret_names))
        row, secrets = await self.prepare(request, actor=actor)
        return await self._insert(row, secrets, request.idempotency_key)

    async def _insert(self, row: RunRow, secrets: dict[str, str], key: str) -> RunRow:
        """`_commit_once` of `stage` for a run alone, in one Core transaction: the hand-off's
        claim check, the run and its SUBMITTED event. `row` gets the stored values."""
        values = column_values(row)
        message = self.event_message(values, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted")
        direct = handoff.current()
        try:
            claimed = await self._tx.write(self._insert_in, values, message, direct)
        except IntegrityError:
            existing = await self._by_key(key) if key else None
            if existing is None:
                raise
            return _same_request(existing, row.request_sha256)
        for name, value in values.items():
            if getattr(row, name) is None:
                setattr(row, name, value)
        if claimed and direct is not None:
            direct.claimed = row.id
        self._outbox.committed([message])
        self.submitted(row, secrets, relay=False)
        return row

    def _insert_in(
        self,
        conn: Connection,
        values: dict[str, Any],
        message: OutboxMessage,
        direct: handoff.Handoff | None,
    ) -> bool:
        claimed = handoff.claim_values(conn, direct, values)
        conn.execute(_INSERT, values)
        self._outbox.add_in(conn, [message])
        return claimed

    async def _commit_once(
        self,
        row: RunRow,
        secrets: dict[str, str],
        key: str,
        write: Callable[[AsyncSession], Awaitable[None]],
    ) -> RunRow:
        """Commit a new run with `write`; when a concurrent call with the same idempotency key
        committed first, its run (the unique key makes sure only one exists). The events
        `write` staged go to the relay from memory once committed (no read back)."""
        staged: list[OutboxMessage] = []
        token = self._staging.set(staged)
        try:
            async with self._sessions() as session, session.begin():
                await write(session)
        except IntegrityError:
            existing = await self._by_key(key) if key else None
            if existing is None:
                raise
            return _same_request(existing, row.request_sha256)
        finally:
            self._staging.reset(token)
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
        if not request.script.name:
            raise InvalidArgument.field("script.name", "script name is required")
        if request.priority < -1000 or request.priority > 1000:
            raise InvalidArgument.field("priority", "must be between -1000 and 1000")
        if request.HasField("retry"):
            check_policy(request.retry)
        raw = json_format.MessageToDict(request.parameters)
        checked = await self.catalogue.check(request.script, request.parameters, fresh=fresh)
        validated, script = checked.validated, checked.script
        version = validated.version
        row = RunRow(
            id=uuid.uuid4().hex,
            script_name=version.script_name,
            version_selector=request.script.version,
            script_version=version.version,
            sha256=version.sha256,
            execution_type=version.execution_type,
            state=RS.RUN_STATE_PENDING,
            parameters=json_format.MessageToDict(validated.values),
            secret_names=list(validated.secret_names),
            config=_dict(script.config),
            priority=request.priority,
            labels=dict(request.labels),
            idempotency_key=request.idempotency_key or None,
            limits=self._limits(script, request),
            retry=_dict(request.retry)
            if request.HasField("retry")
            else _dict(script.default_retry),
            isolation=script.isolation,
            runtime=script.runtime,
            submitted_by=actor,
            trace_context=inject_context(),
            created_at=_now(),
            updated_at=_now(),
        )
        if request.idempotency_key:
            row.request_sha256 = request_digest(request, row.secret_names)
        return row, {n: _secret_text(raw.get(n)) for n in row.secret_names if n in raw}

    async def stage(self, session: AsyncSession, row: RunRow) -> None:
        """Add a prepared run and its SUBMITTED event to the caller's transaction (claimed
        for a direct hand-off when the submit asked for one: handoff.py)."""
        await handoff.claim_in(session, row)
        session.add(row)
        await session.flush()
        await self._event(session, row, events_pb2.RUN_EVENT_TYPE_SUBMITTED, "submitted")

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
            self.secrets[run_id] = secrets
        if relay:
            self._outbox.notify()
        self._metrics.submitted.inc()
        for hook in self.on_submitted:
            hook()

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
        return _dict(limits)

    async def _by_key(self, key: str) -> RunRow | None:
        return await self._tx.read(_by_key, key)

    async def get(self, run_id: str) -> RunRow:
        if not run_id:
            raise InvalidArgument.field("id", "run id is required")
        row = await self._tx.read(_by_id, run_id)
        if row is None:
            raise NotFound("run", run_id)
        return row

    async def list(self, request: scheduler_pb2.ListRunsRequest) -> tuple[Sequence[RunRow], str]:
        """Newest first; the cursor is (created_at, id) so inserts never shift pages."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if request.script_name:
            query = query.where(RunRow.script_name == request.script_name)
        if request.schedule_id:
            query = query.where(RunRow.schedule_id == request.schedule_id)
        if request.states:
            query = query.where(RunRow.state.in_(list(request.states)))
        if request.HasField("created_after"):
            query = query.where(RunRow.created_at >= request.created_after.ToDatetime(UTC))
        if request.HasField("created_before"):
            query = query.where(RunRow.created_at < request.created_before.ToDatetime(UTC))
        query = after_cursor(query, RunRow.created_at, RunRow.id, request.page_token)
        wanted = dict(request.labels)
        async with self._sessions() as session:
            rows: list[RunRow] = []
            async for row in await session.stream_scalars(query):
                if all(row.labels.get(k) == v for k, v in wanted.items()):
                    rows.append(row)
                    if len(rows) > size:
                        break
        token = encode_cursor(rows[size - 1]) if len(rows) > size else ""
        return rows[:size], token

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
            await self._event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "cancelled")
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
            await self._event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "failed")
            await self._ended(session, row)
        self._after_change(row)

    def _finish(self, row: RunRow, state: int, reason: int, message: str) -> None:
        row.state, row.failure_reason, row.exit_message = state, reason, message
        row.finished_at = row.updated_at = _now()
        self.secrets.pop(row.id, None)

    async def _ended(self, session: AsyncSession, row: RunRow) -> None:
        await self._ended_many(session, [row])

    async def _ended_many(self, session: AsyncSession, rows: Sequence[RunRow]) -> None:
        for row in rows:
            for hook in self.on_terminal:
                await hook(session, row)
        for many in self.on_terminal_many:
            await many(session, rows)

    def _after_change(self, row: RunRow, *, relay: bool = True, own: bool = False) -> None:
        """After a commit that changed `row`: wake the relay (unless the caller knows nothing
        was staged) and the run's watchers, who get the row itself when `own` (the object is
        this commit's alone, so it shows exactly what was committed)."""
        if relay:
            self._outbox.notify()
        self._watchers.notify(Change(row.id, row=row if own else None))
        if sm.is_terminal(row.state):
            self._metrics.finished.labels(
                RS.Name(row.state).removeprefix("RUN_STATE_").lower()
            ).inc()

    async def _event(self, session: AsyncSession, row: RunRow, kind: int, tag: str) -> None:
        message = self.event_message(row, kind, tag)
        await self._outbox.add_many(session, [message])
        staged = self._staging.get()
        if staged is not None:
            staged.append(message)

    def event_message(self, row: RunRow | Mapping[str, Any], kind: int, tag: str) -> OutboxMessage:
        """The lifecycle event of a run (a row, or its column values as inserted without an
        ORM object; id "<run>:scheduler:<tag>"), ready to stage."""
        get = row.get if isinstance(row, Mapping) else row.__getattribute__
        run_id, trace_context = get("id"), get("trace_context")
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.RunEvent(
            event_id=f"{run_id}:scheduler:{tag}",
            run_id=run_id,
            attempt=get("attempt"),
            type=kind,  # type: ignore[arg-type]
            state=get("state"),
            occurred_at=now,
            trace_context=trace_context,
            script_name=get("script_name"),
            script_version=get("script_version"),
            execution_type=get("execution_type"),
            schedule_id=get("schedule_id") or "",
            labels=get("labels"),
            parent_run_id=get("parent_run_id") or "",
            exit=common_pb2.ExitInfo(reason=get("failure_reason"), message=get("exit_message")),
        )
        return OutboxMessage(
            f"{self._prefix}.run.{run_id}",
            event.event_id,
            event.SerializeToString(),
            inject_context(dict(trace_context or {})),
        )

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
            await self.release(release)
            return
        by_executor: dict[tuple[str, str], list[str]] = {}
        for run_id, executor_id, address in accepted:
            by_executor.setdefault((executor_id, address), []).append(run_id)
        await self._tx.write(_dispatched_in, by_executor, release, _now(), self.lease_expiry())
        for run_id, _, _ in accepted:
            self.secrets.pop(run_id, None)
            self._watchers.notify(Change(run_id))

    async def defer(self, run_id: str, until: datetime) -> None:
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id)
            if row is not None and row.state == RS.RUN_STATE_PENDING:
                row.next_dispatch_at = until
                row.dispatch_attempts += 1

    async def claim_pending(self, limit: int, claim_s: float) -> Sequence[RunRow]:
        """Runs to dispatch, highest priority first and FIFO within a priority, claimed for
        `claim_s`: their next_dispatch_at moves past the claim, so another replica's round
        skips them (rows locked by a replica's concurrent claim are skipped too: FOR UPDATE
        SKIP LOCKED where the database has it). A replica that dies holding a claim leaves
        the runs to the others once it expires. Quarantined scripts' runs are not taken."""
        now = _now()
        query = (
            select(RunRow)
            .where(RunRow.state == RS.RUN_STATE_PENDING)
            .where((RunRow.next_dispatch_at.is_(None)) | (RunRow.next_dispatch_at <= now))
            .where(
                RunRow.script_name.not_in(
                    select(QuarantineRow.script_name).where(QuarantineRow.released_at.is_(None))
                )
            )
            .order_by(RunRow.priority.desc(), RunRow.created_at, RunRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=RunRow)
        )
        until = now + timedelta(seconds=claim_s)
        async with self._sessions() as session, session.begin():
            rows = (await session.scalars(query)).all()
            ids = [row.id for row in rows]
            # The claim in one UPDATE per chunk (not one per row: rounds are large).
            for chunk in range(0, len(ids), CLAIM_CHUNK):
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(ids[chunk : chunk + CLAIM_CHUNK]))
                    .values(next_dispatch_at=until)
                    .execution_options(synchronize_session=False)
                )
        for row in rows:
            row.next_dispatch_at = until
        return rows

    async def release(self, run_ids: Sequence[str]) -> None:
        """Give back claimed runs this round did not hand over (held back by a limit)."""
        if not run_ids:
            return
        async with self._sessions() as session, session.begin():
            await self._release(session, run_ids)

    @staticmethod
    async def _release(session: AsyncSession, run_ids: Sequence[str]) -> None:
        if run_ids:
            await session.execute(_released(run_ids))

    async def record_attempt(self, run_id: str, address: str) -> None:
        """Before handing a run to an executor: where it went, should the answer be lost."""
        await self.record_attempts({run_id: address})

    async def record_attempts(self, addresses: Mapping[str, str]) -> None:
        """record_attempt for several runs (run id -> executor address), in one write."""
        if not addresses:
            return
        by_address: dict[str, list[str]] = {}
        for run_id, address in addresses.items():
            by_address.setdefault(address, []).append(run_id)
        now = _now()
        async with self._sessions() as session, session.begin():
            for address, run_ids in by_address.items():
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(run_ids))
                    .where(RunRow.state == RS.RUN_STATE_PENDING)
                    .values(executor_address=address, dispatch_attempted_at=now)
                    .execution_options(synchronize_session=False)
                )

    async def active_counts(self) -> dict[str, int]:
        """Runs held by executors (QUEUED or RUNNING), per script."""
        query = (
            select(RunRow.script_name, func.count())
            .where(RunRow.state.in_([RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING]))
            .group_by(RunRow.script_name)
        )
        async with self._sessions() as session:
            return {name: int(count) for name, count in (await session.execute(query)).all()}

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
        applied = await self._tx.write(self._apply_in, events, moving)
        if applied is None:  # a run's end needs the on_terminal hooks: the ORM path
            return await self._apply_orm(events, moving, changed)
        moved, ended, finished = applied
        for i in moved:
            changed[i] = True
        for row in finished:
            self._renewed.pop(row.id, None)
        for row in ended.values():
            self._after_change(row, relay=False, own=True)
        return changed

    def _apply_in(
        self, conn: Connection, events: Sequence[events_pb2.RunEvent], moving: Sequence[int]
    ) -> Applied | None:
        """`_apply_orm`'s transaction on a Core connection, as long as no run it ends concerns
        an on_terminal hook (None then, having written nothing): the rows are read, moved
        as objects of no session, and each written back with the columns that changed."""
        ids = sorted({events[i].run_id for i in moving})
        stored = {m["id"]: m for m in conn.execute(_BY_IDS, {"ids": ids}).mappings()}
        rows = {run_id: RunRow(**m) for run_id, m in stored.items()}
        moved, ended, finished = _move(rows, events, moving, self.lease_expiry())
        if any(self._concerned(row) for row in finished):
            return None
        for run_id, row in rows.items():
            old = stored[run_id]
            # The loaded values are in the object's __dict__ (no attribute machinery).
            diff = {k: v for k, v in vars(row).items() if k in old and v != old[k]}
            if diff:
                conn.execute(_UPDATE_BY_ID, {"run_id_": run_id, **diff})
        return moved, ended, finished

    def _concerned(self, row: RunRow) -> bool:
        """Whether an on_terminal hook acts on the end of `row` (hooks tell with a
        `concerns(row)` method of theirs or their object; a hook without one always does)."""
        for hook in (*self.on_terminal, *self.on_terminal_many):
            concerns = getattr(getattr(hook, "__self__", hook), "concerns", None)
            if concerns is None or concerns(row):
                return True
        return False

    async def _apply_orm(
        self,
        events: Sequence[events_pb2.RunEvent],
        moving: Sequence[int],
        changed: MutableSequence[bool],
    ) -> Sequence[bool]:
        """The events' transaction through the ORM, with the on_terminal hooks."""
        async with self._sessions() as session, session.begin():
            ids = sorted({events[i].run_id for i in moving})
            query = select(RunRow).where(RunRow.id.in_(ids)).order_by(RunRow.id).with_for_update()
            rows = {row.id: row for row in (await session.scalars(query)).all()}
            moved, ended, finished = _move(rows, events, moving, self.lease_expiry())
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
        the on_terminal hooks, in one transaction; None when there is none left.

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
            await self._event(session, row, events_pb2.RUN_EVENT_TYPE_FINISHED, "lost")
            await self._ended(session, row)
        self._renewed.pop(row.id, None)
        self._after_change(row)
        return row

    async def stage_event(self, session: AsyncSession, row: RunRow, kind: int, tag: str) -> None:
        """Stage a lifecycle event of `row` (id "<run>:scheduler:<tag>") in the caller's
        transaction; on_terminal hooks report retries and dead letters with it."""
        await self._event(session, row, kind, tag)

    # Dead letters: failed runs that were not retried (services/scheduler/retries.py).

    async def dead_letters(
        self, request: scheduler_pb2.ListDeadLettersRequest
    ) -> tuple[Sequence[RunRow], str]:
        """Newest dead letter first; the cursor is (dead_lettered_at, id)."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(RunRow).where(RunRow.dead_lettered_at.is_not(None))
        if request.script_name:
            query = query.where(RunRow.script_name == request.script_name)
        query = after_cursor(query, RunRow.dead_lettered_at, RunRow.id, request.page_token)
        query = query.order_by(RunRow.dead_lettered_at.desc(), RunRow.id.desc()).limit(size + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            assert last.dead_lettered_at is not None
            at = last.dead_lettered_at
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            token = base64.urlsafe_b64encode(f"{at.isoformat()}|{last.id}".encode()).decode()
        return rows[:size], token

    async def replay(self, request: scheduler_pb2.ReplayDeadLetterRequest, *, actor: str) -> RunRow:
        """Submit a dead-lettered run again as a new run (attempt 1, parent_run_id = it),
        with its inputs or a new version / parameters checked through the catalogue exactly
        as SubmitRun checks them; the dead letter records the replay in the same commit.

        A dead letter is replayed once: a replay that fails for good is dead-lettered in
        turn and replayed from there, so its history stays one chain."""
        if not request.run_id:
            raise InvalidArgument.field("run_id", "run id is required")
        if request.idempotency_key:
            existing = await self._by_key(request.idempotency_key)
            if existing is not None:
                if existing.parent_run_id != request.run_id:
                    raise FailedPrecondition(
                        "idempotency_key was already used for another request",
                        [FieldViolation("idempotency_key", "used for another request")],
                    )
                return existing
        dead = await self.get(request.run_id)
        self._check_replayable(dead)
        if dead.secret_names and not request.HasField("parameters"):
            names = ", ".join(sorted(dead.secret_names))
            raise FailedPrecondition(
                f"run {dead.id} had secret parameters ({names}) whose values are not kept: "
                "pass parameters, secrets included",
                [FieldViolation("parameters", f"required to supply secret values: {names}")],
            )
        submit = scheduler_pb2.SubmitRunRequest(
            script=common_pb2.ScriptRef(
                name=dead.script_name, version=request.version or dead.script_version
            ),
            priority=dead.priority,
            labels=dead.labels,
            idempotency_key=request.idempotency_key,
            limits=json_format.ParseDict(dead.limits, common_pb2.ResourceLimits()),
        )
        if request.HasField("parameters"):
            submit.parameters.CopyFrom(request.parameters)
        else:
            submit.parameters.update(dead.parameters)
        row, secrets = await self.prepare(submit, actor=actor)
        # Its policy as it was (a script default the catalogue stored is not re-checked).
        row.parent_run_id, row.retry = dead.id, dict(dead.retry)

        async def write(session: AsyncSession) -> None:
            held = await session.get(RunRow, dead.id, with_for_update=True)
            assert held is not None
            self._check_replayable(held)
            await self.stage(session, row)
            held.replay_run_id = row.id

        return await self._commit_once(row, secrets, request.idempotency_key, write)

    @staticmethod
    def _check_replayable(row: RunRow) -> None:
        if not row.dead_lettered:
            raise FailedPrecondition(f"run {row.id} is not dead-lettered")
        if row.replay_run_id:
            raise FailedPrecondition(f"run {row.id} was already replayed as {row.replay_run_id}")


def _by_id(conn: Connection, run_id: str) -> RunRow | None:
    """A run by id, as an object of no session."""
    stored = conn.execute(_BY_ID, {"run_id": run_id}).mappings().first()
    return None if stored is None else RunRow(**stored)


def _by_key(conn: Connection, key: str) -> RunRow | None:
    """The run of an idempotency key, as an object of no session."""
    stored = conn.execute(_BY_KEY, {"key": key}).mappings().first()
    return None if stored is None else RunRow(**stored)


def _move(
    rows: Mapping[str, RunRow],
    events: Sequence[events_pb2.RunEvent],
    moving: Sequence[int],
    lease_expiry: datetime,
) -> Applied:
    """Apply `events[moving]` to their runs in order: (the events that moved a run, the runs
    moved by id, those ended). An event that cannot move its held run renews its lease."""
    moved: list[int] = []
    ended: dict[str, RunRow] = {}
    finished: list[RunRow] = []
    for i in moving:
        event, row = events[i], rows.get(events[i].run_id)
        if row is None:
            continue
        if not sm.can_move(row.state, event.state):
            if row.state in LEASED:
                row.lease_expires_at = lease_expiry
            continue
        _apply_fields(row, event)
        if row.state in LEASED:
            row.lease_expires_at = lease_expiry
        if sm.is_terminal(row.state):
            finished.append(row)
        moved.append(i)
        ended[row.id] = row
    return moved, ended, finished


def _dispatched_in(
    conn: Connection,
    by_executor: Mapping[tuple[str, str], Sequence[str]],
    release: Sequence[str],
    now: datetime,
    lease_expiry: datetime,
) -> None:
    """mark_dispatched_many's transaction."""
    if release:
        conn.execute(_released(release))
    for (executor_id, address), run_ids in by_executor.items():
        conn.execute(
            _DISPATCHED,
            {
                "ids": run_ids,
                "executor_id": executor_id,
                "address": address,
                "now": now,
                "lease": lease_expiry,
            },
        )


def _released(run_ids: Sequence[str]) -> Any:
    """Give back claimed runs still PENDING."""
    return (
        update(RUNS)
        .where(RUNS.c.id.in_(list(run_ids)), RUNS.c.state == RS.RUN_STATE_PENDING)
        .values(next_dispatch_at=None)
    )


def _ts(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(UTC)


def _apply_fields(row: RunRow, event: events_pb2.RunEvent) -> None:
    row.state, row.updated_at = event.state, _now()
    if event.executor_id:
        row.executor_id = event.executor_id
    if event.state == RS.RUN_STATE_QUEUED or row.queued_at is None:
        row.queued_at = row.queued_at or _ts(event.occurred_at)
    if event.HasField("started_at"):
        row.started_at = _ts(event.started_at)
    elif event.state == RS.RUN_STATE_RUNNING:
        row.started_at = _ts(event.occurred_at)
    if sm.is_terminal(event.state):
        row.finished_at = (
            _ts(event.finished_at) if event.HasField("finished_at") else _ts(event.occurred_at)
        )
        row.exit_code, row.failure_reason = event.exit.exit_code, event.exit.reason
        row.exit_message, row.exit_signal = event.exit.message, event.exit.signal
        row.usage, row.sandbox = usage_columns(event.usage)
        row.stdout_tail, row.stderr_tail = event.output.stdout, event.output.stderr
        row.output_truncated = event.output.truncated
        row.stdout_total, row.stderr_total = (
            event.output.stdout_total_bytes,
            event.output.stderr_total_bytes,
        )
        row.result = json_format.MessageToDict(event.result)


def usage_columns(usage: common_pb2.ResourceUsage) -> tuple[dict[str, Any], str]:
    """A run's usage as stored: the JSON of the fields release 0.1.0 knows, and the sandbox
    apart (its own column), so a 0.1.0 replica can still read the run."""
    known = common_pb2.ResourceUsage()
    known.CopyFrom(usage)
    known.ClearField("sandbox")
    return _dict(known), usage.sandbox


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


def encode_cursor(row: RunRow) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def after_cursor(query: Any, created_at: Any, ident: Any, token: str) -> Any:
    """Rows after a newest-first (created_at, id) keyset cursor; the query unchanged if none."""
    if not token:
        return query
    at, last_id = decode_cursor(token)
    return query.where((created_at < at) | ((created_at == at) & (ident < last_id)))


def decode_cursor(token: str) -> tuple[datetime, str]:
    try:
        at, run_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), run_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None


async def cancel_run(runs: Runs, executors: Mapping[str, Any], run_id: str, reason: str) -> RunRow:
    """Cancel a run: a PENDING one at once, a dispatched one through the executor holding it
    (the run ends when its FINISHED event arrives). CancelRun and a REPLACE schedule share it."""
    cancelled = await runs.cancel_pending(run_id)
    if cancelled is not None:
        return cancelled
    row = await runs.get(run_id)
    stub = executors.get(row.executor_address)
    if stub is None:
        raise FailedPrecondition(
            f"run {row.id} is held by an unknown executor {row.executor_address!r}"
        )
    await stub.Cancel(executor_pb2.CancelRequest(run_id=row.id, reason=reason))
    return await runs.get(run_id)

"""Failure policy, applied inside the transaction that ends a run (a run-end hook, run_listeners.py), so
what follows from a failure commits with it or not at all and a redelivered event, which
changes nothing, cannot repeat it:

- retry: a failed run whose policy retries its failure class, with attempts left, is
  followed by a new run (attempt + 1, parent_run_id, same pinned version and parameters)
  due after an exponential backoff with jitter; an OOM retry gets more memory, up to a cap;
- dead letter: a failed run that is not retried is kept on the dead-letter list, with its
  inputs, usage and output tail (already on its row), for ListDeadLetters and Replay;
- quarantine: a script whose last N runs all failed within a window is quarantined, and
  its PENDING runs are not dispatched until someone releases it.

Also the retry-policy check that SubmitRun applies.
"""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from tenacity import RetryCallState, Retrying, wait_exponential, wait_random

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import QuarantineRow, RunRow
from shared.errors import FieldViolation, InvalidArgument, NotFound
from shared.outbox import Outbox

RS = common_pb2.RunState
FR = common_pb2.FailureReason
MAX_ATTEMPTS = 100
MAX_BACKOFF = timedelta(days=1)
# Defaults for policy fields left zero.
DEFAULT_INITIAL_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 300.0
DEFAULT_MULTIPLIER = 2.0
# Failure classes retried when a policy names none: all but a rejected configuration
# (which fails the same way again) and a cancel (which someone asked for).
DEFAULT_RETRY_ON = frozenset(
    {
        common_pb2.FAILURE_REASON_EXIT_CODE,
        common_pb2.FAILURE_REASON_OOM_KILLED,
        common_pb2.FAILURE_REASON_TIMEOUT,
        common_pb2.FAILURE_REASON_LOST,
        common_pb2.FAILURE_REASON_INFRASTRUCTURE,
    }
)
# How a run fails; CANCELLED and SUCCEEDED runs are neither retried nor dead-lettered.
FAILED = frozenset({RS.RUN_STATE_FAILED, RS.RUN_STATE_TIMED_OUT, RS.RUN_STATE_LOST})
_MAX_DURATION_S = 10 * 366 * 86400  # what a datetime.timedelta surely holds


def check_policy(retry: common_pb2.RetryPolicy, prefix: str = "retry") -> None:
    """Reject a policy with out-of-range fields, naming every one of them."""
    bad = policy_violations(retry, prefix)
    if bad:
        raise InvalidArgument(f"retry policy is invalid: {', '.join(v.field for v in bad)}", bad)


def policy_violations(retry: common_pb2.RetryPolicy, prefix: str) -> list[FieldViolation]:
    """Every out-of-range field of a policy (SubmitRun's and a schedule's: one set of rules)."""
    bad: list[FieldViolation] = []

    def add(field: str, description: str) -> None:
        bad.append(FieldViolation(f"{prefix}.{field}", description))

    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        add("max_attempts", f"must be between 1 and {MAX_ATTEMPTS}")
    initial = _duration(retry.initial_backoff)
    most = _duration(retry.max_backoff)
    for name, value in (("initial_backoff", initial), ("max_backoff", most)):
        if value is None:
            add(name, f"must be between 0 and {MAX_BACKOFF}")
    if initial is not None and most and most < initial:
        add("max_backoff", "must not be shorter than initial_backoff")
    if retry.multiplier and not 1 <= retry.multiplier <= 100:
        add("multiplier", "must be between 1 and 100 (or 0 for the default, 2)")
    if not 0 <= retry.jitter <= 1:
        add("jitter", "must be between 0 and 1")
    if retry.oom_memory_factor and not 1 <= retry.oom_memory_factor <= 16:
        add("oom_memory_factor", "must be between 1 and 16 (or 0 for none)")
    if retry.oom_memory_cap_bytes < 0:
        add("oom_memory_cap_bytes", "must not be negative")
    known = set(FR.values()) - {common_pb2.FAILURE_REASON_UNSPECIFIED}
    for i, reason in enumerate(retry.retry_on):
        if reason not in known:
            add(f"retry_on[{i}]", f"unknown failure reason {reason}")
        elif reason == common_pb2.FAILURE_REASON_NO_SANDBOX:
            # Not until an operator gives the executor a sandbox; and 0.1.0 services
            # cannot read a stored policy naming it (docs/upgrades.md).
            add(
                f"retry_on[{i}]",
                "no_sandbox is not retryable: give the executor a Docker sandbox "
                "(or allow unsandboxed runs) instead",
            )
    return bad


def _duration(value: duration_pb2.Duration) -> timedelta | None:
    """The duration if it is well-formed and within 0..MAX_BACKOFF, else None."""
    malformed = abs(value.nanos) >= 1_000_000_000 or value.seconds * value.nanos < 0
    if malformed or abs(value.seconds) > _MAX_DURATION_S:
        return None
    result = value.ToTimedelta()
    return result if timedelta(0) <= result <= MAX_BACKOFF else None


def failure_class(row: RunRow) -> int:
    """The FailureReason a retry policy is matched against."""
    if row.state == RS.RUN_STATE_TIMED_OUT:
        return common_pb2.FAILURE_REASON_TIMEOUT
    if row.state == RS.RUN_STATE_LOST:
        return common_pb2.FAILURE_REASON_LOST
    return row.failure_reason or common_pb2.FAILURE_REASON_EXIT_CODE


def backoff_s(policy: common_pb2.RetryPolicy, retry_number: int) -> float:
    """Delay before retry `retry_number` (1 for the first): the exponential base
    min(initial x multiplier^(n-1), max) less a random part of up to jitter x base, so it
    never exceeds max_backoff and runs that failed together do not come back together."""
    initial = policy.initial_backoff.ToTimedelta().total_seconds() or DEFAULT_INITIAL_BACKOFF_S
    most = policy.max_backoff.ToTimedelta().total_seconds() or max(DEFAULT_MAX_BACKOFF_S, initial)
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = retry_number
    base = wait_exponential(
        multiplier=initial, max=most, exp_base=policy.multiplier or DEFAULT_MULTIPLIER
    )(state)
    return base - wait_random(0, policy.jitter * base)(state)


def retry_memory(policy: common_pb2.RetryPolicy, row: RunRow) -> int | None:
    """Memory limit for the retry of an OOM-killed run: its limit (or, with none set, its
    measured peak) times oom_memory_factor, capped by oom_memory_cap_bytes when set; None
    when the policy asks for no more memory or there is nothing to scale."""
    if not policy.oom_memory_factor:
        return None
    current = int(row.limits.get("memory_bytes", 0)) or int(row.usage.get("peak_memory_bytes", 0))
    if current <= 0:
        return None
    wanted = math.ceil(current * policy.oom_memory_factor)
    cap = policy.oom_memory_cap_bytes
    return min(wanted, cap) if cap else wanted


def successor(row: RunRow, *, now: datetime) -> RunRow:
    """A new PENDING run with the inputs of `row` (same pinned version, parameters, limits
    and policy), child of it; the caller sets attempt, key and what it changes."""
    return RunRow(
        id=uuid.uuid4().hex,
        script_name=row.script_name,
        version_selector=row.version_selector,
        script_version=row.script_version,
        sha256=row.sha256,
        execution_type=row.execution_type,
        state=RS.RUN_STATE_PENDING,
        parameters=dict(row.parameters),
        secret_names=list(row.secret_names),
        config=dict(row.config),
        priority=row.priority,
        labels=dict(row.labels),
        parent_run_id=row.id,
        schedule_id=row.schedule_id,
        limits=dict(row.limits),
        retry=dict(row.retry),
        isolation=row.isolation,
        runtime=row.runtime,
        submitted_by=row.submitted_by,
        trace_context=dict(row.trace_context),
        created_at=now,
        updated_at=now,
    )


def policy_of(row: RunRow) -> common_pb2.RetryPolicy:
    return json_format.ParseDict(row.retry, common_pb2.RetryPolicy(), ignore_unknown_fields=True)


def reason_label(reason: int) -> str:
    return FR.Name(FR.ValueType(reason)).removeprefix("FAILURE_REASON_").lower()


class RunStager(Protocol):
    """What a retry needs of the lifecycle: staging a run and an event in the transaction
    that ends the failed one (run_events.py)."""

    async def stage(self, session: AsyncSession, row: RunRow) -> None: ...

    async def stage_event(
        self, session: AsyncSession, row: RunRow, kind: int, tag: str
    ) -> None: ...


class RetryOrDeadLetter:
    """Run-end hook: a failed run is retried as a new run, or dead-lettered."""

    def __init__(self, runs: RunStager, metrics: SchedulerMetrics) -> None:
        self._runs = runs
        self._metrics = metrics

    @staticmethod
    def concerns(row: RunRow) -> bool:
        """Whether this hook acts on the end of `row` (runs skip the hooks when none does)."""
        return row.state in FAILED and not row.retry_run_id and not row.dead_lettered

    async def __call__(self, session: AsyncSession, row: RunRow) -> None:
        if not self.concerns(row):
            return
        reason = failure_class(row)
        policy = policy_of(row)
        why_not = self._why_not(policy, row, reason)
        if why_not:
            await self._dead_letter(session, row, reason, why_not)
        else:
            await self._retry(session, row, policy, reason)

    @staticmethod
    def _why_not(policy: common_pb2.RetryPolicy, row: RunRow, reason: int) -> str:
        """Why the run is not retried; empty when it is."""
        attempts = max(policy.max_attempts, 1)
        if row.attempt >= attempts:
            return f"{reason_label(reason)} after {row.attempt} of {attempts} attempts"
        if reason not in (set(policy.retry_on) or DEFAULT_RETRY_ON):
            return f"{reason_label(reason)} is not a failure class the retry policy retries"
        if row.secret_names:
            # Secret values live only in memory until dispatch: a retry would run without them.
            return (
                f"{reason_label(reason)}; not retried because the run has secret parameters, "
                "whose values the scheduler does not keep: replay it with them"
            )
        return ""

    async def _retry(
        self, session: AsyncSession, row: RunRow, policy: common_pb2.RetryPolicy, reason: int
    ) -> None:
        key = f"retry:{row.id}"
        existing = await session.scalar(select(RunRow.id).where(RunRow.idempotency_key == key))
        if existing is not None:  # already retried (the ending was somehow repeated)
            row.retry_run_id = existing
            return
        now = datetime.now(UTC)
        retry = successor(row, now=now)
        retry.attempt, retry.idempotency_key = row.attempt + 1, key
        retry.next_dispatch_at = now + timedelta(seconds=backoff_s(policy, row.attempt))
        memory = retry_memory(policy, row) if reason == FR.FAILURE_REASON_OOM_KILLED else None
        if memory is not None:
            retry.limits["memory_bytes"] = str(memory)  # proto JSON writes int64 as a string
        await self._runs.stage(session, retry)
        row.retry_run_id = retry.id
        await self._runs.stage_event(session, row, events_pb2.RUN_EVENT_TYPE_RETRIED, "retried")
        self._metrics.retries.labels(reason_label(reason)).inc()

    async def _dead_letter(self, session: AsyncSession, row: RunRow, reason: int, why: str) -> None:
        row.dead_lettered, row.dead_lettered_at, row.dead_letter_reason = (
            True,
            datetime.now(UTC),
            why,
        )
        await self._runs.stage_event(
            session, row, events_pb2.RUN_EVENT_TYPE_DEAD_LETTERED, "dead-lettered"
        )
        self._metrics.dead_letters.labels(reason_label(reason)).inc()


# What a crash loop is made of: the script's own failures (an exit code, a signal, OOM, a
# timeout), not a LOST run or an infrastructure failure, which say nothing of the script (a
# scheduler overloaded past its leases must not quarantine every script it runs).
SCRIPT_FAILED = frozenset({RS.RUN_STATE_FAILED, RS.RUN_STATE_TIMED_OUT})
_NOT_THE_SCRIPT = (common_pb2.FAILURE_REASON_INFRASTRUCTURE, common_pb2.FAILURE_REASON_LOST)
_COUNTED = SCRIPT_FAILED | {RS.RUN_STATE_SUCCEEDED}


class Quarantines:
    """Crash-loop detection (a run-end hook), listing and release.

    A script is quarantined when its last `failures` ended runs (cancels, LOST runs and
    infrastructure failures aside) all failed within `window_s` and after its last release. Runs ending at the same instant on different
    connections do not see each other's end, so such a loop may be caught one failure later;
    two that both see it race on the insert, and the loser's is ignored (and counted as one
    more failure), so one event says so."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        metrics: SchedulerMetrics,
        *,
        subjects_prefix: str,
        failures: int,
        window_s: float,
    ) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._metrics = metrics
        self._prefix = subjects_prefix
        self._failures = failures
        self._window = timedelta(seconds=window_s)

    def concerns(self, row: RunRow) -> bool:
        """Whether this hook acts on the end of `row` (runs skip the hooks when none does)."""
        return (
            bool(self._failures)
            and row.state in SCRIPT_FAILED
            and row.failure_reason not in _NOT_THE_SCRIPT
        )

    async def __call__(self, session: AsyncSession, row: RunRow) -> None:
        if not self.concerns(row):
            return
        now = datetime.now(UTC)
        held = await session.get(QuarantineRow, row.script_name)
        if held is not None and held.released_at is None:
            await self._count_failure(session, row.script_name)
            return
        since = now - self._window
        if held is not None and held.released_at is not None:
            since = max(since, _aware(held.released_at))
        states = (
            await session.scalars(
                select(RunRow.state)
                .where(RunRow.script_name == row.script_name)
                .where(RunRow.state.in_(list(_COUNTED)))
                .where(RunRow.failure_reason.not_in(_NOT_THE_SCRIPT))
                .where(RunRow.finished_at >= since)
                .order_by(RunRow.finished_at.desc())
                .limit(self._failures)
            )
        ).all()
        if len(states) < self._failures or RS.RUN_STATE_SUCCEEDED in states:
            return
        reason = (
            f"its last {self._failures} runs failed within {self._window} "
            f"(the last: run {row.id}, {row.exit_message or reason_label(failure_class(row))})"
        )
        if not await self._claim(session, row.script_name, held, now, reason):
            await self._count_failure(session, row.script_name)  # another run's end claimed it
        else:
            await self._event(
                session,
                events_pb2.SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED,
                row.script_name,
                f"quarantine:{row.script_name}:{row.id}",
                reason,
                run_id=row.id,
            )
            self._metrics.quarantines.set(await self._active(session))

    @staticmethod
    async def _count_failure(session: AsyncSession, script: str) -> None:
        await session.execute(
            update(QuarantineRow)
            .where(QuarantineRow.script_name == script, QuarantineRow.released_at.is_(None))
            .values(consecutive_failures=QuarantineRow.consecutive_failures + 1)
        )

    async def _claim(
        self,
        session: AsyncSession,
        script: str,
        held: QuarantineRow | None,
        now: datetime,
        reason: str,
    ) -> bool:
        """Make the quarantine active; False when another transaction did first."""
        values: dict[str, Any] = {
            "since": now,
            "reason": reason,
            "consecutive_failures": self._failures,
            "released_at": None,
        }
        if held is not None:
            statement: Any = (
                update(QuarantineRow)
                .where(QuarantineRow.script_name == script)
                .where(QuarantineRow.released_at.is_not(None))
                .values(values)
            )
        else:
            statement = _insert_ignore(session, {"script_name": script, **values})
        result: Any = await session.execute(statement)
        return bool(result.rowcount)

    async def list(self, page_size: int, page_token: str) -> tuple[Sequence[QuarantineRow], str]:
        """Active quarantines by script name; the cursor is the last name."""
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(page_size or 50, 500)
        query = (
            select(QuarantineRow)
            .where(QuarantineRow.released_at.is_(None))
            .order_by(QuarantineRow.script_name)
            .limit(size + 1)
        )
        if page_token:
            query = query.where(QuarantineRow.script_name > _decode(page_token))
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        token = _encode(rows[size - 1].script_name) if len(rows) > size else ""
        return rows[:size], token

    async def release(self, script: str) -> QuarantineRow:
        """End a script's quarantine; its PENDING runs become dispatchable."""
        if not script:
            raise InvalidArgument.field("script_name", "script name is required")
        async with self._sessions() as session, session.begin():
            held = await session.get(QuarantineRow, script, with_for_update=True)
            if held is None or held.released_at is not None:
                raise NotFound("quarantine", script)
            held.released_at = datetime.now(UTC)
            await self._event(
                session,
                events_pb2.SCHEDULE_EVENT_TYPE_SCRIPT_RELEASED,
                script,
                f"release:{script}:{_aware(held.since).isoformat()}",
                "released",
            )
            self._metrics.quarantines.set(await self._active(session))
        self._outbox.notify()
        return held

    async def refresh(self) -> None:
        """Set the gauge from the table (at start: quarantines outlive processes)."""
        async with self._sessions() as session:
            self._metrics.quarantines.set(await self._active(session))

    @staticmethod
    async def _active(session: AsyncSession) -> int:
        count = await session.scalar(
            select(func.count()).where(QuarantineRow.released_at.is_(None))
        )
        return int(count or 0)

    async def _event(
        self,
        session: AsyncSession,
        kind: int,
        script: str,
        event_id: str,
        reason: str,
        *,
        run_id: str = "",
    ) -> None:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        event = events_pb2.ScheduleEvent(
            event_id=event_id,
            type=kind,  # type: ignore[arg-type]
            script_name=script,
            run_id=run_id,
            reason=reason,
            occurred_at=now,
        )
        await self._outbox.add(
            session,
            subject=f"{self._prefix}.quarantine.{script}",
            msg_id=event_id,
            payload=event.SerializeToString(),
        )


def _insert_ignore(session: AsyncSession, values: dict[str, Any]) -> Any:
    """INSERT that does nothing when the script is already there (rowcount 0)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(QuarantineRow).values(values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(QuarantineRow).values(values).on_conflict_do_nothing()
    return insert(QuarantineRow).values(values).prefix_with("IGNORE")


def _aware(value: datetime) -> datetime:
    """SQLite and MariaDB hand DateTime columns back naive; they hold UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _encode(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode()


def _decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None

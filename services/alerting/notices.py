"""From verdicts to rows: alerts opened, counted or resolved, and the deliveries that
notify about them, all written in the caller's transaction (the consumer's, with the
event id it processes; the dead-man's-switch loop's). Deliveries are PENDING rows the
delivery worker picks up after the commit; nothing is sent from here.

Noise control (noise.py) decides; this module reads what it needs (the open alert of a
group key, active silences, a channel's recent deliveries) and applies the answer.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.common.v1 import common_pb2
from services.alerting import noise, templates
from services.alerting.channels.notification import TRACE_KEY
from services.alerting.engine import (
    FAILED_STATES,
    RUN_FINISHED,
    Occurrence,
    ScriptTags,
    condition_kind,
    evaluate,
    execution_type_name,
    schedule_subject,
    seconds,
    selects,
    state_name,
)
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import AlertRow, DeliveryRow, RunHistoryRow, SilenceRow, open_key
from services.alerting.store import LoadedChannel, LoadedRule, silence_selector
from shared.telemetry import inject_context

log = logging.getLogger(__name__)

FIRING = "firing"
RESOLVED = "resolved"
TITLE_LIMIT = 300
TEXT_LIMIT = 16_384
SEVERITIES: dict[int, str] = {
    pb.SEVERITY_INFO: "info",
    pb.SEVERITY_WARNING: "warning",
    pb.SEVERITY_CRITICAL: "critical",
}


def severity_name(value: int) -> str:
    return SEVERITIES.get(value, "warning")


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


@dataclass
class Effects:
    """What one transaction did, applied to metrics (and the worker woken) after commit."""

    fired: list[str] = field(default_factory=list)
    resolved: int = 0
    queued: int = 0
    rule_errors: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)

    def apply(self, metrics: AlertingMetrics) -> None:
        for severity in self.fired:
            metrics.alerts_fired.labels(severity).inc()
        if self.resolved:
            metrics.alerts_resolved.inc(self.resolved)
        if self.rule_errors:
            metrics.rule_errors.inc(self.rule_errors)
        for reason, count in self.suppressed.items():
            metrics.suppressed.labels(reason).inc(count)


def describe_condition(rule: pb.Rule) -> str:
    """The rule's condition in words, for messages."""
    condition = rule.condition
    kind = condition_kind(rule)
    if kind == "on_state":
        parts = [state_name(s) for s in condition.on_state.states]
        if condition.on_state.on_dead_letter:
            parts.append("DEAD_LETTERED")
        if condition.on_state.on_quarantine:
            parts.append("QUARANTINED")
        return "run reached " + " or ".join(parts)
    if kind == "consecutive_failures":
        return f"{condition.consecutive_failures.count} consecutive failures"
    if kind == "failure_rate":
        rate = condition.failure_rate
        return (
            f"failure rate above {rate.threshold:.0%} over {seconds(rate.window):g}s "
            f"(at least {rate.min_runs} runs)"
        )
    if kind == "duration":
        duration = condition.duration
        parts = []
        if seconds(duration.above) > 0:
            parts.append(f"longer than {seconds(duration.above):g}s")
        if duration.p95_factor > 0:
            parts.append(f"longer than {duration.p95_factor:g} x p95")
        return "run " + " or ".join(parts)
    if kind == "fire_missed":
        skipped = " or skipped" if condition.fire_missed.include_skipped else ""
        return f"schedule fire missed{skipped}"
    if kind == "dead_mans_switch":
        within = seconds(condition.dead_mans_switch.expected_within)
        return f"no success within {within:g}s"
    return kind


def context_for(
    rule: pb.Rule, occ: Occurrence, *, kind: str, title: str, tags: frozenset[str] | None
) -> dict[str, Any]:
    """The template context (exactly templates.SAMPLE_CONTEXT's names; no secrets: an
    occurrence carries no parameters, output or results)."""
    return {
        "alert_id": "",
        "rule_id": rule.id,
        "rule_name": rule.name,
        "kind": kind,
        "severity": severity_name(rule.severity),
        "title": title[:TITLE_LIMIT],
        "condition": describe_condition(rule),
        "script_name": occ.script_name,
        "script_version": occ.script_version,
        "script_tags": sorted(tags or ()),
        "schedule_id": occ.schedule_id,
        "run_id": occ.run_id,
        "execution_type": execution_type_name(occ.execution_type),
        "state": state_name(occ.state),
        "failure_reason": occ.failure_reason,
        "exit_code": occ.exit_code,
        "attempt": occ.attempt,
        "duration_s": occ.duration_s,
        "labels": dict(occ.labels),
        "occurrences": 1,
        "first_seen": iso(occ.occurred_at),
        "last_seen": iso(occ.occurred_at),
        "occurred_at": iso(occ.occurred_at),
    }


async def record_run(session: AsyncSession, occ: Occurrence) -> bool:
    """Add a finished run to run_history; False if its end was recorded already (a
    second FINISHED event of the run, e.g. LOST by the scheduler after the executor's)."""
    seen = await session.scalar(
        select(RunHistoryRow.id).where(RunHistoryRow.run_id == occ.run_id).limit(1)
    )
    if seen is not None:
        return False
    session.add(
        RunHistoryRow(
            run_id=occ.run_id,
            script_name=occ.script_name,
            schedule_id=occ.schedule_id,
            execution_type=occ.execution_type,
            state=occ.state,
            duration_s=occ.duration_s or 0.0,
            labels=dict(occ.labels),
            finished_at=occ.finished_at or occ.occurred_at,
        )
    )
    await session.flush()
    return True


class SqlHistory:
    """engine.History over run_history, in the caller's session."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _scoped(self, query: Any, script_name: str, schedule_id: str | None) -> Any:
        if schedule_id is not None:
            return query.where(RunHistoryRow.schedule_id == schedule_id)
        return query.where(RunHistoryRow.script_name == script_name)

    async def recent_states(
        self, script_name: str, schedule_id: str | None, limit: int
    ) -> Sequence[int]:
        query = select(RunHistoryRow.state).where(RunHistoryRow.state.in_(_COUNTED))
        query = self._scoped(query, script_name, schedule_id)
        query = query.order_by(RunHistoryRow.finished_at.desc(), RunHistoryRow.id.desc())
        return list(await self._session.scalars(query.limit(limit)))

    async def outcomes_since(
        self, script_name: str, schedule_id: str | None, since: datetime
    ) -> tuple[int, int]:
        failed = func.sum(func.coalesce(_failed_case(), 0))
        query = select(func.count(), failed).where(
            RunHistoryRow.finished_at >= since, RunHistoryRow.state.in_(_COUNTED)
        )
        row = (await self._session.execute(self._scoped(query, script_name, schedule_id))).one()
        return int(row[0] or 0), int(row[1] or 0)

    async def durations(self, script_name: str, exclude_run_id: str, limit: int) -> Sequence[float]:
        query = (
            select(RunHistoryRow.duration_s)
            .where(
                RunHistoryRow.script_name == script_name,
                RunHistoryRow.run_id != exclude_run_id,
                RunHistoryRow.duration_s > 0,
            )
            .order_by(RunHistoryRow.finished_at.desc(), RunHistoryRow.id.desc())
            .limit(limit)
        )
        return list(await self._session.scalars(query))


# Runs that count for streaks and rates: failures and successes (not cancellations).
_COUNTED = sorted(FAILED_STATES | {common_pb2.RUN_STATE_SUCCEEDED})


def _failed_case() -> Any:
    return case((RunHistoryRow.state.in_(sorted(FAILED_STATES)), 1), else_=0)


class Notices:
    """Applies rules to occurrences within a transaction."""

    def __init__(self, *, tags: ScriptTags, default_max_attempts: int) -> None:
        self._tags = tags
        self._max_attempts = default_max_attempts

    async def handle(
        self,
        session: AsyncSession,
        occ: Occurrence,
        rules: Sequence[LoadedRule],
        effects: Effects,
        now: datetime,
    ) -> None:
        """Record a finished run, then evaluate every rule on the occurrence."""
        if occ.kind == RUN_FINISHED and not await record_run(session, occ):
            return
        history = SqlHistory(session)
        tags = await self._tags_if_needed(occ, rules)
        for loaded in rules:
            rule = loaded.rule
            try:
                if not selects(rule.selector, occ, tags):
                    continue
                verdict = await evaluate(rule, occ, history)
            except Exception:
                log.exception("rule %s failed on event %s; skipped", rule.id, occ.event_id)
                effects.rule_errors += 1
                continue
            if verdict.fire:
                await self.fire(session, loaded, occ, verdict.summary, tags, effects, now)
            elif verdict.resolve:
                await self.resolve(session, loaded, occ, tags, effects, now)

    async def _tags_if_needed(
        self, occ: Occurrence, rules: Sequence[LoadedRule]
    ) -> frozenset[str] | None:
        if any(r.rule.selector.script_tags for r in rules):
            return await self._tags.get(occ.script_name)
        return None

    async def fire(
        self,
        session: AsyncSession,
        loaded: LoadedRule,
        occ: Occurrence,
        summary: str,
        tags: frozenset[str] | None,
        effects: Effects,
        now: datetime,
    ) -> AlertRow:
        """Open the alert of the occurrence's group key, or count one more occurrence of
        it; notify unless deduplicated, silenced or throttled."""
        rule = loaded.rule
        context = context_for(rule, occ, kind=FIRING, title=summary, tags=tags)
        key = noise.group_key(rule, context)
        at = occ.occurred_at
        alert = await session.scalar(
            select(AlertRow).where(AlertRow.open_key == open_key(rule.id, key))
        )
        quiet = False
        if alert is None:
            alert = AlertRow(
                id=uuid.uuid4().hex,
                rule_id=rule.id,
                group_key=key,
                open_key=open_key(rule.id, key),
                state=pb.ALERT_STATE_FIRING,
                severity=rule.severity or pb.SEVERITY_WARNING,
                summary=summary,
                script_name=occ.script_name,
                schedule_id=occ.schedule_id,
                run_id=occ.run_id,
                occurrences=1,
                first_seen=at,
                last_seen=at,
            )
            session.add(alert)
            effects.fired.append(severity_name(rule.severity))
        else:
            alert.occurrences += 1
            alert.last_seen = max(alert.last_seen, at)
            alert.summary = summary
            alert.run_id = occ.run_id or alert.run_id
            window = rule.dedup_window.ToTimedelta() if rule.HasField("dedup_window") else None
            quiet = noise.deduplicated(alert.last_notified_at, at, window)
        context |= {
            "alert_id": alert.id,
            "occurrences": alert.occurrences,
            "first_seen": iso(alert.first_seen),
            "last_seen": iso(alert.last_seen),
        }
        alert.context = context
        if quiet:
            effects.suppressed[noise.DEDUP] += 1
            return alert
        if await self._silenced(session, occ, tags, at):
            effects.suppressed[noise.SILENCE] += 1
            return alert
        alert.last_notified_at = at
        await self._queue(session, loaded, alert, context, occ, FIRING, effects, now)
        return alert

    async def resolve(
        self,
        session: AsyncSession,
        loaded: LoadedRule,
        occ: Occurrence,
        tags: frozenset[str] | None,
        effects: Effects,
        now: datetime,
    ) -> None:
        """Resolve the rule's open alerts on the occurrence's subject (its schedule or its
        script) that began before it; queue recovery notices if the rule asks for them."""
        rule = loaded.rule
        query = select(AlertRow).where(AlertRow.rule_id == rule.id, AlertRow.open_key.is_not(None))
        if schedule_subject(rule):
            if not occ.schedule_id:
                return
            query = query.where(AlertRow.schedule_id == occ.schedule_id)
        else:
            query = query.where(AlertRow.script_name == occ.script_name)
        for alert in (await session.scalars(query.order_by(AlertRow.first_seen))).all():
            if alert.first_seen > occ.occurred_at:
                continue  # an older success read late does not end a newer failure
            alert.state = pb.ALERT_STATE_RESOLVED
            alert.open_key = None
            alert.resolved_at = now
            alert.resolved_by = "recovery"
            effects.resolved += 1
            if not rule.notify_recovery or alert.last_notified_at is None:
                continue
            if await self._silenced(session, occ, tags, occ.occurred_at):
                effects.suppressed[noise.SILENCE] += 1
                continue
            context = dict(alert.context) | {
                "kind": RESOLVED,
                "title": f"resolved: {alert.summary}"[:TITLE_LIMIT],
                "run_id": occ.run_id,
                "state": state_name(occ.state),
                "failure_reason": "",
                "exit_code": None,
                "duration_s": occ.duration_s,
                "occurred_at": iso(occ.occurred_at),
            }
            await self._queue(session, loaded, alert, context, occ, RESOLVED, effects, now)

    async def _silenced(
        self, session: AsyncSession, occ: Occurrence, tags: frozenset[str] | None, at: datetime
    ) -> bool:
        rows = (
            await session.scalars(
                select(SilenceRow).where(SilenceRow.starts_at <= at, SilenceRow.ends_at > at)
            )
        ).all()
        windows = [
            noise.SilenceWindow(r.id, silence_selector(r), r.starts_at, r.ends_at, r.expired_at)
            for r in rows
        ]
        if any(w.selector.script_tags for w in windows) and tags is None:
            tags = await self._tags.get(occ.script_name)
        return noise.silencing(windows, occ, tags, at) is not None

    async def _queue(
        self,
        session: AsyncSession,
        loaded: LoadedRule,
        alert: AlertRow,
        context: Mapping[str, Any],
        occ: Occurrence,
        kind: str,
        effects: Effects,
        now: datetime,
    ) -> None:
        """A PENDING delivery per enabled channel of the rule (firing ones throttled)."""
        rule = loaded.rule
        text = templates.render(rule.message_template, context, limit=TEXT_LIMIT)
        for channel in loaded.channels:
            if kind == FIRING and await self._throttled(session, rule, channel.id, now):
                effects.suppressed[noise.THROTTLE] += 1
                log.info("notification of rule %s to channel %s throttled", rule.id, channel.id)
                continue
            delivery_id = uuid.uuid4().hex
            dedup = f"{occ.event_id}\x00{alert.id}\x00{channel.id}\x00{kind}"
            session.add(
                DeliveryRow(
                    id=delivery_id,
                    alert_id=alert.id,
                    rule_id=rule.id,
                    channel_id=channel.id,
                    kind=kind,
                    state=pb.DELIVERY_STATE_PENDING,
                    attempts=0,
                    max_attempts=self._attempts(channel),
                    next_attempt_at=now,
                    payload={
                        "delivery_id": delivery_id,
                        "alert_id": alert.id,
                        "rule_id": rule.id,
                        "rule_name": rule.name,
                        "kind": kind,
                        "severity": severity_name(rule.severity),
                        "title": str(context["title"]),
                        "text": text,
                        "context": dict(context),
                        "occurred_at": iso(occ.occurred_at),
                        # The evaluation's trace, continued by the send (never sent on).
                        TRACE_KEY: inject_context(),
                    },
                    dedup_key=hashlib.sha256(dedup.encode()).hexdigest(),
                    created_at=now,
                    updated_at=now,
                )
            )
            effects.queued += 1

    def _attempts(self, channel: LoadedChannel) -> int:
        if channel.channel.WhichOneof("kind") == "webhook" and channel.channel.webhook.max_attempts:
            return int(channel.channel.webhook.max_attempts)
        return self._max_attempts

    async def _throttled(
        self, session: AsyncSession, rule: pb.Rule, channel_id: str, now: datetime
    ) -> bool:
        if rule.throttle_limit <= 0 or not rule.HasField("throttle_window"):
            return False
        window: timedelta = rule.throttle_window.ToTimedelta()
        sent = await session.scalar(
            select(func.count()).where(
                DeliveryRow.rule_id == rule.id,
                DeliveryRow.channel_id == channel_id,
                DeliveryRow.kind == FIRING,
                DeliveryRow.created_at > now - window,
            )
        )
        return noise.throttled(int(sent or 0), rule.throttle_limit, window)

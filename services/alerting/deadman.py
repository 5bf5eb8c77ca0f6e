"""Dead-man's switch: rules whose condition is `dead_mans_switch` expect a success of
each selected schedule at least every `expected_within`.

A watch row per (rule, schedule) keeps the last success seen (updated by the consumer in
the event's transaction, `record_success`) and whether this silence already fired. The
loop fires once per silence period (a new alert, notified like any other) once the
success is overdue; the next success resolves the alert (the consumer's recovery path)
and starts a new period. The clock of a schedule that never succeeded since alerting
knew it starts when the rule was last changed.

Schedules watched: `selector.schedule_ids`, or else every schedule whose runs of the
selected scripts alerting has seen (run_history).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from services.alerting.engine import DEADMAN, Occurrence, condition_kind, seconds, timestamp
from services.alerting.metrics import AlertingMetrics
from services.alerting.models import RunHistoryRow, WatchRow
from services.alerting.notices import Effects, Notices, iso
from services.alerting.store import LoadedRule, RuleCache
from shared.tasks import WakeableLoop

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


async def record_success(session: AsyncSession, occ: Occurrence, now: datetime) -> None:
    """A success of a schedule's run ends its watches' silence (in the event's transaction)."""
    if not (occ.succeeded and occ.schedule_id):
        return
    at = occ.finished_at or occ.occurred_at
    watches = await session.scalars(select(WatchRow).where(WatchRow.schedule_id == occ.schedule_id))
    for watch in watches:
        if watch.last_success_at is None or at > watch.last_success_at:
            watch.last_success_at = at
            watch.alert_id = None
            watch.updated_at = now


class DeadMansSwitch(WakeableLoop):
    """Checks the dead-man's-switch rules every `interval_s`."""

    name = "deadman"

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        rules: RuleCache,
        notices: Notices,
        metrics: AlertingMetrics,
        on_queued: Callable[[], None],
        interval_s: float,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        super().__init__(interval_s)
        self._sessions = sessions
        self._rules = rules
        self._notices = notices
        self._metrics = metrics
        self._on_queued = on_queued
        self._clock = clock

    async def step(self) -> bool:
        await self.check_once()
        return False  # overdue schedules wait for the next interval either way

    async def check_once(self) -> int:
        """One pass over the rules; returns how many alerts fired."""
        rules = [
            r for r in await self._rules.rules() if condition_kind(r.rule) == "dead_mans_switch"
        ]
        if not rules:
            return 0
        now = self._clock()
        effects = Effects()
        fired = 0
        async with self._sessions() as session, session.begin():
            for loaded in rules:
                fired += await self._check_rule(session, loaded, now, effects)
        effects.apply(self._metrics)
        if effects.queued:
            self._on_queued()
        return fired

    async def _check_rule(
        self, session: AsyncSession, loaded: LoadedRule, now: datetime, effects: Effects
    ) -> int:
        rule = loaded.rule
        within = timedelta(seconds=seconds(rule.condition.dead_mans_switch.expected_within))
        if within <= timedelta(0):
            return 0
        changed = timestamp(rule.update_time) or timestamp(rule.create_time) or now
        watches = {
            w.schedule_id: w
            for w in await session.scalars(select(WatchRow).where(WatchRow.rule_id == rule.id))
        }
        fired = 0
        for schedule_id, script_name in await self._targets(session, loaded):
            watch = watches.get(schedule_id) or await self._new_watch(
                session, rule.id, schedule_id, script_name, now
            )
            start = max(changed, watch.last_success_at or changed)
            if watch.due_at != start + within:
                watch.due_at = start + within
            if now < watch.due_at or watch.alert_id is not None:
                continue
            script = watch.script_name or script_name
            occ = Occurrence(
                kind=DEADMAN,
                event_id=f"deadman:{rule.id}:{schedule_id}:{iso(watch.due_at)}",
                occurred_at=now,
                script_name=script,
                schedule_id=schedule_id,
            )
            since = iso(watch.last_success_at) if watch.last_success_at else "alerting watched it"
            summary = (
                f"schedule {schedule_id}{f' ({script})' if script else ''} has not succeeded "
                f"within {within.total_seconds():g}s (last success: {since})"
            )
            alert = await self._notices.fire(session, loaded, occ, summary, None, effects, now)
            watch.alert_id = alert.id
            watch.updated_at = now
            fired += 1
        return fired

    async def _targets(self, session: AsyncSession, loaded: LoadedRule) -> list[tuple[str, str]]:
        """(schedule id, script name) pairs the rule watches."""
        selector = loaded.rule.selector
        if selector.schedule_ids:
            rows = await session.execute(
                select(RunHistoryRow.schedule_id, func.max(RunHistoryRow.script_name))
                .where(RunHistoryRow.schedule_id.in_(list(selector.schedule_ids)))
                .group_by(RunHistoryRow.schedule_id)
            )
            names = {str(row[0]): str(row[1]) for row in rows}
            return [(s, names.get(s, "")) for s in selector.schedule_ids]
        if not selector.script_names:
            return []
        rows = await session.execute(
            select(RunHistoryRow.schedule_id, RunHistoryRow.script_name)
            .where(
                RunHistoryRow.schedule_id != "",
                RunHistoryRow.script_name.in_(list(selector.script_names)),
            )
            .distinct()
        )
        return sorted((str(row[0]), str(row[1])) for row in rows)

    async def _new_watch(
        self, session: AsyncSession, rule_id: str, schedule_id: str, script_name: str, now: datetime
    ) -> WatchRow:
        last = await session.scalar(
            select(func.max(RunHistoryRow.finished_at)).where(
                RunHistoryRow.schedule_id == schedule_id,
                RunHistoryRow.state == common_pb2.RUN_STATE_SUCCEEDED,
            )
        )
        if isinstance(last, datetime) and last.tzinfo is None:
            last = last.replace(tzinfo=UTC)  # an aggregate skips the column's type on SQLite
        watch = WatchRow(
            rule_id=rule_id,
            schedule_id=schedule_id,
            script_name=script_name,
            last_success_at=last,
            due_at=now,
            alert_id=None,
            updated_at=now,
        )
        session.add(watch)
        return watch

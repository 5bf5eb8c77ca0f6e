"""Rule evaluation: which lifecycle events are occurrences a rule looks at, whether its
selector takes one, and what its condition says about it (fire, resolve, or nothing).

Pure logic over an `Occurrence` (the facts of one event, never output, results or
parameters) and a `History` of finished runs (run_history; a fake in unit tests). What
an alert, a dedup or a delivery becomes is decided in noise.py and written by notices.py.

Conventions (docs/alerting.md has the user's view):
- A selector field restricts only what it names; an empty selector takes everything. A
  field the occurrence cannot answer (labels or execution type of a schedule event, tags
  of a script the catalogue was not asked about) does not match.
- Script names and schedule ids match exactly; `script_tags` takes a script with any of
  the tags; `labels` needs all of the pairs.
- Failures are FAILED, TIMED_OUT and LOST runs (CANCELLED is a choice, not a failure).
- The subject of an alert is its schedule for fire-missed and dead-man's-switch rules,
  its script otherwise; a success of the subject resolves the rule's open alerts on it
  (a rule whose own condition fires on that success is left alone).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from runbox.alerting.v1 import alerting_pb2
from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from services.alerting.events import Event

log = logging.getLogger(__name__)
RS = common_pb2
FAILED_STATES = frozenset({RS.RUN_STATE_FAILED, RS.RUN_STATE_TIMED_OUT, RS.RUN_STATE_LOST})
TERMINAL_STATES = FAILED_STATES | {RS.RUN_STATE_SUCCEEDED, RS.RUN_STATE_CANCELLED}
# p95 needs this many earlier durations of the script before a factor of it is judged.
MIN_P95_SAMPLES = 5
# Earlier durations the p95 is taken over (the most recent ones).
P95_SAMPLES = 200

# Longest names and ids stored (the alerts / run_history columns): a longer value from a
# producer is cut rather than failing the event's transaction on every redelivery.
NAME_LIMIT = 63
ID_LIMIT = 64
# Occurrence kinds.
RUN_FINISHED = "run_finished"
DEAD_LETTERED = "dead_lettered"
QUARANTINED = "quarantined"
FIRE_MISSED = "fire_missed"
FIRE_SKIPPED = "fire_skipped"
DEADMAN = "deadman"
SCHEDULE_SUBJECT = frozenset({"fire_missed", "dead_mans_switch"})


@dataclass(frozen=True)
class Occurrence:
    """What one event says that rules look at."""

    kind: str
    event_id: str
    occurred_at: datetime
    script_name: str = ""
    schedule_id: str = ""
    run_id: str = ""
    script_version: str = ""
    execution_type: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    state: int = 0
    duration_s: float | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    failure_reason: str = ""
    attempt: int = 0
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return self.kind == RUN_FINISHED and self.state == RS.RUN_STATE_SUCCEEDED

    @property
    def failed(self) -> bool:
        return self.kind == RUN_FINISHED and self.state in FAILED_STATES


@dataclass(frozen=True)
class Verdict:
    """A condition's answer for one occurrence."""

    fire: bool = False
    resolve: bool = False
    summary: str = ""


NOTHING = Verdict()


class History(Protocol):
    """Finished runs recorded before the occurrence (the occurrence's own run included)."""

    async def recent_states(
        self, script_name: str, schedule_id: str | None, limit: int
    ) -> Sequence[int]:
        """States of the latest `limit` runs, newest first."""

    async def outcomes_since(
        self, script_name: str, schedule_id: str | None, since: datetime
    ) -> tuple[int, int]:
        """(runs, failures) among runs finished at or after `since`."""

    async def durations(self, script_name: str, exclude_run_id: str, limit: int) -> Sequence[float]:
        """Durations of the latest `limit` runs of the script that have one."""


def timestamp(value: timestamp_pb2.Timestamp, default: datetime | None = None) -> datetime | None:
    """A set Timestamp as an aware datetime, else `default`."""
    if value.seconds == 0 and value.nanos == 0:
        return default
    return value.ToDatetime(tzinfo=UTC)


def seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def occurrence_of(event: Event, now: datetime) -> Occurrence | None:
    """The occurrence an event is, or None for events no condition looks at (script
    events, runs that are not over, schedule fires, pauses...)."""
    message = event.message
    if isinstance(message, events_pb2.RunEvent):
        if message.type == events_pb2.RUN_EVENT_TYPE_FINISHED:
            if message.state not in TERMINAL_STATES:
                return None
            return _run_occurrence(RUN_FINISHED, event.event_id, message, now)
        if message.type == events_pb2.RUN_EVENT_TYPE_DEAD_LETTERED:
            return _run_occurrence(DEAD_LETTERED, event.event_id, message, now)
        return None
    if isinstance(message, events_pb2.ScheduleEvent):
        kind = {
            events_pb2.SCHEDULE_EVENT_TYPE_FIRE_MISSED: FIRE_MISSED,
            events_pb2.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED: FIRE_SKIPPED,
            events_pb2.SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED: QUARANTINED,
        }.get(message.type)
        if kind is None:
            return None
        return Occurrence(
            kind=kind,
            event_id=event.event_id,
            occurred_at=timestamp(message.occurred_at, now) or now,
            script_name=message.script_name[:NAME_LIMIT],
            schedule_id=message.schedule_id[:ID_LIMIT],
            run_id=message.run_id[:ID_LIMIT],
            reason=message.reason[:500],
        )
    return None


def _run_occurrence(
    kind: str, event_id: str, message: events_pb2.RunEvent, now: datetime
) -> Occurrence:
    started = timestamp(message.started_at)
    finished = timestamp(message.finished_at)
    duration = (finished - started).total_seconds() if started and finished else None
    has_exit = message.HasField("exit")
    return Occurrence(
        kind=kind,
        event_id=event_id,
        occurred_at=timestamp(message.occurred_at, now) or now,
        script_name=message.script_name[:NAME_LIMIT],
        schedule_id=message.schedule_id[:ID_LIMIT],
        run_id=message.run_id[:ID_LIMIT],
        script_version=message.script_version[:ID_LIMIT],
        execution_type=message.execution_type,
        labels=dict(message.labels),
        state=message.state,
        duration_s=max(duration, 0.0) if duration is not None else None,
        finished_at=finished or timestamp(message.occurred_at, now),
        exit_code=message.exit.exit_code if has_exit else None,
        failure_reason=_enum_name(RS.FailureReason, message.exit.reason, "FAILURE_REASON_")
        if has_exit and message.exit.reason
        else "",
        attempt=message.attempt,
        reason=message.exit.message[:500] if has_exit else "",
    )


def selects(selector: alerting_pb2.Selector, occ: Occurrence, tags: frozenset[str] | None) -> bool:
    """Whether the selector takes the occurrence (`tags`: the script's, None if unknown)."""
    if selector.script_names and occ.script_name not in selector.script_names:
        return False
    if selector.script_tags and (tags is None or not tags.intersection(selector.script_tags)):
        return False
    if selector.schedule_ids and occ.schedule_id not in selector.schedule_ids:
        return False
    if selector.execution_types and occ.execution_type not in selector.execution_types:
        return False
    return all(occ.labels.get(key) == value for key, value in selector.labels.items())


def condition_kind(rule: alerting_pb2.Rule) -> str:
    return rule.condition.WhichOneof("kind") or ""


def schedule_subject(rule: alerting_pb2.Rule) -> bool:
    """Whether the rule's alerts are about a schedule (else about a script)."""
    return condition_kind(rule) in SCHEDULE_SUBJECT


async def evaluate(rule: alerting_pb2.Rule, occ: Occurrence, history: History) -> Verdict:
    """What the rule's condition says about an occurrence its selector took."""
    kind = condition_kind(rule)
    condition = rule.condition
    verdict = NOTHING
    if kind == "on_state":
        verdict = _on_state(condition.on_state, occ)
    elif kind == "consecutive_failures":
        verdict = await _consecutive(rule, occ, history)
    elif kind == "failure_rate":
        verdict = await _failure_rate(rule, occ, history)
    elif kind == "duration":
        verdict = await _duration(condition.duration, occ, history)
    elif kind == "fire_missed":
        verdict = _fire_missed(condition.fire_missed, occ)
    if verdict.fire or verdict.resolve:
        return verdict
    if occ.succeeded and kind not in ("failure_rate", "duration"):
        # The subject works again (failure_rate and duration decide that themselves).
        return Verdict(resolve=True, summary=_recovered(occ))
    return NOTHING


def _enum_name(enum: EnumTypeWrapper, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def state_name(state: int) -> str:
    """'FAILED' for RUN_STATE_FAILED ('' for none)."""
    return _enum_name(RS.RunState, state, "RUN_STATE_") if state else ""


def execution_type_name(value: int) -> str:
    return _enum_name(RS.ExecutionType, value, "EXECUTION_TYPE_") if value else ""


def _recovered(occ: Occurrence) -> str:
    return f"{occ.script_name} succeeded again (run {occ.run_id})"


def _on_state(condition: alerting_pb2.OnStateCondition, occ: Occurrence) -> Verdict:
    if occ.kind == RUN_FINISHED and occ.state in condition.states:
        text = f"run {occ.run_id} of {occ.script_name} ended {state_name(occ.state)}"
        return Verdict(fire=True, summary=text)
    if occ.kind == DEAD_LETTERED and condition.on_dead_letter:
        return Verdict(
            fire=True, summary=f"run {occ.run_id} of {occ.script_name} was dead-lettered"
        )
    if occ.kind == QUARANTINED and condition.on_quarantine:
        reason = f": {occ.reason}" if occ.reason else ""
        return Verdict(fire=True, summary=f"script {occ.script_name} was quarantined{reason}")
    return NOTHING


def _scope(rule: alerting_pb2.Rule, occ: Occurrence) -> str | None:
    """Counts are per schedule when the rule selects schedules, per script otherwise."""
    return occ.schedule_id if rule.selector.schedule_ids else None


async def _consecutive(rule: alerting_pb2.Rule, occ: Occurrence, history: History) -> Verdict:
    count = rule.condition.consecutive_failures.count
    if not occ.failed or count <= 0:
        return NOTHING
    states = await history.recent_states(occ.script_name, _scope(rule, occ), count)
    if len(states) < count or any(s not in FAILED_STATES for s in states):
        return NOTHING
    return Verdict(
        fire=True,
        summary=f"{occ.script_name} failed {count} times in a row (last run {occ.run_id})",
    )


async def _failure_rate(rule: alerting_pb2.Rule, occ: Occurrence, history: History) -> Verdict:
    condition = rule.condition.failure_rate
    if occ.kind != RUN_FINISHED or seconds(condition.window) <= 0:
        return NOTHING
    since = occ.occurred_at - timedelta(seconds=seconds(condition.window))
    runs, failures = await history.outcomes_since(occ.script_name, _scope(rule, occ), since)
    if runs <= 0 or runs < max(condition.min_runs, 1):
        return NOTHING
    rate = failures / runs
    if occ.failed and rate > condition.threshold:
        return Verdict(
            fire=True,
            summary=(
                f"{occ.script_name}: {failures} of {runs} runs failed in the last "
                f"{_human(seconds(condition.window))} ({rate:.0%} > {condition.threshold:.0%})"
            ),
        )
    if occ.succeeded and rate <= condition.threshold:
        return Verdict(resolve=True, summary=f"{occ.script_name}: failure rate {rate:.0%}")
    return NOTHING


async def _duration(
    condition: alerting_pb2.DurationCondition, occ: Occurrence, history: History
) -> Verdict:
    if occ.kind != RUN_FINISHED or occ.duration_s is None:
        return NOTHING
    limit = seconds(condition.above) if condition.HasField("above") else 0.0
    reason = ""
    if limit > 0 and occ.duration_s > limit:
        reason = f"over {_human(limit)}"
    elif condition.p95_factor > 0:
        samples = await history.durations(occ.script_name, occ.run_id, P95_SAMPLES)
        p95 = percentile(samples, 0.95) if len(samples) >= MIN_P95_SAMPLES else None
        if p95 is not None and occ.duration_s > condition.p95_factor * p95:
            reason = f"over {condition.p95_factor:g} x p95 ({_human(p95)})"
    if reason:
        return Verdict(
            fire=True,
            summary=(
                f"run {occ.run_id} of {occ.script_name} took {_human(occ.duration_s)}, {reason}"
            ),
        )
    if occ.succeeded:
        return Verdict(resolve=True, summary=_recovered(occ))
    return NOTHING


def _fire_missed(condition: alerting_pb2.FireMissedCondition, occ: Occurrence) -> Verdict:
    if occ.kind == FIRE_MISSED or (occ.kind == FIRE_SKIPPED and condition.include_skipped):
        what = "missed" if occ.kind == FIRE_MISSED else "skipped"
        reason = f": {occ.reason}" if occ.reason else ""
        return Verdict(
            fire=True,
            summary=f"schedule {occ.schedule_id} ({occ.script_name}) {what} a fire{reason}",
        )
    return NOTHING


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(q * len(ordered)), 1)
    return ordered[rank - 1]


def _human(value_s: float) -> str:
    if value_s < 120:
        return f"{value_s:.3g}s"
    if value_s < 7200:
        return f"{value_s / 60:.3g}m"
    return f"{value_s / 3600:.3g}h"


TagFetcher = Callable[[str], Awaitable[frozenset[str]]]


class ScriptTags:
    """Tags of scripts for `script_tags` selectors. RunEvents do not carry tags and
    ScriptEvents do not either, so they are asked of `fetch` (the catalogue) once per
    script and forgotten when a ScriptEvent for the script arrives. Without a fetcher, or
    while it fails, tags are unknown and tag selectors do not match; after a failure the
    script is not asked again for `retry_s` (a catalogue outage must not slow every event
    down by a timeout)."""

    def __init__(
        self,
        fetch: TagFetcher | None = None,
        *,
        max_entries: int = 10_000,
        retry_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._known: dict[str, frozenset[str]] = {}
        self._failed: dict[str, float] = {}
        self._max = max_entries
        self._retry_s = retry_s
        self._clock = clock

    def set(self, script_name: str, tags: frozenset[str]) -> None:
        if len(self._known) >= self._max:
            self._known.clear()
        self._known[script_name] = tags

    def forget(self, script_name: str) -> None:
        self._known.pop(script_name, None)
        self._failed.pop(script_name, None)

    async def get(self, script_name: str) -> frozenset[str] | None:
        if script_name in self._known:
            return self._known[script_name]
        if self._fetch is None or not script_name:
            return None
        failed_at = self._failed.get(script_name)
        if failed_at is not None and self._clock() - failed_at < self._retry_s:
            return None
        try:
            tags = await self._fetch(script_name)
        except Exception as exc:
            log.warning("tags of script %s unknown: %s", script_name, type(exc).__name__)
            if len(self._failed) >= self._max:
                self._failed.clear()
            self._failed[script_name] = self._clock()
            return None
        self._failed.pop(script_name, None)
        self.set(script_name, tags)
        return tags

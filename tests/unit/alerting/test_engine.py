"""Rule evaluation on its own: occurrences from events, selectors, and each condition
against an in-memory run history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf import duration_pb2

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.common.v1 import common_pb2 as c
from runbox.events.v1 import events_pb2 as ev
from services.alerting.engine import (
    DEAD_LETTERED,
    FAILED_STATES,
    FIRE_MISSED,
    FIRE_SKIPPED,
    QUARANTINED,
    RUN_FINISHED,
    Occurrence,
    ScriptTags,
    evaluate,
    occurrence_of,
    percentile,
    selects,
)
from services.alerting.events import Event

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Run:
    script: str
    schedule: str
    state: int
    finished: datetime
    duration: float = 1.0
    run_id: str = ""


@dataclass
class FakeHistory:
    """engine.History over a list of runs (newest last)."""

    runs: list[Run] = field(default_factory=list)

    def _scoped(self, script: str, schedule: str | None) -> list[Run]:
        counted = FAILED_STATES | {c.RUN_STATE_SUCCEEDED}
        rows = [r for r in self.runs if r.state in counted]
        if schedule is not None:
            return [r for r in rows if r.schedule == schedule]
        return [r for r in rows if r.script == script]

    async def recent_states(self, script: str, schedule: str | None, limit: int) -> Sequence[int]:
        rows = sorted(self._scoped(script, schedule), key=lambda r: r.finished, reverse=True)
        return [r.state for r in rows[:limit]]

    async def outcomes_since(
        self, script: str, schedule: str | None, since: datetime
    ) -> tuple[int, int]:
        rows = [r for r in self._scoped(script, schedule) if r.finished >= since]
        return len(rows), sum(1 for r in rows if r.state in FAILED_STATES)

    async def durations(self, script: str, exclude_run_id: str, limit: int) -> Sequence[float]:
        rows = [r for r in self.runs if r.script == script and r.run_id != exclude_run_id]
        return [r.duration for r in rows[-limit:]]


def finished(
    state: int,
    *,
    script: str = "backup",
    schedule: str = "",
    at: datetime = T0,
    duration: float | None = 1.0,
    run_id: str = "r1",
) -> Occurrence:
    return Occurrence(
        kind=RUN_FINISHED,
        event_id=f"{run_id}:1",
        occurred_at=at,
        script_name=script,
        schedule_id=schedule,
        run_id=run_id,
        execution_type=c.EXECUTION_TYPE_PYTHON,
        labels={"team": "ops", "env": "prod"},
        state=state,
        duration_s=duration,
        finished_at=at,
    )


def rule(**condition: object) -> pb.Rule:
    return pb.Rule(id="rule1", name="r", condition=pb.Condition(**condition))  # type: ignore[arg-type]


def window(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=seconds))
    return d


def test_finished_run_event_becomes_occurrence_with_duration_and_exit() -> None:
    """A FINISHED RunEvent carries its state, duration, exit reason and labels; output never."""
    msg = ev.RunEvent(
        event_id="r9:3",
        run_id="r9",
        attempt=2,
        type=ev.RUN_EVENT_TYPE_FINISHED,
        state=c.RUN_STATE_FAILED,
        script_name="backup",
        script_version="1.2.0",
        schedule_id="s1",
        labels={"team": "ops"},
        exit=c.ExitInfo(exit_code=3, reason=c.FAILURE_REASON_EXIT_CODE, message="exit 3"),
        output=c.OutputTail(stdout=b"password=hunter2"),
    )
    msg.started_at.FromDatetime(T0)
    msg.finished_at.FromDatetime(T0 + timedelta(seconds=42))
    msg.occurred_at.FromDatetime(T0 + timedelta(seconds=42))
    occ = occurrence_of(Event("run", "r9:3", msg), now=T0)
    assert occ is not None
    assert occ.kind == RUN_FINISHED and occ.failed and not occ.succeeded
    assert occ.duration_s == 42
    assert (occ.exit_code, occ.failure_reason, occ.attempt) == (3, "EXIT_CODE", 2)
    assert occ.labels == {"team": "ops"} and occ.schedule_id == "s1"
    assert "hunter2" not in repr(occ)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (ev.RunEvent(run_id="r", type=ev.RUN_EVENT_TYPE_DEAD_LETTERED), DEAD_LETTERED),
        (ev.ScheduleEvent(type=ev.SCHEDULE_EVENT_TYPE_FIRE_MISSED, schedule_id="s"), FIRE_MISSED),
        (ev.ScheduleEvent(type=ev.SCHEDULE_EVENT_TYPE_FIRE_SKIPPED, schedule_id="s"), FIRE_SKIPPED),
        (
            ev.ScheduleEvent(type=ev.SCHEDULE_EVENT_TYPE_SCRIPT_QUARANTINED, script_name="x"),
            QUARANTINED,
        ),
        (ev.RunEvent(run_id="r", type=ev.RUN_EVENT_TYPE_STARTED), None),
        (ev.ScheduleEvent(type=ev.SCHEDULE_EVENT_TYPE_FIRED, schedule_id="s"), None),
        (ev.ScriptEvent(type=ev.SCRIPT_EVENT_TYPE_UPDATED, script_name="x"), None),
    ],
)
def test_event_kinds_map_to_occurrences(message: object, kind: str | None) -> None:
    """Only terminal, dead-letter, quarantine and fire-missed/skipped events are occurrences."""
    occ = occurrence_of(Event("k", "id", message), now=T0)  # type: ignore[arg-type]
    assert (occ.kind if occ else None) == kind


def test_selector_matches_names_schedules_types_labels_and_tags() -> None:
    """Each selector field restricts; labels need all pairs; tags need one known tag."""
    occ = finished(c.RUN_STATE_FAILED, schedule="s1")
    assert selects(pb.Selector(), occ, None)
    assert selects(pb.Selector(script_names=["other", "backup"]), occ, None)
    assert not selects(pb.Selector(script_names=["other"]), occ, None)
    assert selects(pb.Selector(schedule_ids=["s1"]), occ, None)
    assert not selects(pb.Selector(schedule_ids=["s2"]), occ, None)
    assert selects(pb.Selector(execution_types=[c.EXECUTION_TYPE_PYTHON]), occ, None)
    assert not selects(pb.Selector(execution_types=[c.EXECUTION_TYPE_SHELL]), occ, None)
    assert selects(pb.Selector(labels={"team": "ops"}), occ, None)
    assert not selects(pb.Selector(labels={"team": "ops", "env": "dev"}), occ, None)
    assert selects(pb.Selector(script_tags=["nightly", "x"]), occ, frozenset({"nightly"}))
    assert not selects(pb.Selector(script_tags=["nightly"]), occ, frozenset({"other"}))
    assert not selects(pb.Selector(script_tags=["nightly"]), occ, None)


async def test_script_tags_are_fetched_once_and_forgotten_on_change() -> None:
    """Tags come from the fetcher once per script until a ScriptEvent forgets them."""
    calls: list[str] = []

    async def fetch(name: str) -> frozenset[str]:
        calls.append(name)
        return frozenset({"ops"})

    tags = ScriptTags(fetch)
    assert await tags.get("a") == frozenset({"ops"})
    assert await tags.get("a") == frozenset({"ops"})
    tags.forget("a")
    await tags.get("a")
    assert calls == ["a", "a"]
    assert await ScriptTags().get("a") is None


async def test_script_tags_failure_is_not_asked_again_until_retry() -> None:
    """A failing fetch leaves tags unknown and is not repeated for retry_s."""
    now = [0.0]
    calls: list[str] = []

    async def fetch(name: str) -> frozenset[str]:
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionError("catalogue down")
        return frozenset({"ops"})

    tags = ScriptTags(fetch, retry_s=30, clock=lambda: now[0])
    assert await tags.get("a") is None
    now[0] = 10
    assert await tags.get("a") is None
    now[0] = 31
    assert await tags.get("a") == frozenset({"ops"})
    assert calls == ["a", "a"]


async def test_on_state_fires_for_listed_states_and_resolves_on_success() -> None:
    """FAILED fires a FAILED rule, CANCELLED does nothing, SUCCEEDED resolves."""
    r = rule(on_state=pb.OnStateCondition(states=[c.RUN_STATE_FAILED, c.RUN_STATE_TIMED_OUT]))
    history = FakeHistory()
    fired = await evaluate(r, finished(c.RUN_STATE_FAILED), history)
    assert fired.fire and "ended FAILED" in fired.summary
    assert (await evaluate(r, finished(c.RUN_STATE_TIMED_OUT), history)).fire
    nothing = await evaluate(r, finished(c.RUN_STATE_CANCELLED), history)
    assert not nothing.fire and not nothing.resolve
    assert (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED), history)).resolve


async def test_on_state_succeeded_rule_fires_and_never_resolves() -> None:
    """A rule on SUCCEEDED fires on a success (it has nothing to recover from)."""
    r = rule(on_state=pb.OnStateCondition(states=[c.RUN_STATE_SUCCEEDED]))
    verdict = await evaluate(r, finished(c.RUN_STATE_SUCCEEDED), FakeHistory())
    assert verdict.fire and not verdict.resolve


async def test_on_state_dead_letter_and_quarantine_flags() -> None:
    """Dead-letter and quarantine occurrences fire only with their flag set."""
    dead = Occurrence(kind=DEAD_LETTERED, event_id="e", occurred_at=T0, script_name="x")
    quarantined = Occurrence(
        kind=QUARANTINED, event_id="q", occurred_at=T0, script_name="x", reason="crash loop"
    )
    both = rule(on_state=pb.OnStateCondition(on_dead_letter=True, on_quarantine=True))
    neither = rule(on_state=pb.OnStateCondition(states=[c.RUN_STATE_FAILED]))
    assert (await evaluate(both, dead, FakeHistory())).fire
    verdict = await evaluate(both, quarantined, FakeHistory())
    assert verdict.fire and "crash loop" in verdict.summary
    assert not (await evaluate(neither, dead, FakeHistory())).fire
    assert not (await evaluate(neither, quarantined, FakeHistory())).fire


async def test_consecutive_failures_fire_at_the_count_and_not_before() -> None:
    """Three failures in a row fire a count-3 rule; a success in between resets the streak."""
    r = rule(consecutive_failures=pb.ConsecutiveFailuresCondition(count=3))
    history = FakeHistory()
    states = [c.RUN_STATE_FAILED, c.RUN_STATE_FAILED, c.RUN_STATE_SUCCEEDED, c.RUN_STATE_FAILED]
    for i, state in enumerate(states):
        history.runs.append(Run("backup", "", state, T0 + timedelta(minutes=i)))
        assert not (await evaluate(r, finished(state), history)).fire
    history.runs.append(Run("backup", "", c.RUN_STATE_LOST, T0 + timedelta(minutes=5)))
    assert not (await evaluate(r, finished(c.RUN_STATE_LOST), history)).fire
    history.runs.append(Run("backup", "", c.RUN_STATE_TIMED_OUT, T0 + timedelta(minutes=6)))
    verdict = await evaluate(r, finished(c.RUN_STATE_TIMED_OUT), history)
    assert verdict.fire and "3 times in a row" in verdict.summary


async def test_consecutive_failures_count_per_schedule_when_selected() -> None:
    """With schedule ids in the selector, another schedule's failures do not count."""
    r = rule(consecutive_failures=pb.ConsecutiveFailuresCondition(count=2))
    r.selector.schedule_ids.append("s1")
    history = FakeHistory(
        [
            Run("backup", "s2", c.RUN_STATE_FAILED, T0),
            Run("backup", "s1", c.RUN_STATE_FAILED, T0 + timedelta(seconds=1)),
        ]
    )
    assert not (await evaluate(r, finished(c.RUN_STATE_FAILED, schedule="s1"), history)).fire
    history.runs.append(Run("backup", "s1", c.RUN_STATE_FAILED, T0 + timedelta(seconds=2)))
    assert (await evaluate(r, finished(c.RUN_STATE_FAILED, schedule="s1"), history)).fire


async def test_failure_rate_needs_min_runs_and_fires_above_threshold() -> None:
    """2 of 4 failed in the window: fires above 40% with min_runs 4, not with min_runs 5."""
    condition = pb.FailureRateCondition(window=window(600), threshold=0.4, min_runs=4)
    r = rule(failure_rate=condition)
    history = FakeHistory(
        [
            Run("backup", "", c.RUN_STATE_FAILED, T0 - timedelta(hours=1)),  # outside
            Run("backup", "", c.RUN_STATE_SUCCEEDED, T0 - timedelta(minutes=5)),
            Run("backup", "", c.RUN_STATE_SUCCEEDED, T0 - timedelta(minutes=4)),
            Run("backup", "", c.RUN_STATE_FAILED, T0 - timedelta(minutes=3)),
            Run("backup", "", c.RUN_STATE_FAILED, T0),
        ]
    )
    verdict = await evaluate(r, finished(c.RUN_STATE_FAILED), history)
    assert verdict.fire and "2 of 4" in verdict.summary
    condition.min_runs = 5
    assert not (
        await evaluate(rule(failure_rate=condition), finished(c.RUN_STATE_FAILED), history)
    ).fire
    condition.min_runs, condition.threshold = 4, 0.5
    assert not (
        await evaluate(rule(failure_rate=condition), finished(c.RUN_STATE_FAILED), history)
    ).fire


async def test_failure_rate_resolves_only_when_rate_is_back_under() -> None:
    """A success resolves a failure-rate alert only when the rate is at or under the threshold."""
    r = rule(failure_rate=pb.FailureRateCondition(window=window(600), threshold=0.5, min_runs=1))
    history = FakeHistory(
        [Run("backup", "", c.RUN_STATE_FAILED, T0), Run("backup", "", c.RUN_STATE_FAILED, T0)]
    )
    history.runs.append(Run("backup", "", c.RUN_STATE_SUCCEEDED, T0))
    assert not (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED), history)).resolve
    history.runs.append(Run("backup", "", c.RUN_STATE_SUCCEEDED, T0))
    assert (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED), history)).resolve


async def test_duration_above_absolute_threshold() -> None:
    """A run longer than `above` fires, a shorter success resolves."""
    r = rule(duration=pb.DurationCondition(above=window(30)))
    verdict = await evaluate(r, finished(c.RUN_STATE_SUCCEEDED, duration=31), FakeHistory())
    assert verdict.fire and "over 30s" in verdict.summary
    assert (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED, duration=29), FakeHistory())).resolve
    assert not (await evaluate(r, finished(c.RUN_STATE_FAILED, duration=None), FakeHistory())).fire


async def test_duration_above_factor_of_p95_needs_enough_samples() -> None:
    """k x p95 fires past k times the script's p95, and not with fewer than 5 samples."""
    r = rule(duration=pb.DurationCondition(p95_factor=2.0))
    history = FakeHistory(
        [
            Run("backup", "", c.RUN_STATE_SUCCEEDED, T0, duration=d, run_id=f"o{d}")
            for d in range(1, 5)
        ]
    )
    slow = finished(c.RUN_STATE_SUCCEEDED, duration=100, run_id="slow")
    assert not (await evaluate(r, slow, history)).fire  # 4 samples
    history.runs.append(Run("backup", "", c.RUN_STATE_SUCCEEDED, T0, duration=10, run_id="o10"))
    # p95 of [1, 2, 3, 4, 10] is 10: 2 x 10 = 20.
    assert (await evaluate(r, slow, history)).fire
    assert not (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED, duration=19), history)).fire


async def test_fire_missed_and_skipped() -> None:
    """FIRE_MISSED fires; FIRE_SKIPPED only with include_skipped."""
    missed = Occurrence(kind=FIRE_MISSED, event_id="m", occurred_at=T0, schedule_id="s1")
    skipped = Occurrence(kind=FIRE_SKIPPED, event_id="k", occurred_at=T0, schedule_id="s1")
    plain = rule(fire_missed=pb.FireMissedCondition())
    with_skips = rule(fire_missed=pb.FireMissedCondition(include_skipped=True))
    assert (await evaluate(plain, missed, FakeHistory())).fire
    assert not (await evaluate(plain, skipped, FakeHistory())).fire
    assert (await evaluate(with_skips, skipped, FakeHistory())).fire


async def test_dead_mans_switch_rule_resolves_on_success_only() -> None:
    """Occurrences never fire a dead-man's switch (the loop does); a success resolves it."""
    r = rule(dead_mans_switch=pb.DeadMansSwitchCondition(expected_within=window(60)))
    assert not (await evaluate(r, finished(c.RUN_STATE_FAILED), FakeHistory())).fire
    assert (await evaluate(r, finished(c.RUN_STATE_SUCCEEDED), FakeHistory())).resolve


def test_percentile_nearest_rank() -> None:
    """Nearest-rank p95 and p50; None for no values."""
    assert percentile(list(range(1, 101)), 0.95) == 95
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile([], 0.95) is None

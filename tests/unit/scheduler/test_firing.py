"""Pure firing logic: what a due nominal time becomes under each catch-up policy,
deterministic jitter, run keys, and counting fires older than the deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import triggers as tr
from services.scheduler.firing.planning import Plan, count_expired, jitter, plan, run_key

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)
GRACE, WINDOW = 5 * S, 60 * S


def decide(nominal: datetime, following: datetime | None, policy: int) -> Plan:
    return plan(nominal, following, now=NOW, grace=GRACE, window=WINDOW, policy=policy)


@pytest.mark.parametrize(
    "policy", [pb.CATCH_UP_POLICY_SKIP, pb.CATCH_UP_POLICY_LATEST, pb.CATCH_UP_POLICY_ALL]
)
def test_on_time_fires_and_expired_is_expired_whatever_the_policy(policy: int) -> None:
    assert decide(NOW - GRACE, NOW, policy) is Plan.FIRE
    assert decide(NOW, None, policy) is Plan.FIRE
    assert decide(NOW - WINDOW - S, NOW - WINDOW, policy) is Plan.EXPIRED


def test_missed_within_the_window_by_policy() -> None:
    missed, newer_missed, on_time = NOW - 30 * S, NOW - 20 * S, NOW - 2 * S
    assert decide(missed, newer_missed, pb.CATCH_UP_POLICY_SKIP) is Plan.MISS
    assert decide(missed, on_time, pb.CATCH_UP_POLICY_SKIP) is Plan.MISS
    assert decide(missed, newer_missed, pb.CATCH_UP_POLICY_ALL) is Plan.FIRE
    # LATEST fires a missed time only when no later one is missed too.
    assert decide(missed, newer_missed, pb.CATCH_UP_POLICY_LATEST) is Plan.MISS
    assert decide(missed, on_time, pb.CATCH_UP_POLICY_LATEST) is Plan.FIRE
    assert decide(missed, NOW + S, pb.CATCH_UP_POLICY_LATEST) is Plan.FIRE
    assert decide(missed, None, pb.CATCH_UP_POLICY_LATEST) is Plan.FIRE


def test_jitter_is_deterministic_bounded_and_spread() -> None:
    most = timedelta(minutes=5)
    values = {jitter("s1", NOW + i * S, most) for i in range(200)}
    assert all(timedelta(0) <= v < most for v in values)
    assert len(values) == 200
    assert jitter("s1", NOW, most) == jitter("s1", NOW.astimezone(ZoneInfo("Asia/Tokyo")), most)
    assert jitter("s1", NOW, most) != jitter("s2", NOW, most)
    assert jitter("s1", NOW, timedelta(0)) == timedelta(0)


def test_run_key_names_the_nominal_time_in_utc() -> None:
    paris = NOW.astimezone(ZoneInfo("Europe/Paris"))
    assert run_key("abc", paris) == "schedule:abc:2026-03-02T12:00:00Z"
    assert run_key("abc", NOW + timedelta(microseconds=5)) == (
        "schedule:abc:2026-03-02T12:00:00.000005Z"
    )


def every_second(start: datetime) -> tr.Spec:
    return tr.Spec(trigger=tr.Interval(S, start), zone=ZoneInfo("UTC"))


def test_count_expired_counts_up_to_the_cutoff() -> None:
    spec = every_second(NOW - timedelta(hours=1))
    count, last, following = count_expired(spec, NOW - 100 * S, NOW - 10 * S)
    assert (count, last, following) == (90, NOW - 11 * S, NOW - 10 * S)


def test_count_expired_is_capped_and_still_lands_at_the_cutoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("services.scheduler.firing.planning.EXPIRED_COUNT_CAP", 50)
    spec = every_second(NOW - timedelta(hours=1))
    count, last, following = count_expired(spec, NOW - 100 * S, NOW - 10 * S)
    assert (count, last, following) == (50, NOW - 51 * S, NOW - 10 * S)


def test_count_expired_of_a_schedule_that_ends() -> None:
    spec = tr.Spec(
        trigger=tr.Interval(S, NOW - timedelta(hours=1)), zone=ZoneInfo("UTC"), end=NOW - 50 * S
    )
    count, last, following = count_expired(spec, NOW - 100 * S, NOW - 10 * S)
    assert (count, last, following) == (50, NOW - 51 * S, None)

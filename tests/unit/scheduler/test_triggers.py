"""Trigger math: cron (5 and 6 fields), interval, once, shorthands, DST both
ways, the day filter and the start/end window."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.scheduler.triggers import (
    Cron,
    Daily,
    DayFilter,
    DstPolicy,
    Interval,
    Monthly,
    Once,
    Spec,
    Weekly,
    Yearly,
    next_fire,
    resolve,
    upcoming,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def local(spec: Spec, after: datetime, count: int) -> list[str]:
    return [f.astimezone(spec.zone).isoformat() for f in upcoming(spec, after, count)]


def test_cron_five_fields_fires_each_matching_minute() -> None:
    """A 5-field cron fires at its minutes, strictly after the given instant."""
    spec = Spec(Cron("*/15 * * * *"), UTC_ZONE)
    assert list(upcoming(spec, at(2026, 1, 1, 10, 0), 3)) == [
        at(2026, 1, 1, 10, 15),
        at(2026, 1, 1, 10, 30),
        at(2026, 1, 1, 10, 45),
    ]


def test_cron_six_fields_takes_seconds_first() -> None:
    """With 6 fields the first one is seconds."""
    spec = Spec(Cron("30 0 12 * * *"), UTC_ZONE)
    assert list(upcoming(spec, at(2026, 1, 1), 2)) == [
        at(2026, 1, 1, 12, 0, 30),
        at(2026, 1, 2, 12, 0, 30),
    ]


def test_cron_is_read_in_the_schedule_zone() -> None:
    """09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer."""
    spec = Spec(Cron("0 9 * * *"), NEW_YORK)
    assert next_fire(spec, at(2026, 1, 15)) == at(2026, 1, 15, 14)
    assert next_fire(spec, at(2026, 7, 15)) == at(2026, 7, 15, 13)


def test_cron_that_never_matches_has_no_next_fire() -> None:
    """February 30th is searched within the bounded horizon, then given up."""
    assert next_fire(Spec(Cron("0 0 30 2 *"), UTC_ZONE), at(2026, 1, 1)) is None


def test_leap_day_cron_fires_within_the_horizon() -> None:
    """Feb 29 is years away but inside the horizon, so it is found."""
    assert next_fire(Spec(Cron("0 0 29 2 *"), UTC_ZONE), at(2028, 3, 1)) == at(2032, 2, 29)


def test_spring_forward_shift_fires_at_the_end_of_the_gap() -> None:
    """02:30 does not exist on 2026-03-29 in Paris: SHIFT_FORWARD fires at 03:00+02:00."""
    spec = Spec(Daily(time(2, 30)), PARIS)
    assert local(spec, at(2026, 3, 27), 4) == [
        "2026-03-27T02:30:00+01:00",
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_spring_forward_skip_missing_does_not_fire_that_day() -> None:
    """SKIP_MISSING drops the nonexistent 02:30 of 2026-03-29 in Paris."""
    spec = Spec(Daily(time(2, 30)), PARIS, dst=DstPolicy.SKIP_MISSING_FIRE_ONCE)
    assert local(spec, at(2026, 3, 28, 12), 2) == [
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_spring_forward_gap_times_collapse_into_one_fire() -> None:
    """Every skipped time of a gap fires once, at the transition, with 03:00 itself."""
    spec = Spec(Cron("*/20 * * * *"), PARIS)
    assert local(spec, at(2026, 3, 29, 0, 30), 4) == [
        "2026-03-29T01:40:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:20:00+02:00",
        "2026-03-29T03:40:00+02:00",
    ]


def test_spring_forward_new_york_shifts_to_three() -> None:
    """In New York 02:15 on 2026-03-08 does not exist; it fires at 03:00-04:00."""
    spec = Spec(Daily(time(2, 15)), NEW_YORK)
    assert local(spec, at(2026, 3, 8), 1) == ["2026-03-08T03:00:00-04:00"]


@pytest.mark.parametrize("policy", list(DstPolicy))
def test_fall_back_repeated_time_fires_once_at_first_occurrence(policy: DstPolicy) -> None:
    """02:30 happens twice on 2026-10-25 in Paris; both policies fire once, at +02:00."""
    spec = Spec(Daily(time(2, 30)), PARIS, dst=policy)
    assert local(spec, at(2026, 10, 24, 12), 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_fall_back_second_pass_of_the_hour_fires_nothing() -> None:
    """A half-hourly cron fires 02:00 and 02:30 once; the repeated hour adds nothing."""
    spec = Spec(Cron("*/30 * * * *"), PARIS)
    assert local(spec, at(2026, 10, 24, 23, 50), 4) == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]


def test_fall_back_new_york_fires_once() -> None:
    """01:30 repeats on 2026-11-01 in New York; it fires at -04:00 only."""
    spec = Spec(Daily(time(1, 30)), NEW_YORK)
    assert local(spec, at(2026, 11, 1), 2) == [
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_resolve_of_skipped_time_under_skip_policy_is_none() -> None:
    """resolve returns None for a skipped wall time when skipping."""
    gap = datetime(2026, 3, 29, 2, 30)
    assert resolve(gap, PARIS, DstPolicy.SKIP_MISSING_FIRE_ONCE) is None
    assert resolve(gap, PARIS, DstPolicy.SHIFT_FORWARD_FIRE_ONCE) == at(2026, 3, 29, 1)


def test_interval_counts_from_anchor_and_ignores_dst() -> None:
    """An interval is absolute time: every 6 hours from the anchor, across the Paris gap."""
    spec = Spec(Interval(timedelta(hours=6), at(2026, 3, 28, 22)), PARIS)
    assert list(upcoming(spec, at(2026, 3, 28, 23), 3)) == [
        at(2026, 3, 29, 4),
        at(2026, 3, 29, 10),
        at(2026, 3, 29, 16),
    ]


def test_interval_before_anchor_fires_first_at_anchor() -> None:
    """Before the anchor, the first fire is the anchor itself."""
    spec = Spec(Interval(timedelta(minutes=5), at(2026, 5, 1, 12)), UTC_ZONE)
    assert next_fire(spec, at(2026, 4, 1)) == at(2026, 5, 1, 12)


def test_interval_with_weekday_filter_skips_the_weekend() -> None:
    """Fires falling on a local Saturday or Sunday are skipped."""
    spec = Spec(Interval(timedelta(hours=7), at(2026, 11, 20)), PARIS, days=DayFilter.WEEKDAYS)
    assert list(upcoming(spec, at(2026, 11, 20, 12), 3)) == [
        at(2026, 11, 20, 14),
        at(2026, 11, 20, 21),
        at(2026, 11, 23, 5),
    ]


def test_once_fires_once_then_never() -> None:
    """A once trigger fires at its instant and has nothing after it."""
    spec = Spec(Once(at(2026, 12, 1, 8)), UTC_ZONE)
    assert list(upcoming(spec, at(2026, 1, 1), 5)) == [at(2026, 12, 1, 8)]


def test_daily_weekday_filter_skips_weekend() -> None:
    """Daily with DAY_FILTER_WEEKDAYS goes from Friday to Monday."""
    spec = Spec(Daily(time(9)), PARIS, days=DayFilter.WEEKDAYS)
    assert local(spec, at(2026, 11, 20, 12), 2) == [
        "2026-11-23T09:00:00+01:00",
        "2026-11-24T09:00:00+01:00",
    ]


def test_weekend_filter_keeps_only_saturday_and_sunday() -> None:
    """An hourly-at-noon cron with DAY_FILTER_WEEKENDS fires on Saturday and Sunday."""
    spec = Spec(Cron("0 12 * * *"), UTC_ZONE, days=DayFilter.WEEKENDS)
    fires = list(upcoming(spec, at(2026, 11, 23), 4))
    assert [f.isoweekday() for f in fires] == [6, 7, 6, 7]


def test_filter_that_excludes_every_cron_day_never_fires() -> None:
    """A weekdays-only cron with a weekend filter has no fire."""
    spec = Spec(Cron("0 9 * * 1-5"), UTC_ZONE, days=DayFilter.WEEKENDS)
    assert next_fire(spec, at(2026, 1, 1)) is None


def test_weekly_fires_on_listed_iso_weekdays() -> None:
    """Weekly on Monday (1) and Sunday (7) at 06:00."""
    spec = Spec(Weekly(frozenset({1, 7}), time(6)), UTC_ZONE)
    fires = list(upcoming(spec, at(2026, 11, 24), 3))
    assert fires == [at(2026, 11, 29, 6), at(2026, 11, 30, 6), at(2026, 12, 6, 6)]


def test_monthly_days_past_month_end_fire_once_on_last_day() -> None:
    """Days 30 and 31 both become February's last day, fired once."""
    spec = Spec(Monthly(frozenset({30, 31}), time(8)), UTC_ZONE)
    fires = list(upcoming(spec, at(2027, 1, 30, 9), 4))
    assert fires == [
        at(2027, 1, 31, 8),
        at(2027, 2, 28, 8),
        at(2027, 3, 30, 8),
        at(2027, 3, 31, 8),
    ]


def test_yearly_leap_day_fires_feb_28_in_common_years() -> None:
    """Yearly on Feb 29 fires on Feb 28 in common years."""
    spec = Spec(Yearly(2, 29, time(0)), UTC_ZONE)
    assert list(upcoming(spec, at(2027, 1, 1), 2)) == [at(2027, 2, 28), at(2028, 2, 29)]


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    """Fires start at start_time (inclusive) and stop before end_time."""
    spec = Spec(
        Daily(time(6)),
        UTC_ZONE,
        start=at(2026, 6, 1, 6),
        end=at(2026, 6, 4, 6),
    )
    assert list(upcoming(spec, at(2026, 1, 1), 10)) == [
        at(2026, 6, 1, 6),
        at(2026, 6, 2, 6),
        at(2026, 6, 3, 6),
    ]


def test_window_in_the_past_has_no_fire() -> None:
    """After end_time there is no next fire."""
    spec = Spec(Cron("* * * * *"), UTC_ZONE, end=at(2026, 1, 1))
    assert next_fire(spec, at(2026, 2, 1)) is None


def test_once_beyond_the_search_horizon_still_fires() -> None:
    """The horizon bounds searches, not a once trigger's single instant."""
    spec = Spec(Once(at(2050, 1, 1)), UTC_ZONE)
    assert next_fire(spec, at(2026, 1, 1)) == at(2050, 1, 1)


def test_start_far_ahead_moves_the_search_with_it() -> None:
    """A start time years ahead is where the search begins, so a cron still fires."""
    spec = Spec(Cron("0 6 * * *"), UTC_ZONE, start=at(2045, 5, 5))
    assert next_fire(spec, at(2026, 1, 1)) == at(2045, 5, 5, 6)

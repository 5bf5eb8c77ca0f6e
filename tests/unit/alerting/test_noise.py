"""Noise control decisions: group keys, dedup windows, silences and throttles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runbox.alerting.v1 import alerting_pb2 as pb
from services.alerting import noise
from services.alerting.engine import RUN_FINISHED, Occurrence
from services.alerting.notices import context_for

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def occurrence(script: str = "backup", labels: dict[str, str] | None = None) -> Occurrence:
    return Occurrence(
        kind=RUN_FINISHED,
        event_id="e",
        occurred_at=T0,
        script_name=script,
        run_id="run-1",
        schedule_id="s1",
        labels=labels or {},
        state=5,
    )


def test_default_group_key_is_rule_and_script() -> None:
    """Without a template the key is '<rule id>:<script name>'."""
    rule = pb.Rule(id="r1", name="n")
    context = context_for(rule, occurrence(), kind="firing", title="t", tags=None)
    assert noise.group_key(rule, context) == "r1:backup"


def test_custom_group_key_renders_context() -> None:
    """A template may group by schedule and labels."""
    rule = pb.Rule(id="r1", group_key="{{ schedule_id }}/{{ labels.team }}")
    context = context_for(
        rule, occurrence(labels={"team": "ops"}), kind="firing", title="t", tags=None
    )
    assert noise.group_key(rule, context) == "s1/ops"


def test_failing_or_blank_group_key_falls_back_to_default() -> None:
    """A key that fails (renders the multi-line default message) or is blank uses the default."""
    context = context_for(pb.Rule(id="r1"), occurrence(), kind="firing", title="t", tags=None)
    for template in ("{{ 1 / 0 }}", "{{ '' }}", "{{ script_name }}\n{{ run_id }}"):
        assert noise.group_key(pb.Rule(id="r1", group_key=template), context) == "r1:backup"


def test_group_key_is_capped() -> None:
    """Keys are cut to the column's 255 characters."""
    rule = pb.Rule(id="r1", group_key="{{ script_name }}" * 100)
    context = context_for(rule, occurrence(script="x" * 60), kind="firing", title="t", tags=None)
    assert len(noise.group_key(rule, context)) == noise.GROUP_KEY_LIMIT


def test_dedup_within_window_and_not_after() -> None:
    """An occurrence inside the window of the last notification is quiet; later it notifies."""
    window = timedelta(minutes=5)
    assert not noise.deduplicated(None, T0, window)
    assert noise.deduplicated(T0, T0 + timedelta(minutes=4), window)
    assert noise.deduplicated(T0, T0 - timedelta(minutes=1), window)  # read late, out of order
    assert not noise.deduplicated(T0, T0 + timedelta(minutes=5), window)


def test_dedup_zero_window_is_off_and_unset_window_is_the_default() -> None:
    """An explicit 0s notifies every occurrence; an unset window is 5 minutes."""
    assert not noise.deduplicated(T0, T0 + timedelta(seconds=1), timedelta(0))
    assert noise.deduplicated(T0, T0 + timedelta(minutes=4), None)
    assert not noise.deduplicated(T0, T0 + timedelta(minutes=5), None)


def test_silence_matches_selector_inside_its_window_only() -> None:
    """A silence covers matching occurrences from starts_at until ends_at or its expiry."""
    silence = noise.SilenceWindow(
        "s",
        pb.Selector(script_names=["backup"]),
        starts_at=T0 - timedelta(hours=1),
        ends_at=T0 + timedelta(hours=1),
    )
    occ = occurrence()
    assert noise.silencing([silence], occ, None, T0) is silence
    assert noise.silencing([silence], occurrence(script="other"), None, T0) is None
    assert noise.silencing([silence], occ, None, T0 + timedelta(hours=1)) is None
    assert noise.silencing([silence], occ, None, T0 - timedelta(hours=2)) is None
    expired = noise.SilenceWindow(
        "s", silence.selector, silence.starts_at, silence.ends_at, expired_at=T0
    )
    assert noise.silencing([expired], occ, None, T0) is None
    assert noise.silencing([expired], occ, None, T0 - timedelta(minutes=1)) is expired


def test_silence_by_labels_and_tags() -> None:
    """Label and tag selectors silence only what carries them."""
    by_label = noise.SilenceWindow(
        "l", pb.Selector(labels={"env": "staging"}), T0, T0 + timedelta(hours=1)
    )
    by_tag = noise.SilenceWindow("t", pb.Selector(script_tags=["ops"]), T0, T0 + timedelta(hours=1))
    assert noise.silencing([by_label], occurrence(labels={"env": "staging"}), None, T0)
    assert not noise.silencing([by_label], occurrence(labels={"env": "prod"}), None, T0)
    assert noise.silencing([by_tag], occurrence(), frozenset({"ops"}), T0)
    assert not noise.silencing([by_tag], occurrence(), None, T0)


def test_throttle_limits_per_window() -> None:
    """Up to the limit notifications pass; without a limit or window nothing is throttled."""
    window = timedelta(minutes=10)
    assert not noise.throttled(0, 2, window)
    assert not noise.throttled(1, 2, window)
    assert noise.throttled(2, 2, window)
    assert not noise.throttled(100, 0, window)
    assert not noise.throttled(100, 2, None)


def test_context_has_exactly_the_template_names_and_no_secrets() -> None:
    """The context the engine builds has the names templates may read, and nothing else."""
    from services.alerting.templates import SAMPLE_CONTEXT

    context = context_for(
        pb.Rule(id="r1", name="n"), occurrence(), kind="firing", title="t", tags=None
    )
    assert set(context) == set(SAMPLE_CONTEXT)

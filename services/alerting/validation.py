"""What makes a rule, a selector and a silence valid: every bad field is
reported at once, as a FieldViolation under the request's field path
("rule.selector.labels", "silence.ends_at", ...). Templates are checked by
templates.check_template (sandboxed, rendered against a sample context)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2

from runbox.alerting.v1 import alerting_pb2 as pb
from runbox.common.v1 import common_pb2
from services.alerting import templates
from shared.errors import DomainError, FieldViolation, InvalidArgument

# Same shapes as the catalogue's script names and tags.
SCRIPT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TAG = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,62}$")
NAME_MAX = 200
SELECTOR_ITEMS_MAX = 100
LABEL_KEY_MAX = 63
LABEL_VALUE_MAX = 255
CHANNELS_MAX = 20
TEMPLATE_MAX = templates.MAX_SOURCE
GROUP_KEY_TEMPLATE_MAX = 1_024
COMMENT_MAX = 1_000
COUNT_MAX = 1_000
MIN_RUNS_MAX = 10_000
P95_FACTOR_MAX = 100.0
THROTTLE_LIMIT_MAX = 10_000
WINDOW_MAX = timedelta(days=30)
SILENCE_MAX = timedelta(days=90)
DEFAULT_DEDUP_WINDOW = timedelta(minutes=5)
CONDITIONS = (
    "on_state",
    "consecutive_failures",
    "failure_rate",
    "duration",
    "fire_missed",
    "dead_mans_switch",
)

Bad = list[FieldViolation]


def check_text(bad: Bad, field: str, value: str, *, limit: int, required: bool = False) -> None:
    if required and not value.strip():
        bad.append(FieldViolation(field, "is required"))
    elif len(value) > limit:
        bad.append(FieldViolation(field, f"must be at most {limit} characters"))
    elif any(ord(c) < 32 and c not in "\t\n" for c in value):
        bad.append(FieldViolation(field, "must not contain control characters"))


def _window(
    bad: Bad,
    field: str,
    value: duration_pb2.Duration,
    *,
    present: bool,
    required: bool = True,
    allow_zero: bool = False,
) -> None:
    """A duration that is set (if required), positive (or zero if allowed) and at most 30 days."""
    if not present:
        if required:
            bad.append(FieldViolation(field, "is required"))
        return
    if value.seconds < 0 or value.nanos < 0 or abs(value.nanos) >= 1_000_000_000:
        bad.append(FieldViolation(field, "must not be negative"))
        return
    span = value.ToTimedelta()
    if span <= timedelta(0) and not allow_zero:
        bad.append(FieldViolation(field, "must be greater than zero"))
    elif span > WINDOW_MAX:
        bad.append(FieldViolation(field, f"must be at most {WINDOW_MAX.days} days"))


def check_selector(bad: Bad, selector: pb.Selector, prefix: str) -> None:
    """Names, tags and ids well formed, execution types known, label keys non-empty."""
    lists: tuple[tuple[str, list[str], Callable[[str], str | None]], ...] = (
        ("script_names", list(selector.script_names), _script_name),
        ("script_tags", list(selector.script_tags), _tag),
        ("schedule_ids", list(selector.schedule_ids), _schedule_id),
    )
    for name, values, check in lists:
        if len(values) > SELECTOR_ITEMS_MAX:
            bad.append(FieldViolation(f"{prefix}.{name}", f"at most {SELECTOR_ITEMS_MAX} entries"))
            continue
        for i, value in enumerate(values):
            problem = check(value)
            if problem:
                bad.append(FieldViolation(f"{prefix}.{name}[{i}]", problem))
    known = set(common_pb2.ExecutionType.values()) - {common_pb2.EXECUTION_TYPE_UNSPECIFIED}
    for i, kind in enumerate(selector.execution_types):
        if kind not in known:
            bad.append(
                FieldViolation(
                    f"{prefix}.execution_types[{i}]",
                    f"unknown execution type {kind}; known: "
                    + ", ".join(common_pb2.ExecutionType.Name(k) for k in sorted(known)),
                )
            )
    if len(selector.labels) > SELECTOR_ITEMS_MAX:
        bad.append(FieldViolation(f"{prefix}.labels", f"at most {SELECTOR_ITEMS_MAX} labels"))
    for key, value in sorted(selector.labels.items()):
        field = f"{prefix}.labels[{key!r}]"
        if not key.strip():
            bad.append(FieldViolation(f"{prefix}.labels", "label keys must not be empty"))
        elif len(key) > LABEL_KEY_MAX:
            bad.append(FieldViolation(field, f"key must be at most {LABEL_KEY_MAX} characters"))
        elif len(value) > LABEL_VALUE_MAX:
            bad.append(FieldViolation(field, f"value must be at most {LABEL_VALUE_MAX} characters"))


def _script_name(value: str) -> str | None:
    return None if SCRIPT_NAME.match(value) else f"{value[:80]!r} is not a script name"


def _tag(value: str) -> str | None:
    return None if TAG.match(value) else f"{value[:80]!r} is not a tag"


def _schedule_id(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    return None if len(value) <= 64 else "must be at most 64 characters"


def selector_is_empty(selector: pb.Selector) -> bool:
    return not (
        selector.script_names
        or selector.script_tags
        or selector.schedule_ids
        or selector.execution_types
        or selector.labels
    )


def check_condition(bad: Bad, rule: pb.Rule, prefix: str) -> None:
    """Exactly one condition, with values in range."""
    condition = rule.condition
    kind = condition.WhichOneof("kind") if rule.HasField("condition") else None
    field = f"{prefix}.condition"
    if kind is None:
        bad.append(FieldViolation(field, "set exactly one of: " + ", ".join(CONDITIONS)))
        return
    field = f"{field}.{kind}"
    if kind == "on_state":
        _check_on_state(bad, condition.on_state, field)
    elif kind == "consecutive_failures":
        count = condition.consecutive_failures.count
        if not 1 <= count <= COUNT_MAX:
            bad.append(FieldViolation(f"{field}.count", f"must be between 1 and {COUNT_MAX}"))
    elif kind == "failure_rate":
        rate = condition.failure_rate
        _window(bad, f"{field}.window", rate.window, present=rate.HasField("window"))
        if not 0 < rate.threshold <= 1:
            bad.append(FieldViolation(f"{field}.threshold", "must be in (0, 1]"))
        if not 0 <= rate.min_runs <= MIN_RUNS_MAX:
            bad.append(FieldViolation(f"{field}.min_runs", f"must be between 0 and {MIN_RUNS_MAX}"))
    elif kind == "duration":
        _check_duration(bad, condition.duration, field)
    elif kind == "dead_mans_switch":
        switch = condition.dead_mans_switch
        _window(
            bad,
            f"{field}.expected_within",
            switch.expected_within,
            present=switch.HasField("expected_within"),
        )
        if not (rule.selector.schedule_ids or rule.selector.script_names):
            bad.append(
                FieldViolation(
                    f"{prefix}.selector.schedule_ids",
                    "a dead-man's switch watches named schedules (or scripts): "
                    "set selector.schedule_ids or selector.script_names",
                )
            )


def _check_on_state(bad: Bad, on_state: pb.OnStateCondition, field: str) -> None:
    if not (on_state.states or on_state.on_dead_letter or on_state.on_quarantine):
        bad.append(
            FieldViolation(field, "name at least one state, or on_dead_letter / on_quarantine")
        )
    known = set(common_pb2.RunState.values()) - {common_pb2.RUN_STATE_UNSPECIFIED}
    for i, state in enumerate(on_state.states):
        if state not in known:
            bad.append(FieldViolation(f"{field}.states[{i}]", f"unknown run state {state}"))


def _check_duration(bad: Bad, duration: pb.DurationCondition, field: str) -> None:
    has_above = duration.HasField("above")
    if has_above and duration.p95_factor:
        bad.append(FieldViolation(field, "set either above or p95_factor, not both"))
    elif has_above:
        _window(bad, f"{field}.above", duration.above, present=True)
    elif duration.p95_factor:
        if not 1 < duration.p95_factor <= P95_FACTOR_MAX:
            bad.append(
                FieldViolation(
                    f"{field}.p95_factor", f"must be above 1 and at most {P95_FACTOR_MAX:g}"
                )
            )
    else:
        bad.append(FieldViolation(field, "set above (a duration) or p95_factor (> 1)"))


def check_template(bad: Bad, source: str, field: str, *, limit: int) -> None:
    """Length, then the sandboxed template check (syntax, filters, Python internals)."""
    if not source:
        return
    if len(source) > limit:
        bad.append(FieldViolation(field, f"must be at most {limit} characters"))
        return
    try:
        templates.check_template(source, field=field)
    except InvalidArgument as exc:
        bad.extend(exc.violations or [FieldViolation(field, exc.message)])
    except DomainError as exc:
        bad.append(FieldViolation(field, exc.message))


def check_rule(rule: pb.Rule, prefix: str = "rule") -> None:
    """Raise InvalidArgument naming every bad field of a rule (channel ids are the store's)."""
    bad: Bad = []
    check_text(bad, f"{prefix}.name", rule.name, limit=NAME_MAX, required=True)
    check_selector(bad, rule.selector, f"{prefix}.selector")
    check_condition(bad, rule, prefix)
    if rule.severity not in pb.Severity.values():
        bad.append(FieldViolation(f"{prefix}.severity", f"unknown severity {rule.severity}"))
    if len(rule.channel_ids) > CHANNELS_MAX:
        bad.append(FieldViolation(f"{prefix}.channel_ids", f"at most {CHANNELS_MAX} channels"))
    seen: set[str] = set()
    for i, channel_id in enumerate(rule.channel_ids):
        if not channel_id:
            bad.append(FieldViolation(f"{prefix}.channel_ids[{i}]", "must not be empty"))
        elif channel_id in seen:
            bad.append(FieldViolation(f"{prefix}.channel_ids[{i}]", "duplicate channel id"))
        seen.add(channel_id)
    check_template(bad, rule.message_template, f"{prefix}.message_template", limit=TEMPLATE_MAX)
    check_template(bad, rule.group_key, f"{prefix}.group_key", limit=GROUP_KEY_TEMPLATE_MAX)
    _window(
        bad,
        f"{prefix}.dedup_window",
        rule.dedup_window,
        present=rule.HasField("dedup_window"),
        required=False,
        allow_zero=True,
    )
    _check_throttle(bad, rule, prefix)
    if bad:
        raise InvalidArgument(f"{prefix} is invalid: {bad[0].field}: {bad[0].description}", bad)


def _check_throttle(bad: Bad, rule: pb.Rule, prefix: str) -> None:
    if not 0 <= rule.throttle_limit <= THROTTLE_LIMIT_MAX:
        bad.append(
            FieldViolation(
                f"{prefix}.throttle_limit", f"must be between 0 and {THROTTLE_LIMIT_MAX}"
            )
        )
    elif rule.throttle_limit:
        _window(
            bad,
            f"{prefix}.throttle_window",
            rule.throttle_window,
            present=rule.HasField("throttle_window"),
        )
    elif rule.HasField("throttle_window"):
        bad.append(
            FieldViolation(f"{prefix}.throttle_limit", "set a limit to go with throttle_window")
        )


def fill_rule_defaults(rule: pb.Rule) -> None:
    """Severity WARNING and a 5 minute dedup window when unset."""
    if rule.severity == pb.SEVERITY_UNSPECIFIED:
        rule.severity = pb.SEVERITY_WARNING
    if not rule.HasField("dedup_window"):
        rule.dedup_window.FromTimedelta(DEFAULT_DEDUP_WINDOW)


def check_silence(
    silence: pb.Silence, *, now: datetime, prefix: str = "silence"
) -> tuple[datetime, datetime]:
    """Raise InvalidArgument for a bad silence; its (starts_at, ends_at) otherwise."""
    bad: Bad = []
    check_selector(bad, silence.selector, f"{prefix}.selector")
    if selector_is_empty(silence.selector):
        bad.append(
            FieldViolation(
                f"{prefix}.selector",
                "an empty selector would silence everything: name at least one script, "
                "tag, schedule, execution type or label",
            )
        )
    check_text(bad, f"{prefix}.comment", silence.comment, limit=COMMENT_MAX)
    starts = _instant(bad, silence, "starts_at", prefix) or now
    ends = _instant(bad, silence, "ends_at", prefix)
    if ends is None:
        if not any(v.field == f"{prefix}.ends_at" for v in bad):
            bad.append(FieldViolation(f"{prefix}.ends_at", "is required"))
    elif ends <= starts:
        bad.append(FieldViolation(f"{prefix}.ends_at", "must be after starts_at"))
    elif ends <= now:
        bad.append(FieldViolation(f"{prefix}.ends_at", "must be in the future"))
    elif ends - starts > SILENCE_MAX:
        bad.append(
            FieldViolation(f"{prefix}.ends_at", f"a silence lasts at most {SILENCE_MAX.days} days")
        )
    if bad:
        raise InvalidArgument(f"{prefix} is invalid: {bad[0].field}: {bad[0].description}", bad)
    assert ends is not None
    return starts, ends


def _instant(bad: Bad, silence: pb.Silence, name: str, prefix: str) -> datetime | None:
    if not silence.HasField(name):  # type: ignore[arg-type]
        return None
    try:
        return getattr(silence, name).ToDatetime(UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        bad.append(FieldViolation(f"{prefix}.{name}", "is not a valid timestamp"))
        return None

"""Retry policy arithmetic and checks (pure logic)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf import duration_pb2

from runbox.common.v1 import common_pb2
from services.scheduler import retries
from services.scheduler.models import RunRow
from shared.errors import InvalidArgument

RS = common_pb2


def policy(**fields: object) -> common_pb2.RetryPolicy:
    return common_pb2.RetryPolicy(**fields)  # type: ignore[arg-type]


def seconds(s: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=s)


def row(**fields: object) -> RunRow:
    base: dict[str, object] = {
        "id": "r1",
        "state": RS.RUN_STATE_FAILED,
        "failure_reason": RS.FAILURE_REASON_EXIT_CODE,
        "attempt": 1,
        "secret_names": [],
        "limits": {},
        "usage": {},
        "retry": {},
    }
    return RunRow(**(base | fields))


def test_backoff_grows_by_the_multiplier_up_to_the_cap_without_jitter() -> None:
    p = policy(initial_backoff=seconds(2), max_backoff=seconds(10), multiplier=3)
    assert [retries.backoff_s(p, n) for n in (1, 2, 3, 4)] == [2, 6, 10, 10]


def test_backoff_defaults_when_fields_are_zero() -> None:
    p = policy()
    assert retries.backoff_s(p, 1) == retries.DEFAULT_INITIAL_BACKOFF_S
    assert retries.backoff_s(p, 2) == retries.DEFAULT_INITIAL_BACKOFF_S * 2
    assert retries.backoff_s(p, 100) == retries.DEFAULT_MAX_BACKOFF_S


def test_jitter_only_shortens_the_backoff_by_at_most_its_fraction() -> None:
    p = policy(initial_backoff=seconds(10), max_backoff=seconds(10), jitter=0.5)
    delays = {retries.backoff_s(p, 1) for _ in range(200)}
    assert all(5 <= d <= 10 for d in delays)
    assert len(delays) > 1


def test_oom_memory_is_scaled_and_capped() -> None:
    p = policy(oom_memory_factor=2, oom_memory_cap_bytes=300)
    assert retries.retry_memory(p, row(limits={"memory_bytes": "100"})) == 200
    assert retries.retry_memory(p, row(limits={"memory_bytes": "200"})) == 300
    # No limit set: the measured peak is scaled.
    assert retries.retry_memory(p, row(usage={"peak_memory_bytes": "120"})) == 240
    assert retries.retry_memory(policy(), row(limits={"memory_bytes": "100"})) is None
    assert retries.retry_memory(p, row()) is None


def test_failure_class_follows_the_terminal_state() -> None:
    assert retries.failure_class(row(state=RS.RUN_STATE_LOST)) == RS.FAILURE_REASON_LOST
    assert retries.failure_class(row(state=RS.RUN_STATE_TIMED_OUT)) == RS.FAILURE_REASON_TIMEOUT
    assert retries.failure_class(row(failure_reason=0)) == RS.FAILURE_REASON_EXIT_CODE
    oom = row(failure_reason=RS.FAILURE_REASON_OOM_KILLED)
    assert retries.failure_class(oom) == RS.FAILURE_REASON_OOM_KILLED


def test_why_not_retried() -> None:
    why = retries.RetryOrDeadLetter._why_not
    reason = RS.FAILURE_REASON_EXIT_CODE
    assert why(policy(max_attempts=2), row(), reason) == ""
    assert "1 of 1 attempts" in why(policy(), row(), reason)
    assert "2 of 2 attempts" in why(policy(max_attempts=2), row(attempt=2), reason)
    only_lost = policy(max_attempts=3, retry_on=[RS.FAILURE_REASON_LOST])
    assert "not a failure class" in why(only_lost, row(), reason)
    # Invalid configurations are not retried unless named.
    assert "not a failure class" in why(
        policy(max_attempts=3), row(), RS.FAILURE_REASON_INVALID_CONFIG
    )
    assert "secret" in why(policy(max_attempts=3), row(secret_names=["token"]), reason)


def test_successor_keeps_inputs_and_points_at_its_parent() -> None:
    parent = row(
        script_name="s",
        version_selector="^1",
        script_version="1.2.0",
        sha256="a" * 64,
        execution_type=1,
        parameters={"n": 1},
        config={},
        priority=5,
        labels={"k": "v"},
        schedule_id="sch",
        isolation=0,
        runtime=0,
        submitted_by="alice",
        trace_context={},
    )
    child = retries.successor(parent, now=datetime.now(UTC))
    assert child.id != parent.id and child.parent_run_id == parent.id
    assert child.state == RS.RUN_STATE_PENDING
    assert (child.script_version, child.sha256, child.parameters, child.schedule_id) == (
        "1.2.0",
        "a" * 64,
        {"n": 1},
        "sch",
    )
    child.parameters["n"] = 2
    assert parent.parameters == {"n": 1}


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"max_attempts": -1}, "retry.max_attempts"),
        ({"max_attempts": 0}, "retry.max_attempts"),
        ({"max_attempts": 2**31 - 1}, "retry.max_attempts"),
        ({"max_attempts": 2, "initial_backoff": seconds(-1)}, "retry.initial_backoff"),
        ({"max_attempts": 2, "max_backoff": seconds(2**63 - 1)}, "retry.max_backoff"),
        (
            {"max_attempts": 2, "initial_backoff": seconds(10), "max_backoff": seconds(5)},
            "retry.max_backoff",
        ),
        ({"max_attempts": 2, "multiplier": 0.5}, "retry.multiplier"),
        ({"max_attempts": 2, "jitter": 1.5}, "retry.jitter"),
        ({"max_attempts": 2, "oom_memory_factor": 1000}, "retry.oom_memory_factor"),
        ({"max_attempts": 2, "oom_memory_cap_bytes": -1}, "retry.oom_memory_cap_bytes"),
        ({"max_attempts": 2, "retry_on": [99]}, "retry.retry_on[0]"),
        (
            {"max_attempts": 2, "retry_on": [RS.FAILURE_REASON_LOST, RS.FAILURE_REASON_NO_SANDBOX]},
            "retry.retry_on[1]",
        ),
    ],
)
def test_check_policy_names_the_bad_field(fields: dict[str, object], bad_field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        retries.check_policy(policy(**fields))
    assert [v.field for v in err.value.violations] == [bad_field]


def test_check_policy_accepts_a_sensible_policy() -> None:
    retries.check_policy(
        policy(
            max_attempts=5,
            initial_backoff=seconds(1),
            max_backoff=seconds(60),
            multiplier=2,
            jitter=0.2,
            retry_on=[RS.FAILURE_REASON_LOST, RS.FAILURE_REASON_OOM_KILLED],
            oom_memory_factor=1.5,
            oom_memory_cap_bytes=2**30,
        )
    )

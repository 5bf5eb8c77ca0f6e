"""The run state machine and run cursors: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from runbox.common.v1 import common_pb2
from services.scheduler import state as sm
from services.scheduler.run_store import decode_cursor, encode_cursor
from shared.errors import InvalidArgument

RS = common_pb2
ORDER = [RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING]
TERMINALS = [
    RS.RUN_STATE_SUCCEEDED,
    RS.RUN_STATE_FAILED,
    RS.RUN_STATE_TIMED_OUT,
    RS.RUN_STATE_CANCELLED,
    RS.RUN_STATE_LOST,
]


def test_states_move_forward_only() -> None:
    """Each state may move to any later one and never back."""
    for i, current in enumerate(ORDER):
        for later in ORDER[i + 1 :] + TERMINALS:
            assert sm.can_move(current, later)
        for earlier in ORDER[: i + 1]:
            assert not sm.can_move(current, earlier)


def test_same_event_twice_changes_nothing() -> None:
    """Re-applying the state a run is already in is refused (idempotent)."""
    for state in ORDER + TERMINALS:
        assert not sm.can_move(state, state)


@pytest.mark.parametrize("terminal", TERMINALS)
def test_terminal_states_are_final(terminal: int) -> None:
    """Nothing moves a run out of a terminal state, not even another terminal."""
    for other in ORDER + TERMINALS:
        assert not sm.can_move(terminal, other)


def test_late_queued_after_running_is_ignored() -> None:
    """An out-of-order QUEUED arriving after RUNNING does not move the run back."""
    assert not sm.can_move(RS.RUN_STATE_RUNNING, RS.RUN_STATE_QUEUED)
    assert sm.can_move(RS.RUN_STATE_PENDING, RS.RUN_STATE_RUNNING)


def test_unknown_state_never_applies() -> None:
    """An unspecified state in an event is not a move."""
    assert not sm.can_move(RS.RUN_STATE_PENDING, RS.RUN_STATE_UNSPECIFIED)


def test_cursor_round_trips_and_rejects_garbage() -> None:
    """A run cursor decodes to the (created_at, id) it was made from."""
    at = datetime(2026, 11, 22, 12, 0, 1, 123456, tzinfo=UTC)
    token = encode_cursor(SimpleNamespace(created_at=at, id="abc"))  # type: ignore[arg-type]
    assert decode_cursor(token) == (at, "abc")
    with pytest.raises(InvalidArgument):
        decode_cursor("!!not-a-token!!")

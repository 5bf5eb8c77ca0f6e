"""The run state machine: states only move forward, terminal states never
change, and applying the same event twice changes nothing. Pure logic."""

from __future__ import annotations

from runbox.common.v1 import common_pb2

RS = common_pb2.RunState
TERMINAL = frozenset(
    {
        RS.RUN_STATE_SUCCEEDED,
        RS.RUN_STATE_FAILED,
        RS.RUN_STATE_TIMED_OUT,
        RS.RUN_STATE_CANCELLED,
        RS.RUN_STATE_LOST,
    }
)
_RANK: dict[int, int] = {
    RS.RUN_STATE_SCHEDULED: 1,
    RS.RUN_STATE_PENDING: 2,
    RS.RUN_STATE_QUEUED: 3,
    RS.RUN_STATE_RUNNING: 4,
}


def rank(state: int) -> int:
    """SCHEDULED 1 < PENDING 2 < QUEUED 3 < RUNNING 4 < any terminal 5; unknown 0."""
    if state in TERMINAL:
        return 5
    return _RANK.get(state, 0)


def is_terminal(state: int) -> bool:
    return state in TERMINAL


def can_move(current: int, new: int) -> bool:
    """True when `new` is strictly later than `current` (so duplicates and
    out-of-order older events are ignored, and terminal is final)."""
    if is_terminal(current):
        return False
    return rank(new) > rank(current)

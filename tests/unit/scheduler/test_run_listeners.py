"""RunListeners.plan_ends: which run ends stay on the events' Core path, and that a hook's
refusal leaves no write of another hook planned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runbox.common.v1 import common_pb2
from services.scheduler.models import RunRow
from services.scheduler.run_listeners import EndWrites, RunListeners, RunsEndHook

RS = common_pb2.RunState


class _Row:
    def __init__(self, run_id: str, state: int, schedule_id: str | None = None) -> None:
        self.id, self.state, self.schedule_id = run_id, state, schedule_id


def _rows(*rows: _Row) -> Sequence[RunRow]:
    return rows  # type: ignore[return-value]  # what the hooks read of a run


class _FailedOnly:
    """A RunEndHook concerned by failures only (as RetryOrDeadLetter)."""

    @staticmethod
    def concerns(row: RunRow) -> bool:
        return row.state == RS.RUN_STATE_FAILED

    async def __call__(self, session: Any, row: RunRow) -> None:
        raise AssertionError("not on this path")


async def _never(session: Any, rows: Sequence[RunRow]) -> None:
    raise AssertionError("not on this path")


def _planning(log: list[str], name: str, *, refuse: bool = False) -> RunsEndHook:
    """A RunsEndHook of scheduled runs that plans (logging what it saw) or refuses."""

    def plan(conn: Any, rows: Sequence[RunRow]) -> EndWrites | None:
        log.append(f"{name} planned {[row.id for row in rows]}")
        if refuse:
            return None
        return lambda conn: log.append(f"{name} wrote")

    return RunsEndHook(lambda row: row.schedule_id is not None, _never, plan=plan)


def test_ends_no_hook_is_concerned_by_plan_nothing() -> None:
    log: list[str] = []
    listeners = RunListeners(run_ended=[_FailedOnly()], runs_ended=[_planning(log, "a")])
    writes = listeners.plan_ends(None, _rows(_Row("r1", RS.RUN_STATE_SUCCEEDED)))  # type: ignore[arg-type]
    assert writes == [] and log == []


def test_each_hook_plans_only_the_ends_it_is_concerned_by() -> None:
    log: list[str] = []
    listeners = RunListeners(
        run_ended=[_FailedOnly()], runs_ended=[_planning(log, "a"), _planning(log, "b")]
    )
    rows = _rows(_Row("r1", RS.RUN_STATE_SUCCEEDED, "s1"), _Row("r2", RS.RUN_STATE_SUCCEEDED))
    writes = listeners.plan_ends(None, rows)  # type: ignore[arg-type]
    assert writes is not None and log == ["a planned ['r1']", "b planned ['r1']"]
    for write in writes:
        write(None)  # type: ignore[arg-type]
    assert log[2:] == ["a wrote", "b wrote"]


def test_an_end_a_per_run_hook_is_concerned_by_takes_the_orm_path() -> None:
    log: list[str] = []
    listeners = RunListeners(run_ended=[_FailedOnly()], runs_ended=[_planning(log, "a")])
    rows = _rows(_Row("r1", RS.RUN_STATE_SUCCEEDED, "s1"), _Row("r2", RS.RUN_STATE_FAILED))
    assert listeners.plan_ends(None, rows) is None  # type: ignore[arg-type]
    assert log == []  # decided before any hook read anything


def test_a_refusal_leaves_nothing_written_and_a_hook_without_plan_refuses() -> None:
    log: list[str] = []
    refusing = RunListeners(runs_ended=[_planning(log, "a"), _planning(log, "b", refuse=True)])
    rows = _rows(_Row("r1", RS.RUN_STATE_SUCCEEDED, "s1"))
    assert refusing.plan_ends(None, rows) is None  # type: ignore[arg-type]
    assert log == ["a planned ['r1']", "b planned ['r1']"]  # "a" planned, never wrote
    without = RunListeners(runs_ended=[RunsEndHook(lambda row: True, _never)])
    assert without.plan_ends(None, rows) is None  # type: ignore[arg-type]

"""The scheduler's queue depth gauge over a real SQLite database made by its migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from runbox.common.v1 import common_pb2
from services.scheduler.backlog import RunBacklog
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import RunRow
from services.scheduler.server import MIGRATIONS
from shared import db
from shared.settings import DatabaseSettings

RS = common_pb2.RunState


def run(n: int, state: int) -> RunRow:
    now = datetime.now(UTC)
    return RunRow(
        id=f"run{n}",
        script_name="s",
        script_version="1.0.0",
        sha256="0" * 64,
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        state=state,
        created_at=now,
        updated_at=now,
    )


async def test_backlog_counts_runs_by_active_state(tmp_path: Path) -> None:
    """Pending, queued and running runs are counted by state; ended ones are not, and a
    state with no run reads 0."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'scheduler.db'}"
    await db.upgrade(MIGRATIONS, url)
    engine = db.create_engine(DatabaseSettings(url=url))
    try:
        sessions = db.sessionmaker(engine)
        states = [RS.RUN_STATE_PENDING] * 3 + [RS.RUN_STATE_RUNNING, RS.RUN_STATE_SUCCEEDED]
        async with sessions() as session, session.begin():
            session.add_all(run(n, state) for n, state in enumerate(states))
        registry = CollectorRegistry()
        backlog = RunBacklog(sessions, SchedulerMetrics(registry))
        assert await backlog.measure() == {"pending": 3, "queued": 0, "running": 1}
        value = registry.get_sample_value
        assert value("runbox_scheduler_active_runs", {"state": "pending"}) == 3
        assert value("runbox_scheduler_active_runs", {"state": "queued"}) == 0
        assert value("runbox_scheduler_active_runs", {"state": "succeeded"}) is None
    finally:
        await engine.dispose()

"""Dead letters: failed runs that were not retried (retries.py), listed and replayed as
new runs."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC

from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.models import RunRow
from services.scheduler.run_store import RunStore, after_cursor
from services.scheduler.runs import Runs
from shared.errors import FailedPrecondition, FieldViolation, InvalidArgument


class DeadLetters:
    """ListDeadLetters and ReplayDeadLetter."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], store: RunStore, runs: Runs
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._runs = runs

    async def list(
        self, request: scheduler_pb2.ListDeadLettersRequest
    ) -> tuple[Sequence[RunRow], str]:
        """Newest dead letter first; the cursor is (dead_lettered_at, id)."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(RunRow).where(RunRow.dead_lettered_at.is_not(None))
        if request.script_name:
            query = query.where(RunRow.script_name == request.script_name)
        query = after_cursor(query, RunRow.dead_lettered_at, RunRow.id, request.page_token)
        query = query.order_by(RunRow.dead_lettered_at.desc(), RunRow.id.desc()).limit(size + 1)
        async with self._sessions() as session:
            rows = list((await session.scalars(query)).all())
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            assert last.dead_lettered_at is not None
            at = last.dead_lettered_at
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            token = base64.urlsafe_b64encode(f"{at.isoformat()}|{last.id}".encode()).decode()
        return rows[:size], token

    async def replay(self, request: scheduler_pb2.ReplayDeadLetterRequest, *, actor: str) -> RunRow:
        """Submit a dead-lettered run again as a new run (attempt 1, parent_run_id = it),
        with its inputs or a new version / parameters checked through the catalogue exactly
        as SubmitRun checks them; the dead letter records the replay in the same commit.

        A dead letter is replayed once: a replay that fails for good is dead-lettered in
        turn and replayed from there, so its history stays one chain."""
        if not request.run_id:
            raise InvalidArgument.field("run_id", "run id is required")
        if request.idempotency_key:
            existing = await self._store.by_key(request.idempotency_key)
            if existing is not None:
                if existing.parent_run_id != request.run_id:
                    raise FailedPrecondition(
                        "idempotency_key was already used for another request",
                        [FieldViolation("idempotency_key", "used for another request")],
                    )
                return existing
        dead = await self._store.get(request.run_id)
        self._check_replayable(dead)
        if dead.secret_names and not request.HasField("parameters"):
            names = ", ".join(sorted(dead.secret_names))
            raise FailedPrecondition(
                f"run {dead.id} had secret parameters ({names}) whose values are not kept: "
                "pass parameters, secrets included",
                [FieldViolation("parameters", f"required to supply secret values: {names}")],
            )
        submit = scheduler_pb2.SubmitRunRequest(
            script=common_pb2.ScriptRef(
                name=dead.script_name, version=request.version or dead.script_version
            ),
            priority=dead.priority,
            labels=dead.labels,
            idempotency_key=request.idempotency_key,
            limits=json_format.ParseDict(dead.limits, common_pb2.ResourceLimits()),
        )
        if request.HasField("parameters"):
            submit.parameters.CopyFrom(request.parameters)
        else:
            submit.parameters.update(dead.parameters)
        row, secrets = await self._runs.prepare(submit, actor=actor)
        # Its policy as it was (a script default the catalogue stored is not re-checked).
        row.parent_run_id, row.retry = dead.id, dict(dead.retry)

        async def write(session: AsyncSession) -> None:
            held = await session.get(RunRow, dead.id, with_for_update=True)
            assert held is not None
            self._check_replayable(held)
            await self._runs.events.stage(session, row)
            held.replay_run_id = row.id

        return await self._runs.commit_once(row, secrets, request.idempotency_key, write)

    @staticmethod
    def _check_replayable(row: RunRow) -> None:
        if not row.dead_lettered:
            raise FailedPrecondition(f"run {row.id} is not dead-lettered")
        if row.replay_run_id:
            raise FailedPrecondition(f"run {row.id} was already replayed as {row.replay_run_id}")

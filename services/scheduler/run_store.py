"""The run store: reads and writes of run rows (by id, by idempotency key, pages, the
dispatch claim and its records, active counts), and the hot path's statements on Core
transactions (shared/db_transactions.py). No lifecycle rule here beyond moving a run's
columns by an event (the lifecycle, runs.py, decides what follows)."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from cachetools import LRUCache
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy import Table, bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler import handoff
from services.scheduler import state as sm
from services.scheduler.batches import chunks
from services.scheduler.models import (
    RUN_COLUMNS,
    QuarantineRow,
    RunRow,
    keep_messages,
    run_record,
)
from services.scheduler.run_listeners import EndWrites
from shared.db_transactions import Transactions
from shared.errors import InvalidArgument, NotFound
from shared.group_commit import GroupCommit
from shared.sqlite_rows import SqliteRows, driver_of, placeholders

RS = common_pb2.RunState
# States in which an executor holds a run and its lease runs.
LEASED = (RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING)
# Runs claimed per UPDATE statement (bounded IN lists).
CLAIM_CHUNK = 1000
RUNS = cast(Table, RunRow.__table__)
# The hot path's statements, built once (their cache keys are computed once, not per call).
_INSERT = insert(RUNS)
_BY_ID = select(RUNS).where(RUNS.c.id == bindparam("run_id"))
_BY_KEY = select(RUNS).where(RUNS.c.idempotency_key == bindparam("key"))
_BY_IDS = (
    select(RUNS)
    .where(RUNS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(RUNS.c.id)
    .with_for_update()
)
# The columns set are the parameters' other keys.
_UPDATE_BY_ID = update(RUNS).where(RUNS.c.id == bindparam("run_id_"))
_PENDING = RUNS.c.state == RS.RUN_STATE_PENDING
_NOW = bindparam("now", type_=RUNS.c.updated_at.type)
# The executor that accepted runs; QUEUED (and a lease) unless events already moved them on.
# The state is assigned last: MariaDB evaluates SET left to right, so the conditions on the
# state that come after it would see the new one (the run's queued_at stayed NULL there).
_DISPATCHED = (
    update(RUNS)
    .where(RUNS.c.id.in_(bindparam("ids", expanding=True)))
    .ordered_values(
        (RUNS.c.executor_id, bindparam("executor_id", type_=RUNS.c.executor_id.type)),
        (RUNS.c.executor_address, bindparam("address", type_=RUNS.c.executor_address.type)),
        (RUNS.c.queued_at, case((_PENDING, _NOW), else_=RUNS.c.queued_at)),
        (
            RUNS.c.lease_expires_at,
            case(
                (
                    RUNS.c.state.in_([RS.RUN_STATE_PENDING, *LEASED]),
                    bindparam("lease", type_=RUNS.c.lease_expires_at.type),
                ),
                else_=RUNS.c.lease_expires_at,
            ),
        ),
        (RUNS.c.updated_at, _NOW),
        (RUNS.c.state, case((_PENDING, RS.RUN_STATE_QUEUED), else_=RUNS.c.state)),
    )
)
# The same statements on the sqlite3 driver (shared/sqlite_rows.py): SQLite files only. The
# texts are made of the table's column names, constants and "?" placeholders, never values
# (hence the S608 waivers).
ROWS = SqliteRows(RUNS)
_SQL_BY_ID = f"SELECT {ROWS.select_list} FROM runs WHERE id = ?"  # noqa: S608
_SQL_BY_KEY = f"SELECT {ROWS.select_list} FROM runs WHERE idempotency_key = ?"  # noqa: S608
_SQL_BY_IDS = f"SELECT {ROWS.select_list} FROM runs WHERE id IN ({{}}) ORDER BY id"  # noqa: S608
_P, _Q, _R = RS.RUN_STATE_PENDING, RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING
_SQL_DISPATCHED = (
    "UPDATE runs SET executor_id = ?, executor_address = ?, "  # noqa: S608
    f"queued_at = CASE WHEN state = {_P} THEN ? ELSE queued_at END, "
    f"lease_expires_at = CASE WHEN state IN ({_P}, {_Q}, {_R}) THEN ? "
    "ELSE lease_expires_at END, "
    f"updated_at = ?, state = CASE WHEN state = {_P} THEN {_Q} ELSE state END "
    "WHERE id IN ({})"
)
# What a batch of events did: the events that moved a run, the runs moved (by id), those ended.
Applied = tuple[list[int], dict[str, RunRow], list[RunRow]]
# The run-end hooks' writes for the runs a batch ends, or None (RunListeners.plan_ends).
PlanEnds = Callable[[Connection, Sequence[RunRow]], Sequence[EndWrites] | None]


def _now() -> datetime:
    return datetime.now(UTC)


def proto_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def repeated_proto_dict(message: Message) -> dict[str, Any]:
    """`proto_dict` of a message most runs repeat (a script's config, its limits, a retry
    policy): converted once per distinct value (json_format costs 5-25 µs a message, its
    bytes ~0.3), a new dict each call (the caller may change it)."""
    key = (message.DESCRIPTOR.full_name, message.SerializeToString(deterministic=True))
    text = _PROTO_JSON.get(key)
    if text is None:
        text = _PROTO_JSON[key] = json.dumps(proto_dict(message))
    result: dict[str, Any] = json.loads(text)
    return result


# repeated_proto_dict's conversions: (message type, its bytes) -> proto_dict as JSON text.
_PROTO_JSON: LRUCache[tuple[str, bytes], str] = LRUCache(maxsize=256)


class RunStore:
    """The run table's reads and writes."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], tx: Transactions) -> None:
        self._sessions = sessions
        # The hot paths (get, by key, dispatched) as Core transactions, one thread hop each
        # on SQLite; the rest stays ORM.
        self._tx = tx
        # Submits' inserts and dispatch marks that arrive together share a transaction.
        self.inserts: GroupCommit[_Insert, tuple[bool, dict[str, Any]]] = GroupCommit(
            tx, _inserts_in
        )
        self.marks: GroupCommit[_Mark, None] = GroupCommit(tx, _marks_in)

    async def by_key(self, key: str) -> RunRow | None:
        return await self._tx.read(_by_key, key)

    async def get(self, run_id: str) -> RunRow:
        if not run_id:
            raise InvalidArgument.field("id", "run id is required")
        row = await self._tx.read(_by_id, run_id)
        if row is None:
            raise NotFound("run", run_id)
        return row

    async def list(self, request: scheduler_pb2.ListRunsRequest) -> tuple[Sequence[RunRow], str]:
        """Newest first; the cursor is (created_at, id) so inserts never shift pages."""
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 50, 500)
        query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc())
        if request.script_name:
            query = query.where(RunRow.script_name == request.script_name)
        if request.schedule_id:
            query = query.where(RunRow.schedule_id == request.schedule_id)
        if request.states:
            query = query.where(RunRow.state.in_(list(request.states)))
        if request.HasField("created_after"):
            query = query.where(RunRow.created_at >= request.created_after.ToDatetime(UTC))
        if request.HasField("created_before"):
            query = query.where(RunRow.created_at < request.created_before.ToDatetime(UTC))
        query = after_cursor(query, RunRow.created_at, RunRow.id, request.page_token)
        wanted = dict(request.labels)
        async with self._sessions() as session:
            rows: list[RunRow] = []
            async for row in await session.stream_scalars(query):
                if all(row.labels.get(k) == v for k, v in wanted.items()):
                    rows.append(row)
                    if len(rows) > size:
                        break
        token = encode_cursor(rows[size - 1]) if len(rows) > size else ""
        return rows[:size], token

    async def defer(self, run_id: str, until: datetime) -> None:
        async with self._sessions() as session, session.begin():
            row = await session.get(RunRow, run_id)
            if row is not None and row.state == RS.RUN_STATE_PENDING:
                row.next_dispatch_at = until
                row.dispatch_attempts += 1

    async def claim_pending(self, limit: int, claim_s: float) -> Sequence[RunRow]:
        """Runs to dispatch, highest priority first and FIFO within a priority, claimed for
        `claim_s`: their next_dispatch_at moves past the claim, so another replica's round
        skips them (rows locked by a replica's concurrent claim are skipped too: FOR UPDATE
        SKIP LOCKED where the database has it). A replica that dies holding a claim leaves
        the runs to the others once it expires. Quarantined scripts' runs are not taken."""
        now = _now()
        query = (
            select(RunRow)
            .where(RunRow.state == RS.RUN_STATE_PENDING)
            .where((RunRow.next_dispatch_at.is_(None)) | (RunRow.next_dispatch_at <= now))
            .where(
                RunRow.script_name.not_in(
                    select(QuarantineRow.script_name).where(QuarantineRow.released_at.is_(None))
                )
            )
            .order_by(RunRow.priority.desc(), RunRow.created_at, RunRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=RunRow)
        )
        until = now + timedelta(seconds=claim_s)
        async with self._sessions() as session, session.begin():
            rows = (await session.scalars(query)).all()
            ids = [row.id for row in rows]
            # The claim in one UPDATE per chunk (not one per row: rounds are large).
            for chunk in range(0, len(ids), CLAIM_CHUNK):
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(ids[chunk : chunk + CLAIM_CHUNK]))
                    .values(next_dispatch_at=until)
                    .execution_options(synchronize_session=False)
                )
        for row in rows:
            row.next_dispatch_at = until
        return rows

    async def release(self, run_ids: Sequence[str]) -> None:
        """Give back claimed runs this round did not hand over (held back by a limit)."""
        if not run_ids:
            return
        async with self._sessions() as session, session.begin():
            await self._release(session, run_ids)

    @staticmethod
    async def _release(session: AsyncSession, run_ids: Sequence[str]) -> None:
        if run_ids:
            await session.execute(_released(run_ids))

    async def record_attempt(self, run_id: str, address: str) -> None:
        """Before handing a run to an executor: where it went, should the answer be lost."""
        await self.record_attempts({run_id: address})

    async def record_attempts(self, addresses: Mapping[str, str]) -> None:
        """record_attempt for several runs (run id -> executor address), in one write."""
        if not addresses:
            return
        by_address: dict[str, list[str]] = {}
        for run_id, address in addresses.items():
            by_address.setdefault(address, []).append(run_id)
        now = _now()
        async with self._sessions() as session, session.begin():
            for address, run_ids in by_address.items():
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(run_ids))
                    .where(RunRow.state == RS.RUN_STATE_PENDING)
                    .values(executor_address=address, dispatch_attempted_at=now)
                    .execution_options(synchronize_session=False)
                )

    async def active_counts(self) -> dict[str, int]:
        """Runs held by executors (QUEUED or RUNNING), per script."""
        query = (
            select(RunRow.script_name, func.count())
            .where(RunRow.state.in_([RS.RUN_STATE_QUEUED, RS.RUN_STATE_RUNNING]))
            .group_by(RunRow.script_name)
        )
        async with self._sessions() as session:
            return {name: int(count) for name, count in (await session.execute(query)).all()}

    async def insert(
        self,
        values: dict[str, Any],
        direct: handoff.Handoff | None,
        stage_in: Callable[[Connection], None],
    ) -> bool:
        """Insert a run from its column values in one Core transaction, with the hand-off's
        claim check (handoff.py) and what `stage_in` adds (its SUBMITTED event); whether the
        hand-off claimed it (`values` then hold the claim). Inserts arriving together share
        the transaction (shared/group_commit.py): a failure of the group is retried alone,
        so an error (IntegrityError for a repeated idempotency key) reaches only its own
        caller."""
        claimed, stored = await self.inserts.write((values, direct, stage_in))
        values.update(stored)
        return claimed

    async def apply_moves(
        self,
        events: Sequence[events_pb2.RunEvent],
        moving: Sequence[int],
        lease_expiry: datetime,
        plan_ends: PlanEnds,
    ) -> Applied | None:
        """Apply `events[moving]` to their runs in one Core transaction (runs locked in id
        order), with the writes `plan_ends` plans for the runs it ends (run_listeners.py),
        or None, having written nothing, when it plans none (the run-end hooks need the ORM
        path): the rows are read, moved as objects of no session, and each written back with
        the columns that changed."""
        return await self._tx.write(_moves_in, events, moving, lease_expiry, plan_ends)

    async def mark_dispatched(
        self,
        by_executor: Mapping[tuple[str, str], Sequence[str]],
        release: Sequence[str],
        lease_expiry: datetime,
        now: datetime | None = None,
    ) -> None:
        """The executors that accepted runs (by (executor id, address)), in one Core
        transaction with the release of `release` (runs.py mark_dispatched_many), shared
        with the marks that arrive with it (shared/group_commit.py)."""
        await self.marks.write((by_executor, release, now or _now(), lease_expiry))


def _by_id(conn: Connection, run_id: str) -> RunRow | None:
    """A run by id, as a plain record (models.RunRecord)."""
    driver = driver_of(conn)
    if driver is not None:
        return _one(driver.execute(_SQL_BY_ID, (run_id,)).fetchone())
    stored = conn.execute(_BY_ID, {"run_id": run_id}).mappings().first()
    return None if stored is None else run_record(stored)


def _by_key(conn: Connection, key: str) -> RunRow | None:
    """The run of an idempotency key, as a plain record (models.RunRecord)."""
    driver = driver_of(conn)
    if driver is not None:
        return _one(driver.execute(_SQL_BY_KEY, (key,)).fetchone())
    stored = conn.execute(_BY_KEY, {"key": key}).mappings().first()
    return None if stored is None else run_record(stored)


def _one(stored: Sequence[Any] | None) -> RunRow | None:
    return None if stored is None else run_record(ROWS.read(stored))


def _insert_in(
    conn: Connection,
    values: dict[str, Any],
    direct: handoff.Handoff | None,
    stage_in: Callable[[Connection], None],
) -> bool:
    claimed = handoff.claim_values(conn, direct, values)
    driver = driver_of(conn)
    if driver is not None:
        driver.execute(ROWS.insert_sql, ROWS.insert_values(values))
    else:
        conn.execute(_INSERT, values)
    stage_in(conn)
    return claimed


_Insert = tuple[dict[str, Any], "handoff.Handoff | None", Callable[[Connection], None]]
_Mark = tuple[Mapping[tuple[str, str], Sequence[str]], Sequence[str], datetime, datetime]


def _inserts_in(conn: Connection, items: Sequence[_Insert]) -> list[tuple[bool, dict[str, Any]]]:
    """Group commit of inserts: each on a copy of its values (the claim writes into them),
    in order; (claimed, the values inserted) each."""
    done = []
    for values, direct, stage_in in items:
        inserted = dict(values)
        done.append((_insert_in(conn, inserted, direct, stage_in), inserted))
    return done


def _marks_in(conn: Connection, items: Sequence[_Mark]) -> list[None]:
    """Group commit of dispatch marks, in order."""
    for by_executor, release, now, lease_expiry in items:
        _dispatched_in(conn, by_executor, release, now, lease_expiry)
    return [None] * len(items)


def _moves_in(
    conn: Connection,
    events: Sequence[events_pb2.RunEvent],
    moving: Sequence[int],
    lease_expiry: datetime,
    plan_ends: PlanEnds,
) -> Applied | None:
    """RunStore.apply_moves' transaction."""
    ids = sorted({events[i].run_id for i in moving})
    driver = driver_of(conn)
    stored: dict[Any, Mapping[Any, Any]]
    if driver is not None:
        stored = {}
        for part in chunks(ids, CLAIM_CHUNK):
            for m in ROWS.read_all(
                driver.execute(_SQL_BY_IDS.format(placeholders(len(part))), part)
            ):
                stored[m["id"]] = m
    else:
        stored = {m["id"]: m for m in conn.execute(_BY_IDS, {"ids": ids}).mappings()}
    rows = {run_id: run_record(m) for run_id, m in stored.items()}
    moved, ended, finished = move_runs(rows, events, moving, lease_expiry)
    end_writes = plan_ends(conn, finished) if finished else []
    if end_writes is None:
        return None
    for run_id, row in rows.items():
        old = stored[run_id]
        # Only the columns an event moves are compared (not the run's parameters, config
        # and other JSON columns); a plain record's values are its __dict__.
        values = vars(row)
        diff = {k: values[k] for k in MOVED if values[k] != old[k]}
        if not diff:
            continue
        if driver is not None:
            keys = tuple(diff)
            driver.execute(_update_sql(keys), (*(ROWS.bind(k, diff[k]) for k in keys), run_id))
        else:
            conn.execute(_UPDATE_BY_ID, {"run_id_": run_id, **diff})
    for write in end_writes:
        write(conn)
    return moved, ended, finished


@functools.lru_cache(maxsize=512)
def _update_sql(keys: tuple[str, ...]) -> str:
    """UPDATE of these columns of one run by id, on the sqlite3 driver."""
    return f"UPDATE runs SET {', '.join(f'{k} = ?' for k in keys)} WHERE id = ?"  # noqa: S608


def move_runs(
    rows: Mapping[str, RunRow],
    events: Sequence[events_pb2.RunEvent],
    moving: Sequence[int],
    lease_expiry: datetime,
) -> Applied:
    """Apply `events[moving]` to their runs in order: (the events that moved a run, the runs
    moved by id, those ended). An event that cannot move its held run renews its lease."""
    moved: list[int] = []
    ended: dict[str, RunRow] = {}
    finished: list[RunRow] = []
    for i in moving:
        event, row = events[i], rows.get(events[i].run_id)
        if row is None:
            continue
        if not sm.can_move(row.state, event.state):
            if row.state in LEASED:
                row.lease_expires_at = lease_expiry
            continue
        _apply_fields(row, event)
        if row.state in LEASED:
            row.lease_expires_at = lease_expiry
        if sm.is_terminal(row.state):
            finished.append(row)
        moved.append(i)
        ended[row.id] = row
    return moved, ended, finished


def _dispatched_in(
    conn: Connection,
    by_executor: Mapping[tuple[str, str], Sequence[str]],
    release: Sequence[str],
    now: datetime,
    lease_expiry: datetime,
) -> None:
    """mark_dispatched_many's transaction."""
    if release:
        conn.execute(_released(release))
    driver = driver_of(conn)
    if driver is not None:
        at, lease = ROWS.bind("updated_at", now), ROWS.bind("lease_expires_at", lease_expiry)
        for (executor_id, address), run_ids in by_executor.items():
            for part in chunks(run_ids, CLAIM_CHUNK):
                driver.execute(
                    _SQL_DISPATCHED.format(placeholders(len(part))),
                    (executor_id, address, at, lease, at, *part),
                )
        return
    for (executor_id, address), run_ids in by_executor.items():
        conn.execute(
            _DISPATCHED,
            {
                "ids": run_ids,
                "executor_id": executor_id,
                "address": address,
                "now": now,
                "lease": lease_expiry,
            },
        )


def dispatched_record(
    run: RunRow, executor_id: str, address: str, now: datetime, lease_expiry: datetime
) -> RunRow:
    """What `_DISPATCHED` makes of a PENDING run, as a new record (a watcher's copy of the
    run, moved without reading it back)."""
    values = {key: getattr(run, key) for key in RUN_COLUMNS}
    values.update(
        executor_id=executor_id,
        executor_address=address,
        queued_at=now,
        lease_expires_at=lease_expiry,
        updated_at=now,
        state=RS.RUN_STATE_QUEUED,
    )
    return run_record(values)


def _released(run_ids: Sequence[str]) -> Any:
    """Give back claimed runs still PENDING."""
    return (
        update(RUNS)
        .where(RUNS.c.id.in_(list(run_ids)), RUNS.c.state == RS.RUN_STATE_PENDING)
        .values(next_dispatch_at=None)
    )


def _ts(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(UTC)


# Every column `move_runs` may set (_apply_fields and the lease): what `_moves_in` writes back.
MOVED = (
    "state",
    "updated_at",
    "executor_id",
    "queued_at",
    "started_at",
    "finished_at",
    "exit_code",
    "failure_reason",
    "exit_message",
    "exit_signal",
    "usage",
    "sandbox",
    "stdout_tail",
    "stderr_tail",
    "output_truncated",
    "stdout_total",
    "stderr_total",
    "result",
    "lease_expires_at",
)


def _apply_fields(row: RunRow, event: events_pb2.RunEvent) -> None:
    row.state, row.updated_at = event.state, _now()
    if event.executor_id:
        row.executor_id = event.executor_id
    if event.state == RS.RUN_STATE_QUEUED or row.queued_at is None:
        row.queued_at = row.queued_at or _ts(event.occurred_at)
    if event.HasField("started_at"):
        row.started_at = _ts(event.started_at)
    elif event.state == RS.RUN_STATE_RUNNING:
        row.started_at = _ts(event.occurred_at)
    if sm.is_terminal(event.state):
        row.finished_at = (
            _ts(event.finished_at) if event.HasField("finished_at") else _ts(event.occurred_at)
        )
        row.exit_code, row.failure_reason = event.exit.exit_code, event.exit.reason
        row.exit_message, row.exit_signal = event.exit.message, event.exit.signal
        row.usage, row.sandbox = usage_columns(event.usage)
        row.stdout_tail, row.stderr_tail = event.output.stdout, event.output.stderr
        row.output_truncated = event.output.truncated
        row.stdout_total, row.stderr_total = (
            event.output.stdout_total_bytes,
            event.output.stderr_total_bytes,
        )
        row.result = json_format.MessageToDict(event.result)
        keep_messages(row, event.usage, event.result)


def usage_columns(usage: common_pb2.ResourceUsage) -> tuple[dict[str, Any], str]:
    """A run's usage as stored: the JSON of the fields release 0.1.0 knows, and the sandbox
    apart (its own column), so a 0.1.0 replica can still read the run."""
    known = common_pb2.ResourceUsage()
    known.CopyFrom(usage)
    known.ClearField("sandbox")
    return proto_dict(known), usage.sandbox


def encode_cursor(row: RunRow) -> str:
    return base64.urlsafe_b64encode(f"{row.created_at.isoformat()}|{row.id}".encode()).decode()


def after_cursor(query: Any, created_at: Any, ident: Any, token: str) -> Any:
    """Rows after a newest-first (created_at, id) keyset cursor; the query unchanged if none."""
    if not token:
        return query
    at, last_id = decode_cursor(token)
    return query.where((created_at < at) | ((created_at == at) & (ident < last_id)))


def decode_cursor(token: str) -> tuple[datetime, str]:
    try:
        at, run_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)), run_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.field("page_token", "malformed page token") from None

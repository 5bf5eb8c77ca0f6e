"""What every fire of one version of a schedule shares, computed once (by the lookahead,
before its first fire) and cached until the definition or the catalogue's answer for it
changes: the parsed definition and trigger and, for an ALLOW schedule whose script and
parameters validate and carry no secrets, the run's column values and its events'
template, from which its fires are inserted in bulk (records.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, cast

from cachetools import LRUCache
from sqlalchemy import JSON, Column, Dialect, MetaData, Row, Table, Text, TypeDecorator
from sqlalchemy import cast as sql_cast

from runbox.executor.v1 import executor_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from services.scheduler import batches, schedule_spec
from services.scheduler import triggers as tr
from services.scheduler.catalogue import Checked
from services.scheduler.firing.events import FireMessages, Template
from services.scheduler.firing.planning import (
    aware,
    fire_request,
    parse_definition,
    schedule_of,
)
from services.scheduler.models import RunRow, ScheduleRow, run_record
from services.scheduler.runs import Runs
from shared.errors import FailedPrecondition, InvalidArgument, NotFound

PARSED_CACHE_ENTRIES = 100_000
KIND_CACHE_ENTRIES = 10_000
# SubmitRunRequest fields after idempotency_key (6), whose bytes follow its own.
_AFTER_KEY = ("labels", "limits")


class _Encoded(TypeDecorator[Any]):
    """A JSON column whose values come encoded already (text): nothing to do on the way in."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> None:
        return None


RUNS = cast(Table, RunRow.__table__)
JSON_COLUMNS = frozenset(c.name for c in RUNS.columns if isinstance(c.type, JSON))
# The runs table as bulk fires insert into it: JSON values encoded once per schedule.
RUNS_ENCODED = Table(
    "runs",
    MetaData(),
    *(Column(c.name, _Encoded() if c.name in JSON_COLUMNS else c.type) for c in RUNS.columns),
)


def due_columns() -> tuple[Any, ...]:
    """What a round reads of each due schedule. The definition comes as its stored text (not
    decoded: cast in SQL, as asyncpg would decode a JSON column itself): it keys the caches
    of parsed definitions and fire bases. `updated_at` is the
    version a bulk fire's advance checks (records.insert_quick)."""
    return (
        ScheduleRow.id,
        ScheduleRow.script_name,
        ScheduleRow.next_fire_at,
        sql_cast(ScheduleRow.definition, Text).label("definition"),
        ScheduleRow.created_at,
        ScheduleRow.updated_at,
    )


def _key(row: Any) -> tuple[str, str, Any]:
    """The cache key of a schedule version (`due_columns`): its id, definition text and
    creation time. Drivers differ in what the definition comes back as (SQLite: the stored
    text; asyncpg: decoded JSON), so a decoded one is encoded again, canonically."""
    text = row.definition
    if not isinstance(text, str):
        text = json.dumps(text, sort_keys=True)
    return (row.id, text, aware(row.created_at))


@dataclass(frozen=True)
class ScheduleId:
    id: str
    script_name: str


@dataclass
class Base:
    """The shared part of the fires of one version of a schedule. Without `values`, its
    fires go the general way."""

    schedule: pb.Schedule
    spec: tr.Spec
    checked: Checked | None = None
    request: pb.SubmitRunRequest | None = None
    values: dict[str, Any] | None = None
    # The catalogue answer was current at this cache generation, until this monotonic time.
    generation: int = -1
    fresh_until: float = 0.0
    # The run's values as inserted (JSON columns encoded once), the request around its
    # idempotency key (serialised fields before and after it, for the digest), and the
    # events' template.
    insert: dict[str, Any] = field(default_factory=dict)
    digest_parts: tuple[bytes, bytes] = (b"", b"")
    template: Template = field(default_factory=Template)
    # The ExecuteRequest of its runs but for the run id: a fire recorded ahead copies it,
    # so its due second builds nothing (due.py).
    execute: executor_pb2.ExecuteRequest = field(default_factory=executor_pb2.ExecuteRequest)
    # Nominal time -> the next one (computed by the lookahead).
    following: dict[Any, Any] = field(default_factory=dict)

    def next_after(self, nominal: Any) -> Any:
        if nominal not in self.following:
            if len(self.following) > 8:
                self.following.clear()
            self.following[nominal] = tr.next_fire(self.spec, nominal)
        return self.following[nominal]


@dataclass
class _Kind:
    """What the bases of schedules alike (the same fire request, so the same script,
    parameters, priority, labels and retry; the same catalogue answer) share: the run's
    column values without the schedule's own fields, and what is built from them. Without
    `values` (the run needs secrets), their fires go the general way."""

    checked: Checked
    request: pb.SubmitRunRequest
    values: dict[str, Any] | None = None
    insert: dict[str, Any] = field(default_factory=dict)
    digest_parts: tuple[bytes, bytes] = (b"", b"")
    template: Template = field(default_factory=Template)
    execute: executor_pb2.ExecuteRequest = field(default_factory=executor_pb2.ExecuteRequest)


def _same(known: Checked | None, checked: Checked) -> bool:
    """Whether `checked` says what `known` said: the catalogue client answers anew when its
    cache entry expires (every `catalogue_cache_ttl_s`), with the same content as a rule;
    what was built from the old answer stands then."""
    return known is not None and (
        known is checked
        or (known.validated == checked.validated and known.script == checked.script)
    )


def execute_request(base: Base, run_id: str) -> executor_pb2.ExecuteRequest:
    """The ExecuteRequest of one of `base`'s runs."""
    request = executor_pb2.ExecuteRequest()
    request.CopyFrom(base.execute)
    request.run_id = run_id
    return request


class Bases:
    """The cache of bases (by schedule id, definition text and creation time) and of
    parsed definitions of ORM rows."""

    def __init__(self, runs: Runs, messages: FireMessages) -> None:
        self._runs = runs
        self._messages = messages
        self._bases: LRUCache[tuple[str, str, Any], Base] = LRUCache(maxsize=PARSED_CACHE_ENTRIES)
        # Fire requests (serialised) -> what the bases of schedules making them share.
        self._kinds: LRUCache[bytes, _Kind] = LRUCache(maxsize=KIND_CACHE_ENTRIES)
        self._parsed: LRUCache[tuple[str, str, Any], tuple[pb.Schedule, tr.Spec]] = LRUCache(
            maxsize=PARSED_CACHE_ENTRIES
        )

    async def get(self, row: Row[Any]) -> Base:
        """The base of `row` (`due_columns`). Raises Unavailable when the catalogue cannot
        be reached."""
        key = _key(row)
        base = self._bases.get(key)
        if base is None:
            schedule = parse_definition(key[1])
            spec = schedule_spec.check_timing(schedule, anchor=aware(row.created_at))
            base = self._bases[key] = Base(schedule, spec)
        schedule = base.schedule
        if schedule.concurrency != pb.CONCURRENCY_POLICY_ALLOW:
            return base  # fires look at the schedule's active runs: the general way
        catalogue = self._runs.catalogue
        now = time.monotonic()
        if base.generation == catalogue.generation and now < base.fresh_until:
            return base  # the catalogue's answer it was built from is still current
        generation = catalogue.generation
        try:
            checked = await catalogue.check(schedule.script, schedule.parameters)
        except (InvalidArgument, NotFound, FailedPrecondition):
            base.checked = base.values = None
            base.generation, base.fresh_until = generation, now + catalogue.cache_ttl_s
            return base  # recorded SKIPPED, with the reason, the general way
        if _same(base.checked, checked):
            base.checked = checked  # the answer again (its cache entry renewed): kept as built
        else:
            await self._make(base, row, checked)
        base.generation, base.fresh_until = generation, now + catalogue.cache_ttl_s
        return base

    async def _make(self, base: Base, row: Row[Any], checked: Checked) -> None:
        """`base` from the catalogue's answer `checked`: what schedules alike share (the
        same fire request, the same answer) is built once (`_Kind`), then given this
        schedule's own fields."""
        request = fire_request(base.schedule)
        shape = request.SerializeToString(deterministic=True)
        kind = self._kinds.get(shape)
        if kind is None or not _same(kind.checked, checked):
            values, secrets = await self._runs.prepare_values(
                request, actor=f"schedule:{row.id}", fresh=False
            )
            kind = self._kinds[shape] = _Kind(checked, request)
            if not (secrets or values["secret_names"]):
                self._build_kind(kind, values)
        kind.checked = checked
        base.checked, base.request, base.values = checked, request, None
        if kind.values is not None:
            self._build(base, kind, ScheduleId(row.id, row.script_name))

    def _build_kind(self, kind: _Kind, values: dict[str, Any]) -> None:
        """The parts of a kind that every base copies (see Base). From the stored values
        (defaults filled in, e.g. attempt 1), as a round reads them; the request first, so
        a kind whose request cannot be built has no values (its fires go the general way)
        rather than values without a request."""
        values = {**values, "schedule_id": None, "submitted_by": ""}
        execute = batches.request_of(run_record(values), {}, {})
        execute.ClearField("run_id")
        request = kind.request
        before, after = pb.SubmitRunRequest(), pb.SubmitRunRequest()
        before.CopyFrom(request)
        for name in _AFTER_KEY:
            before.ClearField(name)  # type: ignore[arg-type]
        after.labels.update(request.labels)
        if request.HasField("limits"):
            after.limits.CopyFrom(request.limits)
        kind.digest_parts = (
            before.SerializeToString(deterministic=True),
            after.SerializeToString(deterministic=True),
        )
        kind.insert = {
            name: json.dumps(value) if name in JSON_COLUMNS else value
            for name, value in values.items()
        }
        kind.template = self._messages.template(values, ScheduleId("", ""))
        kind.execute = execute
        kind.values = values

    def _build(self, base: Base, kind: _Kind, ref: ScheduleId) -> None:
        """The parts of a base that every fire copies (see Base): its kind's, with the
        schedule's own fields."""
        assert kind.values is not None
        own = {"schedule_id": ref.id, "submitted_by": f"schedule:{ref.id}"}
        execute = executor_pb2.ExecuteRequest()
        execute.CopyFrom(kind.execute)
        execute.schedule_id = ref.id
        base.values = {**kind.values, **own}
        base.insert = {**kind.insert, **own}
        base.digest_parts = kind.digest_parts
        base.template = self._messages.for_schedule(kind.template, ref)
        base.execute = execute

    def cached(self, row: Row[Any]) -> Base | None:
        """The base of `row` if one is cached and its catalogue answer still current."""
        base = self._bases.get(_key(row))
        if base is None:
            return None
        catalogue = self._runs.catalogue
        if base.generation != catalogue.generation or time.monotonic() >= base.fresh_until:
            return None
        return base

    def schedule_of(self, row: Any) -> pb.Schedule:
        """The definition of `row` (`due_columns`), from its base when there is one."""
        key = _key(row)
        base = self._bases.get(key)
        if base is not None:
            return base.schedule
        return parse_definition(key[1])

    def parsed(self, row: ScheduleRow) -> tuple[pb.Schedule, tr.Spec]:
        """The definition and trigger of an ORM row, parsed once per version of the row
        (read only: shared by every fire until the definition changes)."""
        key = (row.id, json.dumps(row.definition, sort_keys=True), aware(row.created_at))
        parsed = self._parsed.get(key)
        if parsed is None:
            schedule = schedule_of(row.definition)
            spec = schedule_spec.check_timing(schedule, anchor=aware(row.created_at))
            parsed = self._parsed[key] = (schedule, spec)
        return parsed

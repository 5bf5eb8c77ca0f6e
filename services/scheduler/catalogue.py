"""The scheduler's view of the catalogue: script versions and their compiled parameter
schemas, fetched once and validated here with the catalogue's own code
(shared/parameters.py), so a warm submit makes no catalogue call. Catalogue errors are
mapped back to domain errors, so a caller sees NOT_FOUND / INVALID_ARGUMENT (with field
details) / FAILED_PRECONDITION unchanged.

What is cached, per script name: for each selector asked (and each exact version resolved),
the resolved ScriptVersion, the script (its defaults) and the compiled ParameterSet, plus a
memo of validated answers without secrets. The catalogue stays the source of truth:

- Every ScriptEvent for a script (any catalogue replica's: a version published, deprecated
  or yanked, the script updated, deleted or restored) drops all of that script's entries.
  The subscription is a core NATS one per replica (`follow`): every replica must see every
  event, and only events from now on matter (the cache starts empty).
- Read-your-writes for SubmitRun (`fresh=True`): an exact version ("1.2.3") is served from
  the cache, since a version's definitions never change. Any other selector (latest, a
  range) must give a client that has just published a version that version. The catalogue
  publishes a change note on core NATS and flushes it before it answers a write
  (shared/script_notes.py); a submit's `Barrier.settled()` flushes this service's own
  connection after the submit arrived (one flush for all submits waiting at that moment),
  so the notes of every write answered before it have dropped their entries by then, and
  the cache may answer. When that cannot be told (NATS down, a clustered NATS in mode
  "auto", mode "rpc", the flush failed) the selector is resolved by the catalogue (one
  ResolveVersion call), as before. Schedule fires (`fresh=False`) take cached "latest"
  answers without the barrier: they get the catalogue's answer up to an event's delivery.
- When the subscription is down (NATS disconnected, or not started), entries older than
  `outage_ttl_s` are not served; after a reconnect everything is dropped (events may have
  been missed). `cache_ttl_s` bounds every entry in any case (0: no cache at all).
- The catalogue never returns the defaults of secret parameters, so a request that leaves a
  secret parameter out is validated by the catalogue (ValidateParameters), as are versions
  whose definitions no longer compile here (the catalogue answers FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import semver
from cachetools import TTLCache
from google.protobuf import json_format, struct_pb2
from nats.aio.client import Client as NATS

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared import parameters
from shared.errors import InvalidArgument, Unavailable
from shared.jetstream import follow_script_changes
from shared.script_notes import Barrier, Mode
from shared.status import from_rpc_error

_PASS_THROUGH = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}
_MEMO_PER_VERSION = 256  # validated answers kept per cached version


@dataclass(frozen=True)
class Checked:
    """A script reference resolved and its parameter values validated, with the script."""

    validated: catalogue_pb2.ValidateParametersResponse
    script: catalogue_pb2.Script


@dataclass
class _Entry:
    """One resolution: the version, the script's defaults, the compiled schema (None: it
    does not compile here, the catalogue validates), and answers already validated."""

    version: catalogue_pb2.ScriptVersion
    script: catalogue_pb2.Script
    schema: parameters.ParameterSet | None
    secrets: frozenset[str]
    at: float
    answers: dict[bytes, Checked] = field(default_factory=dict)


def _exact(selector: str) -> bool:
    """Whether a selector names one version (its resolution cannot change but by an event)."""
    return semver.Version.is_valid(selector)


def _compile(version: catalogue_pb2.ScriptVersion) -> parameters.ParameterSet | None:
    try:
        return parameters.compile_definitions(version.parameters)
    except InvalidArgument:
        return None  # accepted under older rules: the catalogue says what to do


def _relative(error: InvalidArgument) -> InvalidArgument:
    """Field paths relative to the SubmitRun request (values.x -> parameters.x)."""
    for v in error.violations:
        v_field = v.field.replace("values.", "parameters.", 1).replace("ref.", "script.", 1)
        object.__setattr__(v, "field", v_field)
    return error


class CatalogueClient:
    """Calls the catalogue with this service's own token; caches what SubmitRun needs."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        cache_ttl_s: float = 0.0,
        outage_ttl_s: float = 1.0,
        cache_entries: int = 10_000,
        read_your_writes: Mode = "auto",
    ) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        # Script name -> selector or exact version -> entry.
        self._cache: TTLCache[str, dict[str, _Entry]] | None = (
            TTLCache(maxsize=cache_entries, ttl=cache_ttl_s) if cache_ttl_s > 0 else None
        )
        self._outage_ttl_s = min(outage_ttl_s, cache_ttl_s)
        # Loads in flight by (script, selector, generation): one started before an
        # invalidation is not joined after it.
        self._inflight: dict[tuple[str, str, int], asyncio.Future[_Entry]] = {}
        # Bumped by every invalidation: an answer that raced with one is not cached.
        self._generation = 0
        self._nc: NATS | None = None
        self._reconnects = 0
        self.hits = 0
        self.misses = 0
        self.calls = 0  # catalogue RPCs made
        self.barrier = Barrier(self.invalidate, mode=read_your_writes)

    async def follow(self, nc: NATS, prefix: str) -> None:
        """Subscribe to the catalogue's ScriptEvents and change notes; until then, entries
        live `outage_ttl_s` and fresh submits of a non-exact version ask the catalogue."""
        await follow_script_changes(nc, prefix, self.invalidate)
        await self.barrier.follow(nc, prefix)
        self._nc, self._reconnects = nc, nc.stats["reconnects"]
        self.invalidate()  # what was cached before the subscription may have missed events

    @property
    def generation(self) -> int:
        """Bumped by every invalidation: an answer taken before a change to it is stale."""
        return self._generation

    @property
    def cache_ttl_s(self) -> float:
        """How long an answer may be reused (0: never)."""
        return self._cache.ttl if self._cache is not None else 0.0

    def invalidate(self, name: str | None = None) -> None:
        """Forget what is cached of one script (or of all)."""
        self._generation += 1
        if self._cache is None:
            return
        if name is None:
            self._cache.clear()
        else:
            self._cache.pop(name, None)

    async def check(
        self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct, *, fresh: bool = False
    ) -> Checked:
        """Resolve `ref` and validate `values` for it, from the cache where it can (`fresh`:
        a selector other than an exact version sees every catalogue write answered before
        this call: after the notes barrier, else resolved by the catalogue)."""
        if self._cache is None:
            validated, script = await asyncio.gather(
                self.validate(ref, values), self.get_script(ref.name)
            )
            return Checked(validated, script)
        selector = ref.version.strip()
        if fresh and not _exact(selector) and not await self.barrier.settled():
            version = await self.resolve(ref)
            entry = self._cached(ref.name, version.version)
            if entry is None or entry.version != version:
                entry = await self._load(ref, version.version, version)
        else:
            entry = self._cached(ref.name, selector) or await self._load(ref, selector, None)
        return await self._validate(entry, values)

    def _cached(self, name: str, selector: str) -> _Entry | None:
        assert self._cache is not None
        nc = self._nc
        if nc is not None and nc.stats["reconnects"] != self._reconnects:
            self._reconnects = nc.stats["reconnects"]
            self.invalidate()  # events published while disconnected are lost
        entry = self._cache.get(name, {}).get(selector)
        if entry is None:
            return None
        live = nc is not None and nc.is_connected
        if not live and time.monotonic() - entry.at >= self._outage_ttl_s:
            return None
        self.hits += 1
        return entry

    async def _load(
        self, ref: common_pb2.ScriptRef, key: str, version: catalogue_pb2.ScriptVersion | None
    ) -> _Entry:
        """Fetch (once for concurrent callers) and cache the entry for `ref` under `key`."""
        generation = self._generation
        flight = (ref.name, key, generation)
        waiting = self._inflight.get(flight)
        if waiting is not None:
            return await asyncio.shield(waiting)
        self.misses += 1
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = future
        try:
            entry = await self._fetch(ref, version)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(entry)
            if generation == self._generation and self._cache is not None:
                scripts = self._cache.setdefault(ref.name, {})
                scripts[key] = scripts[entry.version.version] = entry
            return entry
        finally:
            if self._inflight.get(flight) is future:
                del self._inflight[flight]

    async def _fetch(
        self, ref: common_pb2.ScriptRef, version: catalogue_pb2.ScriptVersion | None
    ) -> _Entry:
        if version is None:
            version, script = await asyncio.gather(self.resolve(ref), self.get_script(ref.name))
        else:
            script = await self.get_script(ref.name)
        assert version is not None
        secrets = frozenset(d.name for d in version.parameters if parameters.is_secret(d))
        return _Entry(version, script, _compile(version), secrets, time.monotonic())

    async def _validate(self, entry: _Entry, values: struct_pb2.Struct) -> Checked:
        """The catalogue's ValidateParameters answer for the entry's version, computed here."""
        key = values.SerializeToString(deterministic=True)
        known = entry.answers.get(key)
        if known is not None:
            return known
        raw: dict[str, Any] = json_format.MessageToDict(values)
        if entry.schema is None or not entry.secrets <= raw.keys():
            # Secret defaults are withheld from us, and an old definition is the catalogue's
            # to judge: ask it, about the version this entry resolved to.
            pinned = common_pb2.ScriptRef(
                name=entry.version.script_name, version=entry.version.version
            )
            return Checked(await self.validate(pinned, values), entry.script)
        try:
            validated = entry.schema.validate(raw)
        except InvalidArgument as exc:
            raise _relative(exc) from None
        normalised = struct_pb2.Struct()
        normalised.update(validated.values)
        checked = Checked(
            catalogue_pb2.ValidateParametersResponse(
                version=entry.version, values=normalised, secret_names=sorted(validated.secrets)
            ),
            entry.script,
        )
        if not validated.secrets and len(entry.answers) < _MEMO_PER_VERSION:
            entry.answers[key] = checked
        return checked

    async def resolve(self, ref: common_pb2.ScriptRef) -> catalogue_pb2.ScriptVersion:
        self.calls += 1
        try:
            return await self._stub.ResolveVersion(catalogue_pb2.ResolveVersionRequest(ref=ref))
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    async def validate(
        self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct
    ) -> catalogue_pb2.ValidateParametersResponse:
        self.calls += 1
        try:
            return await self._stub.ValidateParameters(
                catalogue_pb2.ValidateParametersRequest(ref=ref, values=values)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    async def get_script(self, name: str) -> catalogue_pb2.Script:
        self.calls += 1
        try:
            return await self._stub.GetScript(catalogue_pb2.GetScriptRequest(name=name))
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    @staticmethod
    def _map(exc: grpc.aio.AioRpcError) -> Exception:
        error = from_rpc_error(exc)
        if exc.code() in _PASS_THROUGH:
            return _relative(error) if isinstance(error, InvalidArgument) else error
        return Unavailable(f"catalogue unavailable: {exc.code().name}: {error.message}")

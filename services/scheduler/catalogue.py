"""The scheduler's view of the catalogue: parameter validation and script
defaults over gRPC, with catalogue errors mapped back to domain errors so a
caller sees NOT_FOUND / INVALID_ARGUMENT (with field details) unchanged.

`check` (what a run needs: the resolved version, validated values and the script's
defaults) is cached per (script ref, parameter values) for a short TTL and dropped at
once when the catalogue publishes a ScriptEvent for the script (a version published,
deprecated or yanked, the script updated or deleted), as the catalogue's own
resolution cache is. Schedule fires use it: a fire validated from the cache gets the
answer the catalogue would give, up to that event's delivery (milliseconds). SubmitRun
asks fresh (a client that just published a version gets it) and refreshes the cache.
Requests with secret values are never cached, and concurrent misses for one key share
one call."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from cachetools import TTLCache
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from shared.errors import InvalidArgument, Unavailable
from shared.status import from_rpc_error

_PASS_THROUGH = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
}
_Key = tuple[str, bytes, bytes]


@dataclass(frozen=True)
class Checked:
    """A script reference resolved and its parameter values validated, with the script."""

    validated: catalogue_pb2.ValidateParametersResponse
    script: catalogue_pb2.Script


class CatalogueClient:
    """Calls the catalogue with this service's own token."""

    def __init__(
        self, channel: grpc.aio.Channel, *, cache_ttl_s: float = 0.0, cache_entries: int = 10_000
    ) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
        self._cache: TTLCache[_Key, Checked] | None = (
            TTLCache(maxsize=cache_entries, ttl=cache_ttl_s) if cache_ttl_s > 0 else None
        )
        self._inflight: dict[_Key, asyncio.Future[Checked]] = {}
        # Bumped by every invalidation: an answer that raced with one is not cached.
        self._generation = 0
        self.hits = 0
        self.misses = 0

    async def check(
        self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct, *, fresh: bool = False
    ) -> Checked:
        """Validate `values` for `ref` and fetch the script, from the cache when it can
        (`fresh`: ask the catalogue, and cache its answer)."""
        if self._cache is None:
            return await self._fetch(ref, values)
        key = (
            ref.name,
            ref.SerializeToString(deterministic=True),
            values.SerializeToString(deterministic=True),
        )
        cached = None if fresh else self._cache.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        waiting = None if fresh else self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        self.misses += 1
        future: asyncio.Future[Checked] = asyncio.get_running_loop().create_future()
        if not fresh:
            self._inflight[key] = future
        generation = self._generation
        try:
            checked = await self._fetch(ref, values)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(checked)
            if generation == self._generation and not checked.validated.secret_names:
                self._cache[key] = checked
            return checked
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

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
            return
        for key in [k for k in self._cache if k[0] == name]:
            self._cache.pop(key, None)

    async def _fetch(self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct) -> Checked:
        validated, script = await asyncio.gather(
            self.validate(ref, values), self.get_script(ref.name)
        )
        return Checked(validated, script)

    async def validate(
        self, ref: common_pb2.ScriptRef, values: struct_pb2.Struct
    ) -> catalogue_pb2.ValidateParametersResponse:
        try:
            return await self._stub.ValidateParameters(
                catalogue_pb2.ValidateParametersRequest(ref=ref, values=values)
            )
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    async def get_script(self, name: str) -> catalogue_pb2.Script:
        try:
            return await self._stub.GetScript(catalogue_pb2.GetScriptRequest(name=name))
        except grpc.aio.AioRpcError as exc:
            raise self._map(exc) from None

    @staticmethod
    def _map(exc: grpc.aio.AioRpcError) -> Exception:
        error = from_rpc_error(exc)
        if exc.code() in _PASS_THROUGH:
            if isinstance(error, InvalidArgument):
                # Field paths are relative to the SubmitRun request.
                for v in error.violations:
                    v_field = v.field.replace("values.", "parameters.", 1).replace(
                        "ref.", "script.", 1
                    )
                    object.__setattr__(v, "field", v_field)
            return error
        return Unavailable(f"catalogue unavailable: {exc.code().name}: {error.message}")

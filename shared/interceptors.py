"""Server interceptor: authentication, permissions, default deadline, error
mapping, metrics and log context, applied to every RPC of a service."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.auth import AUTHENTICATED, PUBLIC, Authenticator, Needs, Principal, require
from shared.errors import DeadlineExceeded, DomainError, PermissionDenied
from shared.status import DETAILS_KEY, grpc_code, to_status
from shared.telemetry import ServerSpans

log = logging.getLogger(__name__)

# The principal of the RPC being served (read by servicers through current_principal()).
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "runbox_principal", default=None
)

PUBLIC_METHODS: Mapping[str, str] = {
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": AUTHENTICATED,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": AUTHENTICATED,
}


def current_principal() -> Principal:
    """The authenticated caller of the current RPC."""
    principal = _principal.get()
    if principal is None:
        raise PermissionDenied("no authenticated principal in context")
    return principal


class RpcMetrics:
    """Per-service RPC counters and latency histogram."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"runbox_{service}_rpc_requests_total",
            "RPCs handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"runbox_{service}_rpc_duration_seconds",
            "RPC handling time.",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )


class _Method:
    """What the interceptor resolves once per method rather than per call: the permissions
    it needs (all of them), where its trace context comes from (None: none, or OpenTelemetry's server
    interceptor made one), its metric children, and the wrapped handler (grpc.aio looks the
    same handler object up for every call)."""

    __slots__ = (
        "_by_code",
        "_latency",
        "_requests",
        "name",
        "permissions",
        "spans",
        "wrapped",
    )

    def __init__(
        self, name: str, needs: Needs | None, spans: ServerSpans | None, metrics: RpcMetrics
    ) -> None:
        self.name = name
        self.permissions = (needs,) if isinstance(needs, str) else needs
        self.spans = spans
        self._requests = metrics.requests
        self._by_code: dict[grpc.StatusCode, Any] = {}  # a code's child on its first call
        self._latency = metrics.latency.labels(name)
        # (the handler grpc.aio found, ours around it)
        self.wrapped: tuple[Any, grpc.RpcMethodHandler[Any, Any]] | None = None

    def observe(self, code: grpc.StatusCode, started: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = self._requests.labels(self.name, code.name)
        counter.inc()
        self._latency.observe(time.perf_counter() - started)


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,type-arg]
    """One interceptor for every cross-cutting concern of a unary or streaming RPC.

    `permissions` maps full method names ("/pkg.Service/Method") to the
    permission they need, or a tuple of permissions all needed; a method missing from
    the map is denied (fail closed).
    `spans`, when set, serves each RPC but health checks in a trace context (tracing
    without the OpenTelemetry server interceptor, see ServerSpans).
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        permissions: Mapping[str, Needs],
        metrics: RpcMetrics,
        default_deadline_s: float,
        spans: ServerSpans | None = None,
    ) -> None:
        self._auth = authenticator
        self._permissions: dict[str, Needs] = {**PUBLIC_METHODS, **permissions}
        self._metrics = metrics
        self._default_deadline = default_deadline_s
        self._spans = spans
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(details)
        if handler is None:
            return None
        entry = self._methods.get(details.method)
        if entry is None:  # only methods the server serves get here: the map stays small
            entry = self._methods[details.method] = _Method(
                details.method,
                self._permissions.get(details.method),
                None if is_health_check(details.method) else self._spans,
                self._metrics,
            )
        wrapped = entry.wrapped
        if wrapped is None or wrapped[0] is not handler:
            wrapped = entry.wrapped = (handler, self._wrap(entry, handler))
        return wrapped[1]

    def _wrap(
        self, entry: _Method, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(entry, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(entry, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(entry, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _authorize(self, entry: _Method, metadata: Mapping[str, Any]) -> Principal | None:
        if entry.permissions == (PUBLIC,):
            return None
        principal = self._auth.authenticate(metadata.get("authorization"))
        if not entry.permissions:
            raise PermissionDenied(f"method {entry.name} is not open to any permission")
        for permission in entry.permissions:
            require(principal, permission)
        return principal

    async def _answer(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        exc: Exception,
        code: grpc.StatusCode,
    ) -> None:
        """Turn what the handler raised into a precise status (domain errors),
        UNIMPLEMENTED, or a bare INTERNAL; context.abort()'s own exception propagates."""
        if isinstance(exc, DomainError):
            await _abort(context, exc)
        elif code is grpc.StatusCode.UNIMPLEMENTED:
            await context.abort(code, f"{method} is not implemented yet")
        elif code is grpc.StatusCode.INTERNAL:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        else:
            raise exc

    def _wrap_unary(
        self, entry: _Method, behaviour: Callable[..., Any]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            token = entry.spans.enter(entry.name, metadata) if entry.spans else None
            try:
                _principal.set(self._authorize(entry, metadata))
                timeout = context.time_remaining()
                if timeout is None:
                    timeout = self._default_deadline
                try:
                    # asyncio.timeout, not wait_for: no extra task per call on the hot path.
                    async with asyncio.timeout(timeout):
                        return await behaviour(request, context)
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"server-side deadline of {timeout:.1f}s exceeded"
                    ) from None
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = _code_of(exc)
                await self._answer(entry.name, context, exc, code)
            finally:
                if token is not None:
                    ServerSpans.leave(token)
                entry.observe(code, started)

        return wrapped

    def _wrap_stream(
        self, entry: _Method, behaviour: Callable[..., Any]
    ) -> Callable[..., AsyncIterator[Any]]:
        # Streams (WatchRun, GetContent) are bounded by the client's deadline
        # or by the stream itself ending; they get no server default.
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            metadata = dict(context.invocation_metadata() or ())
            token = entry.spans.enter(entry.name, metadata) if entry.spans else None
            try:
                _principal.set(self._authorize(entry, metadata))
                async for item in behaviour(request, context):
                    yield item
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code = _code_of(exc)
                await self._answer(entry.name, context, exc, code)
            finally:
                if token is not None:
                    ServerSpans.leave(token)
                entry.observe(code, started)

        return wrapped


def is_health_check(method: str) -> bool:
    """Probes' health checks (no span: as opentelemetry's filters.health_check)."""
    return method.startswith("/grpc.health.v1.Health/")


def _code_of(exc: Exception) -> grpc.StatusCode:
    """The status an exception out of a handler ends its RPC with."""
    if isinstance(exc, DomainError):
        return grpc_code(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return _passthrough_code(exc) or grpc.StatusCode.INTERNAL


def _passthrough_code(exc: Exception) -> grpc.StatusCode | None:
    """context.abort() raises an internal exception that must propagate."""
    if type(exc).__name__ == "AbortError":
        return grpc.StatusCode.UNKNOWN
    return None


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: DomainError) -> None:
    status = to_status(exc)
    await context.abort(
        grpc_code(exc),
        exc.message,
        trailing_metadata=((DETAILS_KEY, status.SerializeToString()),),
    )

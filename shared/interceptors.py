"""Server interceptor: authentication, permissions, default deadline, error
mapping, metrics and log context, applied to every RPC of a service."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.auth import AUTHENTICATED, PUBLIC, Authenticator, Principal, require
from shared.errors import DeadlineExceeded, DomainError, PermissionDenied
from shared.status import DETAILS_KEY, grpc_code, to_status

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


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc,type-arg]
    """One interceptor for every cross-cutting concern of a unary or streaming RPC.

    `permissions` maps full method names ("/pkg.Service/Method") to the
    permission they need; a method missing from the map is denied (fail closed).
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        permissions: Mapping[str, str],
        metrics: RpcMetrics,
        default_deadline_s: float,
    ) -> None:
        self._auth = authenticator
        self._permissions = {**PUBLIC_METHODS, **permissions}
        self._metrics = metrics
        self._default_deadline = default_deadline_s

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
        method: str = details.method
        metadata = {k: v for k, v in (details.invocation_metadata or ())}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, metadata, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, metadata, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, metadata, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _authorize(self, method: str, metadata: Mapping[str, Any]) -> Principal | None:
        needed = self._permissions.get(method)
        if needed == PUBLIC:
            return None
        principal = self._auth.authenticate(metadata.get("authorization"))
        if needed is None:
            raise PermissionDenied(f"method {method} is not open to any permission")
        require(principal, needed)
        return principal

    @contextlib.asynccontextmanager
    async def _guard(
        self, method: str, metadata: Mapping[str, Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        """Authenticate and authorize, then turn whatever the handler raises into
        a precise status (domain errors), UNIMPLEMENTED, or a bare INTERNAL."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            _principal.set(self._authorize(method, metadata))
            yield
        except DomainError as exc:
            code = grpc_code(exc)
            await _abort(context, exc)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except NotImplementedError:
            code = grpc.StatusCode.UNIMPLEMENTED
            await context.abort(code, f"{method} is not implemented yet")
        except Exception as exc:
            passthrough = _passthrough_code(exc)
            if passthrough is not None:
                code = passthrough
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            self._observe(method, code, started)

    def _wrap_unary(
        self, method: str, metadata: Mapping[str, Any], behaviour: Callable[..., Any]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._guard(method, metadata, context):
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

        return wrapped

    def _wrap_stream(
        self, method: str, metadata: Mapping[str, Any], behaviour: Callable[..., Any]
    ) -> Callable[..., AsyncIterator[Any]]:
        # Streams (WatchRun, GetContent) are bounded by the client's deadline
        # or by the stream itself ending; they get no server default.
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with self._guard(method, metadata, context):
                async for item in behaviour(request, context):
                    yield item

        return wrapped

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self._metrics.requests.labels(method, code.name).inc()
        self._metrics.latency.labels(method).observe(time.perf_counter() - started)


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

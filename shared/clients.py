"""Outgoing gRPC channels: bearer token on every call, a default deadline
when the caller gives none, tracing, and message size limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from opentelemetry import propagate
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import TracerProvider

from shared.interceptors import is_health_check
from shared.telemetry import records_spans


class _CallDefaults:
    """Adds the bearer token, and a deadline to unary calls that have none; with `carry`,
    the current trace context too (what OpenTelemetry's client interceptors do when their
    spans record nothing, without them)."""

    def __init__(self, token: str, default_timeout_s: float, carry: bool) -> None:
        (self._auth,) = bearer(token)
        self._timeout = default_timeout_s
        self._carry = carry

    def _details(self, details: grpc.aio.ClientCallDetails, stream: bool) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if "authorization" not in metadata:
            metadata.add(*self._auth)
        if self._carry:
            propagate.inject(metadata, setter=_METADATA_SETTER)
        timeout = details.timeout
        if timeout is None and not stream:
            timeout = self._timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryDefaults(_CallDefaults, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details, False), request)


class _StreamDefaults(_CallDefaults, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc,type-arg]
    # grpc.aio files an interceptor under its first matching kind only, so
    # each kind needs its own object.
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details, True), request)


class _BidiDefaults(_CallDefaults, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc,type-arg]
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(details, True), request_iterator)


class _MetadataSetter(Setter[grpc.aio.Metadata]):
    """Puts a propagator's header into call metadata (as the client interceptors do)."""

    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key.lower()] = value


_METADATA_SETTER = _MetadataSetter()


def _not_health_check(details: grpc.aio.ClientCallDetails) -> bool:
    """OpenTelemetry's filters.negate(filters.health_check()), without its isinstance checks
    against grpc's ABCs (~16 µs a call). grpc.aio may give the method as bytes."""
    method = details.method
    return not is_health_check(method.decode() if isinstance(method, bytes) else method)


def open_channel(
    address: str,
    *,
    token: str,
    default_timeout_s: float = 10.0,
    max_message_bytes: int = 4 * 1024 * 1024,
    tracer_provider: TracerProvider | None = None,
) -> grpc.aio.Channel:
    """An insecure (loopback / mesh-terminated) channel with Runbox call defaults. Each
    call gets a client span from `tracer_provider` (the service's; None: the global one,
    a no-op unless a tool sets one) and carries its trace context to the server. A service
    that exports no spans (records_spans false) makes no client span: its calls carry the
    current trace context only."""
    carry = not records_spans(tracer_provider)
    interceptors: list[Any] = [
        _UnaryDefaults(token, default_timeout_s, carry),
        _StreamDefaults(token, default_timeout_s, carry),
        _BidiDefaults(token, default_timeout_s, carry),
    ]
    if not carry:
        interceptors += aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider, filter_=_not_health_check
        )
    return grpc.aio.insecure_channel(
        address, options=_options(max_message_bytes), interceptors=interceptors
    )


def open_stream_channel(
    address: str, *, max_message_bytes: int = 4 * 1024 * 1024
) -> grpc.aio.Channel:
    """A channel with no interceptors, for a long-lived stream that passes its own call
    metadata (`bearer`) when it starts. Through any client interceptor grpc.aio turns each
    write of a stream-stream call into a queue put, an async generator step and a write by a
    task of its own, and each read into a wait on the interceptor's task: a cost per message
    (the run link's is a few messages per run), where the defaults above are per call. The
    stream gets no client span: what it carries has spans of its own (the link's Execute
    spans)."""
    return grpc.aio.insecure_channel(address, options=_options(max_message_bytes))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata `open_channel` adds: the bearer token."""
    return (("authorization", f"Bearer {token}"),)


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
    ]

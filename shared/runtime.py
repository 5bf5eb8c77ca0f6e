"""The composition root every service's __main__ shares: logging, tracing,
metrics registry and endpoint, auth, NATS, then the gRPC server until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry import trace
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

from shared import jetstream
from shared.auth import Authenticator, Needs
from shared.metrics import MetricsEndpoint
from shared.server import Registration, ServerBundle, create_server, wait_for_signal
from shared.settings import ServiceSettings
from shared.telemetry import Tracing, setup_logging, setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Process-wide dependencies built once and passed to a service's builder."""

    service: str
    settings: ServiceSettings
    registry: CollectorRegistry
    tracing: Tracing
    authenticator: Authenticator
    instance_id: str
    nats: NATS | None = None
    js: JetStreamContext | None = None
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def span_provider(self) -> trace.TracerProvider:
        """Where the service's other spans come from (RPC clients included): records only
        when spans are exported (Tracing.spans)."""
        return self.tracing.spans

    def tracer(self, component: str) -> trace.Tracer:
        """A tracer for this service's own spans, named runbox.<service>.<component>."""
        return self.tracing.spans.get_tracer(f"runbox.{self.service}.{component}")

    async def connect_nats(self) -> JetStreamContext:
        """Connect to NATS, provision the event stream, and drain on shutdown."""
        self.nats = await jetstream.connect(self.settings.nats, name=f"runbox-{self.service}")
        self.js = self.nats.jetstream()
        await jetstream.ensure_stream(self.js, self.settings.nats)
        nc = self.nats

        async def drain() -> None:
            await nc.drain()

        self.on_shutdown.insert(0, drain)  # drained last (hooks run in reverse)
        return self.js


@dataclass
class Service:
    """What a service builder returns: servicers, their permission map, hooks."""

    registrations: Sequence[Registration]
    permissions: Mapping[str, Needs]
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    ready_info: dict[str, Any] = field(default_factory=dict)


def build_runtime(service: str, settings: ServiceSettings) -> Runtime:
    setup_logging(settings.log, service)
    # No `<counter>_created` series: they double what every scrape stores and no rule or
    # dashboard reads them (process-wide; checked when a registry is collected).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
    instance_id = settings.instance_id or f"{service}-{socket.gethostname()}-{os.getpid()}"
    return Runtime(
        service=service,
        settings=settings,
        registry=registry,
        tracing=setup_tracing(service, instance_id=instance_id),
        authenticator=Authenticator.from_config(
            settings.auth.principals_file, settings.auth.principals
        ),
        instance_id=instance_id,
    )


def start_server(runtime: Runtime, built: Service) -> ServerBundle:
    """Create the gRPC server for a built service (not started yet)."""
    bundle = create_server(
        service=runtime.service,
        settings=runtime.settings.grpc,
        registrations=built.registrations,
        authenticator=runtime.authenticator,
        permissions=built.permissions,
        registry=runtime.registry,
        tracing=runtime.tracing,
    )
    bundle.on_shutdown.extend(runtime.on_shutdown)
    return bundle


@dataclass
class Running:
    """A started service (used by run_service and by in-process tests)."""

    runtime: Runtime
    bundle: ServerBundle
    built: Service

    @property
    def port(self) -> int:
        return self.bundle.port

    @property
    def address(self) -> str:
        return f"{self.runtime.settings.grpc.host}:{self.bundle.port}"

    async def stop(self, grace_s: float = 0.0) -> None:
        """NOT_SERVING, stop the server, then run shutdown hooks (last added first)."""
        await self.bundle.set_serving(False)
        await self.bundle.server.stop(grace_s)
        for hook in reversed(self.bundle.on_shutdown):
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook failed")
        # Last, so the spans of the drain above are sent too (blocks up to the export timeout).
        await asyncio.to_thread(shutdown_tracing, self.runtime.tracing.provider)


async def launch(runtime: Runtime, builder: Callable[[Runtime], Awaitable[Service]]) -> Running:
    """Build the service, start its gRPC server and on_start hooks, mark SERVING."""
    built = await builder(runtime)
    bundle = start_server(runtime, built)
    await bundle.server.start()
    for hook in built.on_start:
        await hook()
    await bundle.set_serving(True)
    return Running(runtime, bundle, built)


def event_loop_name() -> str:
    """`uvloop` or `asyncio`: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


async def run_service(runtime: Runtime, builder: Callable[[Runtime], Awaitable[Service]]) -> None:
    """Serve until SIGTERM/SIGINT, exposing /metrics, then shut down gracefully."""
    running = await launch(runtime, builder)
    # Everything built at start-up lives as long as the process: keep it out of the cyclic
    # collector's generations so collections stay short (tail latency of every RPC).
    gc.collect()
    gc.freeze()
    metrics = None
    if runtime.settings.metrics.port >= 0:
        metrics = MetricsEndpoint(
            runtime.registry, runtime.settings.metrics.host, runtime.settings.metrics.port
        )
    loop = event_loop_name()
    log.info(
        "%s listening on %s (metrics port %s, event loop %s)",
        runtime.service,
        running.address,
        metrics.port if metrics else "off",
        loop,
    )
    if runtime.settings.announce_ready:
        announce = {
            "service": runtime.service,
            "grpc_port": running.port,
            "metrics_port": metrics.port if metrics else None,
            "event_loop": loop,
            **running.built.ready_info,
        }
        print("RUNBOX_READY " + json.dumps(announce), flush=True)
    try:
        await wait_for_signal()
        log.info("%s shutting down", runtime.service)
        await running.stop(runtime.settings.grpc.shutdown_grace_s)
    finally:
        if metrics is not None:
            metrics.close()

"""Alerting composition: database, the event consumer and its lag monitor,
the gRPC service (whose RPCs answer UNIMPLEMENTED until rules and channels
are built: the generated base servicer raises NotImplementedError)."""

from __future__ import annotations

from pathlib import Path

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from services.alerting.config import AlertingSettings
from services.alerting.consumer import EventRecorder, LagMonitor
from services.alerting.metrics import AlertingMetrics
from shared import db
from shared.jetstream import DurableConsumer
from shared.runtime import Runtime, Service

_DESCRIPTOR = alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"]
SERVICE = _DESCRIPTOR.full_name
MIGRATIONS = Path(__file__).parent / "migrations"
DURABLE = "alerting"


def permission_for(method: str) -> str:
    """The permission an AlertingService method needs, from its verb."""
    if method.startswith(("Get", "List")):
        return "alert:read"
    if method.startswith("Delete"):
        return "alert:delete"
    if method == "RetryDelivery":
        return "alert:manage"
    return "alert:write"


PERMISSIONS = {f"/{SERVICE}/{m.name}": permission_for(m.name) for m in _DESCRIPTOR.methods}


async def build(runtime: Runtime) -> Service:
    """Migrate, connect, and wire the consumer; the RPCs are not built yet."""
    settings = runtime.settings
    if not isinstance(settings, AlertingSettings):
        raise TypeError("alerting needs AlertingSettings")
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(settings.database)
    runtime.on_shutdown.append(engine.dispose)
    js = await runtime.connect_nats()
    metrics = AlertingMetrics(runtime.registry)
    recorder = EventRecorder(
        sessions=db.sessionmaker(engine),
        metrics=metrics,
        prefix=settings.nats.subjects_prefix,
        tracer=runtime.tracer_provider.get_tracer("runbox.alerting"),
    )
    consumer = DurableConsumer(
        js,
        stream=settings.nats.stream,
        durable=DURABLE,
        filter_subject=f"{settings.nats.subjects_prefix}.>",
        batch=settings.consumer_batch,
        handler=recorder,
    )
    lag = LagMonitor(
        js,
        stream=settings.nats.stream,
        durable=DURABLE,
        metrics=metrics,
        interval_s=settings.lag_poll_s,
    )
    # Hooks run last-added first: stop polling, stop consuming, then dispose.
    runtime.on_shutdown.extend([consumer.stop, lag.stop])
    # Every RPC keeps the generated base (UNIMPLEMENTED); the stubs call them abstract.
    servicer = alerting_pb2_grpc.AlertingServiceServicer()  # type: ignore[abstract]
    return Service(
        registrations=[
            (alerting_pb2_grpc.add_AlertingServiceServicer_to_server, servicer, SERVICE)
        ],
        permissions=PERMISSIONS,
        on_start=[consumer.start, lag.start],
    )

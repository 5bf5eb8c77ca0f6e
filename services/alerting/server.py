"""Alerting composition: database, the event consumer, the gRPC service
(whose RPCs answer UNIMPLEMENTED until rules and channels are built)."""

from __future__ import annotations

from pathlib import Path

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from services.alerting.config import AlertingSettings
from services.alerting.consumer import EventRecorder
from services.alerting.metrics import AlertingMetrics
from shared import db
from shared.jetstream import DurableConsumer
from shared.runtime import Runtime, Service

SERVICE = alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"
_METHODS = [m.name for m in alerting_pb2.DESCRIPTOR.services_by_name["AlertingService"].methods]


def _permission(method: str) -> str:
    if method.startswith(("Get", "List")):
        return "alert:read"
    if method.startswith("Delete"):
        return "alert:delete"
    if method == "RetryDelivery":
        return "alert:manage"
    return "alert:write"


PERMISSIONS = {f"/{SERVICE}/{m}": _permission(m) for m in _METHODS}


async def build(runtime: Runtime) -> Service:
    settings = runtime.settings
    assert isinstance(settings, AlertingSettings)
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(settings.database)
    js = await runtime.connect_nats()
    metrics = AlertingMetrics(runtime.registry)
    consumer = DurableConsumer(
        js,
        stream=settings.nats.stream,
        durable="alerting",
        filter_subject=f"{settings.nats.subjects_prefix}.>",
        batch=settings.consumer_batch,
        handler=EventRecorder(db.sessionmaker(engine), metrics, settings.nats.subjects_prefix),
    )
    runtime.on_shutdown.extend([engine.dispose, consumer.stop])
    return Service(
        registrations=[
            (
                alerting_pb2_grpc.add_AlertingServiceServicer_to_server,
                alerting_pb2_grpc.AlertingServiceServicer(),
                SERVICE,
            )
        ],
        permissions=PERMISSIONS,
        on_start=[consumer.start],
    )

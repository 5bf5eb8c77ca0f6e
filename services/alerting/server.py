"""Alerting composition: database, the store (rules, channels, silences,
alerts, deliveries), the event consumer and its lag monitor, and the gRPC
service. The rule engine, the delivery worker and the dead-man's switch loop
are built from the same store (see the ENGINE hooks in build)."""

from __future__ import annotations

from pathlib import Path

from runbox.alerting.v1 import alerting_pb2, alerting_pb2_grpc
from services.alerting.catalogue import CatalogueTags
from services.alerting.config import AlertingSettings
from services.alerting.consumer import EventRecorder, LagMonitor
from services.alerting.deadman import DeadMansSwitch
from services.alerting.delivery import DeliveryWorker
from services.alerting.engine import ScriptTags
from services.alerting.metrics import AlertingMetrics
from services.alerting.notices import Notices
from services.alerting.servicer import AlertingServicer
from services.alerting.store import AlertingStore
from shared import db
from shared.clients import open_channel
from shared.jetstream import DurableConsumer, run_event_attributes
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


def _catalogue_tags(settings: AlertingSettings, runtime: Runtime) -> CatalogueTags | None:
    """Script tags from the catalogue, when its address is configured (ENGINE)."""
    if not settings.catalogue.address:
        return None
    channel = open_channel(
        settings.catalogue.address,
        token=settings.auth.service_token.get_secret_value(),
        default_timeout_s=settings.catalogue.timeout_s,
        tracer_provider=runtime.span_provider,
    )

    async def close() -> None:
        await channel.close(None)

    runtime.on_shutdown.append(close)
    return CatalogueTags(channel, timeout_s=settings.catalogue.timeout_s)


async def build(runtime: Runtime) -> Service:
    """Migrate, connect, build the store, wire the consumer and the RPCs."""
    settings = runtime.settings
    if not isinstance(settings, AlertingSettings):
        raise TypeError("alerting needs AlertingSettings")
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(
        settings.database, metrics=db.DatabaseMetrics(runtime.registry, runtime.service)
    )
    runtime.on_shutdown.append(engine.dispose)
    js = await runtime.connect_nats()
    metrics = AlertingMetrics(runtime.registry)
    sessions = db.sessionmaker(engine, tracer=runtime.tracer("db"), service=runtime.service)
    store = AlertingStore.build(sessions, settings.channels, rules_cache_s=settings.rules_cache_s)
    # The store serves the RPCs and the engine alike: the consumer's handler reads
    # enabled rules through store.cache (invalidated by every rule/channel change), the
    # delivery worker is woken by store.deliveries.on_retry, the dead-man's switch by
    # store.cache.on_change; store.alerts.on_resolve is there for a manual resolve.
    tags = ScriptTags(_catalogue_tags(settings, runtime))
    recorder = EventRecorder(
        sessions=sessions,
        metrics=metrics,
        prefix=settings.nats.subjects_prefix,
        tracer=runtime.tracer("engine"),
        rules=store.cache,
        notices=Notices(tags=tags, default_max_attempts=settings.delivery.max_attempts),
        tags=tags,
    )
    consumer = DurableConsumer(
        js,
        stream=settings.nats.stream,
        durable=DURABLE,
        filter_subject=f"{settings.nats.subjects_prefix}.>",
        batch=settings.consumer_batch,
        handler=recorder,
        batch_handler=recorder.many,
        tracer=runtime.tracer("consumer"),
        describe=run_event_attributes,
    )
    lag = LagMonitor(
        js,
        stream=settings.nats.stream,
        durable=DURABLE,
        metrics=metrics,
        interval_s=settings.lag_poll_s,
    )
    # ENGINE: the delivery worker (woken by new deliveries and retries) and the
    # dead-man's-switch loop (woken when rules change).
    delivery = DeliveryWorker(
        sessions=sessions,
        metrics=metrics,
        policy=settings.channels,
        settings=settings.delivery,
        tracer=runtime.tracer("delivery"),
    )
    recorder.on_queued = delivery.notify
    store.deliveries.on_retry.append(delivery.notify)
    deadman = DeadMansSwitch(
        sessions=sessions,
        rules=store.cache,
        notices=recorder.notices,
        metrics=metrics,
        on_queued=delivery.notify,
        interval_s=settings.deadman_interval_s,
    )
    store.cache.on_change.append(deadman.notify)

    async def start_loops() -> None:
        delivery.start()
        deadman.start()

    # Hooks run last-added first: stop polling, stop consuming, stop the loops (the
    # deliveries in flight get delivery.drain_s), then dispose.
    runtime.on_shutdown.extend([delivery.stop, deadman.stop, consumer.stop, lag.stop])
    servicer = AlertingServicer(store, test_timeout_s=settings.test_channel_timeout_s)
    return Service(
        registrations=[
            (alerting_pb2_grpc.add_AlertingServiceServicer_to_server, servicer, SERVICE)
        ],
        permissions=PERMISSIONS,
        on_start=[start_loops, consumer.start, lag.start],
    )

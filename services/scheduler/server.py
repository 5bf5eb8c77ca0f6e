"""Scheduler composition: database, catalogue and executor clients, the
dispatcher, the event consumer, and the gRPC service."""

from __future__ import annotations

from pathlib import Path

from runbox.executor.v1 import executor_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.config import SchedulerSettings
from services.scheduler.consumer import RunEventHandler
from services.scheduler.dispatch import Dispatcher, Executor
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import OUTBOX
from services.scheduler.runs import Runs
from services.scheduler.schedules import Schedules
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.watch import Watchers
from shared import db
from shared.clients import open_channel
from shared.jetstream import DurableConsumer
from shared.outbox import Outbox
from shared.runtime import Runtime, Service

SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"
_EXEC_READ = ("GetRun", "ListRuns", "WatchRun", "ListDeadLetters", "ListQuarantines")
_SCHED_READ = ("GetSchedule", "ListSchedules", "PreviewSchedule", "ListFires", "GetStatistics")
_SCHED_WRITE = ("CreateSchedule", "UpdateSchedule", "PauseSchedule", "ResumeSchedule")
PERMISSIONS: dict[str, str] = {
    f"/{SERVICE}/SubmitRun": "script:execute",
    **{f"/{SERVICE}/{m}": "script_execution:read" for m in _EXEC_READ},
    f"/{SERVICE}/CancelRun": "script_execution:write",
    f"/{SERVICE}/ReplayDeadLetter": "script_execution:manage",
    f"/{SERVICE}/ReleaseQuarantine": "script_execution:manage",
    **{f"/{SERVICE}/{m}": "script_schedule:read" for m in _SCHED_READ},
    **{f"/{SERVICE}/{m}": "script_schedule:write" for m in _SCHED_WRITE},
    f"/{SERVICE}/DeleteSchedule": "script_schedule:delete",
}


async def build(runtime: Runtime) -> Service:
    settings = runtime.settings
    assert isinstance(settings, SchedulerSettings)
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(settings.database)
    sessions = db.sessionmaker(engine)
    outbox = Outbox(OUTBOX, sessions)
    js = await runtime.connect_nats()
    token = settings.auth.service_token.get_secret_value()
    catalogue_channel = open_channel(
        settings.catalogue.address, token=token, default_timeout_s=settings.catalogue.timeout_s
    )
    executor_channels = {a: open_channel(a, token=token) for a in settings.executors}
    stubs = {a: executor_pb2_grpc.ExecutorServiceStub(c) for a, c in executor_channels.items()}
    metrics = SchedulerMetrics(runtime.registry)
    watchers = Watchers()
    catalogue = CatalogueClient(catalogue_channel)
    runs = Runs(
        sessions,
        outbox,
        catalogue,
        watchers,
        metrics,
        subjects_prefix=settings.nats.subjects_prefix,
    )
    dispatcher = Dispatcher(
        runs,
        [Executor(a, s) for a, s in stubs.items()],
        metrics,
        interval_s=settings.dispatch_interval_s,
        batch=settings.dispatch_batch,
        backoff_s=settings.executor_backoff_s,
        backoff_max_s=settings.executor_backoff_max_s,
    )
    runs.on_submitted.append(dispatcher.notify)
    consumer = DurableConsumer(
        js,
        stream=settings.nats.stream,
        durable="scheduler",
        filter_subject=f"{settings.nats.subjects_prefix}.run.>",
        handler=RunEventHandler(runs, metrics),
    )

    async def start() -> None:
        outbox.start(js)
        await consumer.start()
        dispatcher.start()

    async def close_channels() -> None:
        for channel in [catalogue_channel, *executor_channels.values()]:
            await channel.close(None)

    runtime.on_shutdown.extend(
        [engine.dispose, close_channels, outbox.stop, consumer.stop, dispatcher.stop]
    )
    # Firing, fires and statistics are a later issue; the generated base answers UNIMPLEMENTED.
    servicer = SchedulerServicer(  # type: ignore[abstract]
        runs,
        watchers,
        dispatcher,
        stubs,
        watch_poll_s=settings.watch_poll_s,
        schedules=Schedules(sessions, catalogue),
    )
    return Service(
        registrations=[
            (scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, servicer, SERVICE)
        ],
        permissions=PERMISSIONS,
        on_start=[start],
    )

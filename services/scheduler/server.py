"""Scheduler composition: database, catalogue and executor clients, the
dispatcher, the event consumer, and the gRPC service."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from runbox.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.scheduler.backlog import RunBacklog
from services.scheduler.catalogue import CatalogueClient
from services.scheduler.config import SchedulerSettings
from services.scheduler.consumer import RunEventHandler
from services.scheduler.dead_letters import DeadLetters
from services.scheduler.dispatch import ConcurrencyLimits, Dispatcher
from services.scheduler.executors import ExecutorSet
from services.scheduler.firing import FiresFirst, Firing, FiringSettings
from services.scheduler.leases import LeaseSweeper
from services.scheduler.link import RunLinks
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.models import OUTBOX
from services.scheduler.retries import Quarantines, RetryOrDeadLetter
from services.scheduler.run_events import RunEvents
from services.scheduler.run_listeners import RunListeners, RunsEndHook
from services.scheduler.run_store import RunStore
from services.scheduler.runs import Runs
from services.scheduler.schedules import ScheduleEvents, Schedules
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.watch import Watchers
from shared import db, db_transactions
from shared.auth import Needs
from shared.clients import open_channel
from shared.consumer_lag import ConsumerLag
from shared.jetstream import DurableConsumer, run_event_attributes
from shared.outbox import Outbox, marks_on
from shared.outbox_backlog import OutboxBacklog
from shared.run_subjects import SCHEDULER_APPLIES, run_filters
from shared.runtime import Runtime, Service

SERVICE = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"
_EXEC_READ = ("GetRun", "ListRuns", "WatchRun", "ListDeadLetters", "ListQuarantines")
_SCHED_READ = ("GetSchedule", "ListSchedules", "PreviewSchedule", "ListFires", "GetStatistics")
_SCHED_WRITE = ("CreateSchedule", "UpdateSchedule", "PauseSchedule", "ResumeSchedule")
PERMISSIONS: dict[str, Needs] = {
    f"/{SERVICE}/SubmitRun": "script:execute",
    # What SubmitRun and WatchRun need: it does what both do.
    f"/{SERVICE}/SubmitAndWatchRun": ("script:execute", "script_execution:read"),
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
    db_metrics = db.DatabaseMetrics(runtime.registry, runtime.service)
    engine = db.create_engine(settings.database, metrics=db_metrics)
    sessions = db.sessionmaker(engine, tracer=runtime.tracer("db"), service=runtime.service)
    transactions = db_transactions.transactions(
        engine, sessions, tracer=runtime.tracer("db"), service=runtime.service, metrics=db_metrics
    )
    outbox = Outbox(
        OUTBOX,
        sessions,
        batch=500,
        tracer=runtime.tracer("outbox"),
        marker=marks_on(transactions, OUTBOX),
    )
    js = await runtime.connect_nats()
    token = settings.auth.service_token.get_secret_value()
    catalogue_channel = open_channel(
        settings.catalogue.address,
        token=token,
        default_timeout_s=settings.catalogue.timeout_s,
        tracer_provider=runtime.span_provider,
    )
    executors = ExecutorSet(
        settings.executors,
        dns_target=settings.executors_dns,
        refresh_s=settings.executors_dns_refresh_s,
        token=token,
        tracer_provider=runtime.span_provider,
    )
    metrics = SchedulerMetrics(runtime.registry)
    backlog = OutboxBacklog(OUTBOX, sessions, runtime.registry, runtime.service)
    run_backlog = RunBacklog(sessions, metrics)
    lag = ConsumerLag(
        js, stream=settings.nats.stream, durable="scheduler", gauge=metrics.consumer_lag
    )
    watchers = Watchers()
    catalogue = CatalogueClient(
        catalogue_channel,
        cache_ttl_s=settings.catalogue_cache_ttl_s,
        read_your_writes=settings.catalogue_read_your_writes,
    )
    store = RunStore(sessions, transactions)
    events = RunEvents(outbox, subjects_prefix=settings.nats.subjects_prefix)
    quarantines = Quarantines(
        sessions,
        outbox,
        metrics,
        subjects_prefix=settings.nats.subjects_prefix,
        failures=settings.quarantine_failures,
        window_s=settings.quarantine_window_s,
    )
    # The dispatcher and firing are built from the lifecycle, which tells them of submits
    # and run ends: their listeners reach them once built (both are before any call).
    runs = Runs(
        sessions,
        store,
        events,
        catalogue,
        watchers,
        metrics,
        lease_s=settings.lease_s,
        listeners=RunListeners(
            submitted=lambda: dispatcher.submitted(),
            run_ended=(RetryOrDeadLetter(events, metrics), quarantines),
            runs_ended=(
                RunsEndHook(
                    Firing.concerns,
                    lambda session, ended: firing.runs_ended(session, ended),
                    plan=lambda conn, ended: firing.plan_ended(conn, ended),
                ),
            ),
        ),
    )
    # Fires due now go before dispatch rounds and event batches (docs/scheduler.md).
    first = FiresFirst()
    dispatcher = Dispatcher(
        runs,
        executors,
        metrics,
        interval_s=settings.dispatch_interval_s,
        batch=settings.dispatch_batch,
        parallel=settings.dispatch_parallel,
        backoff_s=settings.executor_backoff_s,
        backoff_max_s=settings.executor_backoff_max_s,
        claim_s=settings.dispatch_claim_s,
        failover_s=settings.lease_s,
        secret_grace_s=settings.secret_handoff_grace_s,
        limits=ConcurrencyLimits(
            total=settings.max_active_runs,
            per_script=settings.max_active_runs_per_script,
            scripts=settings.script_max_active_runs,
        ),
        first=first,
        tracer=runtime.tracer("dispatch"),
    )
    run_events = RunEventHandler(
        runs, metrics, first=first, hold_finished_file=settings.fault_hold_finished_file
    )
    consumer = DurableConsumer(
        js,
        stream=settings.nats.stream,
        durable="scheduler",
        # Only the events it applies (shared/run_subjects.py): not its own SUBMITTED, nor
        # QUEUED (the Execute answer records it), nor anything not a RunEvent.
        filter_subject=run_filters(settings.nats.subjects_prefix, SCHEDULER_APPLIES),
        handler=run_events,
        batch_handler=run_events.many,
        ack_wait_s=settings.events_ack_wait_s,
        tracer=runtime.tracer("consumer"),
        describe=run_event_attributes,
    )
    links = (
        RunLinks(
            executors,
            replica=runtime.instance_id,
            apply=run_events.events,
            tracer=runtime.tracer("link"),
        )
        if settings.run_links
        else None
    )

    sweeper = LeaseSweeper(
        runs,
        metrics,
        interval_s=settings.lease_sweep_interval_s,
        # Events a killed predecessor held unacked come back only after the ack wait: a run
        # whose FINISHED it held must not end LOST before that event is applied.
        start_delay_s=settings.lease_s + settings.events_ack_wait_s,
        read_through=lambda: consumer.read_through,
    )
    schedule_events = ScheduleEvents(outbox, settings.nats.subjects_prefix)
    schedules = Schedules(sessions, catalogue, schedule_events)
    firing = Firing(
        sessions,
        runs,
        schedules,
        schedule_events,
        executors,
        metrics,
        FiringSettings(
            tick_s=settings.fire_tick_s,
            grace=timedelta(seconds=settings.misfire_grace_s),
            batch=settings.fire_batch,
            per_schedule=settings.fires_per_schedule_per_tick,
            default_window=timedelta(seconds=settings.catch_up_default_window_s),
            lookahead=timedelta(seconds=settings.fire_lookahead_s),
            ahead=timedelta(seconds=settings.fire_ahead_s),
            handover_grace=timedelta(seconds=settings.fire_handover_grace_s),
        ),
        first=first,
        on_due=dispatcher.notify,
        handover=dispatcher,
    )
    schedules.ahead = firing
    schedules.on_change.append(firing.notify)
    schedules.on_delete.append(firing.schedule_deleted)

    async def start() -> None:
        assert runtime.nats is not None
        await catalogue.follow(runtime.nats, settings.nats.subjects_prefix)
        await executors.start()
        outbox.start(js)
        await consumer.start()
        if links is not None:
            links.start()
        dispatcher.start()
        await quarantines.refresh()
        sweeper.start()
        firing.start()
        backlog.start()
        run_backlog.start()
        await lag.start()

    async def close_channels() -> None:
        await catalogue_channel.close(None)
        await executors.close()

    runtime.on_shutdown.extend(
        [
            engine.dispose,
            transactions.close,
            close_channels,
            outbox.stop,
            consumer.stop,
            *([links.stop] if links is not None else []),
            dispatcher.stop,
            firing.stop,
        ]
    )
    runtime.on_shutdown.extend([backlog.stop, run_backlog.stop, lag.stop])
    runtime.on_shutdown.append(sweeper.stop)  # first: it ends runs through the outbox
    servicer = SchedulerServicer(  # type: ignore[abstract]
        runs,
        watchers,
        dispatcher,
        executors,
        watch_poll_s=settings.watch_poll_s,
        schedules=schedules,
        quarantines=quarantines,
        dead_letters=DeadLetters(sessions, store, runs),
    )
    return Service(
        registrations=[
            (scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, servicer, SERVICE)
        ],
        permissions=PERMISSIONS,
        on_start=[start],
    )

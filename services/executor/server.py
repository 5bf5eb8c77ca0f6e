"""Executor composition: picks the sandbox backend and assembles the service."""

from __future__ import annotations

import logging
from pathlib import Path

from runbox.common.v1 import common_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.config import ExecutorSettings
from services.executor.content import ContentSource
from services.executor.events import EventPublisher
from services.executor.link import Links
from services.executor.metrics import ExecutorMetrics
from services.executor.models import OUTBOX
from services.executor.outbox_writer import SqliteOutboxWriter
from services.executor.pool import sandbox_owner
from services.executor.runners.base import RunnerRegistry
from services.executor.runners.command_runner import CommandRunner
from services.executor.runners.container_runner import ContainerRunner
from services.executor.runners.docker_runner import DockerRunner, docker_client_or_none
from services.executor.runners.http_runner import HttpRunner
from services.executor.runners.local_runner import LocalRunner
from services.executor.runners.no_sandbox import NoSandboxRunner
from services.executor.runners.serverless_runner import ServerlessRunner
from services.executor.runs import RunManager
from services.executor.servicer import ExecutorServicer
from shared import db
from shared.clients import open_channel
from shared.outbox import Outbox
from shared.outbox_backlog import OutboxBacklog
from shared.runtime import Runtime, Service

log = logging.getLogger(__name__)
SERVICE = executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"
PERMISSIONS = {
    f"/{SERVICE}/Execute": "script_execution:manage",
    f"/{SERVICE}/ExecuteBatch": "script_execution:manage",
    f"/{SERVICE}/Cancel": "script_execution:manage",
    f"/{SERVICE}/ListActiveRuns": "script_execution:read",
    f"/{SERVICE}/GetPoolStatus": "script_execution:read",
    f"/{SERVICE}/Link": "script_execution:manage",
}
SCRIPT_TYPES = (common_pb2.EXECUTION_TYPE_PYTHON, common_pb2.EXECUTION_TYPE_SHELL)


def build_registry(
    settings: ExecutorSettings, metrics: ExecutorMetrics
) -> tuple[RunnerRegistry, str]:
    """Docker when an engine answers (or is required), else the local runner."""
    registry = RunnerRegistry()
    backend = settings.sandbox.backend
    client = docker_client_or_none() if backend in ("auto", "docker") else None
    if backend == "docker" and client is None:
        raise RuntimeError("RUNBOX_SANDBOX__BACKEND=docker but no Docker engine is reachable")
    # Labels every container this executor makes; its next start removes what is left.
    owner = sandbox_owner(Path(settings.work_dir)) if client is not None else ""
    runner: DockerRunner | LocalRunner | NoSandboxRunner
    if client is not None:
        runner = DockerRunner(client, settings.sandbox, metrics, settings.artifacts, owner)
        chosen = "docker"
    elif settings.sandbox.allow_unsandboxed:
        log.warning(
            "!!! NO SANDBOX: python and shell runs use the LOCAL runner — they are NOT "
            "sandboxed (no network isolation, host filesystem visible), as the operator "
            "allowed (sandbox.allow_unsandboxed). Start Docker (make docker) for sandboxed "
            "runs. !!!"
        )
        runner = LocalRunner(settings.sandbox, Path(settings.work_dir), settings.artifacts)
        chosen = "local"
    else:
        log.warning(
            "!!! NO SANDBOX: no Docker engine, so python and shell runs are REFUSED (reason "
            "NO_SANDBOX). Start Docker (make docker), or allow unsandboxed runs with "
            "RUNBOX_SANDBOX__ALLOW_UNSANDBOXED=true. !!!"
        )
        runner = NoSandboxRunner()
        chosen = "none"
    for kind in SCRIPT_TYPES:
        registry.register(kind, runner)
    if client is not None:
        # Its own client: the docker runner closes its one, and attach streams hold connections.
        container_client = docker_client_or_none()
        if container_client is not None:
            registry.register(
                common_pb2.EXECUTION_TYPE_CONTAINER,
                ContainerRunner(container_client, settings, metrics, owner),
            )
    # These need no Docker: they call out (http, serverless) or run allow-listed host commands.
    registry.register(common_pb2.EXECUTION_TYPE_HTTP, HttpRunner(settings.http))
    registry.register(common_pb2.EXECUTION_TYPE_SERVERLESS, ServerlessRunner(settings.serverless))
    registry.register(common_pb2.EXECUTION_TYPE_LOCAL, CommandRunner(settings))
    return registry, chosen


async def build(runtime: Runtime) -> Service:
    settings = runtime.settings
    assert isinstance(settings, ExecutorSettings)
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(
        settings.database, metrics=db.DatabaseMetrics(runtime.registry, runtime.service)
    )
    db_tracer = runtime.tracer("db")
    sessions = db.sessionmaker(engine, tracer=db_tracer, service=runtime.service)
    sqlite_path = db.sqlite_file(settings.database.url)
    writer = (
        SqliteOutboxWriter(
            sqlite_path,
            settings.outbox_synchronous,
            span=db.transaction_span(db_tracer, runtime.service, "sqlite"),
        )
        if sqlite_path is not None
        else None
    )
    outbox = Outbox(
        OUTBOX,
        sessions,
        tracer=runtime.tracer("outbox"),
        marker=writer.mark if writer is not None else None,
    )
    js = await runtime.connect_nats()
    metrics = ExecutorMetrics(runtime.registry)
    backlog = OutboxBacklog(OUTBOX, sessions, runtime.registry, runtime.service)
    registry, backend = build_registry(settings, metrics)
    token = settings.auth.service_token.get_secret_value()
    channel = (
        open_channel(
            settings.catalogue.address,
            token=token,
            default_timeout_s=settings.catalogue.timeout_s,
            tracer_provider=runtime.span_provider,
        )
        if token
        else None
    )
    links = (
        Links(outbox, hold_s=settings.link_hold_s, tracer=runtime.tracer("link"))
        if settings.run_links
        else None
    )
    runs = RunManager(
        settings=settings,
        executor_id=runtime.instance_id,
        registry=registry,
        content=ContentSource(channel),
        metrics=metrics,
        publisher=EventPublisher(
            sessions,
            outbox,
            settings.nats.subjects_prefix,
            writer,
            linger_s=settings.outbox_linger_s,
            links=links,
        ),
        tracer=runtime.tracer("runs"),
    )

    pool_runner = next((r for r in registry.runners() if isinstance(r, DockerRunner)), None)

    async def start_relay() -> None:
        outbox.start(js)
        backlog.start()
        if pool_runner is not None:
            await pool_runner.start()  # warm sandboxes fill in the background

    async def close() -> None:
        for runner in registry.runners():
            await runner.close()  # type: ignore[attr-defined]
        if channel is not None:
            await channel.close(None)

    async def drain_runs() -> None:
        await runs.shutdown(settings.grpc.shutdown_grace_s)

    # Hooks run last-added first: runs drain, runners close, the relay stops.
    if writer is not None:
        runtime.on_shutdown.append(writer.close)  # after everything below
    runtime.on_shutdown.extend([engine.dispose, backlog.stop, outbox.stop, close, drain_runs])
    return Service(
        registrations=[
            (
                executor_pb2_grpc.add_ExecutorServiceServicer_to_server,
                ExecutorServicer(runs, backend, pool_runner.pool if pool_runner else None, links),
                SERVICE,
            )
        ],
        permissions=PERMISSIONS,
        on_start=[start_relay],
        # `runbox up` reads these to warn when python and shell runs are not sandboxed.
        ready_info={"backend": backend, "sandboxed": backend == "docker"},
    )

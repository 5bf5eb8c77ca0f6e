"""Catalogue composition: builds the domain objects and the gRPC service."""

from __future__ import annotations

from pathlib import Path

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from services.catalogue import templates
from services.catalogue.blobs import FilesystemBlobStore
from services.catalogue.config import CatalogueSettings
from services.catalogue.models import OUTBOX
from services.catalogue.schedules import ScheduleLookup
from services.catalogue.scripts import Catalogue
from services.catalogue.servicer import CatalogueServicer
from shared import db
from shared.clients import open_channel
from shared.jetstream import follow_script_changes
from shared.outbox import Outbox
from shared.outbox_backlog import OutboxBacklog
from shared.runtime import Runtime, Service
from shared.script_notes import Announcer, follow_notes

SERVICE = catalogue_pb2.DESCRIPTOR.services_by_name["CatalogueService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"

_READ = (
    "GetScript",
    "ListScripts",
    "GetVersion",
    "ListVersions",
    "ResolveVersion",
    "GetContent",
    "GetParameterSchema",
    "ValidateParameters",
    "ListTemplates",
)
_WRITE = (
    "CreateScript",
    "UpdateScript",
    "PublishVersion",
    "DeprecateVersion",
    "InstantiateTemplate",
)
PERMISSIONS: dict[str, str] = {
    **{f"/{SERVICE}/{m}": "script:read" for m in _READ},
    **{f"/{SERVICE}/{m}": "script:write" for m in _WRITE},
    f"/{SERVICE}/DeleteScript": "script:delete",
    f"/{SERVICE}/RestoreScript": "script:manage",
    f"/{SERVICE}/YankVersion": "script:manage",
    f"/{SERVICE}/ListAuditRecords": "script:manage",
}


async def build(runtime: Runtime) -> Service:
    """Migrate the database, connect NATS, and assemble the catalogue."""
    settings = runtime.settings
    assert isinstance(settings, CatalogueSettings)
    await db.upgrade(MIGRATIONS, settings.database.url)
    engine = db.create_engine(
        settings.database, metrics=db.DatabaseMetrics(runtime.registry, runtime.service)
    )
    sessions = db.sessionmaker(engine, tracer=runtime.tracer("db"), service=runtime.service)
    outbox = Outbox(OUTBOX, sessions, tracer=runtime.tracer("outbox"))
    js = await runtime.connect_nats()
    backlog = OutboxBacklog(OUTBOX, sessions, runtime.registry, runtime.service)
    lookup = None
    if settings.scheduler.address:
        channel = open_channel(
            settings.scheduler.address,
            token=settings.auth.service_token.get_secret_value(),
            default_timeout_s=settings.scheduler.timeout_s,
            tracer_provider=runtime.span_provider,
        )

        async def close_channel() -> None:
            await channel.close(None)

        runtime.on_shutdown.append(close_channel)
        lookup = ScheduleLookup(channel)
    catalogue = Catalogue(
        sessions,
        FilesystemBlobStore(Path(settings.blob_dir)),
        outbox,
        subjects_prefix=settings.nats.subjects_prefix,
        max_content_bytes=settings.max_content_bytes,
        schedules=lookup,
        cache_ttl_s=settings.resolve_cache_ttl_s,
        cache_entries=settings.resolve_cache_entries,
        # Every write's change note goes out before its answer (read-your-writes for the
        # schedulers' caches: shared/script_notes.py).
        announcer=Announcer(runtime.nats, settings.nats.subjects_prefix),
    )

    async def follow_other_replicas() -> None:
        # Every replica's ScriptEvents (its own included) drop resolution cache entries.
        assert runtime.nats is not None
        await follow_script_changes(
            runtime.nats, settings.nats.subjects_prefix, catalogue.invalidate
        )
        await follow_notes(runtime.nats, settings.nats.subjects_prefix, catalogue.invalidate)

    async def start_relay() -> None:
        outbox.start(js)
        backlog.start()
        await follow_other_replicas()
        if settings.builtin_templates:
            await templates.publish_builtins(catalogue)

    runtime.on_shutdown.append(engine.dispose)
    runtime.on_shutdown.append(outbox.stop)
    runtime.on_shutdown.append(backlog.stop)
    servicer = CatalogueServicer(catalogue, chunk_bytes=settings.content_chunk_bytes)
    return Service(
        registrations=[
            (catalogue_pb2_grpc.add_CatalogueServiceServicer_to_server, servicer, SERVICE)
        ],
        permissions=PERMISSIONS,
        on_start=[start_relay],
    )

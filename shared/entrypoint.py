"""The command line every service's __main__ shares:

    python -m services.<name>           serve until SIGTERM
    python -m services.<name> migrate   `alembic upgrade head` on RUNBOX_DATABASE__URL, exit

`migrate` is what a compose one-shot service or a Kubernetes Job runs before the
services start; it takes the same database-level lock as a service starting
(shared.migration_lock), so either order, or both at once, is safe."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from importlib import import_module
from pathlib import Path

from sqlalchemy.engine import make_url

from shared import db
from shared.runtime import Runtime, Service, build_runtime, run_service
from shared.settings import ServiceSettings
from shared.telemetry import setup_logging

log = logging.getLogger(__name__)


def service_main(
    service: str,
    settings: Callable[[], ServiceSettings],
    builder: Callable[[Runtime], Awaitable[Service]],
    migrations: Path,
    argv: Sequence[str] | None = None,
) -> None:
    """Parse the command, read settings once, then serve or migrate."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{service}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (default), or migrate the database to the latest schema and exit",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    loaded = settings()
    if args.command == "migrate":
        sys.exit(migrate(service, loaded, migrations))
    runtime = build_runtime(service, loaded)
    with asyncio.Runner(loop_factory=loop_factory(loaded.event_loop)) as runner:
        runner.run(run_service(runtime, builder))


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of RUNBOX_EVENT_LOOP: uvloop's (`auto` when it is installed), or None
    for the standard library's. grpc.aio (its poller thread wakes the loop through a file
    descriptor), nats-py, aiosqlite and the executor's pidfd and pipe readers work on both."""
    if choice == "asyncio":
        return None
    try:
        uvloop = import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("RUNBOX_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def migrate(service: str, settings: ServiceSettings, migrations: Path) -> int:
    """Upgrade the service's database to head; 0 on success, 1 on failure."""
    setup_logging(settings.log, service)
    target = make_url(settings.database.url).render_as_string(hide_password=True)
    log.info("migrating the %s database %s to the latest schema", service, target)
    try:
        asyncio.run(db.upgrade(migrations, settings.database.url))
    except Exception:
        log.exception("migrating the %s database %s failed", service, target)
        return 1
    log.info("the %s database %s is at the latest schema", service, target)
    return 0

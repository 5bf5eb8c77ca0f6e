"""`python -m services.scheduler [serve|migrate]`: read settings once, then serve, or
migrate the database and exit (shared.entrypoint)."""

from services.scheduler.config import SchedulerSettings
from services.scheduler.server import MIGRATIONS, build
from shared.entrypoint import service_main


def main() -> None:
    service_main("scheduler", SchedulerSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()

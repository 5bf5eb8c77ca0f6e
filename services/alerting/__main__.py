"""`python -m services.alerting [serve|migrate]`: read settings once, then serve, or
migrate the database and exit (shared.entrypoint)."""

from services.alerting.config import AlertingSettings
from services.alerting.server import MIGRATIONS, build
from shared.entrypoint import service_main


def main() -> None:
    service_main("alerting", AlertingSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()

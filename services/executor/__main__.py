"""`python -m services.executor [serve|migrate]`: read settings once, then serve, or
migrate the database and exit (shared.entrypoint)."""

from services.executor.config import ExecutorSettings
from services.executor.server import MIGRATIONS, build
from shared.entrypoint import service_main


def main() -> None:
    service_main("executor", ExecutorSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()

"""`python -m services.catalogue [serve|migrate]`: read settings once, then serve, or
migrate the database and exit (shared.entrypoint)."""

from services.catalogue.config import CatalogueSettings
from services.catalogue.server import MIGRATIONS, build
from shared.entrypoint import service_main


def main() -> None:
    service_main("catalogue", CatalogueSettings, build, MIGRATIONS)


if __name__ == "__main__":
    main()

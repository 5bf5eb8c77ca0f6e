"""`python -m services.catalogue`: read settings once and serve."""

import asyncio

from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build
from shared.runtime import build_runtime, run_service


def main() -> None:
    runtime = build_runtime("catalogue", CatalogueSettings())
    asyncio.run(run_service(runtime, build))


if __name__ == "__main__":
    main()

"""`python -m services.alerting`: read settings once and serve."""

import asyncio

from services.alerting.config import AlertingSettings
from services.alerting.server import build
from shared.runtime import build_runtime, run_service


def main() -> None:
    runtime = build_runtime("alerting", AlertingSettings())
    asyncio.run(run_service(runtime, build))


if __name__ == "__main__":
    main()

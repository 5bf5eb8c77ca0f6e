"""`python -m services.scheduler`: read settings once and serve."""

import asyncio

from services.scheduler.config import SchedulerSettings
from services.scheduler.server import build
from shared.runtime import build_runtime, run_service


def main() -> None:
    runtime = build_runtime("scheduler", SchedulerSettings())
    asyncio.run(run_service(runtime, build))


if __name__ == "__main__":
    main()

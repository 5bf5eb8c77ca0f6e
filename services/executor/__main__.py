"""`python -m services.executor`: read settings once and serve."""

import asyncio

from services.executor.config import ExecutorSettings
from services.executor.server import build
from shared.runtime import build_runtime, run_service


def main() -> None:
    runtime = build_runtime("executor", ExecutorSettings())
    asyncio.run(run_service(runtime, build))


if __name__ == "__main__":
    main()

"""The executor's containers on its Docker engine, read by Prometheus at scrape time.

The pool and the container runner tell the ledger when a container starts, is handed to a
run, goes back idle and is removed; a scrape turns that into the host's sandbox totals
(containers running, memory reserved by their limits against the engine's memory) and reads
each busy container's current memory from its cgroup. Nothing here runs on a run's path but
a dict update: the cgroup files are read by the scrape (in the metrics server's thread), and
the scrape copies the dict in one step (atomic under the GIL) before it reads them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.executor.runners.container_usage import current_memory


class _Container(NamedTuple):
    resource_class: str
    memory_limit_bytes: int
    execution_type: str  # "" while idle in the warm pool


class SandboxLedger(Collector):
    """Containers this executor has running, for the scrape-time sandbox gauges."""

    def __init__(self) -> None:
        self._containers: dict[str, _Container] = {}
        # What sandboxes can reserve before the engine's host overcommits memory: the
        # engine's MemTotal (0 until a Docker runner has asked the engine).
        self.memory_budget_bytes = 0

    def started(self, container_id: str, resource_class: str, memory_limit_bytes: int) -> None:
        self._containers[container_id] = _Container(resource_class, memory_limit_bytes, "")

    def assigned(self, container_id: str, execution_type: str) -> None:
        """The container runs a run of this type now ("" = back to idle)."""
        entry = self._containers.get(container_id)
        if entry is not None:
            self._containers[container_id] = entry._replace(execution_type=execution_type)

    def removed(self, container_id: str) -> None:
        self._containers.pop(container_id, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = list(self._containers.items())
        running = GaugeMetricFamily(
            "runbox_executor_sandbox_containers_running",
            "Containers this executor has running (warm idle, busy, container runs), "
            "by resource class.",
            labels=["resource_class"],
        )
        reserved = GaugeMetricFamily(
            "runbox_executor_sandbox_memory_reserved_bytes",
            "Memory limits of the containers running, by resource class.",
            labels=["resource_class"],
        )
        current = GaugeMetricFamily(
            "runbox_executor_sandbox_memory_bytes",
            "Memory the containers of runs in progress use now (cgroup), by execution type "
            "and resource class.",
            labels=["execution_type", "resource_class"],
        )
        counts: dict[str, int] = defaultdict(int)
        limits: dict[str, int] = defaultdict(int)
        used: dict[tuple[str, str], int] = defaultdict(int)
        for container_id, entry in snapshot:
            counts[entry.resource_class] += 1
            limits[entry.resource_class] += entry.memory_limit_bytes
            if entry.execution_type:
                key = (entry.execution_type, entry.resource_class)
                used[key] += current_memory(container_id) or 0
        for name, count in sorted(counts.items()):
            running.add_metric([name], count)
            reserved.add_metric([name], limits[name])
        for (kind, name), value in sorted(used.items()):
            current.add_metric([kind, name], value)
        yield running
        yield reserved
        yield current
        yield GaugeMetricFamily(
            "runbox_executor_sandbox_memory_budget_bytes",
            "Memory of the Docker engine's host: what sandbox memory limits are reserved against.",
            value=self.memory_budget_bytes,
        )

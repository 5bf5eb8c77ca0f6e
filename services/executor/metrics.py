"""Executor metrics on the service's explicit registry.

Labels stay bounded: execution type (six), outcome (a few terminal states), and resource
class, a size bucket of the run's memory limit (`RESOURCE_CLASSES`), never a run, script or
pool-class name (limits come from scripts, so their combinations grow with user data)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runbox.common.v1 import common_pb2
from services.executor.sandboxes import SandboxLedger

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
MIB = 1024 * 1024
# (upper bound of the memory limit, class): a run's limit picks the first that holds it.
RESOURCE_CLASSES = ((256 * MIB, "small"), (1024 * MIB, "medium"), (4096 * MIB, "large"))
LARGEST_CLASS = "xlarge"


def resource_class(memory_bytes: int) -> str:
    """The bounded size class of a memory limit (0 = no limit = the largest class)."""
    if memory_bytes > 0:
        for bound, name in RESOURCE_CLASSES:
            if memory_bytes <= bound:
                return name
    return LARGEST_CLASS


def execution_type_label(execution_type: int) -> str:
    """python, shell, container, http, serverless, local (unspecified for 0)."""
    return common_pb2.ExecutionType.Name(execution_type).removeprefix("EXECUTION_TYPE_").lower()


class ExecutorMetrics:
    """Counters, gauges and histograms of the executor, and the ledger of its containers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        usage = ["execution_type", "resource_class"]
        self.runs = Counter(
            "runbox_executor_runs_total",
            "Runs finished, by type and outcome.",
            ["execution_type", "outcome"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "runbox_executor_run_duration_seconds",
            "Wall-clock run time of user code, by type, resource class and outcome.",
            [*usage, "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.active_runs = Gauge(
            "runbox_executor_active_runs", "Runs accepted and not finished.", registry=registry
        )
        self.run_slots = Gauge(
            "runbox_executor_run_slots",
            "Runs this executor runs at once (max_concurrent_runs).",
            registry=registry,
        )
        self.rejected = Counter(
            "runbox_executor_runs_rejected_total",
            "Execute calls refused because the executor was full.",
            registry=registry,
        )
        self.container_starts = Counter(
            "runbox_executor_container_starts_total",
            "Sandbox containers started.",
            registry=registry,
        )
        self.container_failures = Counter(
            "runbox_executor_container_failures_total",
            "Sandbox containers that failed to start.",
            registry=registry,
        )
        self.orphans_removed = Counter(
            "runbox_executor_orphans_removed_total",
            "Containers an earlier process of this executor left behind, removed at start-up.",
            registry=registry,
        )
        self.handoff = Histogram(
            "runbox_executor_handoff_seconds",
            "From a run starting on the executor to its user code running in the sandbox.",
            ["runner"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.pool_containers = Gauge(
            "runbox_executor_pool_containers",
            "Warm-pool sandbox containers by resource class and state (idle, busy, starting).",
            ["resource_class", "state"],
            registry=registry,
        )
        self.pool_acquires = Counter(
            "runbox_executor_pool_acquires_total",
            "Sandboxes handed to runs, by resource class and result: hit (a warm one was idle), "
            "miss (none was: created on the run's path), reuse (kept for the script).",
            ["resource_class", "result"],
            registry=registry,
        )
        self.pool_recycles = Counter(
            "runbox_executor_pool_recycles_total",
            "Reused sandboxes removed, by reason.",
            ["reason"],
            registry=registry,
        )
        self._usage(registry, usage)
        self.sandboxes = SandboxLedger()
        registry.register(self.sandboxes)

    def _usage(self, registry: CollectorRegistry, labels: list[str]) -> None:
        """What finished runs used, from the sandbox's cgroup (or rusage)."""
        self.cpu_seconds = Counter(
            "runbox_executor_sandbox_cpu_seconds_total",
            "CPU time (user + system) used by finished runs.",
            labels,
            registry=registry,
        )
        self.peak_memory = Histogram(
            "runbox_executor_sandbox_peak_memory_bytes",
            "Peak memory of finished runs.",
            labels,
            buckets=tuple(2**i * MIB for i in range(0, 14)),
            registry=registry,
        )
        self.io_read = Counter(
            "runbox_executor_sandbox_io_read_bytes_total",
            "Bytes finished runs read from block devices.",
            labels,
            registry=registry,
        )
        self.io_write = Counter(
            "runbox_executor_sandbox_io_write_bytes_total",
            "Bytes finished runs wrote to block devices.",
            labels,
            registry=registry,
        )

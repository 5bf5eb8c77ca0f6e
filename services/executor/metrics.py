"""Executor metrics on the service's explicit registry (no run ids as labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class ExecutorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "runbox_executor_runs_total",
            "Runs finished, by type and outcome.",
            ["execution_type", "outcome"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "runbox_executor_run_duration_seconds",
            "Wall-clock run time of user code.",
            ["execution_type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.active_runs = Gauge(
            "runbox_executor_active_runs", "Runs accepted and not finished.", registry=registry
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
            "Sandbox containers by pool class and state (idle, busy, starting).",
            ["pool_class", "state"],
            registry=registry,
        )
        self.pool_acquires = Counter(
            "runbox_executor_pool_acquires_total",
            "Sandboxes handed to runs, by pool class and whether one was warm (hit) or not.",
            ["pool_class", "result"],
            registry=registry,
        )
        self.pool_recycles = Counter(
            "runbox_executor_pool_recycles_total",
            "Reused sandboxes removed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.cpu_seconds = Counter(
            "runbox_executor_sandbox_cpu_seconds_total",
            "CPU time used by runs.",
            ["execution_type"],
            registry=registry,
        )
        self.peak_memory = Histogram(
            "runbox_executor_sandbox_peak_memory_bytes",
            "Peak memory of runs.",
            ["execution_type"],
            buckets=tuple(2**i * 1024 * 1024 for i in range(0, 14)),
            registry=registry,
        )

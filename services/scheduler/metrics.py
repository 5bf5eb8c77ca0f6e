"""Scheduler metrics on the service's explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.submitted = Counter(
            "runbox_scheduler_runs_submitted_total",
            "Runs accepted by SubmitRun.",
            registry=registry,
        )
        self.finished = Counter(
            "runbox_scheduler_runs_finished_total",
            "Runs that reached a terminal state.",
            ["state"],
            registry=registry,
        )
        self.dispatch = Counter(
            "runbox_scheduler_dispatch_total",
            "Dispatch attempts to executors, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.events = Counter(
            "runbox_scheduler_events_applied_total",
            "Run events consumed, by result.",
            ["result"],
            registry=registry,
        )

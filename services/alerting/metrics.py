"""Alerting metrics on the service's explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class AlertingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "runbox_alerting_events_consumed_total",
            "Lifecycle events consumed, by kind and result.",
            ["kind", "result"],
            registry=registry,
        )

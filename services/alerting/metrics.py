"""Alerting metrics on the service's explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AlertingMetrics:
    """Counters and gauges of the alerting service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "runbox_alerting_events_consumed_total",
            "Messages consumed from the event stream, by kind "
            "(run, script, schedule, quarantine, unknown) and result "
            "(processed, duplicate, ignored, invalid).",
            ["kind", "result"],
            registry=registry,
        )
        self.lag = Gauge(
            "runbox_alerting_consumer_lag_messages",
            "Messages in the event stream not yet delivered to the alerting consumer.",
            registry=registry,
        )

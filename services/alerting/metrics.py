"""Alerting metrics on the service's explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Event occurred -> notification accepted by the channel: tens of ms when all is well,
# minutes when a channel is retried or alerting caught up after being down.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class AlertingMetrics:
    """Counters, gauges and histograms of the alerting service."""

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
        self.alerts_fired = Counter(
            "runbox_alerting_alerts_fired_total",
            "Alerts opened (a new FIRING alert), by rule severity (info, warning, critical).",
            ["severity"],
            registry=registry,
        )
        self.alerts_resolved = Counter(
            "runbox_alerting_alerts_resolved_total",
            "Alerts resolved by a success of their script or schedule.",
            registry=registry,
        )
        self.suppressed = Counter(
            "runbox_alerting_notifications_suppressed_total",
            "Notifications not sent, by reason (dedup, throttle, silence).",
            ["reason"],
            registry=registry,
        )
        self.rule_errors = Counter(
            "runbox_alerting_rule_errors_total",
            "Rule evaluations that failed (the rule was skipped for that event).",
            registry=registry,
        )
        self.deliveries = Counter(
            "runbox_alerting_deliveries_total",
            "Delivery attempts, by channel kind (email, webhook) and outcome "
            "(delivered, retrying, dead_lettered).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "runbox_alerting_delivery_latency_seconds",
            "From the event's occurred_at to the channel accepting the notification.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.deliveries_in_flight = Gauge(
            "runbox_alerting_deliveries_in_flight",
            "Deliveries being attempted right now.",
            registry=registry,
        )

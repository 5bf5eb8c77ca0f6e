"""Scheduler metrics on the service's explicit registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.handoffs = Counter(
            "runbox_scheduler_submit_handoffs_total",
            "How SubmitRun's new runs went to dispatch: direct (sent right after the commit) "
            "or round (left to the dispatch loop).",
            ["path"],
            registry=registry,
        )
        self.events = Counter(
            "runbox_scheduler_events_applied_total",
            "Run events consumed, by result.",
            ["result"],
            registry=registry,
        )
        self.event_transactions = Counter(
            "runbox_scheduler_event_transactions_total",
            "Transactions applying run events that moved runs, by path: core (statements on "
            "the run rows, with what the run-end hooks planned there) or orm (a run's end "
            "needed a hook's general way: a failure, a queued fire, a held run).",
            ["path"],
            registry=registry,
        )
        self.lost = Counter(
            "runbox_scheduler_runs_lost_total",
            "Runs ended LOST because their executor stopped heartbeating past the lease.",
            registry=registry,
        )
        self.retries = Counter(
            "runbox_scheduler_retries_scheduled_total",
            "Retries scheduled as new runs, by the failure reason retried.",
            ["reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "runbox_scheduler_dead_letters_total",
            "Runs dead-lettered, by the failure reason that ended them.",
            ["reason"],
            registry=registry,
        )
        self.active_runs = Gauge(
            "runbox_scheduler_active_runs",
            "Runs not ended, by state (pending, queued, running); every replica counts the "
            "whole table (aggregate with max).",
            ["state"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "runbox_scheduler_consumer_lag_messages",
            "Run events in the stream not yet delivered to the scheduler's consumer.",
            registry=registry,
        )
        self.quarantines = Gauge(
            "runbox_scheduler_quarantines_active",
            "Scripts quarantined now (as last seen by this replica).",
            registry=registry,
        )
        # No schedule id label: per-schedule figures are in GetStatistics and ListFires (a
        # label per schedule would be one series per schedule and outcome).
        self.fires = Counter(
            "runbox_scheduler_fires_total",
            "Nominal fire times recorded, by outcome (fired, skipped, missed, queued).",
            ["outcome"],
            registry=registry,
        )
        self.fire_lateness = Histogram(
            "runbox_scheduler_fire_lateness_seconds",
            "Claim time minus nominal time of fires that created a run.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
            registry=registry,
        )
        self.failure_actions = Counter(
            "runbox_scheduler_schedule_failure_actions_total",
            "Failure actions taken after consecutive failed runs of a schedule, by action "
            "(notify, pause, disable).",
            ["action"],
            registry=registry,
        )

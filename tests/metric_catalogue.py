"""Every metric the services export, collected from their own registries: what the alert
rules and Grafana panels may refer to (tests/unit/test_prometheus_rules.py,
tests/unit/test_grafana_dashboards.py)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

import promql_parser
from prometheus_client import CollectorRegistry, ProcessCollector
from sqlalchemy import MetaData

from services.alerting.metrics import AlertingMetrics
from services.executor.metrics import ExecutorMetrics
from services.scheduler.metrics import SchedulerMetrics
from shared.db import DatabaseMetrics
from shared.interceptors import RpcMetrics
from shared.outbox import outbox_table
from shared.outbox_backlog import OutboxBacklog

SERVICES = ("catalogue", "scheduler", "executor", "alerting")
WITH_OUTBOX = ("catalogue", "scheduler", "executor")
# What Prometheus itself adds to every scrape.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def registry_of(service: str) -> CollectorRegistry:
    """A registry with what `service` registers at start (runtime, server, its own metrics)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    RpcMetrics(service, registry)
    DatabaseMetrics(registry, service)
    if service in WITH_OUTBOX:
        OutboxBacklog(outbox_table(MetaData()), None, registry, service)  # type: ignore[arg-type]
    own: dict[str, Any] = {
        "scheduler": SchedulerMetrics,
        "executor": ExecutorMetrics,
        "alerting": AlertingMetrics,
    }
    if service in own:
        own[service](registry)
    return registry


@functools.cache
def _exported() -> frozenset[str]:
    names: set[str] = set()
    for service in SERVICES:
        for family in registry_of(service).collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return frozenset(names)


def exported_series() -> set[str]:
    """Every series name the four services can expose (counter, histogram suffixes included)."""
    return set(_exported())


def selectors(expr: str) -> Iterator[Any]:
    """Every vector selector of a PromQL expression (parsed by a real PromQL parser)."""
    stack: list[Any] = [promql_parser.parse(expr)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            yield node
            continue
        for attr in ("expr", "lhs", "rhs", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                stack.append(child)
        stack.extend(getattr(node, "args", None) or [])


def unknown_names(expr: str, known: Iterable[str]) -> list[str]:
    """Metric names (or __name__ patterns) of `expr` that match nothing in `known`; recording
    rule names (with a colon) are checked by the caller."""
    known = set(known)
    missing: list[str] = []
    for selector in selectors(expr):
        if selector.name:
            if selector.name not in known:
                missing.append(selector.name)
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name == "__name__":
                pattern = re.compile(f"^(?:{matcher.value})$")
                if not any(pattern.match(name) for name in known):
                    missing.append(f"__name__=~{matcher.value!r}")
    return missing

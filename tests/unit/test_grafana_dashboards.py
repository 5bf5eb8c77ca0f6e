"""The Grafana dashboards and their provisioning: every panel's PromQL parses and reads only
metrics the services export (or that the rules record), every dashboard uses the
provisioned datasource, and the six dashboards the operators need are there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.metric_catalogue import SCRAPE_SERIES, exported_series, unknown_names

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = REPO / "deploy" / "prometheus" / "rules"
# Grafana's range variables, as Prometheus sees them once Grafana has filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_expr(expr: str) -> str:
    """The query as Grafana sends it (its built-in variables replaced)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every panel."""
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                yield path.name, panel["title"], grafana_expr(target["expr"])


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def test_the_six_dashboards_are_there_with_unique_uids() -> None:
    """Runs, queue and dispatch, pool and handoff, schedules, alerting, database and outbox."""
    loaded = [json.loads(path.read_text()) for path in DASHBOARDS]
    assert {d["uid"] for d in loaded} == {
        "runbox-runs",
        "runbox-dispatch",
        "runbox-pool",
        "runbox-schedules",
        "runbox-alerting",
        "runbox-database",
    }
    for dashboard in loaded:
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), dashboard["uid"]


@pytest.mark.parametrize("where", [f"{d}: {p}" for d, p, _ in queries()])
def test_panel_query_reads_only_exported_metrics(where: str) -> None:
    """The panel's PromQL parses, and each metric it names is exported by a service, added by
    Prometheus at scrape, or recorded by a rule."""
    known = exported_series() | SCRAPE_SERIES | recorded()
    for dashboard, title, expr in queries():
        if f"{dashboard}: {title}" == where:
            promql_parser.parse(expr)
            assert unknown_names(expr, known) == [], expr


def test_every_panel_queries_the_provisioned_datasource() -> None:
    """Panels and targets name the datasource uid the provisioning file creates."""
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = provisioned["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text())):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource["uid"], (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], (path.name, panel["title"])


def test_dashboard_provider_points_where_compose_mounts_the_dashboards() -> None:
    """The provider's path is the directory deploy/grafana/dashboards is mounted at."""
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/runbox.yml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"] == "/var/lib/grafana/dashboards"

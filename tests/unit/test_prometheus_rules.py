"""The Prometheus rules: valid for promtool, unit-tested with `promtool test rules`, every
alert tested firing and not firing, documented, and written over metrics the services
really export."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require
from tests.metric_catalogue import SCRAPE_SERIES, exported_series, unknown_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
DOCS = REPO / "docs" / "metrics.md"


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    require(tool is not None, "promtool not installed (deploy/prometheus/install-prometheus.sh)")
    assert tool is not None
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_rule_files_pass_promtool_check() -> None:
    """`promtool check rules` accepts every rule file, and the scrape config with them."""
    assert RULE_FILES
    checked = promtool("check", "rules", *map(str, RULE_FILES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_rule_unit_tests_pass_promtool_test() -> None:
    """`promtool test rules` passes every test file."""
    assert TEST_FILES
    tested = promtool("test", "rules", *map(str, TEST_FILES))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a case expecting it and a case expecting silence."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"


def test_every_alert_has_severity_summary_and_documented_runbook() -> None:
    """Severity, summary, description and a runbook whose docs section exists."""
    docs = DOCS.read_text()
    for rule in (r for r in rules() if "alert" in r):
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        anchor = f"docs/metrics.md#{rule['alert'].lower()}"
        assert anchor in annotations["runbook"], rule["alert"]
        assert f"### {rule['alert']}" in docs, f"{rule['alert']} has no section in {DOCS}"


def test_rule_expressions_use_only_exported_metrics() -> None:
    """Every metric a rule reads is exported by a service, scraped by Prometheus, or recorded
    by an earlier rule."""
    known = exported_series() | SCRAPE_SERIES
    for rule in rules():
        missing = unknown_names(rule["expr"], known)
        assert missing == [], f"{rule.get('alert') or rule.get('record')}: {missing}"
        if "record" in rule:
            known.add(rule["record"])

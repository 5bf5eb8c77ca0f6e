"""Smoke test of benchmarks/alerting.py at its --quick size: it runs end to end against a
real nats-server, alerting process and webhook receiver, and reports what it delivered.
Figures are not judged (the machine is shared); shapes and counts are."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from cli import natsd
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[3]
FIGURES = (
    "delivery_p50_ms",
    "delivery_p99_ms",
    "events_per_s",
    "deliveries_per_s",
    "baseline_jetstream_p50_ms",
    "baseline_http_p50_ms",
)


def test_quick_benchmark_delivers_every_event_and_ends_with_json() -> None:
    """--quick delivers one signed webhook per failure event and prints the figures as JSON."""
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "alerting.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-3000:]
    result = json.loads(lines[-1])

    assert result["rules"] == 100
    for name in FIGURES:
        value = result[name]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, name
    assert result["delivery_p50_ms"] <= result["delivery_p99_ms"]
    assert result["target"] == {"delivery_p50_ms": 50.0}
    assert set(result["meets_targets"]) == {"delivery_p50", "all_delivered"}
    # Every event notified exactly the failure rule's webhook, signed, once.
    assert (
        result["expected_notifications"]
        == result["warmup"] + result["events"] + result["burst_events"]
    )
    assert result["delivered_runs"] == result["expected_notifications"]
    assert result["burst_delivered"] == result["burst_events"]
    assert result["unexpected_notifications"] == 0
    assert result["bad_signatures"] == 0
    assert result["delivery_outcomes"] == {"delivered": result["expected_notifications"]}
    assert result["all_delivered"] is True
    assert result["meets_targets"]["all_delivered"] is True

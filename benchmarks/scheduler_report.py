"""The scheduler benchmark's JSON line (benchmarks/scheduler.py): the round trip's figures per
concurrency (suffix `_c<n>`, and without a suffix at the reference concurrency), Runbox over
Celery ratios from the same run, the firing figures, issue 15's targets and which are met."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Issue 15: key -> (comparison, bound). A ratio is Runbox over Celery, measured in the same run.
TARGETS: dict[str, tuple[str, float]] = {
    "runbox_roundtrip_p50_ms_c1": ("<=", 15.0),
    "p50_ratio_vs_celery": ("<=", 2.0),
    "throughput_ratio_vs_celery_c32": (">=", 0.5),
    "runbox_cpu_ms_per_run": ("<=", 4.0),
    "execute_lateness_p99_s": ("<=", 2.0),
    "duplicates": ("<=", 0),
    "misses": ("<=", 0),
}
COMPARE: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}
# Firing figures repeated at the top level of the line (all of them stay under "firing").
FIRING_KEYS = (
    "schedules",
    "minutes",
    "database",
    "scheduler_replicas",
    "lateness_p50_s",
    "lateness_p99_s",
    "execute_lateness_p50_s",
    "execute_lateness_p99_s",
    "duplicates",
    "misses",
    "scheduler_rss_mb",
    "scheduler_cpu_s",
    "scheduler_cpu_ms_per_run",
)


def suffixed(figures: Mapping[str, Any], concurrency: int) -> dict[str, Any]:
    return {f"{key}_c{concurrency}": value for key, value in figures.items()}


def ratio(numerator: Any, denominator: Any) -> float | None:
    if not (number(numerator) and number(denominator)) or denominator == 0:
        return None
    return round(float(numerator) / float(denominator), 3)


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def with_ratios(roundtrip: Mapping[str, Any], concurrencies: Iterable[int]) -> dict[str, Any]:
    """Runbox p50 over Celery's p50, and Runbox runs/s over Celery tasks/s, per concurrency."""
    out = dict(roundtrip)
    for c in concurrencies:
        out[f"p50_ratio_vs_celery_c{c}"] = ratio(
            roundtrip.get(f"runbox_roundtrip_p50_ms_c{c}"),
            roundtrip.get(f"celery_roundtrip_p50_ms_c{c}"),
        )
        out[f"throughput_ratio_vs_celery_c{c}"] = ratio(
            roundtrip.get(f"runbox_runs_per_s_c{c}"), roundtrip.get(f"celery_tasks_per_s_c{c}")
        )
    return out


def met(line: Mapping[str, Any]) -> dict[str, bool]:
    """Each target whose figure was measured: met or not."""
    return {
        key: COMPARE[op](line[key], bound)
        for key, (op, bound) in TARGETS.items()
        if number(line.get(key))
    }


def build_line(
    fire: Mapping[str, Any],
    roundtrip: Mapping[str, Any],
    concurrencies: list[int],
    reference: int,
    runs: int,
) -> dict[str, Any]:
    """The one JSON object the benchmark prints; parts not run are left out."""
    line: dict[str, Any] = {"benchmark": "scheduler"}
    if fire:
        line |= {key: fire.get(key) for key in FIRING_KEYS}
    if roundtrip:
        figures = with_ratios(roundtrip, concurrencies)
        end = f"_c{reference}"
        line |= {"runs": runs, "concurrencies": concurrencies, "reference_concurrency": reference}
        line |= {key.removesuffix(end): v for key, v in figures.items() if key.endswith(end)}
        line |= figures
    line["firing"] = dict(fire) or None
    line["targets"] = {key: [op, bound] for key, (op, bound) in TARGETS.items()}
    line["met"] = met(line)
    return line

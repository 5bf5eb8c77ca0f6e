"""A real Prometheus (Debian's binary) scraping a stack started with `runbox up`, with the
Runbox rules loaded: every target up, a run's series present, rules evaluated without
errors, and every Grafana panel's query answered."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from cli import natsd
from tests.conftest import docker_available, require, sandbox_image_available
from tests.unit.test_grafana_dashboards import queries

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules"
RUNBOX = [sys.executable, "-m", "cli.main"]
JOBS = ("catalogue", "executor", "scheduler", "alerting")
METRICS_LINE = re.compile(r"^\s*(\w+)\s+grpc \S+\s+metrics http://127\.0\.0\.1:(\d+)/metrics", re.M)
T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Stack:
    """`runbox up` in its own directory, and the CLI against it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "up.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*RUNBOX, "up", "--var", "var"],
            cwd=workdir,
            env=self.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        env["PYTHONPATH"] = str(REPO)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def metrics_ports(self) -> dict[str, int]:
        """The /metrics port of each service, as `runbox up` printed them."""

        def printed() -> dict[str, int] | None:
            if self.proc.poll() is not None:
                raise AssertionError(self.log_path.read_text()[-4000:])
            ports = {m[1]: int(m[2]) for m in METRICS_LINE.finditer(self.log_path.read_text())}
            ready = (self.workdir / "var" / "runbox.json").exists()
            return ports if ready and set(ports) == set(JOBS) else None

        return eventually(printed, "runbox up to serve", timeout=120)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RUNBOX, *args],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        finally:
            self.log.close()


class Prometheus:
    """A prometheus server on a free loopback port with its own storage and the rules."""

    def __init__(self, binary: str, workdir: Path, ports: dict[str, int]) -> None:
        self.port = natsd.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(path) for path in sorted(RULES.glob("*.yml"))],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{ports[job]}"]}]}
                for job in JOBS
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        eventually(self.ready, "prometheus to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited (see prometheus.log)"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            self.log.close()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Prometheus]]:
    binary = shutil.which("prometheus")
    require(
        binary is not None, "prometheus not installed (deploy/prometheus/install-prometheus.sh)"
    )
    try:
        natsd.find_binary()
    except FileNotFoundError as exc:
        require(False, str(exc))
    require(docker_available() and sandbox_image_available(), "Docker and the sandbox image")
    assert binary is not None
    workdir = tmp_path_factory.mktemp("scraped")
    (workdir / "examples").mkdir()
    for name in ("hello.py", "hello.runbox.yaml"):
        (workdir / "examples" / name).write_bytes((REPO / "examples" / name).read_bytes())
    stack = Stack(workdir)
    try:
        prometheus = Prometheus(binary, workdir, stack.metrics_ports())
        try:
            yield stack, prometheus
        finally:
            prometheus.stop()
    finally:
        stack.stop()


@pytest.mark.timeout(300)
def test_prometheus_scrapes_every_service_and_a_run_moves_its_series(
    scraped: tuple[Stack, Prometheus],
) -> None:
    """Every Runbox target is up, a python run shows in the scheduler's and the executor's
    series (resource use included), and no `_created` series is scraped."""
    stack, prometheus = scraped
    pushed = stack.cli("script", "push", "examples/hello.py", "--version", "1.0.0")
    assert pushed.returncode == 0, pushed.stderr
    ran = stack.cli("run", "hello", "--follow", "-p", "name=Prometheus")
    assert ran.returncode == 0 and "SUCCEEDED" in ran.stdout, ran.stdout + ran.stderr

    def targets_up() -> dict[str, str] | None:
        active = prometheus.api("targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in active}
        return health if health == dict.fromkeys(JOBS, "up") else None

    eventually(targets_up, "every Runbox target up")
    for target in prometheus.api("targets")["activeTargets"]:
        with urllib.request.urlopen(target["scrapeUrl"], timeout=10) as response:
            body = response.read().decode()
        assert "_created" not in body, target["scrapeUrl"]  # disable_created_metrics at start
        assert "process_resident_memory_bytes" in body, target["scrapeUrl"]
    python = '{execution_type="python",resource_class="small"}'
    for expr in (
        "runbox_scheduler_runs_submitted_total >= 1",
        'runbox_scheduler_runs_finished_total{state="succeeded"} >= 1',
        f"runbox_executor_sandbox_cpu_seconds_total{python} > 0",
        f"runbox_executor_sandbox_peak_memory_bytes_count{python} >= 1",
        f"runbox_executor_run_duration_seconds_count{python} >= 1",
        f"runbox_executor_sandbox_io_read_bytes_total{python}",
        "runbox_executor_sandbox_containers_running > 0",
        "runbox_executor_sandbox_memory_budget_bytes > 0",
        "runbox_scheduler_consumer_lag_messages",
        "runbox_alerting_consumer_lag_messages",
        "runbox_scheduler_outbox_unsent_events",
        'runbox_scheduler_active_runs{state="pending"}',
        "runbox_db_query_duration_seconds_count",
    ):
        eventually(lambda expr=expr: prometheus.query(expr), expr)  # type: ignore[misc]
    assert prometheus.query('{__name__=~".+_created"}') == []
    assert prometheus.query('{__name__=~".+", run_id!=""}') == []


@pytest.mark.timeout(120)
def test_rules_load_and_evaluate_without_errors(scraped: tuple[Stack, Prometheus]) -> None:
    """Every rule of every rule file is loaded and has been evaluated, none with an error, and
    no alert fires on the healthy stack."""
    _, prometheus = scraped
    expected = {
        rule.get("alert") or rule["record"]
        for path in RULES.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r["health"] == "ok" for r in rules) and rules else None

    rules = eventually(evaluated, "every rule evaluated")
    assert {r["name"] for r in rules} == expected
    assert [r for r in rules if r.get("lastError")] == []
    assert [r["name"] for r in rules if r.get("state") == "firing"] == []


@pytest.mark.timeout(120)
def test_every_dashboard_query_is_answered(scraped: tuple[Stack, Prometheus]) -> None:
    """Prometheus accepts every Grafana panel's query (Grafana's variables filled in)."""
    _, prometheus = scraped
    for dashboard, title, expr in queries():
        try:
            prometheus.query(expr)
        except (OSError, AssertionError) as exc:
            raise AssertionError(f"{dashboard}: {title}: {expr}: {exc}") from exc

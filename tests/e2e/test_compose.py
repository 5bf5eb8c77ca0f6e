"""The compose stack (deploy/compose/compose.yaml) started as a user starts it, with the
images `make images` builds and Debian's docker-compose, driven by the CLI through the
published ports: runs succeed, Prometheus scrapes every service, a run whose executor is
killed ends LOST and is retried, and `down -v` leaves nothing behind.

The tests share one stack (module fixture) and run in file order; the last one takes it down.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import docker_available, require

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
RULES = REPO / "deploy" / "prometheus" / "rules"
DOCKER_SOCKET = Path("/var/run/docker.sock")
FILES = [COMPOSE_DIR / "compose.yaml", Path(__file__).with_name("compose.override.yaml")]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGES = [f"runbox/{name}:{VERSION}" for name in ("runbox", "nats", "postgres", "prometheus")]
IMAGES.append(f"runbox/sandbox-python:{VERSION}")
SERVICES = ("catalogue", "scheduler", "executor", "alerting")  # gRPC on 50051 in each
LONG_RUN_S = 40
OWNER_FILE = "/var/lib/runbox/executor/sandbox-owner"
T = TypeVar("T")

SLEEPER = """\
import os, time
seconds = int(os.environ.get("RUNBOX_PARAM_SECONDS", "60"))
time.sleep(seconds)
print(f"slept {seconds} s as uid {os.getuid()}")
"""
SLEEPER_MANIFEST = """\
name: sleeper
description: Sleeps, for the executor-kill test.
execution_type: python
limits: {timeout: 300s}
retry: {max_attempts: 2, initial_backoff: 1s, max_backoff: 2s, retry_on: [lost]}
parameters:
  - {name: seconds, type: integer, default: 60}
"""


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Call `check` until it returns something other than None, or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result is not None:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a command, fail with its output if it fails, return its stdout."""
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


class ComposeStack:
    """One compose project with its own name, secrets and randomly published ports."""

    def __init__(self, workdir: Path) -> None:
        self.project = f"rbxtest{secrets.token_hex(4)}"
        self.workdir = workdir
        self.secrets = workdir / "secrets"
        run("bash", str(COMPOSE_DIR / "init-secrets.sh"), str(self.secrets))
        self.addresses: dict[str, str] = {}
        self.owner = ""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        self.env.update(
            RUNBOX_VERSION=VERSION,
            RUNBOX_SECRETS_DIR=str(self.secrets),
            DOCKER_GID=str(DOCKER_SOCKET.stat().st_gid),
            **{f"RUNBOX_{svc.upper()}_PORT": "0" for svc in [*SERVICES, "prometheus"]},
        )

    def compose(self, *args: str, timeout: float = 180) -> str:
        files = [arg for f in FILES for arg in ("-f", str(f))]
        return run(
            "docker-compose", "-p", self.project, *files, *args, env=self.env, timeout=timeout
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        """`docker inspect` of the project's containers, by compose service name."""
        ids = run(
            "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"
        )
        if not ids.split():
            return {}
        found = json.loads(run("docker", "inspect", *ids.split()))
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in found}

    def all_healthy(self) -> bool | None:
        """True once migrate exited 0 and every other container is healthy; fails early on a
        failed migration or an exited service."""
        containers = self.containers()
        expected = {"postgres", "nats", "migrate", "prometheus", *SERVICES}
        if set(containers) != expected:
            return None
        for name, c in containers.items():
            state = c["State"]
            if name == "migrate":
                if state["Status"] == "exited" and state["ExitCode"] != 0:
                    raise AssertionError(f"migrate failed:\n{self.logs('migrate')}")
                if state["Status"] != "exited":
                    return None
            elif state["Status"] == "exited":
                raise AssertionError(f"{name} exited:\n{self.logs(name)}")
            elif state.get("Health", {}).get("Status") != "healthy":
                return None
        return True

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", service)

    def port(self, service: str, port: int) -> str:
        return self.compose("port", service, str(port)).strip()

    def started(self) -> None:
        """Note what the tests need once every service is healthy: the published gRPC
        addresses (a restarted container may get another free port) and the executor's
        sandbox owner id."""
        self.addresses = {svc: self.port(svc, 50051) for svc in SERVICES}
        executor = self.containers()["executor"]["Id"]
        self.owner = run("docker", "exec", executor, "cat", OWNER_FILE).strip()

    def cli(self, *args: str) -> str:
        """`python -m cli.main` against the published ports with the admin token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOX_")}
        addresses = self.addresses
        config = self.workdir / "runbox.json"
        config.write_text(
            json.dumps({**addresses, "token_file": str(self.secrets / "admin.token")})
        )
        env.update({f"RUNBOX_{svc.upper()}_ADDRESS": a for svc, a in addresses.items()})
        env.update(RUNBOX_TOKEN_FILE=str(self.secrets / "admin.token"), RUNBOX_CONFIG=str(config))
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"runbox {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def show(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("runs", "show", run_id, "--json"))
        return result

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", timeout=240)


def test_compose_file_validates_with_pinned_images(tmp_path: Path) -> None:
    """compose.yaml passes docker-compose's Compose Specification schema (with and without the
    grafana profile); every image is pinned, runbox/* to the project's version, never latest;
    every port is published on 127.0.0.1."""
    require(shutil.which("docker-compose") is not None, "docker-compose missing")
    run("bash", str(COMPOSE_DIR / "init-secrets.sh"), str(tmp_path / "secrets"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOX_", "DOCKER_"))}
    env["RUNBOX_SECRETS_DIR"] = str(tmp_path / "secrets")
    base = ["docker-compose", "-f", str(COMPOSE_DIR / "compose.yaml"), "--profile", "grafana"]
    config = yaml.safe_load(run(*base, "config", env=env))
    services = config["services"]
    assert "grafana" in services
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        if repository.startswith("runbox/"):
            assert tag == VERSION, f"{name}: {image} is not the project's version {VERSION}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    require(docker_available(), "no Docker engine reachable (make docker)")
    require(DOCKER_SOCKET.is_socket(), f"no Docker socket at {DOCKER_SOCKET} for the executor")
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose missing (apt-get install docker-compose)",
    )
    for image in IMAGES:
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
        require(present.returncode == 0, f"image {image} missing (make images)")
    stack = ComposeStack(tmp_path_factory.mktemp("compose"))
    started = time.monotonic()
    try:
        stack.compose("up", "-d", timeout=300)
        eventually(stack.all_healthy, 240, "every compose service healthy")
        stack.started()
        print(f"compose up -> all healthy: {time.monotonic() - started:.1f} s")
        names = [c["Name"].lstrip("/") for c in stack.containers().values()]
        print(run("docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names))
        yield stack
    finally:
        stack.down()


@pytest.mark.timeout(420)
def test_compose_up_serves_hello_run_through_published_ports(stack: ComposeStack) -> None:
    """`up` reaches all-healthy and examples/hello.py pushed and run by the CLI SUCCEEDS in
    the sandbox."""
    examples = stack.workdir / "examples"
    examples.mkdir()
    for name in ("hello.py", "hello.runbox.yaml"):
        shutil.copy(REPO / "examples" / name, examples / name)
    assert "published hello@1.0.0" in stack.cli(
        "script", "push", "examples/hello.py", "--version", "1.0.0"
    )
    output = stack.cli("run", "hello", "--follow", "-p", "name=Compose")
    assert "Hello, Compose!" in output
    assert "SUCCEEDED" in output
    assert "uid 10001" in output, "the run should execute in the Docker sandbox"


@pytest.mark.timeout(120)
def test_prometheus_scrapes_every_service_up(stack: ComposeStack) -> None:
    """Prometheus's targets API shows every Runbox service's target up, and it loaded the
    rule groups of deploy/prometheus/rules."""
    api = f"http://{stack.port('prometheus', 9090)}/api/v1"

    def get(path: str) -> Any:
        with urllib.request.urlopen(api + path, timeout=5) as response:
            return json.load(response)["data"]

    def every_service_up() -> dict[str, str] | None:
        health = {t["labels"]["job"]: t["health"] for t in get("/targets")["activeTargets"]}
        return health if all(health.get(svc) == "up" for svc in SERVICES) else None

    health = eventually(every_service_up, 60, "every Runbox target up in Prometheus")
    assert set(SERVICES) <= set(health)
    rule_files = [*RULES.glob("*.yml"), *RULES.glob("*.yaml")]
    groups = get("/rules")["groups"]
    assert {Path(g["file"]).name for g in groups} == {f.name for f in rule_files}


def _state(run: dict[str, Any]) -> str:
    return str(run.get("state", "")).removeprefix("RUN_STATE_")


@pytest.mark.timeout(300)
def test_executor_killed_run_ends_lost_and_retry_succeeds(stack: ComposeStack) -> None:
    """A run whose executor container is killed ends LOST; its retry runs once the executor is
    started again and SUCCEEDS; no run is left behind."""
    (stack.workdir / "sleeper.py").write_text(SLEEPER)
    (stack.workdir / "sleeper.runbox.yaml").write_text(SLEEPER_MANIFEST)
    stack.cli("script", "push", "sleeper.py", "--version", "1.0.0")
    first = json.loads(stack.cli("run", "sleeper", "-p", f"seconds={LONG_RUN_S}", "--json"))["id"]
    eventually(lambda: True if _state(stack.show(first)) == "RUNNING" else None, 60, "RUNNING")

    executor = stack.containers()["executor"]["Id"]
    run("docker", "kill", executor)
    lost = eventually(
        lambda: r if _state(r := stack.show(first)) == "LOST" and r.get("retry_run_id") else None,
        90,
        "the run LOST with a retry",
    )
    # `docker kill` is a manual stop, which restart policies leave alone: start it again as an
    # operator would (a crash of the process is restarted by `restart: unless-stopped`).
    stack.compose("start", "executor")
    retry_id = lost["retry_run_id"]
    retry = eventually(
        lambda: r if _state(r := stack.show(retry_id)) in ("SUCCEEDED", "FAILED") else None,
        LONG_RUN_S + 120,
        "the retry to end",
    )
    assert _state(retry) == "SUCCEEDED", retry
    assert retry["parent_run_id"] == first
    assert retry["attempt"] == 2

    runs = json.loads(stack.cli("runs", "list", "--script", "sleeper", "--limit", "0", "--json"))
    assert sorted(_state(r) for r in runs) == ["LOST", "SUCCEEDED"]
    assert json.loads(stack.cli("deadletters", "--json")) == []


@pytest.mark.timeout(180)
def test_crashed_service_restarted_by_restart_policy(stack: ComposeStack) -> None:
    """The scheduler's process killed inside its container (a crash, not a manual stop) is
    started again by `restart: unless-stopped`, healthy, with its runs kept in PostgreSQL."""
    before = stack.containers()["scheduler"]
    # tini is PID 1; its one child is the service.
    kill = "kill -KILL $(cat /proc/1/task/1/children)"
    run("docker", "exec", before["Id"], "sh", "-c", kill)

    def restarted_and_healthy() -> bool | None:
        after = stack.containers()["scheduler"]
        if after["RestartCount"] <= before["RestartCount"]:
            return None
        return True if after["State"].get("Health", {}).get("Status") == "healthy" else None

    eventually(restarted_and_healthy, 120, "the scheduler restarted and healthy")
    stack.addresses["scheduler"] = stack.port("scheduler", 50051)
    runs = json.loads(stack.cli("runs", "list", "--limit", "0", "--json"))
    assert {r["script"]["name"] for r in runs} == {"hello", "sleeper"}


@pytest.mark.timeout(300)
def test_compose_down_leaves_nothing_behind(stack: ComposeStack) -> None:
    """`down -v` removes every container, volume and network of the project and every sandbox
    its executor started."""
    assert stack.owner.startswith("executor-")
    sandboxes = f"label=org.runbox.owner={stack.owner}"
    warm = run("docker", "ps", "-q", "--filter", sandboxes).split()
    assert warm, "warm sandboxes expected"
    for sandbox in json.loads(run("docker", "inspect", *warm)):
        # Started on the host engine as the executor asks: no network, read-only, uid 10001.
        assert sandbox["HostConfig"]["NetworkMode"] == "none"
        assert sandbox["HostConfig"]["ReadonlyRootfs"] is True
        assert sandbox["Config"]["User"] == "10001:10001"
        assert sandbox["Config"]["Image"] == f"runbox/sandbox-python:{VERSION}"

    stack.down()
    project = f"label=com.docker.compose.project={stack.project}"
    assert run("docker", "ps", "-aq", "--filter", project).split() == []
    assert run("docker", "volume", "ls", "-q", "--filter", project).split() == []
    assert run("docker", "network", "ls", "-q", "--filter", project).split() == []
    assert run("docker", "ps", "-aq", "--filter", sandboxes).split() == []

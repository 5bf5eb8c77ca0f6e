"""The dev overlay's pods work: each workload rendered by kustomize is started with Docker the
way the kubelet would start it (tests/e2e/k8s_docker.py: its env from the ConfigMaps, its
Secrets as files, emptyDirs, its user on a read-only root, no capabilities, its limits, Service
names in DNS), in the order Kubernetes would settle on: PostgreSQL and NATS, the migration
Job, the four services; then the CLI pushes examples/hello.py and runs it to SUCCEEDED
through the Service names.

No cluster can run here, so two things stand in: the executor's dind sidecar is replaced by
this machine's engine socket mounted where dind's socket is (/run/dind/docker.sock), and its
`sandbox-image` init container (a pull from a registry) is skipped: the image is present.
Probes run what they ask for: gRPC health (runbox-health), pg_isready, NATS /healthz."""

from __future__ import annotations

import os
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import docker_available, require
from tests.e2e.k8s_docker import PodRunner, wait_for
from tests.e2e.k8s_objects import containers, pod_spec
from tests.e2e.test_k8s_manifests import objects, rendered, tree  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]
# The executor pod's containers Docker cannot be: its engine and the pull into it.
STAND_INS = {"dind", "sandbox-image"}
ENGINE_SOCKET = "/var/run/docker.sock"


def probe_passes(
    runner: PodRunner, run: Any, container: dict[str, Any], probe: dict[str, Any]
) -> bool:
    """One run of a Kubernetes probe against a started container."""
    run.reload()
    if run.status != "running":
        return False
    if "grpc" in probe:
        code, _ = run.exec_run(["runbox-health", f"127.0.0.1:{probe['grpc']['port']}"])
        return bool(code == 0)
    if "exec" in probe:
        code, _ = run.exec_run(probe["exec"]["command"])
        return bool(code == 0)
    address = run.attrs["NetworkSettings"]["Networks"][runner.network.name]["IPAddress"]
    port = probe["httpGet"]["port"]
    if isinstance(port, str):  # a named port of the container
        (port,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    try:
        url = f"http://{address}:{port}{probe['httpGet']['path']}"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start_pod(runner: PodRunner, obj: dict[str, Any], **extra: Any) -> list[Any]:
    """Init containers to completion (stand-ins skipped), then the containers until their
    startup probes pass."""
    spec = pod_spec(obj)
    for init in spec.get("initContainers", []):
        if init["name"] not in STAND_INS:
            runner.run_to_completion(obj, init)
    started = []
    for container in spec["containers"]:
        run = runner.start(obj, container, **extra)
        wait_started(runner, run, container)
        started.append(run)
    return started


def wait_started(runner: PodRunner, run: Any, container: dict[str, Any]) -> None:
    """Until the startup probe passes, then each of readiness and liveness too (in that
    order, as the kubelet runs them once a container has started)."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe:
            wait_for(
                lambda probe=probe: probe_passes(runner, run, container, probe),
                f"{run.name} passing its {kind} {probe}",
                150,
                lambda: str(run.logs().decode(errors="replace")),
            )


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[PodRunner]:
    require(docker_available(), "no Docker engine reachable (make docker)")
    import docker

    client = docker.from_env(timeout=120)
    pods = PodRunner(client, [], tmp_path, f"rbxk8s{secrets.token_hex(4)}")
    yield pods
    pods.close()
    client.close()


def stop_executor(runner: PodRunner, executor: Any) -> None:
    """SIGTERM as the kubelet sends it, then remove any sandbox it left on the engine."""
    code, out = executor.exec_run(["cat", "/var/lib/runbox/executor/sandbox-owner"])
    executor.stop(timeout=60)
    if code == 0:
        owner = out.decode().strip()
        for left in runner.client.containers.list(
            all=True, filters={"label": f"org.runbox.owner={owner}"}
        ):
            left.remove(force=True)


@pytest.mark.timeout(600)
def test_dev_overlay_pods_run_a_script_to_succeeded(
    runner: PodRunner,
    objects: dict[str, list[dict[str, Any]]],  # noqa: F811
    tree: Path,  # noqa: F811
) -> None:
    """The dev overlay's pods migrate, serve, find the executor by DNS and run hello.py."""
    objs = objects["overlays/dev"]
    runner.objs = objs
    sandbox = next(o["data"] for o in objs if o["metadata"]["name"].startswith("executor-"))
    needed = {c["image"] for o in objs for c in containers(o) if c["name"] not in STAND_INS}
    needed.add(sandbox["RUNBOX_SANDBOX__IMAGE"])
    missing = sorted(i for i in needed if not runner.client.images.list(name=i))
    require(not missing, f"images missing: {', '.join(missing)} (make images)")
    kind = {(o["kind"], o["metadata"]["name"]): o for o in objs}

    start_pod(runner, kind["StatefulSet", "postgres"])
    start_pod(runner, kind["StatefulSet", "nats"])
    (job,) = [o for o in objs if o["kind"] == "Job"]
    for step in [*pod_spec(job)["initContainers"], *pod_spec(job)["containers"]]:
        runner.run_to_completion(job, step)
    for service in ("catalogue", "scheduler", "alerting"):
        start_pod(runner, kind["Deployment", service])
    (executor,) = start_pod(
        runner,
        kind["Deployment", "executor"],
        volumes={ENGINE_SOCKET: {"bind": "/run/dind/docker.sock", "mode": "rw"}},
        group_add=[str(os.stat(ENGINE_SOCKET).st_gid)],
    )
    try:
        output = run_hello(runner, tree / "overlays" / "dev" / "secrets" / "admin.token")
    finally:
        stop_executor(runner, executor)
    assert "SUCCEEDED" in output and "Hello, k8s!" in output, output


def run_hello(runner: PodRunner, admin_token: Path) -> str:
    """The CLI in a container on the pods' network, through the Services' names."""
    token_dir = runner.tmp / "cli"
    token_dir.mkdir()
    (token_dir / "admin.token").write_bytes(admin_token.read_bytes())
    (token_dir / "admin.token").chmod(0o444)
    image = next(
        c["image"] for o in runner.objs for c in containers(o) if "runbox/runbox" in c["image"]
    )
    cli = runner.client.containers.run(
        image,
        [
            "-c",
            "runbox script push /ex/hello.py --version 1.0.1 && "
            "runbox run hello --follow -p name=k8s",
        ],
        entrypoint=["sh"],
        detach=True,
        labels=runner.labels,
        network=runner.network.name,
        user="10001:10001",
        read_only=True,
        tmpfs={"/tmp": ""},
        working_dir="/tmp",
        environment={
            "HOME": "/tmp",
            "RUNBOX_SCHEDULER_ADDRESS": "scheduler:50051",
            "RUNBOX_CATALOGUE_ADDRESS": "catalogue:50051",
            "RUNBOX_TOKEN_FILE": "/token/admin.token",
        },
        volumes={
            str(token_dir): {"bind": "/token", "mode": "ro"},
            str(ROOT / "examples"): {"bind": "/ex", "mode": "ro"},
        },
    )
    runner.containers.append(cli)
    result = cli.wait(timeout=180)
    output = str(cli.logs().decode(errors="replace"))
    assert result["StatusCode"] == 0, output
    return output

"""Kubernetes manifests (deploy/k8s): every kustomization renders with kustomize, every object
validates against the Kubernetes OpenAPI schemas (and the prometheus-operator CRDs), checkov
finds nothing that is not skipped with a written reason, and the rendered objects hold what
docs/kubernetes.md promises: pinned images, hardened containers, native gRPC probes, settings
the services know, and network policies allowing exactly the documented edges.

The tools come from deploy/k8s/install-tools.sh (run by .ci/run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import require
from tests.e2e.k8s_objects import (
    CRD_KINDS,
    allowed_edges,
    container_env,
    containers,
    env_settings,
    pod_spec,
    secret_files,
    service_containers,
    settings_problems,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TOOLS = ROOT / ".tools" / "k8s"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
CRD_VALIDATOR = K8S / "validate" / "validate-crds.mjs"
# The oldest Kubernetes the manifests support (native sidecars, the executor's dind, are on by
# default from 1.29) and the newest whose schemas kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
SERVICES = ("catalogue", "scheduler", "executor", "alerting")

# name -> (kustomization directory in the copied tree, components rendered on top of it)
RENDERS: dict[str, tuple[str, list[str]]] = {
    "base": ("base", []),
    "base+network-policies": ("base", ["network-policies"]),
    "base+monitoring": ("base", ["monitoring"]),
    "overlays/dev": ("overlays/dev", []),
    "overlays/production": ("overlays/production", []),
}
# Findings of the bare base that an install never has, and why.
BASE_SKIPS = {
    "CKV_K8S_21": "the base is namespace-agnostic: overlays (or kubectl apply -n) set it",
    "CKV2_K8S_6": "network policies are the opt-in component, which the overlays include",
}

pytestmark = pytest.mark.timeout(300)


def kubectl() -> str | None:
    """The pinned kubectl (install-tools.sh), else one on PATH (its kustomize must be >= v5)."""
    pinned = TOOLS / "kubectl"
    return str(pinned) if pinned.exists() else shutil.which("kubectl")


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with overlay secrets made by make-secrets.sh and one kustomization
    per component check (kustomize refuses absolute paths, so they live inside the copy)."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("node_modules", "secrets"))
    for overlay in ("dev", "production"):
        subprocess.run(
            ["bash", str(root / "make-secrets.sh"), str(root / "overlays" / overlay)],
            check=True,
            capture_output=True,
        )
    for name, (base, components) in RENDERS.items():
        if components:
            check = root / "checks" / name.replace("+", "-").replace("/", "-")
            check.mkdir(parents=True)
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"../../{base}"],
                "components": [f"../../components/{c}" for c in components],
            }
            (check / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return root


def render_dir(tree: Path, name: str) -> Path:
    base, components = RENDERS[name]
    if components:
        return tree / "checks" / name.replace("+", "-").replace("/", "-")
    return tree / base


@pytest.fixture(scope="session")
def rendered(tree: Path) -> dict[str, str]:
    """Each kustomization rendered by `kubectl kustomize` (what `kubectl apply -k` applies)."""
    tool = kubectl()
    require(tool is not None, "kubectl (with kustomize): run deploy/k8s/install-tools.sh")
    assert tool is not None
    out: dict[str, str] = {}
    for name in RENDERS:
        done = subprocess.run(
            [tool, "kustomize", str(render_dir(tree, name))], capture_output=True, text=True
        )
        assert done.returncode == 0, f"{name} does not render: {done.stderr}"
        out[name] = done.stdout
    return out


@pytest.fixture(scope="session")
def objects(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [o for o in yaml.safe_load_all(text) if o] for name, text in rendered.items()}


def named(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_render_every_kustomization_yields_every_service(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """Every kustomization renders the four Deployments, their Services and the migration Job."""
    for name, objs in objects.items():
        assert set(named(objs, "Deployment")) == set(SERVICES), name
        assert set(SERVICES) <= set(named(objs, "Service")), name
        assert [j["metadata"]["name"] for j in objs if j["kind"] == "Job"] == ["migrate-0-2-0"]
    dev = objects["overlays/dev"]
    assert set(named(dev, "StatefulSet")) == {"nats", "postgres"}
    assert {o["metadata"].get("namespace") for o in dev} == {None, "runbox"}


def test_validate_objects_against_kubernetes_schemas_passes(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Every object passes the strict Kubernetes schemas; CRD objects pass their CRD schemas."""
    crd_objects: list[dict[str, Any]] = []
    for name, objs in objects.items():
        for obj in objs:
            if obj["kind"] in CRD_KINDS:
                crd_objects.append(obj)
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    where = ".".join(str(p) for p in exc.path)
                    what = f"{obj['kind']}/{obj['metadata']['name']}"
                    pytest.fail(f"{name} on Kubernetes {version}: {what} {where}: {exc}")
    assert {o["kind"] for o in crd_objects} == CRD_KINDS
    node = shutil.which("node")
    installed = (K8S / "validate" / "node_modules" / "@kubernetes-models").exists()
    require(node is not None and installed, "CRD validators: run deploy/k8s/install-tools.sh")
    assert node is not None
    done = subprocess.run(
        [node, str(CRD_VALIDATOR)], input=json.dumps(crd_objects), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("OK ") == len(crd_objects)


def checkov_failures(files: list[Path], config: Path, skips: dict[str, str]) -> list[str]:
    args = [str(CHECKOV), "--config-file", str(config), "--skip-download", "-o", "json"]
    args += [a for f in files for a in ("-f", str(f))]
    # A --skip-check on the command line replaces the config file's list: pass both.
    configured = yaml.safe_load(config.read_text()).get("skip-check", [])
    args += ["--skip-check", ",".join([*configured, *skips])]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for report in reports
        for c in report.get("results", {}).get("failed_checks", [])
    ]


def test_checkov_scan_reports_no_unskipped_finding(
    rendered: dict[str, str], tree: Path, tmp_path: Path
) -> None:
    """checkov finds nothing in any rendering except checks skipped with a written reason."""
    require(CHECKOV.exists(), "checkov: run deploy/k8s/install-tools.sh")
    config = tree / ".checkov.yaml"
    for line in config.read_text().splitlines():
        if line.strip().startswith("- CKV"):
            assert "  # " in line and len(line.split("#", 1)[1].strip()) > 20, line
    files = {}
    for name, text in rendered.items():
        files[name] = tmp_path / (name.replace("/", "-").replace("+", "-") + ".yaml")
        files[name].write_text(text)
        for annotation in yaml.safe_load_all(text):
            for key, value in (
                (annotation or {}).get("metadata", {}).get("annotations") or {}
            ).items():
                if key.startswith("checkov.io/skip"):
                    assert len(value.split("=", 1)[-1]) > 20, f"{key} without a reason: {value}"
    base_like = [files[n] for n in RENDERS if n.startswith("base")]
    overlays = [files[n] for n in RENDERS if n.startswith("overlays")]
    failures = checkov_failures(base_like, config, BASE_SKIPS)
    failures += checkov_failures(overlays, config, {})
    assert failures == []


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_images_are_pinned_to_the_release_never_latest(rendered: dict[str, str]) -> None:
    """Every image has an explicit tag, none is `latest`, Runbox's images are this release."""
    version = project_version()
    for name, text in rendered.items():
        assert ":latest" not in text, name
        for obj in yaml.safe_load_all(text):
            for container in containers(obj):
                image = container["image"]
                repo, _, tag = image.rpartition(":")
                assert repo and tag and tag != "latest" and "/" not in tag, image
                if repo.startswith("runbox/"):
                    assert tag == version, f"{image}: release is {version}"
            for key, value in (obj.get("data") or {}).items():
                if key.endswith("__IMAGE"):
                    assert value.rpartition(":")[2] == version, value


def test_containers_are_hardened_except_the_dind_sidecar(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """Every container but dind: non-root, read-only root, no capabilities, no escalation,
    RuntimeDefault seccomp, requests and limits; dind is the only privileged container."""
    privileged = set()
    for name, objs in objects.items():
        for obj in objs:
            spec = pod_spec(obj)
            for container in containers(obj):
                where = f"{name} {obj['metadata']['name']}/{container['name']}"
                resources = container.get("resources", {})
                assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
                assert {"cpu", "memory"} <= set(resources.get("limits", {})), where
                sc = container.get("securityContext", {})
                if sc.get("privileged"):
                    privileged.add((obj["metadata"]["name"], container["name"]))
                    continue
                pod_sc = spec.get("securityContext", {})
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
                assert seccomp.get("type") == "RuntimeDefault", where
    assert privileged == {("executor", "dind")}


def test_dind_sidecar_listens_on_its_pod_local_unix_socket_only(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """The privileged engine serves no TCP port: only a socket on a volume of its own pod."""
    (executor,) = [
        o for o in objects["base"] if o["metadata"]["name"] == "executor" and pod_spec(o)
    ]
    spec = pod_spec(executor)
    (dind,) = [c for c in spec["initContainers"] if c["name"] == "dind"]
    assert dind["restartPolicy"] == "Always"  # a native sidecar
    # Given flags only, the image's entrypoint would add tcp://0.0.0.0:2375 (TLS off).
    assert dind["args"][0] == "dockerd"
    hosts = [a.split("=", 1)[1] for a in dind["args"] if a.startswith(("--host=", "-H="))]
    assert hosts == ["unix:///run/dind/docker.sock"]
    assert "ports" not in dind
    (socket_volume,) = [v for v in spec["volumes"] if v["name"] == "dind-socket"]
    assert socket_volume["emptyDir"] is not None


def test_services_use_native_grpc_probes_on_their_grpc_port(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """Each service container has gRPC startup, readiness and liveness probes on its gRPC port."""
    for objs in objects.values():
        settings = env_settings(objs)
        for service, deployment in named(objs, "Deployment").items():
            (container,) = [c for c in containers(deployment) if c["name"] == service]
            assert container["command"] == ["python", "-m", f"services.{service}"]
            port = int(settings[service]["RUNBOX_GRPC__PORT"])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"] == {"port": port}, (service, probe)
            assert {p["containerPort"] for p in container["ports"]} == {
                port,
                int(settings[service]["RUNBOX_METRICS__PORT"]),
            }


def test_services_accept_their_configured_settings_and_secrets(
    objects: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Each service container (and migration step) knows every variable its ConfigMaps set and
    loads its settings and principals from them and the files of its mounted Secrets."""
    for name in ("overlays/dev", "overlays/production"):
        for service, obj, container in service_containers(objects[name]):
            env = container_env(objects[name], container)
            files = secret_files(objects[name], obj, container)
            where = (name, obj["metadata"]["name"], container["name"])
            assert settings_problems(service, env, files, tmp_path) == [], where


def test_scheduler_finds_executors_through_the_headless_service(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """The scheduler's executor DNS target names the headless executor Service and its port."""
    from services.scheduler.executors import parse_target

    objs = objects["overlays/dev"]
    host, port = parse_target(env_settings(objs)["scheduler"]["RUNBOX_EXECUTORS_DNS"])
    service = named(objs, "Service")[host]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "executor"}
    assert port in {p["port"] for p in service["spec"]["ports"]}


def test_migration_job_runs_each_shared_database_migration_in_order(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """The Job migrates catalogue, scheduler, then alerting, each with its own settings."""
    (job,) = [o for o in objects["base"] if o["kind"] == "Job"]
    spec = pod_spec(job)
    steps = [*spec["initContainers"], *spec["containers"]]
    assert [c["command"] for c in steps] == [
        ["python", "-m", f"services.{svc}", "migrate"]
        for svc in ("catalogue", "scheduler", "alerting")
    ]
    assert spec["restartPolicy"] == "Never"


EXPECTED_EDGES = {
    *{("clients", svc, 50051) for svc in ("catalogue", "scheduler", "alerting")},
    ("scheduler", "catalogue", 50051),
    ("catalogue", "scheduler", 50051),
    ("scheduler", "executor", 50051),
    ("executor", "catalogue", 50051),
    ("alerting", "catalogue", 50051),
    *{(svc, "nats", 4222) for svc in SERVICES},
    *{(svc, "postgresql", 5432) for svc in ("catalogue", "scheduler", "alerting", "migrate")},
    *{("prometheus", svc, 9100) for svc in SERVICES},
    ("nats", "nats", 6222),
    *{(pod, "dns", 53) for pod in (*SERVICES, "migrate", "nats", "postgresql")},
    ("executor", "internet", 443),
    *{("alerting", "internet", port) for port in (443, 465, 587, 25)},
}


def test_network_policies_allow_exactly_the_documented_edges(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """With the policies on, the allowed connections are exactly docs/architecture.md's edges."""
    edges, half_open = allowed_edges(objects["overlays/dev"])
    assert half_open == set(), "allowed on one side only"
    assert edges - EXPECTED_EDGES == set(), "allowed but not documented"
    assert EXPECTED_EDGES - edges == set(), "documented but not allowed"


def test_prometheus_rule_groups_equal_the_rule_files(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """The PrometheusRule carries exactly the groups of deploy/prometheus/rules/*.yml."""
    sys.path.insert(0, str(K8S))
    try:
        sync = __import__("sync-rules")
    finally:
        sys.path.remove(str(K8S))
    (rule,) = [o for o in objects["base+monitoring"] if o["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == sync.rule_groups(), "run deploy/k8s/sync-rules.py"


def principals(objs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    import base64

    secret = named(objs, "Secret")
    (auth,) = [s for n, s in secret.items() if n.startswith("runbox-auth")]
    data = auth.get("data") or {}
    text = (
        base64.b64decode(data["principals.json"]).decode()
        if data
        else auth["stringData"]["principals.json"]
    )
    yield from json.loads(text)["principals"]


def test_overlays_replace_the_placeholder_secrets(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    """The base's placeholders let nobody in; overlays carry generated tokens, hashed only."""
    assert list(principals(objects["base"])) == []
    for name in ("overlays/dev", "overlays/production"):
        assert "REPLACE-ME" not in json.dumps(named(objects[name], "Secret")), name
        found = list(principals(objects[name]))
        assert [p["name"] for p in found] == ["admin", "runbox-services"]
        assert all(len(p["token_sha256"]) == 64 for p in found)

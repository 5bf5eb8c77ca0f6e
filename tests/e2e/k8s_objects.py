"""Reading rendered Kubernetes objects for tests/e2e/test_k8s_manifests.py: pod specs and
containers, the RUNBOX_* settings each service gets, and the connections network policies
allow."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import BaseModel, ValidationError

from services.alerting.config import AlertingSettings
from services.catalogue.config import CatalogueSettings
from services.executor.config import ExecutorSettings
from services.scheduler.config import SchedulerSettings
from shared.auth import Authenticator
from shared.settings import ENV_PREFIX, ServiceSettings

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
SETTINGS: dict[str, type[ServiceSettings]] = {
    "catalogue": CatalogueSettings,
    "scheduler": SchedulerSettings,
    "executor": ExecutorSettings,
    "alerting": AlertingSettings,
}
# Variables in the ConfigMaps that are not Runbox settings, and who reads them.
FOREIGN_VARIABLES = {"DOCKER_HOST"}  # the executor's Docker client (and the image loader)
NAME = "app.kubernetes.io/name"
Edge = tuple[str, str, int | str]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload, {} for anything else."""
    if obj.get("kind") not in WORKLOADS:
        return {}
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Init containers (sidecars included) and containers of a workload."""
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def service_containers(
    objs: list[dict[str, Any]],
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(service, workload, container) for every container running `python -m services.<svc>`
    (the Deployments' and the migration Job's)."""
    out = []
    for obj in objs:
        for container in containers(obj):
            command = container.get("command", [])
            if command[:2] == ["python", "-m"] and command[2].startswith("services."):
                out.append((command[2].removeprefix("services."), obj, container))
    return out


def container_env(objs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets from its ConfigMaps (a later source wins)."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    return env


def env_settings(objs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Service -> the variables its Deployment's container gets."""
    return {
        service: container_env(objs, container)
        for service, obj, container in service_containers(objs)
        if obj["kind"] == "Deployment"
    }


def _known(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _known(annotation, path[1:])
    return getattr(annotation, "__origin__", None) is dict


def secret_files(
    objs: list[dict[str, Any]], workload: dict[str, Any], container: dict[str, Any]
) -> dict[str, bytes]:
    """Path -> content of every file the container sees from a mounted Secret."""
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    spec = pod_spec(workload)
    volumes = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    files: dict[str, bytes] = {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] not in volumes:
            continue
        secret = secrets[volumes[mount["name"]]]
        for key, value in (secret.get("data") or {}).items():
            files[f"{mount['mountPath']}/{key}"] = base64.b64decode(value)
        for key, text in (secret.get("stringData") or {}).items():
            files[f"{mount['mountPath']}/{key}"] = text.encode()
    return files


def settings_problems(
    service: str, env: dict[str, str], files: dict[str, bytes], tmp: Path
) -> list[str]:
    """What keeps the service from starting on these variables and mounted files: variables it
    would ignore (not one of its settings), files not mounted, settings that do not validate."""
    model = SETTINGS[service]
    problems = [
        key
        for key in env
        if key not in FOREIGN_VARIABLES
        and not (
            key.startswith(ENV_PREFIX)
            and _known(model, key.removeprefix(ENV_PREFIX).lower().split("__"))
        )
    ]
    local = dict(env)
    for key, value in env.items():
        if key.endswith("_FILE"):
            if value not in files:
                problems.append(f"{key}={value}: no mounted Secret holds it")
                continue
            local[key] = str(tmp / f"{service}-{key}")
            Path(local[key]).write_bytes(files[value])
    with mock.patch.dict(os.environ, local, clear=True):
        try:
            settings = model()
            Authenticator.from_config(settings.auth.principals_file, settings.auth.principals)
        except (ValidationError, ValueError) as exc:
            problems.append(str(exc))
    return problems


def _selected(selector: dict[str, Any], pods: set[str]) -> set[str]:
    if not selector:
        return set(pods)
    names = {selector["matchLabels"][NAME]} if NAME in selector.get("matchLabels", {}) else set()
    for expression in selector.get("matchExpressions", []):
        assert expression["key"] == NAME and expression["operator"] == "In", expression
        names |= set(expression["values"])
    assert names, f"selector matches no Runbox pod by name: {selector}"
    return names


def _peers(peer: dict[str, Any], pods: set[str]) -> set[str]:
    if "ipBlock" in peer:
        return {"internet"}
    labels = peer.get("podSelector", {}).get("matchLabels", {})
    if "namespaceSelector" not in peer:
        return _selected(peer.get("podSelector", {}), pods)
    for label, value, name in (
        ("k8s-app", "kube-dns", "dns"),
        (NAME, "prometheus", "prometheus"),
        ("runbox.dev/client", "true", "clients"),
    ):
        if labels.get(label) == value:
            return {name}
    raise AssertionError(f"peer in another namespace not known to the test: {peer}")


def _rules(policy: dict[str, Any], pods: set[str]) -> tuple[set[Edge], set[Edge]]:
    spec = policy["spec"]
    targets = _selected(spec["podSelector"], pods)
    egress: set[Edge] = set()
    ingress: set[Edge] = set()
    for rule in spec.get("egress", []):
        ports = [p["port"] for p in rule.get("ports", [])] or ["any"]
        for peer in rule.get("to", [{}]):
            egress |= {(t, d, p) for t in targets for d in _peers(peer, pods) for p in ports}
    for rule in spec.get("ingress", []):
        ports = [p["port"] for p in rule.get("ports", [])] or ["any"]
        for peer in rule.get("from", [{}]):
            ingress |= {(s, t, p) for t in targets for s in _peers(peer, pods) for p in ports}
    return egress, ingress


def allowed_edges(objs: list[dict[str, Any]]) -> tuple[set[Edge], set[Edge]]:
    """(source, destination, port) the policies allow, and edges allowed on one side only.

    A connection between two pods of the namespace needs egress at its source and ingress at
    its destination; one to or from outside needs only the side inside."""
    pods = {o["spec"]["template"]["metadata"]["labels"][NAME] for o in objs if pod_spec(o)}
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    assert any(
        p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
        for p in policies
    ), "no default-deny policy"
    egress: set[Edge] = set()
    ingress: set[Edge] = set()
    for policy in policies:
        out, into = _rules(policy, pods)
        egress |= out
        ingress |= into
    inside = {e for e in egress | ingress if e[0] in pods and e[1] in pods}
    edges = (egress & ingress & inside) | {e for e in egress if e[1] not in pods}
    edges |= {e for e in ingress if e[0] not in pods}
    return edges, (egress ^ ingress) & inside

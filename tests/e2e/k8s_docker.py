"""Run the pods of rendered Kubernetes objects with Docker, as the kubelet would start them:
image, command and args, env from ConfigMaps, Secret volumes as read-only files, emptyDir as
tmpfs owned by the pod's user, PVCs as volumes given to the pod's fsGroup (with lost+found,
as on an ext4 volume), the container's user, read-only root, dropped capabilities, memory
and CPU limits, on one network where every Service name resolves to the pods it selects.

Used by tests/e2e/test_k8s_pods.py. What has no Docker equivalent is left to the caller:
it names the containers to skip and may add mounts (the executor's engine socket)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.k8s_objects import pod_spec

LABEL = "org.runbox.test"


def wait_for(check: Callable[[], bool], what: str, limit_s: float, logs: Callable[[], str]) -> None:
    """Poll check() until it holds; fail with `logs()` if it never does."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} never happened:\n{logs()[-4000:]}")


class PodRunner:
    """Starts pods of `objs` on a network of their own; `close()` removes all it made."""

    def __init__(self, client: Any, objs: list[dict[str, Any]], tmp: Path, name: str) -> None:
        self.client = client
        self.objs = objs
        self.tmp = tmp
        self.name = name
        self.labels = {LABEL: name}
        self.network = client.networks.create(f"{name}-net", driver="bridge", labels=self.labels)
        self.containers: list[Any] = []
        self.volumes: dict[str, Any] = {}

    def _objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.objs if o["kind"] == kind}

    def _aliases(self, pod_labels: dict[str, str]) -> list[str]:
        """Names of the Services whose selector matches the pod (what DNS answers with)."""
        return [
            name
            for name, svc in self._objects("Service").items()
            if svc["spec"].get("selector")
            and all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
        ]

    def _secret_dir(self, secret_name: str) -> Path:
        secret = self._objects("Secret")[secret_name]
        path = self.tmp / f"secret-{secret_name}"
        path.mkdir(exist_ok=True)
        items = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        items |= {k: v.encode() for k, v in (secret.get("stringData") or {}).items()}
        for key, value in items.items():
            (path / key).write_bytes(value)
            (path / key).chmod(0o444)
        return path

    def _helper_image(self) -> str:
        """An image with a shell (Runbox's own) for preparing volumes."""
        return next(
            c["image"]
            for o in self.objs
            for c in pod_spec(o).get("containers", [])
            if c["image"].startswith("runbox/runbox:")
        )

    def _claim(self, key: str, gid: int) -> str:
        """A volume for a PVC, given to the fsGroup (setgid, group-writable) with lost+found,
        made once per claim of a pod."""
        if key not in self.volumes:
            volume = self.client.volumes.create(f"{self.name}-{key}", labels=self.labels)
            self.volumes[key] = volume
            prepare = self.client.containers.create(
                self._helper_image(),
                ["-c", f"mkdir -p /v/lost+found && chgrp {gid} /v && chmod 2775 /v"],
                entrypoint=["sh"],
                user="0",
                labels=self.labels,
                volumes={volume.name: {"bind": "/v", "mode": "rw"}},
                network_mode="none",
            )
            try:
                prepare.start()
                assert prepare.wait(timeout=60)["StatusCode"] == 0, prepare.logs()
            finally:
                prepare.remove(force=True)
        return str(self.volumes[key].name)

    def _mounts(self, obj: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        spec = pod_spec(obj)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"]: t for t in obj["spec"].get("volumeClaimTemplates", [])}
        user, group = self._ids(spec, container)
        fs_group = spec.get("securityContext", {}).get("fsGroup", group)
        binds: dict[str, Any] = {}
        tmpfs: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            path, volume = mount["mountPath"], volumes.get(mount["name"], {})
            if "secret" in volume:
                source = str(self._secret_dir(volume["secret"]["secretName"]))
                binds[source] = {"bind": path, "mode": "ro"}
            elif "emptyDir" in volume:
                tmpfs[path] = f"uid={user},gid={fs_group}"
            else:
                claim = volume.get("persistentVolumeClaim", {}).get("claimName", mount["name"])
                assert claim in claims or "persistentVolumeClaim" in volume, mount
                key = f"{obj['metadata']['name']}-{claim}"
                source = self._claim(key, fs_group)
                binds[source] = {"bind": path, "mode": "rw"}
        return {"volumes": binds, "tmpfs": tmpfs}

    @staticmethod
    def _ids(spec: dict[str, Any], container: dict[str, Any]) -> tuple[int, int]:
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        user = sc.get("runAsUser", pod_sc.get("runAsUser", 0))
        return user, sc.get("runAsGroup", pod_sc.get("runAsGroup", user))

    def _env(self, container: dict[str, Any]) -> dict[str, str]:
        maps = self._objects("ConfigMap")
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(maps[source["configMapRef"]["name"]].get("data", {}))
        env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
        return env

    def start(self, obj: dict[str, Any], container: dict[str, Any], **extra: Any) -> Any:
        """Start one container of a workload's pod the way the kubelet would."""
        spec = pod_spec(obj)
        sc = container.get("securityContext", {})
        user, group = self._ids(spec, container)
        limits = container.get("resources", {}).get("limits", {})
        mounts = self._mounts(obj, container)
        mounts["volumes"] |= extra.pop("volumes", {})
        pod = obj["metadata"]["name"]
        run = self.client.containers.create(
            container["image"],
            container.get("args"),
            entrypoint=container.get("command"),
            name=f"{self.name}-{pod}-{container['name']}",
            hostname=pod,
            labels=self.labels,
            user=f"{user}:{group}",
            read_only=sc.get("readOnlyRootFilesystem", False),
            cap_drop=sc.get("capabilities", {}).get("drop", []),
            security_opt=["no-new-privileges"]
            if sc.get("allowPrivilegeEscalation") is False
            else [],
            mem_limit=_bytes(limits["memory"]),
            nano_cpus=int(_cpus(limits["cpu"]) * 1e9),
            environment=self._env(container),
            network=self.network.name,
            **mounts,
            **extra,
        )
        self.containers.append(run)
        labels = obj["spec"]["template"]["metadata"]["labels"]
        self.network.disconnect(run)
        self.network.connect(run, aliases=self._aliases(labels))
        run.start()
        return run

    def run_to_completion(self, obj: dict[str, Any], container: dict[str, Any]) -> None:
        """An init container or a Job step: start it and require exit code 0."""
        run = self.start(obj, container)
        result = run.wait(timeout=240)
        logs = run.logs().decode(errors="replace")
        assert result["StatusCode"] == 0, f"{run.name} exited {result}:\n{logs[-4000:]}"

    def close(self) -> None:
        """Remove every container, the network and the volumes, whatever state they are in."""
        removals = [lambda c=c: c.remove(force=True) for c in reversed(self.containers)]
        removals.append(self.network.remove)
        removals += [lambda v=v: v.remove(force=True) for v in self.volumes.values()]
        for remove in removals:
            try:
                remove()
            except Exception as exc:  # go on removing the rest
                print(f"cleanup: {exc}")


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)

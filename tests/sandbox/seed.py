"""Create "services" in the sandboxes: a system user, its Secret and a Deployment that uses it.

Used by ``python -m tests.sandbox up`` (the demo world), by tests and by benchmarks, so it
talks plain HTTPS on keep-alive connections and needs nothing beyond the standard library.
The token never leaves this module except inside the Secret it writes.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.sandbox.client import api

RELOAD_ANNOTATION = "sandbox.xapi.io/reload-interval"
TOKEN_MOUNT = "/var/run/secrets/xapi"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


class SeedError(RuntimeError):
    """Seeding failed; the message says which request and why (never a token)."""


class Cluster:
    """A minimal Kubernetes API client built from a kubeconfig's current context (token auth)."""

    def __init__(self, kubeconfig: str | Path) -> None:
        config = _load_kubeconfig(Path(kubeconfig))
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.default_namespace = context.get("namespace", "default")
        parts = urlsplit(cluster["server"])
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.token: str = user["token"]
        self.context = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
        self._local = threading.local()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=30, context=self.context
                )
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"message": raw.decode(errors="replace")[:200]}
        return response.status, answer

    def ensure(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the collection ``path``; an existing object of that name is fine."""
        status, answer = self.request("POST", path, body)
        if status == 409 and answer.get("reason") == "AlreadyExists":
            status, answer = self.request("GET", f"{path}/{body['metadata']['name']}")
        if status >= 300:
            raise SeedError(
                f"creating {body['kind']} {body['metadata']['name']!r} failed with HTTP {status}: "
                f"{answer.get('message', '')}"
            )
        return answer


def _load_kubeconfig(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        return json.loads(text)
    except ValueError:
        import yaml  # a kubeconfig someone rewrote as YAML (kubectl config set-context does that)

        return yaml.safe_load(text)


_clusters: dict[str, Cluster] = {}
_clusters_lock = threading.Lock()


def _cluster(kubeconfig: str | Path) -> Cluster:
    key = str(Path(kubeconfig).resolve())
    with _clusters_lock:
        if key not in _clusters:
            _clusters[key] = Cluster(key)
        return _clusters[key]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def deployment_manifest(
    namespace: str,
    name: str,
    secret: str,
    replicas: int,
    strategy: str,
    reload_interval: float,
    template_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment of a service whose pods use the token as Option A (env) or Option B (volume)."""
    container: dict[str, Any] = {
        "name": "app",
        "image": f"registry.example/xapi/{name}:1.0",
        "env": [{"name": "XAPI_SYSTEM_USER_ID", "valueFrom": {"secretKeyRef": {"name": secret, "key": "id"}}}],
    }
    pod_spec: dict[str, Any] = {"containers": [container]}
    template_meta: dict[str, Any] = {"labels": {"app": name}}
    if strategy == "restart":
        container["env"].insert(
            0, {"name": "XAPI_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}
        )
    elif strategy == "reload":
        container["volumeMounts"] = [{"name": "xapi-token", "mountPath": TOKEN_MOUNT, "readOnly": True}]
        container["env"].insert(0, {"name": "XAPI_TOKEN_FILE", "value": f"{TOKEN_MOUNT}/token"})
        pod_spec["volumes"] = [{"name": "xapi-token", "secret": {"secretName": secret}}]
        template_meta["annotations"] = {RELOAD_ANNOTATION: f"{reload_interval:g}"}
    else:
        raise ValueError(f"strategy must be 'restart' or 'reload', not {strategy!r}")
    if template_annotations:
        template_meta.setdefault("annotations", {}).update(template_annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def workload_manifest(
    kind: str,
    namespace: str,
    name: str,
    secret: str,
    replicas: int,
    strategy: str,
    reload_interval: float,
    template_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The same pods as :func:`deployment_manifest`, run by a Deployment, StatefulSet or DaemonSet."""
    if kind not in WORKLOAD_KINDS:
        raise ValueError(f"kind must be one of {', '.join(WORKLOAD_KINDS)}, not {kind!r}")
    manifest = deployment_manifest(namespace, name, secret, replicas, strategy, reload_interval, template_annotations)
    manifest["kind"] = kind
    if kind == "StatefulSet":
        manifest["spec"]["serviceName"] = name
    elif kind == "DaemonSet":
        del manifest["spec"]["replicas"]  # one pod per node
    return manifest


def seed_service(
    platform_url: str,
    admin_token: str,
    kubeconfig: str | Path,
    namespace: str,
    name: str,
    replicas: int = 3,
    expires_in_days: int = 5,
    strategy: str = "restart",
    platform_ca: str | None = None,
    reload_interval: float = 2.0,
    system_user_name: str | None = None,
    template_annotations: dict[str, str] | None = None,
    deployment_spec: dict[str, Any] | None = None,
    kind: str | Sequence[str] = "Deployment",
    workload_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create one service; returns ids and names (and the token's fingerprint), never the token.

    ``template_annotations`` go on the pod template (the emulator's per-deployment timings,
    e.g. ``sandbox.xapi.io/pod-start-delay``); ``deployment_spec`` is merged over the
    Deployment's spec (strategy, progressDeadlineSeconds...).

    ``kind`` picks what runs the pods: ``"Deployment"`` (the default), ``"StatefulSet"``,
    ``"DaemonSet"`` (one pod per emulator node; ``replicas`` does not apply), or a list of
    them for several workloads of the same name sharing the Secret. ``workload_spec`` is
    merged over the StatefulSet's/DaemonSet's spec (``updateStrategy``...). The result's
    ``deployment`` is None when no Deployment was made; ``workloads`` lists ``{kind, name}``.
    """
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not kinds or any(k not in WORKLOAD_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"kind must be one or more of {', '.join(WORKLOAD_KINDS)} (each once), not {kind!r}")
    cluster = _cluster(kubeconfig)
    user_name = system_user_name or f"{namespace}-{name}"
    status, body = api(
        platform_url,
        "POST",
        "/api/v1/system-users",
        token=admin_token,
        ca=platform_ca,
        json={
            "name": user_name,
            "description": f"sandbox service {namespace}/{name}",
            "expires_in_days": expires_in_days,
        },
    )
    if status != 201:
        error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
        raise SeedError(f"creating system user {user_name!r} failed with HTTP {status}: {error.get('message', '')}")
    user = body["data"]
    token: str = user["token"]

    cluster.ensure("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    secret = f"{name}-token"
    cluster.ensure(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": secret, "namespace": namespace, "labels": {"app": name}},
            "data": {"token": _b64(token), "id": _b64(user["id"])},
        },
    )
    for workload_kind in kinds:
        manifest = workload_manifest(
            workload_kind, namespace, name, secret, replicas, strategy, reload_interval, template_annotations
        )
        manifest["spec"].update((deployment_spec if workload_kind == "Deployment" else workload_spec) or {})
        cluster.ensure(f"/apis/apps/v1/namespaces/{namespace}/{WORKLOAD_PLURALS[workload_kind]}", manifest)
    return {
        "namespace": namespace,
        "system_user_id": user["id"],
        "system_user_name": user_name,
        "expires_at": user["expires_at"],
        "secret": secret,
        "deployment": name if "Deployment" in kinds else None,
        "workloads": [{"kind": k, "name": name} for k in kinds],
        "token_fingerprint": hashlib.sha256(token.encode()).hexdigest()[:8],
    }


def rollout_done(obj: dict[str, Any]) -> bool:
    """Whether `kubectl rollout status` would call this Deployment, StatefulSet or DaemonSet rolled out."""
    spec, state = obj["spec"], obj.get("status") or {}
    observed = state.get("observedGeneration", 0)
    if observed == 0 or observed < obj["metadata"].get("generation", 1):
        return False
    kind = obj.get("kind", "Deployment")
    if kind == "DaemonSet":
        desired = state.get("desiredNumberScheduled", 0)
        return state.get("updatedNumberScheduled", 0) >= desired and state.get("numberAvailable", 0) >= desired
    wanted = spec.get("replicas", 1)
    if kind == "StatefulSet":
        rolling = (spec.get("updateStrategy") or {}).get("rollingUpdate")
        if state.get("readyReplicas", 0) < wanted:
            return False
        if rolling is not None:
            return state.get("updatedReplicas", 0) >= wanted - rolling.get("partition", 0)
        return state.get("updateRevision") == state.get("currentRevision")
    return (
        state.get("updatedReplicas", 0) == wanted
        and state.get("replicas", 0) == wanted
        and state.get("availableReplicas", 0) == wanted
    )


def wait_available(
    kubeconfig: str | Path, namespace: str, name: str, timeout: float = 60, kind: str = "Deployment"
) -> None:
    """Wait until the workload's rollout is complete by the rules `kubectl rollout status` uses."""
    cluster = _cluster(kubeconfig)
    plural = WORKLOAD_PLURALS.get(kind)
    if plural is None:
        raise ValueError(f"kind must be one of {', '.join(WORKLOAD_KINDS)}, not {kind!r}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}")
        if status == 200 and rollout_done(body):
            return
        time.sleep(0.1)
    raise SeedError(f"{kind.lower()} {namespace}/{name} did not become available within {timeout:.0f}s")


def seed_demo(
    platform_url: str, admin_token: str, kubeconfig: str | Path, platform_ca: str | None = None, wait: bool = True
) -> dict[str, Any]:
    """The demo world: namespace demo, Deployment payments-api (3 replicas), Secret payments-api-token."""
    service = seed_service(
        platform_url,
        admin_token,
        kubeconfig,
        namespace="demo",
        name="payments-api",
        replicas=3,
        expires_in_days=5,
        strategy="restart",
        platform_ca=platform_ca,
    )
    if wait:
        wait_available(kubeconfig, "demo", "payments-api")
    return service

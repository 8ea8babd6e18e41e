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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.sandbox.client import api

RELOAD_ANNOTATION = "sandbox.xapi.io/reload-interval"
TOKEN_MOUNT = "/var/run/secrets/xapi"


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
) -> dict[str, Any]:
    """Create one service; returns ids and names (and the token's fingerprint), never the token.

    ``template_annotations`` go on the pod template (the emulator's per-deployment timings,
    e.g. ``sandbox.xapi.io/pod-start-delay``); ``deployment_spec`` is merged over the
    Deployment's spec (strategy, progressDeadlineSeconds...).
    """
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
    manifest = deployment_manifest(namespace, name, secret, replicas, strategy, reload_interval, template_annotations)
    manifest["spec"].update(deployment_spec or {})
    cluster.ensure(f"/apis/apps/v1/namespaces/{namespace}/deployments", manifest)
    return {
        "namespace": namespace,
        "system_user_id": user["id"],
        "system_user_name": user_name,
        "expires_at": user["expires_at"],
        "secret": secret,
        "deployment": name,
        "token_fingerprint": hashlib.sha256(token.encode()).hexdigest()[:8],
    }


def wait_available(kubeconfig: str | Path, namespace: str, name: str, timeout: float = 60) -> None:
    """Wait until the Deployment's rollout is complete by the rules `kubectl rollout status` uses."""
    cluster = _cluster(kubeconfig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        if status == 200:
            spec, state = body["spec"], body.get("status") or {}
            wanted = spec.get("replicas", 1)
            if (
                state.get("observedGeneration", 0) >= body["metadata"].get("generation", 1)
                and state.get("updatedReplicas", 0) == wanted
                and state.get("replicas", 0) == wanted
                and state.get("availableReplicas", 0) == wanted
            ):
                return
        time.sleep(0.1)
    raise SeedError(f"deployment {namespace}/{name} did not become available within {timeout:.0f}s")


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

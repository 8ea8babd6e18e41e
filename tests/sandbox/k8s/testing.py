"""Test helpers for the emulator's contract tests (tests/integration/test_k8s_*.py).

The tests talk to "a cluster" through a kubeconfig: the emulator's by default, or a real
cluster's when ``XAPI_TEST_REAL_CLUSTER=1`` and ``KUBECONFIG`` are set. Anything that
needs the emulator's documented switches (``/_sandbox/...``: timings, faults, the
simulated workload) goes through :meth:`Kube.emulator`, which skips on a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.sandbox.seed import WORKLOAD_PLURALS, _load_kubeconfig, rollout_done, seed_service

REPO = Path(__file__).resolve().parents[3]
REAL_CLUSTER = os.environ.get("XAPI_TEST_REAL_CLUSTER") == "1"
KUBECTL_120 = REPO / ".cache" / "kubectl-1.20" / "usr" / "bin" / "kubectl"
# Pod timings for the tests' own Deployments (pod template annotations): sub-second rollouts.
FAST = {
    "sandbox.xapi.io/pod-start-delay": "0.2",
    "sandbox.xapi.io/pod-ready-delay": "0.2",
    "sandbox.xapi.io/termination-grace": "1.0",
    "sandbox.xapi.io/request-interval": "0.05",
}


class Kube:
    """One cluster reached through a kubeconfig, plus the platform sandbox its pods call."""

    def __init__(self, sandbox: Any, kubeconfig: str) -> None:
        self.sandbox = sandbox
        self.kubeconfig = kubeconfig
        self.real = REAL_CLUSTER
        config = _load_kubeconfig(Path(kubeconfig))
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server: str = cluster["server"]
        self.ca: str | bool = cluster.get("certificate-authority") or True
        self.token: str = user.get("token", "")
        self.session = requests.Session()
        self.created_namespaces: list[str] = []
        self.emulator_process: Emulator | None = None  # set for a cluster started by start_emulator

    # -- raw API -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        token: str | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}", "Accept": "application/json"}
        headers.update(kwargs.pop("headers", {}))
        data = None
        if body is not None:
            data = body if isinstance(body, bytes | str) else json.dumps(body)
            headers["Content-Type"] = content_type
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, self.server + path, data=data, headers=headers, verify=self.ca, **kwargs)

    def get(self, path: str) -> dict[str, Any]:
        response = self.request("GET", path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:300]}"
        return response.json()

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")

    def workload(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        """A Deployment, StatefulSet or DaemonSet."""
        return self.get(f"/apis/apps/v1/namespaces/{namespace}/{WORKLOAD_PLURALS[kind]}/{name}")

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        query = f"?labelSelector={requests.utils.quote(selector)}" if selector else ""
        return self.get(f"/api/v1/namespaces/{namespace}/pods{query}")["items"]

    # -- emulator switches ---------------------------------------------------------------

    def emulator(self, why: str) -> None:
        """Skip on a real cluster: this test needs the emulator's documented /_sandbox/ switches."""
        if self.real:
            pytest.skip(f"needs the emulator ({why}); not available on a real cluster")

    def control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        self.emulator(f"{method} {path}")
        response = self.request(method, path, body)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text[:300]}"
        return response.json()["data"]

    def pods_state(
        self, namespace: str, deployment: str | None = None, workload: str | None = None, kind: str | None = None
    ) -> list[dict[str, Any]]:
        """The emulator's view of the namespace's pods; optionally of one Deployment, or any workload/kind."""
        pods = self.control("GET", "/_sandbox/state")["pods"]
        return [
            p
            for p in pods
            if p["namespace"] == namespace
            and deployment in (None, p["deployment"])
            and workload in (None, p["workload"])
            and kind in (None, p["workload_kind"])
        ]

    # -- fixtures of the world -------------------------------------------------------------

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        response = self.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        assert response.status_code == 201, response.text
        self.created_namespaces.append(name)
        return name

    def seed(
        self,
        namespace: str,
        name: str = "payments-api",
        replicas: int = 3,
        strategy: str = "restart",
        annotations: dict[str, str] | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        self.emulator("its pods run the simulated workload")
        kinds = kwargs.get("kind", "Deployment")
        service = seed_service(
            platform_url=self.sandbox.url,
            admin_token=self.sandbox.admin_token,
            kubeconfig=self.kubeconfig,
            namespace=namespace,
            name=name,
            replicas=replicas,
            strategy=strategy,
            platform_ca=self.sandbox.ca_path,
            template_annotations={**FAST, **(annotations or {})},
            system_user_name=f"{namespace}-{name}",
            **kwargs,
        )
        if wait:
            for kind in [kinds] if isinstance(kinds, str) else kinds:
                self.wait_for(
                    lambda kind=kind: rollout_done(self.workload(namespace, kind, name)), 30, f"the seeded {kind}"
                )
        return service

    def cleanup(self) -> None:
        for name in self.created_namespaces:
            self.request("DELETE", f"/api/v1/namespaces/{name}")
        self.created_namespaces.clear()

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    # -- kubectl -------------------------------------------------------------------------

    def kubectl(
        self, version: str, *args: str, input: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        binary = kubectl_binary(version)
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "HOME": os.environ.get("HOME", "/tmp")}
        result = subprocess.run(
            [binary, *args], input=input, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)} -> {result.returncode}: {result.stderr.strip()}"
        return result


def kubectl_binary(version: str) -> str:
    if version == "1.20":
        if not KUBECTL_120.exists():
            pytest.fail(
                f"kubectl 1.20 is not at {KUBECTL_120}: run `bash hack/get-kubectl-1.20.sh` first "
                "(the Makefile's test target does).",
                pytrace=False,
            )
        return str(KUBECTL_120)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl on PATH: these contract tests drive the real kubectl", pytrace=False)
    return found


def rollout_complete(deployment: dict[str, Any]) -> bool:
    """The rules `kubectl rollout status` applies to a Deployment."""
    spec, status = deployment["spec"], deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return (
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
    )


def condition(deployment: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (deployment.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def restart_patch(value: str | None = None) -> dict[str, Any]:
    """What `kubectl rollout restart` sends: a pod-template annotation with a fresh value."""
    return {
        "spec": {
            "template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": value or f"{time.time():.6f}"}}
            }
        }
    }


@pytest.fixture(scope="session")
def kube(sandbox: Any) -> Any:
    """The cluster under test: the emulator of the session sandbox, or a real one (see module doc)."""
    kubeconfig = os.environ.get("KUBECONFIG") if REAL_CLUSTER else sandbox.kubeconfig
    if not kubeconfig:
        pytest.fail("XAPI_TEST_REAL_CLUSTER=1 needs KUBECONFIG", pytrace=False)
    target = Kube(sandbox, kubeconfig)
    yield target
    target.cleanup()


@dataclass
class Emulator:
    """A Kubernetes emulator process of a test's own (see :func:`start_emulator`)."""

    url: str
    kubeconfig: str
    admin_token: str
    ca_file: str
    state_dir: Path
    log: Path
    process: subprocess.Popen


@contextlib.contextmanager
def start_emulator(
    platform_url: str,
    state_dir: Path,
    *,
    platform_ca: str | None = None,
    context: str = "xapi-sandbox",
    args: tuple[str, ...] = (),
) -> Iterator[Emulator]:
    """Run one more emulator (another "cluster") whose pods call the given platform sandbox.

    Each instance has its own port, CA, admin token and objects, so several run side by side
    against one platform. ``context`` names its kubeconfig's context/cluster/user (give each
    cluster its own, so kubeconfigs merge); ``args`` are more command-line options
    (``--nodes 3``, ``--pod-start-delay 0.1``...). Stopped (SIGTERM, by its pid) on exit.
    """
    from tests.sandbox.client import wait_ready

    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir.parent / f"{state_dir.name}.log"
    command = [
        sys.executable,
        "-m",
        "tests.sandbox.k8s",
        "--state-dir",
        str(state_dir),
        "--platform-url",
        platform_url,
        "--context",
        context,
        *args,
    ]
    if platform_ca:
        command += ["--platform-ca", platform_ca]
    with log.open("wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=handle)
    try:
        ready = wait_ready(state_dir, timeout=20, process=process)
        yield Emulator(
            ready["url"], ready["kubeconfig"], ready["admin_token"], ready["ca_file"], state_dir, log, process
        )
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def second_cluster(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second emulator ("cluster-2", context ``xapi-sandbox-2``) whose pods call the session's platform.

    A :class:`Kube` like ``kube``: seed services in it with ``second_cluster.seed(...)``; its
    ``emulator_process`` is the :class:`Emulator` (url, kubeconfig, admin token, log).
    """
    if REAL_CLUSTER:
        pytest.skip("a second emulator needs the emulator; not available on a real cluster")
    directory = tmp_path_factory.mktemp("second-cluster")
    with start_emulator(
        sandbox.url, directory / "k8s", platform_ca=sandbox.ca_path, context="xapi-sandbox-2"
    ) as emulator:
        target = Kube(sandbox, emulator.kubeconfig)
        target.emulator_process = emulator
        yield target
        target.cleanup()

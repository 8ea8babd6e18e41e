"""The role's in-process Kubernetes reads and the drain's watch (plugins/plugin_utils/_k8s.py), on the emulator.

What the rotation_observe action relies on: a read answers as kubernetes.core's k8s lookup would
(the object, None for a 404, the list's items and its resourceVersion), and wait_for_change ends a
sleep early only for a change of one of the named pods, and never for a watch that is refused.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.k8s.__main__ import kubeconfig_text
from tests.sandbox.k8s.testing import kube  # noqa: F401  # pylint: disable=unused-import
from tests.unit.helpers import COLLECTIONS  # noqa: F401  # puts .collections on sys.path

# Imported once helpers has put .collections on sys.path (an import sorter would move a plain import).
k8s = importlib.import_module("ansible_collections.xapi.system_auth.plugins.plugin_utils._k8s")


@pytest.fixture(scope="module")
def world(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    namespace = kube.namespace("inproc")
    kube.seed(namespace, "payments-api", replicas=2)
    return {"namespace": namespace, "cluster": {"kubeconfig": kube.kubeconfig}, "kube": kube,
            "tmp": tmp_path_factory.mktemp("inproc")}


def _pod_names(world: dict[str, Any]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in world["kube"].pods(world["namespace"]))


def test_a_read_answers_as_the_k8s_lookup_does(world: dict[str, Any]) -> None:
    ns, cluster = world["namespace"], world["cluster"]
    secret = k8s.read(cluster, "Secret", "v1", ns, "payments-api-token")
    assert secret["metadata"]["name"] == "payments-api-token" and "token" in secret["data"]
    assert k8s.read(cluster, "Secret", "v1", ns, "no-such-secret") is None
    versions: dict = {}
    pods = k8s.read(cluster, "Pod", "v1", ns, versions=versions)
    assert sorted(p["metadata"]["name"] for p in pods) == _pod_names(world)
    assert versions[("Pod", ns)], versions
    assert k8s.read(cluster, "Deployment", "apps/v1", ns, "payments-api")["kind"] == "Deployment"
    # One client per cluster for the process: the second read did not build another.
    assert k8s.client_for(cluster) is k8s.client_for(dict(cluster))


def _delete_later(world: dict[str, Any], name: str, after: float) -> threading.Thread:
    def delete() -> None:
        time.sleep(after)
        response = world["kube"].request("DELETE", f"/api/v1/namespaces/{world['namespace']}/pods/{name}")
        assert response.status_code in (200, 202), response.text

    thread = threading.Thread(target=delete, daemon=True)
    thread.start()
    return thread


def _watch_of(world: dict[str, Any], names: list[str], cluster: dict | None = None) -> tuple:
    versions: dict = {}
    k8s.read(cluster or world["cluster"], "Pod", "v1", world["namespace"], versions=versions)
    return (cluster or world["cluster"], "Pod", "v1", world["namespace"], versions[("Pod", world["namespace"])],
            names)


def test_a_change_of_a_named_pod_ends_the_wait(world: dict[str, Any]) -> None:
    name = _pod_names(world)[0]
    watch = _watch_of(world, [name])
    deleter = _delete_later(world, name, 0.5)
    # True: an event of that pod came before the timeout (the whole 30 s would be False).
    assert k8s.wait_for_change([watch], 30) is True
    deleter.join(10)


def test_a_change_of_another_pod_lets_the_wait_run_its_course(world: dict[str, Any]) -> None:
    world["kube"].wait_for(lambda: len(_pod_names(world)) == 2, 30, "the replaced pod")
    watched, other = _pod_names(world)[:2]
    watch = _watch_of(world, [watched])
    deleter = _delete_later(world, other, 0.2)
    assert k8s.wait_for_change([watch], 2.5) is False
    deleter.join(10)


def test_a_refused_watch_only_lets_the_wait_poll(world: dict[str, Any]) -> None:
    """An identity that may list pods but not watch them: no early end, and no error."""
    cluster, ns = world["kube"], world["namespace"]
    cluster.emulator("POST /_sandbox/tokens issues the service account's token")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "list-only"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "list-only"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-only"},
               "subjects": [{"kind": "ServiceAccount", "name": "lister", "namespace": ns}]}
    for path, body in (("roles", role), ("rolebindings", binding)):
        response = cluster.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{path}", body)
        assert response.status_code == 201, response.text
    token = cluster.control("POST", "/_sandbox/tokens", {"user": f"system:serviceaccount:{ns}:lister"})["token"]
    kubeconfig = Path(world["tmp"]) / "lister"
    kubeconfig.write_text(kubeconfig_text(cluster.server, Path(cluster.ca), token, ns))
    lister = {"kubeconfig": str(kubeconfig)}

    cluster.wait_for(lambda: len(_pod_names(world)) == 2, 30, "the replaced pods")
    name = _pod_names(world)[0]
    watch = _watch_of(world, [name], cluster=lister)  # the list is allowed
    deleter = _delete_later(world, name, 0.2)
    assert k8s.wait_for_change([watch], 2.5) is False  # the pod went, but this identity could not watch it
    deleter.join(10)

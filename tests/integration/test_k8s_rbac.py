"""RBAC: a least-privilege identity can do exactly what its namespace's RoleBindings grant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sandbox.k8s.__main__ import kubeconfig_text
from tests.sandbox.k8s.testing import kube  # noqa: F401  # pylint: disable=unused-import

ROTATOR_RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["payments-api-token"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["payments-api"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["rotation-lock"],
        "verbs": ["get", "update"],
    },
]


@pytest.fixture(scope="module")
def rotator(kube, tmp_path_factory):  # noqa: F811
    """A namespace with the service, a Role/RoleBinding for its rotator, and that identity's token."""
    kube.emulator("POST /_sandbox/tokens issues the service account's token")
    namespace = kube.namespace("rbac")
    kube.seed(namespace, "payments-api", replicas=1)
    other = kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "unrelated"}, "stringData": {"password": "x"}},
    )
    assert other.status_code == 201
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "credential-rotator"},
        "rules": ROTATOR_RULES,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "credential-rotator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "credential-rotator"},
        "subjects": [{"kind": "ServiceAccount", "name": "rotator", "namespace": namespace}],
    }
    for path, body in (("roles", role), ("rolebindings", binding)):
        response = kube.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{path}", body)
        assert response.status_code == 201, response.text
    token = kube.control("POST", "/_sandbox/tokens", {"user": f"system:serviceaccount:{namespace}:rotator"})["token"]
    kubeconfig = tmp_path_factory.mktemp("rotator") / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text(kube.server, Path(kube.ca), token, namespace))
    return namespace, token, str(kubeconfig)


def _forbidden(response) -> str:
    assert response.status_code == 403, f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    assert body["kind"] == "Status" and body["reason"] == "Forbidden"
    return body["message"]


def test_the_role_grants_exactly_its_rules(kube, rotator):  # noqa: F811
    namespace, token = rotator[:2]
    base = f"/api/v1/namespaces/{namespace}"
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    assert kube.request("GET", f"{base}/secrets/payments-api-token", token=token).status_code == 200
    message = _forbidden(kube.request("GET", f"{base}/secrets/unrelated", token=token))
    assert message == (
        f'secrets "unrelated" is forbidden: User "system:serviceaccount:{namespace}:rotator" '
        f'cannot get resource "secrets" in API group "" in the namespace "{namespace}"'
    )
    _forbidden(kube.request("GET", f"{base}/secrets", token=token))
    _forbidden(kube.request("DELETE", f"{base}/secrets/payments-api-token", token=token))
    patched = kube.request(
        "PATCH",
        f"{base}/secrets/payments-api-token",
        {"metadata": {"annotations": {"x": "1"}}},
        content_type="application/merge-patch+json",
        token=token,
    )
    assert patched.status_code == 200

    assert kube.request("GET", f"{apps}/deployments/payments-api", token=token).status_code == 200
    _forbidden(kube.request("DELETE", f"{apps}/deployments/payments-api", token=token))
    _forbidden(kube.request("PUT", f"{apps}/deployments/payments-api/scale", {"spec": {"replicas": 5}}, token=token))
    assert kube.request("GET", f"{apps}/replicasets?labelSelector=app%3Dpayments-api", token=token).status_code == 200
    assert kube.request("GET", f"{base}/pods", token=token).status_code == 200
    _forbidden(kube.request("GET", f"{base}/pods/whatever", token=token))  # list/watch only, no get
    _forbidden(kube.request("GET", "/api/v1/namespaces/demo/pods", token=token))  # another namespace
    _forbidden(kube.request("GET", "/api/v1/pods", token=token))  # cluster scope
    _forbidden(kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": "nope"}}, token=token))

    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "rotation-lock"},
        "spec": {"holderIdentity": "run-1"},
    }
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    created = kube.request("POST", leases, lease, token=token)
    assert created.status_code == 201
    held = kube.request("GET", f"{leases}/rotation-lock", token=token).json()
    held["spec"]["holderIdentity"] = "run-2"
    assert kube.request("PUT", f"{leases}/rotation-lock", held, token=token).status_code == 200
    _forbidden(kube.request("DELETE", f"{leases}/rotation-lock", token=token))


def test_watch_with_a_name_field_selector_is_authorised_by_resource_names(kube, rotator):  # noqa: F811
    namespace, token = rotator[:2]
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    # kubectl rollout status lists and watches with fieldSelector=metadata.name=<deployment>.
    response = kube.request("GET", f"{path}?fieldSelector=metadata.name%3Dpayments-api", token=token)
    _forbidden(response)  # the Role grants get/patch on the Deployment, not list/watch


def test_authentication_and_controls(kube, rotator):  # noqa: F811
    token = rotator[1]
    for bad in ("", "not-a-token"):
        response = kube.request("GET", "/api/v1/namespaces", token=bad)
        assert response.status_code == 401 and response.json()["reason"] == "Unauthorized"
    assert kube.request("GET", "/apis", token=token).status_code == 200  # discovery is open to every identity
    _forbidden(kube.request("GET", "/_sandbox/state", token=token))


def test_kubectl_and_kubernetes_core_as_the_rotator(kube, rotator, run_playbook):  # noqa: F811
    namespace, kubeconfig = rotator[0], rotator[2]
    original = kube.kubeconfig
    try:
        kube.kubeconfig = kubeconfig
        got = kube.kubectl("path", "get", "secret", "payments-api-token", "-o", "name")
        assert got.stdout.strip() == "secret/payments-api-token"
        denied = kube.kubectl("1.20", "get", "secrets", check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr
        assert 'cannot list resource "secrets"' in denied.stderr
    finally:
        kube.kubeconfig = original
    playbook = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - kubernetes.core.k8s_info:
        kind: Secret
        name: payments-api-token
        namespace: {namespace}
      register: allowed
    - kubernetes.core.k8s:
        state: patched
        kind: Deployment
        name: payments-api
        namespace: {namespace}
        definition:
          spec: {{template: {{metadata: {{annotations: {{xapi.io/rotation: rbac-1}}}}}}}}
      register: restarted
    - debug:
        msg: "RESULT>>{{{{ result | to_json }}}}<<RESULT"
      vars:
        result: {{found: "{{{{ allowed.resources | length }}}}", restarted: "{{{{ restarted.changed }}}}"}}
    - kubernetes.core.k8s_info:
        kind: Secret
        namespace: {namespace}
"""
    result = run_playbook(playbook, env={"KUBECONFIG": kubeconfig})
    text = result.stdout
    facts = json.loads(text[text.index("RESULT>>") + 8 : text.index("<<RESULT")])
    assert facts == {"found": 1, "restarted": True}
    assert result.returncode != 0 and "Forbidden" in text

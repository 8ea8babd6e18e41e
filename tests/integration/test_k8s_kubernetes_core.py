"""Contract tests: the stock kubernetes.core modules (k8s, k8s_info) through ansible-playbook."""

from __future__ import annotations

import json

import pytest

from tests.sandbox.k8s.testing import kube, rollout_complete  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.real_cluster


def _facts(result) -> dict:
    """The JSON the playbook printed between the RESULT markers (one debug task per playbook)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    text = result.stdout
    return json.loads(text[text.index("RESULT>>") + len("RESULT>>") : text.index("<<RESULT")])


def test_k8s_module_create_patch_apply_and_info(kube, run_playbook):  # noqa: F811
    namespace = kube.namespace("kcore")
    kube.seed(namespace, "orders-api", replicas=2)
    playbook = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ns: {namespace}
  tasks:
    - name: create a Secret
      kubernetes.core.k8s:
        definition:
          apiVersion: v1
          kind: Secret
          metadata: {{name: kcore-secret, namespace: "{{{{ ns }}}}"}}
          stringData: {{token: first}}
      register: created
    - name: the same Secret again changes nothing
      kubernetes.core.k8s:
        definition:
          apiVersion: v1
          kind: Secret
          metadata: {{name: kcore-secret, namespace: "{{{{ ns }}}}"}}
          stringData: {{token: first}}
      register: unchanged
    - name: state patched (strategic merge) of one key
      kubernetes.core.k8s:
        state: patched
        kind: Secret
        name: kcore-secret
        namespace: "{{{{ ns }}}}"
        definition:
          data: {{pending_token: "{{{{ 'second' | b64encode }}}}"}}
      register: patched
    - name: the same patch again is a no-op
      kubernetes.core.k8s:
        state: patched
        kind: Secret
        name: kcore-secret
        namespace: "{{{{ ns }}}}"
        definition:
          data: {{pending_token: "{{{{ 'second' | b64encode }}}}"}}
      register: patched_again
    - name: check mode previews a change without making it
      kubernetes.core.k8s:
        state: patched
        kind: Secret
        name: kcore-secret
        namespace: "{{{{ ns }}}}"
        definition:
          data: {{token: "{{{{ 'third' | b64encode }}}}"}}
      check_mode: true
      register: previewed
    - name: apply creates, then leaves alone, then updates
      kubernetes.core.k8s:
        apply: true
        definition:
          apiVersion: v1
          kind: ConfigMap
          metadata: {{name: kcore-cm, namespace: "{{{{ ns }}}}"}}
          data: {{a: "{{{{ item }}}}"}}
      loop: ["1", "1", "2"]
      register: applied
    - name: restart the Deployment through its pod template and wait
      kubernetes.core.k8s:
        state: patched
        kind: Deployment
        name: orders-api
        namespace: "{{{{ ns }}}}"
        definition:
          spec:
            template:
              metadata:
                annotations:
                  xapi.io/rotation: "kcore-1"
        wait: true
        wait_sleep: 1
        wait_timeout: 60
      register: restarted
    - name: pods of the service
      kubernetes.core.k8s_info:
        kind: Pod
        namespace: "{{{{ ns }}}}"
        label_selectors: ["app=orders-api"]
      register: pods
    - name: ReplicaSets of the service
      kubernetes.core.k8s_info:
        api_version: apps/v1
        kind: ReplicaSet
        namespace: "{{{{ ns }}}}"
        label_selectors: ["app=orders-api"]
      register: replicasets
    - name: a Secret that does not exist
      kubernetes.core.k8s_info:
        kind: Secret
        name: nope
        namespace: "{{{{ ns }}}}"
      register: missing
    - name: Lease create for a lock
      kubernetes.core.k8s:
        definition:
          apiVersion: coordination.k8s.io/v1
          kind: Lease
          metadata: {{name: kcore-lock, namespace: "{{{{ ns }}}}"}}
          spec: {{holderIdentity: run-1, leaseDurationSeconds: 30}}
      register: lease
    - debug:
        msg: "RESULT>>{{{{ result | to_json }}}}<<RESULT"
      vars:
        result:
          created: "{{{{ created.changed }}}}"
          unchanged: "{{{{ unchanged.changed }}}}"
          patched: "{{{{ patched.changed }}}}"
          patched_keys: "{{{{ patched.result.data.keys() | list | sort }}}}"
          patched_again: "{{{{ patched_again.changed }}}}"
          patched_rv: "{{{{ patched.result.metadata.resourceVersion }}}}"
          patched_again_rv: "{{{{ patched_again.result.metadata.resourceVersion }}}}"
          previewed: "{{{{ previewed.changed }}}}"
          applied: "{{{{ applied.results | map(attribute='changed') | list }}}}"
          restarted: "{{{{ restarted.changed }}}}"
          restarted_generation: "{{{{ restarted.result.metadata.generation }}}}"
          restarted_observed: "{{{{ restarted.result.status.observedGeneration }}}}"
          restarted_available: "{{{{ restarted.result.status.availableReplicas }}}}"
          pods: "{{{{ pods.resources | length }}}}"
          replicasets: "{{{{ replicasets.resources | length }}}}"
          missing: "{{{{ missing.resources | length }}}}"
          lease_holder: "{{{{ lease.result.spec.holderIdentity }}}}"
"""
    result = run_playbook(playbook, env={"KUBECONFIG": kube.kubeconfig})
    facts = _facts(result)
    # kubernetes.core warns when a no-op write still bumps resourceVersion; a real server never does.
    assert "may not be idempotent" not in result.stdout + result.stderr
    assert facts["created"] is True and facts["unchanged"] is False
    assert facts["patched"] is True and facts["patched_keys"] == ["pending_token", "token"]
    assert facts["patched_again"] is False and facts["patched_again_rv"] == facts["patched_rv"]
    assert facts["previewed"] is True
    assert facts["applied"] == [True, False, True]
    assert facts["restarted"] is True
    assert facts["restarted_observed"] == facts["restarted_generation"] and facts["restarted_available"] == 2
    assert facts["pods"] >= 2 and facts["replicasets"] == 2 and facts["missing"] == 0
    assert facts["lease_holder"] == "run-1"

    secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/kcore-secret")
    assert secret["metadata"]["resourceVersion"] == facts["patched_rv"], "check mode must not write"
    assert rollout_complete(kube.deployment(namespace, "orders-api"))


def test_k8s_module_reports_a_server_refusal_clearly(kube, run_playbook):  # noqa: F811
    namespace = kube.namespace("kcore-err")
    playbook = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - kubernetes.core.k8s:
        definition:
          apiVersion: apps/v1
          kind: Deployment
          metadata: {{name: broken, namespace: {namespace}}}
          spec:
            selector: {{matchLabels: {{app: a}}}}
            template:
              metadata: {{labels: {{app: b}}}}
              spec: {{containers: [{{name: c, image: i}}]}}
"""
    result = run_playbook(playbook, env={"KUBECONFIG": kube.kubeconfig})
    assert result.returncode != 0
    assert "Unprocessable Entity" in result.stdout or "422" in result.stdout
    assert "selector" in result.stdout and "does not match template" in result.stdout
    assert kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/broken").status_code == 404

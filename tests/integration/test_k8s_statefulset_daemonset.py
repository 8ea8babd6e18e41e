"""StatefulSets and DaemonSets in the emulator: kubectl's rollouts, partitions, OnDelete, kubernetes.core.

Every test seeds its own service (namespace of its own, fast pod timings) with
``seed_service(kind=...)``. kubectl 1.20 comes from `bash hack/get-kubectl-1.20.sh`; without
it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.sandbox.k8s.testing import kube, restart_patch  # noqa: F401  # pylint: disable=unused-import
from tests.sandbox.seed import rollout_done

pytestmark = pytest.mark.real_cluster
VERSIONS = ["path", "1.20"]
REVISION = "controller-revision-hash"
RESTARTED = "kubectl.kubernetes.io/restartedAt"
# A StatefulSet replaces its pods one after the other, each only once the old one is gone: short grace.
QUICK = {"sandbox.xapi.io/termination-grace": "0.3"}


def _patch(kube, namespace: str, plural: str, name: str, body: dict) -> dict:  # noqa: F811
    response = kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/{plural}/{name}",
        body,
        content_type="application/strategic-merge-patch+json",
    )
    assert response.status_code == 200, response.text
    return response.json()


def _pods(kube, namespace: str, name: str) -> list[dict]:  # noqa: F811
    return sorted(kube.pods(namespace, f"app={name}"), key=lambda p: p["metadata"]["name"])


@pytest.mark.parametrize("version", VERSIONS)
def test_statefulset_rollout_restart_and_status(kube, version):  # noqa: F811
    namespace = kube.namespace("sts-kubectl")
    kube.seed(namespace, "ledger", replicas=3, kind="StatefulSet", annotations=QUICK)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, namespace, "ledger")}
    assert sorted(before) == ["ledger-0", "ledger-1", "ledger-2"]

    kube.kubectl(version, "-n", namespace, "rollout", "restart", "statefulset/ledger")
    status = kube.kubectl(version, "-n", namespace, "rollout", "status", "statefulset/ledger", "--timeout=60s")
    assert "partitioned roll out complete: 3 new pods have been updated" in status.stdout, status.stdout

    sts = kube.workload(namespace, "StatefulSet", "ledger")
    state = sts["status"]
    assert state["observedGeneration"] == sts["metadata"]["generation"] == 2
    assert state["currentRevision"] == state["updateRevision"]
    assert (state["replicas"], state["readyReplicas"], state["updatedReplicas"], state["currentReplicas"]) == (3,) * 4
    assert state["availableReplicas"] == 3
    pods = _pods(kube, namespace, "ledger")
    assert [p["metadata"]["name"] for p in pods] == ["ledger-0", "ledger-1", "ledger-2"]
    for pod in pods:
        assert pod["metadata"]["uid"] != before[pod["metadata"]["name"]]
        assert pod["metadata"]["labels"][REVISION] == state["updateRevision"]
        assert RESTARTED in pod["metadata"]["annotations"]
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "StatefulSet",
            "ledger",
            sts["metadata"]["uid"],
            True,
        )
    table = kube.kubectl(version, "-n", namespace, "get", "statefulsets").stdout
    assert table.split("\n")[1].split()[:2] == ["ledger", "3/3"]


@pytest.mark.parametrize("version", VERSIONS)
def test_daemonset_rollout_restart_and_status(kube, version):  # noqa: F811
    namespace = kube.namespace("ds-kubectl")
    kube.seed(namespace, "agent", kind="DaemonSet")
    nodes = kube.control("GET", "/_sandbox/config")["nodes"]
    before = {p["metadata"]["uid"] for p in _pods(kube, namespace, "agent")}
    assert len(before) == nodes

    kube.kubectl(version, "-n", namespace, "rollout", "restart", "daemonset/agent")
    status = kube.kubectl(version, "-n", namespace, "rollout", "status", "daemonset/agent", "--timeout=60s")
    assert 'daemon set "agent" successfully rolled out' in status.stdout, status.stdout

    ds = kube.workload(namespace, "DaemonSet", "agent")
    state = ds["status"]
    assert state["observedGeneration"] == ds["metadata"]["generation"] == 2
    assert state["desiredNumberScheduled"] == state["updatedNumberScheduled"] == state["numberAvailable"] == nodes
    kube.wait_for(lambda: len(_pods(kube, namespace, "agent")) == nodes, 10, "the old pods to go")
    pods = _pods(kube, namespace, "agent")
    assert len({p["spec"]["nodeName"] for p in pods}) == nodes  # one per node
    assert not before & {p["metadata"]["uid"] for p in pods}
    assert len({p["metadata"]["labels"][REVISION] for p in pods}) == 1
    for pod in pods:
        assert RESTARTED in pod["metadata"]["annotations"]
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
    table = kube.kubectl(version, "-n", namespace, "get", "daemonsets").stdout
    assert table.split("\n")[1].split()[:6] == ["agent", *[str(nodes)] * 5]


def test_statefulset_replaces_one_pod_at_a_time_from_the_highest_ordinal(kube):  # noqa: F811
    kube.emulator("the simulated pods' readiness in /_sandbox/state")
    namespace = kube.namespace("sts-order")
    kube.seed(namespace, "ledger", replicas=3, kind="StatefulSet", annotations=QUICK)
    _patch(kube, namespace, "statefulsets", "ledger", restart_patch())
    new_revision = kube.wait_for(
        lambda: (
            (s := kube.workload(namespace, "StatefulSet", "ledger")["status"])["observedGeneration"] == 2
            and s["updateRevision"]
        ),
        5,
        "the new revision",
    )
    order: list[str] = []
    worst_unready = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pod in _pods(kube, namespace, "ledger"):
            name = pod["metadata"]["name"]
            if pod["metadata"]["labels"][REVISION] == new_revision and name not in order:
                order.append(name)
        state = kube.pods_state(namespace, workload="ledger", kind="StatefulSet")
        worst_unready = max(worst_unready, 3 - sum(1 for p in state if p["ready"] and not p["terminating"]))
        if rollout_done(kube.workload(namespace, "StatefulSet", "ledger")) and len(order) == 3:
            break
        time.sleep(0.03)
    assert order == ["ledger-2", "ledger-1", "ledger-0"]
    assert worst_unready == 1  # never more than one pod away at a time


def test_statefulset_partition_updates_only_the_ordinals_at_or_above_it(kube):  # noqa: F811
    namespace = kube.namespace("sts-partition")
    kube.seed(
        namespace,
        "ledger",
        replicas=3,
        kind="StatefulSet",
        annotations=QUICK,
        workload_spec={"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}},
    )
    old_revision = kube.workload(namespace, "StatefulSet", "ledger")["status"]["currentRevision"]
    _patch(kube, namespace, "statefulsets", "ledger", restart_patch())
    status = kube.kubectl("path", "-n", namespace, "rollout", "status", "statefulset/ledger", "--timeout=60s")
    assert "partitioned roll out complete: 1 new pods have been updated" in status.stdout, status.stdout
    state = kube.workload(namespace, "StatefulSet", "ledger")["status"]
    assert state["currentRevision"] == old_revision != state["updateRevision"]
    assert (state["updatedReplicas"], state["currentReplicas"], state["readyReplicas"]) == (1, 2, 3)
    time.sleep(1.0)  # nothing more happens below the partition
    revisions = {p["metadata"]["name"]: p["metadata"]["labels"][REVISION] for p in _pods(kube, namespace, "ledger")}
    assert revisions == {"ledger-0": old_revision, "ledger-1": old_revision, "ledger-2": state["updateRevision"]}

    # Lowering the partition to 0 finishes the rollout, and the current revision moves on.
    _patch(kube, namespace, "statefulsets", "ledger", {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})
    kube.kubectl("1.20", "-n", namespace, "rollout", "status", "statefulset/ledger", "--timeout=60s")
    kube.wait_for(
        lambda: (
            (s := kube.workload(namespace, "StatefulSet", "ledger")["status"])["currentRevision"] == s["updateRevision"]
        ),
        10,
        "the current revision to move on",
    )


def test_on_delete_strategies_replace_nothing_until_a_pod_is_deleted(kube):  # noqa: F811
    namespace = kube.namespace("ondelete")
    on_delete = {"updateStrategy": {"type": "OnDelete"}}
    kube.seed(
        namespace, "ledger", replicas=2, kind=["StatefulSet", "DaemonSet"], annotations=QUICK, workload_spec=on_delete
    )
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, namespace, "ledger")}
    _patch(kube, namespace, "statefulsets", "ledger", restart_patch())
    _patch(kube, namespace, "daemonsets", "ledger", restart_patch())
    kube.wait_for(
        lambda: kube.workload(namespace, "DaemonSet", "ledger")["status"]["observedGeneration"] == 2,
        5,
        "the DaemonSet's new generation",
    )
    time.sleep(1.0)
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, namespace, "ledger")} == before
    sts = kube.workload(namespace, "StatefulSet", "ledger")["status"]
    assert sts["observedGeneration"] == 2 and sts["currentRevision"] != sts["updateRevision"]
    assert "updatedReplicas" not in sts and sts["currentReplicas"] == 2
    ds = kube.workload(namespace, "DaemonSet", "ledger")["status"]
    assert "updatedNumberScheduled" not in ds and ds["numberReady"] == ds["desiredNumberScheduled"]
    refused = kube.kubectl("path", "-n", namespace, "rollout", "status", "daemonset/ledger", check=False)
    assert refused.returncode != 0 and "only available for RollingUpdate strategy type" in refused.stderr

    # Deleting a pod is what rolls it: its replacement has the new template.
    response = kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/ledger-1")
    assert response.status_code == 200, response.text

    def replaced() -> dict | None:
        pods = {p["metadata"]["name"]: p for p in _pods(kube, namespace, "ledger")}
        pod = pods.get("ledger-1")
        fresh = pod is not None and pod["metadata"]["uid"] != before["ledger-1"]
        return pod if fresh and not pod["metadata"].get("deletionTimestamp") else None

    pod = kube.wait_for(replaced, 15, "ledger-1's replacement")
    assert RESTARTED in pod["metadata"]["annotations"]
    assert (
        pod["metadata"]["labels"][REVISION]
        == kube.workload(namespace, "StatefulSet", "ledger")["status"]["updateRevision"]
    )
    untouched = {p["metadata"]["name"]: p["metadata"]["uid"] for p in _pods(kube, namespace, "ledger")}
    assert untouched["ledger-0"] == before["ledger-0"]


def test_never_ready_fault_per_statefulset_and_daemonset(kube):  # noqa: F811
    kube.emulator("the never_ready fault switch")
    namespace = kube.namespace("sts-fault")
    kube.seed(namespace, "ledger", replicas=2, kind=["StatefulSet", "DaemonSet"], annotations=QUICK)
    fault = {"namespace": namespace, "kind": "StatefulSet", "workload": "ledger", "never_ready": True}
    kube.control("POST", "/_sandbox/faults", fault)
    try:
        _patch(kube, namespace, "statefulsets", "ledger", restart_patch())
        _patch(kube, namespace, "daemonsets", "ledger", restart_patch())
        stuck = kube.kubectl(
            "path", "-n", namespace, "rollout", "status", "statefulset/ledger", "--timeout=3s", check=False
        )
        assert stuck.returncode != 0 and "timed out waiting for the condition" in stuck.stderr
        # Only the StatefulSet is stuck: its first replaced pod never becomes ready, the rest wait.
        kube.kubectl("1.20", "-n", namespace, "rollout", "status", "daemonset/ledger", "--timeout=30s")
        state = kube.workload(namespace, "StatefulSet", "ledger")["status"]
        assert state.get("updatedReplicas") == 1 and state["readyReplicas"] == 1
    finally:
        kube.control("DELETE", "/_sandbox/faults")
    kube.kubectl("path", "-n", namespace, "rollout", "status", "statefulset/ledger", "--timeout=30s")


def test_kubernetes_core_patches_and_reads_them(kube, run_playbook):  # noqa: F811
    namespace = kube.namespace("kcore-sts")
    kube.seed(namespace, "ledger", replicas=2, kind=["StatefulSet", "DaemonSet"], annotations=QUICK)
    playbook = f"""
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: patch the StatefulSet's pod template
      kubernetes.core.k8s:
        state: patched
        kind: StatefulSet
        api_version: apps/v1
        name: ledger
        namespace: {namespace}
        definition:
          spec: {{template: {{metadata: {{annotations: {{example.com/rotated: "1"}}}}}}}}
        wait: true
        wait_sleep: 1
        wait_timeout: 60
      register: sts
    - name: patch the DaemonSet's pod template
      kubernetes.core.k8s:
        state: patched
        kind: DaemonSet
        api_version: apps/v1
        name: ledger
        namespace: {namespace}
        definition:
          spec: {{template: {{metadata: {{annotations: {{example.com/rotated: "1"}}}}}}}}
        wait: true
        wait_sleep: 1
        wait_timeout: 60
      register: ds
    - name: read them back
      kubernetes.core.k8s_info:
        kind: "{{{{ item }}}}"
        api_version: apps/v1
        namespace: {namespace}
        label_selectors: [app=ledger]
      loop: [StatefulSet, DaemonSet]
      register: info
    - name: the pods
      kubernetes.core.k8s_info:
        kind: Pod
        namespace: {namespace}
        label_selectors: [app=ledger]
      register: pods
    - debug:
        msg: "RESULT>>{{{{ {{'sts': sts.changed, 'ds': ds.changed,
          'kinds': info.results | map(attribute='resources') | map('first') | map(attribute='kind') | list,
          'status': info.results | map(attribute='resources') | map('first') | map(attribute='status') | list,
          'pods': pods.resources | map(attribute='metadata') | list}} | to_json }}}}<<RESULT"
"""
    result = run_playbook(playbook)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    text = result.stdout
    facts = json.loads(text[text.index("RESULT>>") + len("RESULT>>") : text.index("<<RESULT")])
    assert facts["sts"] and facts["ds"]
    assert facts["kinds"] == ["StatefulSet", "DaemonSet"]
    sts_status, ds_status = facts["status"]
    assert sts_status["updatedReplicas"] == 2 and sts_status["currentRevision"] == sts_status["updateRevision"]
    assert ds_status["updatedNumberScheduled"] == ds_status["desiredNumberScheduled"]
    live = [m for m in facts["pods"] if not m.get("deletionTimestamp")]
    assert {m["ownerReferences"][0]["kind"] for m in live} == {"StatefulSet", "DaemonSet"}
    rotated = [m for m in live if (m.get("annotations") or {}).get("example.com/rotated") == "1"]
    assert len(rotated) >= 3

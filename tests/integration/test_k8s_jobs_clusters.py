"""Jobs, CronJob-made Jobs and bare pods in the emulator, and a second emulator against the same platform.

Job pods read the token like any other pod (env, envFrom, a Secret or projected volume),
call the platform while they run and end Completed after ``sandbox.xapi.io/job-duration``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.sandbox.k8s.testing import FAST, REPO, kube, second_cluster  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.real_cluster
JOB_ANNOTATIONS = {**FAST, "sandbox.xapi.io/job-duration": "1.0"}


def _container(source: str, secret: str) -> tuple[dict, list[dict]]:
    """A container taking the token from ``secret`` as ``source``, and the pod's volumes."""
    container: dict = {"name": "app", "image": "registry.example/xapi/report:1.0"}
    volumes: list[dict] = []
    if source == "env":
        container["env"] = [{"name": "XAPI_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}]
    elif source == "envFrom":
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    else:
        container["volumeMounts"] = [{"name": "token", "mountPath": "/var/run/secrets/xapi", "readOnly": True}]
        if source == "volume":
            volumes = [{"name": "token", "secret": {"secretName": secret}}]
        else:
            volumes = [{"name": "token", "projected": {"sources": [{"secret": {"name": secret}}]}}]
    return container, volumes


def _job(name: str, source: str, secret: str) -> dict:
    container, volumes = _container(source, secret)
    spec: dict = {"restartPolicy": "Never", "containers": [container]}
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "report"}},
        "spec": {"template": {"metadata": {"annotations": JOB_ANNOTATIONS}, "spec": spec}},
    }


def _complete(job: dict) -> bool:
    return any(c["type"] == "Complete" and c["status"] == "True" for c in job.get("status", {}).get("conditions", []))


def test_job_pods_read_the_secret_call_the_platform_and_complete(kube, sandbox):  # noqa: F811
    kube.emulator("the simulated workload")
    namespace = kube.namespace("jobs")
    service = kube.seed(namespace, "report", replicas=0)  # the system user and its Secret; no pods
    sources = ["env", "envFrom", "volume", "projected"]
    for source in sources:
        body = _job(f"report-{source.lower()}", source, service["secret"])
        response = kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body)
        assert response.status_code == 201, response.text
        created = response.json()
        uid = created["metadata"]["uid"]
        assert created["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        assert created["spec"]["template"]["metadata"]["labels"]["job-name"] == created["metadata"]["name"]

    jobs_path = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    kube.wait_for(lambda: all(_complete(j) for j in kube.get(jobs_path)["items"]), 20, "the Jobs to complete")
    for job in kube.get(jobs_path)["items"]:
        assert job["status"]["succeeded"] == 1 and "active" not in job["status"] and job["status"]["completionTime"]
        pods = kube.pods(namespace, f"batch.kubernetes.io/job-name={job['metadata']['name']}")
        assert len(pods) == 1, pods
        pod = pods[0]
        assert pod["status"]["phase"] == "Succeeded"
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", job["metadata"]["name"], job["metadata"]["uid"])

    state = {p["name"]: p for p in kube.pods_state(namespace, kind="Job")}
    assert sorted(p["token_source"] for p in state.values()) == sorted(sources)
    for pod in state.values():
        assert pod["owner_kind"] == "Job" and pod["workload"] == pod["owner_name"]
        assert pod["finished"] and not pod["ready"]
        assert pod["token_fingerprint"] == service["token_fingerprint"]
        assert pod["requests"].get("200", 0) >= 3 and set(pod["requests"]) == {"200"}
    # A completed pod calls no more.
    calls = sandbox.state()["requests"]["by_user"][service["system_user_id"]]
    time.sleep(0.5)
    assert sandbox.state()["requests"]["by_user"][service["system_user_id"]] == calls
    table = kube.kubectl("path", "-n", namespace, "get", "pods").stdout
    assert all("Completed" in line for line in table.splitlines()[1:]), table


def test_cronjob_run_makes_a_job_it_owns(kube):  # noqa: F811
    kube.emulator("the /_sandbox/cronjobs/run switch")
    namespace = kube.namespace("cron")
    service = kube.seed(namespace, "nightly", replicas=0)
    job = _job("unused", "env", service["secret"])
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": job["spec"]}},
    }
    response = kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/cronjobs", cronjob)
    assert response.status_code == 201, response.text
    made = kube.control("POST", "/_sandbox/cronjobs/run", {"namespace": namespace, "name": "nightly"})
    assert made["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert made["metadata"]["name"].startswith("nightly-")

    def pod_state() -> dict | None:
        pods = [p for p in kube.pods_state(namespace, kind="CronJob") if p["finished"]]
        return pods[0] if pods else None

    pod = kube.wait_for(pod_state, 20, "the CronJob's Job to finish")
    assert (pod["owner_kind"], pod["owner_name"], pod["workload"]) == ("Job", made["metadata"]["name"], "nightly")
    assert pod["token_fingerprint"] == service["token_fingerprint"] and pod["requests"].get("200", 0) > 0
    status = kube.wait_for(
        lambda: (
            (s := kube.get(f"/apis/batch/v1/namespaces/{namespace}/cronjobs/nightly")["status"]).get(
                "lastSuccessfulTime"
            )
            and s
        ),
        10,
        "the CronJob's status",
    )
    assert status["lastScheduleTime"] and "active" not in status
    listed = kube.kubectl("1.20", "-n", namespace, "get", "cronjobs,jobs").stdout
    assert "nightly" in listed and "1/1" in listed, listed

    # Deleting the CronJob takes its Jobs and their pods along (background garbage collection).
    assert kube.request("DELETE", f"/apis/batch/v1/namespaces/{namespace}/cronjobs/nightly").status_code == 200
    kube.wait_for(lambda: not kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"], 10, "the Job to go")
    kube.wait_for(lambda: not kube.pods(namespace, "job-name"), 10, "the Job's pod to go")


def test_bare_pods_for_the_admin_and_rbac_for_everyone_else(kube):  # noqa: F811
    kube.emulator("the simulated workload and /_sandbox/tokens")
    namespace = kube.namespace("bare")
    service = kube.seed(namespace, "probe", replicas=0)
    container, _ = _container("env", service["secret"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}, "annotations": FAST},
        "spec": {"containers": [container]},
        "status": {"phase": "Running"},  # a client's status is not the kubelet's: ignored
    }
    response = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert response.status_code == 201, response.text
    assert response.json()["status"]["phase"] == "Pending"
    running = kube.wait_for(
        lambda: next((p for p in kube.pods_state(namespace) if p["name"] == "probe" and p["ready"]), None),
        10,
        "the bare pod to be ready",
    )
    assert running["owner_kind"] == "" and running["token_fingerprint"] == service["token_fingerprint"]
    kube.wait_for(
        lambda: next(p for p in kube.pods_state(namespace) if p["name"] == "probe")["requests"].get("200"),
        5,
        "its calls",
    )
    assert "ownerReferences" not in kube.get(f"/api/v1/namespaces/{namespace}/pods/probe")["metadata"]

    user = f"system:serviceaccount:{namespace}:deployer"
    token = kube.control("POST", "/_sandbox/tokens", {"user": user})["token"]
    other = {**pod, "metadata": {"name": "other"}}
    denied = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", other, token=token)
    assert denied.status_code == 403, denied.text
    assert f'User "{user}" cannot create resource "pods"' in denied.json()["message"]
    denied = kube.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", _job("j", "env", "x"), token=token)
    assert denied.status_code == 403
    role = {"metadata": {"name": "pods"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]}
    binding = {
        "metadata": {"name": "pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": namespace}],
    }
    for plural, body in (("roles", role), ("rolebindings", binding)):
        path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}"
        assert kube.request("POST", path, body).status_code == 201
    allowed = kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", other, token=token)
    assert allowed.status_code == 201, allowed.text


def test_a_second_cluster_beside_the_first_against_one_platform(kube, second_cluster, sandbox):  # noqa: F811
    first = kube.namespace("cluster1")
    second = "cluster2"  # its own cluster: the same namespace name could exist in both
    one = kube.seed(first, "payments-api", replicas=1)
    two = second_cluster.seed(second, "payments-api", replicas=1, kind=["Deployment", "DaemonSet"])
    assert second_cluster.server != kube.server
    kube.wait_for(
        lambda: all(sandbox.state()["requests"]["by_user"].get(s["system_user_id"], {}).get("200") for s in (one, two)),
        10,
        "calls from both clusters",
    )
    pods_two = second_cluster.pods_state(second)
    assert {p["workload_kind"] for p in pods_two} == {"Deployment", "DaemonSet"}
    assert not [p for p in kube.control("GET", "/_sandbox/state")["pods"] if p["namespace"] == second]

    # The second kubeconfig has its own names, so both merge into one KUBECONFIG.
    merged = f"{kube.kubeconfig}{os.pathsep}{second_cluster.kubeconfig}"
    env = {**os.environ, "KUBECONFIG": merged}
    contexts = subprocess.run(
        ["kubectl", "config", "get-contexts", "-o", "name"], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert sorted(contexts) == ["xapi-sandbox", "xapi-sandbox-2"]
    got = subprocess.run(
        ["kubectl", "--context", "xapi-sandbox-2", "-n", second, "get", "daemonsets", "-o", "name"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert got.stdout.split() == ["daemonset.apps/payments-api"]

    # Its node count is its own: three nodes, three DaemonSet pods.
    second_cluster.control("POST", "/_sandbox/config", {"nodes": 3})
    try:
        second_cluster.wait_for(
            lambda: len([p for p in second_cluster.pods_state(second, kind="DaemonSet") if p["ready"]]) == 3,
            10,
            "a pod on the third node",
        )
        nodes = {p["node"] for p in second_cluster.pods_state(second, kind="DaemonSet")}
        assert len(nodes) == 3
        assert kube.control("GET", "/_sandbox/config")["nodes"] == 2
    finally:
        second_cluster.control("POST", "/_sandbox/config", {"nodes": 2})


def test_two_sandboxes_run_side_by_side(kube, tmp_path):  # noqa: F811
    kube.emulator("the sandbox launcher")
    directory = tmp_path / "other"
    command = [sys.executable, "-m", "tests.sandbox", "up", "--dir", str(directory)]
    result = subprocess.run(
        [*command, "--platform-port", "0", "--k8s-port", "0", "--no-seed"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert result.returncode == 0, result.stderr
        env = dict(line[len("export ") :].split("=", 1) for line in (directory / "env").read_text().splitlines()[1:])
        assert env["KUBECONFIG"] != kube.kubeconfig
        ready = json.loads((directory / "k8s" / "ready.json").read_text())
        assert ready["url"] != kube.server
        answer = subprocess.run(
            ["kubectl", "get", "namespaces", "-o", "name"],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
            check=True,
        )
        assert "namespace/demo" not in answer.stdout.split()  # --no-seed: an empty cluster of its own
        assert kube.get("/api/v1/namespaces/demo")["metadata"]["name"] == "demo"  # the first is untouched
    finally:
        down = [sys.executable, "-m", "tests.sandbox", "down", "--dir", str(directory)]
        subprocess.run(down, cwd=REPO, capture_output=True, timeout=60)

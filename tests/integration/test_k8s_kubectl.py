"""Contract tests: kubectl (the one on PATH, and Debian's 1.20) against the cluster.

kubectl 1.20 comes from `bash hack/get-kubectl-1.20.sh`; without it these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.sandbox.k8s.testing import kube, kubectl_binary, rollout_complete  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.real_cluster
VERSIONS = ["path", "1.20"]


@pytest.fixture(scope="module")
def service(kube):  # noqa: F811
    namespace = kube.namespace("kubectl")
    kube.seed(namespace, "payments-api", replicas=3)
    return namespace


@pytest.mark.parametrize("version", VERSIONS)
def test_kubectl_client_versions(kube, version):  # noqa: F811
    info = json.loads(kube.kubectl(version, "version", "-o", "json").stdout)
    minor = int(info["clientVersion"]["minor"].rstrip("+"))
    assert minor == 20 if version == "1.20" else minor >= 28
    assert info["serverVersion"]["major"] == "1"


@pytest.mark.parametrize("version", VERSIONS)
def test_kubectl_get(kube, service, version):  # noqa: F811
    deployment = json.loads(
        kube.kubectl(version, "-n", service, "get", "deployment", "payments-api", "-o", "json").stdout
    )
    assert deployment["kind"] == "Deployment" and deployment["status"]["availableReplicas"] == 3
    table = kube.kubectl(version, "-n", service, "get", "pods", "-l", "app=payments-api").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert sum(1 for line in table.splitlines()[1:] if "Running" in line) >= 3
    names = kube.kubectl(version, "-n", service, "get", "secrets", "-o", "name").stdout.split()
    assert "secret/payments-api-token" in names
    missing = kube.kubectl(version, "-n", service, "get", "secret", "nope", check=False)
    assert missing.returncode == 1 and 'secrets "nope" not found' in missing.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_create_secret_dry_run_piped_into_apply(kube, service, version):  # noqa: F811
    # The reference document's Option A step, verbatim apart from the names.
    name = f"piped-{version.replace('.', '')}"
    for attempt, value in enumerate(["first-value", "second-value", "second-value"]):
        manifest = kube.kubectl(
            version,
            "-n",
            service,
            "create",
            "secret",
            "generic",
            name,
            f"--from-literal=token={value}",
            "--dry-run=client",
            "-o",
            "yaml",
        ).stdout
        before = kube.request("GET", f"/api/v1/namespaces/{service}/secrets/{name}")
        applied = kube.kubectl(version, "-n", service, "apply", "-f", "-", input=manifest)
        secret = kube.get(f"/api/v1/namespaces/{service}/secrets/{name}")
        assert base64.b64decode(secret["data"]["token"]).decode() == value
        assert ("created" if attempt == 0 else "configured") in applied.stdout or attempt == 2, applied.stdout
        if attempt == 2:
            # kubectl still sends {"metadata":{"creationTimestamp":null}} (from the dry-run YAML) and says
            # "configured"; the server must treat it as the no-op it is.
            assert secret["metadata"]["resourceVersion"] == before.json()["metadata"]["resourceVersion"]


@pytest.mark.parametrize("version", VERSIONS)
def test_create_commands(kube, version):  # noqa: F811
    # kubectl 1.32 POSTs these as protobuf, 1.20 as JSON: both must land as the same objects.
    namespace = f"kubectl-create-{version.replace('.', '')}"
    kube.kubectl(version, "create", "namespace", namespace)
    kube.created_namespaces.append(namespace)
    kube.kubectl(
        version,
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "direct",
        "--from-literal=token=s3cret",
        "--from-literal=id=su_1",
    )
    kube.kubectl(version, "-n", namespace, "create", "configmap", "settings", "--from-literal=mode=fast")
    secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/direct")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {"token": "s3cret", "id": "su_1"}
    assert secret["type"] == "Opaque"
    assert kube.get(f"/api/v1/namespaces/{namespace}/configmaps/settings")["data"] == {"mode": "fast"}
    again = kube.kubectl(
        version, "-n", namespace, "create", "secret", "generic", "direct", "--from-literal=a=b", check=False
    )
    assert again.returncode != 0 and "already exists" in again.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_rollout_restart_then_status(kube, service, version):  # noqa: F811
    before = kube.deployment(service, "payments-api")
    kube.kubectl(version, "-n", service, "rollout", "restart", "deployment/payments-api")
    status = kube.kubectl(version, "-n", service, "rollout", "status", "deployment/payments-api", "--timeout=60s")
    assert 'deployment "payments-api" successfully rolled out' in status.stdout
    after = kube.deployment(service, "payments-api")
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert "kubectl.kubernetes.io/restartedAt" in after["spec"]["template"]["metadata"]["annotations"]
    assert rollout_complete(after)
    replicasets = kube.get(f"/apis/apps/v1/namespaces/{service}/replicasets?labelSelector=app%3Dpayments-api")["items"]
    revisions = sorted(int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for rs in replicasets)
    assert len(replicasets) >= 2 and revisions == list(range(revisions[0], revisions[-1] + 1))


@pytest.mark.parametrize("version", VERSIONS)
def test_rollout_status_times_out_when_new_pods_never_become_ready(kube, version):  # noqa: F811
    kube.emulator("the never_ready fault switch")
    namespace = kube.namespace("kubectl-stuck")
    kube.seed(namespace, "stuck-api", replicas=2)
    kube.control("POST", "/_sandbox/faults", {"namespace": namespace, "deployment": "stuck-api", "never_ready": True})
    try:
        kube.kubectl(version, "-n", namespace, "rollout", "restart", "deployment/stuck-api")
        status = kube.kubectl(
            version, "-n", namespace, "rollout", "status", "deployment/stuck-api", "--timeout=3s", check=False
        )
        assert status.returncode != 0
        assert "timed out waiting for the condition" in status.stderr
        status = kube.deployment(namespace, "stuck-api")["status"]
        # 25% of 2 is a surge of 1 (rounded up) and no unavailability (rounded down): both old
        # pods keep serving beside the one new pod that never becomes ready.
        assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (3, 1, 2)
        assert status["unavailableReplicas"] == 1
    finally:
        kube.control("DELETE", "/_sandbox/faults")


@pytest.mark.parametrize("version", VERSIONS)
def test_rollout_status_reports_an_exceeded_progress_deadline(kube, version):  # noqa: F811
    kube.emulator("the never_ready fault switch")
    namespace = kube.namespace("kubectl-deadline")
    kube.seed(namespace, "late-api", replicas=1, deployment_spec={"progressDeadlineSeconds": 2})
    kube.control("POST", "/_sandbox/faults", {"namespace": namespace, "deployment": "late-api", "never_ready": True})
    try:
        kube.kubectl(version, "-n", namespace, "rollout", "restart", "deployment/late-api")
        status = kube.kubectl(
            version, "-n", namespace, "rollout", "status", "deployment/late-api", "--timeout=30s", check=False
        )
        assert status.returncode != 0
        assert 'deployment "late-api" exceeded its progress deadline' in status.stderr
    finally:
        kube.control("DELETE", "/_sandbox/faults")


def test_kubectl_1_20_is_really_1_20():
    # The Makefile fetches it; a silent fallback to the PATH kubectl would void half of this file.
    assert kubectl_binary("1.20") != kubectl_binary("path")

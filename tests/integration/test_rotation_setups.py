"""rotate.yml in setups the basic rotation tests do not cover: a platform API served over HTTPS with its
own CA, and one Secret read by two Deployments."""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, _start_sandbox, _stop_sandbox
from tests.integration.test_rotation import FAST_PODS, Service, assert_no_token, outcome, recap
from tests.sandbox.seed import deployment_manifest, wait_available

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Platform API over HTTPS (a CA of its own, in XAPI_CA_PATH) and the Kubernetes emulator."""
    directory = tmp_path_factory.mktemp("tls-sandbox")
    running = _start_sandbox(directory, "--tls", "--no-seed")
    assert running.url.startswith("https://") and running.ca_path
    yield running
    _stop_sandbox(directory)


def test_rotation_over_tls_with_the_platform_ca(tls_sandbox: Any, tmp_path: Path) -> None:
    service = Service(tls_sandbox, tmp_path)

    first = service.rotate()

    assert first.returncode == 0, first.stdout[-3000:]
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    second = service.rotate()
    assert second.returncode == 0 and re.match(r"not due \((89|90) days left\)$", outcome(second)), outcome(second)

    # Without the CA, one sentence that says what to set, and nothing changes.
    env = {k: v for k, v in service.env().items() if k != "XAPI_CA_PATH"}
    untrusted = subprocess.run(service.command(), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert untrusted.returncode != 0
    text = " ".join(untrusted.stdout.split())
    assert "TLS verification of the platform API at" in text, text[-2000:]
    assert "set ca_path to the CA certificate" in text
    assert "Traceback" not in untrusted.stdout + untrusted.stderr
    assert [u["id"] for u in service.active_users()] == [new_id]
    assert_no_token({"stdout": untrusted.stdout + first.stdout, "stderr": untrusted.stderr + first.stderr},
                    [service.original_token, service.token()])


def test_two_deployments_reading_one_secret_are_both_restarted(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path)
    worker = "svc-worker"
    manifest = deployment_manifest(service.namespace, worker, service.secret_name, replicas=1, strategy="restart",
                                   reload_interval=1.0, template_annotations=FAST_PODS)
    status, answer = service.cluster.request("POST", f"/apis/apps/v1/namespaces/{service.namespace}/deployments",
                                             manifest)
    assert status == 201, answer
    wait_available(sandbox.kubeconfig, service.namespace, worker)
    # deploy/rbac.yml lists the Deployments by name: grant the second one too, as an operator would.
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{service.namespace}/roles/credential-rotation"
    status, role = service.cluster.request("GET", path)
    assert status == 200, role
    for rule in role["rules"]:
        if "deployments" in rule["resources"]:
            rule["resourceNames"].append(worker)
    status, answer = service.cluster.request("PUT", path, role)
    assert status == 200, answer
    variables = yaml.safe_load(service.inventory.read_text())
    variables["services"]["hosts"]["svc"]["credential_rotation_deployments"] = ["svc", worker]
    service.inventory.write_text(yaml.safe_dump(variables))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    result = service.rotate()

    assert result.returncode == 0, result.stdout[-3000:]
    assert recap(result)["failed"] == 0
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    new_user = next(u for u in service.users() if u["id"] == new_id)
    assert new_user["last_used_at"] and new_user["last_used_at"] >= started
    # Every live pod of both Deployments runs from the rotation's template and holds the new token.
    marker = service.annotations().get("xapi.io/last-rotation", "")
    assert marker.endswith(new_id), marker
    wanted = hashlib.sha256(service.token().encode()).hexdigest()[:8]
    live = [p for p in service.pods() if not p["terminating"]]
    for name in ("svc", worker):
        members = [p for p in live if p["deployment"] == name]
        assert members and {p["token_fingerprint"] for p in members} == {wanted}, (name, members)

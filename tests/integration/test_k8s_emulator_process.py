"""The emulator as a process: its command line, ready file, kubeconfig, static tokens, reset and shutdown."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from tests.sandbox.client import wait_ready
from tests.sandbox.k8s.testing import REPO
from tests.sandbox.lifetime import owned_command
from tests.sandbox.seed import seed_service, wait_available


@pytest.fixture
def private_emulator(platform, tmp_path):
    """A second emulator of our own, so reset can be tested without wiping the shared sandbox."""
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('static-token-1,ops-user,uid-1,"ops,auditors"\n')
    state_dir = tmp_path / "k8s"
    with (tmp_path / "k8s.log").open("wb") as log:
        # owned_command: the emulator stops by itself if this pytest process is killed.
        process = subprocess.Popen(
            owned_command(
                "tests.sandbox.k8s",
                "--state-dir",
                str(state_dir),
                "--platform-url",
                platform.url,
                "--token-file",
                str(tokens),
                "--pod-start-delay",
                "0.1",
                "--pod-ready-delay",
                "0.1",
                "--termination-grace",
                "0.2",
            ),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        ready = wait_ready(state_dir, timeout=20, process=process)
        yield ready, process, tmp_path
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def test_ready_file_kubeconfig_tokens_reset_and_shutdown(private_emulator, platform):
    ready, process, tmp_path = private_emulator
    assert set(ready) == {"url", "pid", "kubeconfig", "ca_file", "admin_token"} and ready["pid"] == process.pid
    assert ready["url"].startswith("https://127.0.0.1:")
    assert oct(os.stat(ready["kubeconfig"]).st_mode & 0o777) == "0o600"
    config = json.loads(Path(ready["kubeconfig"]).read_text())
    assert config["contexts"][0]["context"]["namespace"] == "demo"

    def call(method, path, token=ready["admin_token"], body=None):
        return requests.request(
            method,
            ready["url"] + path,
            json=body,
            verify=ready["ca_file"],
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        )

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(ready["url"] + "/version", timeout=10)  # only clients that trust ca.pem get through

    # A static token (kube-apiserver CSV form) is a non-admin identity: RBAC applies, groups included.
    assert call("GET", "/api/v1/namespaces/default/secrets", token="static-token-1").status_code == 403
    role = {"metadata": {"name": "audit"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]}
    binding = {
        "metadata": {"name": "audit"},
        "roleRef": {"kind": "Role", "name": "audit", "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": [{"kind": "Group", "name": "auditors"}],
    }
    assert call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles", body=role).status_code == 201
    assert (
        call("POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings", body=binding).status_code
        == 201
    )
    assert call("GET", "/api/v1/namespaces/default/secrets", token="static-token-1").status_code == 200

    service = seed_service(platform.url, platform.admin_token, ready["kubeconfig"], "demo", "reset-me", replicas=1)
    wait_available(ready["kubeconfig"], "demo", "reset-me", timeout=20)
    issued = call("POST", "/_sandbox/tokens", body={"user": "someone"}).json()["data"]["token"]
    assert call("POST", "/_sandbox/config", body={"request_interval": 1.0}).status_code == 200
    assert call("POST", "/_sandbox/faults", body={"never_ready": True}).status_code == 200
    assert call("POST", "/_sandbox/config", body={"request_interval": -1}).status_code == 400
    assert call("POST", "/_sandbox/config", body={"bogus": 1}).status_code == 400
    assert call("POST", "/_sandbox/faults", body={"deployment": "x"}).status_code == 400

    assert call("POST", "/_sandbox/reset").status_code == 200
    namespaces = [n["metadata"]["name"] for n in call("GET", "/api/v1/namespaces").json()["items"]]
    assert sorted(namespaces) == ["default", "kube-public", "kube-system"]
    state = call("GET", "/_sandbox/state").json()["data"]
    assert state["pods"] == [] and state["faults"] == [] and state["config"]["request_interval"] == 0.2
    assert call("GET", "/api/v1/namespaces", token=issued).status_code == 401  # issued tokens are forgotten
    assert call("GET", "/api/v1/namespaces/default/secrets", token="static-token-1").status_code == 403  # role gone
    assert service["token_fingerprint"] not in json.dumps(state)

    process.terminate()
    assert process.wait(timeout=10) == 0
    log = (tmp_path / "k8s.log").read_text()
    assert "serving https://127.0.0.1:" in log and "Traceback" not in log
    assert "static-token-1" not in log and ready["admin_token"] not in log

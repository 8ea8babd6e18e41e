"""Messages that send the reader the right way (issue 14), from real runs against the sandbox.

- a missing Python library is named as such, with the interpreter in use (the role included in a
  playbook of one's own, on a host whose interpreter lacks ``requests`` and ``kubernetes``);
- a missing kubeconfig is named by its path, given by ``credential_rotation_kubeconfig`` or by
  ``KUBECONFIG``;
- a missing Secret is reported without advice to create one;
- no failure ends in "nothing to do" (nor says it), in rotate.yml, check_expiry.yml or the role.
- check_expiry.yml does not send a Secret it cannot read to rotate.yml;
- a lookup that fails (here a rejected admin token) fails its service with the reason instead of
  being taken for an unknown credential (which would rotate a service with weeks left).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, ansible_env, playbook_command
from tests.integration.test_rotation import ROTATE, Service, assert_no_token, outcome

pytestmark = pytest.mark.slow

CHECK_EXPIRY = REPO / "playbooks" / "check_expiry.yml"
MISSING_KUBECONFIG = "/nonexistent/clusters/eu-west.kubeconfig"
# Advice to make the Secret: "create it", "create the Secret", "kubectl create secret", "create one"...
CREATE_ADVICE = re.compile(r"(?i)\b(create|add|make)\s+(it|one|the secret|a secret|secret)\b|kubectl (create|apply)")


def _inventory(tmp_path: Path, hosts: dict[str, dict[str, Any]], name: str = "inventory.yml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    return path


def _run(sandbox: Any, playbook: Path | str, inventory: Path | None, env: dict[str, str] | None = None,
         extra_vars: dict | None = None) -> subprocess.CompletedProcess:
    cmd = playbook_command(playbook, str(inventory) if inventory else None, extra_vars)
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(sandbox, env), capture_output=True, text=True, timeout=600)


def _variables(service: Service, **changes: Any) -> dict[str, Any]:
    hosts = yaml.safe_load(service.inventory.read_text())["services"]["hosts"]
    return {**hosts[service.name], **changes}


def _failures(result: subprocess.CompletedProcess) -> list[str]:
    """Every failure sentence of a run: the summary's failed lines and the failed tasks' messages."""
    text = result.stdout + result.stderr
    lines = [m.group(1) for m in re.finditer(r"failed \((.*)", text)]
    lines += [m.group(1) for m in re.finditer(r"(?:fatal|failed): \[[^\]]+\].*?(?:\"msg\"|msg):\s*(.*)", text)]
    lines += [m.group(1) for m in re.finditer(r"^\[ERROR\]: (.*)", text, re.MULTILINE)]
    return lines


def _assert_no_nothing_to_do(result: subprocess.CompletedProcess) -> None:
    failures = _failures(result)
    assert failures, f"no failure found in a run that failed:\n{result.stdout[-3000:]}"
    for sentence in failures:
        assert "nothing to do" not in sentence.lower(), sentence


def _digest(service: Service) -> str:
    """The Secret as a digest, so that a failed comparison shows no token, not even base64."""
    return hashlib.sha256(json.dumps(service.secret(), sort_keys=True).encode()).hexdigest()


@pytest.fixture
def service(sandbox: Any, tmp_path: Path) -> Service:
    return Service(sandbox, tmp_path)


def test_missing_kubeconfig_and_missing_secret_say_what_is_missing(sandbox: Any, service: Service,
                                                                     tmp_path: Path) -> None:
    hosts = {
        "nokubeconfig": _variables(service, credential_rotation_service_name="nokubeconfig",
                                   credential_rotation_kubeconfig=MISSING_KUBECONFIG),
        "nosecret": _variables(service, credential_rotation_service_name="nosecret",
                               credential_rotation_secret_name="absent-token"),
    }
    hosts["nosecret"].pop("credential_rotation_kubeconfig", None)  # KUBECONFIG: the sandbox's admin, may read it
    inventory = _inventory(tmp_path, hosts)
    before = _digest(service)

    for playbook in (ROTATE, CHECK_EXPIRY):
        result = _run(sandbox, playbook, inventory)
        assert result.returncode != 0, result.stdout[-3000:]
        assert "Traceback" not in result.stdout + result.stderr
        named = outcome(result, "nokubeconfig")
        assert f"check the kubeconfig ({MISSING_KUBECONFIG}, which does not exist)" in named, (playbook, named)
        secret = outcome(result, "nosecret")
        assert f"Secret {service.namespace}/absent-token does not exist" in secret, (playbook, secret)
        assert not CREATE_ADVICE.search(secret), (playbook, secret)
        _assert_no_nothing_to_do(result)
        assert_no_token({"stdout": result.stdout, "stderr": result.stderr}, [service.original_token])
    assert _digest(service) == before


def test_missing_default_kubeconfig_is_named_by_its_path(sandbox: Any, service: Service, tmp_path: Path) -> None:
    variables = _variables(service)
    variables.pop("credential_rotation_kubeconfig", None)  # KUBECONFIG decides
    inventory = _inventory(tmp_path, {"svc": variables})

    result = _run(sandbox, ROTATE, inventory, env={"KUBECONFIG": MISSING_KUBECONFIG})

    assert result.returncode != 0, result.stdout[-3000:]
    summary = outcome(result, "svc")
    assert summary.startswith(f"failed (Could not read Secret {service.namespace}/{service.secret_name} ("), summary
    assert f"check the kubeconfig ({MISSING_KUBECONFIG}, which does not exist)" in summary, summary
    _assert_no_nothing_to_do(result)


def test_no_service_matching_is_a_failure_that_says_why(sandbox: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text("services:\n  hosts: {}\n")
    for playbook in (ROTATE, CHECK_EXPIRY):
        result = _run(sandbox, playbook, empty)
        assert result.returncode != 0
        assert 'No host matches "services"' in result.stdout, result.stdout[-2000:]
        _assert_no_nothing_to_do(result)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter without requests, kubernetes or python-dateutil: a virtualenv with nothing in it."""
    venv = tmp_path_factory.mktemp("bare-python") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    for library in ("requests", "kubernetes"):
        probe = subprocess.run([str(python), "-c", f"import {library}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"the bare interpreter imports {library}"
    return python


def test_a_host_interpreter_without_the_libraries_still_rotates(sandbox: Any, service: Service, tmp_path: Path,
                                                                 bare_python: Path) -> None:
    """The role in a playbook of one's own, on a host whose interpreter lacks the libraries (as when the
    play forgets ``ansible_python_interpreter: "{{ ansible_playbook_python }}"``): every Kubernetes and
    platform call runs in the controller's process, so the host's Python needs none of them."""
    variables = _variables(service, ansible_python_interpreter=str(bare_python))
    inventory = _inventory(tmp_path, {"svc": variables})
    playbook = tmp_path / "own.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Rotate with the role", "hosts": "services", "connection": "local", "gather_facts": False,
        "roles": [{"role": "xapi.system_auth.credential_rotation"}]}], sort_keys=False))

    result = _run(sandbox, playbook, inventory)

    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert outcome(result, "svc").startswith("rotated"), outcome(result, "svc")
    service.assert_rotated_cleanly(service.original_id)
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr}, [service.original_token, service.token()])


def test_check_expiry_sends_an_unreadable_secret_to_the_inventory_not_to_a_rotation(
        sandbox: Any, service: Service, tmp_path: Path) -> None:
    variables = _variables(service, credential_rotation_secret_name="absent-token")
    variables.pop("credential_rotation_kubeconfig", None)
    inventory = _inventory(tmp_path, {"svc": variables})

    result = _run(sandbox, CHECK_EXPIRY, inventory)

    failures = [s for s in _failures(result) if "absent-token does not exist" in s]
    if result.returncode == 0 or not failures:  # not the bug: a real failure of this test
        pytest.fail(f"check_expiry did not fail on the missing Secret:\n{result.stdout[-3000:]}")
    failure = failures[0]
    assert "rotate.yml" not in failure, failure
    assert ".;" not in failure, failure


def test_a_lookup_that_fails_fails_its_service_and_rotates_nothing(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path, expires_in_days=90)  # not due
    inventory = _inventory(tmp_path, {"svc": _variables(service)})
    before, users = _digest(service), service.identities()
    fault = sandbox.api("POST", "/_sandbox/faults", json={
        "method": "GET", "path": "/api/v1/system-users/*", "status": 401, "count": 1})  # the lookup by id
    assert fault.status_code == 201, fault.status_code
    try:
        result = _run(sandbox, ROTATE, inventory)
    finally:
        sandbox.api("DELETE", "/_sandbox/faults")

    summary = outcome(result, "svc")
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr}, [service.original_token])
    assert _digest(service) == before, f"the Secret of a service with 90 days left was changed: {summary}"
    assert service.identities() == users, f"a credential was created for a service with 90 days left: {summary}"
    assert summary.startswith("failed (Could not look up the credential"), summary
    assert "the API token was rejected" in summary, summary
    assert result.returncode != 0

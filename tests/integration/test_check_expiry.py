"""playbooks/check_expiry.yml: days left per service, a failed assertion when any is under the threshold."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ANSIBLE_PLAYBOOK, REPO
from tests.integration.test_rotation import Service, assert_no_token

pytestmark = pytest.mark.slow


def _check(services: list[Service], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    inventory = tmp_path / "expiry-inventory.yml"
    hosts = {}
    for service in services:
        hosts.update(yaml.safe_load(service.inventory.read_text())["services"]["hosts"])
        hosts[service.namespace] = hosts.pop(service.name)
        del hosts[service.namespace]["credential_rotation_service_name"]  # named by namespace and Secret
    inventory.write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    # Read-only, so the sandbox's admin kubeconfig is fine here (both services in one run).
    return subprocess.run([str(ANSIBLE_PLAYBOOK), "playbooks/check_expiry.yml", "-i", str(inventory), *args],
                          cwd=REPO, env=services[0].env() | {"KUBECONFIG": services[0].sandbox.kubeconfig},
                          capture_output=True, text=True, timeout=300)


def test_reports_days_left_and_fails_only_when_one_is_under_the_threshold(sandbox: Any, tmp_path: Path) -> None:
    due = Service(sandbox, tmp_path, expires_in_days=5)
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    platform_before = sandbox.state()["requests"]["by_route"].get("POST /api/v1/system-users", {})

    both = _check([due, fresh], tmp_path)

    assert both.returncode != 0
    text = " ".join(both.stdout.split())
    due_name, fresh_name = (f"{s.namespace}/{s.secret_name}" for s in (due, fresh))
    assert f"{due_name}: {due.original_id}, 4 days left (rotate now: at or under the threshold of 7 days)" in text
    assert f"{fresh_name}: {fresh.original_id}, 29 days left" in text
    assert f"{fresh_name}: {fresh.original_id}, 29 days left (rotate now" not in text
    assert "at or under the threshold of 7 days); run xapi.system_auth.rotate (playbooks/rotate.yml) for it" in text
    assert_no_token({"stdout": both.stdout, "stderr": both.stderr}, [due.original_token, fresh.original_token])

    only_fresh = _check([due, fresh], tmp_path, "--limit", fresh.namespace)
    assert only_fresh.returncode == 0, only_fresh.stdout[-2000:]

    tighter = _check([due, fresh], tmp_path, "--limit", fresh.namespace, "-e", "credential_rotation_threshold_days=30")
    assert tighter.returncode != 0
    # Read-only: nothing was created and both credentials are still the ones seeded.
    assert sandbox.state()["requests"]["by_route"].get("POST /api/v1/system-users", {}) == platform_before
    assert due.data()["id"] == due.original_id and fresh.data()["id"] == fresh.original_id

"""Fleets through the one rotation path: rotate.yml over several services at once.

Every step is one call for all services due for it, so a fleet rotates together; a service with a
mistake in its variables fails with its own sentence before anything of it changes, and the others
go on. Each service uses its own kubeconfig (credential_rotation_kubeconfig), bound to deploy/rbac.yml's
Role for its names only, so the run also groups its Kubernetes calls by cluster credentials.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, ansible_env, playbook_command
from tests.integration.test_rotation import ROTATE, Service, assert_no_token, outcome

pytestmark = pytest.mark.slow


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _variables(service: Service) -> dict[str, Any]:
    """A service's inventory variables, with its own restricted kubeconfig."""
    hosts = yaml.safe_load(service.inventory.read_text())["services"]["hosts"]
    return {**hosts[service.name], "credential_rotation_kubeconfig": str(service.kubeconfig)}


def _run(sandbox: Any, hosts: dict[str, dict[str, Any]], tmp_path: Path, extra_vars: dict | None = None,
         verbosity: int = 0, diff: bool = False, check: bool = False) -> subprocess.CompletedProcess:
    inventory = tmp_path / "fleet.yml"
    inventory.write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    cmd = playbook_command(ROTATE, str(inventory), extra_vars, check, diff, verbosity)
    return subprocess.run(cmd, cwd=REPO, env=ansible_env(sandbox, {"PYTHONUNBUFFERED": "1"}), capture_output=True,
                          text=True, timeout=600)


def _creates(sandbox: Any) -> int:
    return sandbox.state()["requests"]["by_route"].get("POST /api/v1/system-users", {}).get("201", 0)


def _task_runs(result: subprocess.CompletedProcess, name: str) -> int:
    return result.stdout.count(f"TASK [xapi.system_auth.credential_rotation : {name}]")


def test_a_fleet_with_mistakes_rotates_the_good_service_and_touches_none_of_the_bad(
        sandbox: Any, tmp_path: Path) -> None:
    good = Service(sandbox, tmp_path)
    victim = Service(sandbox, tmp_path)  # every bad host points at its Secret: it must stay untouched
    status, answer = victim.cluster.request("POST", f"/api/v1/namespaces/{victim.namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "owned-token", "ownerReferences": [{
            "apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret", "name": "svc-token",
            "uid": "9b0c1b4e-0000-4000-8000-000000000001", "controller": True}]},
        "data": {"token": base64.b64encode(victim.original_token.encode()).decode(),
                 "id": base64.b64encode(victim.original_id.encode()).decode()}})
    assert status == 201, answer
    base = {**_variables(victim)}
    good_vars = _variables(good)
    del good_vars["credential_rotation_service_name"]  # named by its namespace and Secret
    mistakes: dict[str, tuple[dict[str, Any], str]] = {
        "typo": ({"credential_rotation_deployments": ["svx"], "credential_rotation_kubeconfig": sandbox.kubeconfig},
                 f"Deployment {victim.namespace}/svx does not exist; check credential_rotation_deployments"),
        "negative": ({"credential_rotation_rollout_timeout": -5},
                     "credential_rotation_rollout_timeout is -5; set it to a whole number of at least 1."),
        "badns": ({"credential_rotation_namespace": "Bad_NS!"},
                  'credential_rotation_namespace "Bad_NS!" is not a valid Kubernetes namespace name'),
        "nosecret": ({"credential_rotation_secret_name": "does-not-exist",
                      "credential_rotation_kubeconfig": sandbox.kubeconfig},
                     f"Secret {victim.namespace}/does-not-exist does not exist; check credential_rotation_namespace"),
        "nokey": ({"credential_rotation_secret_token_key": "nope"},
                  (f"Secret {victim.namespace}/{victim.secret_name} has no key nope; "
                   "set credential_rotation_secret_token_key")),
        "short": ({"credential_rotation_threshold_days": 2},
                  "credential_rotation_threshold_days is 2, below the minimum of 3 days"),
        "expires": ({"credential_rotation_expires_in_days": 400},
                    "credential_rotation_expires_in_days is 400; set it between 1 and 365."),
        "nodeps": ({"credential_rotation_deployments": []},
                   "credential_rotation_deployments (or credential_rotation_workloads) is empty"),
        "prefix": ({"credential_rotation_name_prefix": "bad prefix!"},
                   'credential_rotation_name_prefix "bad prefix!" may only contain'),
        "owned": ({"credential_rotation_secret_name": "owned-token",
                   "credential_rotation_kubeconfig": sandbox.kubeconfig},
                  f"Secret {victim.namespace}/owned-token is managed by ExternalSecret svc-token"),
        "keys": ({"credential_rotation_secret_id_key": "token"},
                 "credential_rotation_secret_token_key and credential_rotation_secret_id_key are both"),
        # What the role's argument spec refuses: the service fails alone, in the summary, with the fix.
        "notbool": ({"credential_rotation_force": "maybe"},
                    "credential_rotation_force is 'maybe'; set it to true or false."),
        "choice": ({"credential_rotation_strategy": "rolling"},
                   "credential_rotation_strategy is 'rolling'; set it to one of restart, reload."),
        "notint": ({"credential_rotation_poll_interval": "soon"},
                   "credential_rotation_poll_interval is 'soon'; set it to a whole number."),
        "undefined": ({"credential_rotation_description": "{{ no_such_variable }}"},
                      "credential_rotation_description cannot be templated"),
    }
    hosts = {"good": good_vars}
    for host, (change, _) in mistakes.items():
        hosts[host] = {**base, **change, "credential_rotation_service_name": host}
    victim_secret = victim.secret()
    victim_users = victim.identities()

    result = _run(sandbox, hosts, tmp_path, verbosity=4, diff=True)

    assert result.returncode != 0, "bad services must fail the run"
    assert "Traceback" not in result.stdout + result.stderr
    good_name = f"{good.namespace}/{good.secret_name}"
    assert outcome(result, good_name).startswith(f"rotated ({good.original_id} -> "), result.stdout[-4000:]
    new_id = good.assert_rotated_cleanly(good.original_id)
    good.assert_no_failed_requests(good.original_id, new_id)
    for host, (_, sentence) in mistakes.items():
        summary = outcome(result, host)
        assert summary.startswith(f"failed ({sentence}"), (host, summary)
    assert victim.secret() == victim_secret, "a bad service's Secret was changed"
    assert victim.identities() == victim_users, "a credential was created or changed for a bad service"
    assert not victim.companion(), "a companion Secret was created for a bad service"
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr},
                    [good.original_token, good.token(), victim.original_token])

    # The next run rotates nothing more and still refuses the bad ones.
    again = _run(sandbox, {"good": good_vars, "typo": hosts["typo"]}, tmp_path)
    assert again.returncode != 0
    assert outcome(again, good_name).startswith("not due (")
    assert outcome(again, "typo").startswith(f"failed ({mistakes['typo'][1]}")


def test_due_services_rotate_together_one_call_per_step(sandbox: Any, tmp_path: Path) -> None:
    services = {name: Service(sandbox, tmp_path) for name in ("one", "two", "three")}
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    audit = tmp_path / "audit.jsonl"
    unwritable = tmp_path / "no-such-dir" / "audit.jsonl"
    hosts = {name: {**_variables(s), "credential_rotation_service_name": name,
                    "credential_rotation_audit_log": str(unwritable if name == "three" else audit)}
             for name, s in services.items()}
    hosts["fresh"] = {**_variables(fresh), "credential_rotation_service_name": "fresh"}
    # An orphan an earlier run left for one: a user of its Secret's name pattern and description, unreferenced.
    one = services["one"]
    orphan = sandbox.api("POST", "/api/v1/system-users", json={
        "name": f"{one.prefix}-20260101000000", "expires_in_days": 30,
        "description": f"Managed by xapi.system_auth.credential_rotation for Secret {one.namespace}/{one.secret_name}"})
    assert orphan.status_code == 201, orphan.text
    orphan_id = orphan.json()["data"]["id"]
    fresh_version = fresh.secret()["metadata"]["resourceVersion"]
    creates_before = _creates(sandbox)

    result = _run(sandbox, hosts, tmp_path)

    # Every step ran once for all services: one task created the three credentials, one each.
    assert _task_runs(result, "Create the new system users") == 1
    assert _creates(sandbox) - creates_before == 3
    new_ids = {}
    for name, service in services.items():
        summary = outcome(result, name)
        assert summary.startswith(f"rotated ({service.original_id} -> ") or (
            name == "three" and summary.startswith("failed (")), (name, summary)
        new_ids[name] = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_ids[name])
    assert outcome(result, "one").endswith(f"deactivated 1 orphaned credential(s): {orphan_id})")
    assert not next(u for u in sandbox.state()["system_users"] if u["id"] == orphan_id)["active"]
    # The service whose audit log cannot be written was rotated, and fails the run saying so.
    assert result.returncode != 0
    assert f"it was rotated, but its audit record could not be written to {unwritable}" in outcome(result, "three")
    assert outcome(result, "fresh") == "not due (29 days left)"
    assert fresh.secret()["metadata"]["resourceVersion"] == fresh_version
    records = {r["service"]: r for r in map(json.loads, audit.read_text().splitlines())}
    assert set(records) == {"one", "two"}
    for name in ("one", "two"):
        service = services[name]
        assert records[name]["event"] == "rotated"
        assert records[name]["old_id"] == service.original_id and records[name]["new_id"] == new_ids[name]
        assert records[name]["new_fingerprint"] == _fingerprint(service.token())
    assert records["one"]["run"] == records["two"]["run"]
    tokens = [s.original_token for s in services.values()] + [s.token() for s in services.values()]
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr, "audit log": audit.read_text()}, tokens)

    # Check mode over the rotated fleet with force: previews for all, changes nothing.
    versions = {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in services.values()}
    preview = _run(sandbox, hosts, tmp_path, {"credential_rotation_force": True}, check=True, diff=True)
    assert preview.returncode == 0, preview.stdout[-3000:]
    for name in services:
        assert outcome(preview, name).startswith("would rotate ("), outcome(preview, name)
    assert "(masked" in preview.stdout, "--diff shows what would change, with the tokens masked"
    assert {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in services.values()} == versions
    assert_no_token({"stdout": preview.stdout}, [s.token() for s in services.values()])

"""The fleet batch (roles/credential_rotation/tasks/fleet.yml): rotate.yml rotates the plainly due
services together, one module call per step for all of them.

It must leave every service exactly as the per-service role would: rotated cleanly with no failed
request, or, when a step fails for a service, handed to the role with the phase its Secret records,
which then resumes it (retrying, or rolling back) under the batch's lock. A crash at any step of the
batch is resumed by the next run, and never leaves two new credentials.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_rotation import (
    FAST_PODS,
    ROTATE,
    STATE_ANNOTATIONS,
    Service,
    assert_no_token,
    outcome,
    recap,
)
from tests.integration.test_rotation_crash import resumed_cleanly
from tests.integration.test_triage import _fleet, _role_hosts, _run
from tests.sandbox.seed import deployment_manifest, wait_available

pytestmark = pytest.mark.slow

BATCH = "TASK [xapi.system_auth.credential_rotation : Create the new credentials]"


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _add_deployment(service: Service, name: str) -> None:
    manifest = deployment_manifest(service.namespace, name, service.secret_name, replicas=1, strategy="restart",
                                   reload_interval=1.0, template_annotations=FAST_PODS)
    status, answer = service.cluster.request("POST", f"/apis/apps/v1/namespaces/{service.namespace}/deployments",
                                             manifest)
    assert status == 201, answer
    wait_available(service.sandbox.kubeconfig, service.namespace, name)


def test_due_services_are_rotated_together_as_the_role_would(sandbox: Any, tmp_path: Path) -> None:
    one = Service(sandbox, tmp_path, batch=True)
    two = Service(sandbox, tmp_path, batch=True)
    _add_deployment(two, "worker")
    fresh = Service(sandbox, tmp_path, expires_in_days=30, batch=True)
    solo = Service(sandbox, tmp_path)  # credential_rotation_batch: false, so the role rotates it
    audit = tmp_path / "audit.jsonl"
    fleet = _fleet({"one": (one, {}), "two": (two, {"credential_rotation_deployments": ["svc", "worker"]}),
                    "fresh": (fresh, {}), "solo": (solo, {})}, tmp_path)
    fresh_version = fresh.secret()["metadata"]["resourceVersion"]

    # At -vvvv with --diff: the batch handles every old and new token and must print none of them.
    result = _run(sandbox, ROTATE, fleet, {"credential_rotation_audit_log": str(audit)}, verbosity=4, diff=True)

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert BATCH in result.stdout
    assert _role_hosts(result) == {"solo"}, "only the service that opted out of the batch runs the role"
    new_ids = {}
    for host, service in (("one", one), ("two", two), ("solo", solo)):
        summary = outcome(result, host)
        assert summary.startswith(f"rotated ({service.original_id} -> "), (host, summary)
        assert summary.endswith("new credential expires in 90 days)"), summary
        new_ids[host] = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_ids[host])
        assert service.data()["id"] in summary
    assert outcome(result, "fresh") == "not due (29 days left)"
    assert fresh.secret()["metadata"]["resourceVersion"] == fresh_version
    # Every live pod of both of two's Deployments runs from the new template and holds the new token.
    live = [p for p in two.pods() if not p["terminating"]]
    for name in ("svc", "worker"):
        assert {p["token_fingerprint"] for p in live if p["deployment"] == name} == {_fingerprint(two.token())}
    marker = two.deployment()["spec"]["template"]["metadata"]["annotations"]["xapi.io/rotated-at"]
    assert marker.startswith(new_ids["two"] + "-")
    assert two.annotations()["xapi.io/last-rotation"] == f"{two.original_id} -> {new_ids['two']}"
    # The audit records are the role's: one per rotation, ids and fingerprints only.
    records = {r["service"]: r for r in map(json.loads, audit.read_text().splitlines())}
    assert set(records) == {"one", "two", "solo"}
    for host, service in (("one", one), ("two", two)):
        assert records[host] | {"time": "", "run": ""} == {
            "time": "", "run": "", "event": "rotated", "service": host, "namespace": service.namespace,
            "secret": service.secret_name, "old_id": service.original_id, "new_id": new_ids[host],
            "old_fingerprint": _fingerprint(service.original_token), "new_fingerprint": _fingerprint(service.token())}
    assert records["one"]["run"] == records["two"]["run"] != records["solo"]["run"]
    tokens = [s.original_token for s in (one, two, fresh, solo)] + [s.token() for s in (one, two, solo)]
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr, "audit log": audit.read_text()}, tokens)

    # The next run finds nothing due and changes nothing.
    versions = {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (one, two, solo)}
    again = _run(sandbox, ROTATE, fleet)
    assert again.returncode == 0, again.stdout[-3000:]
    assert BATCH not in again.stdout and _role_hosts(again) == set()
    assert {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (one, two, solo)} == versions
    assert recap(again, "fresh")["changed"] == 0


def test_the_batch_works_within_the_documented_grants_sweeps_orphans_and_skips_check_mode(
        sandbox: Any, tmp_path: Path) -> None:
    # Service.rotate uses a kubeconfig bound to deploy/rbac.yml's Role for this service's names only.
    service = Service(sandbox, tmp_path, batch=True)
    before = service.secret()

    preview = service.rotate(check=True, diff=True)

    assert preview.returncode == 0, preview.stdout[-3000:]
    assert BATCH not in preview.stdout, "check mode previews with the role and does not run the batch"
    assert outcome(preview).startswith("would rotate (")
    assert service.secret() == before

    # An orphan an earlier run left (a user of this Secret's name pattern and description, unreferenced).
    orphan = sandbox.api("POST", "/api/v1/system-users", json={
        "name": f"{service.prefix}-20260101000000", "expires_in_days": 30,
        "description": f"Managed by xapi.system_auth.credential_rotation for Secret "
                       f"{service.namespace}/{service.secret_name}"})
    assert orphan.status_code == 201, orphan.text
    orphan_id = orphan.json()["data"]["id"]

    result = service.rotate()

    assert result.returncode == 0, result.stdout[-3000:]
    assert BATCH in result.stdout and _role_hosts(result) == set()
    assert outcome(result).endswith(f"expires in 90 days, deactivated 1 orphaned credential(s): {orphan_id})")
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)


def test_services_the_batch_cannot_finish_are_resumed_or_rolled_back_by_the_role(
        sandbox: Any, tmp_path: Path) -> None:
    fine = Service(sandbox, tmp_path, batch=True)
    stuck = Service(sandbox, tmp_path, batch=True)     # its rollout never completes
    missing = Service(sandbox, tmp_path, batch=True)   # one of its Deployments does not exist
    audit = tmp_path / "audit.jsonl"
    fleet = _fleet({"fine": (fine, {}), "stuck": (stuck, {}),
                    "missing": (missing, {"credential_rotation_deployments": ["svc", "nope"]})}, tmp_path)
    status, answer = stuck.cluster.request("POST", "/_sandbox/faults", {
        "namespace": stuck.namespace, "deployment": stuck.name, "never_ready": True})
    assert status == 200, answer
    try:
        result = _run(sandbox, ROTATE, fleet, {"credential_rotation_rollout_timeout": 8,
                                               "credential_rotation_drain_timeout": 30,
                                               "credential_rotation_audit_log": str(audit)}, verbosity=1)
    finally:
        stuck.cluster.request("DELETE", "/_sandbox/faults")

    assert result.returncode != 0
    assert _role_hosts(result) == {"stuck", "missing"}
    text = " ".join(result.stdout.split())
    assert "the batch handed it over: the rollout of Deployment " + stuck.namespace + "/svc" in text
    assert "the batch handed it over: the batch could not restart Deployment " + missing.namespace + "/nope" in text
    fine_id = fine.assert_rotated_cleanly(fine.original_id)
    fine.assert_no_failed_requests(fine.original_id, fine_id)
    # stuck: the role waits for its rollout once more, then rolls back as it would have on its own.
    summary = outcome(result, "stuck")
    assert summary.startswith("failed (The rollout of Deployment " + stuck.namespace + "/svc"), summary
    assert f"rolled back: the Secret holds the previous credential {stuck.original_id} again" in summary
    data = stuck.data()
    assert data["id"] == stuck.original_id and data["token"] == stuck.original_token
    assert [u["id"] for u in stuck.active_users()] == [stuck.original_id]
    assert not any(k in STATE_ANNOTATIONS for k in stuck.annotations())
    assert "pending-token" not in data and "previous-token" not in data
    # missing: the role fails on the missing Deployment too, and so does its rollback (it restarts every
    # Deployment again); the Secret records how far it got and the old credential stays active.
    summary = outcome(result, "missing")
    assert summary.startswith("failed (Could not restart Deployment " + missing.namespace + "/nope: it does not exist")
    assert "the Secret records phase rolling-back, re-run to resume" in summary
    assert missing.annotations()["xapi.io/rotation-phase"] == "rolling-back"
    assert missing.original_id in [u["id"] for u in missing.active_users()]
    for service in (stuck, missing):
        assert len(service.users()) == 2, "exactly one new credential, the batch's"
        service.assert_no_failed_requests(service.original_id)
    # The role resumed under the batch's lock: its records carry the batch's run id.
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    runs = {r["run"] for r in records}
    assert len(runs) == 1, records
    assert sorted((r["service"], r["event"]) for r in records) == [
        ("fine", "rotated"), ("missing", "failed"), ("stuck", "failed"), ("stuck", "rolled_back")]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_create_the_batch_could_not_make_is_made_by_the_role_once(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path, batch=True)
    # A 400 is not retried: the batch's only create fails, and the service leaves it in phase creating.
    sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "status": 400, "count": 1}).raise_for_status()
    try:
        result = service.rotate(verbosity=1)
    finally:
        sandbox.api("DELETE", "/_sandbox/faults")

    assert result.returncode == 0, result.stdout[-4000:]
    assert "the batch handed it over: the batch could not create its new credential" in " ".join(result.stdout.split())
    assert _role_hosts(result) == {"svc"}
    assert outcome(result).startswith(f"rotated ({service.original_id} -> ")
    assert outcome(result).endswith("resumed an interrupted rotation)")
    new_id = service.assert_rotated_cleanly(service.original_id)
    assert len(service.users()) == 2, [u["name"] for u in service.users()]
    service.assert_no_failed_requests(service.original_id, new_id)


def test_the_role_judges_a_handed_over_usage_check_by_the_batch_reading(sandbox: Any, tmp_path: Path) -> None:
    # Pods that call the platform once when they start, then every ten minutes: only a reading of
    # last_used_at taken before the restart can see that the new pods used the new credential.
    service = Service(sandbox, tmp_path, batch=True)
    status, answer = service.cluster.request(
        "PATCH", f"/apis/apps/v1/namespaces/{service.namespace}/deployments/{service.name}",
        {"spec": {"template": {"metadata": {"annotations": {"sandbox.xapi.io/request-interval": "600"}}}}},
        "application/merge-patch+json")
    assert status == 200, answer
    wait_available(sandbox.kubeconfig, service.namespace, service.name)
    # The batch's deactivation fails (a 400 is not retried), so it hands the service over after the
    # restart; the role must resume without waiting for a call that will not come for ten minutes.
    sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": f"/api/v1/system-users/{service.original_id}/deactivate", "status": 400,
        "count": 1}).raise_for_status()
    try:
        result = service.rotate(verbosity=1)
    finally:
        sandbox.api("DELETE", "/_sandbox/faults")

    assert result.returncode == 0, result.stdout[-4000:]
    text = " ".join(result.stdout.split())
    assert "the batch handed it over: the batch could not deactivate the old credential " + service.original_id in text
    assert _role_hosts(result) == {"svc"}
    summary = outcome(result)
    assert summary.startswith(f"rotated ({service.original_id} -> ") and summary.endswith(
        "resumed an interrupted rotation)"), summary
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)


def test_a_held_lock_keeps_a_service_out_of_the_batch(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path, batch=True)
    holder = "20261129T000000Z-0000abcd"
    status, answer = service.cluster.request(
        "PATCH", f"/api/v1/namespaces/{service.namespace}/secrets/{service.secret_name}",
        {"metadata": {"annotations": {"xapi.io/rotation-lock-holder": holder,
                                      "xapi.io/rotation-lock-expires-at": "2099-01-01T00:00:00Z"}}},
        "application/merge-patch+json")
    assert status == 200, answer

    result = service.rotate()

    assert result.returncode == 0, result.stdout[-3000:]
    assert _role_hosts(result) == {"svc"}
    assert outcome(result).startswith(f"skipped (another run holds the rotation lock ({holder} until ")
    assert [u["id"] for u in service.active_users()] == [service.original_id]


def test_an_audit_log_the_batch_cannot_write_fails_the_run(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path, batch=True)
    unwritable = tmp_path / "no-such-directory" / "audit.jsonl"

    result = service.rotate({"credential_rotation_audit_log": str(unwritable)})

    assert result.returncode != 0, "a rotation without its audit record must not pass unnoticed"
    summary = outcome(result)
    assert summary.startswith(f"failed ({service.original_id} -> "), summary
    assert f"it was rotated, but its audit record could not be written to {unwritable}" in summary
    assert re.search(r"^svc\s+:.*failed=1", result.stdout, re.MULTILINE), result.stdout[-2000:]
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)


# The banner of the batch's task during which the run dies, in the order the steps run: every write
# of the Secrets and every change on the platform or the cluster has a boundary before and after it.
BATCH_BOUNDARIES = [
    "Create the new credentials",                                        # locked, names recorded (creating)
    "Keep the new tokens for the next steps",                            # users created, tokens only in the process
    "Verify the pending tokens against the API",                         # phase pending
    "Promote the pending credentials in the Secrets",                    # verified, not promoted
    "Restart the workloads",                                             # phase promoted
    "Wait for the rollouts to complete (kubectl rollout status rules)",  # restart under way
    "Deactivate the old credentials",                                    # rollouts done, old pods gone
    "Clear the rotation state from the Secrets and release the locks",   # old credentials deactivated
    "Append the audit records",                                          # all done
]
SHORT_LOCK = {"credential_rotation_lock_duration": 5}


def _crash_the_batch_then_resume(sandbox: Any, directory: Path, boundary: str) -> str | None:
    directory.mkdir()
    service = Service(sandbox, directory, batch=True)
    killed = service.rotate_until(boundary, SHORT_LOCK)
    service.wait_for_lock_expiry()
    # After "Append the audit records" the batch had finished, lock released: nothing is due.
    wanted = "not due (" if boundary == "Append the audit records" else "rotated ("
    problems = resumed_cleanly(service, service.rotate(), wanted)
    if BATCH not in killed:
        problems.insert(0, "the run died before the batch")
    return f"{boundary}: " + "; ".join(problems) if problems else None


def test_a_crash_at_any_step_of_the_batch_is_resumed_by_the_next_run(sandbox: Any, tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(_crash_the_batch_then_resume, sandbox, tmp_path / f"crash{i}", boundary)
                   for i, boundary in enumerate(BATCH_BOUNDARIES)]
        failures = [message for future in futures if (message := future.result())]
    assert not failures, "\n".join(failures)

"""Workloads that another controller restarts, and workloads found rather than listed.

One run of playbooks/rotate.yml over three services, each with its own kubeconfig bound to
deploy/rbac.yml's Role:

- ``reloaded``: its Deployment is annotated ``reloader.stakater.com/auto: "true"`` and a stand-in
  for Stakater Reloader (a thread of this test that does what Reloader does: when the Secret's data
  changes, it patches the pod template with the data's hash) restarts it. The rotation must not
  restart it a second time: one rollout, not two.
- ``unwatched``: annotated the same way, but no Reloader runs. After
  credential_rotation_reloader_grace the rotation restarts it itself, and says so.
- ``found``: credential_rotation_workloads: auto, its Deployment named nowhere in the inventory.

All three are rotated with zero failed requests of their workloads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from tests.integration.test_fleet import _run, _variables
from tests.integration.test_rotation import Service, assert_no_token, outcome

RELOADER = {"reloader.stakater.com/auto": "true"}
# Reloader's "annotations" reload strategy writes this pod-template annotation.
RELOADED_FROM = "reloader.stakater.com/last-reloaded-from"
# What credential_rotation_workloads: auto needs in addition to deploy/rbac.yml's Role (the Role's
# comment says so).
AUTO_RULE = {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["list"]}


class StandInReloader(threading.Thread):
    """Watches one Secret and, when its data changes, patches a Deployment's pod template the way
    Reloader does (an annotation carrying the data's hash), once per change."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.stop = threading.Event()
        self.reloads = 0
        self.error = ""

    def _hash(self) -> str:
        return hashlib.sha1(json.dumps(self.service.secret().get("data") or {}, sort_keys=True).encode()).hexdigest()

    def run(self) -> None:
        try:
            seen = self._hash()
            while not self.stop.wait(0.2):
                now = self._hash()
                if now == seen:
                    continue
                seen = now
                path = f"/apis/apps/v1/namespaces/{self.service.namespace}/deployments/{self.service.name}"
                body = {"spec": {"template": {"metadata": {"annotations": {
                    RELOADED_FROM: json.dumps({"kind": "Secret", "name": self.service.secret_name, "hash": now})}}}}}
                status, answer = self.service.cluster.request("PATCH", path, body, "application/merge-patch+json")
                if status != 200:
                    self.error = f"HTTP {status}: {answer}"
                    return
                self.reloads += 1
        except Exception as error:  # reported by the test, not lost in a thread
            self.error = repr(error)


def _annotate(service: Service, annotations: dict[str, str]) -> None:
    path = f"/apis/apps/v1/namespaces/{service.namespace}/deployments/{service.name}"
    status, answer = service.cluster.request("PATCH", path, {"metadata": {"annotations": annotations}},
                                             "application/merge-patch+json")
    assert status == 200, answer


def _grant_auto_listing(service: Service) -> None:
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{service.namespace}/roles/credential-rotation"
    status, role = service.cluster.request("GET", path)
    assert status == 200, role
    status, answer = service.cluster.request("PATCH", path, {"rules": role["rules"] + [AUTO_RULE]},
                                             "application/merge-patch+json")
    assert status == 200, answer


def test_reloader_restarts_once_a_missing_reloader_is_stood_in_for_and_auto_finds_the_workload(
        sandbox: Any, tmp_path: Path) -> None:
    reloaded, unwatched, found = (Service(sandbox, tmp_path) for _ in range(3))
    for service in (reloaded, unwatched):
        _annotate(service, RELOADER)
    _grant_auto_listing(found)
    generations = {s.namespace: s.deployment()["metadata"]["generation"] for s in (reloaded, unwatched, found)}
    hosts = {
        "reloaded": {**_variables(reloaded), "credential_rotation_service_name": "reloaded",
                     "credential_rotation_reloader_grace": 20},
        "unwatched": {**_variables(unwatched), "credential_rotation_service_name": "unwatched",
                      "credential_rotation_reloader_grace": 2},
        "found": {**_variables(found), "credential_rotation_service_name": "found",
                  "credential_rotation_workloads": "auto", "credential_rotation_deployments": []},
    }
    # The check-mode preview says who restarts what, and changes nothing.
    versions = {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (reloaded, unwatched, found)}
    preview = _run(sandbox, hosts, tmp_path, check=True, diff=True)
    assert preview.returncode == 0, preview.stdout[-3000:]
    assert (f"wait for Reloader to restart Deployment {reloaded.namespace}/svc (restarting it after 20 s if it "
            "does not)") in outcome(preview, "reloaded")
    assert f"restart Deployment {found.namespace}/svc," in outcome(preview, "found")
    assert "unchanged: Reloader restarts it" in preview.stdout
    assert {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (reloaded, unwatched, found)} == versions

    reloader = StandInReloader(reloaded)
    reloader.start()
    try:
        result = _run(sandbox, hosts, tmp_path)
    finally:
        reloader.stop.set()
        reloader.join(5)
    assert not reloader.error, reloader.error
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    for name, service in (("reloaded", reloaded), ("unwatched", unwatched), ("found", found)):
        assert outcome(result, name).startswith(f"rotated ({service.original_id} -> "), outcome(result, name)
        new_id = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_id)

    # Reloader restarted its Deployment once; the rotation left its template alone: one rollout.
    template = reloaded.deployment()["spec"]["template"]["metadata"].get("annotations") or {}
    assert reloader.reloads == 1
    assert RELOADED_FROM in template and "xapi.io/rotated-at" not in template
    assert reloaded.deployment()["metadata"]["generation"] == generations[reloaded.namespace] + 1
    assert "itself" not in outcome(result, "reloaded")
    # Nobody restarted the other one within its grace, so the rotation did, once, and said so.
    template = unwatched.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert template["xapi.io/rotated-at"].startswith(unwatched.data()["id"] + "-")
    assert unwatched.deployment()["metadata"]["generation"] == generations[unwatched.namespace] + 1
    assert (f"restarted Deployment {unwatched.namespace}/svc itself: its Reloader annotation asked for a restart, "
            "but none started within 2 s") in outcome(result, "unwatched")
    # auto found the Deployment the inventory does not name, and restarted it.
    template = found.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert template["xapi.io/rotated-at"].startswith(found.data()["id"] + "-")
    assert found.deployment()["metadata"]["generation"] == generations[found.namespace] + 1
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr, "preview": preview.stdout},
                    [s.original_token for s in (reloaded, unwatched, found)]
                    + [s.token() for s in (reloaded, unwatched, found)])

    # A second run changes nothing.
    versions = {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (reloaded, unwatched, found)}
    again = _run(sandbox, hosts, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:]
    for name in hosts:
        assert outcome(again, name).startswith("not due"), outcome(again, name)
    assert {s.namespace: s.secret()["metadata"]["resourceVersion"] for s in (reloaded, unwatched, found)} == versions


def test_auto_without_the_list_grant_fails_before_anything_changes(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path)
    hosts = {"svc": {**_variables(service), "credential_rotation_workloads": "auto",
                     "credential_rotation_deployments": []}}
    before = (service.secret()["metadata"]["resourceVersion"], service.identities())
    result = _run(sandbox, hosts, tmp_path)
    assert result.returncode != 0
    summary = outcome(result)
    assert summary.startswith("failed (Could not list the workloads of namespace"), summary
    assert "allow the identity to list deployments, statefulsets and daemonsets (deploy/rbac.yml)" in summary
    assert (service.secret()["metadata"]["resourceVersion"], service.identities()) == before

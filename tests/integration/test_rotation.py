"""The credential_rotation role through playbooks/rotate.yml, against the sandbox.

Every test seeds its own service (namespace, system user, Secret, Deployment) and runs the playbook
with a kubeconfig whose identity has exactly the grants of deploy/rbac.yml, so a step that needs
more than the documented Role fails here. Helpers used by the other test_rotation_*.py files live
here too.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, ansible_env, playbook_command
from tests.sandbox.k8s.__main__ import kubeconfig_text
from tests.sandbox.seed import WORKLOAD_PLURALS, Cluster, seed_service, wait_available

ROTATE = "playbooks/rotate.yml"
RBAC = REPO / "deploy" / "rbac.yml"
STATE_ANNOTATIONS = ("xapi.io/rotation-phase", "xapi.io/pending-id", "xapi.io/pending-name", "xapi.io/previous-id",
                     "xapi.io/restart-marker", "xapi.io/failed-id", "xapi.io/rotation-lock-holder")
FAST_PODS = {"sandbox.xapi.io/pod-start-delay": "0.3", "sandbox.xapi.io/pod-ready-delay": "0.2",
             "sandbox.xapi.io/termination-grace": "1"}
_names = itertools.count(1)

pytestmark = pytest.mark.slow


class Service:
    """One seeded service and the means to inspect it from the outside."""

    def __init__(self, sandbox: Any, tmp_path: Path, strategy: str = "restart", expires_in_days: int = 5,
                 replicas: int = 2, host_vars: dict[str, Any] | None = None, kind: str = "Deployment",
                 workload_spec: dict[str, Any] | None = None, emulator_dir: Path | None = None,
                 context: str = "xapi-sandbox", namespace: str | None = None,
                 system_user_name: str | None = None) -> None:
        """A service due in ``expires_in_days``, named ``svc`` in the summary.

        ``kind`` runs its pods from a StatefulSet or DaemonSet instead (listed in
        credential_rotation_workloads, ``workload_spec`` merged over its spec); ``emulator_dir`` is
        another emulator's state directory (a second cluster; its restricted kubeconfig then names
        ``context``); ``namespace`` and ``system_user_name`` pick names instead of fresh ones.
        """
        self.sandbox = sandbox
        # Unique across modules that import this one (pytest may load it twice) and across sessions.
        self.namespace = namespace or f"rot{next(_names)}-{uuid.uuid4().hex[:6]}"
        self.name = "svc"
        self.strategy = strategy
        self.kind = kind
        self.emulator_dir = Path(emulator_dir) if emulator_dir else Path(sandbox.dir) / "k8s"
        self.context = context
        # Files in tmp_path: one namespace may hold a service in each cluster.
        self._file_label = self.namespace if context == "xapi-sandbox" else f"{context}-{self.namespace}"
        admin_kubeconfig = (sandbox.kubeconfig if emulator_dir is None
                            else json.loads((self.emulator_dir / "ready.json").read_text())["kubeconfig"])
        self.cluster = Cluster(admin_kubeconfig)
        info = seed_service(sandbox.url, sandbox.admin_token, admin_kubeconfig, self.namespace, self.name,
                            replicas=replicas, expires_in_days=expires_in_days, strategy=strategy,
                            platform_ca=sandbox.ca_path, reload_interval=1.0, kind=kind, workload_spec=workload_spec,
                            system_user_name=system_user_name,
                            template_annotations=None if kind == "Deployment" else FAST_PODS)
        if kind == "Deployment":
            # Quicker pods than the emulator's defaults (set per pod template, so other tests keep theirs).
            status, answer = self.cluster.request(
                "PATCH", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}",
                {"spec": {"template": {"metadata": {"annotations": FAST_PODS}}}}, "application/merge-patch+json")
            assert status == 200, answer
        wait_available(admin_kubeconfig, self.namespace, self.name, kind=kind)
        deadline = time.monotonic() + 30
        while any(p["terminating"] for p in self.pods()) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.secret_name: str = info["secret"]
        self.original_id: str = info["system_user_id"]
        self.original_token = self.token()
        self.prefix = (host_vars or {}).get("credential_rotation_name_prefix") or f"{self.namespace}.{self.secret_name}"
        self.kubeconfig = self._restricted_kubeconfig(tmp_path)
        self.inventory = tmp_path / f"inventory-{self._file_label}.yml"
        variables = {
            "credential_rotation_namespace": self.namespace,
            "credential_rotation_secret_name": self.secret_name,
            **({"credential_rotation_deployments": [self.name]} if kind == "Deployment" else
               {"credential_rotation_workloads": [{"kind": kind, "name": self.name}]}),
            "credential_rotation_strategy": strategy,
            "credential_rotation_poll_interval": 1,
            "credential_rotation_rollout_timeout": 60,
            "credential_rotation_drain_timeout": 60,
            "credential_rotation_usage_timeout": 30,
            "credential_rotation_reload_interval": 1,
            "credential_rotation_kubelet_sync_delay": 2,
            "credential_rotation_service_name": self.name,
            **(host_vars or {}),
        }
        self.inventory.write_text(yaml.safe_dump({"services": {"hosts": {self.name: variables}}}))

    def _restricted_kubeconfig(self, tmp_path: Path) -> Path:
        """A kubeconfig for a ServiceAccount bound to deploy/rbac.yml's Role, for this service's names."""
        for document in yaml.safe_load(RBAC.read_text())["items"]:
            document["metadata"]["namespace"] = self.namespace
            if document["kind"] == "Role":
                for rule in document["rules"]:
                    if "secrets" in rule["resources"] and "resourceNames" in rule:
                        rule["resourceNames"] = [self.secret_name, f"{self.secret_name}-rotation"]
                    elif "deployments" in rule["resources"]:
                        rule["resources"] = [WORKLOAD_PLURALS[self.kind]]
                        rule["resourceNames"] = [self.name]
                plural = "roles"
            else:
                document["subjects"][0]["namespace"] = self.namespace
                plural = "rolebindings"
            status, answer = self.cluster.request(
                "POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}/{plural}", document)
            assert status == 201, answer
        user = f"system:serviceaccount:{self.namespace}:credential-rotation"
        status, answer = self.cluster.request("POST", "/_sandbox/tokens", {"user": user})
        assert status == 201, answer
        ready = json.loads((self.emulator_dir / "ready.json").read_text())
        path = tmp_path / f"kubeconfig-{self._file_label}"
        path.write_text(kubeconfig_text(ready["url"], Path(ready["ca_file"]), answer["data"]["token"], self.namespace,
                                        self.context))
        return path

    # -- what the outside world sees ---------------------------------------------------------

    def secret(self) -> dict[str, Any]:
        status, answer = self.cluster.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret_name}")
        assert status == 200, answer
        return answer

    def data(self) -> dict[str, str]:
        return {k: base64.b64decode(v).decode() for k, v in (self.secret().get("data") or {}).items()}

    def companion(self) -> dict[str, Any]:
        """The companion Secret where the rotation keeps the pending and previous tokens."""
        status, answer = self.cluster.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/secrets/{self.secret_name}-rotation")
        return answer if status == 200 else {}

    def token(self) -> str:
        return self.data()["token"]

    def annotations(self) -> dict[str, str]:
        return self.secret()["metadata"].get("annotations") or {}

    def deployment(self) -> dict[str, Any]:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}"
        status, answer = self.cluster.request("GET", path)
        assert status == 200, answer
        return answer

    def workload(self) -> dict[str, Any]:
        """The Deployment, StatefulSet or DaemonSet that runs the pods."""
        path = f"/apis/apps/v1/namespaces/{self.namespace}/{WORKLOAD_PLURALS[self.kind]}/{self.name}"
        status, answer = self.cluster.request("GET", path)
        assert status == 200, answer
        return answer

    def users(self) -> list[dict[str, Any]]:
        """The platform's users of this service: the seeded one and every one the role created."""
        return [u for u in self.sandbox.state()["system_users"]
                if u["id"] == self.original_id or u["name"].startswith(self.prefix + "-")]

    def identities(self) -> list[tuple[str, str, bool, str]]:
        """What a rotation changes about the users (last_used_at moves with the workload's calls)."""
        return sorted((u["id"], u["name"], u["active"], u["expires_at"]) for u in self.users())

    def active_users(self) -> list[dict[str, Any]]:
        return [u for u in self.users() if u["active"]]

    def requests_of(self, *user_ids: str) -> dict[str, dict[str, int]]:
        by_user = self.sandbox.state()["requests"]["by_user"]
        return {user_id: by_user.get(user_id, {}) for user_id in user_ids}

    def pods(self) -> list[dict[str, Any]]:
        status, answer = self.cluster.request("GET", "/_sandbox/state")
        assert status == 200, answer
        return [p for p in answer["data"]["pods"] if p["namespace"] == self.namespace]

    # -- running the playbook ----------------------------------------------------------------

    def command(self, extra_vars: dict[str, Any] | None = None, check: bool = False, diff: bool = False,
                verbosity: int = 0) -> list[str]:
        return playbook_command(ROTATE, str(self.inventory), extra_vars, check, diff, verbosity)

    def env(self) -> dict[str, str]:
        return ansible_env(self.sandbox, {"KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"})

    def rotate(self, extra_vars: dict[str, Any] | None = None, check: bool = False, diff: bool = False,
               verbosity: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(extra_vars, check, diff, verbosity), cwd=REPO, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def rotate_until(self, task_name: str, extra_vars: dict[str, Any] | None = None, timeout: float = 300) -> str:
        """Run the playbook and SIGKILL it (with its workers) as soon as it starts the task `task_name`.

        Ansible prints a task's banner before running it, so the previous task has finished and the
        named one may or may not have begun: the crash lands on that step boundary.
        """
        process = subprocess.Popen(self.command(extra_vars), cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        banner = re.compile(r"^TASK \[[^\]]*: " + re.escape(task_name) + r"\]")
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            assert process.stdout is not None
            for line in process.stdout:
                seen.append(line)
                if banner.match(line):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(30)
                    return "".join(seen)
                if time.monotonic() > deadline:
                    break
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        raise AssertionError(f"the run never reached task {task_name!r}:\n" + "".join(seen)[-4000:])

    def wait_for_lock_expiry(self) -> None:
        """A killed run's lock stays until it lapses (a minute at most with the defaults); sleep until then."""
        expires = self.annotations().get("xapi.io/rotation-lock-expires-at")
        if not expires:
            return
        deadline = time.mktime(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        delay = deadline - time.time() + 1
        assert delay < 120, f"lock expires too late for a test: {expires}"
        if delay > 0:
            time.sleep(delay)

    # -- the properties every finished rotation must have ------------------------------------

    def assert_rotated_cleanly(self, old_id: str, allow_expired_lock: bool = False) -> str:
        """Exactly one active credential, the one the Secret references; the old one inactive; no state left."""
        data = self.data()
        active = self.active_users()
        assert [u["id"] for u in active] == [data["id"]], (
            f"active credentials {[(u['id'], u['name']) for u in active]} but the Secret references {data['id']}")
        assert data["id"] != old_id
        assert active[0]["name"].startswith(self.prefix + "-")
        assert not any(u["active"] for u in self.users() if u["id"] == old_id)
        token_owner = self.sandbox.api("GET", "/api/v1/system-users/token-info", token=data["token"])
        assert token_owner.status_code == 200 and token_owner.json()["data"]["id"] == data["id"]
        assert "pending-token" not in data and "previous-token" not in data
        assert not (self.companion().get("data") or {}), "the companion Secret still holds tokens"
        annotations = self.annotations()
        left = {k: v for k, v in annotations.items() if k in STATE_ANNOTATIONS}
        if allow_expired_lock and "xapi.io/rotation-lock-holder" in left:
            expires = annotations["xapi.io/rotation-lock-expires-at"]
            assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > expires, f"lock still valid until {expires}"
            del left["xapi.io/rotation-lock-holder"]
        assert not left, f"rotation state left in the Secret: {left}"
        return data["id"]

    def assert_no_failed_requests(self, *user_ids: str) -> None:
        counts = self.requests_of(*user_ids)
        failed = {uid: {s: n for s, n in c.items() if not s.startswith("2")} for uid, c in counts.items()}
        assert not any(failed.values()), f"the workload got errors during the rotation: {failed}"
        assert any(counts.values()), "the workload made no request at all; the check proves nothing"


def outcome(result: subprocess.CompletedProcess, host: str = "svc") -> str:
    """The one-line summary for `host` (the first one printed): the role's, or the summary play's list item."""
    match = re.search(rf"(?:msg: |^ +- )[\"']?{host}: ([^\n]*(?:\n {{8}}[^\n]*)*)", result.stdout, re.MULTILINE)
    assert match, f"no summary line for {host}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    # The YAML callback doubles single quotes inside single-quoted scalars.
    return " ".join(part.strip() for part in match.group(1).splitlines()).rstrip("'\"").replace("''", "'")


RECAP_KEYS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def recap(result: subprocess.CompletedProcess, host: str = "svc") -> dict[str, int]:
    """A host's PLAY RECAP counts. The role's steps run once, on the play's first host, and only the
    hosts of failed services run a task of their own (the fail), so Ansible leaves the other hosts out
    of the recap: all their counts are zero. The play must have got that far (a recap at all)."""
    assert "PLAY RECAP" in result.stdout, result.stdout[-2000:]
    match = re.search(rf"^{host}\s+:\s+(.*)$", result.stdout, re.MULTILINE)
    if not match:
        return dict.fromkeys(RECAP_KEYS, 0)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def assert_no_token(texts: dict[str, str], tokens: list[str]) -> None:
    """No token, nor its base64 form, in any of the texts."""
    for token in tokens:
        forms = {token, base64.b64encode(token.encode()).decode(), token[4:]}
        for where, text in texts.items():
            for form in forms:
                assert form not in text, f"a token ({'base64' if form != token else 'plain'}) leaked into {where}"


@pytest.fixture
def service(sandbox: Any, tmp_path: Path):
    """A fresh restart-strategy service whose credential is due (5 days left, threshold 7)."""
    return Service(sandbox, tmp_path)


def test_first_run_rotates_and_second_run_changes_nothing(service: Service, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    # At -vvvv with --diff and an audit log: the run that handles both tokens must print neither.
    first = service.rotate({"credential_rotation_audit_log": str(audit)}, verbosity=4, diff=True)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert outcome(first).startswith(f"rotated ({service.original_id} -> "), first.stdout[-3000:]
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    # Every pod now runs from the rotation's template and holds the new token.
    marker = service.deployment()["spec"]["template"]["metadata"]["annotations"]["xapi.io/rotated-at"]
    assert marker.startswith(new_id + "-")
    new_token = service.token()
    fingerprint = hashlib.sha256(new_token.encode()).hexdigest()[:8]
    assert {p["token_fingerprint"] for p in service.pods() if not p["terminating"]} == {fingerprint}
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["event"] for r in records] == ["rotated"]
    assert records[0]["old_id"] == service.original_id and records[0]["new_id"] == new_id
    assert records[0]["new_fingerprint"] == fingerprint
    assert_no_token({"stdout": first.stdout, "stderr": first.stderr, "audit log": audit.read_text()},
                    [service.original_token, new_token])

    users_before = service.identities()
    secret_before = service.secret()
    generation_before = service.deployment()["metadata"]["generation"]
    second = service.rotate()
    assert second.returncode == 0, second.stdout[-3000:]
    assert re.match(r"not due \((89|90) days left\)$", outcome(second)), outcome(second)
    assert recap(second)["changed"] == 0
    assert service.identities() == users_before
    assert service.secret()["metadata"]["resourceVersion"] == secret_before["metadata"]["resourceVersion"]
    assert service.deployment()["metadata"]["generation"] == generation_before

    # The check-mode preview of a forced next rotation, at the same verbosity, leaks nothing either.
    preview = service.rotate({"credential_rotation_force": True}, check=True, diff=True, verbosity=4)
    assert preview.returncode == 0
    assert_no_token({"check stdout": preview.stdout, "check stderr": preview.stderr},
                    [service.original_token, new_token])
    assert service.secret()["metadata"]["resourceVersion"] == secret_before["metadata"]["resourceVersion"]


def test_check_mode_previews_without_changing_anything(service: Service) -> None:
    platform_before = service.identities()
    secret_before = service.secret()
    deployment_before = service.deployment()

    result = service.rotate(check=True, diff=True)

    assert result.returncode == 0, result.stdout[-3000:]
    preview = outcome(result)
    assert preview.startswith("would rotate (4 days left (threshold 7)") or preview.startswith("would rotate (5 days")
    assert f"would create system user {service.prefix}-" in preview
    assert f"write Secret {service.namespace}/{service.secret_name}" in preview
    assert f"restart Deployment {service.namespace}/{service.name}" in preview
    assert f"then deactivate {service.original_id}" in preview
    assert service.identities() == platform_before
    assert service.secret() == secret_before
    assert service.deployment()["metadata"]["generation"] == deployment_before["metadata"]["generation"]
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr}, [service.original_token])


def test_reload_strategy_rotates_without_restart_or_failed_request(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path, strategy="reload")
    generation = service.deployment()["metadata"]["generation"]
    pods_before = sorted(p["name"] for p in service.pods())

    result = service.rotate()

    assert result.returncode == 0, result.stdout[-4000:]
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    assert service.deployment()["metadata"]["generation"] == generation, "strategy reload restarted the workload"
    assert sorted(p["name"] for p in service.pods()) == pods_before


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_rollout_that_never_completes_is_rolled_back(service: Service, tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    audit = tmp_path / "audit.jsonl"
    status, answer = service.cluster.request("POST", "/_sandbox/faults", {
        "namespace": service.namespace, "deployment": service.name, "never_ready": True})
    assert status == 200, answer
    try:
        # Two rollouts that never complete (the rotation's and the rollback's): allow for a busy machine.
        result = service.rotate({"credential_rotation_rollout_timeout": 8, "credential_rotation_drain_timeout": 30,
                                 "credential_rotation_failure_webhook_url": f"http://127.0.0.1:{server.server_port}/hook",
                                 "credential_rotation_audit_log": str(audit)}, timeout=600)
    finally:
        service.cluster.request("DELETE", "/_sandbox/faults")
        server.shutdown()

    assert result.returncode != 0
    summary = outcome(result)
    assert summary.startswith("failed (The rollout of Deployment"), summary
    restored = f"rolled back: the Secret holds the previous credential {service.original_id} again (still active)"
    assert restored in summary
    assert "Traceback" not in result.stdout + result.stderr
    data = service.data()
    assert data["id"] == service.original_id and data["token"] == service.original_token
    assert [u["id"] for u in service.active_users()] == [service.original_id]
    assert len(service.users()) == 2, "the new credential should exist, deactivated"
    assert not any(k in STATE_ANNOTATIONS for k in service.annotations())
    assert "pending-token" not in data and "previous-token" not in data
    service.assert_no_failed_requests(service.original_id)
    assert len(_Webhook.received) == 1 and "failed" in _Webhook.received[0]["text"]
    # One record per service and run: the rollback, with what failed.
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["event"] for r in records] == ["rolled_back"]
    assert records[0]["message"].startswith("The rollout of Deployment") and records[0]["old_id"] == service.original_id
    assert_no_token({"stdout": result.stdout, "webhook": json.dumps(_Webhook.received), "audit": audit.read_text()},
                    [service.original_token])


def test_lost_create_answers_do_not_leave_a_second_credential(service: Service) -> None:
    service.sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "drop_after_commit": True, "count": 1}).raise_for_status()
    service.sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "status": 503, "count": 1}).raise_for_status()
    try:
        result = service.rotate()
    finally:
        service.sandbox.api("DELETE", "/_sandbox/faults")
    assert result.returncode == 0, result.stdout[-4000:]
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)


def test_create_that_keeps_failing_changes_nothing(service: Service) -> None:
    service.sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "status": 503, "count": None}).raise_for_status()
    try:
        result = service.rotate({"credential_rotation_create_attempts": 2})
    finally:
        service.sandbox.api("DELETE", "/_sandbox/faults")
    assert result.returncode != 0
    summary = outcome(result)
    assert summary.startswith("failed (Could not create a new system user"), summary
    assert "(after 1 retry)" in summary, summary  # two attempts
    assert "the current one is untouched" in summary
    assert [u["id"] for u in service.active_users()] == [service.original_id]
    assert service.data()["token"] == service.original_token
    assert not any(k in STATE_ANNOTATIONS for k in service.annotations())


def test_two_concurrent_runs_rotate_once(service: Service) -> None:
    processes = [subprocess.Popen(service.command(), cwd=REPO, env=service.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [subprocess.CompletedProcess(p.args, p.wait(300), *p.communicate()) for p in processes]

    assert all(r.returncode == 0 for r in results), [r.stdout[-2000:] for r in results]
    outcomes = sorted(outcome(r) for r in results)
    # Both start together: the loser either took the lock at the same moment (its conditional write got
    # 409) or found it held, waited until the winner released it and then found nothing due. Either way
    # it says so, and only one credential is created.
    loser = outcomes[0] if outcomes[1].startswith("rotated (") else outcomes[1]
    assert any(o.startswith("rotated (") for o in outcomes), outcomes
    assert loser.startswith("skipped (another run took the rotation lock at the same moment") or (
        loser.startswith("not due (") and "waited" in loser and "for another run's lock" in loser), outcomes
    new_id = service.assert_rotated_cleanly(service.original_id)
    assert len(service.users()) == 2, [u["name"] for u in service.users()]
    service.assert_no_failed_requests(service.original_id, new_id)


def test_a_held_lock_is_respected(service: Service) -> None:
    # A run that dies right after taking the lock leaves it held for lock_duration seconds (its
    # expiry and the takeover are what the crash tests exercise).
    service.rotate_until("Create the new system users", {"credential_rotation_lock_duration": 120})
    holder = service.annotations()["xapi.io/rotation-lock-holder"]
    blocked = service.rotate({"credential_rotation_lock_wait": 2})
    assert blocked.returncode == 0
    skipped = f"skipped (another run holds the rotation lock ({holder} until "
    assert outcome(blocked).startswith(skipped), outcome(blocked)
    assert [u["id"] for u in service.active_users()] == [service.original_id]
    assert service.annotations()["xapi.io/rotation-lock-holder"] == holder


def test_bad_input_is_one_sentence_and_changes_nothing(service: Service) -> None:
    secret_before = service.secret()
    cases = {
        "credential_rotation_threshold_days": (
            2, "credential_rotation_threshold_days is 2, below the minimum of 3 days"),
        "credential_rotation_expires_in_days": (
            400, "credential_rotation_expires_in_days is 400; set it between 1 and 365."),
        # deploy/rbac.yml grants this one Secret only, so another name is forbidden, not missing.
        "credential_rotation_secret_name": (
            "missing", f'Could not read Secret {service.namespace}/missing (secrets "missing" is forbidden'),
        "credential_rotation_name_prefix": ("bad prefix!", 'credential_rotation_name_prefix "bad prefix!" may only'),
    }
    for variable, (value, sentence) in cases.items():
        result = service.rotate({variable: value})
        assert result.returncode != 0, variable
        assert sentence in " ".join(result.stdout.split()), (variable, result.stdout[-2000:])
        assert "Traceback" not in result.stdout + result.stderr
    strategy = service.rotate({"credential_rotation_strategy": "rolling"})
    assert strategy.returncode != 0 and "credential_rotation_strategy" in strategy.stdout + strategy.stderr
    assert service.secret() == secret_before
    assert [u["id"] for u in service.active_users()] == [service.original_id]

"""rotate.yml over the workloads and clusters operators really have (issue 13), against the sandbox.

- StatefulSets and DaemonSets, under both strategies (restart; reload: hot reload, no restart);
- Secrets the run must not touch: one an ExternalSecret owns (ownerReferences) and one External
  Secrets Operator's labels and annotations mark, and workloads a restart would not roll (a
  StatefulSet partition, OnDelete), all refused before anything of them changes, in the same run as
  the good services;
- a Secret a listed Deployment and an unlisted CronJob's pod read: the old credential is
  deactivated only once that pod has ended;
- one run over services in two clusters (two emulators), each written in its own.

Every scenario counts what the consumers see: the emulator's pods call the platform with the token
they hold, so a pod left holding a deactivated token shows up as a 401 in the platform's counters.
One run covers several services wherever the scenario allows (the engine does every step for all
of them at once), so the module costs a handful of runs. The crash at every step boundary on a
StatefulSet lives in test_rotation_crash.py; kubectl's own rollouts of both kinds in
test_k8s_statefulset_daemonset.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, ansible_env, playbook_command
from tests.integration.test_rotation import FAST_PODS, ROTATE, Service, assert_no_token, outcome, recap
from tests.sandbox.k8s.testing import second_cluster  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.slow

ESO_OWNER = {"apiVersion": "external-secrets.io/v1beta1", "kind": "ExternalSecret", "name": "svc-token",
             "uid": "5d2c7e9a-0000-4000-8000-00000000e5e5", "controller": True, "blockOwnerDeletion": True}
# What External Secrets Operator puts on the Secrets it writes, for a Secret whose owner reference is gone.
ESO_MARKS = {"labels": {"reconcile.external-secrets.io/created-by": "0f3c5d1e9b2a4c6d8e7f6a5b4c3d2e1f"},
             "annotations": {"reconcile.external-secrets.io/data-hash": "3a7bd3e2360a3d29eea436fcfb7e44c7"}}


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def _host_vars(service: Service, host: str, **extra: Any) -> dict[str, Any]:
    """A service's inventory variables under the name ``host``, with its own restricted kubeconfig."""
    variables = yaml.safe_load(service.inventory.read_text())["services"]["hosts"][service.name]
    return {**variables, "credential_rotation_kubeconfig": str(service.kubeconfig),
            "credential_rotation_service_name": host, **extra}


def _command(hosts: dict[str, dict[str, Any]], directory: Path, label: str) -> list[str]:
    inventory = directory / f"inventory-{label}.yml"
    inventory.write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    return playbook_command(ROTATE, str(inventory))


def _run(sandbox: Any, hosts: dict[str, dict[str, Any]], directory: Path, label: str) -> subprocess.CompletedProcess:
    # KUBECONFIG stays the first cluster's admin: a service whose own kubeconfig were ignored would
    # land there, with every right, and be caught by the twin Secrets below rather than by a 403.
    env = ansible_env(sandbox, {"PYTHONUNBUFFERED": "1"})
    return subprocess.run(_command(hosts, directory, label), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _creates(sandbox: Any) -> int:
    return sandbox.state()["requests"]["by_route"].get("POST /api/v1/system-users", {}).get("201", 0)


def _seed(specs: dict[str, dict[str, Any]], sandbox: Any, directory: Path) -> dict[str, Service]:
    """Seed several services at once (each waits for its own rollout)."""
    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        futures = {host: pool.submit(Service, sandbox, directory, **spec) for host, spec in specs.items()}
        return {host: future.result() for host, future in futures.items()}


def _pods(service: Service) -> dict[str, str]:
    """{name: uid} of the workload's pods, Terminating ones included."""
    status, answer = service.cluster.request(
        "GET", f"/api/v1/namespaces/{service.namespace}/pods?labelSelector=app%3D{service.name}")
    assert status == 200, answer
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in answer["items"]}


def _live_fingerprints(service: Service) -> set[str | None]:
    return {p["token_fingerprint"] for p in service.pods() if p["workload"] == service.name and not p["terminating"]}


def _patch_secret(service: Service, metadata: dict[str, Any]) -> None:
    status, answer = service.cluster.request(
        "PATCH", f"/api/v1/namespaces/{service.namespace}/secrets/{service.secret_name}", {"metadata": metadata},
        "application/merge-patch+json")
    assert status == 200, answer


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and not re.search(r"[.;:]\s+[A-Z]", message[:-1])


def _failed_sentence(result: subprocess.CompletedProcess, host: str) -> str:
    summary = outcome(result, host)
    assert summary.startswith("failed (") and summary.endswith(")"), (host, summary)
    return summary[len("failed ("):-1]


def _snapshot(service: Service) -> dict[str, Any]:
    """Everything of a service a run could change: Secret, companion, workload, pods, credentials."""
    workload = service.workload()
    return {"secret": service.secret(), "companion": service.companion(), "pods": _pods(service),
            "workload": (workload["metadata"]["generation"], workload["spec"]), "users": service.identities()}


def _assert_untouched(service: Service, before: dict[str, Any], what: str) -> None:
    after = _snapshot(service)
    assert after["secret"] == before["secret"], f"{what}: its Secret was changed"
    assert not after["companion"], f"{what}: a companion Secret was created"
    assert after["workload"] == before["workload"], f"{what}: its workload was changed"
    assert after["pods"] == before["pods"], f"{what}: its pods were replaced"
    assert after["users"] == before["users"], f"{what}: a credential was created or changed"


# -- StatefulSets and DaemonSets, and what a run must refuse --------------------------------------

GOOD = {
    "sts-restart": {"kind": "StatefulSet"},
    "sts-reload": {"kind": "StatefulSet", "strategy": "reload"},
    "ds-restart": {"kind": "DaemonSet"},
    "ds-reload": {"kind": "DaemonSet", "strategy": "reload"},
}
REFUSED = {
    "eso-owned": {"replicas": 1},
    "eso-marked": {"replicas": 1},
    "sts-partition": {"kind": "StatefulSet", "workload_spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}},
    "sts-ondelete": {"kind": "StatefulSet", "replicas": 1, "workload_spec": {"updateStrategy": {"type": "OnDelete"}}},
    "ds-ondelete": {"kind": "DaemonSet", "workload_spec": {"updateStrategy": {"type": "OnDelete"}}},
}


@pytest.fixture(scope="module")
def kinds(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One run over four good services (StatefulSet and DaemonSet, restart and reload) and five the run
    must refuse, then a second run over the good ones."""
    directory = tmp_path_factory.mktemp("kinds")
    services = _seed({**GOOD, **REFUSED}, sandbox, directory)
    _patch_secret(services["eso-owned"], {"ownerReferences": [ESO_OWNER]})
    _patch_secret(services["eso-marked"], ESO_MARKS)
    before = {host: _snapshot(s) for host, s in services.items()}
    hosts = {host: _host_vars(s, host) for host, s in services.items()}
    creates = _creates(sandbox)

    first = _run(sandbox, hosts, directory, "first")

    created = _creates(sandbox) - creates
    after_first = {host: _snapshot(services[host]) for host in GOOD}
    second = _run(sandbox, {host: hosts[host] for host in GOOD}, directory, "second")
    return SimpleNamespace(services=services, before=before, after_first=after_first, first=first, second=second,
                           created=created)


def test_statefulsets_and_daemonsets_rotate_under_both_strategies_without_a_failed_request(
        kinds: SimpleNamespace) -> None:
    first = kinds.first
    assert "Traceback" not in first.stdout + first.stderr
    tokens = []
    for host in GOOD:
        service = kinds.services[host]
        summary = outcome(first, host)
        assert summary.startswith(f"rotated ({service.original_id} -> "), (host, summary, first.stdout[-3000:])
        assert recap(first, host)["failed"] == 0, host
        new_id = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_id)
        new = _fingerprint(service.token())
        tokens += [service.original_token, service.token()]
        generation, _ = kinds.before[host]["workload"]
        workload = service.workload()
        assert _live_fingerprints(service) == {new}, (host, service.pods())
        if service.strategy == "restart":
            # Restarted once, from a template that carries the rotation's marker: every pod is new.
            assert workload["metadata"]["generation"] == generation + 1, host
            marker = workload["spec"]["template"]["metadata"]["annotations"]["xapi.io/rotated-at"]
            assert marker.startswith(new_id + "-"), (host, marker)
            old_uids = set(kinds.before[host]["pods"].values())
            assert not old_uids & set(_pods(service).values()), f"{host}: a pod from before the restart is left"
        else:
            # Hot reload: the same pods, untouched template, now holding the new token.
            assert workload["metadata"]["generation"] == generation, f"{host}: strategy reload restarted it"
            assert "xapi.io/rotated-at" not in (workload["spec"]["template"]["metadata"].get("annotations") or {})
            assert _pods(service) == kinds.before[host]["pods"], f"{host}: strategy reload replaced pods"
    assert_no_token({"stdout": first.stdout, "stderr": first.stderr}, tokens)


def test_the_second_run_changes_nothing(kinds: SimpleNamespace) -> None:
    second = kinds.second
    assert second.returncode == 0, second.stdout[-3000:]
    for host in GOOD:
        service = kinds.services[host]
        assert re.match(r"not due \((89|90) days left\)$", outcome(second, host)), (host, outcome(second, host))
        assert recap(second, host)["changed"] == 0, host
        now = _snapshot(service)
        then = kinds.after_first[host]
        assert now["secret"]["metadata"]["resourceVersion"] == then["secret"]["metadata"]["resourceVersion"], host
        assert now["workload"] == then["workload"], host
        assert now["pods"] == then["pods"], host
        assert now["users"] == then["users"], host


def test_a_secret_external_secrets_manages_is_refused_and_left_alone(kinds: SimpleNamespace) -> None:
    # test_fleet.py has an owned Secret among many mistakes; here the owned Secret itself is checked too.
    assert kinds.first.returncode != 0, "a refused service must fail the run"
    owners = {"eso-owned": "ExternalSecret svc-token", "eso-marked": "External Secrets Operator (an ExternalSecret)"}
    for host, owner in owners.items():
        service = kinds.services[host]
        sentence = _failed_sentence(kinds.first, host)
        assert sentence.startswith(f"Secret {service.namespace}/{service.secret_name} is managed by {owner}, "), (
            host, sentence)
        assert _one_sentence(sentence), (host, sentence)
        _assert_untouched(service, kinds.before[host], host)
    # The four good services' credentials, and not one more.
    assert kinds.created == len(GOOD)


def test_partitioned_and_on_delete_workloads_are_refused_before_anything_changes(kinds: SimpleNamespace) -> None:
    expected = {
        "sts-partition": "StatefulSet {ns}/svc has a rolling-update partition of 1, so its pods below that ordinal",
        "sts-ondelete": "StatefulSet {ns}/svc uses the OnDelete update strategy, so a restart would not replace",
        "ds-ondelete": "DaemonSet {ns}/svc uses the OnDelete update strategy, so a restart would not replace",
    }
    for host, start in expected.items():
        service = kinds.services[host]
        sentence = _failed_sentence(kinds.first, host)
        assert sentence.startswith(start.format(ns=service.namespace)), (host, sentence)
        assert _one_sentence(sentence), (host, sentence)
        assert recap(kinds.first, host)["failed"] == 1, host
        _assert_untouched(service, kinds.before[host], host)
        service.assert_no_failed_requests(service.original_id)
    assert kinds.created == len(GOOD)


# -- a Secret an unlisted CronJob's pod reads ------------------------------------------------------

JOB_SECONDS = 20  # outlasts the listed Deployment's rollout: the drain must wait for the Job's pod


class _Observer(threading.Thread):
    """Samples, a few times a second, what the order of events is judged by: whether the old
    credential is active, which credential the Secret holds, and the pods' state."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                user = self.service.sandbox.api("GET", f"/api/v1/system-users/{self.service.original_id}").json()
                self.samples.append({"old_active": user["data"]["active"], "secret_id": self.service.data()["id"],
                                     "pods": self.service.pods()})
            except Exception as error:  # a missed sample is no evidence either way
                self.samples.append({"error": repr(error)})
            self.stop.wait(0.2)


@pytest.fixture(scope="module")
def unlisted_job(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A listed Deployment and an unlisted CronJob's pod read one Secret; the Job starts during the run,
    before the promotion, and runs on well past the Deployment's rollout."""
    directory = tmp_path_factory.mktemp("unlisted-job")
    service = Service(sandbox, directory)
    container = {"name": "report", "image": "registry.example/xapi/report:1.0",
                 "env": [{"name": "XAPI_TOKEN",
                          "valueFrom": {"secretKeyRef": {"name": service.secret_name, "key": "token"}}}]}
    template = {"metadata": {"labels": {"app": "nightly-report"},
                             "annotations": {**FAST_PODS, "sandbox.xapi.io/job-duration": str(JOB_SECONDS)}},
                "spec": {"restartPolicy": "Never", "containers": [container]}}
    cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly-report"},
               "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}}
    status, answer = service.cluster.request("POST", f"/apis/batch/v1/namespaces/{service.namespace}/cronjobs",
                                             cronjob)
    assert status == 201, answer
    # The create is answered 3 s late, so that the run is still inside it (before the promotion) when
    # the test, reading its output through a pipe, stops it below: reading the header is not instant.
    fault = sandbox.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "latency": 3.0, "count": 1})
    assert fault.status_code == 201, fault.status_code
    observer = _Observer(service)
    observer.start()
    lines, job = [], None
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(service.command(), cwd=REPO, env=service.env(), stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, start_new_session=True)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if job is None and "TASK [xapi.system_auth.credential_rotation : Create the new system users]" in line:
                    # What the schedule would do now: the CronJob makes its Job, whose pod reads the old
                    # token. The run is held (SIGSTOP, inside its delayed create) until that pod has
                    # started: the steps up to the promotion take less than a pod's start, and the
                    # scenario needs the pod first.
                    os.killpg(process.pid, signal.SIGSTOP)
                    try:
                        status, job = service.cluster.request("POST", "/_sandbox/cronjobs/run",
                                                              {"namespace": service.namespace,
                                                               "name": "nightly-report"})
                        assert status == 201, job
                        deadline = time.monotonic() + 30
                        while not ((pod := _job_pod(service.pods())) and pod["token_fingerprint"]):
                            assert time.monotonic() < deadline, "the Job's pod never started"
                            time.sleep(0.1)
                    finally:
                        os.killpg(process.pid, signal.SIGCONT)
            process.wait(600)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
            observer.stop.set()
            observer.join(10)
            sandbox.api("DELETE", "/_sandbox/faults")
        stderr.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, "".join(lines), stderr.read())
    assert job is not None, "the run never reached the create step:\n" + result.stdout[-3000:]
    return SimpleNamespace(service=service, result=result, samples=observer.samples, job=job["data"]["metadata"])


def _job_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((p for p in pods if p["workload_kind"] == "CronJob"), None)


def test_the_old_credential_is_deactivated_only_after_the_unlisted_job_pod_ended(
        unlisted_job: SimpleNamespace) -> None:
    service, result = unlisted_job.service, unlisted_job.result
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert outcome(result).startswith(f"rotated ({service.original_id} -> "), outcome(result)
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    old, new = _fingerprint(service.original_token), _fingerprint(service.token())

    pod = _job_pod(service.pods())
    assert pod is not None and pod["owner_name"] == unlisted_job.job["name"], service.pods()
    # The scenario is the one claimed: the Job's pod started with the old token, called the platform
    # all along, and ended on its own.
    assert pod["token_fingerprint"] == old and pod["finished"], pod
    assert pod["requests"].get("200", 0) > 0 and set(pod["requests"]) == {"200"}, pod["requests"]

    samples = [s for s in unlisted_job.samples if "error" not in s]
    assert len(samples) > 20, f"too few samples of the run ({len(unlisted_job.samples)}): the order proves nothing"

    def listed_done(sample: dict[str, Any]) -> bool:
        listed = [p for p in sample["pods"] if p["workload"] == service.name and not p["terminating"]]
        return bool(listed) and {p["token_fingerprint"] for p in listed} == {new} and not any(
            p["terminating"] and p["workload"] == service.name for p in sample["pods"])

    # The rotation had to wait for the Job: the Secret held the new credential and the listed
    # Deployment's pods all held it, while the Job's pod still ran with the old one.
    assert any(s["secret_id"] == new_id and listed_done(s) and (j := _job_pod(s["pods"])) and not j["finished"]
               for s in samples), "the Job's pod ended before the listed Deployment's rollout: nothing was waited for"
    # And it waited: never was the old credential inactive while the Job's pod still ran, and the pod
    # was seen ended while the old credential was still active.
    early = [s for s in samples if not s["old_active"] and not ((j := _job_pod(s["pods"])) and j["finished"])]
    assert not early, "the old credential was deactivated while the Job's pod could still use it"
    assert any(s["old_active"] and (j := _job_pod(s["pods"])) and j["finished"] for s in samples)
    assert not samples[-1]["old_active"]


def test_the_summary_names_the_unlisted_pod_the_run_waited_for(unlisted_job: SimpleNamespace) -> None:
    service, result = unlisted_job.service, unlisted_job.result
    assert result.returncode == 0, result.stdout[-3000:]
    pod = _job_pod(service.pods())
    assert pod is not None
    assert pod["name"] in outcome(result), outcome(result)


# -- two clusters ----------------------------------------------------------------------------------

def _merged_kubeconfig(paths: list[Path], current: str, target: Path) -> Path:
    """One kubeconfig holding the contexts of several (kubectl's KUBECONFIG=a:b merge, as one file)."""
    configs = [json.loads(p.read_text()) for p in paths]
    merged = {"apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": current,
              **{key: [entry for c in configs for entry in c[key]] for key in ("clusters", "users", "contexts")}}
    target.write_text(json.dumps(merged, indent=2))
    return target


def test_one_run_over_two_clusters_writes_each_service_in_its_own(
        sandbox: Any, second_cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    other = second_cluster.emulator_process.state_dir
    twins, apart = f"twins-{uuid.uuid4().hex[:6]}", f"apart-{uuid.uuid4().hex[:6]}"
    # The same namespace and Secret in both clusters (two services, told apart by the context), a
    # StatefulSet of the second cluster named by its own kubeconfig, and in the first cluster a twin of
    # that one which is in no inventory: a write sent to the wrong cluster lands on a twin.
    specs = {
        "cluster1-svc": {"namespace": twins, "system_user_name": f"{twins}-svc-1",
                         "host_vars": {"credential_rotation_name_prefix": f"{twins}.svc-token.cluster1"}},
        "cluster2-svc": {"namespace": twins, "system_user_name": f"{twins}-svc-2", "emulator_dir": other,
                         "context": "xapi-sandbox-2", "kind": "DaemonSet",
                         "host_vars": {"credential_rotation_name_prefix": f"{twins}.svc-token.cluster2"}},
        "cluster2-apart": {"namespace": apart, "system_user_name": f"{apart}-svc-2", "emulator_dir": other,
                           "context": "xapi-sandbox-2", "kind": "StatefulSet", "replicas": 1},
        # In no inventory: its prefix only tells the test's view of its credentials from its twin's.
        "decoy": {"namespace": apart, "system_user_name": f"{apart}-svc-1", "replicas": 1,
                  "host_vars": {"credential_rotation_name_prefix": f"{apart}.decoy"}},
    }
    services = _seed(specs, sandbox, tmp_path)
    one, two, apart_svc, decoy = (services[h] for h in specs)
    merged = _merged_kubeconfig([one.kubeconfig, two.kubeconfig], "xapi-sandbox-2", tmp_path / "merged-kubeconfig")
    hosts = {
        # The merged kubeconfig's current context is the second cluster's: only the context sends it home.
        "cluster1-svc": _host_vars(one, "cluster1-svc", credential_rotation_kubeconfig=str(merged),
                                   credential_rotation_context="xapi-sandbox"),
        "cluster2-svc": _host_vars(two, "cluster2-svc", credential_rotation_kubeconfig=str(merged),
                                   credential_rotation_context="xapi-sandbox-2"),
        "cluster2-apart": _host_vars(apart_svc, "cluster2-apart"),
    }
    before = {host: _snapshot(s) for host, s in services.items()}

    result = _run(sandbox, hosts, tmp_path, "clusters")

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for host in hosts:
        service = services[host]
        assert outcome(result, host).startswith(f"rotated ({service.original_id} -> "), (host, outcome(result, host))
        # Its own credential (named by its prefix) is in its own cluster's Secret, its pods there hold it.
        new_id = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_id)
        assert _live_fingerprints(service) == {_fingerprint(service.token())}, host
        workload = service.workload()
        assert workload["metadata"]["generation"] == before[host]["workload"][0] + 1, f"{host}: not restarted once"
        marker = workload["spec"]["template"]["metadata"]["annotations"]["xapi.io/rotated-at"]
        assert marker.startswith(new_id + "-"), (host, marker)
        companion = service.companion()
        assert companion["metadata"]["annotations"]["xapi.io/rotation-for"] == service.secret_name, host
    assert one.data()["id"] != two.data()["id"]
    # Nothing in the wrong cluster: the first cluster's twin of the second cluster's service is as it was.
    _assert_untouched(decoy, before["decoy"], "the first cluster's twin")
    decoy.assert_no_failed_requests(decoy.original_id)
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr},
                    [t for s in services.values() for t in (s.original_token, s.token())])


def test_one_namespace_and_secret_in_two_clusters_with_default_prefixes(
        sandbox: Any, second_cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    # The same service deployed in two clusters, inventoried as operators would: nothing but the
    # kubeconfig tells them apart, so both default to the name prefix <namespace>.<secret>.
    namespace = f"same-{uuid.uuid4().hex[:6]}"
    services = _seed({
        "cluster1": {"namespace": namespace, "system_user_name": f"{namespace}-svc-1", "replicas": 1},
        "cluster2": {"namespace": namespace, "system_user_name": f"{namespace}-svc-2", "replicas": 1,
                     "emulator_dir": second_cluster.emulator_process.state_dir, "context": "xapi-sandbox-2"},
    }, sandbox, tmp_path)
    before = {host: _snapshot(s) for host, s in services.items()}

    result = _run(sandbox, {host: _host_vars(s, host) for host, s in services.items()}, tmp_path, "same-names")

    # Either both rotate (each under a name of its own), or the run refuses the clash before anything
    # changes, with one sentence that names the variable to set.
    if result.returncode == 0:
        for host, service in services.items():
            assert outcome(result, host).startswith(f"rotated ({service.original_id} -> "), outcome(result, host)
            new_id = service.assert_rotated_cleanly(service.original_id)
            service.assert_no_failed_requests(service.original_id, new_id)
        assert services["cluster1"].data()["id"] != services["cluster2"].data()["id"]
    else:
        for host, service in services.items():
            sentence = _failed_sentence(result, host)
            assert "credential_rotation_name_prefix" in sentence and _one_sentence(sentence), (host, sentence)
            _assert_untouched(service, before[host], host)


def test_the_issue_inventory_rotates_in_one_run_and_the_second_changes_nothing(
        sandbox: Any, second_cluster: Any, tmp_path: Path) -> None:  # noqa: F811
    """Issue 13's "done when": Deployments, StatefulSets and DaemonSets in two clusters, one Secret
    External Secrets owns and one Reloader-annotated workload (with a stand-in Reloader), in one run."""
    from tests.integration.test_rotation_reloader import RELOADER, StandInReloader, _annotate

    other = second_cluster.emulator_process.state_dir
    specs = {
        "deploy-reloaded": {},
        "sts-one": {"kind": "StatefulSet", "replicas": 2},
        "ds-two": {"kind": "DaemonSet", "emulator_dir": other, "context": "xapi-sandbox-2"},
        "sts-two": {"kind": "StatefulSet", "replicas": 1, "emulator_dir": other, "context": "xapi-sandbox-2"},
        "eso-owned": {"replicas": 1},
    }
    services = _seed(specs, sandbox, tmp_path)
    _annotate(services["deploy-reloaded"], RELOADER)
    _patch_secret(services["eso-owned"], {"ownerReferences": [ESO_OWNER]})
    hosts = {host: _host_vars(s, host) for host, s in services.items()}
    before = {host: _snapshot(s) for host, s in services.items()}
    reloader = StandInReloader(services["deploy-reloaded"])
    reloader.start()
    try:
        first = _run(sandbox, hosts, tmp_path, "issue-first")
    finally:
        reloader.stop.set()
        reloader.join(5)
    assert not reloader.error, reloader.error

    assert first.returncode != 0  # the refused service fails the run
    assert "is managed by ExternalSecret svc-token" in outcome(first, "eso-owned"), outcome(first, "eso-owned")
    _assert_untouched(services["eso-owned"], before["eso-owned"], "eso-owned")
    for host in ("deploy-reloaded", "sts-one", "ds-two", "sts-two"):
        service = services[host]
        assert outcome(first, host).startswith(f"rotated ({service.original_id} -> "), (host, outcome(first, host))
        new_id = service.assert_rotated_cleanly(service.original_id)
        service.assert_no_failed_requests(service.original_id, new_id)
        # One rollout each: by the rotation, or for the annotated one by Reloader alone.
        assert service.workload()["metadata"]["generation"] == before[host]["workload"][0] + 1, host
    assert reloader.reloads == 1
    assert "xapi.io/rotated-at" not in (services["deploy-reloaded"].workload()["spec"]["template"]["metadata"]
                                        .get("annotations") or {})

    rotated = {h: v for h, v in hosts.items() if h != "eso-owned"}
    after = {host: _snapshot(services[host]) for host in rotated}
    second = _run(sandbox, rotated, tmp_path, "issue-second")
    assert second.returncode == 0, second.stdout[-3000:]
    for host in rotated:
        assert outcome(second, host).startswith("not due"), (host, outcome(second, host))
        assert _snapshot(services[host]) == after[host], f"{host}: the second run changed something"
    assert_no_token({"first": first.stdout + first.stderr, "second": second.stdout + second.stderr},
                    [t for s in services.values() for t in (s.original_token, s.token())])

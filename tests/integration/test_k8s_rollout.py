"""Rolling updates under the simulated workload: the zero-downtime evidence the rotation role relies on.

Each test seeds its own copy of the demo service (namespace of its own, fast pod timings) so that
it neither disturbs nor depends on the session's demo world. The pods call the platform sandbox's
GET /api/v1/tenants with the token they hold; its per-user counters are the evidence.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import requests

from tests.sandbox.k8s.testing import condition, kube, restart_patch, rollout_complete  # noqa: F401  # pylint: disable=unused-import


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _new_credential(sandbox, name: str) -> tuple[str, str, str]:
    """A second system user, as the role's create step makes it: (id, token, fingerprint)."""
    import hashlib

    response = sandbox.api("POST", "/api/v1/system-users", json={"name": name, "expires_in_days": 90})
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return data["id"], data["token"], hashlib.sha256(data["token"].encode()).hexdigest()[:8]


def _store_in_secret(kube, namespace: str, secret: str, user_id: str, token: str) -> None:  # noqa: F811
    response = kube.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/secrets/{secret}",
        {"data": {"token": _b64(token), "id": _b64(user_id)}},
        content_type="application/merge-patch+json",
    )
    assert response.status_code == 200, response.text


def _restart(kube, namespace: str, name: str) -> None:  # noqa: F811
    response = kube.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}",
        restart_patch(),
        content_type="application/strategic-merge-patch+json",
    )
    assert response.status_code == 200, response.text


def _calls(sandbox, user_id: str) -> dict[str, int]:
    return sandbox.state()["requests"]["by_user"].get(user_id, {})


def _settled(kube, namespace: str, name: str, fingerprint: str) -> bool:  # noqa: F811
    """Rollout complete, no terminating pod left, and every pod holds the wanted token."""
    pods = kube.pods_state(namespace, name)
    return (
        rollout_complete(kube.deployment(namespace, name))
        and bool(pods)
        and all(not p["terminating"] and p["token_fingerprint"] == fingerprint for p in pods)
    )


def test_restart_with_a_valid_new_token_causes_no_401(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-ok")
    service = kube.seed(namespace)
    old_id, old_fp = service["system_user_id"], service["token_fingerprint"]
    new_id, new_token, new_fp = _new_credential(sandbox, f"{namespace}-v2")
    _store_in_secret(kube, namespace, service["secret"], new_id, new_token)
    _restart(kube, namespace, service["deployment"])

    overlap = []

    def settled() -> bool:
        held = {p["token_fingerprint"] for p in kube.pods_state(namespace, "payments-api")}
        if {old_fp, new_fp} <= held:
            overlap.append(held)
        return _settled(kube, namespace, "payments-api", new_fp)

    kube.wait_for(settled, 30, "the rollout to finish and the old pods to terminate")
    assert overlap, "old and new pods should have served side by side during the rolling update"
    old_calls, new_calls = _calls(sandbox, old_id), _calls(sandbox, new_id)
    assert old_calls.get("200", 0) > 0 and new_calls.get("200", 0) > 0
    assert "401" not in old_calls and "401" not in new_calls, (old_calls, new_calls)


def test_deactivating_the_old_token_mid_rollout_shows_up_as_401s(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-401")
    # Slower readiness leaves a window in which old pods still serve with the old token.
    service = kube.seed(namespace, annotations={"sandbox.xapi.io/pod-ready-delay": "0.6"})
    old_id = service["system_user_id"]
    new_id, new_token, new_fp = _new_credential(sandbox, f"{namespace}-v2")
    _store_in_secret(kube, namespace, service["secret"], new_id, new_token)
    _restart(kube, namespace, service["deployment"])
    kube.wait_for(
        lambda: any(
            p["token_fingerprint"] == new_fp and p["ready"] for p in kube.pods_state(namespace, "payments-api")
        ),
        20,
        "a first new pod",
    )
    assert not rollout_complete(kube.deployment(namespace, "payments-api")), "too late: the rollout already ended"
    response = sandbox.api("POST", f"/api/v1/system-users/{old_id}/deactivate")
    assert response.status_code == 200

    kube.wait_for(lambda: _settled(kube, namespace, "payments-api", new_fp), 30, "the rollout to finish")
    old_calls, new_calls = _calls(sandbox, old_id), _calls(sandbox, new_id)
    assert old_calls.get("401", 0) > 0, f"old pods kept calling with a deactivated token: {old_calls}"
    assert "401" not in new_calls


def test_terminating_pods_keep_calling_with_the_old_token_after_rollout_status_succeeds(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-grace")
    service = kube.seed(namespace, replicas=2, annotations={"sandbox.xapi.io/termination-grace": "2.5"})
    old_fp = service["token_fingerprint"]
    new_id, new_token, new_fp = _new_credential(sandbox, f"{namespace}-v2")
    _store_in_secret(kube, namespace, service["secret"], new_id, new_token)
    _restart(kube, namespace, service["deployment"])
    kube.wait_for(lambda: rollout_complete(kube.deployment(namespace, "payments-api")), 20, "rollout status success")

    lingering = [p for p in kube.pods_state(namespace, "payments-api") if p["terminating"]]
    assert lingering and all(p["token_fingerprint"] == old_fp for p in lingering)
    listed = kube.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector=app%3Dpayments-api")["items"]
    by_name = {p["metadata"]["name"]: p for p in listed}
    for pod in lingering:
        assert by_name[pod["name"]]["metadata"].get("deletionTimestamp"), "a terminating pod shows deletionTimestamp"
    first = {p["name"]: sum(p["requests"].values()) for p in lingering}
    time.sleep(0.6)
    later = {
        p["name"]: sum(p["requests"].values()) for p in kube.pods_state(namespace, "payments-api") if p["terminating"]
    }
    assert any(later.get(name, 0) > count for name, count in first.items()), "terminating pods still call the API"
    kube.wait_for(lambda: _settled(kube, namespace, "payments-api", new_fp), 10, "the grace period to end")


def test_option_b_volume_reload_switches_tokens_without_a_restart(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-reload")
    service = kube.seed(
        namespace, strategy="reload", reload_interval=0.2, annotations={"sandbox.xapi.io/secret-sync-delay": "0.8"}
    )
    old_id = service["system_user_id"]
    pods_before = {p["name"] for p in kube.pods_state(namespace, "payments-api")}
    generation = kube.deployment(namespace, "payments-api")["metadata"]["generation"]
    new_id, new_token, new_fp = _new_credential(sandbox, f"{namespace}-v2")
    changed_at = time.monotonic()
    _store_in_secret(kube, namespace, service["secret"], new_id, new_token)
    kube.wait_for(lambda: _settled(kube, namespace, "payments-api", new_fp), 10, "every pod to reload the token")
    assert time.monotonic() - changed_at >= 0.8, "the kubelet's secret sync delay was not honoured"
    assert {p["name"] for p in kube.pods_state(namespace, "payments-api")} == pods_before
    assert kube.deployment(namespace, "payments-api")["metadata"]["generation"] == generation

    sandbox.api("POST", f"/api/v1/system-users/{old_id}/deactivate").raise_for_status()
    time.sleep(0.3)
    assert "401" not in _calls(sandbox, old_id) and "401" not in _calls(sandbox, new_id)


def _watch_deployment(kube, namespace: str, name: str, since: str, events: list, stop: threading.Event) -> None:  # noqa: F811
    url = (
        f"{kube.server}/apis/apps/v1/namespaces/{namespace}/deployments?watch=true"
        f"&fieldSelector=metadata.name%3D{name}&resourceVersion={since}&timeoutSeconds=60"
    )
    with requests.get(
        url, headers={"Authorization": f"Bearer {kube.token}"}, verify=kube.ca, stream=True, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line:
                events.append((time.monotonic(), json.loads(line)))
            if stop.is_set():
                return


@pytest.mark.parametrize(("max_surge", "max_unavailable"), [(1, 0), (0, 2), ("50%", "25%")])
def test_rolling_update_honours_max_surge_and_max_unavailable(kube, max_surge, max_unavailable):  # noqa: F811
    namespace = kube.namespace("rollout-bounds")
    replicas = 4
    kube.seed(
        namespace,
        replicas=replicas,
        deployment_spec={
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable},
            }
        },
    )
    surge = {1: 1, 0: 0, "50%": 2}[max_surge]
    unavailable = {0: 0, 2: 2, "25%": 1}[max_unavailable]
    since = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["metadata"]["resourceVersion"]
    events: list = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_deployment, args=(kube, namespace, "payments-api", since, events, stop), daemon=True
    )
    watcher.start()
    started = time.monotonic()
    _restart(kube, namespace, "payments-api")
    kube.wait_for(lambda: events and rollout_complete(events[-1][1]["object"]), 30, "the watch to see the rollout end")
    stop.set()
    assert events[0][0] - started < 2, "watch events must stream as they happen, not when the stream closes"
    statuses = [event["object"].get("status") or {} for _stamp, event in events]
    assert max(s.get("replicas", 0) for s in statuses) <= replicas + surge
    assert min(s.get("availableReplicas", 0) for s in statuses) >= replicas - unavailable
    assert any(s.get("updatedReplicas", 0) < replicas for s in statuses)
    final = events[-1][1]["object"]
    assert condition(final, "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert condition(final, "Available")["status"] == "True"


def test_never_ready_pods_stall_the_rollout_and_reverting_the_template_recovers(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-stuck")
    service = kube.seed(namespace, replicas=3, deployment_spec={"progressDeadlineSeconds": 2})
    old_id = service["system_user_id"]
    kube.control(
        "POST", "/_sandbox/faults", {"namespace": namespace, "deployment": "payments-api", "never_ready": True}
    )
    try:
        _restart(kube, namespace, "payments-api")
        deployment = kube.wait_for(
            lambda: (
                (d := kube.deployment(namespace, "payments-api"))
                and condition(d, "Progressing").get("reason") == "ProgressDeadlineExceeded"
                and d
            ),
            15,
            "the progress deadline",
        )
        status = deployment["status"]
        assert condition(deployment, "Progressing")["status"] == "False"
        assert (
            status["availableReplicas"] == 3 and status["updatedReplicas"] == 1 and status["unavailableReplicas"] == 1
        )
        assert condition(deployment, "Available")["status"] == "True"

        # The rollback path: put the previous pod template back (drop the restart annotation).
        response = kube.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{namespace}/deployments/payments-api",
            [{"op": "remove", "path": "/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt"}],
            content_type="application/json-patch+json",
        )
        assert response.status_code == 200, response.text
        kube.wait_for(
            lambda: _settled(kube, namespace, "payments-api", service["token_fingerprint"]),
            15,
            "the old ReplicaSet to take over again",
        )
        replicasets = kube.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
        active = [rs for rs in replicasets if rs["spec"]["replicas"] > 0]
        assert len(active) == 1 and active[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
        assert (
            condition(kube.deployment(namespace, "payments-api"), "Progressing")["reason"] == "NewReplicaSetAvailable"
        )
        assert "401" not in _calls(sandbox, old_id)
    finally:
        kube.control("DELETE", "/_sandbox/faults")


def test_recreate_strategy_never_runs_old_and_new_pods_together(kube, sandbox):  # noqa: F811
    namespace = kube.namespace("rollout-recreate")
    service = kube.seed(namespace, replicas=2, deployment_spec={"strategy": {"type": "Recreate"}})
    new_id, new_token, new_fp = _new_credential(sandbox, f"{namespace}-v2")
    _store_in_secret(kube, namespace, service["secret"], new_id, new_token)
    _restart(kube, namespace, service["deployment"])
    mixed = []

    def settled() -> bool:
        held = {p["token_fingerprint"] for p in kube.pods_state(namespace, "payments-api")}
        if len(held) > 1:
            mixed.append(held)
        return _settled(kube, namespace, "payments-api", new_fp)

    kube.wait_for(settled, 20, "the Recreate rollout")
    assert not mixed, "Recreate must stop every old pod (grace period included) before starting new ones"

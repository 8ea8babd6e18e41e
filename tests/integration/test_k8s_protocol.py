"""Wire-level behaviour of the cluster that clients rely on, checked over raw HTTPS."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.sandbox.k8s.testing import kube  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.real_cluster


@pytest.fixture(scope="module")
def namespace(kube):  # noqa: F811
    return kube.namespace("protocol")


def _status(response, code: int, reason: str) -> dict:
    assert response.status_code == code, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert (
        body["kind"] == "Status" and body["status"] == "Failure" and body["reason"] == reason and body["code"] == code
    )
    return body


def test_discovery_documents(kube):  # noqa: F811
    groups = kube.get("/apis")
    assert groups["kind"] == "APIGroupList"
    for group in groups["groups"]:
        assert group["preferredVersion"] == group["versions"][0]
    core = kube.get("/api/v1")
    secrets = next(r for r in core["resources"] if r["name"] == "secrets")
    assert secrets["namespaced"] and {"get", "list", "watch", "create", "update", "patch", "delete"} <= set(
        secrets["verbs"]
    )
    apps = kube.get("/apis/apps/v1")
    assert {"deployments", "deployments/status", "replicasets"} <= {r["name"] for r in apps["resources"]}
    assert kube.get("/version")["major"] == "1"


def test_openapi_v2_answers_an_empty_document(kube):  # noqa: F811
    kube.emulator("a real server answers its full schema")
    response = kube.request(
        "GET", "/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}
    )
    assert response.status_code == 200 and response.content == b""


def test_unknown_paths_and_methods_answer_status_bodies(kube, namespace):  # noqa: F811
    # Jobs are served now: a resource no server has stands for "unknown" (404 on a real cluster too).
    _status(kube.request("GET", "/apis/batch/v1/namespaces/default/widgets"), 404, "NotFound")
    _status(kube.request("GET", "/api/v1/namespaces/default/services"), 404, "NotFound")
    _status(kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/absent"), 404, "NotFound")
    _status(
        kube.request("POST", f"/apis/apps/v1/namespaces/{namespace}/replicasets", {"metadata": {"name": "x"}}),
        405,
        "MethodNotAllowed",
    )
    _status(
        kube.request("POST", "/api/v1/namespaces/absent-namespace/secrets", {"metadata": {"name": "x"}}),
        404,
        "NotFound",
    )
    _status(kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", b"{not json"), 400, "BadRequest")
    _status(kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", [1, 2]), 400, "BadRequest")
    _status(kube.request("PUT", f"/api/v1/namespaces/{namespace}/secrets/x", "just a string"), 400, "BadRequest")
    _status(
        kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}},
        ),
        400,
        "BadRequest",
    )
    _status(
        kube.request("PATCH", f"/api/v1/namespaces/{namespace}/secrets/x", {"a": 1}, content_type="text/plain"),
        415,
        "UnsupportedMediaType",
    )
    invalid = _status(
        kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "Bad_Name"}}),
        422,
        "Invalid",
    )
    assert "metadata.name" in invalid["message"]


def test_create_conflicts_and_preconditions(kube, namespace):  # noqa: F811
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    created = kube.request("POST", path, {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    assert created.status_code == 201
    _status(kube.request("POST", path, {"metadata": {"name": "cm"}}), 409, "AlreadyExists")
    body = created.json()
    body["data"]["a"] = "2"
    assert kube.request("PUT", f"{path}/cm", body).status_code == 200
    _status(kube.request("PUT", f"{path}/cm", body), 409, "Conflict")  # stale resourceVersion
    stale_delete = kube.request("DELETE", f"{path}/cm", {"preconditions": {"resourceVersion": "1"}})
    _status(stale_delete, 409, "Conflict")
    deleted = kube.request("DELETE", f"{path}/cm")
    assert deleted.status_code == 200 and deleted.json()["status"] == "Success"


def test_patch_types_on_a_deployment(kube, namespace):  # noqa: F811
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    manifest = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "app:1",
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {"name": "sidecar", "image": "side:1"},
                    ]
                },
            },
        },
    }
    assert kube.request("POST", path, manifest).status_code == 201
    # Strategic merge: containers and env merge by name, $patch: delete removes one item.
    strategic = kube.request(
        "PATCH",
        f"{path}/web",
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "image": "app:2",
                                "env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}],
                            }
                        ]
                    }
                }
            }
        },
        content_type="application/strategic-merge-patch+json",
    ).json()
    containers = strategic["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "sidecar"] and containers[0]["image"] == "app:2"
    assert containers[0]["env"] == [{"name": "B", "value": "3"}]
    assert strategic["metadata"]["generation"] == 2
    # JSON merge patch replaces lists wholesale.
    merged = kube.request(
        "PATCH",
        f"{path}/web",
        {"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "only:1"}]}}}},
        content_type="application/merge-patch+json",
    ).json()
    assert [c["name"] for c in merged["spec"]["template"]["spec"]["containers"]] == ["only"]
    # A server-side dry run validates and answers without writing.
    dry = kube.request(
        "PATCH", f"{path}/web?dryRun=All", {"spec": {"replicas": 3}}, content_type="application/merge-patch+json"
    )
    assert dry.status_code == 200 and dry.json()["spec"]["replicas"] == 3
    assert kube.deployment(namespace, "web")["spec"]["replicas"] == 1
    # A patch that changes nothing keeps resourceVersion and generation.
    before = kube.deployment(namespace, "web")
    again = kube.request(
        "PATCH", f"{path}/web", {"spec": {"replicas": 1}}, content_type="application/merge-patch+json"
    ).json()
    assert again["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == before["metadata"]["generation"]


def test_watch_streams_events_as_they_happen(kube, namespace):  # noqa: F811
    path = f"/api/v1/namespaces/{namespace}/secrets"
    since = kube.get(path)["metadata"]["resourceVersion"]
    url = f"{kube.server}{path}?watch=true&resourceVersion={since}&timeoutSeconds=20"
    with requests.get(
        url, headers={"Authorization": f"Bearer {kube.token}"}, verify=kube.ca, stream=True, timeout=20
    ) as response:
        assert response.status_code == 200 and response.headers.get("Transfer-Encoding") == "chunked"
        sent = time.monotonic()
        assert kube.request("POST", path, {"metadata": {"name": "streamed"}}).status_code == 201
        first = json.loads(next(line for line in response.iter_lines() if line))
        assert time.monotonic() - sent < 3, "the event must arrive while the stream is open"
        assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "streamed"
    # The legacy /watch/ path form that older clients use answers the same stream.
    legacy = f"{kube.server}/api/v1/watch/namespaces/{namespace}/secrets/streamed?timeoutSeconds=1"
    with requests.get(
        legacy, headers={"Authorization": f"Bearer {kube.token}"}, verify=kube.ca, stream=True, timeout=10
    ) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["type"] for e in events] == ["ADDED"] and events[0]["object"]["metadata"]["name"] == "streamed"


def test_sandbox_state_never_contains_a_token(kube, sandbox):  # noqa: F811
    kube.emulator("GET /_sandbox/state")
    state = kube.control("GET", "/_sandbox/state")
    text = json.dumps(state)
    assert state["pods"] and all(len(p["token_fingerprint"] or "") in (0, 8) for p in state["pods"])
    assert "xsu_" not in text and kube.token not in text


def test_malformed_requests_are_refused_not_crashed(kube, namespace):  # noqa: F811
    # Cases found by fuzzing the emulator: each must be a 4xx Status, never a 500.
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    good = {
        "metadata": {"name": "sturdy"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "s"}},
            "template": {"metadata": {"labels": {"app": "s"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }
    assert kube.request("POST", deployments, good).status_code == 201
    cases = [
        ("POST", f"{deployments}/sturdy/status", {"metadata": 1}, "application/json", 405),
        ("POST", deployments, {"metadata": 1}, "application/json", 400),
        ("POST", deployments, {"metadata": {"name": 5}}, "application/json", 422),
        ("DELETE", f"{deployments}/sturdy", [1], "application/json", 400),
        (
            "PATCH",
            f"{deployments}/sturdy",
            {"spec": {"strategy": {"rollingUpdate": {"maxSurge": "lots"}}}},
            "application/merge-patch+json",
            422,
        ),
        ("PATCH", f"{deployments}/sturdy", {"metadata": {"labels": "x"}}, "application/merge-patch+json", 422),
        ("PATCH", f"{deployments}/sturdy/status", {"status": "x"}, "application/merge-patch+json", 422),
        ("PATCH", f"{deployments}/sturdy", [{"op": "remove", "path": "/spec"}], "application/json-patch+json", 422),
        ("PATCH", f"{deployments}/sturdy", {"spec": {"replicas": True}}, "application/merge-patch+json", 422),
    ]
    for method, path, body, content_type, code in cases:
        response = kube.request(method, path, body, content_type=content_type)
        assert response.status_code == code, (method, path, body, response.status_code, response.text[:200])
        assert response.json()["kind"] == "Status"
    deployment = kube.deployment(namespace, "sturdy")
    assert deployment["spec"]["replicas"] == 1 and deployment["metadata"]["generation"] == 1

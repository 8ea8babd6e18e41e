"""Contract tests: the official `kubernetes` Python client (typed API and DynamicClient) against the cluster."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from kubernetes import client, config, watch
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from tests.sandbox.k8s.testing import kube, restart_patch, rollout_complete  # noqa: F401  # pylint: disable=unused-import

pytestmark = pytest.mark.real_cluster


@pytest.fixture(scope="module")
def api_client(kube):  # noqa: F811
    return config.new_client_from_config(config_file=kube.kubeconfig)


@pytest.fixture(scope="module")
def namespace(kube):  # noqa: F811
    return kube.namespace("pyclient")


def _secret(name: str, token: str = "t0ken", labels: dict | None = None) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": "pyclient"}),
        data={"token": base64.b64encode(token.encode()).decode()},
    )


def _deployment(name: str, replicas: int = 2) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {
                        "sandbox.xapi.io/pod-start-delay": "0.1",
                        "sandbox.xapi.io/pod-ready-delay": "0.1",
                        "sandbox.xapi.io/termination-grace": "0.3",
                    },
                },
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
            },
        },
    }


def test_discovery_through_dynamic_client(api_client):
    dynamic = DynamicClient(api_client)
    for api_version, kind in [
        ("v1", "Namespace"),
        ("v1", "Secret"),
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "ReplicaSet"),
        ("coordination.k8s.io/v1", "Lease"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ]:
        resource = dynamic.resources.get(api_version=api_version, kind=kind)
        assert resource.kind == kind
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.namespaced and "watch" in deployments.verbs
    assert {"status", "scale"} <= set(deployments.subresources)
    groups = client.ApisApi(api_client).get_api_versions().groups
    for group in groups:
        assert group.preferred_version.group_version == group.versions[0].group_version
    assert {"apps", "coordination.k8s.io"} <= {g.name for g in groups}
    assert client.VersionApi(api_client).get_code().major == "1"


def test_secret_crud_with_typed_client(api_client, namespace):
    core = client.CoreV1Api(api_client)
    created = core.create_namespaced_secret(namespace, _secret("crud"))
    assert created.metadata.uid and created.metadata.resource_version and created.type == "Opaque"
    read = core.read_namespaced_secret("crud", namespace)
    assert base64.b64decode(read.data["token"]) == b"t0ken"
    listed = core.list_namespaced_secret(namespace, label_selector="app=pyclient")
    assert [s.metadata.name for s in listed.items] == ["crud"]
    assert core.list_namespaced_secret(namespace, label_selector="app!=pyclient").items == []

    read.data["token"] = base64.b64encode(b"second").decode()
    replaced = core.replace_namespaced_secret("crud", namespace, read)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)

    with pytest.raises(client.ApiException) as stale:
        core.replace_namespaced_secret("crud", namespace, read)  # still carries the old resourceVersion
    assert stale.value.status == 409
    status = json.loads(stale.value.body)
    assert status["kind"] == "Status" and status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]

    core.delete_namespaced_secret("crud", namespace)
    with pytest.raises(client.ApiException) as missing:
        core.read_namespaced_secret("crud", namespace)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["reason"] == "NotFound"


def test_patch_flavours_and_no_op_patch_keeps_resource_version(api_client, namespace):
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(namespace, _secret("patchme"))
    merged = core.patch_namespaced_secret("patchme", namespace, {"metadata": {"labels": {"tier": "a"}}})
    assert merged.metadata.labels == {"app": "pyclient", "tier": "a"}
    again = core.patch_namespaced_secret("patchme", namespace, {"metadata": {"labels": {"tier": "a"}}})
    assert again.metadata.resource_version == merged.metadata.resource_version
    # JSON patch (the typed client picks it for a list body), including a failing test op.
    patched = core.patch_namespaced_secret(
        "patchme", namespace, [{"op": "replace", "path": "/metadata/labels/tier", "value": "b"}]
    )
    assert patched.metadata.labels["tier"] == "b"
    with pytest.raises(client.ApiException) as failed:
        core.patch_namespaced_secret(
            "patchme", namespace, [{"op": "test", "path": "/metadata/labels/tier", "value": "z"}]
        )
    assert failed.value.status == 422
    assert (
        core.read_namespaced_secret("patchme", namespace).metadata.resource_version == patched.metadata.resource_version
    )


def test_deployment_generation_and_validation(api_client, namespace):
    dynamic = DynamicClient(api_client)
    deployments = dynamic.resources.get(api_version="apps/v1", kind="Deployment")
    created = deployments.create(body=_deployment("gen"), namespace=namespace)
    assert created.metadata.generation == 1
    assert created.spec.strategy.rollingUpdate.maxSurge == "25%"  # defaulted like a real server
    scaled = deployments.patch(
        name="gen", namespace=namespace, body={"spec": {"replicas": 3}}, content_type="application/merge-patch+json"
    )
    assert scaled.metadata.generation == 2
    status_only = deployments.status.patch(
        name="gen",
        namespace=namespace,
        body={"status": {"collisionCount": 0}},
        content_type="application/merge-patch+json",
    )
    assert status_only.metadata.generation == 2

    bad = _deployment("bad")
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(Exception) as invalid:
        deployments.create(body=bad, namespace=namespace)
    assert invalid.value.status == 422
    assert "selector" in json.loads(invalid.value.body)["message"]
    with pytest.raises(NotFoundError):
        deployments.get(name="bad", namespace=namespace)


def test_watch_sees_the_rollout_finish(api_client, kube, namespace):  # noqa: F811
    apps = client.AppsV1Api(api_client)
    dynamic = DynamicClient(api_client)
    dynamic.resources.get(api_version="apps/v1", kind="Deployment").create(
        body=_deployment("watched"), namespace=namespace
    )
    kube.wait_for(lambda: rollout_complete(kube.deployment(namespace, "watched")), 30, "the first rollout")
    listed = apps.list_namespaced_deployment(namespace, field_selector="metadata.name=watched")
    start_rv = listed.metadata.resource_version
    patched = apps.patch_namespaced_deployment("watched", namespace, restart_patch())
    generation = patched.metadata.generation

    seen: list[tuple[str, int, int, int]] = []
    done = threading.Event()
    stream = watch.Watch()
    for event in stream.stream(
        apps.list_namespaced_deployment,
        namespace,
        field_selector="metadata.name=watched",
        resource_version=start_rv,
        timeout_seconds=30,
    ):
        obj = event["object"]
        status = obj.status
        seen.append(
            (event["type"], obj.metadata.generation, status.updated_replicas or 0, status.available_replicas or 0)
        )
        progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
        if (
            status.observed_generation == generation
            and (status.updated_replicas or 0) == 2
            and (status.replicas or 0) == 2
            and (status.available_replicas or 0) == 2
        ):
            assert progressing is not None and progressing.reason == "NewReplicaSetAvailable"
            done.set()
            stream.stop()
    assert done.is_set(), f"the watch ended before the rollout finished: {seen}"
    assert seen[0][0] == "MODIFIED" and seen[0][1] == generation  # the patch itself, not a replay of the list
    assert any(entry[2] < 2 for entry in seen), "the watch should have seen intermediate states"


def test_leases_for_the_rotation_lock(api_client, namespace):
    coordination = client.CoordinationV1Api(api_client)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="rotation-lock"),
        spec=client.V1LeaseSpec(holder_identity="run-1", lease_duration_seconds=60),
    )
    created = coordination.create_namespaced_lease(namespace, lease)
    with pytest.raises(client.ApiException) as exists:
        coordination.create_namespaced_lease(namespace, lease)
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"
    created.spec.holder_identity = "run-2"
    coordination.replace_namespaced_lease("rotation-lock", namespace, created)
    created.spec.holder_identity = "run-3"
    with pytest.raises(client.ApiException) as lost:
        coordination.replace_namespaced_lease("rotation-lock", namespace, created)
    assert lost.value.status == 409
    assert coordination.read_namespaced_lease("rotation-lock", namespace).spec.holder_identity == "run-2"


def test_pods_and_replicasets_are_read_only_for_clients(api_client, kube, namespace):  # noqa: F811
    kube.emulator("pods and ReplicaSets belong to its controllers")
    with pytest.raises(client.ApiException) as refused:
        client.AppsV1Api(api_client).create_namespaced_replica_set(
            namespace,
            {
                "metadata": {"name": "x"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}}},
            },
        )
    assert refused.value.status == 405
    assert json.loads(refused.value.body)["reason"] == "MethodNotAllowed"

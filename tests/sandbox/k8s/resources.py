"""The resource types the emulator serves, their discovery data, defaults and validation."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")
# Kinds whose status belongs to a controller: a PUT or patch of the object keeps it.
STATUS_KINDS = ("Deployment", "ReplicaSet", "Pod", "Namespace", "StatefulSet", "DaemonSet", "Job", "CronJob")
READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    verbs: tuple[str, ...] = ALL_VERBS
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Pods and ReplicaSets belong to the controllers; clients may only read (and delete pods).
    client_writable: bool = True
    # Deployments and ReplicaSets count spec changes in metadata.generation.
    has_generation: bool = False
    categories: tuple[str, ...] = ()
    singular: str = ""
    list_kind: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "list_kind", self.kind + "List")
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The name a real server uses in messages: ``deployments.apps``, ``secrets``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        verbs=("create", "delete", "get", "list", "watch"),
        short_names=("po",),
        client_writable=False,
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        subresources=("status", "scale"),
        has_generation=True,
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        verbs=READ_VERBS,
        short_names=("rs",),
        client_writable=False,
        has_generation=True,
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        short_names=("sts",),
        subresources=("status", "scale"),
        has_generation=True,
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        short_names=("ds",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    ResourceType("batch", "v1", "jobs", "Job", subresources=("status",), has_generation=True, categories=("all",)),
    ResourceType(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        short_names=("cj",),
        subresources=("status",),
        has_generation=True,
        categories=("all",),
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
)

BY_GROUP_VERSION: dict[tuple[str, str], dict[str, ResourceType]] = {}
for _rt in RESOURCE_TYPES:
    BY_GROUP_VERSION.setdefault((_rt.group, _rt.version), {})[_rt.plural] = _rt

GROUPS: dict[str, list[str]] = {}
for _rt in RESOURCE_TYPES:
    if _rt.group and _rt.version not in GROUPS.setdefault(_rt.group, []):
        GROUPS[_rt.group].append(_rt.version)


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return BY_GROUP_VERSION.get((group, version), {}).get(plural)


def by_kind(kind: str) -> ResourceType | None:
    return next((rt for rt in RESOURCE_TYPES if rt.kind == kind), None)


def api_resource_list(group: str, version: str) -> dict[str, Any]:
    resources = []
    for rt in BY_GROUP_VERSION.get((group, version), {}).values():
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        resources.append(entry)
        for sub in rt.subresources:
            if sub == "scale":
                resources.append(
                    {
                        "name": f"{rt.plural}/scale",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "group": "autoscaling",
                        "version": "v1",
                        "kind": "Scale",
                        "verbs": ["get", "patch", "update"],
                    }
                )
            else:
                resources.append(
                    {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def api_group(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUPS[group]]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    }


def api_group_list() -> dict[str, Any]:
    groups = [api_group(g) for g in GROUPS]
    for g in groups:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


class Invalid(ValueError):
    """An object the server refuses (422 Invalid); ``causes`` feeds Status.details."""

    def __init__(self, message: str, causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.causes = causes or []


NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _invalid(rt: ResourceType, name: str, field_path: str, detail: str) -> Invalid:
    return Invalid(
        f'{rt.kind} "{name}" is invalid: {field_path}: {detail}',
        [{"reason": "FieldValueInvalid", "message": f"Invalid value: {detail}", "field": field_path}],
    )


def validate_name(rt: ResourceType, name: Any) -> None:
    pattern = LABEL_NAME_RE if rt.plural in ("namespaces",) else NAME_RE
    if not isinstance(name, str) or not name or len(name) > 253 or not pattern.match(name):
        raise _invalid(
            rt,
            name,
            "metadata.name",
            f'"{name}": a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '
            "'-' or '.', and must start and end with an alphanumeric character",
        )


def _selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str] | None) -> bool:
    return bool(selector) and _selector_matches(selector or {}, labels or {})


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers") or []:
        if isinstance(container, dict):
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            image = str(container.get("image", ""))
            container.setdefault(
                "imagePullPolicy", "Always" if image.endswith(":latest") or ":" not in image else "IfNotPresent"
            )
            container.setdefault("resources", {})
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and isinstance(volume.get("secret"), dict):
            volume["secret"].setdefault("defaultMode", 420)


def _validate_metadata(rt: ResourceType, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    name = str(meta.get("name", ""))
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _invalid(rt, name, f"metadata.{key}", "must be a map of string keys to string values")
    for key in ("spec", "status", "data"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            raise _invalid(rt, name, key, "must be an object")


def apply_defaults_and_validate(rt: ResourceType, obj: dict[str, Any]) -> None:
    """What the real API server's defaulting and validation do for the fields clients rely on."""
    _validate_metadata(rt, obj)
    name = obj["metadata"].get("name", "")
    if rt.kind == "Secret":
        if not obj.get("type"):
            obj["type"] = "Opaque"  # an empty type is defaulted too (protobuf bodies carry "")
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise _invalid(rt, name, "data", "must be a map of key to base64 string")
        for key, value in data.items():
            if not isinstance(value, str):
                raise _invalid(rt, name, f"data[{key}]", "must be a base64 string")
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(rt, name, f"data[{key}]", "illegal base64 data") from None
        string_data = obj.pop("stringData", None) or {}
        if not isinstance(string_data, dict):
            raise _invalid(rt, name, "stringData", "must be a map of key to string")
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data
        for key in data:
            if not re.match(r"^[-._a-zA-Z0-9]+$", key):
                raise _invalid(
                    rt,
                    name,
                    f"data[{key}]",
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                )
    elif rt.kind == "Namespace":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    elif rt.kind == "Deployment":
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise _invalid(rt, name, "spec", "Required value")
        spec.setdefault("replicas", 1)
        if not isinstance(spec["replicas"], int) or isinstance(spec["replicas"], bool) or spec["replicas"] < 0:
            raise _invalid(rt, name, "spec.replicas", "must be greater than or equal to 0")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        for key in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
            value = spec.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _invalid(rt, name, f"spec.{key}", f"{value!r}: must be an integer >= 0")
        if not isinstance(spec.get("paused", False), bool):
            raise _invalid(rt, name, "spec.paused", "must be a boolean")
        if not isinstance(spec.get("strategy", {}), dict):
            raise _invalid(rt, name, "spec.strategy", "must be an object")
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if not isinstance(rolling, dict):
                raise _invalid(rt, name, "spec.strategy.rollingUpdate", "must be an object")
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
            for key in ("maxSurge", "maxUnavailable"):
                value = rolling[key]
                if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0) and not (
                    isinstance(value, str) and re.fullmatch(r"\d+%", value)
                ):
                    raise _invalid(
                        rt,
                        name,
                        f"spec.strategy.rollingUpdate.{key}",
                        f"{value!r}: must be an integer >= 0 or a percentage",
                    )
        elif strategy["type"] != "Recreate":
            raise _invalid(rt, name, "spec.strategy.type", f'Unsupported value: "{strategy["type"]}"')
        _validate_selector_and_template(rt, name, spec)
        obj.setdefault("status", {})
    elif rt.kind in ("StatefulSet", "DaemonSet", "Job", "CronJob"):
        _default_and_validate_workload(rt, obj)
    elif rt.kind == "Pod":
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise _invalid(rt, name, "spec", "Required value")
        _validate_containers(rt, name, spec, "spec")
        _default_pod_spec(spec)
    elif rt.kind == "Lease":
        obj.setdefault("spec", {})
    elif rt.kind == "Role":
        for index, rule in enumerate(obj.get("rules") or []):
            if not isinstance(rule, dict) or not rule.get("verbs"):
                raise _invalid(rt, name, f"rules[{index}].verbs", "Required value")
    elif rt.kind == "RoleBinding":
        ref = obj.get("roleRef")
        if not isinstance(ref, dict) or not ref.get("name") or ref.get("kind") not in ("Role", "ClusterRole"):
            raise _invalid(rt, name, "roleRef", "Required value: kind Role or ClusterRole and a name")
        for index, subject in enumerate(obj.get("subjects") or []):
            if not isinstance(subject, dict) or not subject.get("kind") or not subject.get("name"):
                raise _invalid(rt, name, f"subjects[{index}]", "kind and name are required")


def _validate_containers(rt: ResourceType, name: str, pod_spec: dict[str, Any], path: str) -> None:
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise _invalid(rt, name, f"{path}.containers", "Required value")
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            raise _invalid(rt, name, f"{path}.containers[{index}]", "name and image are required")


def _validate_selector_and_template(rt: ResourceType, name: str, spec: dict[str, Any]) -> None:
    """A workload's selector and pod template (Deployments, StatefulSets, DaemonSets, Jobs)."""
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        raise _invalid(rt, name, "spec.selector", "Required value")
    template = spec.get("template")
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise _invalid(rt, name, "spec.template", "Required value")
    template_meta = template.get("metadata") or {}
    if not isinstance(template_meta, dict) or not isinstance(template_meta.get("labels") or {}, dict):
        raise _invalid(rt, name, "spec.template.metadata", "must be an object with a labels map")
    if not isinstance(template_meta.get("annotations") or {}, dict):
        raise _invalid(rt, name, "spec.template.metadata.annotations", "must be a map")
    if not isinstance(selector.get("matchLabels") or {}, dict) or not isinstance(
        selector.get("matchExpressions") or [], list
    ):
        raise _invalid(rt, name, "spec.selector", "matchLabels must be a map and matchExpressions a list")
    labels = template_meta.get("labels") or {}
    if not _selector_matches(selector, labels):
        raise _invalid(rt, name, "spec.template.metadata.labels", "`selector` does not match template `labels`")
    containers = template["spec"].get("containers")
    if not isinstance(containers, list) or not containers:
        raise _invalid(rt, name, "spec.template.spec.containers", "Required value")
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name") or not container.get("image"):
            raise _invalid(rt, name, f"spec.template.spec.containers[{index}]", "name and image are required")
    template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    _default_pod_spec(template["spec"])


def _int_field(rt: ResourceType, name: str, spec: dict[str, Any], key: str, path: str, default: int | None) -> None:
    if default is not None:
        spec.setdefault(key, default)
    value = spec.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(rt, name, f"{path}.{key}", f"{value!r}: must be an integer >= 0")


def _int_or_percent(rt: ResourceType, name: str, value: Any, path: str) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0) and not (
        isinstance(value, str) and re.fullmatch(r"\d+%", value)
    ):
        raise _invalid(rt, name, path, f"{value!r}: must be an integer >= 0 or a percentage")


def _one_of(rt: ResourceType, name: str, value: Any, path: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        supported = ", ".join(f'"{a}"' for a in allowed)
        raise _invalid(rt, name, path, f'Unsupported value: "{value}": supported values: {supported}')


def _job_template_policy(rt: ResourceType, name: str, template: Any, path: str) -> None:
    """Job pods must not restart forever: the API server insists on Never or OnFailure."""
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        raise _invalid(rt, name, path, "Required value")
    policy = template["spec"].get("restartPolicy")
    if policy is None:
        raise _invalid(rt, name, f"{path}.spec.restartPolicy", 'Required value: "Never" or "OnFailure"')
    _one_of(rt, name, policy, f"{path}.spec.restartPolicy", ("OnFailure", "Never"))


def _default_and_validate_workload(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Defaults and validation of StatefulSets, DaemonSets, Jobs and CronJobs (the fields clients rely on)."""
    name = obj["metadata"].get("name", "")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise _invalid(rt, name, "spec", "Required value")
    if rt.kind == "StatefulSet":
        _int_field(rt, name, spec, "replicas", "spec", 1)
        _int_field(rt, name, spec, "revisionHistoryLimit", "spec", 10)
        _int_field(rt, name, spec, "minReadySeconds", "spec", None)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        _one_of(rt, name, spec["podManagementPolicy"], "spec.podManagementPolicy", ("OrderedReady", "Parallel"))
        strategy = spec.setdefault("updateStrategy", {})
        if not isinstance(strategy, dict):
            raise _invalid(rt, name, "spec.updateStrategy", "must be an object")
        strategy.setdefault("type", "RollingUpdate")
        _one_of(rt, name, strategy["type"], "spec.updateStrategy.type", ("RollingUpdate", "OnDelete"))
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if not isinstance(rolling, dict):
                raise _invalid(rt, name, "spec.updateStrategy.rollingUpdate", "must be an object")
            _int_field(rt, name, rolling, "partition", "spec.updateStrategy.rollingUpdate", 0)
        spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
        _validate_selector_and_template(rt, name, spec)
    elif rt.kind == "DaemonSet":
        _int_field(rt, name, spec, "revisionHistoryLimit", "spec", 10)
        _int_field(rt, name, spec, "minReadySeconds", "spec", None)
        strategy = spec.setdefault("updateStrategy", {})
        if not isinstance(strategy, dict):
            raise _invalid(rt, name, "spec.updateStrategy", "must be an object")
        strategy.setdefault("type", "RollingUpdate")
        _one_of(rt, name, strategy["type"], "spec.updateStrategy.type", ("RollingUpdate", "OnDelete"))
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if not isinstance(rolling, dict):
                raise _invalid(rt, name, "spec.updateStrategy.rollingUpdate", "must be an object")
            rolling.setdefault("maxUnavailable", 1)
            rolling.setdefault("maxSurge", 0)
            for key in ("maxUnavailable", "maxSurge"):
                _int_or_percent(rt, name, rolling[key], f"spec.updateStrategy.rollingUpdate.{key}")
            if rolling["maxUnavailable"] in (0, "0%") and rolling["maxSurge"] in (0, "0%"):
                raise _invalid(
                    rt, name, "spec.updateStrategy.rollingUpdate.maxUnavailable", "may not be 0 when maxSurge is 0"
                )
        _validate_selector_and_template(rt, name, spec)
    elif rt.kind == "Job":
        _job_template_policy(rt, name, spec.get("template"), "spec.template")
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"] = 1
        _int_field(rt, name, spec, "parallelism", "spec", 1)
        _int_field(rt, name, spec, "completions", "spec", None)
        _int_field(rt, name, spec, "backoffLimit", "spec", 6)
        _int_field(rt, name, spec, "ttlSecondsAfterFinished", "spec", None)
        _int_field(rt, name, spec, "activeDeadlineSeconds", "spec", None)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        if not isinstance(spec["suspend"], bool):
            raise _invalid(rt, name, "spec.suspend", "must be a boolean")
        uid = obj["metadata"].get("uid")
        if not spec.get("manualSelector") and uid and not spec.get("selector"):
            # What the real registry does: a selector on the Job's own uid, and the labels to match it.
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
            if isinstance(labels, dict):
                labels.update(
                    {
                        "batch.kubernetes.io/controller-uid": uid,
                        "batch.kubernetes.io/job-name": name,
                        "controller-uid": uid,
                        "job-name": name,
                    }
                )
        _validate_selector_and_template(rt, name, spec)
    elif rt.kind == "CronJob":
        if not isinstance(spec.get("schedule"), str) or not spec["schedule"].strip():
            raise _invalid(rt, name, "spec.schedule", "Required value")
        spec.setdefault("concurrencyPolicy", "Allow")
        _one_of(rt, name, spec["concurrencyPolicy"], "spec.concurrencyPolicy", ("Allow", "Forbid", "Replace"))
        spec.setdefault("suspend", False)
        _int_field(rt, name, spec, "successfulJobsHistoryLimit", "spec", 3)
        _int_field(rt, name, spec, "failedJobsHistoryLimit", "spec", 1)
        job_template = spec.get("jobTemplate")
        if not isinstance(job_template, dict) or not isinstance(job_template.get("spec"), dict):
            raise _invalid(rt, name, "spec.jobTemplate", "Required value")
        template = job_template["spec"].get("template")
        _job_template_policy(rt, name, template, "spec.jobTemplate.spec.template")
        _validate_containers(rt, name, template["spec"], "spec.jobTemplate.spec.template.spec")
        template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
        _default_pod_spec(template["spec"])
    obj.setdefault("status", {})

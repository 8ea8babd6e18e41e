"""The credential rotation's rules (plugins/module_utils/_rotation.py), table by table, in milliseconds.

Inputs are built as the role builds them (its defaults plus the service's variables); every
kubernetes.core, system_user* and rotation_observe answer is a fake shaped like the real one. No
token may ever show up in the run's state or in anything the run reports.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.xapi.system_auth.plugins.module_utils import _rotation as R
from tests.unit.helpers import REPO  # tests/unit/conftest.py imports it first: .collections is on sys.path

V = "credential_rotation_"
ROLE = Path(REPO) / "roles" / "credential_rotation"
DEFAULTS: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
RUN_ID = "20270115T080000Z-0000abcd"
OTHER_RUN = "20270115T075900Z-ffff0000"
OLD_ID, NEW_ID, ORPHAN_ID = "su_old0000000000000000000a", "su_new0000000000000000000b", "su_orp0000000000000000000c"
OLD_TOKEN = "xsu_" + "OldTokenValue" * 4
NEW_TOKEN = "xsu_" + "NewTokenValue" * 4
PREV_TOKEN = "xsu_" + "PrevTokenValue" * 4
TOKENS = (OLD_TOKEN, NEW_TOKEN, PREV_TOKEN)
NEW_NAME = "shop.api-20270115080000"
EARLIER_NAME = "shop.api-20270115070000"
OLD_FP = R.fingerprint(OLD_TOKEN)
NEW_FP = R.fingerprint(NEW_TOKEN)


def at(offset: float) -> str:
    return R.stamp(NOW + offset)


# -- inputs, as the role resolves them ----------------------------------------------------------

def inputs(ns: str = "shop", secret: str = "api", **over: Any) -> dict:
    """The role's defaults (templated ones resolved by hand), the required variables, then ``over``."""
    out = dict(DEFAULTS)
    out[V + "deployments"] = ["api"]
    ns, secret = over.pop("namespace", ns), over.pop("secret_name", secret)
    out[V + "namespace"], out[V + "secret_name"] = ns, secret
    # The three templated defaults, as Ansible renders them from this service's variables.
    out[V + "name_prefix"] = f"{ns}.{secret}"
    out[V + "description"] = f"Managed by xapi.system_auth.credential_rotation for Secret {ns}/{secret}"
    out[V + "failure_webhook_url"] = ""  # lookup('env', 'XAPI_FAILURE_WEBHOOK_URL') with the variable unset
    for key, value in over.items():
        out[V + key] = value
    return out


def test_defaults_are_the_roles():
    assert DEFAULTS[V + "threshold_days"] == 7 and DEFAULTS[V + "expires_in_days"] == 90
    assert "{{" in DEFAULTS[V + "name_prefix"] and "{{" in DEFAULTS[V + "description"]
    assert R.check_inputs(inputs()) == []


def assert_no_token(*things: Any) -> None:
    text = json.dumps(things, default=str)
    for token in TOKENS:
        # pytest.fail with a fixed sentence: an assert would print the very text that leaks.
        if token in text or R.b64(token) in text:
            pytest.fail("a token leaked into the run's state or output", pytrace=False)
    if re.search(r"xsu_[A-Za-z0-9_-]{20,}", text):
        pytest.fail("something shaped like a token leaked", pytrace=False)


# -- kubernetes objects ---------------------------------------------------------------------------

def secret_obj(name: str = "api", ns: str = "shop", token: str | None = OLD_TOKEN, ident: str | None = OLD_ID,
               ann: dict | None = None, rv: str = "100", labels: dict | None = None,
               owners: list | None = None, token_key: str = "token") -> dict:
    data = {}
    if token is not None:
        data[token_key] = R.b64(token)
    if ident is not None:
        data["id"] = R.b64(ident)
    meta: dict[str, Any] = {"name": name, "namespace": ns, "resourceVersion": rv, "annotations": dict(ann or {})}
    if labels:
        meta["labels"] = labels
    if owners:
        meta["ownerReferences"] = owners
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": data}


def companion_obj(pending: str | None = None, pending_name: str | None = None, pending_id: str | None = None,
                  previous: str | None = None, rotation_for: str = "api", name: str = "api-rotation") -> dict:
    ann: dict[str, Any] = {R.ROTATION_FOR: rotation_for}
    data: dict[str, Any] = {}
    if pending:
        data[R.PENDING_TOKEN] = R.b64(pending)
        ann[R.PENDING_FP] = R.fingerprint(pending)
    if pending_name:
        ann[R.PENDING_NAME] = pending_name
    if pending_id:
        ann[R.PENDING_ID] = pending_id
    if previous:
        data[R.PREVIOUS_TOKEN] = R.b64(previous)
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "50", "annotations": ann},
            "data": data}


def deployment(name: str = "api", replicas: int = 2, generation: int = 1, observed: int | None = None,
               updated: int | None = None, status_replicas: int | None = None, available: int | None = None,
               conditions: list | None = None, marker: str = "", annotations: dict | None = None,
               strategy: dict | None = None) -> dict:
    spec: dict[str, Any] = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"annotations": {R.ROTATED_AT: marker} if marker else {}}}}
    if strategy:
        spec["strategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "shop", "generation": generation, "resourceVersion": "7",
                         "annotations": annotations or {}},
            "spec": spec,
            "status": {"observedGeneration": generation if observed is None else observed,
                       "replicas": replicas if status_replicas is None else status_replicas,
                       "updatedReplicas": replicas if updated is None else updated,
                       "availableReplicas": replicas if available is None else available,
                       "conditions": conditions or []}}


def statefulset(name: str = "db", replicas: int = 3, ready: int | None = None, updated: int | None = None,
                partition: int | None = None, update_rev: str = "db-2", current_rev: str = "db-2",
                strategy: str = "RollingUpdate", generation: int = 1, observed: int | None = None) -> dict:
    update: dict[str, Any] = {"type": strategy}
    if partition is not None:
        update["rollingUpdate"] = {"partition": partition}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": "shop", "generation": generation},
            "spec": {"replicas": replicas, "updateStrategy": update, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {}}},
            "status": {"observedGeneration": generation if observed is None else observed,
                       "readyReplicas": replicas if ready is None else ready,
                       "updatedReplicas": replicas if updated is None else updated,
                       "updateRevision": update_rev, "currentRevision": current_rev}}


def daemonset(name: str = "agent", desired: int = 4, updated: int | None = None, available: int | None = None,
              strategy: str = "RollingUpdate", generation: int = 1, observed: int | None = None) -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "shop", "generation": generation},
            "spec": {"updateStrategy": {"type": strategy}, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {}}},
            "status": {"observedGeneration": generation if observed is None else observed,
                       "desiredNumberScheduled": desired,
                       "updatedNumberScheduled": desired if updated is None else updated,
                       "numberAvailable": desired if available is None else available}}


def pod(name: str, labels: dict | None = None, marker: str = "", created: float = -3600.0, deleting: bool = False,
        phase: str = "Running", reads: str | None = None, secret: str = "api") -> dict:
    """A pod; ``reads``: how it reads the Secret (env, envFrom, volume, projected, init) or None."""
    container: dict[str, Any] = {"name": "main"}
    spec: dict[str, Any] = {"containers": [container]}
    if reads == "env":
        container["env"] = [{"name": "XAPI_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}]
    elif reads == "envFrom":
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    elif reads == "volume":
        spec["volumes"] = [{"name": "t", "secret": {"secretName": secret}}]
    elif reads == "projected":
        spec["volumes"] = [{"name": "t", "projected": {"sources": [{"secret": {"name": secret}}]}}]
    elif reads == "init":
        spec["initContainers"] = [{"name": "init", "envFrom": [{"secretRef": {"name": secret}}]}]
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels or {},
                            "annotations": {R.ROTATED_AT: marker} if marker else {},
                            "creationTimestamp": at(created)}
    if deleting:
        meta["deletionTimestamp"] = at(0)
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


# -- a fake cluster answering kubernetes.core.k8s as the real one does ------------------------------

def k8s_error(reason: str, message: str, code: int) -> dict:
    body = json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}, separators=(",", ":"))
    return {"changed": False, "result": {}, "error": {"reason": reason, "msg": f"Failed to patch object: b'{body}\\n'"}}


CONFLICT = ("Conflict", ('Operation cannot be fulfilled on secrets "api": the object has been modified; please apply '
                        "your changes to the latest version and try again"), 409)
FORBIDDEN = ("Forbidden", ('secrets "api" is forbidden: User "system:serviceaccount:ops:rotator" cannot patch '
                          'resource "secrets" in API group "" in the namespace "shop"'), 403)


class Cluster:
    """Objects by (kind, name); answers definitions like kubernetes.core.k8s (merge patches, 409 on a
    stale resourceVersion, hidden data), with faults per object name."""

    def __init__(self, *objects: dict) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objects}
        self.faults: dict[str, tuple[str, str, int]] = {}
        self.definitions: list[dict] = []

    def secret(self, name: str = "api") -> dict:
        return self.objects[("Secret", name)]

    def _one(self, definition: dict) -> dict:
        self.definitions.append(copy.deepcopy(definition))
        kind, meta = definition["kind"], definition["metadata"]
        if meta["name"] in self.faults:
            return k8s_error(*self.faults[meta["name"]])
        obj = self.objects.get((kind, meta["name"]))
        if obj is None:
            if kind != "Secret":
                return k8s_error("NotFound", f'{kind.lower()}s.apps "{meta["name"]}" not found', 404)
            obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                                                                  "resourceVersion": "1"}, "data": {}}
            self.objects[(kind, meta["name"])] = obj
        elif meta.get("resourceVersion") and meta["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            return k8s_error(*CONFLICT)
        target = obj["metadata"].setdefault("annotations", {})
        for key, value in (meta.get("annotations") or {}).items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        data = obj.setdefault("data", {})
        for key, value in (definition.get("data") or {}).items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        template = ((definition.get("spec") or {}).get("template") or {}).get("metadata")
        if template:
            obj["spec"]["template"]["metadata"].setdefault("annotations", {}).update(template["annotations"])
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        shown = {k: copy.deepcopy(v) for k, v in obj.items() if k != "data"}  # hidden_fields: [data]
        return {"changed": True, "result": shown}

    def answer(self, calls: list[dict]) -> list[dict]:
        """The registered results of the role's loop over ``calls`` (each with its ``item``)."""
        out = []
        for call in calls:
            entries = [self._one(d) for d in call["definitions"]]
            if len(entries) == 1:
                out.append({**entries[0], "item": call})
            else:
                out.append({"changed": any(e["changed"] for e in entries), "result": {"results": entries},
                            "item": call})
        return out


def write(run: dict, step: str, tokens: dict, cluster: Cluster, now: float = NOW) -> dict:
    calls = R.writes(run, step, tokens, now)
    results = cluster.answer(calls)
    # the filter takes the calls from the loop's items, as the role registers them
    return R.fold_write(run, step, [r["item"] for r in results], results, now)


def restart(run: dict, step: str, cluster: Cluster) -> dict:
    calls = R.restart_calls(run, step)
    results = cluster.answer(calls)
    return R.fold_restart(run, step, [r["item"] for r in results], results)


# -- services at a given step ---------------------------------------------------------------------

PHASE_ANN = {
    R.CREATING: {R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME, R.STARTED_AT: at(-3600), R.PREVIOUS_ID: OLD_ID},
    R.PROMOTED: {R.PHASE: "promoted", R.PENDING_NAME: EARLIER_NAME, R.STARTED_AT: at(-3600), R.PREVIOUS_ID: OLD_ID,
                 R.PREVIOUS_FP: R.fingerprint(PREV_TOKEN), R.CURRENT_ID: NEW_ID, R.CURRENT_FP: NEW_FP,
                 R.PROMOTED_AT: at(-3000), R.MARKER: f"{NEW_ID}-20270115070000", R.USED_BEFORE: "never"},
    R.ROLLING_BACK: {R.PHASE: "rolling-back", R.PENDING_NAME: EARLIER_NAME, R.STARTED_AT: at(-3600),
                     R.PREVIOUS_ID: OLD_ID, R.CURRENT_ID: OLD_ID, R.FAILED_ID: NEW_ID,
                     R.FAILED_MARKER: f"{NEW_ID}-20270115070000", R.MARKER: f"rollback-{NEW_ID}-20270115070000",
                     R.ROLLBACK_REASON: "the rollout of Deployment shop/api failed", R.PROMOTED_AT: at(-2000)},
}


def scenario(phase: str = "", companion: dict | None = None, **over: Any) -> tuple[dict, dict, Cluster]:
    """The objects of a service whose Secret records ``phase`` (pending: creating plus a stored token)."""
    if phase == R.PENDING:
        ann = dict(PHASE_ANN[R.CREATING])
        companion = companion or companion_obj(NEW_TOKEN, EARLIER_NAME, NEW_ID, OLD_TOKEN)
        sec = secret_obj(ann=ann)
    elif phase == R.PROMOTED:
        sec = secret_obj(token=NEW_TOKEN, ident=NEW_ID, ann=PHASE_ANN[R.PROMOTED])
        companion = companion or companion_obj(previous=PREV_TOKEN)
    elif phase == R.ROLLING_BACK:
        sec = secret_obj(token=PREV_TOKEN, ident=OLD_ID, ann=PHASE_ANN[R.ROLLING_BACK])
        companion = companion or companion_obj(previous=PREV_TOKEN)
    else:
        sec = secret_obj(ann=PHASE_ANN.get(phase))
    dep = deployment(marker=PHASE_ANN.get(phase, {}).get(R.MARKER, ""))
    read = {"secret": sec, "secret_error": "", "companion": companion, "companion_error": "",
            "workloads": [{"kind": "Deployment", "name": "api", "object": dep, "error": ""}], "pods": []}
    objects = [sec, dep] + ([companion] if companion else [])
    return inputs(**over), read, Cluster(*objects)


def read_run(phase: str = "", companion: dict | None = None, check_mode: bool = False, read_over: dict | None = None,
             **over: Any) -> tuple[dict, dict, Cluster]:
    inp, read, cluster = scenario(phase, companion, **over)
    read.update(read_over or {})
    run = R.start({"h1": inp}, RUN_ID, check_mode)
    run, tokens = R.inspect(run, {"h1": read}, NOW)
    _LAST_READ["h1"] = read  # what the check step reads too (workloads, companion), for decided()
    return run, tokens, cluster


# The objects read_run's scenario holds, for the check step that follows the decision.
_LAST_READ: dict[str, dict] = {}


def checked(run: dict) -> dict:
    """The check step after the decision, from the same objects the scenario read."""
    return R.inspect_more(run, {svc["host"]: _LAST_READ[svc["host"]] for svc in R.due(run, "check")})


def user(ident: str = OLD_ID, days: int = 30, active: bool = True, expired: bool = False, **more: Any) -> dict:
    return {"id": ident, "name": more.pop("name", "shop.api-20261017080000"), "active": active, "expired": expired,
            "days_remaining": days, **more}


def decided(phase: str = "", users: list | None = None, check_mode: bool = False, companion: dict | None = None,
            read_over: dict | None = None, **over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = read_run(phase, companion, check_mode, read_over, **over)
    if users is None:
        users = [user(days=3)] + ([user(NEW_ID, days=90)] if phase in (R.PROMOTED,) else [])
    return checked(R.decide(run, users, {}, NOW)), tokens, cluster


def svc_of(run: dict, host: str = "h1") -> dict:
    return run["services"][host]


# == check_inputs and start =======================================================================

BAD_INPUTS = [
    # (id, overrides, the variable the sentence names, part of the fix)
    ("namespace-invalid", {"namespace": "Bad_NS!"}, "namespace", "set it to the namespace"),
    ("namespace-empty", {"namespace": ""}, "namespace", "set it to the namespace"),
    ("namespace-too-long", {"namespace": "n" * 64}, "namespace", "at most 63 characters"),
    ("secret-name-upper-case", {"secret_name": "Api"}, "secret_name", "set it to the name of the Secret"),
    ("state-secret-equals-secret", {"state_secret_name": "api"}, "state_secret_name", "must differ"),
    ("state-secret-invalid", {"state_secret_name": "Api_State"}, "state_secret_name", "valid one"),
    ("token-key-invalid", {"secret_token_key": "to ken"}, "secret_token_key", "correct it"),
    ("token-key-equals-id-key", {"secret_id_key": "token"}, "secret_id_key", "give the id its own key"),
    ("rollout-timeout-negative", {"rollout_timeout": -5}, "rollout_timeout", "at least 1"),
    ("verify-timeout-not-a-number", {"verify_timeout": "abc"}, "verify_timeout", "whole number"),
    ("health-timeout-not-a-number", {"health_timeout": "abc"}, "health_timeout", "whole number"),
    ("usage-timeout-zero", {"usage_timeout": 0}, "usage_timeout", "at least 1"),
    ("lock-duration-short", {"lock_duration": 10}, "lock_duration", "at least 30"),
    ("drain-timeout-negative", {"drain_timeout": -1}, "drain_timeout", "at least 0"),
    ("poll-interval-zero", {"poll_interval": 0}, "poll_interval", "at least 1"),
    ("create-attempts-boolean", {"create_attempts": True}, "create_attempts", "whole number"),
    ("threshold-short", {"threshold_days": 2}, "threshold_days", "allow_short_threshold: true"),
    ("threshold-negative", {"threshold_days": -1}, "threshold_days", "at least 3"),
    ("threshold-not-a-number", {"threshold_days": "abc"}, "threshold_days", "whole number"),
    ("expires-zero", {"expires_in_days": 0}, "expires_in_days", "between 1 and 365"),
    ("expires-above-a-year", {"expires_in_days": 366}, "expires_in_days", "between 1 and 365"),
    ("expires-equals-threshold", {"expires_in_days": 7}, "expires_in_days", "must be greater than"),
    ("expires-below-threshold", {"expires_in_days": 30, "threshold_days": 45}, "expires_in_days",
     "every run would rotate again"),
    ("strategy-unknown", {"strategy": "rolling"}, "strategy", "restart or reload"),
    ("restart-without-workloads", {"deployments": []}, "deployments", "strategy restart needs"),
    ("workload-kind-job", {"workloads": [{"kind": "Job", "name": "migrate"}]}, "workloads",
     "Deployment, StatefulSet, DaemonSet"),
    ("workload-name-invalid", {"workloads": [{"kind": "Deployment", "name": "Api_Server"}]}, "workloads",
     "correct the name"),
    ("deployment-name-invalid", {"deployments": ["api", "Web!"]}, "deployments", "correct the name"),
    ("workloads-not-a-list", {"workloads": {"kind": "Deployment", "name": "api"}}, "workloads", "must be a list"),
    ("workload-entry-not-a-dict", {"workloads": [42]}, "workloads", "{kind: Deployment, name: NAME}"),
    ("name-prefix-invalid", {"name_prefix": "shop api!"}, "name_prefix", "may only contain"),
    ("name-prefix-too-long", {"name_prefix": "p" * 101}, "name_prefix", "at most 100 characters"),
    ("health-status-empty", {"health_status": []}, "health_status", "such as [200]"),
    ("health-status-not-a-code", {"health_status": ["ok"]}, "health_status", "such as [200]"),
    ("health-status-out-of-range", {"health_status": [200, 700]}, "health_status", "such as [200]"),
    ("health-status-not-a-list", {"health_status": "200"}, "health_status", "such as [200]"),
    ("health-url-not-http", {"health_url": "ftp://api.shop/healthz"}, "health_url", "http:// or https://"),
]


@pytest.mark.parametrize(("over", "variable", "fix"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_a_bad_input_is_one_sentence_naming_the_variable_and_the_fix(over, variable, fix):
    errors = R.check_inputs(inputs(**over))
    assert len(errors) == 1, errors
    assert V + variable in errors[0]
    assert fix in errors[0]
    assert errors[0].endswith(".")


def test_a_bad_namespace_is_not_reported_as_a_bad_name_prefix():
    errors = R.check_inputs(inputs(namespace="Bad_NS!"))
    assert errors and errors[0].startswith(f'{V}namespace "Bad_NS!" is not a valid Kubernetes namespace name')
    assert not [e for e in errors if "name_prefix" in e], errors


GOOD_INPUTS = [
    ("defaults", {}),
    ("reload-without-workloads", {"strategy": "reload", "deployments": []}),
    ("short-threshold-allowed", {"threshold_days": 1, "allow_short_threshold": True}),
    ("short-threshold-allowed-as-string", {"threshold_days": "2", "allow_short_threshold": "true"}),
    ("numbers-as-strings", {"rollout_timeout": "600", "threshold_days": "7", "expires_in_days": "90"}),
    ("threshold-zero-allowed", {"threshold_days": 0, "allow_short_threshold": True}),
    ("longest-expiry", {"expires_in_days": 365, "threshold_days": 364}),
    ("every-kind", {"workloads": [{"kind": "StatefulSet", "name": "db"}, {"kind": "DaemonSet", "name": "agent"},
                                  "web", {"name": "worker.v2"}]}),
    ("own-state-secret", {"state_secret_name": "api-state"}),
    ("health-check", {"health_url": "https://api.shop.example/healthz", "health_status": [200, 204]}),
    ("zero-waits", {"drain_timeout": 0, "reload_interval": 0, "kubelet_sync_delay": 0, "lock_wait": 0}),
    ("longest-namespace", {"namespace": "n" * 63}),
    ("other-keys", {"secret_token_key": "XAPI_TOKEN", "secret_id_key": "xapi.id"}),
]


@pytest.mark.parametrize("over", [c[1] for c in GOOD_INPUTS], ids=[c[0] for c in GOOD_INPUTS])
def test_good_inputs_give_no_sentence(over):
    assert R.check_inputs(inputs(**over)) == []


def test_start_fails_the_bad_services_and_the_good_ones_go_on_to_read():
    run = R.start({"a": inputs(secret="api"), "b": inputs(rollout_timeout=-5, secret="billing"),
                   "c": inputs(secret="web", deployments=["web"])}, RUN_ID)
    a, b, c = (run["services"][h] for h in "abc")
    assert (b["status"], b["step"]) == ("failed", "done")
    assert b["message"] == f"{V}rollout_timeout is -5; set it to a whole number of at least 1."
    for good in (a, c):
        assert (good["status"], good["step"], good["message"]) == ("", "read", "")
        assert good["cfg"]["rollout_timeout"] == 600
    assert [r["host"] for r in R.read_requests(run)] == ["a", "c"]
    assert run["run_id"] == RUN_ID and run["check_mode"] is False


SPEC = yaml.safe_load((REPO / "roles" / "credential_rotation" / "meta" / "argument_specs.yml").read_text())[
    "argument_specs"]["main"]["options"]
SECRET = {name for name, option in SPEC.items() if option.get("no_log")}

# (id, variables over a good service's, the sentence): what the role's argument spec refuses, said
# as the fix, and never showing a secret variable's value.
SPEC_MISTAKES = [
    ("bool", {"force": "maybe"}, f"{V}force is 'maybe'; set it to true or false."),
    ("int", {"poll_interval": "soon"}, f"{V}poll_interval is 'soon'; set it to a whole number."),
    ("choice", {"strategy": "rolling"}, f"{V}strategy is 'rolling'; set it to one of restart, reload."),
    ("list", {"deployments": {"web": 1}}, f"{V}deployments is {{'web': 1}}; set it to a list."),
    ("missing", {"namespace": None}, f"{V}namespace is not set; set it in the service's variables."),
]


@pytest.mark.parametrize(("over", "sentence"), [c[1:] for c in SPEC_MISTAKES], ids=[c[0] for c in SPEC_MISTAKES])
def test_a_value_the_argument_spec_refuses_is_one_sentence_with_the_fix(over, sentence):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_inputs import spec_sentence
    values = {k: v for k, v in inputs(**over).items() if v is not None}
    errors = ArgumentSpecValidator(SPEC).validate({k: v for k, v in values.items() if k in SPEC},
                                                  validate_role_argument_spec=True).error_messages
    assert spec_sentence(errors, values, SECRET) == sentence
    run = R.start({"bad": values, "good": inputs(secret="web")}, RUN_ID, invalid={"bad": sentence})
    assert (run["services"]["bad"]["status"], run["services"]["bad"]["message"]) == ("failed", sentence)
    assert run["services"]["good"]["step"] == "read"


def test_a_refused_secret_value_is_never_shown():
    from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_inputs import spec_sentence
    message = f"argument '{V}api_token' is of type int and we were unable to convert to str: no"
    sentence = spec_sentence([message], {f"{V}api_token": 123456789}, SECRET)
    assert sentence == f"{V}api_token is set but not valid; set it to a string."
    assert spec_sentence(["something else."], {}) == "something else; correct this variable."
    assert spec_sentence([], {}) == ""


def test_good_inputs_pass_the_argument_spec():
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    for _, over in GOOD_INPUTS:
        values = inputs(**over)
        assert not ArgumentSpecValidator(SPEC).validate({k: v for k, v in values.items() if k in SPEC},
                                                        validate_role_argument_spec=True).error_messages, over


def test_due_steps_name_exactly_the_steps_some_service_is_due_for():
    from ansible_collections.xapi.system_auth.plugins.filter.rotation import _rotation_start
    packed = _rotation_start({"a": inputs(secret="api"), "b": inputs(rollout_timeout=-5, secret="billing")}, RUN_ID)
    # What the role's tasks test is beside the state, which travels as one string (see pack).
    assert set(packed) == {"due_steps", "due_groups", "statuses", "token_lookups", R.PACKED}
    assert isinstance(packed[R.PACKED], str)
    run = R.unpack(packed)
    assert packed["due_steps"] == run["due_steps"] == ["read", "done"]
    assert packed["statuses"] == run["statuses"] == ["failed"]
    assert R.pack(run) == packed and R.unpack(run) is run
    run["services"]["a"]["step"] = "create"
    R.indexed(run)
    assert run["due_steps"] == ["create", "done"]
    assert run["due_groups"] == ["change"]
    assert run["due_steps"] == [step for step in R.STEPS if R.due(run, step)]
    run["services"]["a"].update(step="lookup", current_id="")
    assert R.indexed(run)["token_lookups"] == len(R.lookup_token_hosts(run)) == 1
    run["services"]["a"]["current_id"] = "su_1"
    assert R.indexed(run)["token_lookups"] == len(R.lookup_token_hosts(run)) == 0


@pytest.mark.parametrize(("steps", "groups"), [
    (["done"], []),                                  # a daily run with nothing due: change.yml is skipped
    (["read"], []),
    (["lookup", "done"], []),
    (["check", "done"], ["change"]),
    (["preview"], ["change"]),
    (["discard_list"], ["change", "discard"]),
    (["discard", "create"], ["change", "discard"]),
    (["rb_wait", "done"], ["change", "rollback"]),    # a resumed rollback, past its restore
    (["rb_restore"], ["change", "rollback"]),
    (["clear"], ["change"]),
], ids=["nothing-due", "read", "lookup", "check", "preview", "discard-list", "discard", "rb-wait", "rb-restore",
        "clear"])
def test_due_groups_name_the_included_parts_some_service_is_due_for(steps, groups):
    run = {"services": {f"h{i}": {"step": step, "status": "", "current_id": "su_1"} for i, step in enumerate(steps)}}
    assert R.indexed(run)["due_groups"] == groups


def test_start_fails_a_service_of_another_platform_connection():
    run = R.start({"a": inputs(api_url="https://xapi.one"), "b": inputs(secret="web", api_url="https://xapi.two"),
                   "c": inputs(secret="db", api_url="https://xapi.one", validate_certs="true")}, RUN_ID)
    b = run["services"]["b"]
    assert (b["status"], b["step"]) == ("failed", "done")
    assert f"{V}api_url" in b["message"] and "run services of another platform connection in a play of their own" \
        in b["message"]
    assert run["services"]["a"]["step"] == run["services"]["c"]["step"] == "read"


def test_start_the_service_defaults_to_namespace_slash_secret():
    run = R.start({"a": inputs(), "b": inputs(secret="web", service_name="Web front end")}, RUN_ID, True)
    assert run["services"]["a"]["service"] == "shop/api"
    assert run["services"]["b"]["service"] == "Web front end"
    assert run["services"]["a"]["state_secret"] == "api-rotation"
    assert run["check_mode"] is True


def test_start_normalises_the_settings():
    cfg = svc_of(R.start({"h1": inputs(threshold_days="10", health_status=["200"], deployments=["api", "api"],
                                       workloads=[], reload_interval=60, kubelet_sync_delay=30)}, RUN_ID))["cfg"]
    assert cfg["threshold_days"] == 10 and cfg["health_status"] == [200]
    assert cfg["workloads"] == [{"kind": "Deployment", "name": "api"}]
    assert cfg["reload_window"] == 90
    assert cfg["webhook"] is False and cfg["name_prefix"] == "shop.api"


# == inspect ========================================================================================

def inspected(read_over: dict | None = None, **over: Any) -> dict:
    """A due service after the read, the decision and the check: every check before a change."""
    return svc_of(decided(read_over=read_over, **over)[0])


@pytest.mark.parametrize(("read_over", "over", "parts"), [
    ({"secret": None}, {}, ["Secret shop/api does not exist", f"check {V}namespace and {V}secret_name"]),
    ({"secret": None, "secret_error": "Unauthorized"}, {"kubeconfig": "/etc/rotator/kubeconfig"},
     ["Could not read Secret shop/api (Unauthorized)", "/etc/rotator/kubeconfig", "may get this Secret"]),
    ({"secret": None, "secret_error": "Forbidden"}, {}, ["(Forbidden)", "check the kubeconfig (KUBECONFIG)"]),
    ({"secret": secret_obj(token=None)}, {}, ["Secret shop/api has no key token", f"set {V}secret_token_key"]),
    ({"secret": secret_obj(owners=[{"kind": "ExternalSecret", "name": "api-es"}])}, {},
     ["Secret shop/api is managed by ExternalSecret api-es, which would put its own token back"]),
    ({"secret": secret_obj(labels={"app.kubernetes.io/managed-by": "external-secrets"})}, {},
     ["managed by External Secrets Operator"]),
    ({"secret": secret_obj(ann={"reconcile.external-secrets.io/data-hash": "abc"})}, {},
     ["managed by External Secrets Operator (an ExternalSecret)"]),
    ({"secret": secret_obj(labels={"app.kubernetes.io/managed-by": "vault-secrets-operator"})}, {},
     ["managed by Vault Secrets Operator"]),
    ({"workloads": [{"kind": "Deployment", "name": "api", "object": None, "error": ""}]}, {},
     ["Deployment shop/api does not exist", f"check {V}deployments", "nothing was changed"]),
    ({"workloads": [{"kind": "Deployment", "name": "api", "object": None, "error": "Forbidden"}]}, {},
     ["Could not read Deployment shop/api (Forbidden)"]),
    ({"workloads": [{"kind": "StatefulSet", "name": "db", "object": statefulset(strategy="OnDelete"),
                     "error": ""}]}, {"workloads": [{"kind": "StatefulSet", "name": "db"}]},
     ["StatefulSet shop/db uses the OnDelete update strategy", "switch it to RollingUpdate"]),
    ({"workloads": [{"kind": "DaemonSet", "name": "agent", "object": daemonset(strategy="OnDelete"), "error": ""}]},
     {"workloads": [{"kind": "DaemonSet", "name": "agent"}]}, ["DaemonSet shop/agent uses the OnDelete"]),
    ({"workloads": [{"kind": "StatefulSet", "name": "db", "object": statefulset(partition=2), "error": ""}]},
     {"workloads": [{"kind": "StatefulSet", "name": "db"}]},
     ["StatefulSet shop/db has a rolling-update partition of 2", "set the partition to 0"]),
    ({"companion": None, "companion_error": "Forbidden"}, {}, ["Could not read Secret shop/api-rotation (Forbidden)"]),
    ({"companion": companion_obj(rotation_for="billing")}, {},
     ["Secret shop/api-rotation exists and belongs to something else", f"set {V}state_secret_name"]),
    ({"secret": secret_obj(ann={R.PHASE: "exploded"})}, {}, ["unknown rotation phase 'exploded'", f"{V}abort: true"]),
], ids=["missing", "unreadable", "unreadable-default-kubeconfig", "no-token-key", "owner-reference",
        "external-secrets-label", "external-secrets-annotation", "vault-label", "workload-missing",
        "workload-unreadable", "statefulset-ondelete", "daemonset-ondelete", "statefulset-partition",
        "companion-unreadable", "companion-foreign", "unknown-phase"])
def test_inspect_fails_before_anything_changes(read_over, over, parts):
    svc = inspected(read_over, **over)
    assert (svc["status"], svc["step"]) == ("failed", "done")
    for part in parts:
        assert part in svc["message"]


def test_a_missing_secret_is_never_to_be_created():
    message = inspected({"secret": None})["message"]
    assert not re.search(r"\b(create|add|apply) (it|the Secret|a Secret|one)\b", message, re.I), message
    assert "never creates it" in message


def test_reload_tolerates_ondelete_and_partitions():
    read_over = {"workloads": [{"kind": "StatefulSet", "name": "db", "object": statefulset(strategy="OnDelete"),
                                "error": ""}]}
    svc = inspected(read_over, strategy="reload", workloads=[{"kind": "StatefulSet", "name": "db"}])
    assert (svc["status"], svc["step"]) == ("", "lock")


def test_inspect_moves_a_good_service_to_lookup_with_its_tokens():
    run, tokens, _ = read_run()
    svc = svc_of(run)
    assert (svc["step"], svc["phase"], svc["current_id"], svc["rv"]) == ("lookup", "", OLD_ID, "100")
    assert tokens == {"h1": {"current": R.b64(OLD_TOKEN), "pending": "", "previous": ""}}
    assert svc_of(decided()[0])["workload_objects"]["Deployment/api"]["selector"] == {"app": "api"}
    assert_no_token(run)


def test_inspect_returns_the_tokens_per_host():
    inp1, read1, _ = scenario()
    inp2, read2, _ = scenario(R.PENDING, secret="web", deployments=["api"])
    read2["secret"]["metadata"]["name"] = "web"
    read2["companion"]["metadata"]["annotations"][R.ROTATION_FOR] = "web"
    run = R.start({"h1": inp1, "h2": inp2}, RUN_ID)
    run, tokens = R.inspect(run, {"h1": read1, "h2": read2}, NOW)
    assert tokens["h1"] == {"current": R.b64(OLD_TOKEN), "pending": "", "previous": ""}
    assert tokens["h2"] == {"current": R.b64(OLD_TOKEN), "pending": NEW_TOKEN, "previous": R.b64(OLD_TOKEN)}
    assert svc_of(run, "h2")["new_id"] == NEW_ID and svc_of(run, "h2")["new_name"] == EARLIER_NAME
    assert_no_token(run)


def test_inspect_without_an_answer_fails_the_service():
    run = R.start({"h1": inputs()}, RUN_ID)
    svc = svc_of(R.inspect(run, {}, NOW)[0])
    assert (svc["status"], svc["step"]) == ("failed", "done")
    assert "the read step gave no answer" in svc["message"]


def test_inspect_notes_a_lock_held_by_another_run_and_the_wait():
    ann = {R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(30)}
    run, _, _ = read_run(read_over={"secret": secret_obj(ann=ann), "lock_waited": 12.7})
    svc = svc_of(run)
    assert svc["lock_holder"] == OTHER_RUN and svc["notes"] == ["waited 12 s for another run's lock"]


@pytest.mark.parametrize(("ann", "held"), [
    ({R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(30)}, True),
    ({R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(-1)}, False),
    ({R.LOCK_HOLDER: RUN_ID, R.LOCK_EXPIRES: at(30)}, False),
    ({R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: "garbage"}, False),
    ({}, False),
], ids=["other-live", "other-lapsed", "own", "unreadable-expiry", "none"])
def test_lock_held_by_other(ann, held):
    assert R.lock_held_by_other(ann, RUN_ID, NOW) is held


@pytest.mark.parametrize(("ann", "companion", "phase"), [
    ({}, None, ""),
    ({R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME}, None, "creating"),
    ({R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME}, companion_obj(NEW_TOKEN, EARLIER_NAME, NEW_ID), "pending"),
    ({R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME}, companion_obj(NEW_TOKEN, NEW_NAME, NEW_ID), "creating"),
    ({R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME}, companion_obj(None, EARLIER_NAME, NEW_ID), "creating"),
    ({R.PHASE: "creating", R.PENDING_NAME: EARLIER_NAME}, companion_obj(NEW_TOKEN, EARLIER_NAME, None), "creating"),
    ({R.PHASE: "pending", R.PENDING_NAME: EARLIER_NAME}, companion_obj(NEW_TOKEN, EARLIER_NAME, NEW_ID), "pending"),
    ({R.PHASE: "promoted"}, companion_obj(previous=OLD_TOKEN), "promoted"),
    ({R.PHASE: "rolling-back"}, None, "rolling-back"),
], ids=["none", "creating-no-companion", "creating-with-token", "companion-of-another-name", "companion-no-token",
        "companion-no-id", "pending-recorded", "promoted", "rolling-back"])
def test_derived_phase(ann, companion, phase):
    assert R.derived_phase(ann, companion) == phase


def test_a_companion_of_another_pending_name_means_the_token_was_lost():
    run, tokens, _ = read_run(R.CREATING, companion=companion_obj(NEW_TOKEN, NEW_NAME, NEW_ID))
    svc = svc_of(run)
    assert svc["phase"] == "creating" and tokens["h1"]["pending"] == "" and svc["new_id"] == ""


# == decide ==========================================================================================

@pytest.mark.parametrize(("users", "over", "step", "status", "action", "message"), [
    ([user(days=30)], {}, "done", "not due", "none", "30 days left"),
    ([user(days=8)], {}, "done", "not due", "none", "8 days left"),
    ([user(days=7)], {}, "check", "", "rotate", ""),
    ([user(days=6)], {}, "check", "", "rotate", ""),
    ([user(days=40, active=False)], {}, "check", "", "rotate", ""),
    ([user(days=0, expired=True)], {}, "check", "", "rotate", ""),
    ([], {}, "check", "", "rotate", ""),
    ([user(days=30)], {"force": True}, "check", "", "rotate", ""),
    ([user(days=30)], {"abort": True}, "done", "not due", "none",
     "nothing to abort, no rotation is in progress; 30 days left"),
    ([user(days=30)], {"sweep_orphans": True}, "check", "", "sweep", ""),
    ([user(days=2)], {"sweep_orphans": True}, "check", "", "rotate", ""),
    ([user(days=12)], {"threshold_days": 14}, "check", "", "rotate", ""),
], ids=["not-due", "one-above-threshold", "on-threshold", "one-below-threshold", "inactive", "expired",
        "unknown-credential", "force", "abort-nothing", "sweep", "due-beats-sweep", "own-threshold"])
def test_decide(users, over, step, status, action, message):
    run, _, _ = read_run(**over)
    svc = svc_of(R.decide(run, users, {}, NOW))
    assert (svc["step"], svc["status"], svc["action"]) == (step, status, action)
    assert svc["message"] == message


def test_decide_records_why_a_credential_is_due():
    run, _, _ = read_run()
    svc = svc_of(R.decide(run, [], {}, NOW))
    assert svc["state_text"] == f"the platform does not know the credential {OLD_ID}" and svc["due"] is True
    svc = svc_of(R.decide(run, [user(days=7)], {}, NOW))
    assert svc["state_text"] == "7 days left" and svc["days_remaining"] == 7


def test_decide_by_token_when_the_secret_holds_no_id():
    run, tokens, _ = read_run(read_over={"secret": secret_obj(ident=None)})
    assert R.lookup_token_hosts(run) == ["h1"] and R.lookup_ids(run) == []
    assert R.unb64(tokens["h1"]["current"]) == OLD_TOKEN
    svc = svc_of(R.decide(run, [], {"h1": user(days=50)}, NOW))
    assert (svc["step"], svc["current_id"], svc["message"]) == ("done", OLD_ID, "50 days left")
    svc = svc_of(R.decide(run, [], {"h1": {}}, NOW))
    assert svc["step"] == "check" and svc["state_text"] == "the token in the Secret is not accepted by the platform"


@pytest.mark.parametrize(("phase", "over", "action"), [
    (R.CREATING, {}, "resume"), (R.PENDING, {}, "resume"), (R.PROMOTED, {}, "resume"),
    (R.ROLLING_BACK, {}, "resume"), (R.CREATING, {"abort": True}, "abort"), (R.PROMOTED, {"abort": True}, "abort"),
    (R.PENDING, {"force": True}, "resume"),
], ids=["creating", "pending", "promoted", "rolling-back", "abort-creating", "abort-promoted", "force-resumes"])
def test_decide_a_rotation_in_progress_is_resumed_or_aborted_even_when_not_due(phase, over, action):
    svc = svc_of(decided(phase, users=[user(days=60), user(NEW_ID, days=90)], **over)[0])
    assert (svc["step"], svc["action"], svc["status"]) == ("lock", action, "")


def test_decide_lookup_ids_include_the_previous_credential_of_a_promoted_rotation():
    run, _, _ = read_run(R.PROMOTED)
    assert R.lookup_ids(run) == [NEW_ID, OLD_ID]
    svc = svc_of(R.decide(run, [user(NEW_ID, days=90), user(OLD_ID, days=3, active=False)], {}, NOW))
    assert svc["previous_active"] is False
    svc = svc_of(R.decide(run, [user(NEW_ID, days=90), user(OLD_ID, days=3)], {}, NOW))
    assert svc["previous_active"] is True


@pytest.mark.parametrize(("read_over", "error", "token_error"), [
    ({}, "HTTP 503: service unavailable", ""),
    ({"secret": secret_obj(ident=None)}, "", "HTTP 503: service unavailable"),
], ids=["by-id", "by-token"])
def test_decide_a_failed_lookup_fails_its_services_and_changes_nothing(read_over, error, token_error):
    run, _, _ = read_run(read_over=read_over)
    svc = svc_of(R.decide(run, [], {}, NOW, error, token_error))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert "(HTTP 503: service unavailable)" in svc["message"] and "nothing was changed" in svc["message"]


# What the role's lookup tasks register (failed_when: false makes Ansible record failed: false).
LOOKED_UP = {"changed": False, "failed": False, "failed_when_result": False, "system_users": [], "missing_ids": []}
REFUSED = {"changed": False, "failed": False, "failed_when_result": False,
           "msg": "the API token was rejected: expired, deactivated or wrong."}


@pytest.mark.parametrize(("answer", "key", "error"), [
    ({}, "system_users", ""),
    ({"skipped": True, "changed": False}, "system_users", ""),
    (LOOKED_UP, "system_users", ""),
    (REFUSED, "system_users", "the API token was rejected: expired, deactivated or wrong."),
    ({**REFUSED, "failed": True}, "system_users", "the API token was rejected: expired, deactivated or wrong."),
    ({"failed": False, "failed_when_result": False}, "system_users", "the lookup gave no answer"),
    ({"failed": False, "results": []}, "results", ""),
    ({"failed": False, "msg": "tokens[0] is empty"}, "results", "tokens[0] is empty"),
], ids=["not-run", "skipped", "answered", "refused-under-failed_when", "refused", "no-answer", "tokens-answered",
        "tokens-refused-as-a-whole"])
def test_lookup_failure(answer, key, error):
    assert R.lookup_failure(answer, key) == error


@pytest.mark.parametrize(("item", "expected"), [
    ({"failed": False, "system_user": {"id": OLD_ID}}, {"id": OLD_ID}),
    ({"failed": True, "status": 401, "msg": "rejected"}, {}),
    ({"failed": True, "status": 404, "msg": "unknown"}, {}),
    ({"failed": True, "status": 503, "msg": "HTTP 503"}, {"error": "HTTP 503"}),
    ({"failed": True, "status": None, "msg": "timed out"}, {"error": "timed out"}),
], ids=["accepted", "not-accepted", "unknown", "server-error", "no-answer"])
def test_token_lookup(item, expected):
    assert R.token_lookup(item) == expected


def test_a_lookup_that_failed_under_failed_when_false_is_no_unknown_credential():
    # The bug this guards against: a rejected admin token read as "the platform does not know the
    # credential", which made a service with 90 days left due, and rotated it.
    run, _, _ = read_run()
    svc = svc_of(R.decide(run, [], {}, NOW, R.lookup_failure(REFUSED)))
    assert (svc["step"], svc["status"]) == ("done", "failed") and svc["action"] == "none"
    assert "the API token was rejected" in svc["message"]
    run, _, _ = read_run(read_over={"secret": secret_obj(ident=None)})
    svc = svc_of(R.decide(run, [], {"h1": R.token_lookup({"failed": True, "status": 502, "msg": "HTTP 502"})}, NOW))
    assert (svc["step"], svc["status"]) == ("done", "failed") and "(HTTP 502)" in svc["message"]
    svc = svc_of(R.decide(run, [], {"h1": R.token_lookup({"failed": True, "status": 401, "msg": "rejected"})}, NOW))
    assert svc["action"] == "rotate"  # a token the platform refuses is due


def test_decide_in_check_mode_goes_to_preview():
    svc = svc_of(decided(check_mode=True)[0])
    assert (svc["step"], svc["action"]) == ("preview", "rotate")


def test_decide_a_lock_held_by_another_run_ends_skipped():
    ann = {R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(40)}
    svc = svc_of(decided(read_over={"secret": secret_obj(ann=ann)}, lock_wait=90)[0])
    assert (svc["step"], svc["status"]) == ("done", "skipped")
    assert svc["message"].startswith(f"another run holds the rotation lock ({OTHER_RUN} until {at(40)})")
    assert "waited 90 s" in svc["message"] and "re-run once" in svc["message"]


def test_decide_a_not_due_service_ignores_a_held_lock():
    ann = {R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(40)}
    svc = svc_of(decided(users=[user(days=50)], read_over={"secret": secret_obj(ann=ann)})[0])
    assert (svc["step"], svc["status"]) == ("done", "not due")


# == the writing steps ==================================================================================

def test_the_lock_write_is_a_conditional_patch_recording_the_new_name():
    run, tokens, cluster = decided()
    calls = R.writes(run, "lock", tokens, NOW)
    assert len(calls) == 1 and calls[0]["hosts"] == ["h1"]
    (patch,) = calls[0]["definitions"]
    assert patch["metadata"]["resourceVersion"] == "100" and "data" not in patch
    ann = patch["metadata"]["annotations"]
    assert ann[R.PHASE] == "creating" and ann[R.PENDING_NAME] == NEW_NAME and ann[R.PREVIOUS_ID] == OLD_ID
    assert ann[R.LOCK_HOLDER] == RUN_ID and ann[R.LOCK_EXPIRES] == at(60)
    assert calls[0]["cluster"] == {"kubeconfig": None, "context": None}


@pytest.mark.parametrize(("phase", "over", "step"), [
    ("", {}, "create"),
    (R.CREATING, {}, "discard_list"),
    (R.PENDING, {}, "verify"),
    (R.PROMOTED, {}, "restart"),
    (R.ROLLING_BACK, {}, "rb_restart"),
    (R.CREATING, {"abort": True}, "discard_list"),
    (R.PENDING, {"abort": True}, "discard_list"),
    (R.PROMOTED, {"abort": True}, "rb_restore"),
    (R.ROLLING_BACK, {"abort": True}, "rb_restart"),
    ("", {"sweep_orphans": True, "_users": [user(days=60)]}, "sweep_list"),
], ids=["fresh", "resume-creating", "resume-pending", "resume-promoted", "resume-rolling-back", "abort-creating",
        "abort-pending", "abort-promoted", "abort-rolling-back", "sweep"])
def test_lock_taken_routes_by_phase(phase, over, step):
    over = dict(over)
    users = over.pop("_users", None)
    run, tokens, cluster = decided(phase, users=users, **over)
    run = write(run, "lock", tokens, cluster)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == (step, "")
    assert svc["ann"][R.LOCK_HOLDER] == RUN_ID and svc["rv"] == "101"
    if not phase:
        assert svc["new_name"] == (NEW_NAME if svc["action"] == "rotate" else "")
    else:
        assert svc["new_name"] == EARLIER_NAME and svc["old_id"] == OLD_ID
    if phase == R.PROMOTED and over.get("abort"):
        assert svc["error"] == f"aborted by the operator ({V}abort)"


@pytest.mark.parametrize(("fault", "status", "parts"), [
    (CONFLICT, "skipped", ["another run took the rotation lock at the same moment"]),
    (FORBIDDEN, "failed", ['Secret shop/api could not be written (secrets "api" is forbidden: User',
                           "check that the identity may patch it."]),
], ids=["conflict", "forbidden"])
def test_lock_refused(fault, status, parts):
    run, tokens, cluster = decided()
    cluster.faults["api"] = fault
    svc = svc_of(write(run, "lock", tokens, cluster))
    assert (svc["step"], svc["status"]) == ("done", status)
    for part in parts:
        assert part in svc["message"]


def test_lock_with_a_stale_resource_version_is_a_conflict():
    run, tokens, cluster = decided()
    cluster.secret()["metadata"]["resourceVersion"] = "105"  # someone wrote in between
    svc = svc_of(write(run, "lock", tokens, cluster))
    assert (svc["step"], svc["status"]) == ("done", "skipped")


def test_lock_of_several_services_in_one_call_each_gets_its_answer():
    inp2, read2, _ = scenario(secret="web", deployments=["api"])
    read2["secret"] = secret_obj(name="web")
    inp1, read1, _ = scenario()
    cluster = Cluster(read1["secret"], read2["secret"])
    cluster.faults["web"] = CONFLICT
    run = R.start({"h1": inp1, "h2": inp2}, RUN_ID)
    run, tokens = R.inspect(run, {"h1": read1, "h2": read2}, NOW)
    run = R.decide(run, [user(days=1)], {}, NOW)
    run = R.inspect_more(run, {"h1": read1, "h2": read2})
    calls = R.writes(run, "lock", tokens, NOW)
    assert len(calls) == 1 and calls[0]["hosts"] == ["h1", "h2"]
    run = write(run, "lock", tokens, cluster)
    assert svc_of(run, "h1")["step"] == "create"
    assert (svc_of(run, "h2")["step"], svc_of(run, "h2")["status"]) == ("done", "skipped")


def test_lock_without_any_answer_fails():
    run, tokens, _ = decided()
    calls = R.writes(run, "lock", tokens, NOW)
    svc = svc_of(R.fold_write(run, "lock", calls, [{"failed": True, "msg": "kubernetes.core is not installed"}], NOW))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert "could not be written (kubernetes.core is not installed)" in svc["message"]


def at_store(**over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = decided(**over)
    run = write(run, "lock", tokens, cluster)
    run, created = R.fold_create(run, {"results": [created_item()]})
    tokens["h1"]["pending"] = created["h1"]
    return run, tokens, cluster


def created_item(name: str = NEW_NAME, ident: str = NEW_ID, token: str | None = NEW_TOKEN) -> dict:
    item: dict[str, Any] = {"name": name, "changed": True, "failed": False, "msg": f"created system user {name}",
                            "system_user": {"id": ident, "name": name, "active": True, "days_remaining": 90}}
    if token:
        item.update(token=token, token_fingerprint=R.fingerprint(token))
    return item


def test_store_writes_the_pending_and_previous_tokens_to_the_companion_and_goes_on_to_verify():
    run, tokens, cluster = at_store()
    calls = R.writes(run, "store", tokens, NOW)
    (definition,) = calls[0]["definitions"]
    assert definition["metadata"]["name"] == "api-rotation" and "resourceVersion" not in definition["metadata"]
    assert definition["data"] == {R.PENDING_TOKEN: R.b64(NEW_TOKEN), R.PREVIOUS_TOKEN: R.b64(OLD_TOKEN)}
    ann = definition["metadata"]["annotations"]
    assert (ann[R.PENDING_NAME], ann[R.PENDING_ID], ann[R.PENDING_FP], ann[R.ROTATION_FOR]) == \
        (NEW_NAME, NEW_ID, NEW_FP, "api")
    svc = svc_of(write(run, "store", tokens, cluster))
    assert (svc["step"], svc["stored"]) == ("verify", True)
    assert svc["rv"] == "101"  # the companion's answer does not replace what the service's Secret said


@pytest.mark.parametrize("fault", [CONFLICT, FORBIDDEN], ids=["conflict", "forbidden"])
def test_store_refused_deactivates_the_new_credential_then_clears_as_aborted(fault):
    run, tokens, cluster = at_store()
    cluster.faults["api-rotation"] = fault
    svc = svc_of(write(run, "store", tokens, cluster))
    assert (svc["step"], svc["status"], svc["to_deactivate"], svc["clear"]) == \
        ("deactivate", "failed", [NEW_ID], "aborted")
    assert svc["message"].startswith("Could not store the new credential in Secret shop/api-rotation (")
    assert "may create and patch it (deploy/rbac.yml)" in svc["message"]
    assert R.deactivate_ids(run := write(run, "store", tokens, cluster), "deactivate") == [NEW_ID]
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": NEW_ID, "failed": False}]})
    assert svc_of(run)["step"] == "clear"
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert svc["message"].endswith("nothing was changed: the new credential was deactivated and the current one is "
                                   "untouched")
    assert cluster.secret()["data"]["token"] == R.b64(OLD_TOKEN)
    assert R.PHASE not in cluster.secret()["metadata"]["annotations"]


def at_promote() -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_store()
    run = write(run, "store", tokens, cluster)
    return R.fold_verify(run, {"results": [verified()]}), tokens, cluster


def verified(ident: str = NEW_ID, ok: bool = True, last_used: str | None = None) -> dict:
    return {"failed": not ok, "access_verified": ok, "token_fingerprint": NEW_FP,
            "system_user": {"id": ident, "last_used_at": last_used}, "msg": "" if ok else "HTTP 401: unauthorized"}


def test_promote_writes_the_new_token_into_the_service_secret():
    run, tokens, cluster = at_promote()
    (patch,) = R.writes(run, "promote", tokens, NOW + 10)[0]["definitions"]
    assert patch["data"] == {"token": R.b64(NEW_TOKEN), "id": R.b64(NEW_ID)}
    ann = patch["metadata"]["annotations"]
    assert ann[R.PHASE] == "promoted" and ann[R.CURRENT_ID] == NEW_ID and ann[R.PREVIOUS_ID] == OLD_ID
    assert ann[R.PREVIOUS_FP] == OLD_FP and ann[R.CURRENT_FP] == NEW_FP and ann[R.USED_BEFORE] == "never"
    assert ann[R.MARKER] == f"{NEW_ID}-20270115080010" and ann[R.PROMOTED_AT] == at(10)
    svc = svc_of(write(run, "promote", tokens, cluster, NOW + 10))
    assert (svc["step"], svc["phase"], svc["current_id"], svc["old_id"]) == ("restart", "promoted", NEW_ID, OLD_ID)


def test_promote_conflict_ends_failed_and_touches_nothing_more():
    run, tokens, cluster = at_promote()
    cluster.faults["api"] = CONFLICT
    svc = svc_of(write(run, "promote", tokens, cluster))
    assert (svc["step"], svc["status"], svc["to_deactivate"]) == ("done", "failed", [])
    assert svc["message"] == ("Secret shop/api was changed by someone else during the rotation (another run took over "
                              "a lapsed lock, or a manual edit); this run stops without touching it further, re-run to "
                              "resume from the state it records.")


def test_promote_refused_deactivates_the_new_credential():
    run, tokens, cluster = at_promote()
    cluster.faults["api"] = FORBIDDEN
    svc = svc_of(write(run, "promote", tokens, cluster))
    assert (svc["step"], svc["status"], svc["to_deactivate"], svc["clear"]) == \
        ("deactivate", "failed", [NEW_ID], "aborted")
    assert "could not be written" in svc["message"]


def at_rb_restore(cluster_phase: str = R.PROMOTED) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = decided(cluster_phase, abort=True)
    run = write(run, "lock", tokens, cluster)
    assert svc_of(run)["step"] == "rb_restore"
    return run, tokens, cluster


def test_rb_restore_written_goes_on_to_rb_restart():
    run, tokens, cluster = at_rb_restore()
    (patch,) = R.writes(run, "rb_restore", tokens, NOW)[0]["definitions"]
    assert patch["data"] == {"token": R.b64(PREV_TOKEN), "id": R.b64(OLD_ID)}
    ann = patch["metadata"]["annotations"]
    assert ann[R.PHASE] == "rolling-back" and ann[R.FAILED_ID] == NEW_ID and ann[R.CURRENT_ID] == OLD_ID
    assert ann[R.ROLLBACK_REASON] == f"aborted by the operator ({V}abort)"
    svc = svc_of(write(run, "rb_restore", tokens, cluster))
    assert (svc["step"], svc["phase"]) == ("rb_restart", "rolling-back")


@pytest.mark.parametrize("fault", [CONFLICT, FORBIDDEN], ids=["conflict", "forbidden"])
def test_rb_restore_refused_ends_failed_and_says_the_cleanup_failed(fault):
    run, tokens, cluster = at_rb_restore()
    cluster.faults["api"] = fault
    run = write(run, "rb_restore", tokens, cluster)
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["cleanup_failed"]) == ("done", "failed", True)
    svc = svc_of(R.conclude_all(run))
    assert "the cleanup failed too; the Secret records phase promoted" in svc["message"]
    assert f"{V}abort: true" in svc["message"]


def at_clear() -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_promote()
    run = write(run, "promote", tokens, cluster)
    svc_of(run).update(step="clear", clear="rotated")
    return run, tokens, cluster


def test_clear_nulls_the_state_records_the_rotation_and_empties_the_companion():
    run, tokens, cluster = at_clear()
    calls = R.writes(run, "clear", tokens, NOW + 600)
    main, comp = calls[0]["definitions"]
    ann = main["metadata"]["annotations"]
    assert all(ann[k] is None for k in R.STATE_ANNOTATIONS)
    assert ann[R.LOCK_HOLDER] is None and ann[R.LOCK_EXPIRES] is None
    assert ann[R.LAST_ROTATION] == f"{OLD_ID} -> {NEW_ID}" and ann[R.LAST_ROTATED_AT] == at(600)
    assert comp["data"] == {R.PENDING_TOKEN: None, R.PREVIOUS_TOKEN: None}
    svc = svc_of(write(run, "clear", tokens, cluster, NOW + 600))
    assert (svc["step"], svc["status"]) == ("done", "rotated")
    assert cluster.secret("api-rotation")["data"] == {}
    assert not [k for k in cluster.secret()["metadata"]["annotations"] if k in R.STATE_ANNOTATIONS]


def test_a_companion_that_cannot_be_emptied_fails_and_says_what_to_do():
    run, tokens, cluster = at_clear()
    cluster.faults["api-rotation"] = FORBIDDEN
    svc = svc_of(write(run, "clear", tokens, cluster))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert svc["message"].startswith(f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days; but the companion "
                                     "could not be emptied (Secret shop/api-rotation: ")
    assert svc["message"].endswith("delete its keys by hand, or the next rotation overwrites them")
    assert not [k for k in cluster.secret()["metadata"]["annotations"] if k in R.STATE_ANNOTATIONS]


@pytest.mark.parametrize(("name", "fault"), [("api", CONFLICT), ("api", FORBIDDEN)],
                         ids=["secret-conflict", "secret-forbidden"])
def test_clear_refused_fails_and_a_rerun_clears_it(name, fault):
    run, tokens, cluster = at_clear()
    cluster.faults[name] = fault
    svc = svc_of(write(run, "clear", tokens, cluster))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert svc["message"].startswith(f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days; but the rotation "
                                     "state could not be cleared from Secret shop/api (")
    assert svc["message"].endswith("; a re-run clears it")


def test_writes_without_due_services_are_empty_and_unknown_steps_raise():
    run, tokens, _ = decided()
    assert R.writes(run, "promote", tokens, NOW) == []
    with pytest.raises(R.RotationError):
        R.writes(svc_run_at(run, "create"), "create", tokens, NOW)
    with pytest.raises(R.RotationError):
        R.due(run, "teleport")


def svc_run_at(run: dict, step: str) -> dict:
    run = copy.deepcopy(run)
    svc_of(run)["step"] = step
    return run


@pytest.mark.parametrize(("answer", "expected"), [
    ({"result": {"metadata": {"name": "a"}}}, 1),
    ({"result": {"results": [{"result": {"metadata": {}}}, {"error": {"reason": "Conflict"}}]}}, 2),
    ({"failed": True, "msg": "boom"}, 3),
    (None, 2),
], ids=["one", "several", "failed-module", "nothing"])
def test_answers_are_one_per_definition(answer, expected):
    assert len(R._answers(answer, expected)) == expected


# == the platform steps ===============================================================================

def at_create(**over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = decided(**over)
    return write(run, "lock", tokens, cluster), tokens, cluster


def test_create_requests_name_description_and_expiry():
    run, _, _ = at_create(expires_in_days=30)
    assert R.create_requests(run) == [{"name": NEW_NAME, "expires_in_days": 30,
                                       "description": "Managed by xapi.system_auth.credential_rotation for Secret "
                                                      "shop/api"}]


def test_create_answered_gives_the_token_and_goes_on_to_store():
    run, _, _ = at_create()
    run, new = R.fold_create(run, {"results": [created_item()], "changed": True})
    svc = svc_of(run)
    assert new == {"h1": NEW_TOKEN}
    assert (svc["step"], svc["new_id"], svc["new_fp"]) == ("store", NEW_ID, NEW_FP)
    assert_no_token(run)


@pytest.mark.parametrize(("answer", "step", "to_deactivate", "why"), [
    ({"results": [{"name": NEW_NAME, "changed": False, "failed": True, "msg": "HTTP 500: internal error"}]},
     "clear", [], "HTTP 500: internal error"),
    ({"results": [{"name": NEW_NAME, "changed": False, "failed": False, "msg": "already exists and is active",
                   "system_user": {"id": ORPHAN_ID, "name": NEW_NAME}}]},
     "deactivate", [ORPHAN_ID], "the API answered without a token: an active user of that name already existed"),
], ids=["refused", "already-existed"])
def test_create_failed(answer, step, to_deactivate, why):
    run, _, _ = at_create()
    run, new = R.fold_create(run, answer)
    svc = svc_of(run)
    assert new == {}
    assert (svc["step"], svc["status"], svc["to_deactivate"], svc["clear"]) == (step, "failed", to_deactivate,
                                                                                "aborted")
    assert svc["message"].startswith("Could not create a new system user")
    assert f"({why})" in svc["message"] and svc["message"].endswith("the current one is untouched.")


def test_a_user_that_already_existed_is_deactivated_and_the_run_says_so():
    run, tokens, cluster = at_create()
    run, _ = R.fold_create(run, {"results": [{"name": NEW_NAME, "changed": False, "failed": False, "msg": "exists",
                                               "system_user": {"id": ORPHAN_ID, "name": NEW_NAME}}]})
    assert R.deactivate_ids(run, "deactivate") == [ORPHAN_ID]
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": ORPHAN_ID, "failed": False}]})
    run = write(run, "clear", tokens, cluster)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert "an active user of that name already existed" in svc["message"]
    assert R.PHASE not in cluster.secret()["metadata"]["annotations"]


@pytest.mark.parametrize("answer", [{"failed": True, "msg": "timed out after 60 s"}, {"results": []}, {}],
                         ids=["module-failed", "no-item", "nothing"])
def test_a_lost_create_answer_keeps_the_name_so_a_rerun_finds_what_may_have_been_created(answer):
    run, tokens, cluster = at_create()
    run, new = R.fold_create(run, answer)
    svc = svc_of(run)
    assert new == {} and svc["status"] == "failed"
    run = R.fold_deactivate(run, "deactivate", {}) if svc["step"] == "deactivate" else run
    if svc_of(run)["step"] == "clear":
        run = write(run, "clear", tokens, cluster)
    ann = cluster.secret()["metadata"]["annotations"]
    # The platform may have created the user: the Secret must still record its name and phase.
    assert (ann.get(R.PHASE), ann.get(R.PENDING_NAME)) == ("creating", NEW_NAME)
    assert "no new credential was left active" not in svc_of(run)["message"]


def test_a_create_answer_without_a_token_is_a_failure():
    run, _, _ = at_create()
    run, new = R.fold_create(run, {"results": [created_item(token=None) | {"changed": True}]})
    assert new == {} and svc_of(run)["status"] == "failed"


def test_verify_requests_the_pending_tokens_with_the_longest_timeout():
    run, tokens, _ = at_store(verify_timeout=45)
    run = svc_run_at(run, "verify")
    assert R.verify_requests(run, tokens) == [NEW_TOKEN]
    assert R.verify_timeout(run) == 45
    assert R.verify_timeout(svc_run_at(run, "done")) == 1


@pytest.mark.parametrize(("item", "step", "parts"), [
    (verified(), "promote", []),
    (verified(last_used="2027-01-15T07:59:00Z"), "promote", []),
    (verified(ok=False), "deactivate", ["(HTTP 401: unauthorized)"]),
    (verified(ident=ORPHAN_ID), "deactivate", ["(access not verified)"]),
    (None, "deactivate", ["(access not verified)"]),
], ids=["verified", "verified-used-before", "refused", "other-user", "no-answer"])
def test_fold_verify(item, step, parts):
    run, tokens, cluster = at_store(verify_timeout=45)
    run = write(run, "store", tokens, cluster)
    run = R.fold_verify(run, {"results": [item] if item else []})
    svc = svc_of(run)
    assert svc["step"] == step
    if step == "promote":
        assert svc["used_before"] == (item["system_user"]["last_used_at"] or "never")
    else:
        assert (svc["status"], svc["to_deactivate"], svc["clear"]) == ("failed", [NEW_ID], "aborted")
        assert svc["message"].startswith(f"The new credential {NEW_ID} was not accepted by the API within 45 s")
        for part in parts:
            assert part in svc["message"]


def test_a_failed_verification_whose_cleanup_fails_does_not_claim_the_new_credential_was_deactivated():
    run, tokens, cluster = at_store()
    run = write(run, "store", tokens, cluster)
    run = R.fold_verify(run, {"results": [verified(ok=False)]})
    run = R.fold_deactivate(run, "deactivate", {"failed": True, "msg": "1 of 1 ids failed",
                                                "results": [{"id": NEW_ID, "failed": True, "msg": "HTTP 503"}]})
    assert svc_of(run)["step"] == "clear"
    svc = svc_of(write(run, "clear", tokens, cluster))
    assert svc["status"] == "failed"
    assert "the new credential was deactivated" not in svc["message"], svc["message"]
    assert f"the new credential {NEW_ID} could not be deactivated (HTTP 503); deactivate it by hand" in svc["message"]


# -- listing and deactivating --------------------------------------------------------------------------

def orphan_user(ident: str, name: str, description: str | None = "Managed by xapi.system_auth.credential_rotation "
                                                                   "for Secret shop/api", active: bool = True) -> dict:
    return {"id": ident, "name": name, "description": description, "active": active}


@pytest.mark.parametrize(("users", "found"), [
    ([orphan_user("su_a", "shop.api-20260101000000")], ["su_a"]),
    ([orphan_user("su_a", "shop.api-20260101000000-2")], ["su_a"]),
    ([orphan_user("su_a", "shop.api-20260101000000", description=None)], ["su_a"]),
    ([orphan_user("su_a", "shop.api-20260101000000", description="hand made")], []),
    ([orphan_user("su_a", "shop.api-2026010100000")], []),
    ([orphan_user("su_a", "shop.api-20260101000000x")], []),
    ([orphan_user("su_a", "shop.apix-20260101000000")], []),
    ([orphan_user("su_a", "shopXapi-20260101000000")], []),
    ([orphan_user("su_a", "shop.api-20260101000000", active=False)], []),
    ([orphan_user(OLD_ID, "shop.api-20260101000000"), orphan_user(NEW_ID, NEW_NAME)], []),
    ([orphan_user("su_a", "shop.api-20260101000000"), orphan_user("su_b", "shop.web-20260101000000")], ["su_a"]),
], ids=["pattern", "pattern-suffix", "no-description", "other-description", "13-digits", "trailing", "longer-prefix",
        "dot-is-literal", "inactive", "current-and-new-excluded", "other-service"])
def test_orphans(users, found):
    run, _, _ = at_create()
    svc = svc_of(run)
    svc["new_id"] = NEW_ID
    assert R.orphans(svc, users) == found


def test_discard_list_finds_the_lost_create_by_name():
    run, tokens, cluster = decided(R.CREATING)
    run = write(run, "lock", tokens, cluster)
    assert R.list_needed(run, "discard_list") and not R.list_needed(run, "sweep_list")
    listed = {"system_users": [orphan_user(ORPHAN_ID, EARLIER_NAME), orphan_user("su_x", EARLIER_NAME, active=False),
                               orphan_user(OLD_ID, EARLIER_NAME), orphan_user("su_y", "shop.api-20260101000000")]}
    run = R.fold_list(run, "discard_list", listed)
    svc = svc_of(run)
    assert (svc["step"], svc["to_deactivate"]) == ("discard", [ORPHAN_ID])
    assert R.deactivate_ids(run, "discard") == [ORPHAN_ID]
    run = R.fold_deactivate(run, "discard", {"results": [{"id": ORPHAN_ID, "failed": False}]})
    svc = svc_of(run)
    assert (svc["step"], svc["discarded"], svc["new_name"]) == ("create", [ORPHAN_ID], EARLIER_NAME)
    assert R.create_requests(run)[0]["name"] == EARLIER_NAME


def test_discard_list_refused_keeps_the_phase_and_releases_the_lock():
    run, tokens, cluster = decided(R.CREATING)
    run = write(run, "lock", tokens, cluster)
    svc = svc_of(R.fold_list(run, "discard_list", {"failed": True, "msg": "HTTP 503"}))
    assert (svc["step"], svc["status"], svc["clear"]) == ("clear", "failed", "release")
    assert svc["message"] == (f"Could not look for the system user {EARLIER_NAME} that an interrupted run may have "
                              "created (HTTP 503); the Secret still records phase creating and a re-run resumes there.")


def test_discard_refused_keeps_the_phase():
    run, tokens, cluster = decided(R.CREATING)
    run = write(run, "lock", tokens, cluster)
    run = R.fold_list(run, "discard_list", {"system_users": [orphan_user(ORPHAN_ID, EARLIER_NAME)]})
    run = R.fold_deactivate(run, "discard", {"failed": True, "results": [{"id": ORPHAN_ID, "failed": True,
                                                                          "msg": "HTTP 500"}]})
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["clear"]) == ("clear", "failed", "release")
    assert (f"Could not deactivate {ORPHAN_ID}, created by an interrupted run under the name {EARLIER_NAME} "
            "(HTTP 500)") in svc["message"]
    run = write(run, "clear", tokens, cluster)
    assert cluster.secret()["metadata"]["annotations"][R.PHASE] == "creating"
    assert R.LOCK_HOLDER not in cluster.secret()["metadata"]["annotations"]


@pytest.mark.parametrize("phase", [R.CREATING, R.PENDING])
def test_abort_before_the_promotion_discards_and_ends_aborted(phase):
    run, tokens, cluster = decided(phase, abort=True)
    run = write(run, "lock", tokens, cluster)
    run = R.fold_list(run, "discard_list", {"system_users": [orphan_user(NEW_ID, EARLIER_NAME)]})
    run = R.fold_deactivate(run, "discard", {"results": [{"id": NEW_ID, "failed": False}]})
    svc = svc_of(run)
    assert (svc["step"], svc["clear"]) == ("deactivate", "aborted")
    assert svc["to_deactivate"] == ([NEW_ID] if phase == R.PENDING else [])
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": NEW_ID, "failed": False}]})
    svc = svc_of(write(run, "clear", tokens, cluster))
    assert (svc["step"], svc["status"]) == ("done", "aborted")
    what = NEW_ID if phase == R.PENDING else EARLIER_NAME
    assert svc["message"] == (f"the interrupted rotation was discarded, the new credential {what} is inactive and "
                              "the current one untouched")


def at_sweep(**over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_clear()
    svc_of(run).update(step="sweep_list", clear="", **over)
    return run, tokens, cluster


def test_sweep_list_deactivates_the_old_credential_and_the_orphans():
    run, tokens, cluster = at_sweep()
    listed = {"system_users": [orphan_user(OLD_ID, "shop.api-20261017080000"), orphan_user(NEW_ID, NEW_NAME),
                               orphan_user(ORPHAN_ID, "shop.api-20261201000000")]}
    run = R.fold_list(run, "sweep_list", listed)
    svc = svc_of(run)
    # The old credential, made by the previous rotation, has the pattern's name: it is no orphan.
    assert svc["swept"] == [ORPHAN_ID]
    assert (svc["step"], R.deactivate_ids(run, "deactivate")) == ("deactivate", [OLD_ID, ORPHAN_ID])
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": OLD_ID}, {"id": ORPHAN_ID}]})
    svc = svc_of(run)
    assert (svc["step"], svc["clear"]) == ("clear", "rotated")
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert svc["message"] == (f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days, deactivated 1 orphaned "
                              f"credential(s): {ORPHAN_ID}")


def test_a_failed_orphan_listing_still_deactivates_the_old_credential():
    run, _, _ = at_sweep()
    run = R.fold_list(run, "sweep_list", {"failed": True, "msg": "the platform has no list route"})
    svc = svc_of(run)
    assert svc["step"] == "deactivate"
    assert svc["notes"] == ["the orphan sweep was skipped (the platform has no list route)"]
    assert R.deactivate_ids(run, "deactivate") == [OLD_ID]


def test_the_old_credential_that_cannot_be_deactivated_fails_the_rotation_and_releases():
    run, _, _ = at_sweep()
    run = R.fold_list(run, "sweep_list", {"system_users": []})
    run = R.fold_deactivate(run, "deactivate", {"failed": True, "msg": "1 of 1 failed",
                                                "results": [{"id": OLD_ID, "failed": True, "msg": "HTTP 500"}]})
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["clear"]) == ("clear", "failed", "release")
    assert svc["message"] == (f"Could not deactivate the old credential {OLD_ID} (HTTP 500); the new credential is "
                              "in place and a re-run finishes the rotation.")


def test_an_orphan_that_cannot_be_deactivated_is_a_note():
    run, tokens, cluster = at_sweep()
    run = R.fold_list(run, "sweep_list", {"system_users": [orphan_user(ORPHAN_ID, "shop.api-20261201000000")]})
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": OLD_ID, "failed": False},
                                                            {"id": ORPHAN_ID, "failed": True, "msg": "HTTP 500"}]})
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["clear"], svc["swept"]) == ("clear", "", "rotated", [])
    assert svc["notes"] == [f"could not deactivate orphaned credential(s) {ORPHAN_ID} (HTTP 500)"]
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert svc["status"] == "rotated"
    assert svc["message"].startswith(f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days")
    assert f"could not deactivate orphaned credential(s) {ORPHAN_ID} (HTTP 500)" in svc["message"]


def test_a_sweep_only_run_deactivates_orphans_but_never_the_current_credential():
    run, tokens, cluster = decided(users=[user(days=60)], sweep_orphans=True)
    run = write(run, "lock", tokens, cluster)
    run = R.fold_list(run, "sweep_list", {"system_users": [orphan_user(OLD_ID, "shop.api-20261017080000"),
                                                           orphan_user(ORPHAN_ID, "shop.api-20261201000000")]})
    assert R.deactivate_ids(run, "deactivate") == [ORPHAN_ID]
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": ORPHAN_ID, "failed": False}]})
    assert svc_of(run)["clear"] == "release"
    svc = svc_of(write(run, "clear", tokens, cluster))
    assert (svc["status"], svc["message"]) == ("not due", (f"60 days left, deactivated 1 orphaned credential(s): "
                                                          f"{ORPHAN_ID}"))


# == workloads ==========================================================================================

def at_restart(strategy: str = "restart", **over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_promote()
    svc_of(run)["cfg"]["strategy"] = strategy
    svc_of(run)["cfg"].update(over)
    run = write(run, "promote", tokens, cluster)
    return run, tokens, cluster


def test_restart_patches_the_marker_the_secret_records():
    run, _, cluster = at_restart()
    calls = R.restart_calls(run, "restart")
    (definition,) = calls[0]["definitions"]
    assert definition == {"apiVersion": "apps/v1", "kind": "Deployment",
                          "metadata": {"name": "api", "namespace": "shop"},
                          "spec": {"template": {"metadata": {"annotations": {R.ROTATED_AT:
                                                                             f"{NEW_ID}-20270115080000"}}}}}
    svc = svc_of(restart(run, "restart", cluster))
    assert svc["step"] == "wait"


def test_restart_of_a_reload_service_patches_nothing():
    run, _, _ = at_restart("reload")
    assert R.restart_calls(run, "restart") == []
    assert svc_of(R.fold_restart(run, "restart", [], []))["step"] == "wait"


def test_a_workload_gone_during_the_restart_routes_to_the_rollback_which_still_finishes():
    run, tokens, cluster = at_restart()
    del cluster.objects[("Deployment", "api")]
    run = restart(run, "restart", cluster)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == ("rb_restore", "failed")
    assert svc["message"] == "Could not restart Deployment shop/api: it no longer exists."
    run = R.route_rollbacks(run)
    run = write(run, "rb_restore", tokens, cluster)
    assert R.restart_calls(run, "rb_restart") == []  # the workload that is gone is not patched again
    run = R.fold_restart(run, "rb_restart", [], [])
    assert svc_of(run)["step"] == "rb_wait"
    assert R.wait_requests(run, "rb_wait")[0]["workloads"] == []


def test_a_workload_that_cannot_be_restarted_during_the_rollback_is_noted_and_the_rollback_finishes():
    run, tokens, cluster = at_rb_restore()
    run = write(run, "rb_restore", tokens, cluster)
    cluster.faults["api"] = ("Forbidden", 'deployments.apps "api" is forbidden', 403)
    run = restart(run, "rb_restart", cluster)
    svc = svc_of(run)
    assert svc["step"] == "rb_wait"
    assert svc["rollback_notes"] == ['could not restart Deployment shop/api: deployments.apps "api" is forbidden']


# -- readiness: the rules of kubectl rollout status ----------------------------------------------------

@pytest.mark.parametrize(("obj", "state", "why"), [
    (deployment(generation=3, observed=2), "progressing", "the controller has not observed the new template yet"),
    (deployment(conditions=[{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]),
     "failed", "it exceeded its progress deadline"),
    (deployment(replicas=3, updated=1, status_replicas=4), "progressing", "1 of 3 replicas updated"),
    (deployment(replicas=3, status_replicas=4), "progressing", "1 old replicas pending termination"),
    (deployment(replicas=3, available=2), "progressing", "2 of 3 updated replicas available"),
    (deployment(replicas=3), "complete", "3 replicas updated and available"),
    (deployment(replicas=0), "complete", "0 replicas updated and available"),
    (deployment(conditions=[{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]),
     "complete", "2 replicas updated and available"),
    (statefulset(ready=2), "progressing", "2 of 3 pods ready"),
    (statefulset(partition=1, updated=1, update_rev="db-3", current_rev="db-2"), "progressing",
     "1 of 2 new pods updated (partition 1)"),
    (statefulset(partition=1, updated=2, update_rev="db-3", current_rev="db-2"), "complete",
     "partitioned roll out complete: 2 new pods updated"),
    (statefulset(updated=1, update_rev="db-3", current_rev="db-2"), "progressing", "1 of 3 pods at the new revision"),
    (statefulset(), "complete", "3 pods at the new revision and ready"),
    (statefulset(strategy="OnDelete"), "failed", "its update strategy is OnDelete"),
    (statefulset(generation=2, observed=1), "progressing", "the controller has not observed the new template yet"),
    (daemonset(updated=3), "progressing", "3 of 4 pods updated"),
    (daemonset(available=3), "progressing", "3 of 4 updated pods available"),
    (daemonset(), "complete", "4 pods updated and available"),
    (daemonset(strategy="OnDelete"), "failed", "its update strategy is OnDelete"),
    (None, "failed", "it could not be read"),
    ({}, "failed", "it could not be read"),
], ids=["deploy-generation-lag", "deploy-deadline", "deploy-updated-below-wanted", "deploy-old-replicas",
        "deploy-available-below-updated", "deploy-complete", "deploy-scaled-to-zero", "deploy-progressing-condition",
        "sts-ready-below", "sts-partition-progressing", "sts-partition-complete", "sts-revision-differs",
        "sts-complete", "sts-ondelete", "sts-generation-lag", "ds-updated-below", "ds-available-below",
        "ds-complete", "ds-ondelete", "none", "empty"])
def test_rollout_state(obj, state, why):
    assert R.rollout_state(obj) == (state, why)


# -- stale pods ---------------------------------------------------------------------------------------

MARK = f"{NEW_ID}-20270115080000"
APP = {"app": "api"}


def restarted_svc() -> dict:
    run, _, _ = at_restart()
    return svc_of(run)


@pytest.mark.parametrize(("pods", "stale"), [
    ([pod("api-new", APP, MARK)], []),
    ([pod("api-old", APP, "")], ["api-old"]),
    ([pod("api-prev", APP, f"{OLD_ID}-20261017080000")], ["api-prev"]),
    ([pod("api-new", APP, MARK, deleting=True)], ["api-new"]),
    ([pod("api-old", APP, "", deleting=True, phase="Succeeded")], ["api-old"]),
    ([pod("job-env", {"job": "x"}, reads="env", created=-10)], ["job-env"]),
    ([pod("job-envfrom", {"job": "x"}, reads="envFrom", created=-10)], ["job-envfrom"]),
    ([pod("job-vol", {"job": "x"}, reads="volume", created=-10)], ["job-vol"]),
    ([pod("job-proj", {"job": "x"}, reads="projected", created=-10)], ["job-proj"]),
    ([pod("job-init", {"job": "x"}, reads="init", created=-10)], ["job-init"]),
    ([pod("job-late", {"job": "x"}, reads="env", created=30)], []),
    ([pod("job-now", {"job": "x"}, reads="env", created=0)], []),
    ([pod("job-late-ending", {"job": "x"}, reads="env", created=30, deleting=True)], ["job-late-ending"]),
    ([pod("job-done", {"job": "x"}, reads="env", created=-10, phase="Succeeded")], []),
    ([pod("job-failed", {"job": "x"}, reads="env", created=-10, phase="Failed")], []),
    ([pod("api-old-done", APP, "", phase="Succeeded")], []),
    ([pod("other", {"app": "web"}, reads=None, created=-10)], []),
    ([pod("other-secret", {"app": "web"}, reads="env", secret="web", created=-10)], []),
    ([pod("b", APP), pod("a", {"job": "x"}, reads="volume", created=-5), pod("c", APP, MARK)], ["a", "b"]),
], ids=["new-marker", "no-marker", "previous-marker", "terminating-new", "terminating-succeeded", "job-env",
        "job-envFrom", "job-volume", "job-projected", "job-init-container", "job-after-promotion",
        "job-at-promotion", "job-terminating", "job-succeeded", "job-failed", "owned-succeeded", "unrelated",
        "other-secret", "sorted"])
def test_stale_pods_forward(pods, stale):
    assert R.stale_pods(restarted_svc(), pods, MARK, NOW, rollback=False) == stale


def test_stale_pods_without_a_promotion_time_counts_every_reader():
    assert R.stale_pods(restarted_svc(), [pod("job", {"job": "x"}, reads="env", created=3600)], MARK, None) == ["job"]


@pytest.mark.parametrize(("pods", "stale"), [
    ([pod("api-failed", APP, MARK)], ["api-failed"]),
    ([pod("api-back", APP, f"rollback-{MARK}")], []),
    ([pod("api-old", APP, "")], []),
    ([pod("job-after", {"job": "x"}, reads="env", created=30)], ["job-after"]),
    ([pod("job-before", {"job": "x"}, reads="env", created=-30)], []),
    ([pod("job-done", {"job": "x"}, reads="env", created=30, phase="Succeeded")], []),
    ([pod("unrelated", {"app": "web"}, created=30)], []),
], ids=["failed-marker", "rollback-marker", "no-marker", "reader-after-promotion", "reader-before-promotion",
        "reader-succeeded", "unrelated"])
def test_stale_pods_rollback(pods, stale):
    assert R.stale_pods(restarted_svc(), pods, MARK, NOW, rollback=True) == stale


@pytest.mark.parametrize(("p", "reads"), [
    (pod("a", reads="env"), True), (pod("a", reads="envFrom"), True), (pod("a", reads="volume"), True),
    (pod("a", reads="projected"), True), (pod("a", reads="init"), True), (pod("a"), False),
    (pod("a", reads="env", secret="api-rotation"), False), ({}, False),
], ids=["env", "envFrom", "volume", "projected", "init", "none", "companion", "empty"])
def test_pod_reads_secret(p, reads):
    assert R.pod_reads_secret(p, "api") is reads


# -- judging one poll of a wait -------------------------------------------------------------------------

def wait_request(run: dict, step: str = "wait") -> dict:
    (request,) = R.wait_requests(run, step)
    return request


def test_wait_requests_carry_the_marker_and_the_timeouts():
    run, _, _ = at_restart(rollout_timeout=100, drain_timeout=50)
    run = svc_run_at(run, "wait")
    request = wait_request(run)
    assert (request["marker"], request["promoted_at"], request["rollback"]) == (MARK, at(0), False)
    assert (request["rollout_timeout"], request["drain_timeout"]) == (100, 50)
    assert request["workloads"] == [{"kind": "Deployment", "name": "api"}]


@pytest.mark.parametrize(("objects", "pods", "elapsed", "state", "phase", "why"), [
    ([deployment(updated=1)], [], 10, "waiting", "rollout", "Deployment shop/api (1 of 2 replicas updated)"),
    ([deployment(updated=1)], [], 100, "failed", "rollout",
     "the rollout of Deployment shop/api (1 of 2 replicas updated) did not complete within 100 s"),
    ([deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}])], [], 1, "failed",
     "rollout", "the rollout of Deployment shop/api failed: it exceeded its progress deadline"),
    ([deployment()], [pod("api-old", APP, "", deleting=True)], 10, "waiting", "drain",
     "pods holding the old token: api-old"),
    ([deployment()], [pod("api-old", APP, "", deleting=True)], 150, "failed", "drain", "api-old"),
    ([deployment()], [pod("api-old", APP, "", deleting=True)], 149, "waiting", "drain",
     "pods holding the old token: api-old"),
    ([deployment()], [pod("api-new", APP, MARK)], 10, "done", "drain",
     "every pod that reads the Secret holds the new token"),
], ids=["rollout-waiting", "rollout-timeout", "rollout-failed", "drain-waiting", "drain-timeout",
        "drain-just-before-timeout", "done"])
def test_judge_workloads(objects, pods, elapsed, state, phase, why):
    run, _, _ = at_restart(rollout_timeout=100, drain_timeout=50)
    run = svc_run_at(run, "wait")
    verdict = R.judge_workloads(wait_request(run), svc_of(run), objects, pods, NOW + elapsed, NOW)
    sentence = verdict.pop("sentence", None)
    waited_for = verdict.pop("pods", None)
    assert verdict == {"state": state, "phase": phase, "why": why}
    # A drain names the pods it waits for, which the wait watches (and nothing else does).
    assert waited_for == (["api-old"] if (state, phase) == ("waiting", "drain") else None)
    if state == "failed" and phase == "rollout":
        # The failure's sentence for the summary is the same, as a sentence.
        assert sentence == why[0].upper() + why[1:] + "."


@pytest.mark.parametrize(("elapsed", "state", "why"), [
    (100, "waiting", "290 s left of the reload window"),
    (389, "waiting", "1 s left of the reload window"),
    (390, "done", "the reload window has passed"),
], ids=["early", "last-second", "passed"])
def test_judge_workloads_reload_window(elapsed, state, why):
    run, _, _ = at_restart("reload", reload_window=390)
    run = svc_run_at(run, "wait")
    verdict = R.judge_workloads(wait_request(run), svc_of(run), [], [], NOW + elapsed, NOW + 5)
    assert verdict == {"state": state, "phase": "reload", "why": why}


def test_the_reload_window_is_reload_interval_plus_kubelet_sync_delay():
    svc = svc_of(R.start({"h1": inputs(strategy="reload", reload_interval=120, kubelet_sync_delay=30)}, RUN_ID))
    assert svc["cfg"]["reload_window"] == 150


# -- folding the waits -----------------------------------------------------------------------------------

def at_wait(**over: Any) -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_restart(**over)
    return svc_run_at(run, "wait"), tokens, cluster


@pytest.mark.parametrize(("verdict", "step", "status", "clear", "message"), [
    ({"state": "done", "phase": "drain", "why": "ok"}, "usage", "", "", ""),
    ({"state": "failed", "phase": "rollout", "why": "the rollout of Deployment shop/api failed: it exceeded its "
                                                    "progress deadline"},
     "rb_restore", "failed", "", "The rollout of Deployment shop/api failed: it exceeded its progress deadline."),
    ({"state": "failed", "phase": "drain", "why": "api-old"}, "clear", "failed", "release",
     (f"Pods started before the restart (api-old) were still running or terminating after 50 s, so the old "
     f"credential {OLD_ID} stays active; the new credential is in place and a re-run finishes the rotation.")),
    ({"state": "failed", "phase": "lock", "why": "conflict", "conflict": True}, "done", "failed", "",
     "Secret shop/api was changed by someone else"),
    (None, "rb_restore", "failed", "", "The wait gave no answer."),
], ids=["done", "rollout-failed", "drain-timeout", "lock-conflict", "no-answer"])
def test_fold_wait(verdict, step, status, clear, message):
    run, _, _ = at_wait(drain_timeout=50)
    run = R.fold_wait(run, "wait", {"h1": verdict} if verdict else {})
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["clear"]) == (step, status, clear)
    assert svc["message"].startswith(message)


def test_fold_wait_keeps_the_renewed_resource_version_and_the_notes():
    run, _, _ = at_wait()
    svc = svc_of(R.fold_wait(run, "wait", {"h1": {"state": "done", "phase": "drain", "why": "", "rv": "999",
                                                  "notes": ["a note"]}}))
    assert (svc["rv"], svc["notes"]) == ("999", ["a note"])


def at_rb_wait() -> tuple[dict, dict, Cluster]:
    run, tokens, cluster = at_rb_restore()
    run = write(run, "rb_restore", tokens, cluster)
    run = restart(run, "rb_restart", cluster)
    return run, tokens, cluster


def test_fold_rb_wait_done_deactivates_the_failed_credential():
    run, _, _ = at_rb_wait()
    svc = svc_of(R.fold_wait(run, "rb_wait", {"h1": {"state": "done", "phase": "drain", "why": ""}}))
    assert (svc["step"], svc["to_deactivate"], svc["clear"]) == ("deactivate", [NEW_ID], "rolled_back")


def test_fold_rb_wait_rollout_failure_is_noted_and_the_rollback_finishes():
    run, _, _ = at_rb_wait()
    verdict = {"state": "failed", "phase": "rollout", "why": "the rollout of Deployment shop/api failed: it exceeded "
                                                             "its progress deadline"}
    svc = svc_of(R.fold_wait(run, "rb_wait", {"h1": verdict}))
    assert (svc["step"], svc["clear"]) == ("deactivate", "rolled_back")
    assert svc["rollback_notes"] == [("the rollback rollout of Deployment shop/api failed: it exceeded its progress "
                                     "deadline")]


def test_fold_rb_wait_drain_timeout_keeps_the_new_credential_active():
    run, tokens, cluster = at_rb_wait()
    run = R.fold_wait(run, "rb_wait", {"h1": {"state": "failed", "phase": "drain", "why": "api-7f9c"}})
    svc = svc_of(run)
    assert (svc["step"], svc["status"], svc["clear"], svc["to_deactivate"]) == ("clear", "failed", "release", [])
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert svc["message"] == (f"aborted by the operator ({V}abort); the Secret holds the previous credential {OLD_ID} "
                              f"again (still active), but pods api-7f9c still hold the new credential {NEW_ID} after "
                              "300 s, so it stays active; a re-run finishes the rollback")
    assert cluster.secret()["metadata"]["annotations"][R.PHASE] == "rolling-back"


@pytest.mark.parametrize(("verify_usage", "verdict", "step", "status", "note"), [
    (True, {"state": "done", "why": "the platform saw the new credential in use"}, "health", "", None),
    (True, {"state": "skipped", "why": "the platform does not report when a credential was last used"}, "health", "",
     "the platform does not report when a credential was last used"),
    (True, {"state": "failed", "why": "not used"}, "rb_restore", "failed", None),
    (True, None, "rb_restore", "failed", None),
    (False, None, "health", "", None),
    (True, {"state": "failed", "why": "conflict", "conflict": True}, "done", "failed", None),
], ids=["used", "no-last-used-at", "unused", "no-answer", "disabled", "conflict"])
def test_fold_usage(verify_usage, verdict, step, status, note):
    run, _, _ = at_restart(verify_usage=verify_usage, usage_timeout=120)
    run = svc_run_at(run, "usage")
    assert R.usage_ids(run) == ([NEW_ID] if verify_usage else [])
    svc = svc_of(R.fold_usage(run, {"h1": verdict} if verdict else {}))
    assert (svc["step"], svc["status"]) == (step, status)
    if note:
        assert svc["notes"] == [note]
    if step == "rb_restore":
        assert svc["message"] == (f"The platform saw no request with the new credential {NEW_ID} within 120 s after "
                                  f"the restart, so the workloads may still use the old one (set {V}verify_usage: "
                                  "false for services that call the API rarely).")


@pytest.mark.parametrize(("last_used", "used_before", "unused"), [
    (None, "never", True), ("", "never", True), ("2027-01-15T08:01:00Z", "never", False),
    ("2027-01-15T07:00:00Z", "2027-01-15T07:00:00Z", True), ("2027-01-15T08:01:00Z", "2027-01-15T07:00:00Z", False),
], ids=["never-used", "empty", "used", "unchanged", "used-again"])
def test_usage_unused(last_used, used_before, unused):
    svc = {"ann": {R.USED_BEFORE: used_before}}
    assert R.usage_unused(svc, {"last_used_at": last_used}) is unused


@pytest.mark.parametrize(("url", "verdict", "step", "message"), [
    ("", None, "sweep_list", ""),
    ("https://api.shop/healthz", {"state": "done", "status": 200}, "sweep_list", ""),
    ("https://api.shop/healthz", {"state": "failed", "status": 503}, "rb_restore",
     "The service's health URL did not answer 200 or 204 within 30 s after the restart (last answer: HTTP 503)."),
    ("https://api.shop/healthz", {"state": "failed", "status": -1}, "rb_restore",
     "The service's health URL did not answer 200 or 204 within 30 s after the restart (no answer)."),
    ("https://api.shop/healthz", None, "rb_restore",
     "The service's health URL did not answer 200 or 204 within 30 s after the restart (no answer)."),
], ids=["no-url", "healthy", "unhealthy", "unreachable", "no-answer"])
def test_fold_health(url, verdict, step, message):
    run, _, _ = at_restart(health_url=url, health_status=[200, 204], health_timeout=30)
    run = svc_run_at(run, "health")
    assert [r["url"] for r in R.health_requests(run)] == ([url] if url else [])
    svc = svc_of(R.fold_health(run, {"h1": verdict} if verdict else {}))
    assert (svc["step"], svc["message"]) == (step, message)


def test_route_rollbacks_keeps_the_new_credential_when_the_previous_one_is_inactive():
    run, tokens, cluster = decided(R.PROMOTED, users=[user(NEW_ID, days=90), user(OLD_ID, days=1, active=False)])
    run = write(run, "lock", tokens, cluster)
    run = R.fold_restart(run, "restart", [], [])
    run = R.fold_wait(run, "wait", {"h1": {"state": "failed", "phase": "rollout", "why": "the rollout failed"}})
    assert svc_of(run)["step"] == "rb_restore"
    run = R.route_rollbacks(run)
    svc = svc_of(run)
    assert (svc["step"], svc["clear"], svc["kept"]) == ("clear", "release", True)
    assert svc["message"] == (f"The rollout failed; not rolled back, because the previous credential {OLD_ID} is no "
                              f"longer active (an earlier run had deactivated it); the new credential {NEW_ID} stays "
                              "in the Secret and a re-run finishes the rotation")
    assert R.writes(run, "rb_restore", tokens, NOW) == []
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert svc["status"] == "failed" and svc["message"].endswith("a re-run finishes the rotation")
    assert cluster.secret()["data"]["token"] == R.b64(NEW_TOKEN)


def test_route_rollbacks_rolls_back_when_the_previous_credential_is_active():
    run, _, _ = decided(R.PROMOTED, users=[user(NEW_ID, days=90), user(OLD_ID, days=1)])
    run = svc_run_at(run, "rb_restore")
    assert svc_of(R.route_rollbacks(run))["step"] == "rb_restore"


# == preview and reports ===================================================================================

def previewed(phase: str = "", **over: Any) -> tuple[dict, list]:
    run, _, _ = decided(phase, check_mode=True, **over)
    return R.preview(run, NOW)


@pytest.mark.parametrize(("phase", "over", "status", "parts"), [
    ("", {}, "would rotate", ["3 days left (threshold 7)", f"would create system user {NEW_NAME} (expires in 90 days)",
                              "write Secret shop/api (keys token, id and xapi.io/* annotations)",
                              "Secret shop/api-rotation (pending and previous token)",
                              f"restart Deployment shop/api, then deactivate {OLD_ID}"]),
    ("", {"force": True, "_users": [user(days=60)]}, "would rotate", ["60 days left (threshold 7, forced)"]),
    ("", {"strategy": "reload", "deployments": []}, "would rotate", ["wait 390 s for the pods to reload it"]),
    (R.CREATING, {}, "would resume", [f"records an interrupted rotation in phase creating (started {at(-3600)})",
                                      f"deactivate any user named {EARLIER_NAME} whose token was lost"]),
    (R.PENDING, {}, "would resume", [f"verify and promote {NEW_ID}, restart Deployment shop/api"]),
    (R.PROMOTED, {}, "would resume", [f"restart Deployment shop/api, verify, then deactivate {OLD_ID}"]),
    (R.ROLLING_BACK, {}, "would resume", [f"finish the rollback and deactivate {NEW_ID}"]),
    (R.PROMOTED, {"abort": True}, "would abort", [("would abort the rotation in phase promoted recorded in Secret "
                                                  f"shop/api and deactivate {NEW_ID}")]),
    ("", {"sweep_orphans": True, "_users": [user(days=60)]}, "would sweep orphans",
     ["60 days left; would deactivate orphaned credentials named shop.api-*"]),
], ids=["rotate", "forced", "reload", "resume-creating", "resume-pending", "resume-promoted", "resume-rolling-back",
        "abort", "sweep"])
def test_preview_messages(phase, over, status, parts):
    over = dict(over)
    users = over.pop("_users", None)
    run, diffs = previewed(phase, users=users, **over)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == ("done", status)
    for part in parts:
        assert part in svc["message"]
    assert_no_token(run, diffs, R.summary_lines(run), R.outcomes(run))


def test_preview_mentions_a_lock_another_run_holds():
    run, _ = previewed(read_over={"secret": secret_obj(ann={R.LOCK_HOLDER: OTHER_RUN, R.LOCK_EXPIRES: at(30)})})
    assert svc_of(run)["message"].endswith(f"; another run holds the rotation lock ({OTHER_RUN}), a real run would "
                                           "wait up to 90 s for it first")


def test_preview_diffs_show_every_object_and_no_token():
    run, diffs = previewed(read_over={"companion": companion_obj(previous=PREV_TOKEN)})
    headers = [d["before_header"] for d in diffs]
    assert headers == [f"system user {NEW_NAME}", "Secret shop/api", "Secret shop/api-rotation", "Deployment shop/api",
                       f"system user {OLD_ID}"]
    assert 'token: "(masked)"' in diffs[0]["after"]
    assert 'token: "(masked: the new token)"' in diffs[1]["after"]
    assert f'xapi.io/last-rotation: "{OLD_ID} -> (new id)"' in diffs[1]["after"]
    assert diffs[4]["after"] == "active: false\n"
    assert_no_token(run, diffs)


def test_a_check_mode_run_changes_nothing():
    run, _, _ = decided(check_mode=True)
    run, _ = R.preview(run, NOW)
    for step in ("lock", "store", "promote", "rb_restore", "clear"):
        assert R.writes(run, step, {}, NOW) == []
    assert R.restart_calls(run, "restart") == [] and R.create_requests(run) == []


def reported_run() -> dict:
    """Four services: rotated, not due, failed at the read, skipped."""
    _, good, _ = scenario()
    run = R.start({"h1": inputs(audit_log="/var/log/xapi/rotation.jsonl"),
                   "h2": inputs(secret="web", audit_log="/var/log/xapi/rotation.jsonl"),
                   "h3": inputs(secret="gone", audit_log="/var/log/xapi/rotation.jsonl"),
                   "h4": inputs(secret="bad", expires_in_days=0)}, RUN_ID)
    web = copy.deepcopy(good)
    web["secret"]["metadata"]["name"] = "web"
    run, _ = R.inspect(run, {"h1": good, "h2": web, "h3": {"secret": None}}, NOW)
    run = R.decide(run, [user(days=30)], {}, NOW)
    h1 = svc_of(run, "h1")
    h1.update(step="done", status="rotated", action="rotate", old_id=OLD_ID, current_id=NEW_ID, new_id=NEW_ID,
              new_fp=NEW_FP, message=f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days")
    return R.conclude_all(run)


def test_summary_lines_outcomes_and_stats():
    run = reported_run()
    assert R.summary_lines(run) == [
        f"shop/api: rotated ({OLD_ID} -> {NEW_ID}, new credential expires in 90 days)",
        "shop/web: not due (30 days left)",
        ("shop/gone: failed (Secret shop/gone does not exist; check credential_rotation_namespace and "
        "credential_rotation_secret_name (the rotation updates the Secret that already holds the service's current "
        "token, it never creates it).)"),
        f"shop/bad: failed ({V}expires_in_days is 0; set it between 1 and 365.)",
    ]
    out = R.outcomes(run)
    assert out["h1"] == {"service": "shop/api", "host": "h1", "namespace": "shop", "secret": "api", "status": "rotated",
                         "message": f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days", "days_remaining": 30,
                         "credential_id": NEW_ID, "check_mode": False}
    assert out["h3"]["status"] == "failed" and out["h3"]["credential_id"] == ""
    assert set(R.stats(run)) == {"shop/api", "shop/web", "shop/gone", "shop/bad"}
    assert R.stats(run)["shop/web"]["status"] == "not due"


def test_audit_records_hold_ids_and_fingerprints_only():
    run = reported_run()
    records = R.audit_records(run, NOW)
    assert list(records) == ["/var/log/xapi/rotation.jsonl"]
    lines = [json.loads(line) for line in records["/var/log/xapi/rotation.jsonl"]]
    assert [r["service"] for r in lines] == ["shop/api"]  # not due and failed-before-any-action are not recorded
    assert lines[0] == {"time": at(0), "service": "shop/api", "namespace": "shop", "secret": "api", "run": RUN_ID,
                        "event": "rotated", "message": f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days",
                        "old_id": OLD_ID, "new_id": NEW_ID, "new_fingerprint": NEW_FP}
    assert_no_token(records)


def test_fold_audit_fails_a_service_whose_record_was_not_written():
    run = R.fold_audit(reported_run(), [{"rc": 1, "stderr": "Permission denied\n",
                                         "item": {"key": "/var/log/xapi/rotation.jsonl"}}])
    svc = svc_of(run)
    assert svc["status"] == "failed"
    assert svc["message"].endswith("; it was rotated, but its audit record could not be written to "
                                   "/var/log/xapi/rotation.jsonl (Permission denied)")
    assert svc_of(run, "h2")["status"] == "not due"


def test_notify_hosts_are_the_failed_services_with_a_webhook():
    run = R.start({"h1": inputs(failure_webhook_url="https://hooks.example/x"), "h2": inputs(secret="web")}, RUN_ID)
    run, _ = R.inspect(run, {}, NOW)
    assert R.notify_hosts(run) == ["h1"]


def test_expiry_lines():
    run, _ = R.inspect(R.start({"h1": inputs(), "h2": inputs(secret="web"), "h3": inputs(secret="gone"),
                                "h4": inputs(secret="mid")}, RUN_ID, True),
                       {"h1": scenario()[1], "h2": scenario()[1], "h3": {"secret": None},
                        "h4": scenario(R.PROMOTED)[1] | {"companion": None}}, NOW)
    for host in ("h2",):
        svc_of(run, host)["current_id"] = "su_web"
    run = R.decide(run, [user(days=5), user("su_web", days=40), user(NEW_ID, days=80)], {}, NOW)
    lines = R.expiry_lines(run)
    assert lines["h1"] == {"days_remaining": 5, "credential_id": OLD_ID, "due": True,
                           "line": f"shop/api: {OLD_ID}, 5 days left (rotate now: at or under the threshold of 7 "
                                   "days)", "advice": "; run xapi.system_auth.rotate (playbooks/rotate.yml) for it"}
    assert lines["h2"] == {"days_remaining": 40, "credential_id": "su_web", "due": False,
                           "line": "shop/web: su_web, 40 days left", "advice": ""}
    assert lines["h3"]["due"] is True and lines["h3"]["line"].startswith("shop/gone: Secret shop/gone does not exist")
    assert lines["h3"]["advice"] == ""  # rotating cannot help a Secret that cannot be read
    assert lines["h4"]["line"] == f"shop/mid: {NEW_ID}, 80 days left; its Secret records a rotation in phase promoted"


def test_conclude_all():
    run, _, _ = at_restart()
    run = copy.deepcopy(run)
    svc_of(run)["notes"].append("waited 12 s for another run's lock")
    stuck = svc_of(R.conclude_all(run))
    assert (stuck["step"], stuck["status"]) == ("done", "failed")
    assert stuck["message"].startswith("it stopped before the step restart (this is a bug; please report it)")
    assert stuck["message"].endswith("waited 12 s for another run's lock")
    svc_of(run).update(step="done", status="not due", message="30 days left")
    noted = svc_of(R.conclude_all(run))["message"]
    assert noted.startswith("30 days left") and noted.endswith("waited 12 s for another run's lock")
    svc_of(run).update(message="30 days left; waited 12 s for another run's lock")
    assert svc_of(R.conclude_all(run))["message"] == "30 days left; waited 12 s for another run's lock"


# == full paths ==============================================================================================

def test_full_path_a_rotation_through_every_step():
    inp, read, cluster = scenario(health_url="https://api.shop/healthz", audit_log="/var/log/rotation.jsonl")
    read["companion"] = None
    seen: list[Any] = []
    run = R.start({"h1": inp}, RUN_ID)
    assert svc_of(run)["step"] == "read"
    run, tokens = R.inspect(run, {"h1": read}, NOW)
    seen.append(run)
    assert svc_of(run)["step"] == "lookup" and R.lookup_ids(run) == [OLD_ID]

    run = R.decide(run, [user(days=4)], {}, NOW)
    assert svc_of(run)["step"] == "check"
    run = R.inspect_more(run, {"h1": read})
    assert svc_of(run)["step"] == "lock"
    run = write(run, "lock", tokens, cluster)
    seen.append(run)
    assert svc_of(run)["step"] == "create" and cluster.secret()["metadata"]["annotations"][R.PENDING_NAME] == NEW_NAME

    run, created = R.fold_create(run, {"results": [created_item()]})
    tokens["h1"]["pending"] = created["h1"]
    assert svc_of(run)["step"] == "store"
    run = write(run, "store", tokens, cluster, NOW + 1)
    assert svc_of(run)["step"] == "verify"
    assert R.unb64(cluster.secret("api-rotation")["data"][R.PENDING_TOKEN]) == NEW_TOKEN

    assert R.verify_requests(run, tokens) == [NEW_TOKEN]
    run = R.fold_verify(run, {"results": [verified()]})
    assert svc_of(run)["step"] == "promote"
    run = write(run, "promote", tokens, cluster, NOW + 2)
    seen.append(run)
    assert svc_of(run)["step"] == "restart"
    assert cluster.secret()["data"] == {"token": R.b64(NEW_TOKEN), "id": R.b64(NEW_ID)}

    run = restart(run, "restart", cluster)
    assert svc_of(run)["step"] == "wait"
    dep = cluster.objects[("Deployment", "api")]
    marker = dep["spec"]["template"]["metadata"]["annotations"][R.ROTATED_AT]
    assert marker == f"{NEW_ID}-20270115080002"
    dep["status"]["observedGeneration"] = dep["metadata"]["generation"]
    request = wait_request(run)
    pods = [pod("api-1", APP, marker, created=5), pod("api-old", APP, f"{OLD_ID}-x", deleting=True)]
    verdict = R.judge_workloads(request, svc_of(run), [dep], pods, NOW + 10, NOW + 3)
    assert (verdict["state"], verdict["phase"]) == ("waiting", "drain")
    verdict = R.judge_workloads(request, svc_of(run), [dep], pods[:1], NOW + 20, NOW + 3)
    run = R.fold_wait(run, "wait", {"h1": verdict})
    assert svc_of(run)["step"] == "usage"

    assert R.usage_ids(run) == [NEW_ID]
    assert not R.usage_unused(svc_of(run), {"last_used_at": at(21)})
    run = R.fold_usage(run, {"h1": {"state": "done", "why": "the platform saw the new credential in use"}})
    assert svc_of(run)["step"] == "health"
    run = R.fold_health(run, {"h1": {"state": "done", "status": 200, "why": "HTTP 200"}})
    assert svc_of(run)["step"] == "sweep_list"

    # the first rotation of a credential made by hand (the orphan sweep's own tests are above)
    run = R.fold_list(run, "sweep_list", {"system_users": [orphan_user(OLD_ID, "shop-api-by-hand", description=None),
                                                           orphan_user(NEW_ID, NEW_NAME)]})
    assert R.deactivate_ids(run, "deactivate") == [OLD_ID]
    run = R.fold_deactivate(run, "deactivate", {"changed": True, "results": [{"id": OLD_ID, "failed": False}]})
    assert svc_of(run)["step"] == "clear"
    run = write(run, "clear", tokens, cluster, NOW + 30)
    run = R.conclude_all(run)
    seen.append(run)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == ("done", "rotated")
    assert R.summary_lines(run) == [f"shop/api: rotated ({OLD_ID} -> {NEW_ID}, new credential expires in 90 days)"]
    assert R.outcomes(run)["h1"]["credential_id"] == NEW_ID
    ann = cluster.secret()["metadata"]["annotations"]
    assert ann == {R.LAST_ROTATED_AT: at(30), R.LAST_ROTATION: f"{OLD_ID} -> {NEW_ID}"}
    assert cluster.secret("api-rotation")["data"] == {}
    audit = R.audit_records(run, NOW + 30)
    assert json.loads(audit["/var/log/rotation.jsonl"][0])["new_fingerprint"] == NEW_FP
    assert_no_token(seen, R.summary_lines(run), R.outcomes(run), R.stats(run), audit, R.expiry_lines(run))


def test_full_path_a_rollback_restores_the_previous_token_and_deactivates_the_new_one():
    inp, read, cluster = scenario(audit_log="/var/log/rotation.jsonl")
    read["companion"] = None
    run = R.start({"h1": inp}, RUN_ID)
    run, tokens = R.inspect(run, {"h1": read}, NOW)
    run = R.decide(run, [user(days=4)], {}, NOW)
    run = R.inspect_more(run, {"h1": read})
    run = write(run, "lock", tokens, cluster)
    run, created = R.fold_create(run, {"results": [created_item()]})
    tokens["h1"]["pending"] = created["h1"]
    run = write(run, "store", tokens, cluster)
    run = R.fold_verify(run, {"results": [verified()]})
    run = write(run, "promote", tokens, cluster, NOW + 60)
    run = restart(run, "restart", cluster)
    run = R.fold_wait(run, "wait", {"h1": {"state": "failed", "phase": "rollout",
                                           "why": "the rollout of Deployment shop/api failed: it exceeded its progress "
                                                  "deadline"}})
    assert svc_of(run)["step"] == "rb_restore"
    run = R.route_rollbacks(run)
    assert svc_of(run)["step"] == "rb_restore"

    run = write(run, "rb_restore", tokens, cluster, NOW + 600)
    assert svc_of(run)["step"] == "rb_restart"
    restored = dict(cluster.secret()["data"])
    ann = cluster.secret()["metadata"]["annotations"]
    assert ann[R.FAILED_ID] == NEW_ID and ann[R.CURRENT_ID] == OLD_ID

    run = restart(run, "rb_restart", cluster)
    assert svc_of(run)["step"] == "rb_wait"
    dep = cluster.objects[("Deployment", "api")]
    assert dep["spec"]["template"]["metadata"]["annotations"][R.ROTATED_AT] == f"rollback-{NEW_ID}-20270115080100"
    run = R.fold_wait(run, "rb_wait", {"h1": {"state": "done", "phase": "drain", "why": ""}})
    assert R.deactivate_ids(run, "deactivate") == [NEW_ID]
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": NEW_ID, "failed": False}]})
    run = write(run, "clear", tokens, cluster, NOW + 700)
    run = R.conclude_all(run)
    svc = svc_of(run)
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert svc["message"] == ("The rollout of Deployment shop/api failed: it exceeded its progress deadline; rolled "
                              f"back: the Secret holds the previous credential {OLD_ID} again (still active), the "
                              f"workloads were restarted, and the new credential {NEW_ID} was deactivated")
    assert cluster.secret()["metadata"]["annotations"] == {R.LAST_ROLLBACK_AT: at(700)}
    (record,) = R.audit_records(run, NOW + 700)["/var/log/rotation.jsonl"]
    record = json.loads(record)
    assert (record["event"], record["new_id"], record["old_id"]) == ("rolled_back", NEW_ID, OLD_ID)
    assert_no_token(run, R.summary_lines(run), R.outcomes(run), R.audit_records(run, NOW))
    # The service reads its previous token again: the one it held before this run (compared by fingerprint,
    # so that a failure prints no token).
    assert R.unb64(restored["id"]) == OLD_ID
    assert R.fingerprint(R.unb64(restored.get("token"))) == OLD_FP, "the rollback did not restore the previous token"


def test_finishing_an_earlier_rollback_says_why_it_was_rolled_back():
    run, tokens, cluster = decided(R.ROLLING_BACK)
    run = write(run, "lock", tokens, cluster)
    assert svc_of(run)["step"] == "rb_restart"
    run = restart(run, "rb_restart", cluster)
    run = R.fold_wait(run, "rb_wait", {"h1": {"state": "done", "phase": "drain", "why": ""}})
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": NEW_ID, "failed": False}]})
    svc = svc_of(R.conclude_all(write(run, "clear", tokens, cluster)))
    assert svc["status"] == "failed"
    assert svc["message"] == ("finished the rollback of an earlier failed rotation (the rollout of Deployment shop/api "
                              f"failed): rolled back: the Secret holds the previous credential {OLD_ID} again (still "
                              f"active), the workloads were restarted, and the new credential {NEW_ID} was "
                              "deactivated; nothing was rotated")


def test_the_rollback_drain_looks_for_readers_started_while_the_new_token_was_in_the_secret():
    run, tokens, cluster = at_promote()
    run = write(run, "promote", tokens, cluster, NOW + 60)  # the new token is in the Secret from NOW+60 ...
    run = svc_run_at(run, "rb_restore")
    svc_of(run)["error"] = "the rollout failed"
    run = write(run, "rb_restore", tokens, cluster, NOW + 600)  # ... until NOW+600
    run = svc_run_at(run, "rb_wait")
    request = wait_request(run, "rb_wait")
    dep = deployment()
    pods = [pod("job-during", {"job": "x"}, reads="env", created=300),  # read the new token
            pod("job-after", {"job": "x"}, reads="env", created=900),  # read the previous token again
            pod("job-before", {"job": "x"}, reads="env", created=-300)]  # read the previous token
    verdict = R.judge_workloads(request, svc_of(run), [dep], pods, NOW + 910, NOW + 605)
    assert (verdict["state"], verdict["phase"]) == ("waiting", "drain")
    assert "job-during" in verdict["why"], verdict["why"]
    assert "job-after" not in verdict["why"] and "job-before" not in verdict["why"], verdict["why"]


def test_resuming_a_promoted_rotation_finishes_it_without_a_second_restart():
    run, tokens, cluster = decided(R.PROMOTED)
    run = write(run, "lock", tokens, cluster)
    assert svc_of(run)["step"] == "restart"
    (definition,) = R.restart_calls(run, "restart")[0]["definitions"]
    assert definition["spec"]["template"]["metadata"]["annotations"][R.ROTATED_AT] == PHASE_ANN[R.PROMOTED][R.MARKER]
    run = restart(run, "restart", cluster)
    run = R.fold_wait(run, "wait", {"h1": {"state": "done", "phase": "drain", "why": ""}})
    run = R.fold_usage(run, {"h1": {"state": "done", "why": ""}})
    run = R.fold_health(run, {})
    run = R.fold_list(run, "sweep_list", {"system_users": []})
    assert R.deactivate_ids(run, "deactivate") == [OLD_ID]
    run = R.fold_deactivate(run, "deactivate", {"results": [{"id": OLD_ID, "failed": False}]})
    run = R.conclude_all(write(run, "clear", tokens, cluster))
    svc = svc_of(run)
    assert (svc["status"], svc["message"]) == ("rotated", (f"{OLD_ID} -> {NEW_ID}, new credential expires in 90 days, "
                                                          "resumed an interrupted rotation"))
    assert_no_token(run)


@pytest.mark.parametrize(("given", "names"), [("api", ["api"]), ("api, worker", ["api", "worker"])])
def test_deployments_given_as_a_string_are_read_as_ansible_reads_a_list(given, names):
    # The role's argument spec accepts "a, b" for a list, as every Ansible list option does.
    assert R.check_inputs(inputs(deployments=given)) == []
    assert [w["name"] for w in R.workloads_of(inputs(deployments=given))[0]] == names


def test_only_services_that_will_change_something_are_checked_and_read_further():
    # The daily run with nothing due reads each Secret once; the workloads (and the companion, when
    # the Secret records no rotation) are read only for the services that will change something.
    inp_due, read_due, _ = scenario()
    inp_fresh, read_fresh, _ = scenario(secret="web")
    read_fresh["secret"] = secret_obj(name="web", ident="su_web")
    run = R.start({"due": inp_due, "fresh": inp_fresh}, RUN_ID)
    run, _ = R.inspect(run, {"due": read_due, "fresh": read_fresh}, NOW)
    run = R.decide(run, [user(days=3), user("su_web", days=60)], {}, NOW)
    assert [r["host"] for r in R.check_requests(run)] == ["due"]
    assert R.check_requests(run)[0]["companion"] is (not svc_of(run, "due")["companion"]["read"])
    run = R.inspect_more(run, {"due": {"workloads": [{"kind": "Deployment", "name": "api", "object": None,
                                                       "error": ""}]}})
    assert (svc_of(run, "due")["step"], svc_of(run, "due")["status"]) == ("done", "failed")
    assert (svc_of(run, "fresh")["step"], svc_of(run, "fresh")["status"]) == ("done", "not due")


def test_a_rotation_in_progress_does_not_read_its_companion_twice():
    run, _, _ = read_run(R.PROMOTED)
    run = R.decide(run, [user(NEW_ID, days=90), user(OLD_ID, days=3)], {}, NOW)
    assert R.check_requests(run)[0]["companion"] is False


# == Reloader-style controllers and credential_rotation_workloads: auto ==============================

def reads_template(how: str | None = "env", secret: str = "api") -> dict:
    """A pod template that reads ``secret`` the way ``how`` says (see pod())."""
    spec = pod("t", reads=how, secret=secret)["spec"] if how else {"containers": [{"name": "main"}]}
    return {"metadata": {"labels": APP}, "spec": spec}


def reloader_deployment(annotations: dict | None = None, template_annotations: dict | None = None,
                        how: str | None = "env", name: str = "api") -> dict:
    obj = deployment(name=name, annotations=annotations)
    obj["spec"]["template"] = reads_template(how)
    obj["spec"]["template"]["metadata"]["annotations"] = template_annotations or {}
    return obj


@pytest.mark.parametrize(("annotations", "template_annotations", "how", "secret_ann", "expected"), [
    ({"reloader.stakater.com/auto": "true"}, None, "env", None, 'reloader.stakater.com/auto: "true"'),
    ({"reloader.stakater.com/auto": "True"}, None, "volume", None, 'reloader.stakater.com/auto: "true"'),
    (None, {"reloader.stakater.com/auto": "true"}, "envFrom", None, 'reloader.stakater.com/auto: "true"'),
    ({"secret.reloader.stakater.com/auto": "true"}, None, "projected", None,
     'secret.reloader.stakater.com/auto: "true"'),
    ({"reloader.stakater.com/auto": "true"}, None, None, None, ""),
    ({"reloader.stakater.com/auto": "false"}, None, "env", None, ""),
    ({"reloader.stakater.com/auto": "true"}, None, "env", {"reloader.stakater.com/ignore": "true"}, ""),
    ({"secret.reloader.stakater.com/reload": "other, api"}, None, None, None,
     "secret.reloader.stakater.com/reload: other, api"),
    ({"secret.reloader.stakater.com/reload": "other,api-rotation"}, None, "env", None, ""),
    ({"reloader.stakater.com/search": "true"}, None, "env", {"reloader.stakater.com/match": "true"},
     'reloader.stakater.com/search: "true" (and the Secret\'s reloader.stakater.com/match)'),
    ({"reloader.stakater.com/search": "true"}, None, "env", None, ""),
    (None, None, "env", None, ""),
], ids=["auto", "auto-capitalised", "auto-on-template", "secret-auto", "auto-but-not-reading", "auto-false",
        "secret-ignored", "reload-list", "reload-list-of-others", "search-match", "search-without-match", "none"])
def test_reloader_restarts(annotations, template_annotations, how, secret_ann, expected):
    obj = reloader_deployment(annotations, template_annotations, how)
    assert R.reloader_restarts(obj, "api", secret_ann) == expected


AUTO = {"reloader.stakater.com/auto": "true"}


def reloader_run(strategy: str = "restart", secret_ann: dict | None = None) -> dict:
    """A due service whose Deployment api is annotated for Reloader, checked."""
    inp, read, _ = scenario(strategy=strategy)
    if secret_ann:
        read["secret"]["metadata"]["annotations"].update(secret_ann)
    read["workloads"][0]["object"] = reloader_deployment(AUTO)
    run = R.start({"h1": inp}, RUN_ID)
    run, _ = R.inspect(run, {"h1": read}, NOW)
    run = R.decide(run, [user(days=3)], {}, NOW)
    return R.inspect_more(run, {"h1": read})


def test_check_notes_which_workloads_reloader_restarts():
    summary = svc_of(reloader_run())["workload_objects"]["Deployment/api"]
    assert summary["reloader"] == 'reloader.stakater.com/auto: "true"'
    assert svc_of(reloader_run(secret_ann={"reloader.stakater.com/ignore": "true"}))[
        "workload_objects"]["Deployment/api"]["reloader"] == ""
    # With strategy reload nothing is restarted, so nothing is left to Reloader either.
    assert svc_of(reloader_run("reload"))["workload_objects"]["Deployment/api"]["reloader"] == ""


def test_the_restart_leaves_reloader_workloads_to_reloader():
    run = reloader_run()
    svc = svc_of(run)
    svc["workload_objects"]["Deployment/worker"] = {"selector": {"app": "worker"}, "marker": "", "reloader": ""}
    svc["cfg"]["workloads"].append({"kind": "Deployment", "name": "worker"})
    svc["step"] = "restart"
    svc["ann"][R.MARKER] = MARK
    (call,) = R.restart_calls(run, "restart")
    assert [d["metadata"]["name"] for d in call["definitions"]] == ["worker"]
    svc["cfg"]["workloads"].pop()
    assert R.restart_calls(run, "restart") == []
    assert svc_of(R.fold_restart(run, "restart", [], []))["step"] == "wait"


def reloader_wait(rollback: bool = False, grace: int = 30) -> tuple[dict, dict]:
    run = reloader_run()
    svc = svc_of(run)
    svc["step"] = "rb_wait" if rollback else "wait"
    svc["cfg"]["reloader_grace"] = grace
    svc["ann"].update({R.PROMOTED_AT: at(0), R.MARKER: f"rollback-{MARK}" if rollback else MARK,
                       R.FAILED_MARKER: MARK if rollback else ""})
    if rollback:
        svc["ann"][R.ROLLED_BACK_AT] = at(100)
    return svc, wait_request(run, svc["step"])


@pytest.mark.parametrize(("pods", "stale"), [
    ([pod("api-old", APP, "", created=-10)], ["api-old"]),
    ([pod("api-reloaded", APP, "", created=5)], []),
    ([pod("api-reloaded", APP, "", created=5, deleting=True)], ["api-reloaded"]),
    ([pod("api-restarted-by-us", APP, MARK, created=40)], []),
], ids=["from-before-the-change", "reloaded", "terminating", "restarted-after-the-grace"])
def test_reloader_pods_are_judged_by_when_they_were_created(pods, stale):
    svc, request = reloader_wait()
    assert R.stale_pods(svc, pods, request["marker"], NOW) == stale
    assert R.unlisted(svc, pods, stale) == []  # pods of a listed workload are no news


@pytest.mark.parametrize(("rollback", "pods", "objects", "elapsed", "missed"), [
    (False, [pod("api-old", APP, "", created=-10)], [reloader_deployment(AUTO)], 29, []),
    (False, [pod("api-old", APP, "", created=-10)], [reloader_deployment(AUTO)], 30, ["api"]),
    (False, [pod("api-old", APP, "", created=-10)], [deployment(updated=1)], 60, []),
    (False, [pod("api-old", APP, "", created=-10, deleting=True)], [reloader_deployment(AUTO)], 60, []),
    (False, [pod("api-new", APP, "", created=5)], [reloader_deployment(AUTO)], 60, []),
    (True, [pod("api-forward", APP, "", created=50)], [reloader_deployment(AUTO)], 120, []),
    (True, [pod("api-forward", APP, "", created=50)], [reloader_deployment(AUTO)], 130, ["api"]),
    (True, [pod("api-back", APP, "", created=110)], [reloader_deployment(AUTO)], 200, []),
], ids=["within-the-grace", "grace-passed", "rollout-in-progress", "only-terminating-left", "reloaded",
        "rollback-within-the-grace", "rollback-grace-passed", "rollback-reloaded"])
def test_reloader_missed(rollback, pods, objects, elapsed, missed):
    svc, request = reloader_wait(rollback)
    found = R.reloader_missed(svc, request, objects, pods, NOW + elapsed)
    assert [w["name"] for w in found] == missed


def test_reloader_missed_restarts_each_workload_once_and_never_a_restarted_one():
    svc, request = reloader_wait()
    request["workloads"][0]["restarted"] = True
    assert R.reloader_missed(svc, request, [reloader_deployment(AUTO)], [pod("api-old", APP, created=-10)],
                             NOW + 60) == []
    plain_svc = restarted_svc()
    plain_request = R.wait_requests({"services": {"h1": {**plain_svc, "step": "wait"}}}, "wait")[0]
    assert R.reloader_missed(plain_svc, plain_request, [deployment()], [pod("api-old", APP, created=-10)],
                             NOW + 600) == []


def test_the_fallback_restart_is_the_restart_steps_patch():
    svc, request = reloader_wait()
    assert request["restart_marker"] == MARK and request["reloader_grace"] == 30
    assert R.restart_definition("shop", request["workloads"][0], MARK) == {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"template": {"metadata": {"annotations": {R.ROTATED_AT: MARK}}}}}


def test_the_wait_names_the_pods_of_no_workload_it_waited_for():
    run, _, _ = at_restart(rollout_timeout=100, drain_timeout=50)
    run = svc_run_at(run, "wait")
    job = pod("report-1-x7k", {"job": "report"}, reads="env", created=-10)
    verdict = R.judge_workloads(wait_request(run), svc_of(run), [deployment()], [job, pod("api-old", APP)],
                                NOW + 10, NOW)
    assert verdict["unlisted"] == ["report-1-x7k"] and verdict["state"] == "waiting"
    done = svc_of(R.fold_wait(run, "wait", {"h1": {"state": "done", "phase": "drain", "why": "",
                                                   "unlisted": ["report-1-x7k"]}}))
    assert done["step"] == "usage"
    assert done["notes"] == [("waited for pod(s) report-1-x7k, which read the Secret but belong to no restarted "
                             "workload, to end before deactivating the old credential")]
    missed = svc_of(R.fold_wait(run, "wait", {"h1": {"state": "done", "phase": "drain", "why": "",
                                                     "reloader_missed": ["Deployment shop/api"]}}))
    assert missed["notes"][0].startswith("restarted Deployment shop/api itself: its Reloader annotation")


def test_the_preview_says_reloader_restarts_it():
    inp, read, _ = scenario()
    read["workloads"][0]["object"] = reloader_deployment(AUTO)
    run = R.start({"h1": inp}, RUN_ID, True)
    run, _ = R.inspect(run, {"h1": read}, NOW)
    run = R.inspect_more(R.decide(run, [user(days=3)], {}, NOW), {"h1": read})
    run, diffs = R.preview(run, NOW)
    assert "wait for Reloader to restart Deployment shop/api (restarting it after 30 s if it does not)" in \
        svc_of(run)["message"]
    (workload,) = [d for d in diffs if d["before_header"] == "Deployment shop/api"]
    assert "unchanged: Reloader restarts it" in workload["after"]


# -- auto --

def test_workloads_auto_is_accepted_without_deployments():
    assert R.check_inputs(inputs(workloads="auto", deployments=[])) == []
    assert R.workloads_of(inputs(workloads="auto")) == ([], [])
    cfg = svc_of(R.start({"h1": inputs(workloads="auto", deployments=[])}, RUN_ID))["cfg"]
    assert cfg["auto_workloads"] is True and cfg["workloads"] == []
    assert "credential_rotation_workloads must be a list of {kind, name} or auto" in \
        R.check_inputs(inputs(workloads="everything"))[0]


def test_found_workloads_are_the_kinds_whose_template_reads_the_secret():
    sts = statefulset("db")
    sts["spec"]["template"] = reads_template("volume")
    ds = daemonset("agent")
    ds["spec"]["template"] = reads_template(None)
    listed = {"Deployment": [reloader_deployment(how="env", name="web"), reloader_deployment(how="envFrom", name="api"),
                             reloader_deployment(how=None, name="other")],
              "StatefulSet": [sts], "DaemonSet": [ds]}
    found = R.found_workloads({"secret": "api"}, listed)
    assert [(w["kind"], w["name"]) for w in found] == [("Deployment", "api"), ("Deployment", "web"),
                                                        ("StatefulSet", "db")]


def auto_run(read_over: dict) -> dict:
    inp, read, _ = scenario(workloads="auto", deployments=[])
    run = R.start({"h1": inp}, RUN_ID)
    run, _ = R.inspect(run, {"h1": read}, NOW)
    run = R.decide(run, [user(days=3)], {}, NOW)
    assert R.check_requests(run)[0]["auto"] is True
    return R.inspect_more(run, {"h1": {**read, **read_over}})


def test_auto_restarts_what_it_found():
    found = [{"kind": "Deployment", "name": "api", "object": deployment(), "error": ""}]
    svc = svc_of(auto_run({"workloads": found}))
    assert svc["step"] == "lock" and svc["cfg"]["workloads"] == [{"kind": "Deployment", "name": "api"}]
    assert list(svc["workload_objects"]) == ["Deployment/api"]


def test_auto_that_found_nothing_goes_on_and_says_so():
    svc = svc_of(auto_run({"workloads": []}))
    assert svc["step"] == "lock" and svc["cfg"]["workloads"] == []
    assert svc["notes"] == [("no Deployment, StatefulSet or DaemonSet of namespace shop reads Secret api, so nothing "
                            "was restarted")]


def test_auto_that_cannot_list_fails_before_anything_changes():
    svc = svc_of(auto_run({"workloads": [], "list_error": "StatefulSet: HTTP 403: forbidden"}))
    assert (svc["step"], svc["status"]) == ("done", "failed")
    assert "credential_rotation_workloads: auto needs" in svc["message"]


def test_auto_refuses_an_ondelete_workload_it_found():
    found = [{"kind": "DaemonSet", "name": "agent", "object": daemonset(strategy="OnDelete"), "error": ""}]
    svc = svc_of(auto_run({"workloads": found}))
    assert (svc["step"], svc["status"]) == ("done", "failed") and "OnDelete" in svc["message"]


def test_services_of_one_run_sharing_a_name_prefix_both_fail_before_anything_changes():
    hosts = {"eu": inputs(kubeconfig="/k/eu"), "us": inputs(kubeconfig="/k/us"), "other": inputs(secret="web"),
             "own": inputs(kubeconfig="/k/us", name_prefix="shop.api-us"),
             "typo": inputs(kubeconfig="/k/ap", deployments=["apx"])}
    reads = {}
    for host in hosts:
        _, reads[host], _ = scenario()
    reads["other"]["secret"] = secret_obj(name="web")
    reads["typo"]["workloads"] = [{"kind": "Deployment", "name": "apx", "object": None, "error": ""}]
    run, _ = R.inspect(R.start(hosts, RUN_ID), reads, NOW)
    run = R.inspect_more(R.decide(run, [user(days=3)], {}, NOW), reads)
    for host in ("eu", "us"):
        svc = svc_of(run, host)
        assert (svc["step"], svc["status"]) == ("done", "failed")
        assert svc["message"].startswith("credential_rotation_name_prefix 'shop.api' is also the name prefix of "
                                         "shop/api in this run")
    # A service that failed a check of its own keeps its own sentence and clashes with nobody.
    assert "apx does not exist" in svc_of(run, "typo")["message"]
    assert [svc["host"] for svc in R.due(run, "lock")] == ["other", "own"]


def test_a_due_service_sharing_its_prefix_with_a_not_due_one_fails_and_the_other_is_left_alone():
    # The same Secret in two clusters, only one due: its orphan sweep would deactivate the other
    # cluster's active credential (same name pattern, same description).
    hosts = {"eu": inputs(kubeconfig="/k/eu"), "us": inputs(kubeconfig="/k/us")}
    reads = {host: scenario()[1] for host in hosts}
    reads["us"]["secret"] = secret_obj(ident="su_us")
    run, _ = R.inspect(R.start(hosts, RUN_ID), reads, NOW)
    run = R.inspect_more(R.decide(run, [user(days=3), user("su_us", days=60)], {}, NOW), reads)
    assert (svc_of(run, "eu")["status"], svc_of(run, "eu")["step"]) == ("failed", "done")
    assert "is also the name prefix of shop/api in this run" in svc_of(run, "eu")["message"]
    assert (svc_of(run, "us")["status"], svc_of(run, "us")["message"]) == ("not due", "60 days left")


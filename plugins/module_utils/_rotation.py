# Copyright: (c) 2026, xapi.system_auth contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The credential rotation's rules, as pure functions (no I/O, no clock: ``now`` is an argument).

The role ``credential_rotation`` runs one step at a time for every service of the run: a platform
or kubernetes.core call (made by the ``rotation_observe`` action) for all services due for that
step, whose answers are folded into the run by ``fold`` (in the action, or through the filters in
``plugins/filter/rotation.py`` for the steps whose answers carry tokens), which hands off to the
functions here. So every rule of the rotation exists once, here, with unit tests in
``tests/unit/test_rotation_rules.py``.

The run state is a plain dict (it lives in an Ansible fact)::

    {"run_id": str, "check_mode": bool, "services": {host: service}}

A service holds what the run knows of it, never a token: its configuration (``cfg``), the step it is
due for (``step``), its final ``status`` once it has one, and what the Secret records. Tokens live in
a second fact, ``{host: {"current": b64, "pending": str, "previous": b64}}``, which only ``no_log``
tasks touch.

The Secret the service reads is the durable record. It changes its data once per rotation (the
promotion; once more only for a rollback); the rotation's non-secret state is kept in its
``xapi.io/*`` annotations, and the pending and previous tokens in a companion Secret
(``<secret>-rotation`` by default) that no pod mounts.
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_base import (
    CREATING,
    CURRENT_FP,
    CURRENT_ID,
    FAILED_ID,
    FAILED_MARKER,
    GROUPS,
    KINDS,
    LAST_ROLLBACK_AT,
    LAST_ROTATED_AT,
    LAST_ROTATION,
    LOCK_ANNOTATIONS,
    LOCK_EXPIRES,
    LOCK_HOLDER,
    MARKER,
    NONE,
    PACKED,
    PENDING,
    PENDING_FP,
    PENDING_ID,
    PENDING_NAME,
    PENDING_TOKEN,
    PHASE,
    PHASES,
    PREVIOUS_FP,
    PREVIOUS_ID,
    PREVIOUS_TOKEN,
    PROMOTED,
    PROMOTED_AT,
    ROLLBACK_REASON,
    ROLLED_BACK_AT,
    ROLLING_BACK,
    ROTATED_AT,
    ROTATION_FOR,
    STARTED_AT,
    STATE_ANNOTATIONS,
    STEPS,
    TIME_FORMAT,
    USED_BEFORE,
    A,
    RotationError,
    V,
    _copy,
    _fail,
    _finish,
    b64,
    clusters_of,
    compact,
    due,
    fingerprint,
    indexed,
    new_name,
    pack,
    parse_stamp,
    secret_ref,
    stamp,
    unb64,
    unpack,
    workload_ref,
)
from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_inputs import (
    check_inputs,
    config_of,
    connection_of,
    state_secret_of,
    workloads_of,
)
from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_report import (
    audit_records,
    expiry_lines,
    notify_hosts,
    outcomes,
    preview,
    stats,
    summary_lines,
)
from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_workloads import (
    _workload_problem,
    _workload_summary,
    judge_workloads,
    parse_k8s_time,
    pod_reads_secret,
    reloader_missed,
    reloader_restarts,
    rollout_state,
    stale_pods,
    template_reads_secret,
    unlisted,
)

# The rules' one entry point: the filters, the action and the tests import from here.
__all__ = [
    "indexed",
    "PACKED",
    "pack",
    "unpack",
    "lookup_failure",
    "token_lookup",
    "reloader_missed",
    "reloader_restarts",
    "restart_definition",
    "template_reads_secret",
    "unlisted",
    "can_list",
    "inspect_more",
    "check_requests",
    "found_workloads",
    "A",
    "CREATING",
    "CURRENT_FP",
    "CURRENT_ID",
    "FAILED_ID",
    "FAILED_MARKER",
    "KINDS",
    "LAST_ROLLBACK_AT",
    "LAST_ROTATED_AT",
    "LAST_ROTATION",
    "LOCK_ANNOTATIONS",
    "LOCK_EXPIRES",
    "LOCK_HOLDER",
    "MARKER",
    "NONE",
    "PENDING",
    "PENDING_FP",
    "PENDING_ID",
    "PENDING_NAME",
    "PENDING_TOKEN",
    "PHASE",
    "PHASES",
    "PREVIOUS_FP",
    "PREVIOUS_ID",
    "PREVIOUS_TOKEN",
    "PROMOTED",
    "PROMOTED_AT",
    "ROLLBACK_REASON",
    "ROLLED_BACK_AT",
    "ROLLING_BACK",
    "ROTATED_AT",
    "ROTATION_FOR",
    "RotationError",
    "STARTED_AT",
    "STATE_ANNOTATIONS",
    "GROUPS",
    "STEPS",
    "TIME_FORMAT",
    "USED_BEFORE",
    "V",
    "_answers",
    "_k8s_error",
    "audit_records",
    "b64",
    "check_inputs",
    "clusters_of",
    "compact",
    "companion_definition",
    "conclude_all",
    "config_of",
    "connection_of",
    "create_requests",
    "create_retries",
    "deactivate_ids",
    "decide",
    "derived_phase",
    "due",
    "expiry_lines",
    "fingerprint",
    "fold",
    "fold_audit",
    "fold_create",
    "fold_deactivate",
    "fold_health",
    "fold_list",
    "fold_restart",
    "fold_usage",
    "fold_verify",
    "fold_wait",
    "fold_write",
    "health_requests",
    "inspect",
    "judge_workloads",
    "list_needed",
    "lock_held_by_other",
    "lookup_ids",
    "lookup_token_hosts",
    "new_name",
    "notify_hosts",
    "orphan_pattern",
    "orphans",
    "outcomes",
    "parse_k8s_time",
    "parse_stamp",
    "pod_reads_secret",
    "preview",
    "previous_token",
    "read_requests",
    "restart_calls",
    "rollout_state",
    "route_rollbacks",
    "secret_patch",
    "secret_ref",
    "stale_pods",
    "stamp",
    "start",
    "state_secret_of",
    "stats",
    "summary_lines",
    "unb64",
    "usage_ids",
    "usage_unused",
    "verify_requests",
    "verify_timeout",
    "wait_requests",
    "workload_ref",
    "workloads_of",
    "writes",
]


def start(inputs_by_host: dict[str, dict], run_id: str, check_mode: bool = False,
          invalid: dict[str, str] | None = None) -> dict:
    """The run's state: every service with its settings, or failed with the sentence its inputs earned.

    ``invalid`` holds, per host, the sentence of a value the role's argument spec refused (a wrong
    type, a value not among the choices); such a service fails with it before any other check.

    Services must share one platform connection (every step makes one call for all of them); a
    service whose connection settings differ from the first service's fails with a sentence.
    """
    services: dict[str, dict] = {}
    connection = None
    for host, inputs in inputs_by_host.items():
        namespace = str(inputs.get(V + "namespace") or "")
        secret = str(inputs.get(V + "secret_name") or "")
        name = str(inputs.get(V + "service_name") or "") or f"{namespace}/{secret}"
        svc: dict[str, Any] = {
            "host": host, "service": name, "namespace": namespace, "secret": secret,
            "state_secret": state_secret_of(inputs),
            "cluster": {"kubeconfig": inputs.get(V + "kubeconfig") or None,
                        "context": inputs.get(V + "context") or None},
            "step": "read", "status": "", "message": "", "notes": [], "phase": NONE, "action": "none",
            "rv": "", "ann": {}, "current_id": "", "days_remaining": None, "new_id": "", "new_name": "",
            "new_fp": "", "to_deactivate": [], "clear": "", "error": "", "rollback_notes": [],
        }
        errors = [invalid[host]] if (invalid or {}).get(host) else check_inputs(inputs)
        digest = connection_of(inputs)
        if connection is None:
            connection = digest
        elif digest != connection and not errors:
            errors = [("credential_rotation_api_url, _api_token, _ca_path or _validate_certs of this service "
                       "differ from those of "
                       "the first service of the run; every step calls the platform once for all services, so "
                       "run services of another platform connection in a play of their own.")]
        if errors:
            svc.update(step="done", status="failed", message=errors[0], cfg={})
        else:
            svc["cfg"] = config_of(inputs)
        services[host] = svc
    return {"run_id": run_id, "check_mode": bool(check_mode), "services": services}


def _refuse_shared_prefixes(services: list[dict]) -> None:
    """A service that will change something must not share its name prefix with another service of the
    run (one Secret inventoried twice, or the same namespace and Secret in two clusters, which default
    to one prefix): two acting ones would record the same new name, and either one's orphan sweep would
    take the other's active credential (same name pattern, same description) for an orphan. The acting
    ones fail, before anything changes; a service with nothing to do is left as it is."""
    by_prefix: dict[str, list[dict]] = {}
    for svc in services:
        if svc.get("cfg") and (svc["step"] in ("lock", "preview") or svc["status"] == "not due"):
            by_prefix.setdefault(svc["cfg"]["name_prefix"], []).append(svc)
    for prefix, group in by_prefix.items():
        if len(group) < 2:
            continue
        for svc in group:
            if svc["step"] not in ("lock", "preview"):
                continue
            others = ", ".join(o["service"] for o in group if o is not svc)
            _fail(svc, f"credential_rotation_name_prefix {prefix!r} is also the name prefix of {others} in this run, "
                       "so their new credentials would share names and each sweep the other's as orphans; give "
                       "each service a prefix of its own (for one Secret in several clusters, add the cluster's "
                       "name to it).", "done")


# -- reading (the rotation_observe action reads, then inspect judges) ---------------------------

def read_requests(run: dict) -> list[dict]:
    """What the read step fetches for each service: its Secret, companion Secret, workloads and pods."""
    out = []
    for svc in due(run, "read"):
        out.append({"host": svc["host"], "cluster": svc["cluster"], "namespace": svc["namespace"],
                    "secret": svc["secret"], "state_secret": svc["state_secret"],
                    "workloads": svc["cfg"]["workloads"]})
    return out


def _lock(ann: dict, run_id: str, now: float) -> tuple[bool, str]:
    holder = ann.get(LOCK_HOLDER) or ""
    expires = parse_stamp(ann.get(LOCK_EXPIRES))
    if holder and holder != run_id and expires is not None and expires > now:
        return True, holder
    return False, holder


def lock_held_by_other(svc_ann: dict, run_id: str, now: float) -> bool:
    return _lock(svc_ann, run_id, now)[0]


def derived_phase(ann: dict, companion: dict | None) -> str:
    phase = ann.get(PHASE) or NONE
    if phase in (CREATING, PENDING):
        c_ann = ((companion or {}).get("metadata") or {}).get("annotations") or {}
        c_data = (companion or {}).get("data") or {}
        if (c_data.get(PENDING_TOKEN) and c_ann.get(PENDING_ID)
                and c_ann.get(PENDING_NAME) == ann.get(PENDING_NAME)):
            return PENDING
        return CREATING
    return phase


def inspect(run: dict, reads: dict[str, dict], now: float) -> tuple[dict, dict]:
    """Judge what the read step found; returns (run, tokens).

    ``reads``: {host: {"secret": obj|None, "secret_error": str, "companion": obj|None,
    "workloads": [{"kind", "name", "object": obj|None, "error": str}], "pods": [obj], "lock_waited": s}}.
    Everything that can be known before a change is checked here, and a service that fails a check
    ends failed with nothing of it touched.
    """
    run = _copy(run)
    tokens: dict[str, dict] = {}
    for svc in due(run, "read"):
        read = reads.get(svc["host"]) or {"secret_error": "the read step gave no answer"}
        cfg = svc["cfg"]
        ref = secret_ref(svc)
        secret = read.get("secret")
        if read.get("secret_error"):
            kubeconfig = read.get("kubeconfig") or svc["cluster"]["kubeconfig"] or "KUBECONFIG"
            _fail(svc, f"Could not read {ref} ({read['secret_error']}); check the kubeconfig "
                       f"({kubeconfig}) and that its identity may get this Secret.",
                  "done")
            continue
        if not secret:
            _fail(svc, f"{ref} does not exist; check credential_rotation_namespace and "
                       "credential_rotation_secret_name (the rotation updates the "
                       "Secret that already holds the service's current token, it never creates it).", "done")
            continue
        meta = secret.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        owned = _foreign_owner(meta)
        if owners or owned:
            what = (f"{owners[0].get('kind', '?')} {owners[0].get('name', '?')}" if owners else owned)
            _fail(svc, f"{ref} is managed by {what}, which would put its own token back; rotate the credential "
                       "where that controller takes it from, or remove the Secret from its control.", "done")
            continue
        data = secret.get("data") or {}
        if cfg["token_key"] not in data:
            _fail(svc, f"{ref} has no key {cfg['token_key']}; set credential_rotation_secret_token_key to the "
                       "key that holds "
                       "the token.", "done")
            continue
        ann = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(A)}
        companion = read.get("companion")
        if read.get("companion_error"):
            _fail(svc, f"Could not read Secret {svc['namespace']}/{svc['state_secret']} "
                       f"({read['companion_error']}); check that the identity may get it (deploy/rbac.yml).",
                  "done")
            continue
        problem = _companion_problem(svc, read)
        if problem:
            _fail(svc, problem, "done")
            continue
        c_meta = (companion or {}).get("metadata") or {}
        svc["rv"] = meta.get("resourceVersion") or ""
        svc["ann"] = ann
        svc["reloader_ann"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                               if "reloader.stakater.com/" in k}
        c_ann = c_meta.get("annotations") or {}
        svc["companion"] = {"exists": bool(companion), "read": "companion" in read,
                            "ann": {k: v for k, v in c_ann.items() if k.startswith(A)}}
        svc["phase"] = derived_phase(ann, companion)
        if svc["phase"] not in PHASES:
            _fail(svc, f"{ref} records an unknown rotation phase {svc['phase']!r}; set "
                       "credential_rotation_abort: true to discard "
                       "it, or clear the xapi.io/ annotations by hand.", "done")
            continue
        svc["current_id"] = unb64(data.get(cfg["id_key"]))
        if read.get("lock_waited"):
            svc["notes"].append(f"waited {int(read['lock_waited'])} s for another run's lock")
        c_data = (companion or {}).get("data") or {}
        tokens[svc["host"]] = {
            "current": data.get(cfg["token_key"], ""),
            "pending": unb64(c_data.get(PENDING_TOKEN)) if svc["phase"] == PENDING else "",
            "previous": c_data.get(PREVIOUS_TOKEN) or data.get(PREVIOUS_TOKEN, ""),
        }
        if svc["phase"] == PENDING:
            svc["new_id"] = svc["companion"]["ann"].get(PENDING_ID, "")
            svc["new_fp"] = svc["companion"]["ann"].get(PENDING_FP, "")
            svc["new_name"] = ann.get(PENDING_NAME, "")
        held, holder = _lock(ann, run["run_id"], now)
        if held:
            svc["lock_holder"] = holder
        svc["step"] = "lookup"
    return run, tokens


def _companion_problem(svc: dict, read: dict) -> str:
    if read.get("companion_error"):
        return (f"Could not read Secret {svc['namespace']}/{svc['state_secret']} ({read['companion_error']}); "
                "check that the identity may get it (deploy/rbac.yml).")
    c_meta = (read.get("companion") or {}).get("metadata") or {}
    if read.get("companion") and (c_meta.get("annotations") or {}).get(ROTATION_FOR) not in (None, svc["secret"]):
        return (f"Secret {svc['namespace']}/{svc['state_secret']} exists and belongs to something else; "
                "set credential_rotation_state_secret_name to a name of its own.")
    return ""


def check_requests(run: dict) -> list[dict]:
    """What the check step reads for the services that will change something: their workloads, and the
    companion Secret when the read step did not need it."""
    return [{"host": svc["host"], "cluster": svc["cluster"], "namespace": svc["namespace"],
             "secret": svc["secret"], "state_secret": svc["state_secret"], "workloads": svc["cfg"]["workloads"],
             "companion": not svc["companion"]["read"], "auto": bool(svc["cfg"].get("auto_workloads"))}
            for svc in due(run, "check")]


def found_workloads(request: dict, listed: dict[str, list[dict]]) -> list[dict]:
    """credential_rotation_workloads: auto: of the namespace's Deployments, StatefulSets and DaemonSets
    (``listed``: {kind: [objects]}), those whose pod template reads the Secret, as read entries."""
    out = []
    for kind in KINDS:
        for obj in sorted(listed.get(kind) or [], key=lambda o: (o.get("metadata") or {}).get("name", "")):
            if template_reads_secret(obj, request["secret"]):
                out.append({"kind": kind, "name": (obj.get("metadata") or {}).get("name", ""), "object": obj,
                            "error": ""})
    return out


def inspect_more(run: dict, reads: dict[str, dict]) -> dict:
    """The checks only a service that will change something needs, before anything changes: every
    workload exists and a restart would roll it, and the companion Secret is ours (or absent)."""
    run = _copy(run)
    for svc in due(run, "check"):
        read = reads.get(svc["host"]) or {"workloads": [{**w, "error": "the check step gave no answer"}
                                                        for w in svc["cfg"]["workloads"]]}
        if svc["cfg"].get("auto_workloads"):
            if read.get("list_error"):
                _fail(svc, f"Could not list the workloads of namespace {svc['namespace']} ({read['list_error']}), "
                           "which credential_rotation_workloads: auto needs; allow the identity to list "
                           "deployments, statefulsets and daemonsets (deploy/rbac.yml), or name the workloads.",
                      "done")
                continue
            svc["cfg"]["workloads"] = [{"kind": w["kind"], "name": w["name"]} for w in read.get("workloads") or []]
            if not svc["cfg"]["workloads"] and svc["cfg"]["strategy"] == "restart":
                svc["notes"].append(f"no Deployment, StatefulSet or DaemonSet of namespace {svc['namespace']} reads "
                                    f"Secret {svc['secret']}, so nothing was restarted")
        problem = _workload_problem(svc, read.get("workloads") or []) or _companion_problem(svc, read)
        if problem:
            _fail(svc, problem, "done")
            continue
        if "companion" in read:
            svc["companion"]["exists"] = bool(read["companion"])
        svc["workload_objects"] = {
            f"{w['kind']}/{w['name']}": _workload_summary(
                w.get("object") or {}, svc["secret"] if svc["cfg"]["strategy"] == "restart" else "",
                svc.get("reloader_ann"))
            for w in read.get("workloads") or []}
        svc["step"] = "preview" if run["check_mode"] else "lock"
    _refuse_shared_prefixes(list(run["services"].values()))
    return run


_FOREIGN_MARKS = (
    ("reconcile.external-secrets.io/data-hash", "External Secrets Operator (an ExternalSecret)"),
    ("sealedsecrets.bitnami.com/managed", "Sealed Secrets (a SealedSecret)"),
    ("app.kubernetes.io/managed-by=external-secrets", "External Secrets Operator"),
    ("app.kubernetes.io/managed-by=sealed-secrets", "Sealed Secrets"),
    ("app.kubernetes.io/managed-by=vault-secrets-operator", "Vault Secrets Operator"),
    ("secrets.hashicorp.com/vso-ownerRefUID", "Vault Secrets Operator"),
)


def _foreign_owner(meta: dict) -> str:
    """The controller that writes this Secret, when its labels or annotations say so, else ''."""
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    for mark, who in _FOREIGN_MARKS:
        key, _sep, value = mark.partition("=")
        found = labels.get(key, annotations.get(key))
        if found is not None and (not value or found == value):
            return who
    return ""


# -- deciding -------------------------------------------------------------------------------------

def lookup_ids(run: dict) -> list[str]:
    """The credential ids the lookup step reads: each service's current one, and its previous one
    when a promoted rotation may have to be rolled back."""
    ids: list[str] = []
    for svc in due(run, "lookup"):
        for value in (svc["current_id"], svc["ann"].get(PREVIOUS_ID, "") if svc["phase"] == PROMOTED else ""):
            if value and value not in ids:
                ids.append(value)
    return ids


def lookup_token_hosts(run: dict) -> list[str]:
    """Services whose Secret holds no credential id: they are looked up by their token."""
    return [svc["host"] for svc in due(run, "lookup") if not svc["current_id"]]


def lookup_failure(answer: dict, key: str = "system_users") -> str:
    """Why a lookup failed as a whole, or ''. The role registers the lookups with ``failed_when: false``
    (so that one unknown credential does not fail the run), which makes Ansible record ``failed: false``
    even for a rejected admin token: a lookup that answered carries ``key``, one that failed does not.
    """
    if not answer or answer.get("skipped"):
        return ""
    if answer.get("failed") or key not in answer:
        return str(answer.get("msg") or "the lookup gave no answer")
    return ""


def token_lookup(item: dict) -> dict:
    """What a lookup by token says of one Secret's token: its user, {} when the platform refused the token
    (401, 403, 404: the token is not accepted, the service is due), or {"error": why} when the platform
    could not be asked (no answer, a server error), which fails the service instead of rotating it."""
    if not item.get("failed"):
        return item.get("system_user") or {}
    if item.get("status") in (401, 403, 404):
        return {}
    return {"error": str(item.get("msg") or "the lookup by token failed")}


def decide(run: dict, users: list[dict], by_token: dict[str, dict], now: float, error: str = "",
           token_error: str = "") -> dict:
    """Which step each service is due for, from what its Secret records and what the platform said.

    ``users``: system_users of the lookup by id; ``by_token``: {host: system_user or {}} for the
    services looked up by token; ``error``/``token_error``: why a lookup failed as a whole (the
    platform could not be asked: nothing is decided for its services, they fail).
    """
    run = _copy(run)
    known = {u.get("id"): u for u in users or []}
    for svc in due(run, "lookup"):
        cfg = svc["cfg"]
        failed = error if svc["current_id"] else (token_error or ((by_token or {}).get(svc["host"]) or {}).get("error"))
        if failed:
            _fail(svc, f"Could not look up the credential of {secret_ref(svc)} on the platform ({failed.rstrip('.')}); "
                       "nothing was changed.", "done")
            continue
        user = known.get(svc["current_id"]) if svc["current_id"] else (by_token or {}).get(svc["host"]) or {}
        user = user or {}
        if user.get("id"):
            svc["current_id"] = user["id"]
        if svc["phase"] == PROMOTED:
            previous = known.get(svc["ann"].get(PREVIOUS_ID, "")) or {}
            svc["previous_active"] = bool(previous.get("active", True)) and not previous.get("expired", False) \
                if previous else False
        days = user.get("days_remaining")
        svc["days_remaining"] = int(days) if days is not None else None
        is_due = (not user or not user.get("active", True) or bool(user.get("expired"))
                  or (days is not None and int(days) <= cfg["threshold_days"]))
        svc["due"] = is_due
        if user:
            state = f"{svc['days_remaining']} days left"
        elif svc["current_id"]:
            state = f"the platform does not know the credential {svc['current_id']}"
        else:
            state = "the token in the Secret is not accepted by the platform"
        phase = svc["phase"]
        if cfg["abort"] and phase != NONE:
            svc["action"] = "abort"
        elif cfg["abort"]:
            _finish(svc, "not due" if not is_due else "due", "nothing to abort, no rotation is in progress; " + state)
            svc["step"] = "done"
            continue
        elif phase != NONE:
            svc["action"] = "resume"
        elif is_due or cfg["force"]:
            svc["action"] = "rotate"
        elif cfg["sweep_orphans"]:
            svc["action"] = "sweep"
        else:
            _finish(svc, "not due", state)
            svc["step"] = "done"
            continue
        svc["state_text"] = state
        if svc.get("lock_holder") and not run["check_mode"]:
            _finish(svc, "skipped", f"another run holds the rotation lock ({svc['lock_holder']} until "
                                    f"{svc['ann'].get(LOCK_EXPIRES, '?')}); this run waited {cfg['lock_wait']} s "
                                    "for it to be released or to lapse, re-run once that run has finished")
            svc["step"] = "done"
        else:
            svc["step"] = "check"
    return run


# -- writing the Secrets ----------------------------------------------------------------------------

def _lock_annotations(svc: dict, run_id: str, now: float, release: bool = False) -> dict:
    if release:
        return {LOCK_HOLDER: None, LOCK_EXPIRES: None}
    return {LOCK_HOLDER: run_id, LOCK_EXPIRES: stamp(now + svc["cfg"]["lock_duration"])}


def secret_patch(svc: dict, annotations: dict, data: dict | None = None, run_id: str = "", now: float = 0.0,
                 release: bool = False) -> dict:
    """A conditional merge patch of the service's Secret: it carries the resourceVersion this run
    last saw, so it fails with 409 when anybody else changed the Secret in between (the lock's
    safety, and the fence of a run whose lock lapsed)."""
    patch: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": svc["secret"], "namespace": svc["namespace"], "resourceVersion": svc["rv"],
                     "annotations": {**annotations, **_lock_annotations(svc, run_id, now, release)}},
    }
    if data:
        patch["data"] = data
    return patch


def companion_definition(svc: dict, tokens: dict | None, clear: bool = False) -> dict:
    """The companion Secret: the pending and previous tokens, where no pod of the service mounts them."""
    ann = {ROTATION_FOR: svc["secret"]}
    if clear:
        data: dict[str, Any] = {PENDING_TOKEN: None, PREVIOUS_TOKEN: None}
        ann.update({PENDING_NAME: None, PENDING_ID: None, PENDING_FP: None})
    else:
        tokens = tokens or {}
        data = {PENDING_TOKEN: b64(tokens.get("pending", "")), PREVIOUS_TOKEN: tokens.get("current", "")}
        ann.update({PENDING_NAME: svc["new_name"], PENDING_ID: svc["new_id"], PENDING_FP: svc["new_fp"]})
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": svc["state_secret"], "namespace": svc["namespace"], "annotations": ann,
                         "labels": {"app.kubernetes.io/managed-by": "xapi.system_auth"}},
            "data": data}


def writes(run: dict, step: str, tokens: dict | None, now: float) -> list[dict]:
    """The kubernetes.core.k8s calls of a writing step: [{"cluster", "hosts", "definitions"}], one per
    cluster, each definition a conditional patch (or the companion Secret) of one service."""
    tokens = tokens or {}
    out = []
    for cluster, services in clusters_of(due(run, step)):
        definitions, hosts = [], []
        for svc in services:
            for definition in _write(svc, step, tokens.get(svc["host"]) or {}, run["run_id"], now):
                definitions.append(definition)
                hosts.append(svc["host"])
        if definitions:
            out.append({"cluster": cluster, "hosts": hosts, "definitions": definitions})
    return out


def _write(svc: dict, step: str, tok: dict, run_id: str, now: float) -> list[dict]:
    cfg, ann = svc["cfg"], svc["ann"]
    if step == "lock":
        extra: dict[str, Any] = {}
        if svc["action"] == "rotate":
            extra = {PHASE: CREATING, PENDING_NAME: svc["new_name"] or new_name(svc, now),
                     STARTED_AT: stamp(now), PREVIOUS_ID: svc["current_id"]}
        return [secret_patch(svc, extra, None, run_id, now)]
    if step == "store":
        return [companion_definition(svc, tok)]
    if step == "promote":
        marker = f"{svc['new_id']}-{compact(stamp(now))}"
        return [secret_patch(svc, {
            PHASE: PROMOTED, PREVIOUS_ID: svc["current_id"], PREVIOUS_FP: fingerprint(unb64(tok.get("current"))),
            CURRENT_ID: svc["new_id"], CURRENT_FP: svc["new_fp"], PROMOTED_AT: stamp(now), MARKER: marker,
            USED_BEFORE: svc.get("used_before") or "never", PENDING_ID: None, PENDING_FP: None,
        }, {cfg["token_key"]: b64(tok.get("pending", "")), cfg["id_key"]: b64(svc["new_id"])}, run_id, now)]
    if step == "rb_restore":
        previous_id = ann.get(PREVIOUS_ID, "")
        return [secret_patch(svc, {
            PHASE: ROLLING_BACK, ROLLBACK_REASON: (svc["error"] or "rollback")[:240],
            FAILED_ID: ann.get(CURRENT_ID, ""), FAILED_MARKER: ann.get(MARKER, ""),
            CURRENT_ID: previous_id, CURRENT_FP: ann.get(PREVIOUS_FP, ""), ROLLED_BACK_AT: stamp(now),
            MARKER: "rollback-" + ann.get(MARKER, ""),
        }, {cfg["token_key"]: previous_token(svc, tok), cfg["id_key"]: b64(previous_id)}, run_id, now)]
    if step == "clear":
        cleared: dict[str, Any] = dict.fromkeys(STATE_ANNOTATIONS)
        mode = svc["clear"]
        if mode == "release":
            return [secret_patch(svc, {}, None, run_id, now, release=True)]
        if mode == "rotated":
            cleared.update({LAST_ROTATED_AT: stamp(now), LAST_ROTATION: f"{svc['old_id']} -> {svc['new_id']}"})
        elif mode == "rolled_back":
            cleared[LAST_ROLLBACK_AT] = stamp(now)
        out = [secret_patch(svc, cleared, None, run_id, now, release=True)]
        if svc["companion"]["exists"] or svc.get("stored"):
            out.append(companion_definition(svc, None, clear=True))
        return out
    if step == "renew":
        return [secret_patch(svc, {}, None, run_id, now)]
    raise RotationError(f"step {step!r} writes nothing")


def previous_token(svc: dict, tok: dict) -> str:
    """The old token (base64) a rollback restores: the Secret's own when this run promoted, else the
    companion's copy."""
    return (tok.get("current") if svc.get("promoted_here") else tok.get("previous")) or ""


def _answers(answer: dict, count: int) -> list[dict]:
    """kubernetes.core.k8s answers: one definition gives the object itself, several result.results."""
    if not isinstance(answer, dict):
        return [{}] * count
    result = answer.get("result")
    if isinstance(result, dict) and isinstance(result.get("results"), list):
        return list(result["results"]) + [{}] * (count - len(result["results"]))
    if count == 1 and isinstance(result, dict) and result.get("metadata"):
        return [answer]
    return [answer] * count


def _k8s_error(entry: dict) -> tuple[str, str]:
    """(reason, one sentence) of a failed kubernetes.core answer."""
    error = entry.get("error") or {}
    reason = error.get("reason") or entry.get("reason") or ""
    text = str(error.get("msg") or entry.get("msg") or "no answer")
    found = re.search(r'"message": ?"(.*?)", ?"reason"', text)
    if found:
        text = found.group(1).replace("\\", "")
    else:
        text = (text.splitlines() or ["no answer"])[0]
    return reason, text


def fold_write(run: dict, step: str, calls: list[dict], results: list[dict], now: float) -> dict:
    """Apply the answers of a writing step. ``calls`` is what ``writes`` returned, ``results`` the
    registered answer of each call, in order."""
    run = _copy(run)
    services = run["services"]
    outcome: dict[str, tuple[bool, str, str]] = {}
    for call, answer in zip(calls, results, strict=False):
        for i, (host, entry) in enumerate(zip(call["hosts"], _answers(answer, len(call["hosts"])), strict=False)):
            metadata = ((entry or {}).get("result") or {}).get("metadata")
            definition = call["definitions"][i]
            is_main = definition["metadata"]["name"] == services[host]["secret"]
            if metadata and is_main:
                services[host]["rv"] = metadata.get("resourceVersion", "")
            if metadata and is_main and step != "clear":  # the outcome still needs what the state said
                services[host]["ann"] = {k: v for k, v in (metadata.get("annotations") or {}).items()
                                         if k.startswith(A)}
            if not metadata and outcome.get(host, (True,))[0]:
                reason, text = _k8s_error(entry or {})
                target = definition["metadata"]
                where = "" if is_main else f"Secret {target['namespace']}/{target['name']}: "
                outcome[host] = (False, reason, where + text)
            outcome.setdefault(host, (True, "", ""))
    for svc in due(run, step):
        ok, reason, text = outcome.get(svc["host"], (False, "", "the write gave no answer"))
        _after_write(svc, step, ok, reason, text, now)
    return run


def _conflict(svc: dict) -> str:
    return (f"{secret_ref(svc)} was changed by someone else during the rotation (another run took over a "
            "lapsed lock, or a manual edit); this run stops without touching it further, re-run to resume "
            "from the state it records.")


def _after_write(svc: dict, step: str, ok: bool, reason: str, text: str, now: float) -> None:
    if step == "lock":
        if ok:
            svc["step"] = {"abort": "discard_list" if svc["phase"] in (CREATING, PENDING) else "rb_restore",
                           "sweep": "sweep_list"}.get(svc["action"]) or _resume_step(svc)
            if svc["action"] == "abort" and svc["phase"] == ROLLING_BACK:
                svc["step"] = "rb_restart"
            if svc["action"] == "rotate":
                svc["new_name"] = svc["ann"].get(PENDING_NAME, "")
                svc["old_id"] = svc["current_id"]
            elif svc["action"] in ("resume", "abort"):
                svc["old_id"] = svc["ann"].get(PREVIOUS_ID, svc["current_id"])
                svc["new_name"] = svc["new_name"] or svc["ann"].get(PENDING_NAME, "")
            if svc["action"] == "abort" and svc["phase"] in (PROMOTED,):
                svc["error"] = "aborted by the operator (credential_rotation_abort)"
        elif reason == "Conflict":
            _finish(svc, "skipped", "another run took the rotation lock at the same moment")
            svc["step"] = "done"
        else:
            _fail(svc, f"{secret_ref(svc)} could not be written ({text}); check that the identity may patch it.",
                  "done")
        return
    if ok:
        svc["step"] = {"store": "verify", "promote": "restart", "rb_restore": "rb_restart",
                       "clear": "done"}[step]
        if step == "store":
            svc["stored"] = True
        if step == "promote":
            svc["phase"] = PROMOTED
            svc["promoted_here"] = True
            svc["old_id"] = svc["current_id"]
            svc["current_id"] = svc["new_id"]
        if step == "rb_restore":
            svc["phase"] = ROLLING_BACK
        if step == "clear":
            _conclude(svc)
        return
    written = "" if reason == "Conflict" else (f"{secret_ref(svc)} could not be written ({text}); "
                                               "check that the identity may patch it.")
    message = _conflict(svc) if reason == "Conflict" else written
    if step == "store":
        # The new credential never reached a workload: deactivate it, clear the state.
        _fail(svc, f"Could not store the new credential in Secret {svc['namespace']}/{svc['state_secret']} "
                   f"({text}); check that the identity may create and patch it (deploy/rbac.yml).", "deactivate")
        svc["to_deactivate"] = [svc["new_id"]]
        svc["clear"] = "aborted"
    elif step == "promote":
        if reason == "Conflict":
            _fail(svc, message, "done")
        else:
            _fail(svc, message, "deactivate")
            svc["to_deactivate"] = [svc["new_id"]]
            svc["clear"] = "aborted"
    elif step == "rb_restore":
        _fail(svc, message, "done")
        svc["cleanup_failed"] = True
    elif step == "clear":
        if svc["status"] != "failed":
            _conclude(svc)
        svc["status"] = "failed"
        if text.startswith("Secret ") and svc["rv"]:
            # Only the companion: the rotation is over, but a copy of the tokens is left in it.
            svc["message"] = (svc["message"] + "; " if svc["message"] else "") + (
                f"but the companion could not be emptied ({text}); delete its keys by hand, or the next rotation "
                "overwrites them")
        else:
            svc["message"] = (svc["message"] + "; " if svc["message"] else "") + \
                f"but the rotation state could not be cleared from {secret_ref(svc)} ({text}); a re-run clears it"
        svc["step"] = "done"


def _resume_step(svc: dict) -> str:
    return {NONE: "create", CREATING: "discard_list", PENDING: "verify", PROMOTED: "restart",
            ROLLING_BACK: "rb_restart"}[svc["phase"]]


# -- the platform steps -----------------------------------------------------------------------------

def create_retries(run: dict) -> int:
    """The platform client's retries for the create: credential_rotation_create_attempts, less one."""
    return max([svc["cfg"]["create_attempts"] for svc in due(run, "create")] or [1]) - 1


def create_requests(run: dict) -> list[dict]:
    return [{"name": svc["new_name"], "description": svc["cfg"]["description"],
             "expires_in_days": svc["cfg"]["expires_in_days"]} for svc in due(run, "create")]


def fold_create(run: dict, answer: dict) -> tuple[dict, dict]:
    """Apply system_user's answer (``users`` list option); returns (run, {host: new token})."""
    run = _copy(run)
    results = (answer or {}).get("results") or []
    new_tokens: dict[str, str] = {}
    for i, svc in enumerate(due(run, "create")):
        item = results[i] if i < len(results) else {}
        token = item.get("token") or ""
        user = item.get("system_user") or {}
        if token and user.get("id") and item.get("name", user.get("name")) == svc["new_name"]:
            new_tokens[svc["host"]] = token
            svc.update(new_id=user["id"], new_fp=item.get("token_fingerprint") or fingerprint(token), step="store")
            continue
        why = item.get("msg") or (answer or {}).get("msg") or "the platform gave no answer"
        if item and not item.get("failed") and not token:
            why = "the API answered without a token: an active user of that name already existed"
        svc["create_error"] = why
        if not item or not can_list(answer):
            # Nobody can say whether the platform created it (no answer, or a platform that cannot
            # list users): keep the recorded name, so that the next run creates under the same name,
            # which the platform refuses (409) while a user of that name is active.
            _fail(svc, f"Could not create the new system user {svc['new_name']} ({why.rstrip('.')}); if the "
                       "platform created it, its token is lost: deactivate it by id in the platform's console, "
                       "then re-run, and the rotation resumes under the same name.", "clear")
            svc["clear"] = "release"
            continue
        _fail(svc, f"Could not create a new system user ({why.rstrip('.')}); no new credential was left "
                   "active and the current one is untouched.", "deactivate" if user.get("id") else "clear")
        svc["to_deactivate"] = [user["id"]] if user.get("id") and not token else []
        svc["clear"] = "aborted"
    return run, new_tokens


def verify_requests(run: dict, tokens: dict) -> list[str]:
    return [(tokens.get(svc["host"]) or {}).get("pending", "") for svc in due(run, "verify")]


def verify_timeout(run: dict) -> int:
    return max([svc["cfg"]["verify_timeout"] for svc in due(run, "verify")] or [1])


def fold_verify(run: dict, answer: dict) -> dict:
    """system_user_info's answer to ``tokens`` with verify_access (items in the order given)."""
    run = _copy(run)
    results = (answer or {}).get("results") or []
    for i, svc in enumerate(due(run, "verify")):
        item = results[i] if i < len(results) else {}
        user = item.get("system_user") or {}
        if item.get("access_verified") and user.get("id") == svc["new_id"]:
            svc["used_before"] = user.get("last_used_at") or "never"
            svc["step"] = "promote"
            continue
        why = item.get("msg") or (answer or {}).get("msg") or "access not verified"
        _fail(svc, f"The new credential {svc['new_id']} was not accepted by the API within "
                   f"{svc['cfg']['verify_timeout']} s ({why}).", "deactivate")
        svc["to_deactivate"] = [svc["new_id"]]
        svc["clear"] = "aborted"
    return run


def usage_ids(run: dict) -> list[str]:
    return [svc["current_id"] for svc in due(run, "usage") if svc["cfg"]["verify_usage"]]


def usage_unused(svc: dict, user: dict | None) -> bool:
    """The rule of the usage check: the platform saw the new credential used after the verification."""
    last = (user or {}).get("last_used_at")
    return last in (None, "") or last == (svc["ann"].get(USED_BEFORE) or svc.get("used_before"))


def list_needed(run: dict, step: str) -> bool:
    return bool(due(run, step))


def orphan_pattern(svc: dict) -> re.Pattern:
    return re.compile("^" + re.escape(svc["cfg"]["name_prefix"]) + r"-[0-9]{14}(-[0-9]+)?$")


def orphans(svc: dict, active_users: list[dict]) -> list[str]:
    """Active users with this service's name pattern and description that its Secret does not
    reference: created by a run that died before it could store the token (or a lost create)."""
    keep = {svc["current_id"], svc.get("new_id") or "", svc.get("old_id") or "", svc["ann"].get(PREVIOUS_ID, "")}
    pattern = orphan_pattern(svc)
    return [u["id"] for u in active_users
            if u.get("active", True) and u.get("id") not in keep and pattern.match(u.get("name") or "")
            and (u.get("description") in (None, svc["cfg"]["description"]))]


def fold_list(run: dict, step: str, answer: dict) -> dict:
    """system_user_info's list of active users, for discarding a lost create or sweeping orphans."""
    run = _copy(run)
    listed = (answer or {}).get("system_users")
    for svc in due(run, step):
        if listed is None and not can_list(answer):
            if step == "discard_list" and svc["action"] == "abort":
                # Nothing can look for it; the record goes, and the operator is told what may be left.
                svc["notes"].append(f"the platform cannot list system users, so if the interrupted run created "
                                    f"{svc['new_name']}, deactivate it by id in the platform's console")
                svc["to_deactivate"] = [svc["new_id"]] if svc["phase"] == PENDING else []
                svc["step"] = "deactivate"
                svc["clear"] = "aborted"
            elif step == "discard_list":
                # Create again under the recorded name: the platform refuses it (409) while the user
                # the interrupted run may have created is active, and the create then says so.
                svc["notes"].append(f"the platform cannot list system users, so {svc['new_name']} was created "
                                    "again under its recorded name")
                svc["step"] = "create"
            else:
                if not any("list route" in n for n in svc["notes"]):
                    svc["notes"].append("the orphan sweep needs the platform's list route, which it does not "
                                        "serve, and was skipped")
                svc["to_deactivate"] = _old_credential(svc)
                svc["step"] = "deactivate"
            continue
        if listed is None:
            text = (answer or {}).get("msg") or "no answer"
            if step == "discard_list":
                _fail(svc, f"Could not look for the system user {svc['new_name']} that an interrupted run may have "
                           f"created ({text}); the Secret still records phase creating and a re-run resumes there.",
                      "clear")
                svc["clear"] = "release"
            else:
                svc["notes"].append(f"the orphan sweep was skipped ({text})")
                svc["to_deactivate"] = _old_credential(svc)
                svc["step"] = "deactivate"
            continue
        if step == "discard_list":
            found = [u["id"] for u in listed if u.get("name") == svc["new_name"] and u.get("active", True)
                     and u.get("id") != svc["current_id"]]
            svc["to_deactivate"] = found
            svc["step"] = "discard"
        else:
            found = orphans(svc, listed)
            svc["swept"] = found
            svc["to_deactivate"] = _old_credential(svc) + [i for i in found if i not in _old_credential(svc)]
            svc["step"] = "deactivate"
    return run


def can_list(answer: dict | None) -> bool:
    """Whether a module's answer leaves the platform's list route possible (False only when the
    module found out that the platform has none)."""
    return ((answer or {}).get("capabilities") or {}).get("list") is not False


def _old_credential(svc: dict) -> list[str]:
    """The credential a finished rotation retires (none for a sweep on its own)."""
    old = svc.get("old_id") or ""
    return [old] if svc["action"] != "sweep" and old and old != svc["current_id"] else []


def deactivate_ids(run: dict, step: str) -> list[str]:
    ids: list[str] = []
    for svc in due(run, step):
        for i in svc["to_deactivate"]:
            if i and i not in ids:
                ids.append(i)
    return ids


def fold_deactivate(run: dict, step: str, answer: dict) -> dict:
    """system_user_deactivate's answer to ``ids``."""
    run = _copy(run)
    results = {r.get("id"): r for r in (answer or {}).get("results") or []}
    for svc in due(run, step):
        failed = [i for i in svc["to_deactivate"] if i and (results.get(i) is None or results[i].get("failed"))]
        if failed and answer:
            text = (results.get(failed[0]) or {}).get("msg") or answer.get("msg") or "no answer"
        else:
            text = ""
        if step == "discard":
            if failed:
                _fail(svc, f"Could not deactivate {', '.join(failed)}, created by an interrupted run under the name "
                           f"{svc['new_name']} ({text}); the Secret still records phase creating and a re-run "
                           "resumes there.", "clear")
                svc["clear"] = "release"
            else:
                svc["discarded"] = list(svc["to_deactivate"])
                svc["to_deactivate"] = []
                if svc["action"] == "abort":
                    svc["to_deactivate"] = [svc["new_id"]] if svc["phase"] == PENDING else []
                    svc["step"] = "deactivate"
                    svc["clear"] = "aborted"
                else:
                    svc["step"] = "create"
            continue
        if failed:
            old = svc.get("old_id")
            if svc["status"] == "failed":
                svc["undeactivated"] = f"{', '.join(failed)} could not be deactivated ({text}); deactivate it by hand"
            elif old in failed:
                _fail(svc, f"Could not deactivate the old credential {old} ({text}); the new credential is in place "
                           "and a re-run finishes the rotation.", "clear")
                svc["clear"] = "release"
            else:
                svc["notes"].append(f"could not deactivate orphaned credential(s) {', '.join(failed)} ({text})")
                svc["swept"] = [i for i in svc.get("swept", []) if i not in failed]
        if svc["step"] == step:
            if not svc["clear"]:
                svc["clear"] = "rotated" if svc["action"] != "sweep" else "release"
            svc["step"] = "clear"
    return run


# -- workloads ------------------------------------------------------------------------------------

def restart_calls(run: dict, step: str) -> list[dict]:
    """kubernetes.core.k8s patches of the pod templates: [{"cluster", "hosts", "definitions"}].

    The marker is the one the Secret records, so a resumed run patches the same value (no second
    restart), and pods created from the new template are known to hold the new token.
    """
    out = []
    for cluster, services in clusters_of(due(run, step)):
        definitions, hosts = [], []
        for svc in services:
            if svc["cfg"]["strategy"] != "restart":
                continue
            marker = svc["ann"].get(MARKER, "")
            for w in svc["cfg"]["workloads"]:
                if step == "rb_restart" and w.get("gone"):
                    continue
                if reloaded_by(svc, w):
                    continue  # its controller restarts it when the Secret's data changes; the wait checks that
                definitions.append(restart_definition(svc["namespace"], w, marker))
                hosts.append(svc["host"])
        if definitions:
            out.append({"cluster": cluster, "hosts": hosts, "definitions": definitions})
    return out


def restart_definition(namespace: str, workload: dict, marker: str) -> dict:
    """The merge patch that restarts a workload: the pod-template annotation xapi.io/rotated-at."""
    return {"apiVersion": KINDS[workload["kind"]], "kind": workload["kind"],
            "metadata": {"name": workload["name"], "namespace": namespace},
            "spec": {"template": {"metadata": {"annotations": {ROTATED_AT: marker}}}}}


def reloaded_by(svc: dict, workload: dict) -> str:
    """The annotation by which a Reloader-style controller restarts this workload, or ''."""
    return ((svc.get("workload_objects") or {}).get(f"{workload['kind']}/{workload['name']}") or {}).get(
        "reloader", "")


def fold_restart(run: dict, step: str, calls: list[dict], results: list[dict]) -> dict:
    run = _copy(run)
    services = run["services"]
    failures: dict[str, list[str]] = {}
    for call, answer in zip(calls, results, strict=False):
        for i, (host, entry) in enumerate(zip(call["hosts"], _answers(answer, len(call["hosts"])), strict=False)):
            if not ((entry or {}).get("result") or {}).get("metadata"):
                d = call["definitions"][i]
                text = _k8s_error(entry or {})[1]
                if "not found" in text.lower() or "404" in text:
                    text = "it no longer exists"
                failures.setdefault(host, []).append(f"{d['kind']} {d['metadata']['namespace']}/"
                                                     f"{d['metadata']['name']}: {text}")
                for w in services[host]["cfg"]["workloads"]:
                    if w["name"] == d["metadata"]["name"] and w["kind"] == d["kind"]:
                        w["gone"] = text == "it no longer exists"
    for svc in due(run, step):
        bad = failures.get(svc["host"])
        if step == "restart":
            if bad:
                _fail(svc, f"Could not restart {bad[0]}.", "rb_restore")
            else:
                svc["step"] = "wait"
        else:
            if bad:
                svc["rollback_notes"].append("could not restart " + "; ".join(bad))
            svc["step"] = "rb_wait"
    return run


def wait_requests(run: dict, step: str) -> list[dict]:
    """What the rotation_observe action waits for at a workloads step, per service."""
    out = []
    for svc in due(run, step):
        cfg = svc["cfg"]
        rollback = step == "rb_wait"
        marker = svc["ann"].get(FAILED_MARKER if rollback else MARKER, "")
        out.append({
            "host": svc["host"], "cluster": svc["cluster"], "namespace": svc["namespace"],
            "strategy": cfg["strategy"], "workloads": [w for w in cfg["workloads"] if not w.get("gone")],
            "marker": marker, "rollback": rollback, "promoted_at": svc["ann"].get(PROMOTED_AT, ""),
            "rolled_back_at": svc["ann"].get(ROLLED_BACK_AT, "") if rollback else "",
            "rollout_timeout": cfg["rollout_timeout"], "drain_timeout": cfg["drain_timeout"],
            "reload_window": cfg["reload_window"], "poll_interval": cfg["poll_interval"],
            "reloader_grace": cfg["reloader_grace"], "restart_marker": svc["ann"].get(MARKER, ""),
        })
    return out


def fold_wait(run: dict, step: str, verdicts: dict[str, dict]) -> dict:
    """Apply the rotation_observe action's verdicts of a workloads wait ({host: verdict})."""
    run = _copy(run)
    for svc in due(run, step):
        v = verdicts.get(svc["host"]) or {"state": "failed", "phase": "rollout", "why": "the wait gave no answer"}
        if v.get("notes"):
            svc["notes"] += v["notes"]
        for ref in v.get("reloader_missed") or []:
            svc["notes"].append(f"restarted {ref} itself: its Reloader annotation asked for a restart, but none "
                                f"started within {svc['cfg']['reloader_grace']} s of the Secret's change")
        if v.get("unlisted") and step == "wait" and v["state"] == "done":
            svc["notes"].append(f"waited for pod(s) {', '.join(v['unlisted'])}, which read the Secret but belong to "
                                "no restarted workload, to end before deactivating the old credential")
        if v.get("rv"):
            svc["rv"] = v["rv"]
        if v.get("conflict"):
            _fail(svc, _conflict(svc), "done")
            continue
        if step == "rb_wait":
            if v["state"] != "done":
                if v["phase"] == "drain":
                    _fail(svc, "", "clear")
                    svc["rollback_unfinished"] = (
                        f"the Secret holds the previous credential {svc['ann'].get(CURRENT_ID, '')} again (still "
                        f"active), but pods {v['why']} still hold the new credential {svc['ann'].get(FAILED_ID, '')} "
                        f"after {svc['cfg']['drain_timeout']} s, so it stays active; a re-run finishes the rollback")
                    svc["clear"] = "release"
                    continue
                svc["rollback_notes"].append(v["why"].replace("the rollout of", "the rollback rollout of", 1))
            svc["to_deactivate"] = [svc["ann"].get(FAILED_ID, "")]
            svc["clear"] = "rolled_back"
            svc["step"] = "deactivate"
            continue
        if v["state"] == "done":
            svc["step"] = "usage"
        elif v["phase"] == "drain":
            _fail(svc, f"Pods started before the restart ({v['why']}) were still running or terminating after "
                       f"{svc['cfg']['drain_timeout']} s, so the old credential {svc['ann'].get(PREVIOUS_ID, '')} "
                       "stays active; the new credential is in place and a re-run finishes the rotation.", "clear")
            svc["clear"] = "release"
        else:
            why = v.get("why") or "the rollout failed"
            _fail(svc, v.get("sentence") or (why[0].upper() + why[1:] + "."), "rb_restore")
    return run


def fold_usage(run: dict, verdicts: dict[str, dict]) -> dict:
    """Apply the usage wait's verdicts: {host: {"state": done|failed|skipped, "why"}}."""
    run = _copy(run)
    for svc in due(run, "usage"):
        if not svc["cfg"]["verify_usage"]:
            svc["step"] = "health"
            continue
        v = verdicts.get(svc["host"]) or {"state": "failed", "why": "no answer"}
        if v.get("rv"):
            svc["rv"] = v["rv"]
        if v.get("conflict"):
            _fail(svc, _conflict(svc), "done")
        elif v["state"] == "done":
            svc["step"] = "health"
        elif v["state"] == "skipped":
            svc["notes"].append(v["why"])
            svc["step"] = "health"
        else:
            _fail(svc, f"The platform saw no request with the new credential {svc['current_id']} within "
                       f"{svc['cfg']['usage_timeout']} s after the {svc['cfg']['strategy']}, so the workloads may "
                       "still use the old one (set credential_rotation_verify_usage: false for services that "
                       "call the API rarely).",
                  "rb_restore")
    return run


def health_requests(run: dict) -> list[dict]:
    return [{"host": svc["host"], "url": svc["cfg"]["health_url"], "status": svc["cfg"]["health_status"],
             "timeout": svc["cfg"]["health_timeout"], "validate_certs": svc["cfg"]["health_validate_certs"],
             "poll_interval": svc["cfg"]["poll_interval"]}
            for svc in due(run, "health") if svc["cfg"]["health_url"]]


def fold_health(run: dict, verdicts: dict[str, dict]) -> dict:
    run = _copy(run)
    for svc in due(run, "health"):
        if not svc["cfg"]["health_url"]:
            svc["step"] = "sweep_list"
            continue
        v = verdicts.get(svc["host"]) or {"state": "failed", "status": -1}
        if v.get("rv"):
            svc["rv"] = v["rv"]
        if v.get("conflict"):
            _fail(svc, _conflict(svc), "done")
        elif v["state"] == "done":
            svc["step"] = "sweep_list"
        else:
            status = v.get("status") or -1
            last = f"last answer: HTTP {status}" if status > 0 else "no answer"
            _fail(svc, f"The service's health URL did not answer {' or '.join(map(str, svc['cfg']['health_status']))} "
                       f"within {svc['cfg']['health_timeout']} s after the {svc['cfg']['strategy']} ({last}).",
                  "rb_restore")
    return run


def route_rollbacks(run: dict) -> dict:
    """Before the rollback's restore: a service whose previous credential is no longer active keeps
    the new one in place (restoring it would break the service) and ends failed."""
    run = _copy(run)
    for svc in due(run, "rb_restore"):
        if svc.get("previous_active", True) is False:
            svc["message"] = (svc["message"].rstrip(".") + "; not rolled back, because the previous credential "
                              f"{svc['ann'].get(PREVIOUS_ID, '')} is no longer active (an earlier run had deactivated "
                              f"it); the new credential {svc['ann'].get(CURRENT_ID, '')} stays in the Secret and a "
                              "re-run finishes the rotation")
            svc["kept"] = True
            svc["clear"] = "release"
            svc["step"] = "clear"
    return run


# -- outcomes -------------------------------------------------------------------------------------

def _conclude(svc: dict) -> None:
    """The outcome of a service whose state was cleared."""
    mode = svc["clear"]
    if mode == "rotated":
        text = (f"{svc.get('old_id') or 'unknown'} -> {svc['new_id'] or svc['current_id']}, new credential expires "
                f"in {svc['cfg']['expires_in_days']} days")
        if svc["action"] == "resume":
            text += ", resumed an interrupted rotation"
        swept = svc.get("swept") or []
        if swept:
            text += f", deactivated {len(swept)} orphaned credential(s): {', '.join(swept)}"
        _finish(svc, "rotated", text)
    elif mode == "release" and svc["action"] == "sweep" and svc["status"] != "failed":
        swept = svc.get("swept") or []
        text = svc.get("state_text", "")
        if swept:
            text += f", deactivated {len(swept)} orphaned credential(s): {', '.join(swept)}"
        _finish(svc, "not due", text or "no orphaned credentials")
    elif mode == "rolled_back":
        summary = (f"rolled back: the Secret holds the previous credential {svc['ann'].get(CURRENT_ID, '')} again "
                   f"(still active)")
        if svc["cfg"]["strategy"] == "restart":
            summary += ", the workloads were restarted"
        for note in svc["rollback_notes"]:
            summary += f" but {note}" if "rollout" in note else f"; {note}"
        if svc.get("undeactivated"):
            summary += f", but the new credential {svc['undeactivated']}"
        else:
            summary += f", and the new credential {svc['ann'].get(FAILED_ID, '')} was deactivated"
        if svc["action"] == "abort":
            _finish(svc, "aborted", summary)
        elif svc["error"]:
            _finish(svc, "failed", f"{svc['error']}; {summary}")
        else:
            reason = svc["ann"].get(ROLLBACK_REASON) or "no reason recorded"
            _finish(svc, "failed", f"finished the rollback of an earlier failed rotation ({reason}): {summary}; "
                                   "nothing was rotated")
    elif mode == "aborted":
        if svc["action"] == "abort":
            what = svc["new_id"] or svc["new_name"] or "?"
            _finish(svc, "aborted", f"the interrupted rotation was discarded, the new credential {what} is inactive "
                                    "and the current one untouched")
        elif svc.get("undeactivated"):
            _finish(svc, "failed", f"{svc['error']}; the current credential is untouched, but the new credential "
                                   f"{svc['undeactivated']}")
        else:
            _finish(svc, "failed", f"{svc['error']}; nothing was changed: the new credential was deactivated and "
                                   "the current one is untouched" if svc.get("new_id") else svc["message"])
    elif mode == "release" and svc["status"] == "failed":
        if svc.get("rollback_unfinished"):
            svc["message"] = f"{svc['error']}; {svc['rollback_unfinished']}" if svc["error"] else \
                svc["rollback_unfinished"]
        elif not svc.get("kept") and svc["phase"] and "re-run" not in svc["message"]:
            svc["message"] = (svc["message"].rstrip(".") + f"; the Secret still records phase {svc['phase']} and a "
                              "re-run resumes from there")


def conclude_all(run: dict) -> dict:
    """Final words for every service that ended without its state being cleared (and its notes)."""
    run = _copy(run)
    for svc in run["services"].values():
        if svc["step"] not in ("done", "clear") and not svc["status"]:
            _finish(svc, "failed", f"it stopped before the step {svc['step']} (this is a bug; please report it)")
        if svc.get("cleanup_failed"):
            svc["message"] = (svc["message"].rstrip(".") + f"; the cleanup failed too; the Secret records phase "
                              f"{svc['phase'] or 'none'}, re-run to resume or set credential_rotation_abort: true")
        if svc["notes"] and svc["status"] in ("rotated", "not due", "aborted", "skipped", "failed"):
            extra = "; ".join(n for n in svc["notes"] if n not in svc["message"])
            if extra:
                svc["message"] = f"{svc['message']}; {extra}" if svc["message"] else extra
        svc["step"] = "done"
    return run


def fold_audit(run: dict, results: list[dict]) -> dict:
    """A service whose audit record could not be written fails, though it was rotated."""
    run = _copy(run)
    unwritten = {r.get("item", {}).get("key"): (r.get("stderr") or r.get("msg") or "").strip()
                 for r in results or [] if r.get("rc", 0) != 0}
    for svc in run["services"].values():
        path = (svc.get("cfg") or {}).get("audit_log")
        if path in unwritten and svc["status"] in ("rotated", "failed", "aborted"):
            was = "it was rotated, but " if svc["status"] == "rotated" else ""
            if was:
                svc["message"] += (f"; it was rotated, but its audit record could not be written to {path} "
                                   f"({unwritten[path]})")
            else:
                svc["message"] += f"; its audit record could not be written to {path} ({unwritten[path]})"
            svc["status"] = "failed"
    return run


def fold(run: dict, step: str, answer: Any = None, extra: Any = None, now: float = 0.0) -> dict:
    """The run after a step, from what the step's call answered (``extra``: the lookup by token's
    answer, beside the lookup by id's). An answer of a call that was not made (nothing to send) is
    ``{"skipped": True}`` or ``None``. The rotation_observe action folds the answers of the steps it
    makes with this; the role's ``_rotation_fold`` filter folds the others (and the tests) with it."""
    if step == "read":
        return inspect(run, (answer or {}).get("reads") or {}, now)[0]
    if step == "lookup":
        answer, extra = answer or {}, extra or {}
        hosts = lookup_token_hosts(run)
        items = extra.get("results") or []
        by_token = {host: token_lookup(item) for host, item in zip(hosts, items, strict=False)}
        return decide(run, answer.get("system_users") or [], by_token, now, lookup_failure(answer),
                      lookup_failure(extra, "results"))
    if step == "check":
        return inspect_more(run, (answer or {}).get("reads") or {})
    if step == "preview":
        return preview(run, now)[0]
    if step in ("lock", "store", "promote", "rb_restore", "clear"):
        results = (answer or {}).get("results") or []
        return fold_write(run, step, [r.get("item") for r in results], results, now)
    if step in ("restart", "rb_restart"):
        results = (answer or {}).get("results") or []
        return fold_restart(run, step, [r.get("item") for r in results], results)
    if step == "create":
        return fold_create(run, answer or {})[0]
    if step == "verify":
        return fold_verify(run, answer or {})
    if step in ("discard_list", "sweep_list"):
        return fold_list(run, step, answer or {})
    if step in ("discard", "deactivate"):
        # Only an answer with results says which ids it deactivated (a call not made has none).
        return fold_deactivate(run, step, answer if "results" in (answer or {}) else {})
    if step in ("wait", "rb_wait"):
        return fold_wait(run, step, (answer or {}).get("verdicts") or {})
    if step == "usage":
        return fold_usage(run, (answer or {}).get("verdicts") or {})
    if step == "health":
        return fold_health(run, (answer or {}).get("verdicts") or {})
    if step == "rollback":
        return route_rollbacks(run)
    if step == "audited":
        return fold_audit(run, (answer or {}).get("results") or [])
    if step == "end":
        return conclude_all(run)
    raise RotationError(f"step {step!r} has no fold")

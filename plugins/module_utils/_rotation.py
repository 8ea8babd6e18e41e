# -*- coding: utf-8 -*-
# Copyright: (c) 2026, xapi.system_auth contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The credential rotation's rules, as pure functions (no I/O, no clock: ``now`` is an argument).

The role ``credential_rotation`` runs one step at a time for every service of the run: a module call
(or a kubernetes.core call, or a read through the ``rotation_observe`` action) for all services due
for that step, then one fold of the answers through the filters in ``plugins/filter/rotation.py``,
which hand off to the functions here. So every rule of the rotation exists once, here, with unit
tests in ``tests/unit/test_rotation_rules.py``.

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

import base64
import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any

# -- names ------------------------------------------------------------------------------------

A = "xapi.io/"
PHASE = A + "rotation-phase"
STARTED_AT = A + "rotation-started-at"
PENDING_NAME = A + "pending-name"
PENDING_ID = A + "pending-id"
PENDING_FP = A + "pending-fingerprint"
PREVIOUS_ID = A + "previous-id"
PREVIOUS_FP = A + "previous-fingerprint"
CURRENT_ID = A + "current-id"
CURRENT_FP = A + "current-fingerprint"
PROMOTED_AT = A + "promoted-at"
MARKER = A + "restart-marker"
USED_BEFORE = A + "used-before"
FAILED_ID = A + "failed-id"
FAILED_MARKER = A + "failed-marker"
ROLLBACK_REASON = A + "rollback-reason"
LOCK_HOLDER = A + "rotation-lock-holder"
LOCK_EXPIRES = A + "rotation-lock-expires-at"
LAST_ROTATED_AT = A + "last-rotated-at"
LAST_ROTATION = A + "last-rotation"
LAST_ROLLBACK_AT = A + "last-rollback-at"
ROLLED_BACK_AT = A + "rolled-back-at"
ROTATION_FOR = A + "rotation-for"
# The pod-template annotation a restart sets; pods created from that template carry it.
ROTATED_AT = A + "rotated-at"

# The annotations that describe a rotation in progress: cleared (null) when it ends.
STATE_ANNOTATIONS = (PHASE, STARTED_AT, PENDING_NAME, PENDING_ID, PENDING_FP, PREVIOUS_ID, PREVIOUS_FP,
                     CURRENT_ID, CURRENT_FP, PROMOTED_AT, MARKER, USED_BEFORE, FAILED_ID, FAILED_MARKER,
                     ROLLBACK_REASON, ROLLED_BACK_AT)
LOCK_ANNOTATIONS = (LOCK_HOLDER, LOCK_EXPIRES)

# Keys of the companion Secret.
PENDING_TOKEN = "pending-token"
PREVIOUS_TOKEN = "previous-token"

# Phases as the Secret's annotation records them; "pending" is derived: phase creating, and the
# companion Secret holds the token of the recorded name.
NONE, CREATING, PENDING, PROMOTED, ROLLING_BACK = "", "creating", "pending", "promoted", "rolling-back"
PHASES = (NONE, CREATING, PENDING, PROMOTED, ROLLING_BACK)

# The steps, in the order the role runs them. A fold only ever moves a service to a later step,
# so one pass through this table serves a fresh rotation, a resumed one, an abort and a rollback.
STEPS = ("read", "lookup", "preview", "lock", "discard_list", "discard", "create", "store", "verify",
         "promote", "restart", "wait", "usage", "health", "rb_restore", "rb_restart", "rb_wait",
         "sweep_list", "deactivate", "clear", "done")

KINDS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1"}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
V = "credential_rotation_"


class RotationError(Exception):
    """An input the rules cannot work with (a bug in the caller, not an operator's mistake)."""


# -- small helpers ----------------------------------------------------------------------------

def fingerprint(token: str) -> str:
    """The only form of a token that may appear anywhere: 8 hex characters of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(value: str | None) -> str:
    if not value:
        return ""
    try:
        return base64.b64decode(value).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return ""


def stamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime(TIME_FORMAT)


def parse_stamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def compact(value: str) -> str:
    """Marker-safe time: 20261202T073450 -> 20261202073450."""
    return re.sub(r"[^0-9]", "", value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def secret_ref(svc: dict) -> str:
    return f"Secret {svc['namespace']}/{svc['secret']}"


def workload_ref(svc: dict, workload: dict) -> str:
    return f"{workload['kind']} {svc['namespace']}/{workload['name']}"


# -- inputs -------------------------------------------------------------------------------------

# (variable, minimum) for the numbers the argument spec can only call integers.
_MINIMUMS = (("create_attempts", 1), ("verify_timeout", 1), ("rollout_timeout", 1), ("drain_timeout", 0),
             ("poll_interval", 1), ("reload_interval", 0), ("kubelet_sync_delay", 0), ("usage_timeout", 1),
             ("health_timeout", 1), ("lock_duration", 30), ("lock_wait", 0))


def workloads_of(inputs: dict) -> tuple[list[dict], list[str]]:
    """The workloads a service names: credential_rotation_workloads, else the deployments shorthand."""
    errors: list[str] = []
    given = inputs.get(V + "workloads")
    if given in (None, "", []):
        names = inputs.get(V + "deployments") or []
        if isinstance(names, str):  # the argument spec takes "a, b" for a list, as Ansible does
            names = [n.strip() for n in names.split(",") if n.strip()]
        given = [{"kind": "Deployment", "name": name} for name in names]
        source = V + "deployments"
    else:
        source = V + "workloads"
    out: list[dict] = []
    if not isinstance(given, list):
        return [], [f"{source} must be a list of {{kind, name}}; for example [{{kind: Deployment, name: api}}]."]
    for entry in given:
        if isinstance(entry, str):
            entry = {"kind": "Deployment", "name": entry}
        if not isinstance(entry, dict):
            errors.append(f"{source} has an entry {entry!r} that is not {{kind, name}}; write it as "
                          "{kind: Deployment, name: NAME}.")
            continue
        kind = str(entry.get("kind") or "Deployment")
        name = str(entry.get("name") or "")
        if kind not in KINDS:
            errors.append(f"{source} names a workload of kind {kind!r}; the kinds that can be restarted are "
                          f"{', '.join(KINDS)}.")
        elif not (len(name) <= 253 and _DNS_SUBDOMAIN.match(name)):
            errors.append(f"{source} names {kind} {name!r}, which is not a valid Kubernetes name (lower-case "
                          "letters, digits, '-' and '.'); correct the name.")
        elif {"kind": kind, "name": name} not in out:
            out.append({"kind": kind, "name": name})
    return out, errors


def check_inputs(inputs: dict) -> list[str]:
    """One sentence per input the argument spec cannot judge, naming the variable and the fix."""
    errors: list[str] = []
    namespace = str(inputs.get(V + "namespace") or "")
    secret = str(inputs.get(V + "secret_name") or "")
    if not (len(namespace) <= 63 and _DNS_LABEL.match(namespace)):
        errors.append(f'{V}namespace "{namespace}" is not a valid Kubernetes namespace name (lower-case '
                      "letters, digits and '-', at most 63 characters); set it to the namespace of the "
                      "service's Secret.")
    if not (len(secret) <= 253 and _DNS_SUBDOMAIN.match(secret)):
        errors.append(f'{V}secret_name "{secret}" is not a valid Kubernetes Secret name (lower-case letters, '
                      "digits, '-' and '.'); set it to the name of the Secret the service reads.")
    names_valid = not errors
    state_secret = state_secret_of(inputs)
    if not names_valid:
        pass  # the companion's name and the name prefix derive from these by default
    elif state_secret == secret:
        errors.append(f"{V}state_secret_name must differ from {V}secret_name: the pending and previous "
                      "tokens must live where the service's pods cannot see them.")
    elif not (len(state_secret) <= 253 and _DNS_SUBDOMAIN.match(state_secret)):
        errors.append(f'{V}state_secret_name "{state_secret}" is not a valid Kubernetes Secret name; '
                      "choose a shorter or valid one.")
    for key_var in ("secret_token_key", "secret_id_key"):
        key = str(inputs.get(V + key_var) or "")
        if not (len(key) <= 253 and _SECRET_KEY.match(key)):
            errors.append(f'{V}{key_var} "{key}" is not a valid Secret key (letters, digits, "-", "_", "."); '
                          "correct it.")
    if inputs.get(V + "secret_token_key") == inputs.get(V + "secret_id_key"):
        errors.append(f"{V}secret_token_key and {V}secret_id_key are both "
                      f"\"{inputs.get(V + 'secret_id_key')}\"; give the id its own key.")
    for name, minimum in _MINIMUMS:
        if V + name not in inputs:
            continue
        value = _int(inputs.get(V + name))
        if value is None or value < minimum:
            errors.append(f"{V}{name} is {inputs.get(V + name)!r}; set it to a whole number of at least {minimum}.")
    threshold = _int(inputs.get(V + "threshold_days"))
    expires = _int(inputs.get(V + "expires_in_days"))
    if threshold is None or threshold < 0:
        errors.append(f"{V}threshold_days is {inputs.get(V + 'threshold_days')!r}; set it to a whole number of "
                      "days of at least 3.")
    elif threshold < 3 and not _bool(inputs.get(V + "allow_short_threshold")):
        errors.append(f"{V}threshold_days is {threshold}, below the minimum of 3 days the rotation guide "
                      f"recommends; raise it or set {V}allow_short_threshold: true.")
    if expires is None or not 1 <= expires <= 365:
        errors.append(f"{V}expires_in_days is {inputs.get(V + 'expires_in_days')!r}; set it between 1 and 365.")
    elif threshold is not None and expires <= threshold:
        errors.append(f"{V}expires_in_days ({expires}) must be greater than {V}threshold_days ({threshold}), "
                      "or every run would rotate again.")
    strategy = inputs.get(V + "strategy", "restart")
    if strategy not in ("restart", "reload"):
        errors.append(f"{V}strategy is {strategy!r}; set it to restart or reload.")
    workloads, workload_errors = workloads_of(inputs)
    errors += workload_errors
    if strategy == "restart" and not workloads and not workload_errors:
        errors.append(f"{V}deployments (or {V}workloads) is empty; strategy restart needs the workloads "
                      "that read the Secret.")
    prefix = str(inputs.get(V + "name_prefix") or "")
    if names_valid and not _PREFIX.match(prefix):
        errors.append(f'{V}name_prefix "{prefix}" may only contain letters, digits, ".", "_" and "-" and be '
                      "at most 100 characters long.")
    statuses = inputs.get(V + "health_status", [200])
    if not isinstance(statuses, list) or not statuses or any(
            (_int(code) is None or not 100 <= _int(code) <= 599) for code in statuses):
        errors.append(f"{V}health_status is {statuses!r}; set it to a list of HTTP status codes such as [200].")
    url = str(inputs.get(V + "health_url") or "")
    if url and not re.match(r"^https?://[^\s/]+", url):
        errors.append(f"{V}health_url must be an http:// or https:// URL; correct it or leave it empty.")
    return errors


def state_secret_of(inputs: dict) -> str:
    return str(inputs.get(V + "state_secret_name") or f"{inputs.get(V + 'secret_name') or ''}-rotation")


def connection_of(inputs: dict) -> str:
    """A digest of the platform connection a service uses (never the token itself)."""
    parts = [str(inputs.get(V + name) or "") for name in ("api_url", "api_token", "ca_path")]
    parts.append(str(_bool(inputs.get(V + "validate_certs", True))))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def config_of(inputs: dict) -> dict:
    """The settings the steps use, normalised (call only once check_inputs found nothing)."""
    workloads, _ = workloads_of(inputs)
    get = inputs.get
    return {
        "token_key": str(get(V + "secret_token_key", "token")),
        "id_key": str(get(V + "secret_id_key", "id")),
        "workloads": workloads,
        "strategy": get(V + "strategy", "restart"),
        "threshold_days": int(get(V + "threshold_days", 7)),
        "expires_in_days": int(get(V + "expires_in_days", 90)),
        "name_prefix": str(get(V + "name_prefix")),
        "description": str(get(V + "description") or ""),
        "force": _bool(get(V + "force", False)),
        "abort": _bool(get(V + "abort", False)),
        "sweep_orphans": _bool(get(V + "sweep_orphans", False)),
        "create_attempts": int(get(V + "create_attempts", 3)),
        "verify_timeout": int(get(V + "verify_timeout", 60)),
        "rollout_timeout": int(get(V + "rollout_timeout", 600)),
        "drain_timeout": int(get(V + "drain_timeout", 300)),
        "poll_interval": int(get(V + "poll_interval", 5)),
        "reload_window": int(get(V + "reload_interval", 300)) + int(get(V + "kubelet_sync_delay", 90)),
        "verify_usage": _bool(get(V + "verify_usage", True)),
        "usage_timeout": int(get(V + "usage_timeout", 120)),
        "health_url": str(get(V + "health_url") or ""),
        "health_status": [int(code) for code in get(V + "health_status", [200])],
        "health_timeout": int(get(V + "health_timeout", 120)),
        "health_validate_certs": _bool(get(V + "health_validate_certs", True)),
        "audit_log": str(get(V + "audit_log") or ""),
        "lock_duration": int(get(V + "lock_duration", 60)),
        "lock_wait": int(get(V + "lock_wait", 90)),
        "webhook": bool(get(V + "failure_webhook_url")),
    }


def start(inputs_by_host: dict[str, dict], run_id: str, check_mode: bool = False) -> dict:
    """The run's state: every service with its settings, or failed with the sentence its inputs earned.

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
        errors = check_inputs(inputs)
        digest = connection_of(inputs)
        if connection is None:
            connection = digest
        elif digest != connection and not errors:
            errors = [f"{V}api_url, _api_token, _ca_path or _validate_certs of this service differ from those of "
                      "the first service of the run; every step calls the platform once for all services, so "
                      "run services of another platform connection in a play of their own."]
        if errors:
            svc.update(step="done", status="failed", message=errors[0], cfg={})
        else:
            svc["cfg"] = config_of(inputs)
        services[host] = svc
    return {"run_id": run_id, "check_mode": bool(check_mode), "services": services}


# -- selecting services -------------------------------------------------------------------------

def due(run: dict, step: str) -> list[dict]:
    if step not in STEPS:
        raise RotationError(f"unknown step {step!r}")
    return [svc for svc in run["services"].values() if svc["step"] == step]


def clusters_of(services: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Services grouped by cluster (kubeconfig, context), in first-seen order."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for svc in services:
        key = json.dumps(svc["cluster"], sort_keys=True)
        groups.setdefault(key, (svc["cluster"], []))[1].append(svc)
    return list(groups.values())


def _copy(run: dict) -> dict:
    return json.loads(json.dumps(run))


def _finish(svc: dict, status: str, message: str) -> None:
    svc["status"], svc["message"] = status, message.strip()


def _fail(svc: dict, message: str, then: str) -> None:
    """Record a failure and route the service to its cleanup (``then``), or end it (``done``)."""
    svc["status"] = "failed"
    svc["error"] = svc["error"] or message.rstrip(".")
    svc["message"] = svc["message"] or message
    svc["step"] = then


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


def _update_strategy(workload: dict) -> tuple[str, int]:
    spec = workload.get("spec") or {}
    strategy = (spec.get("updateStrategy") or spec.get("strategy") or {})
    kind = workload.get("kind") or "Deployment"
    default = "RollingUpdate"
    partition = _int(((strategy.get("rollingUpdate") or {}).get("partition"))) or 0
    if kind == "Deployment":
        return strategy.get("type") or default, 0
    return strategy.get("type") or default, partition


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
            _fail(svc, f"Could not read {ref} ({read['secret_error']}); check the kubeconfig "
                       f"({svc['cluster']['kubeconfig'] or 'KUBECONFIG'}) and that its identity may get this Secret.",
                  "done")
            continue
        if not secret:
            _fail(svc, f"{ref} does not exist; check {V}namespace and {V}secret_name (the rotation updates the "
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
            _fail(svc, f"{ref} has no key {cfg['token_key']}; set {V}secret_token_key to the key that holds "
                       "the token.", "done")
            continue
        problem = _workload_problem(svc, read.get("workloads") or [])
        if problem:
            _fail(svc, problem, "done")
            continue
        ann = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(A)}
        companion = read.get("companion")
        if read.get("companion_error"):
            _fail(svc, f"Could not read Secret {svc['namespace']}/{svc['state_secret']} "
                       f"({read['companion_error']}); check that the identity may get it (deploy/rbac.yml).",
                  "done")
            continue
        c_meta = (companion or {}).get("metadata") or {}
        if companion and (c_meta.get("annotations") or {}).get(ROTATION_FOR) not in (None, svc["secret"]):
            _fail(svc, f"Secret {svc['namespace']}/{svc['state_secret']} exists and belongs to something else; "
                       f"set {V}state_secret_name to a name of its own.", "done")
            continue
        svc["rv"] = meta.get("resourceVersion") or ""
        svc["ann"] = ann
        svc["companion"] = {"exists": bool(companion), "ann": {k: v for k, v in (c_meta.get("annotations") or {}).items()
                                                                 if k.startswith(A)}}
        svc["phase"] = derived_phase(ann, companion)
        if svc["phase"] not in PHASES:
            _fail(svc, f"{ref} records an unknown rotation phase {svc['phase']!r}; set {V}abort: true to discard "
                       "it, or clear the xapi.io/ annotations by hand.", "done")
            continue
        svc["current_id"] = unb64(data.get(cfg["id_key"]))
        svc["workload_objects"] = {f"{w['kind']}/{w['name']}": _workload_summary(w.get("object") or {})
                                   for w in read.get("workloads") or []}
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
        key, _, value = mark.partition("=")
        found = labels.get(key, annotations.get(key))
        if found is not None and (not value or found == value):
            return who
    return ""


def _workload_summary(obj: dict) -> dict:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    return {
        "selector": ((spec.get("selector") or {}).get("matchLabels") or {}),
        "marker": ((template.get("metadata") or {}).get("annotations") or {}).get(ROTATED_AT, ""),
    }


def _workload_problem(svc: dict, workloads: list[dict]) -> str:
    for w in workloads:
        ref = workload_ref(svc, w)
        if w.get("error"):
            return (f"Could not read {ref} ({w['error']}); check that the identity may get it "
                    "(deploy/rbac.yml).")
        obj = w.get("object")
        if not obj:
            return (f"{ref} does not exist; check {V}deployments (or {V}workloads) and "
                    f"{V}namespace: nothing was changed.")
        strategy, partition = _update_strategy(obj)
        if svc["cfg"]["strategy"] == "restart" and strategy == "OnDelete":
            return (f"{ref} uses the OnDelete update strategy, so a restart would not replace its pods; "
                    "replace them yourself, or switch it to RollingUpdate before rotating.")
        if svc["cfg"]["strategy"] == "restart" and partition > 0:
            return (f"{ref} has a rolling-update partition of {partition}, so its pods below that ordinal would "
                    "keep the old token; set the partition to 0 before rotating.")
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
        failed = error if svc["current_id"] else token_error
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
        if run["check_mode"]:
            svc["step"] = "preview"
        elif svc.get("lock_holder"):
            _finish(svc, "skipped", f"another run holds the rotation lock ({svc['lock_holder']} until "
                                    f"{svc['ann'].get(LOCK_EXPIRES, '?')}); this run waited {cfg['lock_wait']} s "
                                    "for it to be released or to lapse, re-run once that run has finished")
            svc["step"] = "done"
        else:
            svc["step"] = "lock"
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


def new_name(svc: dict, now: float) -> str:
    return f"{svc['cfg']['name_prefix']}-{compact(stamp(now))}"


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
    for call, answer in zip(calls, results):
        for i, (host, entry) in enumerate(zip(call["hosts"], _answers(answer, len(call["hosts"])))):
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
                where = "" if is_main else f"Secret {definition['metadata']['namespace']}/{definition['metadata']['name']}: "
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
    written = "" if reason == "Conflict" else f"{secret_ref(svc)} could not be written ({text}); " \
                                              "check that the identity may patch it."
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
            svc["message"] = (svc["message"] + "; " if svc["message"] else "") + \
                f"but the companion could not be emptied ({text}); delete its keys by hand, or the next rotation " \
                "overwrites them"
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
        if not item:
            # Nobody can say whether the platform created it: keep the recorded name, so that the next
            # run finds what it may have created and deactivates it before creating again.
            _fail(svc, f"Could not create the new system user {svc['new_name']} ({why.rstrip('.')}); it may exist "
                       "on the platform with its token lost.", "clear")
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
                definitions.append({"apiVersion": KINDS[w["kind"]], "kind": w["kind"],
                                    "metadata": {"name": w["name"], "namespace": svc["namespace"]},
                                    "spec": {"template": {"metadata": {"annotations": {ROTATED_AT: marker}}}}})
                hosts.append(svc["host"])
        if definitions:
            out.append({"cluster": cluster, "hosts": hosts, "definitions": definitions})
    return out


def fold_restart(run: dict, step: str, calls: list[dict], results: list[dict]) -> dict:
    run = _copy(run)
    services = run["services"]
    failures: dict[str, list[str]] = {}
    for call, answer in zip(calls, results):
        for i, (host, entry) in enumerate(zip(call["hosts"], _answers(answer, len(call["hosts"])))):
            if not ((entry or {}).get("result") or {}).get("metadata"):
                d = call["definitions"][i]
                _, text = _k8s_error(entry or {})
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


def rollout_state(workload: dict | None) -> tuple[str, str]:
    """(complete | progressing | failed, why), by the rules `kubectl rollout status` applies."""
    if not workload or not workload.get("metadata"):
        return "failed", "it could not be read"
    kind = workload.get("kind") or "Deployment"
    meta, spec, st = workload["metadata"], workload.get("spec") or {}, workload.get("status") or {}
    generation, observed = _int(meta.get("generation")) or 1, _int(st.get("observedGeneration")) or 0
    if generation > observed:
        return "progressing", "the controller has not observed the new template yet"
    if kind == "Deployment":
        for c in st.get("conditions") or []:
            if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
                return "failed", "it exceeded its progress deadline"
        wanted = _int(spec.get("replicas"))
        wanted = 1 if wanted is None else wanted
        updated, replicas = _int(st.get("updatedReplicas")) or 0, _int(st.get("replicas")) or 0
        available = _int(st.get("availableReplicas")) or 0
        if updated < wanted:
            return "progressing", f"{updated} of {wanted} replicas updated"
        if replicas > updated:
            return "progressing", f"{replicas - updated} old replicas pending termination"
        if available < updated:
            return "progressing", f"{available} of {updated} updated replicas available"
        return "complete", f"{updated} replicas updated and available"
    strategy, partition = _update_strategy(workload)
    if strategy != "RollingUpdate":
        return "failed", f"its update strategy is {strategy}"
    if kind == "StatefulSet":
        wanted = _int(spec.get("replicas"))
        wanted = 1 if wanted is None else wanted
        ready = _int(st.get("readyReplicas")) or 0
        if ready < wanted:
            return "progressing", f"{ready} of {wanted} pods ready"
        updated = _int(st.get("updatedReplicas")) or 0
        if partition:
            if updated < wanted - partition:
                return "progressing", f"{updated} of {wanted - partition} new pods updated (partition {partition})"
            return "complete", f"partitioned roll out complete: {updated} new pods updated"
        if st.get("updateRevision") != st.get("currentRevision"):
            return "progressing", f"{updated} of {wanted} pods at the new revision"
        return "complete", f"{wanted} pods at the new revision and ready"
    desired = _int(st.get("desiredNumberScheduled")) or 0
    updated = _int(st.get("updatedNumberScheduled")) or 0
    available = _int(st.get("numberAvailable")) or 0
    if updated < desired:
        return "progressing", f"{updated} of {desired} pods updated"
    if available < desired:
        return "progressing", f"{available} of {desired} updated pods available"
    return "complete", f"{desired} pods updated and available"


def pod_reads_secret(pod: dict, secret: str) -> bool:
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for env in container.get("env") or []:
            if (((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")) == secret:
                return True
        for source in container.get("envFrom") or []:
            if (source.get("secretRef") or {}).get("name") == secret:
                return True
    for volume in spec.get("volumes") or []:
        if (volume.get("secret") or {}).get("secretName") == secret:
            return True
        for source in (volume.get("projected") or {}).get("sources") or []:
            if (source.get("secret") or {}).get("name") == secret:
                return True
    return False


def _selects(selector: dict, pod: dict) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def stale_pods(svc: dict, pods: list[dict], marker: str, since: float | None, rollback: bool = False,
               until: float | None = None) -> list[str]:
    """The pods that may still hold the token the rotation is retiring.

    Forward (``rollback`` false): a pod of a restarted workload not created from the template that
    carries ``marker``, any Terminating pod that reads the Secret (it keeps calling the API until it is
    gone), and any other pod that reads the Secret and was created before the promotion (``since``).
    Rollback: the pods created from the failed rotation's template (``marker``), and other readers
    created between the promotion (``since``) and the restore (``until``), which hold the new token.
    """
    out = []
    selectors = [s.get("selector") or {} for s in (svc.get("workload_objects") or {}).values()]
    for pod in pods:
        meta = pod.get("metadata") or {}
        owned = any(_selects(sel, pod) for sel in selectors)
        if not owned and not pod_reads_secret(pod, svc["secret"]):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and not meta.get("deletionTimestamp"):
            continue
        pod_marker = (meta.get("annotations") or {}).get(ROTATED_AT, "")
        created = parse_k8s_time(meta.get("creationTimestamp"))
        if rollback:
            holds = (pod_marker == marker) if owned else (
                since is not None and created is not None and created >= since and (until is None or created < until))
        elif owned:
            holds = bool(meta.get("deletionTimestamp")) or pod_marker != marker
        else:
            holds = bool(meta.get("deletionTimestamp")) or (since is None or created is None or created < since)
        if holds:
            out.append(meta.get("name", "?"))
    return sorted(out)


def parse_k8s_time(value: str | None) -> float | None:
    return parse_stamp(value) if value else None


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
        })
    return out


def judge_workloads(svc_request: dict, svc: dict, objects: list[dict], pods: list[dict], now: float,
                    started: float) -> dict:
    """One poll of a workloads wait: {"state": waiting|done|failed, "phase": rollout|drain|reload, "why"}."""
    elapsed = now - started
    if svc_request["strategy"] == "reload":
        promoted = parse_stamp(svc_request.get("rolled_back_at") or svc_request["promoted_at"]) or started
        left = promoted + svc_request["reload_window"] - now
        if left > 0:
            return {"state": "waiting", "phase": "reload", "why": f"{int(left)} s left of the reload window"}
        return {"state": "done", "phase": "reload", "why": "the reload window has passed"}
    unfinished = []
    for w, obj in zip(svc_request["workloads"], objects):
        state, why = rollout_state(obj)
        if state == "failed":
            return {"state": "failed", "phase": "rollout",
                    "why": f"the rollout of {w['kind']} {svc_request['namespace']}/{w['name']} failed: {why}"}
        if state == "progressing":
            unfinished.append(f"{w['kind']} {svc_request['namespace']}/{w['name']} ({why})")
    if unfinished:
        if elapsed >= svc_request["rollout_timeout"]:
            return {"state": "failed", "phase": "rollout",
                    "why": f"the rollout of {', '.join(unfinished)} did not complete within "
                           f"{svc_request['rollout_timeout']} s"}
        return {"state": "waiting", "phase": "rollout", "why": ", ".join(unfinished)}
    since = parse_stamp(svc_request["promoted_at"])
    until = parse_stamp(svc_request.get("rolled_back_at")) if svc_request["rollback"] else None
    stale = stale_pods(svc, pods, svc_request["marker"], since, svc_request["rollback"], until)
    if stale:
        if elapsed >= svc_request["rollout_timeout"] + svc_request["drain_timeout"]:
            return {"state": "failed", "phase": "drain", "why": ", ".join(stale)}
        which = "new" if svc_request["rollback"] else "old"
        return {"state": "waiting", "phase": "drain", "why": f"pods holding the {which} token: " + ", ".join(stale)}
    return {"state": "done", "phase": "drain", "why": "every pod that reads the Secret holds the new token"}


def fold_wait(run: dict, step: str, verdicts: dict[str, dict]) -> dict:
    """Apply the rotation_observe action's verdicts of a workloads wait ({host: verdict})."""
    run = _copy(run)
    for svc in due(run, step):
        v = verdicts.get(svc["host"]) or {"state": "failed", "phase": "rollout", "why": "the wait gave no answer"}
        if v.get("notes"):
            svc["notes"] += v["notes"]
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
            why = v["why"]
            _fail(svc, (why[0].upper() + why[1:] + ".") if why else "The rollout failed.", "rb_restore")
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
                       f"still use the old one (set {V}verify_usage: false for services that call the API rarely).",
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
                              f"{svc['phase'] or 'none'}, re-run to resume or set {V}abort: true")
        if svc["notes"] and svc["status"] in ("rotated", "not due", "aborted", "skipped", "failed"):
            extra = "; ".join(n for n in svc["notes"] if n not in svc["message"])
            if extra:
                svc["message"] = f"{svc['message']}; {extra}" if svc["message"] else extra
        svc["step"] = "done"
    return run


def preview(run: dict, now: float) -> tuple[dict, list[dict]]:
    """Check mode: what a real run would do, from what was read; returns (run, diffs).

    Every token is masked in the diffs; nothing here needs a value only a real run creates.
    """
    run = _copy(run)
    diffs: list[dict] = []
    for svc in due(run, "preview"):
        cfg = svc["cfg"]
        secret = f"{svc['namespace']}/{svc['secret']}"
        workloads = ", ".join(workload_ref(svc, w) for w in cfg["workloads"]) or "no workload"
        change = (f"restart {workloads}" if cfg["strategy"] == "restart"
                  else f"wait {cfg['reload_window']} s for the pods to reload it")
        current = svc["current_id"] or "the current credential"
        name = new_name(svc, now)
        action, phase = svc["action"], svc["phase"]
        lock = ""
        if svc.get("lock_holder"):
            lock = (f"; another run holds the rotation lock ({svc['lock_holder']}), a real run would wait up to "
                    f"{cfg['lock_wait']} s for it first")
        if action == "rotate":
            status = "would rotate"
            text = (f"{svc['state_text']} (threshold {cfg['threshold_days']}{', forced' if cfg['force'] else ''}); "
                    f"would create system user {name} (expires in {cfg['expires_in_days']} days), write Secret "
                    f"{secret} (keys {cfg['token_key']}, {cfg['id_key']} and xapi.io/* annotations) and Secret "
                    f"{svc['namespace']}/{svc['state_secret']} (pending and previous token), {change}, then "
                    f"deactivate {current}")
            diffs += _preview_diffs(svc, name)
        elif action == "resume":
            status = "would resume"
            text = (f"Secret {secret} records an interrupted rotation in phase {phase} (started "
                    f"{svc['ann'].get(STARTED_AT, '?')}); a real run would resume it")
            if phase in (CREATING, PENDING):
                text += (f": deactivate any user named {svc['ann'].get(PENDING_NAME, '?')} whose token was lost, then "
                         f"create, verify and promote the new credential, {change} and deactivate {current}"
                         if phase == CREATING else
                         f": verify and promote {svc['new_id']}, {change} and deactivate {current}")
            elif phase == PROMOTED:
                text += f": {change}, verify, then deactivate {svc['ann'].get(PREVIOUS_ID, '?')}"
            else:
                text += f": finish the rollback and deactivate {svc['ann'].get(FAILED_ID, '?')}"
        elif action == "abort":
            status = "would abort"
            text = (f"would abort the rotation in phase {phase} recorded in Secret {secret} and deactivate "
                    f"{svc['new_id'] or svc['ann'].get(CURRENT_ID) or svc['ann'].get(PENDING_NAME, '?')}")
        else:
            status = "would sweep orphans"
            text = f"{svc['state_text']}; would deactivate orphaned credentials named {cfg['name_prefix']}-*"
        _finish(svc, status, text + lock)
        svc["step"] = "done"
    return run, diffs


def _masked(data_keys: list[str]) -> dict:
    return {k: "(masked)" for k in data_keys}


def _preview_diffs(svc: dict, name: str) -> list[dict]:
    cfg = svc["cfg"]
    ns = svc["namespace"]
    keys = [cfg["token_key"], cfg["id_key"]]
    before_ann = {k: svc["ann"][k] for k in sorted(svc["ann"])}
    after_ann = dict(before_ann)
    after_ann.update({LAST_ROTATED_AT: "(time of the rotation)",
                      LAST_ROTATION: f"{svc['current_id'] or '?'} -> (new id)"})
    out = [
        {"before_header": f"system user {name}", "after_header": f"system user {name}",
         "before": "", "after": _yaml({"name": name, "description": cfg["description"],
                                       "expires_in_days": cfg["expires_in_days"], "token": "(masked)"})},
        {"before_header": f"Secret {ns}/{svc['secret']}", "after_header": f"Secret {ns}/{svc['secret']}",
         "before": _yaml({"annotations": before_ann, "data": _masked(keys)}),
         "after": _yaml({"annotations": after_ann,
                         "data": {cfg["token_key"]: "(masked: the new token)", cfg["id_key"]: "(the new id)"}})},
        {"before_header": f"Secret {ns}/{svc['state_secret']}", "after_header": f"Secret {ns}/{svc['state_secret']}",
         "before": "" if not svc["companion"]["exists"] else _yaml({"data": {}}),
         "after": _yaml({"data": {}, "note": "holds the pending and the previous token during the rotation "
                                             "(masked), empty afterwards"})},
    ]
    for w in cfg["workloads"] if cfg["strategy"] == "restart" else []:
        summary = (svc.get("workload_objects") or {}).get(f"{w['kind']}/{w['name']}") or {}
        out.append({"before_header": workload_ref(svc, w), "after_header": workload_ref(svc, w),
                    "before": _yaml({"spec.template.metadata.annotations": {ROTATED_AT: summary.get("marker") or None}}),
                    "after": _yaml({"spec.template.metadata.annotations": {ROTATED_AT: "(new id)-(time)"}})})
    if svc["current_id"]:
        out.append({"before_header": f"system user {svc['current_id']}", "after_header": f"system user {svc['current_id']}",
                    "before": _yaml({"active": True}), "after": _yaml({"active": False})})
    return out


def _yaml(value: Any) -> str:
    lines: list[str] = []

    def walk(node: Any, indent: int) -> None:
        for key, item in node.items():
            if isinstance(item, dict):
                lines.append(" " * indent + f"{key}:" + (" {}" if not item else ""))
                walk(item, indent + 2)
            else:
                lines.append(" " * indent + f"{key}: {json.dumps(item) if item is not None else 'null'}")
    walk(value, 0)
    return "\n".join(lines) + "\n"


def summary_lines(run: dict) -> list[str]:
    return [f"{svc['service']}: {svc['status'] or 'failed'} ({svc['message']})" for svc in run["services"].values()]


def outcomes(run: dict) -> dict[str, dict]:
    """{host: outcome}: never a token."""
    return {svc["host"]: {"service": svc["service"], "host": svc["host"], "namespace": svc["namespace"],
                             "secret": svc["secret"], "status": svc["status"] or "failed", "message": svc["message"],
                             "days_remaining": svc["days_remaining"], "credential_id": svc["current_id"],
                             "check_mode": run["check_mode"]}
            for svc in run["services"].values()}


def audit_records(run: dict, now: float) -> dict[str, list[str]]:
    """{audit log path: [one JSON line per service that changed something or failed]}: ids and
    fingerprints only."""
    out: dict[str, list[str]] = {}
    for svc in run["services"].values():
        path = (svc.get("cfg") or {}).get("audit_log")
        if not path or svc["status"] not in ("rotated", "failed", "aborted") or svc["action"] == "none":
            continue
        record = {"time": stamp(now), "service": svc["service"], "namespace": svc["namespace"],
                  "secret": svc["secret"], "run": run["run_id"], "event": svc["status"], "message": svc["message"]}
        if svc["status"] == "rotated":
            record.update(event="rotated", old_id=svc.get("old_id", ""), new_id=svc["current_id"],
                          new_fingerprint=svc["new_fp"] or svc["ann"].get(CURRENT_FP, ""))
        elif svc["clear"] == "rolled_back":
            record.update(event="rolled_back", new_id=svc["ann"].get(FAILED_ID, ""),
                          old_id=svc["ann"].get(CURRENT_ID, ""))
        out.setdefault(path, []).append(json.dumps(record, sort_keys=True))
    return out


def stats(run: dict) -> dict[str, dict]:
    """{service: outcome}, what set_stats publishes for AWX workflows."""
    return {o["service"]: o for o in outcomes(run).values()}


def fold_audit(run: dict, results: list[dict]) -> dict:
    """A service whose audit record could not be written fails, though it was rotated."""
    run = _copy(run)
    unwritten = {r.get("item", {}).get("key"): (r.get("stderr") or r.get("msg") or "").strip()
                 for r in results or [] if r.get("rc", 0) != 0}
    for svc in run["services"].values():
        path = (svc.get("cfg") or {}).get("audit_log")
        if path in unwritten and svc["status"] in ("rotated", "failed", "aborted"):
            was = "it was rotated, but " if svc["status"] == "rotated" else ""
            svc["message"] += f"; {was}its audit record could not be written to {path} ({unwritten[path]})"
            svc["status"] = "failed"
    return run


def notify_hosts(run: dict) -> list[str]:
    return [svc["host"] for svc in run["services"].values()
            if svc["status"] == "failed" and (svc.get("cfg") or {}).get("webhook")]


def expiry_lines(run: dict) -> dict[str, dict]:
    """check_expiry.yml's view of every service: {host: {days_remaining, credential_id, due, line}}."""
    out = {}
    for svc in run["services"].values():
        if svc["status"] == "failed" and svc.get("days_remaining") is None:
            line = f"{svc['service']}: {svc['message']}"
            out[svc["host"]] = {"days_remaining": None, "credential_id": "", "due": True, "line": line}
            continue
        is_due = bool(svc.get("due", True))
        text = svc.get("state_text") or svc["message"]
        line = f"{svc['service']}: {svc['current_id'] or 'unknown credential'}, {text}"
        if is_due:
            line += f" (rotate now: at or under the threshold of {svc['cfg'].get('threshold_days', '?')} days)"
        if svc["phase"]:
            line += f"; its Secret records a rotation in phase {svc['phase']}"
        out[svc["host"]] = {"days_remaining": svc["days_remaining"], "credential_id": svc["current_id"],
                            "due": is_due, "line": line}
    return out

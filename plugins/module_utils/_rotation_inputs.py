# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role variables of a service, checked and normalised before anything is read or changed.

One sentence per mistake, naming the variable and the fix. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_base import (
    _DNS_LABEL,
    _DNS_SUBDOMAIN,
    _PREFIX,
    _SECRET_KEY,
    KINDS,
    V,
    _bool,
    _int,
)

# -- inputs -------------------------------------------------------------------------------------

# (variable, minimum) for the numbers the argument spec can only call integers.
_MINIMUMS = (("create_attempts", 1), ("verify_timeout", 1), ("rollout_timeout", 1), ("drain_timeout", 0),
             ("poll_interval", 1), ("reload_interval", 0), ("kubelet_sync_delay", 0), ("usage_timeout", 1),
             ("health_timeout", 1), ("lock_duration", 30), ("lock_wait", 0), ("reloader_grace", 0))


def workloads_of(inputs: dict) -> tuple[list[dict], list[str]]:
    """The workloads a service names: credential_rotation_workloads, else the deployments shorthand."""
    errors: list[str] = []
    given = inputs.get(V + "workloads")
    if given == "auto":
        return [], []
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
        return [], [(f"{source} must be a list of {{kind, name}} or auto; for example [{{kind: Deployment, name: "
                    "api}].")]
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


_WANT = {"bool": "true or false", "int": "a whole number", "float": "a number", "list": "a list",
         "dict": "a mapping", "str": "a string", "path": "a path", "raw": "a value"}
_MISSING = re.compile(r"^missing required arguments: (.+)$")
_TYPE = re.compile(r"^argument '([a-z_]+)' is of type \w+ and we were unable to convert to (\w+)")
_CHOICE = re.compile(r"^value of ([a-z_]+) must be one of: (.+), got: (.*)$")


def spec_sentence(messages: list[str], values: dict, secret: frozenset | set = frozenset()) -> str:
    """The first of the argument spec validator's messages, as one sentence that says the fix.

    ``secret`` names the variables whose values must never be shown (the spec's ``no_log`` ones).
    """
    if not messages:
        return ""
    message = str(messages[0]).strip()
    found = _MISSING.match(message)
    if found:
        names = [n.strip() for n in found.group(1).split(",")]
        verb, pronoun = ("is", "it") if len(names) == 1 else ("are", "them")
        return f"{' and '.join(names)} {verb} not set; set {pronoun} in the service's variables."
    found = _TYPE.match(message)
    if found:
        name, want = found.groups()
        shown = "set but not valid" if name in secret else f"{values.get(name)!r}"
        return f"{name} is {shown}; set it to {_WANT.get(want, 'a ' + want)}."
    found = _CHOICE.match(message)
    if found:
        name, choices, got = found.groups()
        return f"{name} is {got!r}; set it to one of {choices}."
    return f"{message.rstrip('.')}; correct this variable."


def check_inputs(inputs: dict) -> list[str]:
    """One sentence per input the argument spec cannot judge, naming the variable and the fix."""
    errors: list[str] = []
    namespace = str(inputs.get(V + "namespace") or "")
    secret = str(inputs.get(V + "secret_name") or "")
    if not (len(namespace) <= 63 and _DNS_LABEL.match(namespace)):
        errors.append(f'credential_rotation_namespace "{namespace}" is not a valid Kubernetes namespace name '
                      '(lower-case '
                      "letters, digits and '-', at most 63 characters); set it to the namespace of the "
                      "service's Secret.")
    if not (len(secret) <= 253 and _DNS_SUBDOMAIN.match(secret)):
        errors.append(f'credential_rotation_secret_name "{secret}" is not a valid Kubernetes Secret name '
                      '(lower-case letters, '
                      "digits, '-' and '.'); set it to the name of the Secret the service reads.")
    names_valid = not errors
    state_secret = state_secret_of(inputs)
    if not names_valid:
        pass  # the companion's name and the name prefix derive from these by default
    elif state_secret == secret:
        errors.append("credential_rotation_state_secret_name must differ from credential_rotation_secret_name: "
                      "the pending and previous "
                      "tokens must live where the service's pods cannot see them.")
    elif not (len(state_secret) <= 253 and _DNS_SUBDOMAIN.match(state_secret)):
        errors.append(f'credential_rotation_state_secret_name "{state_secret}" is not a valid Kubernetes Secret name; '
                      "choose a shorter or valid one.")
    for key_var in ("secret_token_key", "secret_id_key"):
        key = str(inputs.get(V + key_var) or "")
        if not (len(key) <= 253 and _SECRET_KEY.match(key)):
            errors.append(f'credential_rotation_{key_var} "{key}" is not a valid Secret key (letters, digits, '
                          '"-", "_", "."); '
                          "correct it.")
    if inputs.get(V + "secret_token_key") == inputs.get(V + "secret_id_key"):
        errors.append(f"credential_rotation_secret_token_key and credential_rotation_secret_id_key are both "
                      f"\"{inputs.get(V + 'secret_id_key')}\"; give the id its own key.")
    for name, minimum in _MINIMUMS:
        if V + name not in inputs:
            continue
        value = _int(inputs.get(V + name))
        if value is None or value < minimum:
            errors.append(f"credential_rotation_{name} is {inputs.get(V + name)!r}; set it to a whole number of "
                          f"at least {minimum}.")
    threshold = _int(inputs.get(V + "threshold_days"))
    expires = _int(inputs.get(V + "expires_in_days"))
    if threshold is None or threshold < 0:
        errors.append(f"credential_rotation_threshold_days is {inputs.get(V + 'threshold_days')!r}; set it to a "
                      "whole number of "
                      "days of at least 3.")
    elif threshold < 3 and not _bool(inputs.get(V + "allow_short_threshold")):
        errors.append(f"credential_rotation_threshold_days is {threshold}, below the minimum of 3 days the "
                      "rotation guide "
                      f"recommends; raise it or set credential_rotation_allow_short_threshold: true.")
    if expires is None or not 1 <= expires <= 365:
        errors.append(f"credential_rotation_expires_in_days is {inputs.get(V + 'expires_in_days')!r}; set it "
                      "between 1 and 365.")
    elif threshold is not None and expires <= threshold:
        errors.append(f"credential_rotation_expires_in_days ({expires}) must be greater than "
                      f"credential_rotation_threshold_days ({threshold}), "
                      "or every run would rotate again.")
    strategy = inputs.get(V + "strategy", "restart")
    if strategy not in ("restart", "reload"):
        errors.append(f"credential_rotation_strategy is {strategy!r}; set it to restart or reload.")
    workloads, workload_errors = workloads_of(inputs)
    errors += workload_errors
    if strategy == "restart" and not workloads and not workload_errors and inputs.get(V + "workloads") != "auto":
        errors.append("credential_rotation_deployments (or credential_rotation_workloads) is empty; strategy "
                      "restart needs the workloads "
                      "that read the Secret.")
    prefix = str(inputs.get(V + "name_prefix") or "")
    if names_valid and not _PREFIX.match(prefix):
        errors.append(f'credential_rotation_name_prefix "{prefix}" may only contain letters, digits, ".", "_" '
                      'and "-" and be '
                      "at most 100 characters long.")
    statuses = inputs.get(V + "health_status", [200])
    if not isinstance(statuses, list) or not statuses or any(
            (_int(code) is None or not 100 <= _int(code) <= 599) for code in statuses):
        errors.append(f"credential_rotation_health_status is {statuses!r}; set it to a list of HTTP status "
                      "codes such as [200].")
    url = str(inputs.get(V + "health_url") or "")
    if url and not re.match(r"^https?://[^\s/]+", url):
        errors.append("credential_rotation_health_url must be an http:// or https:// URL; correct it or leave "
                      "it empty.")
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
    workloads = workloads_of(inputs)[0]
    get = inputs.get
    return {
        "token_key": str(get(V + "secret_token_key", "token")),
        "id_key": str(get(V + "secret_id_key", "id")),
        "workloads": workloads,
        "auto_workloads": get(V + "workloads") == "auto",
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
        "reloader_grace": int(get(V + "reloader_grace", 30)),
        "webhook": bool(get(V + "failure_webhook_url")),
    }

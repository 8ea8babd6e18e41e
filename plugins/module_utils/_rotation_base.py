# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The names and small helpers the rotation's rules share: annotations, phases, steps, time,
fingerprints, and the primitives that select and update a run's services. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime
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
STEPS = ("read", "lookup", "check", "preview", "lock", "discard_list", "discard", "create", "store", "verify",
         "promote", "restart", "wait", "usage", "health", "rb_restore", "rb_restart", "rb_wait",
         "sweep_list", "deactivate", "clear", "done")

# The parts of the table the role includes only when a service is due for one of their steps
# (tasks/main.yml includes change.yml, which includes the discard's and the rollback's files): a run
# with nothing due skips each in one task.
GROUPS = {
    "change": STEPS[STEPS.index("check"):STEPS.index("done")],
    "discard": ("discard_list", "discard"),
    "rollback": ("rb_restore", "rb_restart", "rb_wait"),
}

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
    return datetime.fromtimestamp(now, UTC).strftime(TIME_FORMAT)


def parse_stamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
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


# -- selecting services -------------------------------------------------------------------------

# The key of the packed run's JSON string (see pack).
PACKED = "state_json"


def due(run: dict, step: str) -> list[dict]:
    if step not in STEPS:
        raise RotationError(f"unknown step {step!r}")
    return [svc for svc in run["services"].values() if svc["step"] == step]


def indexed(run: dict) -> dict:
    """The run with ``due_steps``, the steps at least one service is due for, in table order,
    ``due_groups``, the parts of the table (``GROUPS``) with a due step, ``statuses``, the outcomes
    some service has reached, and ``token_lookups``, how many services due for the lookup have no
    credential id.

    The role's tasks test ``step in run.due_steps`` (and its includes ``group in run.due_groups``) to
    skip what nobody is due for: a membership test on a short list costs Ansible next to nothing,
    where handing the whole run (hundreds of services) to a filter costs it a fifth of a second per
    task.
    """
    at = {svc["step"] for svc in run["services"].values()}
    run["due_steps"] = [step for step in STEPS if step in at]
    run["due_groups"] = [group for group, steps in GROUPS.items() if at.intersection(steps)]
    run["statuses"] = sorted({svc["status"] for svc in run["services"].values() if svc["status"]})
    # Secrets that hold no credential id are looked up by their token (a second lookup).
    run["token_lookups"] = sum(1 for svc in run["services"].values()
                               if svc["step"] == "lookup" and not svc["current_id"])
    return run


def pack(run: dict) -> dict:
    """The run as the role keeps it between tasks: what its tasks test (``due_steps``, ``due_groups``,
    ``statuses``, ``token_lookups``) beside the whole state as one JSON string.

    Ansible walks a fact that is a nested structure value by value each time a task hands it on or
    gets it back (some 60 ms a task for twenty services, seconds for five hundred); a string it
    passes whole. The filters and the action unpack it (``unpack``).
    """
    return {"due_steps": run.get("due_steps", []), "due_groups": run.get("due_groups", []),
            "statuses": run.get("statuses", []),
            "token_lookups": run.get("token_lookups", 0), PACKED: json.dumps(run, separators=(",", ":"))}


def unpack(value: Any) -> Any:
    """The run's state from what ``pack`` gave (anything else is returned as it is)."""
    if isinstance(value, dict) and isinstance(value.get(PACKED), str):
        return json.loads(value[PACKED])
    return value


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


def new_name(svc: dict, now: float) -> str:
    return f"{svc['cfg']['name_prefix']}-{compact(stamp(now))}"

# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a run reports: the check-mode preview and diffs (every token masked), the summary lines,
outcomes, set_stats data, audit records and the expiry report. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_base import (
    CREATING,
    CURRENT_FP,
    CURRENT_ID,
    FAILED_ID,
    LAST_ROTATED_AT,
    LAST_ROTATION,
    PENDING,
    PENDING_NAME,
    PREVIOUS_ID,
    PROMOTED,
    ROTATED_AT,
    STARTED_AT,
    _copy,
    _finish,
    due,
    new_name,
    stamp,
    workload_ref,
)


def preview(run: dict, now: float) -> tuple[dict, list[dict]]:
    """Check mode: what a real run would do, from what was read; returns (run, diffs).

    Every token is masked in the diffs; nothing here needs a value only a real run creates.
    """
    run = _copy(run)
    diffs: list[dict] = []
    for svc in due(run, "preview"):
        cfg = svc["cfg"]
        secret = f"{svc['namespace']}/{svc['secret']}"
        change = _change(svc)
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


def _reloader(svc: dict, w: dict) -> str:
    return ((svc.get("workload_objects") or {}).get(f"{w['kind']}/{w['name']}") or {}).get("reloader", "")


def _change(svc: dict) -> str:
    """What a real run would do to the workloads, in words."""
    cfg = svc["cfg"]
    if cfg["strategy"] != "restart":
        return f"wait {cfg['reload_window']} s for the pods to reload it"
    ours = [workload_ref(svc, w) for w in cfg["workloads"] if not _reloader(svc, w)]
    theirs = [workload_ref(svc, w) for w in cfg["workloads"] if _reloader(svc, w)]
    parts = [f"restart {', '.join(ours)}"] if ours else []
    if theirs:
        parts.append(f"wait for Reloader to restart {', '.join(theirs)} (restarting it after "
                     f"{cfg['reloader_grace']} s if it does not)")
    return " and ".join(parts) or ("restart no workload (auto found none that reads the Secret)"
                                   if cfg.get("auto_workloads") else "restart no workload")


def _preview_diffs(svc: dict, name: str) -> list[dict]:
    cfg = svc["cfg"]
    ns = svc["namespace"]
    before_ann = {k: svc["ann"][k] for k in sorted(svc["ann"])}
    after_ann = dict(before_ann)
    after_ann.update({LAST_ROTATED_AT: "(time of the rotation)",
                      LAST_ROTATION: f"{svc['current_id'] or '?'} -> (new id)"})
    out = [
        {"before_header": f"system user {name}", "after_header": f"system user {name}",
         "before": "", "after": _yaml({"name": name, "description": cfg["description"],
                                       "expires_in_days": cfg["expires_in_days"], "token": "(masked)"})},
        {"before_header": f"Secret {ns}/{svc['secret']}", "after_header": f"Secret {ns}/{svc['secret']}",
         "before": _yaml({"annotations": before_ann,
                          "data": {cfg["token_key"]: "(masked)", cfg["id_key"]: svc["current_id"] or None}}),
         "after": _yaml({"annotations": after_ann,
                         "data": {cfg["token_key"]: "(masked: the new token)", cfg["id_key"]: "(the new id)"}})},
        {"before_header": f"Secret {ns}/{svc['state_secret']}", "after_header": f"Secret {ns}/{svc['state_secret']}",
         "before": "" if not svc["companion"]["exists"] else _yaml({"data": {}}),
         "after": _yaml({"data": {}, "note": "holds the pending and the previous token during the rotation "
                                             "(masked), empty afterwards"})},
    ]
    for w in cfg["workloads"] if cfg["strategy"] == "restart" else []:
        summary = (svc.get("workload_objects") or {}).get(f"{w['kind']}/{w['name']}") or {}
        after = "(new id)-(time)"
        if summary.get("reloader"):
            after = (f"unchanged: Reloader restarts it ({summary['reloader']}); set to (new id)-(time) only if no "
                     f"rollout starts within {cfg['reloader_grace']} s")
        out.append({"before_header": workload_ref(svc, w), "after_header": workload_ref(svc, w),
                    "before": _yaml({"spec.template.metadata.annotations": {ROTATED_AT: summary.get("marker") or None}
                                     }),
                    "after": _yaml({"spec.template.metadata.annotations": {ROTATED_AT: after}})})
    if svc["current_id"]:
        header = f"system user {svc['current_id']}"
        out.append({"before_header": header, "after_header": header,
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


def notify_hosts(run: dict) -> list[str]:
    return [svc["host"] for svc in run["services"].values()
            if svc["status"] == "failed" and (svc.get("cfg") or {}).get("webhook")]


def expiry_lines(run: dict) -> dict[str, dict]:
    """check_expiry.yml's view of every service: {host: {days_remaining, credential_id, due, line, advice}}.

    ``advice`` is what check_expiry.yml adds to a failure: a rotation for a due credential, nothing
    for a service that could not be checked (its line already says what to correct; rotating cannot help).
    """
    out = {}
    for svc in run["services"].values():
        if svc["status"] == "failed" and svc.get("days_remaining") is None:
            line = f"{svc['service']}: {svc['message']}"
            out[svc["host"]] = {"days_remaining": None, "credential_id": "", "due": True, "line": line,
                                "advice": ""}
            continue
        is_due = bool(svc.get("due", True))
        text = svc.get("state_text") or svc["message"]
        line = f"{svc['service']}: {svc['current_id'] or 'unknown credential'}, {text}"
        if is_due:
            line += f" (rotate now: at or under the threshold of {svc['cfg'].get('threshold_days', '?')} days)"
        if svc["phase"]:
            line += f"; its Secret records a rotation in phase {svc['phase']}"
        out[svc["host"]] = {"days_remaining": svc["days_remaining"], "credential_id": svc["current_id"],
                            "due": is_due, "line": line,
                            "advice": "; run xapi.system_auth.rotate (playbooks/rotate.yml) for it" if is_due else ""}
    return out

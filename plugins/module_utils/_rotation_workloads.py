# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Workload rules: readiness by the rules of ``kubectl rollout status`` for Deployments,
StatefulSets and DaemonSets, which workloads a Reloader-style controller restarts by itself, and
which pods may still hold a token being retired. Pure: no I/O.
"""

from __future__ import annotations

from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_base import (
    ROTATED_AT,
    _int,
    parse_stamp,
    workload_ref,
)


def _update_strategy(workload: dict) -> tuple[str, int]:
    spec = workload.get("spec") or {}
    strategy = (spec.get("updateStrategy") or spec.get("strategy") or {})
    kind = workload.get("kind") or "Deployment"
    default = "RollingUpdate"
    partition = _int((strategy.get("rollingUpdate") or {}).get("partition")) or 0
    if kind == "Deployment":
        return strategy.get("type") or default, 0
    return strategy.get("type") or default, partition


# Stakater Reloader's annotations (https://github.com/stakater/Reloader): on a workload (its metadata,
# or its pod template's), and on the Secret.
RELOADER_AUTO = "reloader.stakater.com/auto"
RELOADER_SECRET_AUTO = "secret.reloader.stakater.com/auto"
RELOADER_SECRET_RELOAD = "secret.reloader.stakater.com/reload"
RELOADER_SEARCH = "reloader.stakater.com/search"
RELOADER_MATCH = "reloader.stakater.com/match"
RELOADER_IGNORE = "reloader.stakater.com/ignore"


def reloader_restarts(obj: dict, secret: str, secret_annotations: dict | None = None) -> str:
    """The annotation by which a Reloader-style controller restarts this workload when ``secret``'s
    data changes, or '' when none does (by Reloader's rules: auto, secret auto and search need the
    pod template to read the Secret; an explicit reload list names it; the Secret can opt out)."""
    secret_annotations = secret_annotations or {}
    if str(secret_annotations.get(RELOADER_IGNORE, "")).lower() == "true":
        return ""
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    annotations = {**((template.get("metadata") or {}).get("annotations") or {}),
                   **((obj.get("metadata") or {}).get("annotations") or {})}
    names = [n.strip() for n in str(annotations.get(RELOADER_SECRET_RELOAD, "")).split(",") if n.strip()]
    if secret in names:
        return f"{RELOADER_SECRET_RELOAD}: {annotations[RELOADER_SECRET_RELOAD]}"
    if not pod_reads_secret(template, secret):
        return ""
    for key in (RELOADER_AUTO, RELOADER_SECRET_AUTO):
        if str(annotations.get(key, "")).lower() == "true":
            return f"{key}: \"true\""
    if (str(annotations.get(RELOADER_SEARCH, "")).lower() == "true"
            and str(secret_annotations.get(RELOADER_MATCH, "")).lower() == "true"):
        return f"{RELOADER_SEARCH}: \"true\" (and the Secret's {RELOADER_MATCH})"
    return ""


def _workload_summary(obj: dict, secret: str = "", secret_annotations: dict | None = None) -> dict:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    return {
        "selector": ((spec.get("selector") or {}).get("matchLabels") or {}),
        "marker": ((template.get("metadata") or {}).get("annotations") or {}).get(ROTATED_AT, ""),
        "reloader": reloader_restarts(obj, secret, secret_annotations) if secret else "",
    }


def template_reads_secret(obj: dict, secret: str) -> bool:
    """Whether a workload's pod template reads the Secret (env, envFrom, a volume, a projected volume)."""
    return pod_reads_secret((obj.get("spec") or {}).get("template") or {}, secret)


def _workload_problem(svc: dict, workloads: list[dict]) -> str:
    for w in workloads:
        ref = workload_ref(svc, w)
        if w.get("error"):
            return (f"Could not read {ref} ({w['error']}); check that the identity may get it "
                    "(deploy/rbac.yml).")
        obj = w.get("object")
        if not obj:
            return (f"{ref} does not exist; check credential_rotation_deployments (or "
                    "credential_rotation_workloads) and "
                    f"credential_rotation_namespace: nothing was changed.")
        strategy, partition = _update_strategy(obj)
        if svc["cfg"]["strategy"] == "restart" and strategy == "OnDelete":
            return (f"{ref} uses the OnDelete update strategy, so a restart would not replace its pods; "
                    "replace them yourself, or switch it to RollingUpdate before rotating.")
        if svc["cfg"]["strategy"] == "restart" and partition > 0:
            return (f"{ref} has a rolling-update partition of {partition}, so its pods below that ordinal would "
                    "keep the old token; set the partition to 0 before rotating.")
    return ""


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


def _selectors(svc: dict) -> tuple[list[dict], list[dict]]:
    """(the selectors of the workloads the rotation restarts, those a Reloader-style controller restarts)."""
    restarted, reloaded = [], []
    for summary in (svc.get("workload_objects") or {}).values():
        (reloaded if summary.get("reloader") else restarted).append(summary.get("selector") or {})
    return restarted, reloaded


def stale_pods(svc: dict, pods: list[dict], marker: str, since: float | None, rollback: bool = False,
               until: float | None = None) -> list[str]:
    """The pods that may still hold the token the rotation is retiring.

    Forward (``rollback`` false): a pod of a restarted workload not created from the template that
    carries ``marker``, any Terminating pod that reads the Secret (it keeps calling the API until it is
    gone), and any other pod that reads the Secret and was created before the promotion (``since``):
    the pods of workloads a Reloader-style controller restarts are judged this way, by when they were
    created, since their template does not carry the marker.
    Rollback: the pods created from the failed rotation's template (``marker``), and other readers
    created between the promotion (``since``) and the restore (``until``), which hold the new token.
    """
    out = []
    restarted, reloaded = _selectors(svc)
    for pod in pods:
        meta = pod.get("metadata") or {}
        owned = any(_selects(sel, pod) for sel in restarted)
        if not owned and not pod_reads_secret(pod, svc["secret"]) and not any(_selects(sel, pod) for sel in reloaded):
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


def unlisted(svc: dict, pods: list[dict], names: list[str]) -> list[str]:
    """Of the pods ``names``, those that belong to no workload of the service (a Job's, a bare pod, a
    workload nobody listed): the summary names them when the rotation waited for them."""
    restarted, reloaded = _selectors(svc)
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    return [n for n in names
            if not any(_selects(sel, by_name.get(n) or {}) for sel in restarted + reloaded)]


def reloader_missed(svc: dict, request: dict, objects: list[dict], pods: list[dict], now: float) -> list[dict]:
    """The workloads a Reloader-style controller should have restarted but has not, ``reloader_grace``
    seconds after the Secret changed: no rollout in progress, and pods of it from before the change
    still running. The rotation restarts these itself."""
    if request["strategy"] != "restart":
        return []
    changed = parse_stamp(request.get("rolled_back_at") if request["rollback"] else request["promoted_at"])
    if changed is None or now - changed < request.get("reloader_grace", 0):
        return []
    summaries = svc.get("workload_objects") or {}
    out = []
    for w, obj in zip(request["workloads"], objects, strict=False):
        summary = summaries.get(f"{w['kind']}/{w['name']}") or {}
        if not summary.get("reloader") or w.get("restarted") or rollout_state(obj)[0] != "complete":
            continue
        selector = summary.get("selector") or {}
        for pod in pods:
            meta = pod.get("metadata") or {}
            created = parse_k8s_time(meta.get("creationTimestamp"))
            if (_selects(selector, pod) and not meta.get("deletionTimestamp")
                    and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                    and (created is None or created < changed)):
                out.append(w)
                break
    return out


def parse_k8s_time(value: str | None) -> float | None:
    return parse_stamp(value) if value else None


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
    for w, obj in zip(svc_request["workloads"], objects, strict=False):
        state, why = rollout_state(obj)
        if state == "failed":
            return {"state": "failed", "phase": "rollout",
                    "why": f"the rollout of {w['kind']} {svc_request['namespace']}/{w['name']} failed: {why}",
                    "sentence": f"The rollout of {w['kind']} {svc_request['namespace']}/{w['name']} failed: {why}."}
        if state == "progressing":
            unfinished.append(f"{w['kind']} {svc_request['namespace']}/{w['name']} ({why})")
    if unfinished:
        if elapsed >= svc_request["rollout_timeout"]:
            return {"state": "failed", "phase": "rollout",
                    "why": f"the rollout of {', '.join(unfinished)} did not complete within "
                           f"{svc_request['rollout_timeout']} s",
                    "sentence": f"The rollout of {', '.join(unfinished)} did not complete within "
                                f"{svc_request['rollout_timeout']} s."}
        return {"state": "waiting", "phase": "rollout", "why": ", ".join(unfinished)}
    since = parse_stamp(svc_request["promoted_at"])
    until = parse_stamp(svc_request.get("rolled_back_at")) if svc_request["rollback"] else None
    stale = stale_pods(svc, pods, svc_request["marker"], since, svc_request["rollback"], until)
    if stale:
        others = unlisted(svc, pods, stale)
        extra = {"unlisted": others} if others and not svc_request["rollback"] else {}
        if elapsed >= svc_request["rollout_timeout"] + svc_request["drain_timeout"]:
            return {"state": "failed", "phase": "drain", "why": ", ".join(stale), **extra}
        which = "new" if svc_request["rollback"] else "old"
        return {"state": "waiting", "phase": "drain", "why": f"pods holding the {which} token: " + ", ".join(stale),
                "pods": stale, **extra}
    return {"state": "done", "phase": "drain", "why": "every pod that reads the Secret holds the new token"}

"""StatefulSet, DaemonSet, Job and CronJob controllers (a mixin of the emulator's Controller).

They follow the real controllers' rules where clients can see them: StatefulSet pods get
ordinal names and are replaced one at a time from the highest ordinal down to the
partition; DaemonSets run one pod per simulated node and replace them within
``maxUnavailable`` (or ``maxSurge``); Jobs run pods to completion; CronJobs only make Jobs
when asked (``POST /_sandbox/cronjobs/run``), they have no clock. Status fields are the ones
``kubectl rollout status`` and ``kubectl get`` read.
"""

from __future__ import annotations

import copy
import secrets
import time
from typing import TYPE_CHECKING, Any

from tests.sandbox.k8s.objects import (
    ANNOTATION,
    REVISION_LABEL,
    SAFE_ALPHABET,
    owner_ref,
    resolve_int_or_percent,
    set_if,
    template_hash,
)
from tests.sandbox.k8s.resources import lookup
from tests.sandbox.k8s.store import ApiError, now_rfc3339

if TYPE_CHECKING:
    from tests.sandbox.k8s.controller import PodRuntime
    from tests.sandbox.k8s.store import Store

PODS = lookup("", "v1", "pods")
STATEFULSETS = lookup("apps", "v1", "statefulsets")
DAEMONSETS = lookup("apps", "v1", "daemonsets")
JOBS = lookup("batch", "v1", "jobs")
CRONJOBS = lookup("batch", "v1", "cronjobs")
assert PODS and STATEFULSETS and DAEMONSETS and JOBS and CRONJOBS
WORKLOAD_TYPES = (STATEFULSETS, DAEMONSETS, JOBS, CRONJOBS)

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
TEMPLATE_GENERATION_LABEL = "pod-template-generation"
SCHEDULED_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"


def node_name(index: int) -> str:
    """The simulated nodes: ``sandbox-node`` (where every non-DaemonSet pod runs), then ``sandbox-node-2``..."""
    return "sandbox-node" if index == 0 else f"sandbox-node-{index + 1}"


def _ordinal(set_name: str, pod_name: str) -> int | None:
    suffix = pod_name[len(set_name) + 1 :] if pod_name.startswith(set_name + "-") else ""
    return int(suffix) if suffix.isdigit() else None


class AppsControllers:
    """Reconcilers for the apps/v1 and batch/v1 workloads beside Deployments.

    Mixed into ``Controller``: they use its store, pod runtimes and ``terminate_pod``.
    """

    store: Store
    pods: dict[str, PodRuntime]
    _pods_by_owner: dict[str | None, list[dict[str, Any]]]

    def _init_apps(self) -> None:
        self.sts_templates: dict[str, dict[str, dict[str, Any]]] = {}  # sts uid -> revision -> template
        self.job_done_at: dict[str, float] = {}  # job uid -> monotonic time it completed

    def _reset_apps(self) -> None:
        self.sts_templates.clear()
        self.job_done_at.clear()

    # -- helpers -----------------------------------------------------------------------------

    def _runtime_of(self, pod: dict[str, Any]) -> PodRuntime | None:
        return self.pods.get(pod["metadata"]["uid"])

    def _terminating(self, pod: dict[str, Any]) -> bool:
        runtime = self._runtime_of(pod)
        return bool(pod["metadata"].get("deletionTimestamp")) or (runtime is not None and runtime.remove_at is not None)

    def _pod_ready(self, pod: dict[str, Any]) -> bool:
        runtime = self._runtime_of(pod)
        return runtime is not None and runtime.ready and not self._terminating(pod)

    def _pod_finished(self, pod: dict[str, Any]) -> bool:
        runtime = self._runtime_of(pod)
        if runtime is not None:
            return runtime.finished
        return (pod.get("status") or {}).get("phase") == "Succeeded"

    def _create_owned_pod(
        self,
        owner: dict[str, Any],
        template: dict[str, Any],
        name: str,
        labels: dict[str, str] | None = None,
        spec: dict[str, Any] | None = None,
        workload: tuple[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """A pod from ``template`` controlled by ``owner``; None while a pod of that name still exists."""
        namespace = owner["metadata"]["namespace"]
        if self.store.peek(PODS, namespace, name) is not None:
            return None  # the old pod of this name is still terminating: the name is not free yet
        template = copy.deepcopy(template)
        meta = template.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        pod: dict[str, Any] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {**(meta.get("labels") or {}), **(labels or {})},
                "annotations": annotations,
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": {**template["spec"], "nodeName": node_name(0), **(spec or {})},
            "status": {"phase": "Pending", "qosClass": "BestEffort", "hostIP": "127.0.0.1", "startTime": now_rfc3339()},
        }
        if not annotations:
            del pod["metadata"]["annotations"]
        created = self.store.create(PODS, namespace, pod)
        kind, owner_name = owner["kind"], owner["metadata"]["name"]
        workload_kind, workload_name = workload or (kind, owner_name)
        self._register_runtime(  # type: ignore[attr-defined]
            created,
            annotations,
            owner_kind=kind,
            owner_name=owner_name,
            workload_kind=workload_kind,
            workload_name=workload_name,
        )
        self._pods_by_owner.setdefault(owner["metadata"]["uid"], []).append(created)
        return created

    def _terminate(self, pod: dict[str, Any]) -> None:
        self.terminate_pod(pod, None)  # type: ignore[attr-defined]

    def _write_workload_status(self, rt: Any, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if status != obj.get("status"):
            meta = obj["metadata"]
            self.store.update_with(
                rt, meta["namespace"], meta["name"], lambda o: {**o, "status": status}, validate=False
            )

    def _sync_workload(self, obj: dict[str, Any], now: float) -> bool:
        """Reconcile one StatefulSet, DaemonSet, Job or CronJob; True when it needs another look soon."""
        kind = obj["kind"]
        if kind == "StatefulSet":
            return self._sync_statefulset(obj)
        if kind == "DaemonSet":
            return self._sync_daemonset(obj)
        if kind == "Job":
            return self._sync_job(obj, now)
        if kind == "CronJob":
            self._sync_cronjob(obj)
        return False

    # -- StatefulSets ------------------------------------------------------------------------

    def _sync_statefulset(self, sts: dict[str, Any]) -> bool:
        meta, spec = sts["metadata"], sts["spec"]
        uid, name = meta["uid"], meta["name"]
        replicas = spec.get("replicas", 1)
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        partition = ((strategy.get("rollingUpdate") or {}).get("partition") or 0) if rolling else 0
        ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
        update_revision = f"{name}-{template_hash(spec['template'])}"
        templates = self.sts_templates.setdefault(uid, {})
        templates[update_revision] = copy.deepcopy(spec["template"])
        old_status = sts.get("status") if isinstance(sts.get("status"), dict) else {}
        current_revision = old_status.get("currentRevision")
        if current_revision not in templates:
            current_revision = update_revision

        pods = list(self._pods_by_owner.get(uid, []))
        by_ordinal: dict[int, dict[str, Any]] = {}
        strays = []
        for pod in pods:
            ordinal = _ordinal(name, pod["metadata"]["name"])
            if ordinal is None:
                strays.append(pod)
            else:
                by_ordinal[ordinal] = pod
        for pod in strays:
            if not self._terminating(pod):
                self._terminate(pod)

        def revision_of(pod: dict[str, Any]) -> str:
            return (pod["metadata"].get("labels") or {}).get(REVISION_LABEL, "")

        def create(ordinal: int) -> None:
            revision = current_revision if rolling and ordinal < partition else update_revision
            pod_name = f"{name}-{ordinal}"
            spec_extra: dict[str, Any] = {"hostname": pod_name}
            if spec.get("serviceName"):
                spec_extra["subdomain"] = spec["serviceName"]
            created = self._create_owned_pod(
                sts,
                templates[revision],
                pod_name,
                {REVISION_LABEL: revision, POD_NAME_LABEL: pod_name, POD_INDEX_LABEL: str(ordinal)},
                spec_extra,
            )
            if created is not None:
                by_ordinal[ordinal] = created

        # 1. Every ordinal below replicas has a pod; OrderedReady makes them one at a time, in order.
        blocked = False
        for ordinal in range(replicas):
            pod = by_ordinal.get(ordinal)
            if pod is None:
                create(ordinal)
                if ordered:
                    blocked = True
                    break
            elif ordered and not self._pod_ready(pod):
                blocked = True  # starting, not ready, or terminating before its replacement
                break
        # 2. Scale down from the highest ordinal.
        if not blocked:
            for ordinal in sorted((o for o in by_ordinal if o >= replicas), reverse=True):
                pod = by_ordinal[ordinal]
                if not self._terminating(pod):
                    self._terminate(pod)
                if ordered:
                    blocked = True
                    break
        # 3. Rolling update: one pod at a time, highest ordinal first, down to the partition.
        if not blocked and rolling:
            for ordinal in range(replicas - 1, partition - 1, -1):
                pod = by_ordinal.get(ordinal)
                if pod is None or self._terminating(pod):
                    break
                if revision_of(pod) != update_revision:
                    self._terminate(pod)
                    break
                if not self._pod_ready(pod):
                    break

        live = [p for p in by_ordinal.values() if not self._terminating(p)]
        ready = sum(1 for p in live if self._pod_ready(p))
        updated = sum(1 for p in live if revision_of(p) == update_revision)
        current = sum(1 for p in live if revision_of(p) == current_revision)
        created_count = len(by_ordinal)
        if updated == created_count == replicas and ready == replicas:
            current_revision, current = update_revision, updated  # the rollout is complete
        for revision in list(templates):
            if revision not in (current_revision, update_revision) and not any(
                revision_of(p) == revision for p in by_ordinal.values()
            ):
                del templates[revision]
        status: dict[str, Any] = {"observedGeneration": meta.get("generation", 1), "replicas": created_count}
        set_if(status, "readyReplicas", ready)
        set_if(status, "currentReplicas", current)
        set_if(status, "updatedReplicas", updated)
        status["currentRevision"] = current_revision
        status["updateRevision"] = update_revision
        status["collisionCount"] = 0
        status["availableReplicas"] = ready
        self._write_workload_status(STATEFULSETS, sts, status)
        return False

    # -- DaemonSets --------------------------------------------------------------------------

    def _sync_daemonset(self, ds: dict[str, Any]) -> bool:
        meta, spec = ds["metadata"], ds["spec"]
        uid, name = meta["uid"], meta["name"]
        nodes = [node_name(i) for i in range(self.config.nodes)]  # type: ignore[attr-defined]
        wanted_hash = template_hash(spec["template"])
        generation = str(meta.get("generation", 1))
        strategy = spec.get("updateStrategy") or {}
        rolling = strategy.get("type", "RollingUpdate") == "RollingUpdate"
        settings = strategy.get("rollingUpdate") or {}
        max_surge = resolve_int_or_percent(settings.get("maxSurge", 0), len(nodes), round_up=True) if rolling else 0
        max_unavailable = (
            resolve_int_or_percent(settings.get("maxUnavailable", 1), len(nodes), round_up=True) if rolling else 0
        )
        if rolling and max_surge == 0 and max_unavailable == 0:
            max_unavailable = 1

        pods = list(self._pods_by_owner.get(uid, []))
        on_node: dict[str, list[dict[str, Any]]] = {node: [] for node in nodes}
        for pod in pods:
            node = pod["spec"].get("nodeName", "")
            if node not in on_node:
                if not self._terminating(pod):
                    self._terminate(pod)  # its node is gone (fewer nodes now)
                continue
            on_node[node].append(pod)

        def is_new(pod: dict[str, Any]) -> bool:
            return (pod["metadata"].get("labels") or {}).get(REVISION_LABEL) == wanted_hash

        def create(node: str) -> None:
            suffix = "".join(secrets.choice(SAFE_ALPHABET) for _position in range(5))
            created = self._create_owned_pod(
                ds,
                spec["template"],
                f"{name}-{suffix}",
                {REVISION_LABEL: wanted_hash, TEMPLATE_GENERATION_LABEL: generation},
                {"nodeName": node},
            )
            if created is not None:
                on_node[node].append(created)

        def live(node: str) -> list[dict[str, Any]]:
            return [p for p in on_node[node] if not self._terminating(p)]

        for node in nodes:
            pods_here = live(node)
            # A node without a pod gets one; with maxSurge=0 only once its old pod has gone.
            if not pods_here and not on_node[node]:
                create(node)
            elif len(pods_here) > 1:
                # Two pods on a node: after a surge, the old one leaves once the new one is ready.
                new_ready = [p for p in pods_here if is_new(p) and self._pod_ready(p)]
                for pod in pods_here:
                    if not is_new(pod) and (new_ready or not rolling):
                        self._terminate(pod)
                extra_new = [p for p in pods_here if is_new(p)][1:]
                for pod in extra_new:
                    self._terminate(pod)
        if rolling:
            old_nodes = [
                n for n in nodes if any(not is_new(p) for p in live(n)) and not any(is_new(p) for p in live(n))
            ]
            # Nodes whose old pod is not ready cost no availability: replace those first.
            old_nodes.sort(key=lambda n: any(self._pod_ready(p) for p in live(n)))
            if max_surge > 0:
                surging = sum(1 for n in nodes if any(is_new(p) for p in live(n)) and len(live(n)) > 1)
                budget = max_surge - surging
                for node in old_nodes:
                    if not any(self._pod_ready(p) for p in live(node)):
                        for pod in live(node):
                            self._terminate(pod)
                    elif budget > 0:
                        create(node)
                        budget -= 1
            else:
                unavailable = sum(1 for n in nodes if not any(self._pod_ready(p) for p in live(n)))
                budget = max_unavailable - unavailable
                for node in old_nodes:
                    pods_here = live(node)
                    if not any(self._pod_ready(p) for p in pods_here):
                        for pod in pods_here:
                            self._terminate(pod)
                    elif budget > 0:
                        for pod in pods_here:
                            self._terminate(pod)
                        budget -= 1

        scheduled = sum(1 for n in nodes if live(n))
        ready = sum(1 for n in nodes if any(self._pod_ready(p) for p in live(n)))
        updated = sum(1 for n in nodes if any(is_new(p) for p in live(n)))
        misscheduled = sum(1 for p in pods if p["spec"].get("nodeName") not in on_node and not self._terminating(p))
        status: dict[str, Any] = {
            "currentNumberScheduled": scheduled,
            "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": len(nodes),
            "numberReady": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        set_if(status, "updatedNumberScheduled", updated)
        set_if(status, "numberAvailable", ready)
        set_if(status, "numberUnavailable", len(nodes) - ready)
        self._write_workload_status(DAEMONSETS, ds, status)
        return False

    # -- Jobs --------------------------------------------------------------------------------

    def _sync_job(self, job: dict[str, Any], now: float) -> bool:
        meta, spec = job["metadata"], job["spec"]
        uid, name = meta["uid"], meta["name"]
        old_status = job.get("status") if isinstance(job.get("status"), dict) else {}
        pods = list(self._pods_by_owner.get(uid, []))
        succeeded = sum(1 for p in pods if self._pod_finished(p))
        active = [p for p in pods if not self._pod_finished(p) and not self._terminating(p)]
        completions = spec.get("completions")
        parallelism = spec.get("parallelism", 1)
        complete = any(
            c.get("type") == "Complete" and c.get("status") == "True" for c in old_status.get("conditions") or []
        ) or (succeeded >= completions if completions is not None else succeeded > 0 and not active)
        workload = next(
            (
                (ref["kind"], ref["name"])
                for ref in meta.get("ownerReferences") or []
                if ref.get("controller") and ref.get("kind") == "CronJob"
            ),
            None,
        )
        if complete or spec.get("suspend"):
            for pod in active:
                self._terminate(pod)
            active = []
        else:
            wanted = parallelism if completions is None else min(parallelism, completions - succeeded)
            for _missing in range(max(0, wanted - len(active))):
                suffix = "".join(secrets.choice(SAFE_ALPHABET) for _position in range(5))
                created = self._create_owned_pod(job, spec["template"], f"{name}-{suffix}", workload=workload)
                if created is not None:
                    active.append(created)
        stamp = now_rfc3339()
        status: dict[str, Any] = {}
        if old_status.get("startTime") or not spec.get("suspend"):
            status["startTime"] = old_status.get("startTime") or stamp
        set_if(status, "active", len(active))
        set_if(status, "succeeded", succeeded)
        status["ready"] = sum(1 for p in active if self._pod_ready(p))
        status["terminating"] = sum(1 for p in pods if self._terminating(p) and not self._pod_finished(p))
        status["uncountedTerminatedPods"] = {}
        conditions = [c for c in old_status.get("conditions") or [] if isinstance(c, dict)]
        if spec.get("suspend") and not complete:
            if not any(c.get("type") == "Suspended" for c in conditions):
                conditions.append(self._job_condition("Suspended", "JobSuspended", "Job suspended", stamp))
        else:
            conditions = [c for c in conditions if c.get("type") != "Suspended"]
        if complete:
            status["completionTime"] = old_status.get("completionTime") or stamp
            if not any(c.get("type") == "Complete" for c in conditions):
                conditions.append(
                    self._job_condition(
                        "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods", stamp
                    )
                )
                conditions.append(
                    self._job_condition(
                        "Complete", "CompletionsReached", "Reached expected number of succeeded pods", stamp
                    )
                )
            self.job_done_at.setdefault(uid, now)
        if conditions:
            status["conditions"] = conditions
        self._write_workload_status(JOBS, job, status)
        ttl = spec.get("ttlSecondsAfterFinished")
        if complete and ttl is not None:
            if now - self.job_done_at[uid] >= ttl:
                self.store.delete(JOBS, meta["namespace"], name)  # its pods follow through garbage collection
                self.job_done_at.pop(uid, None)
                return False
            return True
        return bool(active) and not complete

    @staticmethod
    def _job_condition(kind: str, reason: str, message: str, stamp: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True",
            "lastProbeTime": stamp,
            "lastTransitionTime": stamp,
            "reason": reason,
            "message": message,
        }

    # -- CronJobs ----------------------------------------------------------------------------

    def _sync_cronjob(self, cronjob: dict[str, Any]) -> None:
        meta, spec = cronjob["metadata"], cronjob["spec"]
        jobs = [j for j in self.store.items(JOBS, meta["namespace"]) if self._controller_uid(j) == meta["uid"]]

        def done(job: dict[str, Any]) -> bool:
            return any(
                c.get("type") == "Complete" and c.get("status") == "True"
                for c in (job.get("status") or {}).get("conditions") or []
            )

        finished = sorted((j for j in jobs if done(j)), key=lambda j: j["metadata"]["creationTimestamp"])
        keep = spec.get("successfulJobsHistoryLimit", 3)
        for job in finished[: max(0, len(finished) - keep)]:
            self.store.delete(JOBS, meta["namespace"], job["metadata"]["name"])
            jobs.remove(job)
        old_status = cronjob.get("status") if isinstance(cronjob.get("status"), dict) else {}
        status: dict[str, Any] = {}
        active = [
            {
                "kind": "Job",
                "namespace": j["metadata"]["namespace"],
                "name": j["metadata"]["name"],
                "uid": j["metadata"]["uid"],
                "apiVersion": "batch/v1",
                "resourceVersion": j["metadata"]["resourceVersion"],
            }
            for j in jobs
            if not done(j)
        ]
        if active:
            status["active"] = active
        for key in ("lastScheduleTime", "lastSuccessfulTime"):
            if old_status.get(key):
                status[key] = old_status[key]
        completed = [(j.get("status") or {}).get("completionTime") for j in jobs if done(j)]
        if any(completed):
            status["lastSuccessfulTime"] = max(c for c in completed if c)
        self._write_workload_status(CRONJOBS, cronjob, status)

    @staticmethod
    def _controller_uid(obj: dict[str, Any]) -> str | None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("controller"):
                return ref.get("uid")
        return None

    def run_cronjob(self, namespace: str, name: str) -> dict[str, Any]:
        """Make the CronJob's next Job now, as its schedule would (caller holds store.lock)."""
        cronjob = self.store.peek(CRONJOBS, namespace, name)
        if cronjob is None:
            raise ApiError(404, "NotFound", f'cronjobs.batch "{name}" not found')
        job_template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
        scheduled = int(time.time())
        job_name = f"{name}-{scheduled // 60}"
        while self.store.peek(JOBS, namespace, job_name) is not None:
            scheduled += 60
            job_name = f"{name}-{scheduled // 60}"
        job_meta = job_template.get("metadata") or {}
        annotations = dict(job_meta.get("annotations") or {})
        annotations[SCHEDULED_ANNOTATION] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(scheduled))
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": job_name,
                "namespace": namespace,
                "labels": dict(job_meta.get("labels") or {}),
                "annotations": annotations,
                "ownerReferences": [owner_ref(cronjob)],
            },
            "spec": job_template["spec"],
        }
        created = self.store.create(JOBS, namespace, job)

        def stamp(obj: dict[str, Any]) -> dict[str, Any]:
            obj.setdefault("status", {})["lastScheduleTime"] = now_rfc3339()
            return obj

        self.store.update_with(CRONJOBS, namespace, name, stamp, validate=False)
        return created


def job_duration(annotations: dict[str, str], default: float) -> float:
    try:
        return max(0.0, float(annotations[ANNOTATION + "job-duration"]))
    except (KeyError, ValueError):
        return default

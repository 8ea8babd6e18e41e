"""Deployment and ReplicaSet controllers, a kubelet stand-in, and the pods' runtime state.

One thread reconciles everything every ``TICK`` seconds (or sooner when an object
changes), the way kube-controller-manager and the kubelet would: Deployments own
ReplicaSets, ReplicaSets own Pods, Pods start, become ready, and terminate with a grace
period during which they still hold (and use) their old token.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import math
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.sandbox.k8s.apps import (
    CRONJOBS,
    DAEMONSETS,
    JOBS,
    STATEFULSETS,
    WORKLOAD_TYPES,
    AppsControllers,
)
from tests.sandbox.k8s.objects import (
    ANNOTATION,
    HASH_LABEL,
    SAFE_ALPHABET,
    resolve_int_or_percent,
    template_hash,
)
from tests.sandbox.k8s.objects import owner_uid as _owner
from tests.sandbox.k8s.objects import set_if as _set_if
from tests.sandbox.k8s.resources import lookup
from tests.sandbox.k8s.store import ApiError, Event, Store, now_rfc3339

log = logging.getLogger("k8s-emulator.controller")

TICK = 0.05
NS = lookup("", "v1", "namespaces")
PODS = lookup("", "v1", "pods")
SECRETS = lookup("", "v1", "secrets")
DEPLOYMENTS = lookup("apps", "v1", "deployments")
REPLICASETS = lookup("apps", "v1", "replicasets")
assert NS and PODS and SECRETS and DEPLOYMENTS and REPLICASETS

REVISION = "deployment.kubernetes.io/revision"


@dataclass
class Config:
    """Timings of the simulated kubelet and workload, in seconds (``/_sandbox/config``)."""

    pod_start_delay: float = 1.0
    pod_ready_delay: float = 0.5
    termination_grace: float = 2.0
    request_interval: float = 0.2
    secret_sync_delay: float = 1.0
    job_duration: float = 3.0  # how long a Job's pod (restartPolicy Never/OnFailure) runs before it succeeds
    nodes: int = 2  # simulated nodes: DaemonSets run one pod on each

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class PodRuntime:
    """What the simulated kubelet and the simulated application know about one pod."""

    namespace: str
    name: str
    uid: str
    deployment: str  # the owning Deployment ("" for pods of other owners)
    replicaset: str
    start_at: float
    ready_delay: float
    grace: float
    request_interval: float
    token_mode: str  # "env" (read once at start), "volume" (re-read), "none"
    secret_name: str = ""
    secret_key: str = "token"
    reload_interval: float | None = None
    sync_delay: float = 0.0
    started: bool = False
    ready: bool = False
    ready_at: float | None = None
    waiting_reason: str = "ContainerCreating"
    remove_at: float | None = None
    token: str | None = None
    next_reload: float = 0.0
    next_call: float = 0.0
    in_flight: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    owner_kind: str = ""  # the pod's controller: ReplicaSet, StatefulSet, DaemonSet, Job ("" for a bare pod)
    owner_name: str = ""
    workload_kind: str = ""  # what an operator names: Deployment, StatefulSet, DaemonSet, Job or CronJob
    workload_name: str = ""
    node: str = ""
    token_source: str = "none"  # env, envFrom, volume, projected, none
    run_for: float | None = None  # seconds from start until the container completes (Job pods)
    finish_at: float | None = None
    finished: bool = False

    def chain(self) -> set[tuple[str, str]]:
        return {(self.owner_kind, self.owner_name), (self.workload_kind, self.workload_name)}

    @property
    def token_fingerprint(self) -> str | None:
        return hashlib.sha256(self.token.encode()).hexdigest()[:8] if self.token else None


class SecretHistory:
    """What each Secret held when, so a mounted volume can lag behind like a kubelet sync."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: dict[tuple[str, str], list[tuple[float, dict[str, str] | None]]] = {}

    def record(self, event: Event) -> None:
        if event.rt is not SECRETS:
            return
        data = None if event.type == "DELETED" else dict(event.obj.get("data") or {})
        key = (event.namespace, event.obj["metadata"]["name"])
        with self.lock:
            history = self.versions.setdefault(key, [])
            history.append((time.monotonic(), data))
            if len(history) > 20:
                del history[:-20]

    def as_seen(self, namespace: str, name: str, delay: float) -> dict[str, str] | None:
        """The Secret's data as a volume shows it ``delay`` seconds after each change."""
        cutoff = time.monotonic() - delay
        with self.lock:
            history = self.versions.get((namespace, name)) or []
            seen = [data for stamp, data in history if stamp <= cutoff]
            if seen:
                return seen[-1]
            return history[0][1] if history else None


class Controller(AppsControllers):
    def __init__(self, store: Store, config: Config | None = None) -> None:
        self.store = store
        self.config = config or Config()
        self.initial_config = Config(**self.config.as_dict())
        self.faults: list[dict[str, Any]] = []
        self.pods: dict[str, PodRuntime] = {}  # by pod uid
        self.pods_lock = threading.Lock()
        self.progress: dict[str, float] = {}  # deployment uid -> monotonic time of last progress
        self.hashes: dict[str, tuple[Any, str]] = {}  # deployment uid -> (generation, template hash)
        self.failed: set[tuple[Any, Any, Any]] = set()  # objects already logged as unreconcilable
        # Work lists fed by store events, so a tick only touches what changed: a fleet of
        # hundreds of settled Deployments costs nothing between rollouts.
        self.dirty_deployments: set[str] = set()
        self.dirty_replicasets: set[str] = set()
        self.dirty_workloads: set[str] = set()  # StatefulSets, DaemonSets, Jobs, CronJobs
        self.new_pods: set[str] = set()  # pods a client created: they need a runtime
        self.busy_pods: set[str] = set()  # pods with a kubelet timer pending (start, ready, reload, grace)
        self.deleted_pods: set[str] = set()
        self.locations: dict[str, tuple[Any, str, str]] = {}  # uid -> (type, namespace, name)
        self.rs_owner: dict[str, str] = {}  # ReplicaSet uid -> Deployment uid
        self.gc_needed = False
        self.next_full_sync = 0.0
        self._pods_by_owner: dict[str | None, list[dict[str, Any]]] = {}
        self._rs_by_owner: dict[str | None, list[dict[str, Any]]] = {}
        self.secret_history = SecretHistory()
        self.finished_requests: dict[str, int] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._init_apps()
        store.listeners.append(self._on_event)
        self.thread = threading.Thread(target=self._run, name="controller", daemon=True)

    # -- control surface ---------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def configure(self, values: dict[str, Any]) -> None:
        known = set(self.config.as_dict())
        unknown = set(values) - known
        if unknown:
            raise ApiError(400, "BadRequest", f"unknown config key(s) {sorted(unknown)}; known: {sorted(known)}")
        for key, value in values.items():
            if key == "nodes":
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                    raise ApiError(400, "BadRequest", "config nodes must be an integer from 0 to 100")
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ApiError(400, "BadRequest", f"config {key} must be a number of seconds >= 0")
            if key == "request_interval" and value < 0.01:
                raise ApiError(400, "BadRequest", "config request_interval must be at least 0.01 seconds")
        with self.store.lock:
            for key, value in values.items():
                setattr(self.config, key, value if key == "nodes" else float(value))
            if "nodes" in values:
                self.dirty_workloads.update(d["metadata"]["uid"] for d in self.store.table(DAEMONSETS).values())
        self.wake.set()

    def add_fault(self, body: dict[str, Any]) -> None:
        if body.get("never_ready") is not True:
            raise ApiError(
                400,
                "BadRequest",
                'a fault needs "never_ready": true (optionally "namespace", and "deployment" or "kind"/"workload")',
            )
        unknown = set(body) - {"namespace", "deployment", "kind", "workload", "never_ready"}
        if unknown:
            raise ApiError(400, "BadRequest", f"unknown fault key(s) {sorted(unknown)}")
        for key in ("namespace", "deployment", "kind", "workload"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise ApiError(400, "BadRequest", f"fault {key} must be a string")
        kind, workload = body.get("kind"), body.get("workload")
        if body.get("deployment") is not None:
            # The original form: {"deployment": X} is {"kind": "Deployment", "workload": X}.
            if kind not in (None, "Deployment") or workload not in (None, body["deployment"]):
                raise ApiError(400, "BadRequest", 'a fault with "deployment" names a Deployment, no other workload')
            kind, workload = "Deployment", body["deployment"]
        with self.store.lock:
            self.faults.append(
                {
                    "namespace": body.get("namespace"),
                    "deployment": body.get("deployment"),
                    "kind": kind,
                    "workload": workload,
                    "never_ready": True,
                }
            )

    def clear_faults(self) -> None:
        with self.store.lock:
            self.faults.clear()
            self.busy_pods.update(self.pods)
        self.wake.set()

    def faults_list(self) -> list[dict[str, Any]]:
        with self.store.lock:
            return copy.deepcopy(self.faults)

    def reset(self) -> None:
        """Forget pods, faults and timing changes; the caller has emptied the store (holds store.lock)."""
        self.faults.clear()
        self.config = Config(**self.initial_config.as_dict())
        with self.pods_lock:
            self.pods.clear()
            self.finished_requests.clear()
        self.progress.clear()
        self.hashes.clear()
        for work in (
            self.dirty_deployments,
            self.dirty_replicasets,
            self.dirty_workloads,
            self.new_pods,
            self.busy_pods,
            self.deleted_pods,
        ):
            work.clear()
        self.locations.clear()
        self.rs_owner.clear()
        self._reset_apps()

    def reset_counters(self) -> None:
        with self.pods_lock:
            self.finished_requests.clear()
            for pod in self.pods.values():
                pod.requests.clear()

    def state(self) -> dict[str, Any]:
        with self.pods_lock:
            pods = [
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "deployment": p.deployment,
                    "replicaset": p.replicaset,
                    "owner_kind": p.owner_kind,
                    "owner_name": p.owner_name,
                    "workload_kind": p.workload_kind,
                    "workload": p.workload_name,
                    "node": p.node,
                    "started": p.started,
                    "ready": p.ready,
                    "finished": p.finished,
                    "terminating": p.remove_at is not None,
                    "waiting_reason": None if p.started or p.finished else p.waiting_reason,
                    "token_mode": p.token_mode,
                    "token_source": p.token_source,
                    "token_fingerprint": p.token_fingerprint,
                    "requests": dict(p.requests),
                }
                for p in sorted(self.pods.values(), key=lambda p: (p.namespace, p.name))
            ]
            totals = dict(self.finished_requests)
            for pod in self.pods.values():
                for status, count in pod.requests.items():
                    totals[status] = totals.get(status, 0) + count
        return {
            "config": self.config.as_dict(),
            "faults": self.faults_list(),
            "pods": pods,
            "workload": {"requests": totals},
        }

    def terminate_pod(self, pod: dict[str, Any], grace: float | None) -> dict[str, Any]:
        """Graceful pod deletion (client DELETE or controller scale-down); caller holds store.lock."""
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        uid = pod["metadata"]["uid"]
        with self.pods_lock:
            runtime = self.pods.get(uid)
            if grace is None:
                grace = runtime.grace if runtime else self.config.termination_grace
            if runtime is not None and runtime.finished:
                grace = 0  # a completed container has nothing left to stop
            if runtime is not None:
                self.busy_pods.add(uid)
            if runtime is not None and runtime.remove_at is None:
                runtime.remove_at = time.monotonic() + grace
            elif runtime is not None:
                runtime.remove_at = min(runtime.remove_at, time.monotonic() + grace)
        if pod["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(pod)

        def mark(obj: dict[str, Any]) -> dict[str, Any]:
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["metadata"]["deletionGracePeriodSeconds"] = math.ceil(grace)
            return obj

        updated = self.store.update_with(PODS, namespace, name, mark, validate=False)
        if runtime is None or grace == 0:
            self.store.delete(PODS, namespace, name)
        self.wake.set()
        return updated

    # -- the loop ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Called by the store under its lock for every write: note what needs reconciling."""
        self.secret_history.record(event)
        meta = event.obj["metadata"]
        uid, owner = meta["uid"], _owner(event.obj)
        deleted = event.type == "DELETED"
        if event.rt in (DEPLOYMENTS, REPLICASETS) or event.rt in WORKLOAD_TYPES:
            if deleted:
                self.locations.pop(uid, None)
                self.gc_needed = True
            else:
                self.locations[uid] = (event.rt, event.namespace, meta["name"])
        if event.rt is DEPLOYMENTS:
            self.dirty_deployments.add(uid)
        elif event.rt in WORKLOAD_TYPES:
            self.dirty_workloads.add(uid)
            if owner:
                self.dirty_workloads.add(owner)  # a CronJob's Job changed
        elif event.rt is REPLICASETS:
            self.dirty_replicasets.add(uid)
            if owner:
                self.dirty_deployments.add(owner)
                if deleted:
                    self.rs_owner.pop(uid, None)
                else:
                    self.rs_owner[uid] = owner
        elif event.rt is PODS:
            if owner:
                where = self.locations.get(owner)
                if where is None or where[0] is REPLICASETS:
                    self.dirty_replicasets.add(owner)
                else:
                    self.dirty_workloads.add(owner)
                if owner in self.rs_owner:
                    self.dirty_deployments.add(self.rs_owner[owner])
            if deleted:
                self.deleted_pods.add(uid)
            elif event.type == "ADDED" and uid not in self.pods:
                self.new_pods.add(uid)  # a client's pod, or a controller's about to be registered
        elif event.rt is NS and deleted:
            self.gc_needed = True
        if event.rt is not PODS:
            self.wake.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(TICK)
            self.wake.clear()
            try:
                with self.store.lock:
                    self._tick()
            except Exception:  # keep reconciling: one bad object must not stop every rollout
                log.exception("controller tick failed")
                time.sleep(0.5)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_full_sync:
            # A periodic full pass: progress deadlines need time to pass, and it is cheap insurance.
            self.next_full_sync = now + 2.0
            self.dirty_deployments.update(d["metadata"]["uid"] for d in self.store.table(DEPLOYMENTS).values())
            self.dirty_replicasets.update(r["metadata"]["uid"] for r in self.store.table(REPLICASETS).values())
            for rt in WORKLOAD_TYPES:
                self.dirty_workloads.update(o["metadata"]["uid"] for o in self.store.table(rt).values())
            self.busy_pods.update(self.pods)
            self.gc_needed = True
        if self.new_pods:
            self._adopt_new_pods()
        self._kubelet(now)
        if self.gc_needed:
            self.gc_needed = False
            self._garbage_collect()
        if not (self.dirty_replicasets or self.dirty_deployments or self.dirty_workloads):
            return
        self._pods_by_owner = {}
        for pod in self.store.table(PODS).values():
            self._pods_by_owner.setdefault(_owner(pod), []).append(pod)
        dirty, self.dirty_replicasets = self.dirty_replicasets, set()
        for uid in dirty:
            rs = self._locate(uid, REPLICASETS)
            if rs is not None:
                self._guarded(self._sync_replicaset, rs)
        self._rs_by_owner = {}
        for rs in self.store.table(REPLICASETS).values():
            self._rs_by_owner.setdefault(_owner(rs), []).append(rs)
        dirty, self.dirty_deployments = self.dirty_deployments, set()
        for uid in dirty:
            deployment = self._locate(uid, DEPLOYMENTS)
            if deployment is not None:
                self._guarded(self._sync_deployment, deployment, now)
                if not self._settled(uid):
                    self.dirty_deployments.add(uid)  # mid-rollout: look again next tick (deadline, progress)
        dirty, self.dirty_workloads = self.dirty_workloads, set()
        for uid in dirty:
            where = self.locations.get(uid)
            workload = self._locate(uid, where[0]) if where is not None else None
            if workload is not None and self._guarded(self._sync_workload, workload, now):
                self.dirty_workloads.add(uid)

    def _adopt_new_pods(self) -> None:
        """Give a runtime to pods no controller registered: bare pods clients created."""
        new, self.new_pods = self.new_pods, set()
        known = {uid for uid in new if uid in self.pods}
        if known == new:
            return
        for pod in list(self.store.table(PODS).values()):
            uid = pod["metadata"]["uid"]
            if uid in new and uid not in known and not pod["metadata"].get("deletionTimestamp"):
                annotations = pod["metadata"].get("annotations") or {}
                self._register_runtime(pod, annotations)

    def _locate(self, uid: str, rt: Any) -> dict[str, Any] | None:
        where = self.locations.get(uid)
        if where is None or where[0] is not rt:
            return None
        obj = self.store.peek(rt, where[1], where[2])
        return obj if obj is not None and obj["metadata"]["uid"] == uid else None

    def _settled(self, uid: str) -> bool:
        deployment = self._locate(uid, DEPLOYMENTS)
        if deployment is None:
            return True
        progressing = next(
            (c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == "Progressing"), {}
        )
        return progressing.get("reason") in ("NewReplicaSetAvailable", "ProgressDeadlineExceeded")

    def _guarded(self, sync: Any, obj: dict[str, Any], *args: Any) -> Any:
        # One object the controller cannot handle must not stall every other rollout.
        try:
            return sync(obj, *args)
        except Exception:
            key = (
                obj["metadata"].get("namespace"),
                obj["metadata"].get("name"),
                obj["metadata"].get("resourceVersion"),
            )
            if key not in self.failed:
                self.failed.add(key)
                log.exception("cannot reconcile %s %s/%s", obj.get("kind"), key[0], key[1])

    # -- kubelet -----------------------------------------------------------------------------

    def _never_ready(self, runtime: PodRuntime) -> bool:
        chain = [(kind, name) for kind, name in runtime.chain() if kind]

        def matches(fault: dict[str, Any]) -> bool:
            if fault["namespace"] not in (None, runtime.namespace):
                return False
            if fault.get("kind") is None and fault.get("workload") is None:
                return True  # the whole namespace (or cluster), bare pods included
            return any(fault.get("kind") in (None, k) and fault.get("workload") in (None, n) for k, n in chain)

        return any(matches(f) for f in self.faults)

    def _read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        secret = self.store.peek(SECRETS, namespace, name)
        value = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(value).decode(errors="replace") if value is not None else None

    def _kubelet(self, now: float) -> None:
        with self.pods_lock:
            for uid in self.deleted_pods:
                runtime = self.pods.get(uid)
                if runtime is not None:
                    self._forget(runtime)
            self.deleted_pods.clear()
            runtimes = [self.pods[uid] for uid in self.busy_pods if uid in self.pods]
            self.busy_pods = {r.uid for r in runtimes}
        for runtime in runtimes:
            pod = self.store.peek(PODS, runtime.namespace, runtime.name)
            if pod is None or pod["metadata"]["uid"] != runtime.uid:
                with self.pods_lock:
                    self._forget(runtime)
                continue
            if runtime.remove_at is None and (
                runtime.finished or (runtime.ready and runtime.reload_interval is None and runtime.finish_at is None)
            ):
                self.busy_pods.discard(runtime.uid)  # nothing left to time until it is deleted
                continue
            if runtime.remove_at is None and runtime.finish_at is not None and now >= runtime.finish_at:
                with self.pods_lock:
                    runtime.finished, runtime.ready = True, False  # the container exits 0: no more calls
                self._write_pod_status(runtime, pod)
                continue
            if runtime.remove_at is not None:
                if now >= runtime.remove_at:
                    self.store.delete(PODS, runtime.namespace, runtime.name)
                    with self.pods_lock:
                        self._forget(runtime)
                continue
            if not runtime.started and now >= runtime.start_at:
                self._start_container(runtime, pod, now)
            elif (
                runtime.started
                and runtime.token_mode == "volume"
                and runtime.reload_interval is not None
                and now >= runtime.next_reload
            ):
                data = self.secret_history.as_seen(runtime.namespace, runtime.secret_name, runtime.sync_delay)
                value = (data or {}).get(runtime.secret_key)
                if value is not None:
                    with self.pods_lock:
                        runtime.token = base64.b64decode(value).decode(errors="replace")
                runtime.next_reload = now + runtime.reload_interval
            if (
                runtime.started
                and not runtime.ready
                and runtime.ready_at is not None
                and now >= runtime.ready_at
                and not self._never_ready(runtime)
            ):
                runtime.ready = True
                self._write_pod_status(runtime, pod)

    def _forget(self, runtime: PodRuntime) -> None:
        if self.pods.pop(runtime.uid, None) is not None:
            for status, count in runtime.requests.items():
                self.finished_requests[status] = self.finished_requests.get(status, 0) + count

    def _start_container(self, runtime: PodRuntime, pod: dict[str, Any], now: float) -> None:
        token: str | None = None
        if runtime.token_mode == "env":
            token = self._read_secret_key(runtime.namespace, runtime.secret_name, runtime.secret_key)
            if token is None:
                runtime.waiting_reason = "CreateContainerConfigError"
        elif runtime.token_mode == "volume":
            if self.store.peek(SECRETS, runtime.namespace, runtime.secret_name) is None:
                runtime.waiting_reason = "ContainerCreating"  # the volume cannot be mounted yet
            else:
                token = self._read_secret_key(runtime.namespace, runtime.secret_name, runtime.secret_key)
        if token is None and runtime.token_mode != "none":
            if (
                pod.get("status", {})
                .get("containerStatuses", [{}])[0]
                .get("state", {})
                .get("waiting", {})
                .get("reason")
                != runtime.waiting_reason
            ):
                self._write_pod_status(runtime, pod)
            runtime.start_at = now + 0.5  # the kubelet retries
            return
        with self.pods_lock:
            runtime.token = token
            runtime.started = True
            runtime.ready_at = now + runtime.ready_delay
            runtime.next_call = now
            if runtime.reload_interval is not None:
                runtime.next_reload = now + runtime.reload_interval
            if runtime.run_for is not None:
                runtime.finish_at = now + runtime.run_for
        self._write_pod_status(runtime, pod)

    def _write_pod_status(self, runtime: PodRuntime, pod: dict[str, Any]) -> None:
        stamp = now_rfc3339()
        containers = pod["spec"].get("containers") or []
        status = copy.deepcopy(pod.get("status") or {})
        conditions = {c["type"]: c for c in status.get("conditions") or []}

        def condition(kind: str, value: bool) -> dict[str, Any]:
            old = conditions.get(kind)
            wanted = "True" if value else "False"
            if old and old["status"] == wanted:
                return old
            return {"type": kind, "status": wanted, "lastProbeTime": None, "lastTransitionTime": stamp}

        status["phase"] = "Succeeded" if runtime.finished else "Running" if runtime.started else "Pending"
        status["conditions"] = [
            condition("PodScheduled", True),
            condition("Initialized", True),
            condition("ContainersReady", runtime.ready),
            condition("Ready", runtime.ready),
        ]
        if runtime.finished:
            for entry in status["conditions"][2:]:
                entry["reason"] = "PodCompleted"
        statuses = []
        for container in containers:
            entry: dict[str, Any] = {
                "name": container.get("name"),
                "image": container.get("image"),
                "imageID": "",
                "restartCount": 0,
                "ready": runtime.ready,
                "started": runtime.started,
            }
            if runtime.finished:
                entry["started"] = False
                entry["state"] = {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": status.get("startTime", stamp),
                        "finishedAt": stamp,
                    }
                }
                entry["containerID"] = f"sandbox://{runtime.uid[:12]}"
            elif runtime.started:
                entry["state"] = {"running": {"startedAt": status.get("startTime", stamp)}}
                entry["containerID"] = f"sandbox://{runtime.uid[:12]}"
            else:
                entry["state"] = {"waiting": {"reason": runtime.waiting_reason}}
            statuses.append(entry)
        status["containerStatuses"] = statuses
        if status != pod.get("status"):

            def change(obj: dict[str, Any]) -> dict[str, Any]:
                obj["status"] = status
                return obj

            self.store.update_with(PODS, runtime.namespace, runtime.name, change, validate=False)

    # -- ownership ---------------------------------------------------------------------------

    def _garbage_collect(self) -> None:
        """Background deletion: objects whose controller is gone follow it (ReplicaSets, Jobs, then pods)."""
        owners = {d["metadata"]["uid"] for d in self.store.table(DEPLOYMENTS).values()}
        owners |= {c["metadata"]["uid"] for c in self.store.table(CRONJOBS).values()}
        for rt in (REPLICASETS, JOBS):
            for obj in list(self.store.table(rt).values()):
                owner = _owner(obj)
                if owner and owner not in owners:
                    self.store.delete(rt, obj["metadata"]["namespace"], obj["metadata"]["name"])
        pod_owners = set()
        for rt in (REPLICASETS, STATEFULSETS, DAEMONSETS, JOBS):
            pod_owners |= {o["metadata"]["uid"] for o in self.store.table(rt).values()}
        for pod in list(self.store.table(PODS).values()):
            owner = _owner(pod)
            if owner and owner not in pod_owners and not pod["metadata"].get("deletionTimestamp"):
                self.terminate_pod(pod, None)

    def _pods_of(self, rs_uid: str) -> list[dict[str, Any]]:
        return self._pods_by_owner.get(rs_uid, [])

    # -- ReplicaSets -------------------------------------------------------------------------

    def _sync_replicaset(self, rs: dict[str, Any]) -> None:
        namespace, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        pods = [
            p
            for p in self._pods_of(rs["metadata"]["uid"])
            if not p["metadata"].get("deletionTimestamp")
            and not ((r := self.pods.get(p["metadata"]["uid"])) is not None and r.remove_at is not None)
        ]
        wanted = rs["spec"].get("replicas", 0)
        if len(pods) < wanted:
            for _missing in range(wanted - len(pods)):
                pod = self._create_pod(rs)
                pods.append(pod)
                self._pods_by_owner.setdefault(rs["metadata"]["uid"], []).append(pod)
        elif len(pods) > wanted:
            with self.pods_lock:
                runtimes = {p["metadata"]["uid"]: self.pods.get(p["metadata"]["uid"]) for p in pods}

            def victim_rank(pod: dict[str, Any]) -> tuple[int, int, str]:
                runtime = runtimes.get(pod["metadata"]["uid"])
                # Like the ReplicaSet controller: not-started before not-ready before ready, newest first.
                started = 1 if runtime and runtime.started else 0
                ready = 1 if runtime and runtime.ready else 0
                return (started, ready, "".join(chr(255 - ord(c)) for c in pod["metadata"]["creationTimestamp"]))

            for pod in sorted(pods, key=victim_rank)[: len(pods) - wanted]:
                self.terminate_pod(pod, None)
                pods.remove(pod)
        with self.pods_lock:
            ready = sum(1 for p in pods if (r := self.pods.get(p["metadata"]["uid"])) and r.ready)
        status: dict[str, Any] = {"replicas": len(pods)}
        _set_if(status, "fullyLabeledReplicas", len(pods))
        _set_if(status, "readyReplicas", ready)
        _set_if(status, "availableReplicas", ready)
        status["observedGeneration"] = rs["metadata"].get("generation", 1)
        if status != rs.get("status"):
            self.store.update_with(REPLICASETS, namespace, name, lambda o: {**o, "status": status}, validate=False)

    def _create_pod(self, rs: dict[str, Any]) -> dict[str, Any]:
        namespace = rs["metadata"]["namespace"]
        template = copy.deepcopy(rs["spec"]["template"])
        meta = template.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        suffix = "".join(secrets.choice(SAFE_ALPHABET) for _position in range(5))
        deployment = next(
            (ref["name"] for ref in rs["metadata"].get("ownerReferences") or [] if ref.get("kind") == "Deployment"), ""
        )
        pod = {
            "metadata": {
                "name": f"{rs['metadata']['name']}-{suffix}",
                "namespace": namespace,
                "labels": meta.get("labels") or {},
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": rs["metadata"]["name"],
                        "uid": rs["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "nodeName": "sandbox-node"},
            "status": {"phase": "Pending", "qosClass": "BestEffort", "hostIP": "127.0.0.1", "startTime": now_rfc3339()},
        }
        if not annotations:
            del pod["metadata"]["annotations"]
        created = self.store.create(PODS, namespace, pod)
        self._register_runtime(
            created,
            annotations,
            deployment=deployment,
            replicaset=rs["metadata"]["name"],
            owner_kind="ReplicaSet",
            owner_name=rs["metadata"]["name"],
            workload_kind="Deployment" if deployment else "ReplicaSet",
            workload_name=deployment or rs["metadata"]["name"],
        )
        return created

    def _register_runtime(
        self,
        pod: dict[str, Any],
        annotations: dict[str, str],
        *,
        deployment: str = "",
        replicaset: str = "",
        owner_kind: str = "",
        owner_name: str = "",
        workload_kind: str = "",
        workload_name: str = "",
    ) -> None:
        def seconds(key: str, default: float) -> float:
            try:
                return max(0.0, float(annotations[ANNOTATION + key]))
            except (KeyError, ValueError):
                return default

        source, secret_name, secret_key, reload_interval = self._token_source(pod["spec"], annotations)
        mode = {"envFrom": "env", "projected": "volume"}.get(source, source)
        runs_to_completion = pod["spec"].get("restartPolicy", "Always") != "Always"
        now = time.monotonic()
        runtime = PodRuntime(
            namespace=pod["metadata"]["namespace"],
            name=pod["metadata"]["name"],
            uid=pod["metadata"]["uid"],
            deployment=deployment,
            replicaset=replicaset,
            owner_kind=owner_kind,
            owner_name=owner_name,
            workload_kind=workload_kind,
            workload_name=workload_name,
            node=pod["spec"].get("nodeName", ""),
            token_source=source,
            run_for=seconds("job-duration", self.config.job_duration) if runs_to_completion else None,
            start_at=now + seconds("pod-start-delay", self.config.pod_start_delay),
            ready_delay=seconds("pod-ready-delay", self.config.pod_ready_delay),
            grace=seconds("termination-grace", self.config.termination_grace),
            request_interval=max(0.01, seconds("request-interval", self.config.request_interval)),
            token_mode=mode,
            secret_name=secret_name,
            secret_key=secret_key,
            reload_interval=reload_interval,
            sync_delay=seconds("secret-sync-delay", self.config.secret_sync_delay),
        )
        with self.pods_lock:
            self.pods[runtime.uid] = runtime
            self.busy_pods.add(runtime.uid)

    @staticmethod
    def _token_source(spec: dict[str, Any], annotations: dict[str, str]) -> tuple[str, str, str, float | None]:
        """Where the application takes its token from: Option A (env) or Option B (volume).

        Answers (source, Secret name, key, reload interval); source is env (a secretKeyRef),
        envFrom (a secretRef: all keys as variables), volume (a Secret volume) or projected
        (a projected volume with a Secret source), or none.
        """
        wanted_key = annotations.get(ANNOTATION + "token-key", "token")
        reload_text = annotations.get(ANNOTATION + "reload-interval")
        reload_interval: float | None = None
        if reload_text is not None:
            try:
                reload_interval = max(0.05, float(reload_text))
            except ValueError:
                reload_interval = None

        def volumes() -> list[tuple[str, str]]:
            found = []
            for volume in spec.get("volumes") or []:
                secret = (volume or {}).get("secret") or {}
                if secret.get("secretName"):
                    found.append(("volume", secret["secretName"]))
                for source in ((volume or {}).get("projected") or {}).get("sources") or []:
                    projected = (source or {}).get("secret") or {}
                    if projected.get("name"):
                        found.append(("projected", projected["name"]))
            return found

        if reload_interval is not None and volumes():
            kind, name = volumes()[0]
            return kind, name, wanted_key, reload_interval
        for container in spec.get("containers") or []:
            for env in container.get("env") or []:
                ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if ref.get("name") and ref.get("key") == wanted_key:
                    return "env", ref["name"], wanted_key, None
        for container in spec.get("containers") or []:
            for env_from in container.get("envFrom") or []:
                ref = (env_from or {}).get("secretRef") or {}
                if ref.get("name"):
                    return "envFrom", ref["name"], wanted_key, None
        if volumes():
            kind, name = volumes()[0]
            return kind, name, wanted_key, None
        return "none", "", wanted_key, None

    # -- Deployments -------------------------------------------------------------------------

    def _sync_deployment(self, deployment: dict[str, Any], now: float) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, uid = meta["namespace"], meta["uid"]
        replicas = spec.get("replicas", 1)
        owned = list(self._rs_by_owner.get(uid, []))
        cached = self.hashes.get(uid)
        if cached is None or cached[0] != meta.get("generation"):
            cached = self.hashes[uid] = (meta.get("generation"), template_hash(spec["template"]))
        wanted_hash = cached[1]
        new_rs = next((rs for rs in owned if rs["metadata"].get("labels", {}).get(HASH_LABEL) == wanted_hash), None)
        created_new = False
        max_revision = max((int(rs["metadata"].get("annotations", {}).get(REVISION, "0")) for rs in owned), default=0)
        if new_rs is None and not spec.get("paused"):
            new_rs = self._create_replicaset(deployment, wanted_hash, max_revision + 1)
            owned.append(new_rs)
            created_new = True
        elif new_rs is not None and int(new_rs["metadata"].get("annotations", {}).get(REVISION, "0")) < max_revision:
            revision = str(max_revision + 1)  # back to an older template: it becomes the newest revision

            def bump(obj: dict[str, Any]) -> dict[str, Any]:
                obj["metadata"].setdefault("annotations", {})[REVISION] = revision
                return obj

            new_rs = self.store.update_with(REPLICASETS, namespace, new_rs["metadata"]["name"], bump, validate=False)
            owned = [new_rs if rs["metadata"]["uid"] == new_rs["metadata"]["uid"] else rs for rs in owned]
        old = [rs for rs in owned if new_rs is None or rs["metadata"]["uid"] != new_rs["metadata"]["uid"]]
        if new_rs is not None and not spec.get("paused"):
            if spec["strategy"]["type"] == "Recreate":
                self._recreate(old, new_rs, replicas)
            else:
                self._rolling(spec, old, new_rs, replicas)
        self._cleanup_history(spec, old)
        owned = [rs for rs in (self.store.peek(REPLICASETS, namespace, o["metadata"]["name"]) for o in owned) if rs]
        new_rs = next(
            (rs for rs in owned if new_rs is not None and rs["metadata"]["uid"] == new_rs["metadata"]["uid"]), None
        )
        self._write_status(deployment, owned, new_rs, replicas, now, created_new)

    def _create_replicaset(self, deployment: dict[str, Any], pod_hash: str, revision: int) -> dict[str, Any]:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = copy.deepcopy(spec["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(spec["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        annotations = dict(meta.get("annotations") or {})
        annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
        annotations.update(
            {REVISION: str(revision), "deployment.kubernetes.io/desired-replicas": str(spec.get("replicas", 1))}
        )
        rs = {
            "metadata": {
                "name": f"{meta['name']}-{pod_hash}",
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        return self.store.create(REPLICASETS, meta["namespace"], rs)

    def _scale(self, rs: dict[str, Any], replicas: int) -> None:
        if rs["spec"].get("replicas", 0) == replicas:
            return

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            obj["spec"]["replicas"] = replicas
            return obj

        self.store.update_with(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"], change, validate=False)
        rs["spec"]["replicas"] = replicas  # the caller's view, so later arithmetic in this tick sees it

    def _recreate(self, old: list[dict[str, Any]], new_rs: dict[str, Any], replicas: int) -> None:
        for rs in old:
            self._scale(rs, 0)
        old_uids = {rs["metadata"]["uid"] for rs in old}
        if any(self._pods_of(uid) for uid in old_uids):
            return  # Recreate waits until every old pod is gone, terminating ones included
        self._scale(new_rs, replicas)

    def _rolling(self, spec: dict[str, Any], old: list[dict[str, Any]], new_rs: dict[str, Any], replicas: int) -> None:
        rolling = spec["strategy"].get("rollingUpdate") or {}
        max_surge = resolve_int_or_percent(rolling.get("maxSurge", "25%"), replicas, round_up=True)
        max_unavailable = resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
        if max_surge == 0 and max_unavailable == 0:
            max_unavailable = 1
        all_rs = [new_rs, *old]

        def spec_total() -> int:
            return sum(rs["spec"].get("replicas", 0) for rs in all_rs)

        # Scale up the new ReplicaSet within the surge budget.
        new_count = new_rs["spec"].get("replicas", 0)
        if not old or all(rs["spec"].get("replicas", 0) == 0 for rs in old):
            self._scale(new_rs, replicas)
        elif new_count < replicas:
            room = replicas + max_surge - spec_total()
            if room > 0:
                self._scale(new_rs, new_count + min(room, replicas - new_count))
        elif new_count > replicas:
            self._scale(new_rs, replicas)

        # Scale down old ReplicaSets without dropping below minAvailable.
        old_active = [rs for rs in old if rs["spec"].get("replicas", 0) > 0]
        if not old_active:
            return
        min_available = replicas - max_unavailable
        new_unavailable = new_rs["spec"].get("replicas", 0) - (new_rs.get("status") or {}).get("availableReplicas", 0)
        max_scaled_down = spec_total() - min_available - new_unavailable
        if max_scaled_down <= 0:
            return
        # First the old pods that are not available anyway: removing them costs no availability.
        for rs in sorted(old_active, key=lambda r: r["metadata"]["creationTimestamp"]):
            unhealthy = rs["spec"]["replicas"] - (rs.get("status") or {}).get("availableReplicas", 0)
            cut = min(max_scaled_down, max(0, unhealthy))
            if cut > 0:
                self._scale(rs, rs["spec"]["replicas"] - cut)
                max_scaled_down -= cut
        available = sum((rs.get("status") or {}).get("availableReplicas", 0) for rs in all_rs)
        available -= sum(
            max(0, (rs.get("status") or {}).get("availableReplicas", 0) - rs["spec"]["replicas"]) for rs in old
        )
        budget = available - min_available
        for rs in sorted(old_active, key=lambda r: r["metadata"]["creationTimestamp"]):
            if budget <= 0:
                break
            cut = min(rs["spec"]["replicas"], budget)
            if cut > 0:
                self._scale(rs, rs["spec"]["replicas"] - cut)
                budget -= cut

    def _cleanup_history(self, spec: dict[str, Any], old: list[dict[str, Any]]) -> None:
        limit = spec.get("revisionHistoryLimit", 10)
        idle = [rs for rs in old if rs["spec"].get("replicas", 0) == 0 and not (rs.get("status") or {}).get("replicas")]
        idle.sort(key=lambda r: int(r["metadata"].get("annotations", {}).get(REVISION, "0")))
        for rs in idle[: max(0, len(idle) - limit)]:
            if not self._pods_of(rs["metadata"]["uid"]):
                self.store.delete(REPLICASETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _write_status(
        self,
        deployment: dict[str, Any],
        owned: list[dict[str, Any]],
        new_rs: dict[str, Any] | None,
        replicas: int,
        now: float,
        created_new: bool,
    ) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        # A client may have written anything through the status subresource: read it defensively.
        raw_status = deployment.get("status") if isinstance(deployment.get("status"), dict) else {}
        old_status = {k: v for k, v in raw_status.items() if k == "conditions" or isinstance(v, int)}
        if not isinstance(old_status.get("conditions"), list):
            old_status.pop("conditions", None)
        statuses = [rs.get("status") or {} for rs in owned]
        actual = sum(s.get("replicas", 0) for s in statuses)
        updated = (new_rs.get("status") or {}).get("replicas", 0) if new_rs else 0
        ready = sum(s.get("readyReplicas", 0) for s in statuses)
        available = sum(s.get("availableReplicas", 0) for s in statuses)
        spec_total = sum(rs["spec"].get("replicas", 0) for rs in owned)
        status: dict[str, Any] = {"observedGeneration": meta.get("generation", 1)}
        _set_if(status, "replicas", actual)
        _set_if(status, "updatedReplicas", updated)
        _set_if(status, "readyReplicas", ready)
        _set_if(status, "availableReplicas", available)
        _set_if(status, "unavailableReplicas", max(0, spec_total - available))

        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = (
            resolve_int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, round_up=False)
            if spec["strategy"]["type"] == "RollingUpdate"
            else 0
        )
        stamp = now_rfc3339()
        conditions = {
            c["type"]: c
            for c in old_status.get("conditions") or []
            if isinstance(c, dict)
            and isinstance(c.get("type"), str)
            and {"status", "reason", "lastTransitionTime"} <= set(c)
        }

        def set_condition(kind: str, value: str, reason: str, message: str, touch: bool) -> None:
            old = conditions.get(kind)
            if old and old["status"] == value and old["reason"] == reason and not touch:
                return
            transition = old["lastTransitionTime"] if old and old["status"] == value else stamp
            conditions[kind] = {
                "type": kind,
                "status": value,
                "lastUpdateTime": stamp,
                "lastTransitionTime": transition,
                "reason": reason,
                "message": message,
            }

        if available >= replicas - max_unavailable:
            set_condition(
                "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", False
            )
        else:
            set_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                False,
            )

        rs_name = new_rs["metadata"]["name"] if new_rs else meta["name"]
        uid = meta["uid"]
        complete = (
            updated == replicas
            and actual == replicas
            and available == replicas
            and (new_rs is None or new_rs["spec"].get("replicas", 0) == replicas)
        )
        old_old = old_status.get("replicas", 0) - old_status.get("updatedReplicas", 0)
        progressed = (
            updated > old_status.get("updatedReplicas", 0)
            or actual - updated < old_old
            or ready > old_status.get("readyReplicas", 0)
            or available > old_status.get("availableReplicas", 0)
        )
        current = conditions.get("Progressing")
        if spec.get("paused"):
            set_condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", False)
            self.progress[uid] = now
        elif complete:
            set_condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{rs_name}" has successfully progressed.',
                current is not None and current["reason"] != "NewReplicaSetAvailable",
            )
            self.progress[uid] = now
        elif created_new:
            set_condition("Progressing", "True", "NewReplicaSetCreated", f'Created new replica set "{rs_name}"', True)
            self.progress[uid] = now
        elif (
            progressed
            or current is None
            or current["reason"] == "NewReplicaSetAvailable"
            or (current["reason"] == "ProgressDeadlineExceeded" and progressed)
        ):
            set_condition("Progressing", "True", "ReplicaSetUpdated", f'ReplicaSet "{rs_name}" is progressing.', True)
            self.progress[uid] = now
        elif now - self.progress.setdefault(uid, now) > spec.get("progressDeadlineSeconds", 600):
            set_condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{rs_name}" has timed out progressing.',
                False,
            )
        order = {"Available": 0, "Progressing": 1}
        status["conditions"] = sorted(conditions.values(), key=lambda c: order.get(c["type"], 2))
        if status != raw_status:
            self.store.update_with(
                DEPLOYMENTS, meta["namespace"], meta["name"], lambda o: {**o, "status": status}, validate=False
            )

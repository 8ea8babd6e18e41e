"""In-memory object store with one global resourceVersion counter and a watch event log.

Every write goes through here, so resourceVersion, generation, uid and creation
timestamps behave like etcd-backed Kubernetes: one counter across all objects, bumped
on every real change and never on a no-op.
"""

from __future__ import annotations

import copy
import datetime
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tests.sandbox.k8s.resources import (
    STATUS_KINDS,
    Invalid,
    ResourceType,
    apply_defaults_and_validate,
    validate_name,
)

# How many watch events are kept for watchers that resume from an older resourceVersion.
EVENT_HISTORY = 20000


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answered with a Kubernetes Status body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rt.key} "{name}" not found', {"name": name, "group": rt.group, "kind": rt.plural}
    )


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.key} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": rt.group, "kind": rt.plural},
    )


def invalid(rt: ResourceType, name: str, exc: Invalid) -> ApiError:
    return ApiError(422, "Invalid", str(exc), {"name": name, "group": rt.group, "kind": rt.kind, "causes": exc.causes})


class Event:
    __slots__ = ("rv", "rt", "namespace", "type", "obj")

    def __init__(self, rv: int, rt: ResourceType, namespace: str, type_: str, obj: dict[str, Any]) -> None:
        self.rv, self.rt, self.namespace, self.type, self.obj = rv, rt, namespace, type_, obj


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 1
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.events: list[Event] = []
        self.events_base = 0  # absolute index of events[0]
        self.listeners: list[Callable[[Event], None]] = []

    # -- reading ---------------------------------------------------------------------------

    def table(self, rt: ResourceType) -> dict[tuple[str, str], dict[str, Any]]:
        return self.objects.setdefault(rt.key, {})

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.table(rt).get((namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def peek(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object itself (no copy): for the controllers, under ``self.lock``."""
        return self.table(rt).get((namespace, name))

    def items(self, rt: ResourceType, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects (no copies), sorted like etcd keys: namespace then name."""
        table = self.table(rt)
        keys = sorted(k for k in table if namespace is None or k[0] == namespace)
        return [table[k] for k in keys]

    def list(
        self, rt: ResourceType, namespace: str | None, predicate: Callable[[dict[str, Any]], bool] = lambda _o: True
    ) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            return [copy.deepcopy(o) for o in self.items(rt, namespace) if predicate(o)], self.rv

    # -- writing ---------------------------------------------------------------------------

    def _emit(self, rt: ResourceType, namespace: str, type_: str, obj: dict[str, Any]) -> None:
        event = Event(self.rv, rt, namespace, type_, copy.deepcopy(obj))
        self.events.append(event)
        if len(self.events) > EVENT_HISTORY:
            drop = len(self.events) - EVENT_HISTORY // 2
            del self.events[:drop]
            self.events_base += drop
        for listener in self.listeners:
            listener(event)
        self.changed.notify_all()

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        if rt.namespaced:
            from tests.sandbox.k8s.resources import lookup

            ns_rt = lookup("", "v1", "namespaces")
            assert ns_rt is not None
            ns = self.table(ns_rt).get(("", namespace))
            if ns is None:
                raise ApiError(
                    404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
                )
            if ns["metadata"].get("deletionTimestamp"):
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{rt.key} "" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                )

    def create(self, rt: ResourceType, namespace: str, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise ApiError(400, "BadRequest", "metadata must be an object")
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name") or ""
            if not name:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rt.kind} "" is invalid: metadata.name: Required value: name or generateName is required',
                    {
                        "kind": rt.kind,
                        "causes": [
                            {
                                "reason": "FieldValueRequired",
                                "field": "metadata.name",
                                "message": "Required value: name or generateName is required",
                            }
                        ],
                    },
                )
            # The uid comes first: a Job's generated selector is made of it.
            meta["uid"] = str(uuid.uuid4())
            try:
                validate_name(rt, name)
                apply_defaults_and_validate(rt, obj)
            except Invalid as exc:
                raise invalid(rt, name, exc) from None
            self._check_namespace(rt, namespace)
            table = self.table(rt)
            if (namespace, name) in table:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.key} "{name}" already exists',
                    {"name": name, "group": rt.group, "kind": rt.plural},
                )
            obj["apiVersion"], obj["kind"] = rt.group_version, rt.kind
            if rt.namespaced:
                meta["namespace"] = namespace
            else:
                meta.pop("namespace", None)
            meta["creationTimestamp"] = now_rfc3339()
            for managed in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(managed, None)
            if rt.has_generation:
                meta["generation"] = 1
            if rt.kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
                obj["status"] = {}  # the controllers own the status: a client's is dropped
            if dry_run:
                return obj
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            table[(namespace, name)] = obj
            self._emit(rt, namespace, "ADDED", obj)
            return copy.deepcopy(obj)

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        *,
        subresource: str | None = None,
        check_rv: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT semantics: the whole object (or its status) replaced; 409 on a stale resourceVersion."""
        with self.lock:
            current = self.table(rt).get((namespace, name))
            if current is None:
                raise not_found(rt, name)
            obj = copy.deepcopy(obj)
            meta = obj.get("metadata")
            if not isinstance(meta, dict):
                obj["metadata"] = meta = {}
            if meta.get("name") not in (None, name):
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
                )
            wanted_rv = meta.get("resourceVersion")
            if check_rv and wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            if subresource == "status":
                if not isinstance(obj.get("status", {}), dict):
                    raise ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: status: must be an object')
                new = copy.deepcopy(current)
                new["status"] = obj.get("status", {})
            else:
                new = obj
                meta["name"] = name
                for kept in (
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                ):
                    if kept in current["metadata"]:
                        meta[kept] = current["metadata"][kept]
                    else:
                        meta.pop(kept, None)
                if rt.namespaced:
                    meta["namespace"] = namespace
                if "status" in current and rt.kind in STATUS_KINDS:
                    new["status"] = copy.deepcopy(current["status"])
                try:
                    apply_defaults_and_validate(rt, new)
                except Invalid as exc:
                    raise invalid(rt, name, exc) from None
            return self._commit(rt, namespace, name, current, new, dry_run)

    def _commit(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        current: dict[str, Any],
        new: dict[str, Any],
        dry_run: bool = False,
    ) -> dict[str, Any]:
        new["apiVersion"], new["kind"] = rt.group_version, rt.kind
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return copy.deepcopy(current)  # a no-op write changes nothing, not even resourceVersion
        if rt.has_generation:
            spec_changed = new.get("spec") != current.get("spec")
            # Deployments copy their annotations to ReplicaSets, so annotations count too.
            if rt.kind == "Deployment":
                spec_changed = spec_changed or (new["metadata"].get("annotations") or {}) != (
                    current["metadata"].get("annotations") or {}
                )
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        if dry_run:
            return new
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.table(rt)[(namespace, name)] = new
        self._emit(rt, namespace, "MODIFIED", new)
        return copy.deepcopy(new)

    def update_with(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        subresource: str | None = None,
        validate: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Read-modify-write under the lock (patches and controller writes)."""
        with self.lock:
            current = self.table(rt).get((namespace, name))
            if current is None:
                raise not_found(rt, name)
            new = change(copy.deepcopy(current))
            if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
                raise ApiError(
                    422, "Invalid", f'{rt.kind} "{name}" is invalid: the patched object is not a Kubernetes object'
                )
            if new["metadata"].get("name") != name:
                raise ApiError(
                    422, "Invalid", f'{rt.kind} "{name}" is invalid: metadata.name: Invalid value: field is immutable'
                )
            wanted_rv = new["metadata"].get("resourceVersion")
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            for kept in ("uid", "creationTimestamp", "namespace"):
                if kept in current["metadata"]:
                    new["metadata"][kept] = current["metadata"][kept]
            if subresource == "status":
                status = new.get("status")
                if status is not None and not isinstance(status, dict):
                    raise ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: status: must be an object')
                new = copy.deepcopy(current)
                new["status"] = status if status is not None else {}
            elif validate and "status" in current and rt.kind in STATUS_KINDS and rt.kind != "Pod":
                new["status"] = copy.deepcopy(current["status"])
            if validate:
                try:
                    apply_defaults_and_validate(rt, new)
                except Invalid as exc:
                    raise invalid(rt, name, exc) from None
            return self._commit(rt, namespace, name, current, new, dry_run)

    def delete(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            obj = self.table(rt).pop((namespace, name), None)
            if obj is None:
                raise not_found(rt, name)
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(rt, namespace, "DELETED", obj)
            return copy.deepcopy(obj)

    # -- watching --------------------------------------------------------------------------

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        since_rv: int | None,
        stop_at: float,
        matches: Callable[[dict[str, Any]], bool],
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (type, object) for events after ``since_rv``; an ERROR event when that is too old.

        ``since_rv`` None means: current state as ADDED events, then changes.
        Yields ("", {}) every few seconds while idle so the caller can notice closed connections.
        """
        import time

        initial: list[dict[str, Any]] = []
        expired: dict[str, Any] | None = None
        with self.lock:
            if since_rv is None:
                initial = [copy.deepcopy(o) for o in self.items(rt, namespace) if matches(o)]
                since_rv = self.rv
            oldest = self.events[0].rv if self.events else self.rv + 1
            if since_rv < oldest - 1 and since_rv < self.rv:
                expired = ApiError(410, "Expired", f"too old resource version: {since_rv} ({oldest - 1})").status()
            position = self.events_base + len(self.events)
            for index, event in enumerate(self.events):
                if event.rv > since_rv:
                    position = self.events_base + index
                    break
        if expired is not None:
            yield "ERROR", expired
            return
        for obj in initial:
            yield "ADDED", obj
        while True:
            batch: list[Event] = []
            with self.lock:
                while position >= self.events_base + len(self.events):
                    remaining = stop_at - time.monotonic()
                    if remaining <= 0:
                        return
                    if not self.changed.wait(timeout=min(remaining, 2.0)):
                        break
                if position >= self.events_base:
                    batch = self.events[position - self.events_base :]
                    position = self.events_base + len(self.events)
                else:
                    expired = ApiError(410, "Expired", "too old resource version").status()
            if expired is not None:
                yield "ERROR", expired
                return
            if not batch:
                yield "", {}
                continue
            for event in batch:
                if event.rt is rt and (namespace is None or event.namespace == namespace) and matches(event.obj):
                    yield event.type, event.obj

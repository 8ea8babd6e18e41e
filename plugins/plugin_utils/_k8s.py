# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The credential_rotation role's Kubernetes reads and writes, made in the controller's process.

A read is what kubernetes.core's ``k8s`` lookup does (``read``), with the client kept per cluster.
Every write of the role (a Secret's lock, state, promotion or clearing, a workload's restart) is
what ``kubernetes.core.k8s`` does with ``state: patched`` (or ``present``), ``merge_type: merge`` and
``continue_on_error: true`` for a list of definitions. This runs kubernetes.core's own code for it
(``runner.perform_action`` with its ``K8sService`` and ``get_api_client``) in the process of the
``rotation_observe`` action, so that a step costs its requests instead of a module process (a
Python start-up and the ``kubernetes`` import each time, about half a second).

The answer has the module's shape, ``{"changed": bool, "result": {"results": [entry, ...]}}``, one
entry per definition, a failed one with ``error: {msg, reason}``; a call that fails as a whole (no
client for the cluster) is ``{"failed": True, "msg": ...}``, as the module's would be.
"""

from __future__ import annotations

import copy
import os
import sys
import threading
from typing import Any

from ansible.module_utils.common.text.converters import to_native

try:
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.runner import perform_action
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.service import K8sService
    from kubernetes import watch as k8s_watch
    from kubernetes.dynamic.exceptions import NotFoundError
except Exception as error:  # kubernetes.core or the kubernetes library is missing
    IMPORT_ERROR: Exception | None = error
else:
    IMPORT_ERROR = None

# The kubernetes.core.k8s options perform_action reads, at the values the role's writes use.
_PARAMS = {
    "merge_type": ["merge"], "apply": False, "force": False, "server_side_apply": None, "wait": False,
    "wait_sleep": 5, "wait_timeout": 120, "wait_condition": None, "label_selectors": None,
    "append_hash": False, "generate_name": None, "delete_options": None, "validate": None,
    "continue_on_error": True,
}


class _Module:
    """What kubernetes.core's service and client ask of the module that drives them."""

    check_mode = False
    _diff = False
    server_side_dry_run = False

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def warn(self, text: str) -> None:
        """Warnings of a write (an unchanged object) are not the operator's concern."""

    def requires(self, *args: Any, **kwargs: Any) -> None:
        """The libraries are imported already (IMPORT_ERROR says when they are not)."""

    def fail_json(self, **kwargs: Any) -> None:
        raise RuntimeError(kwargs.get("msg") or "the write failed")


# kubernetes.core's clients, one per cluster for the life of this process (one task's worker):
# building one reads and parses the kubeconfig, which would otherwise happen for every GET.
_CLIENTS: dict[tuple, Any] = {}


def client_for(cluster: dict | None) -> Any:
    """kubernetes.core's client for ``cluster`` (its ``kubeconfig`` and ``context``, else the environment)."""
    options = {key: value for key, value in (cluster or {}).items() if value}
    key = (tuple(sorted((k, str(v)) for k, v in options.items())), os.environ.get("KUBECONFIG"),
           tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("K8S_AUTH_"))))
    if key not in _CLIENTS:
        _CLIENTS[key] = get_api_client(**options)
    return _CLIENTS[key]


def read(cluster: dict | None, kind: str, api_version: str, namespace: str, name: str | None = None,
         versions: dict | None = None) -> Any:
    """What kubernetes.core's ``k8s`` lookup answers: the object or None, or the list of objects.

    Its own steps (the client, the resource by kind and version, the GET, a 404 as absent), with the
    client kept for the next read. Any other failure is raised. For a list, ``versions`` (when given)
    gets the list's resourceVersion under ``(kind, namespace)``, from which ``wait_for_change`` watches.
    """
    if IMPORT_ERROR is not None:
        raise RuntimeError(f"kubernetes.core cannot read from the controller's Python ({sys.executable}): "
                           f"{to_native(IMPORT_ERROR)}")
    client = client_for(cluster)
    resource = client.resource(kind, api_version)
    try:
        found = client.get(resource, name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None if name else []
    if name:
        return found
    if versions is not None:
        versions[(kind, namespace)] = (found.get("metadata") or {}).get("resourceVersion")
    return found.get("items") or []


def wait_for_change(watches: list[tuple[dict | None, str, str, str, str, list[str]]], timeout: float) -> bool:
    """Wait at most ``timeout`` seconds, less if one of the objects ``watches`` names changes.

    Each watch is (cluster, kind, api_version, namespace, resourceVersion of a list just read, names):
    a Kubernetes watch of the namespace from that version, so no change since the list is missed,
    that ends the wait at an event of one of the named objects (other objects' events are let pass).
    True when such an event came before the timeout. A watch that fails (no ``watch`` permission, an
    expired version, a cluster that cannot watch) only stops early; the wait then lasts the whole
    timeout, as a plain poll would.
    """
    changed = threading.Event()
    seconds = max(1, int(timeout + 0.999))

    def watch(cluster: dict | None, kind: str, api_version: str, namespace: str, version: str,
              names: list[str]) -> None:
        watcher = None
        try:
            client = client_for(cluster)
            watcher = k8s_watch.Watch()
            for event in client.client.watch(client.resource(kind, api_version), namespace=namespace,
                                             resource_version=version, timeout=seconds, watcher=watcher):
                if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
                    return  # an ERROR event (an expired version): poll as usual
                if ((event.get("raw_object") or {}).get("metadata") or {}).get("name") in names:
                    changed.set()
                    return
                if changed.is_set():
                    return
        except Exception:  # no permission, an expired version, a dropped connection: poll as usual
            return
        finally:
            if watcher is not None:
                watcher.stop()

    if IMPORT_ERROR is None:
        for entry in watches:
            threading.Thread(target=watch, args=entry, daemon=True, name="xapi-watch").start()
    return changed.wait(timeout)


def write(definitions: list[dict], cluster: dict, state: str = "patched",
          hidden_fields: list[str] | None = None) -> dict[str, Any]:
    """Apply ``definitions`` to the cluster (``kubeconfig``, ``context``) as kubernetes.core.k8s would."""
    if IMPORT_ERROR is not None:
        return {"failed": True,
                "msg": f"kubernetes.core cannot write from the controller's Python ({sys.executable}): "
                       f"{to_native(IMPORT_ERROR)}"}
    params = dict(_PARAMS, state=state, hidden_fields=hidden_fields)
    module = _Module(params)
    try:
        client = client_for(cluster)
    except Exception as error:
        return {"failed": True, "msg": to_native(error)}
    service = K8sService(client, module)
    results: list[dict[str, Any]] = []
    changed = False
    for definition in definitions:
        try:
            result = perform_action(service, copy.deepcopy(definition), params)
        except Exception as error:  # as the module does with continue_on_error
            failure = getattr(error, "result", None)
            failure = dict(failure) if isinstance(failure, dict) else {}
            reason = getattr(error.__cause__, "reason", None)
            if reason:
                failure["reason"] = reason
            failure["msg"] = to_native(error)
            result = {"changed": False, "result": {}, "error": failure}
        changed = changed or bool(result.get("changed"))
        results.append(result)
    return {"changed": changed, "result": {"results": results}}

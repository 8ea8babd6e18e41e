# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The credential_rotation role's Kubernetes writes, made in the controller's process.

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
import sys
from typing import Any

from ansible.module_utils.common.text.converters import to_native

try:
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.client import get_api_client
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.runner import perform_action
    from ansible_collections.kubernetes.core.plugins.module_utils.k8s.service import K8sService
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
        client = get_api_client(**{key: value for key, value in (cluster or {}).items() if value})
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

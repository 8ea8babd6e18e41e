# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The credential_rotation role's platform calls, made in the controller's process.

Each of the role's platform steps (look the credentials up, create, verify, list, deactivate) is a
call of one of this collection's modules with its list options. This runs the module's own code
for it (its argument spec, the checks of its ``run`` function, the same client) in the process of
the ``rotation_observe`` action, so that a step costs its requests instead of a module process (a
Python start-up and the ``requests`` import each time, about half a second).

What the module would do with its arguments is done here too: they are checked against its
argument spec with Ansible's own validator (the same sentences), its connection options fall back
to the same environment variables, and every ``no_log`` value (the admin token, the tokens
looked up) is masked in the answer as ``exit_json`` masks it. The answer has the module's shape; a
failure is ``{"failed": True, "msg": ...}`` with the details the module would return.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.errors import UnsupportedError

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    DATEUTIL_IMPORT_ERROR,
    REQUESTS_IMPORT_ERROR,
    XapiError,
    connection_argument_spec,
    redact,
)
from ansible_collections.xapi.system_auth.plugins.modules import (
    system_user,
    system_user_deactivate,
    system_user_info,
)

MODULES = {
    "system_user": system_user,
    "system_user_info": system_user_info,
    "system_user_deactivate": system_user_deactivate,
}


def call(name: str, args: dict[str, Any], check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    """What module ``name`` returns for ``args``, run in this process."""
    module = MODULES.get(name)
    if module is None:
        return {"failed": True, "msg": f"{name!r} is not one of this collection's platform modules: "
                                       f"use one of {', '.join(sorted(MODULES))}."}
    for library, error in (("requests", REQUESTS_IMPORT_ERROR), ("python-dateutil", DATEUTIL_IMPORT_ERROR)):
        if error:
            return {"failed": True, "msg": f"{name} needs the Python library {library} on the controller: "
                                           f"install it into the Python that runs ansible-playbook."}
    spec = connection_argument_spec()
    spec.update(module.ARGUMENT_SPEC)
    validation = ArgumentSpecValidator(spec, **module.ARGUMENT_RULES).validate(dict(args))
    secrets = validation._no_log_values
    if validation.error_messages:
        message = validation.errors.msg
        if isinstance(validation.errors[0], UnsupportedError):
            message = f"Unsupported parameters for ({name}) module: {message}"
        return remove_values({"failed": True, "msg": message,
                              "invocation": {"module_args": validation.validated_parameters}}, secrets)
    warnings: list[str] = []
    try:
        result = module.run(validation.validated_parameters, check_mode, diff, warnings.append)
    except XapiError as error:
        result = dict(error.details, failed=True, msg=redact(error.msg, secrets))
    except Exception as error:  # a bug: one sentence and the type, never a traceback with arguments
        result = {"failed": True, "msg": f"{name} failed unexpectedly ({type(error).__name__}): "
                                         f"{redact(to_native(error), secrets)}"}
    result.setdefault("changed", False)
    if warnings:
        result["warnings"] = warnings
    result.setdefault("invocation", {"module_args": validation.validated_parameters})
    return remove_values(result, secrets)

#!/usr/bin/python
# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: system_user_deactivate
short_description: Deactivate a platform system user (revoke a service credential)
version_added: 0.1.0
description:
  - Deactivates the system user with the given O(id), so its token stops working at once.
  - Idempotent; deactivating a user that is already inactive reports no change.
  - A missing O(id) is an error, unless O(missing_ok=true).
  - Deactivation cannot be undone. Make sure nothing uses the token any more, for example with
    M(xapi.system_auth.system_user_info) and the C(last_used_at) it returns.
author:
  - xapi.system_auth maintainers (@xapi)
extends_documentation_fragment:
  - xapi.system_auth.api
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the platform.
    support: full
    details:
      - Reads the user (a read-only call) and reports whether it would deactivate it.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: full
  action_group:
    description: Use C(group/xapi.system_auth.api) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - xapi.system_auth.api
options:
  id:
    description:
      - Id of the system user to deactivate, as returned by the other modules (V(su_...)).
    type: str
    required: true
  missing_ok:
    description:
      - When V(true), a user the platform does not know is reported as C(changed=false) instead of failing.
    type: bool
    default: false
seealso:
  - module: xapi.system_auth.system_user
  - module: xapi.system_auth.system_user_info
"""

EXAMPLES = r"""
- name: Deactivate the old credential once the service runs on the new one
  xapi.system_auth.system_user_deactivate:
    api_url: https://platform.example.com
    api_token: "{{ platform_admin_token }}"
    id: "{{ old_system_user_id }}"

- name: Clean up a credential that may already be gone
  xapi.system_auth.system_user_deactivate:
    id: su_0a1b2c3d4e5f60718293a4b5
    missing_ok: true
"""

RETURN = r"""
system_user:
  description:
    - The system user after the call (in check mode, as it would be), with the derived
      C(days_remaining) and C(expired); the same fields as M(xapi.system_auth.system_user) returns.
    - V(null) when the user does not exist and O(missing_ok=true).
  returned: success
  type: dict
  sample:
    id: su_0a1b2c3d4e5f60718293a4b5
    name: billing-service-20260904
    description: Credential of the billing service
    active: false
    created_at: "2026-09-04T02:00:03Z"
    expires_at: "2026-12-03T02:00:03Z"
    deactivated_at: "2026-11-28T02:07:41Z"
    last_used_at: "2026-11-28T02:05:10Z"
    days_remaining: 4
    expired: false
msg:
  description: What the module did, in one sentence.
  returned: always
  type: str
  sample: system user su_0a1b2c3d4e5f60718293a4b5 was deactivated
diff:
  description: The active flag before and after.
  returned: success
  type: dict
  sample:
    before:
      active: true
    after:
      active: false
"""

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    XapiClient,
    XapiError,
    client_from_module,
    describe_user,
    new_module,
    run_module,
    validate_id,
)


def ensure_inactive(client: XapiClient, params: dict, check_mode: bool) -> dict:
    user_id = validate_id(params["id"])
    current = client.get_user(user_id)
    if current is None:
        if params["missing_ok"]:
            return {"changed": False, "system_user": None, "diff": {"before": {}, "after": {}},
                    "msg": f"system user {user_id} does not exist"}
        raise XapiError(f"system user {user_id} was not found: check the id, or set missing_ok: true if it may "
                        "already be gone.")

    was_active = bool(current.get("active"))
    if not was_active:
        after = current
    elif check_mode:
        after = dict(current, active=False)
    else:
        after = client.deactivate_user(user_id)
    if not was_active:
        msg = f"system user {user_id} is already inactive"
    else:
        msg = f"system user {user_id} {'would be' if check_mode else 'was'} deactivated"
    return {
        "changed": was_active,
        "msg": msg,
        "system_user": describe_user(after, client.now()),
        "diff": {"before": {"active": was_active}, "after": {"active": bool(after.get("active"))}},
    }


def main() -> None:
    module = new_module(
        {
            "id": {"type": "str", "required": True},
            "missing_ok": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    run_module(module, lambda: ensure_inactive(client_from_module(module), module.params, module.check_mode))


if __name__ == "__main__":
    main()

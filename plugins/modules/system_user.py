#!/usr/bin/python
# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: system_user
short_description: Ensure a platform system user (a service credential) exists
version_added: 0.1.0
description:
  - Ensures that an active system user with the given O(name) exists on the platform, creating it
    when there is none.
  - An active system user of that name means no change; it is returned as it is (the platform has
    no update call, so O(description) and O(expires_in_days) only apply to a new user).
  - On creation the module returns the new user's token. The platform reveals a token only once,
    in the answer to the create call, so the calling task B(must) use C(no_log=true) and
    register the result; see RV(token).
  - When the answer to the create call is lost (timeout, dropped connection, a proxy's 502/503/504),
    the module looks the name up before sending the create again. If the user was created after
    all, its token is lost, so the module deactivates that orphan and creates the user once more.
    If that answer is lost as well, the second orphan is deactivated too and the module fails.
    Either way at most one active user of that name results, and its token is the one returned.
author:
  - xapi.system_auth maintainers (@xapi)
extends_documentation_fragment:
  - xapi.system_auth.api
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the platform.
    support: full
    details:
      - Looks the name up (read-only calls) and reports what it would create; sends no create.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: full
  action_group:
    description: Use C(group/xapi.system_auth.api) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - xapi.system_auth.api
options:
  name:
    description:
      - Name of the system user; the platform allows one active user per name.
      - 1 to 128 characters out of letters, digits, V(.), V(_) and V(-).
    type: str
    required: true
  description:
    description:
      - Free-text description stored with a new system user.
    type: str
  expires_in_days:
    description:
      - Lifetime of a new system user's token in days, between 1 and 365.
    type: int
    default: 90
  state:
    description:
      - V(present) ensures an active system user of that name exists.
      - Use M(xapi.system_auth.system_user_deactivate) to retire one.
    type: str
    choices: [present]
    default: present
notes:
  - The token is returned only on creation. Store it where the service reads it (for example a
    Kubernetes Secret) in the same play; it cannot be retrieved again.
  - A module cannot hide its own result from Ansible's output (only the task can), so without
    C(no_log=true) on the task the token is printed with the result in verbose runs and by
    callbacks that show results. Set C(no_log=true) on every task that calls this module.
seealso:
  - module: xapi.system_auth.system_user_info
  - module: xapi.system_auth.system_user_deactivate
"""

EXAMPLES = r"""
- name: Ensure the credential of the billing service exists
  xapi.system_auth.system_user:
    api_url: https://platform.example.com
    api_token: "{{ platform_admin_token }}"
    name: billing-service-20261203
    description: Rotated credential of the billing service
    expires_in_days: 90
  register: billing_user
  no_log: true  # the result holds the new token

- name: The same with the connection options set once for the whole group
  module_defaults:
    group/xapi.system_auth.api:
      api_url: https://platform.example.com
      api_token: "{{ platform_admin_token }}"
      ca_path: /etc/pki/platform-ca.pem
  block:
    - name: Create the new credential
      xapi.system_auth.system_user:
        name: billing-service-20261203
      register: billing_user
      no_log: true

    - name: Show what was created, without the token
      ansible.builtin.debug:
        msg: "{{ billing_user.system_user.id }} expires {{ billing_user.system_user.expires_at }}"
"""

RETURN = r"""
system_user:
  description:
    - The active system user of that name, as the platform returns it, plus the derived
      RV(system_user.days_remaining) and RV(system_user.expired). Never contains the token.
    - In check mode when it would be created, what would be created (RV(system_user.id) is V(null)).
  returned: success
  type: dict
  contains:
    id:
      description: Id of the system user.
      type: str
      returned: success
      sample: su_4f9c2a7d1e3b5a6c8d0e2f41
    name:
      description: Name of the system user.
      type: str
      returned: success
      sample: billing-service-20261203
    description:
      description: Its description.
      type: str
      returned: success
      sample: Rotated credential of the billing service
    active:
      description: Whether it is active (not deactivated).
      type: bool
      returned: success
      sample: true
    created_at:
      description: Creation time, RFC 3339 UTC.
      type: str
      returned: success
      sample: "2026-12-03T02:00:05Z"
    expires_at:
      description: Expiry time of its token, RFC 3339 UTC.
      type: str
      returned: success
      sample: "2027-03-03T02:00:05Z"
    deactivated_at:
      description: Deactivation time, or V(null).
      type: str
      returned: success
      sample: null
    last_used_at:
      description: Last time its token was used, or V(null).
      type: str
      returned: success
      sample: null
    days_remaining:
      description: Whole days until expiry (rounded down, negative once expired), by the platform's clock.
      type: int
      returned: success
      sample: 89
    expired:
      description: Whether the token has expired.
      type: bool
      returned: success
      sample: false
token:
  description:
    - The new system user's token.
    - Returned only on creation; the platform never reveals it again. Use C(no_log=true) on the task.
  returned: when the system user was created (not in check mode)
  type: str
  sample: xsu_EXAMPLE-not-a-real-token
token_fingerprint:
  description: First 8 hex characters of the SHA-256 of RV(token), safe to log and compare.
  returned: when the system user was created (not in check mode)
  type: str
  sample: 3fa1c09e
msg:
  description: What the module did, in one sentence, without the token.
  returned: always
  type: str
  sample: created system user billing-service-20261203 (su_4f9c2a7d1e3b5a6c8d0e2f41), token fingerprint 3fa1c09e
orphaned_ids:
  description:
    - Ids of users the platform created while the answer was lost, and that the module deactivated
      because their tokens are unknown.
  returned: when a create answer was lost
  type: list
  elements: str
  sample: [su_0a1b2c3d4e5f60718293a4b5]
"""

from datetime import timedelta

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    XapiClient,
    client_from_module,
    describe_user,
    fingerprint,
    format_time,
    new_module,
    run_module,
    validate_expires_in_days,
    validate_name,
)


def _diff_view(user: dict | None) -> dict:
    if user is None:
        return {}
    return {key: user.get(key) for key in ("name", "description", "active", "expires_at")}


def ensure_present(client: XapiClient, params: dict, check_mode: bool, diff: bool) -> dict:
    name = validate_name(params["name"])
    validate_expires_in_days(params["expires_in_days"])
    description = params.get("description")

    existing = client.find_active(name)
    if existing is not None:
        user = describe_user(existing, client.now())
        result: dict = {"changed": False, "system_user": user,
                        "msg": f"system user {name} ({user.get('id')}) already exists and is active"}
        if user["expired"]:
            result["warnings"] = [f"system user {name} ({user['id']}) is active but its token has expired; rotate it."]
        if diff:
            result["diff"] = {"before": _diff_view(user), "after": _diff_view(user)}
        return result

    if check_mode:
        # Whole seconds, as the platform's timestamps: a 90-day user then shows 90 days remaining.
        now = client.now().replace(microsecond=0)
        planned = {
            "id": None,
            "name": name,
            "description": description,
            "active": True,
            "created_at": format_time(now),
            "expires_at": format_time(now + timedelta(days=params["expires_in_days"])),
            "deactivated_at": None,
            "last_used_at": None,
        }
        result = {"changed": True, "system_user": describe_user(planned, now),
                  "msg": f"system user {name} would be created"}
    else:
        created, token = client.create_user(name, description, params["expires_in_days"])
        result = {
            "changed": True,
            "system_user": describe_user(created, client.now()),
            "token": token,
            "token_fingerprint": fingerprint(token),
            "msg": f"created system user {name} ({created.get('id')}), token fingerprint {fingerprint(token)}",
        }
    if diff:
        result["diff"] = {"before": {}, "after": _diff_view(result["system_user"])}
    return result


def main() -> None:
    module = new_module(
        {
            "name": {"type": "str", "required": True},
            "description": {"type": "str"},
            "expires_in_days": {"type": "int", "default": 90},
            "state": {"type": "str", "default": "present", "choices": ["present"]},
        },
        supports_check_mode=True,
    )
    run_module(module, lambda: ensure_present(client_from_module(module), module.params, module.check_mode,
                                              module._diff))


if __name__ == "__main__":
    main()

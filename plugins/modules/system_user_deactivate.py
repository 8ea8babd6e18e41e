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
  - With O(ids) instead of O(id), deactivates each of a list of system users in one module run, up to
    16 at a time over one connection pool, and reports each in RV(results). An id that fails does not
    stop the others; the task then fails with every id's outcome still in RV(results).
  - Idempotent; deactivating a user that is already inactive reports no change.
  - Uses only the platform's documented routes (read by id, then deactivate). On a platform whose
    user objects carry no C(active) field, a user counts as active until C(deactivated_at) is set or
    C(expires_at) has passed; such a platform cannot show an early deactivation, so deactivating the
    same user again reports a change (the platform's deactivate call is itself idempotent).
  - A missing O(id) (or id of O(ids)) is an error, unless O(missing_ok=true).
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
      - Reads the user (or each user of O(ids); read-only calls) and reports whether it would deactivate it.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: full
    details:
      - With O(ids), the diff maps each id found to its active flag before and after.
  action_group:
    description: Use C(group/xapi.system_auth.api) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - xapi.system_auth.api
options:
  id:
    description:
      - Id of the system user to deactivate, as returned by the other modules (V(su_...)).
      - Exactly one of O(id) and O(ids) is required.
    type: str
  ids:
    description:
      - Ids of several system users to deactivate in one module run, instead of O(id).
      - Every id is checked before any call; an id listed twice is deactivated and reported once.
      - An empty list does nothing.
    type: list
    elements: str
  missing_ok:
    description:
      - When V(true), a user the platform does not know is reported as C(changed=false) instead of failing.
      - With O(ids), this applies to each id.
    type: bool
    default: false
notes:
  - Ansible takes a top-level C(results) list for the results of a loop, so it shows the items of
    RV(results) even when the task has C(no_log=true); they never hold a token.
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

- name: Retire the old credentials of a whole fleet in one module run
  xapi.system_auth.system_user_deactivate:
    ids: "{{ services | map(attribute='old_system_user_id') }}"
    missing_ok: true
  register: retired
  failed_when: false  # look at each item instead

- name: Report the ids that could not be deactivated
  ansible.builtin.debug:
    msg: "{{ item.id }}: {{ item.msg }}"
  loop: "{{ retired.results | selectattr('failed') }}"
"""

RETURN = r"""
system_user:
  description:
    - The system user after the call (in check mode, as it would be), with the derived
      C(days_remaining) and C(expired); the same fields as M(xapi.system_auth.system_user) returns.
    - V(null) when the user does not exist and O(missing_ok=true).
  returned: success, with O(id)
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
  description:
    - What the module did, in one sentence.
    - "With O(ids), a count of what happened; when an id failed, how many failed and the first one's
      error, as V(could not deactivate 2 of 50 system users; first: su_0a1b2c3d4e5f60718293a4b5: ...)."
  returned: always
  type: str
  sample: system user su_0a1b2c3d4e5f60718293a4b5 was deactivated
diff:
  description:
    - The active flag before and after.
    - With O(ids), C(before) and C(after) map each id that was found to its active flag; ids that are
      missing or failed are left out.
  returned: success; with O(ids) also when an id failed
  type: dict
  sample:
    before:
      active: true
    after:
      active: false
results:
  description:
    - With O(ids), one entry per distinct id, in the order given, also when the task fails because
      an id failed.
  returned: when O(ids) is given and every id passed the input checks
  type: list
  elements: dict
  contains:
    id:
      description: The system user id.
      type: str
      returned: always
      sample: su_0a1b2c3d4e5f60718293a4b5
    changed:
      description: Whether it was deactivated (or would be, in check mode).
      type: bool
      returned: always
      sample: true
    failed:
      description: Whether this id failed (including a missing one without O(missing_ok=true)).
      type: bool
      returned: always
      sample: false
    msg:
      description: What was done for this id, or why it failed, in one sentence.
      type: str
      returned: always
      sample: system user su_0a1b2c3d4e5f60718293a4b5 was deactivated
    system_user:
      description:
        - The system user after the call, with the same fields as RV(system_user).
        - V(null) when it does not exist (with O(missing_ok=true)) or the id failed.
      type: dict
      returned: always
      sample:
        id: su_0a1b2c3d4e5f60718293a4b5
        name: billing-service-20260904
        active: false
        deactivated_at: "2026-11-28T02:07:41Z"
        days_remaining: 4
        expired: false
"""

from collections.abc import Callable

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    XapiClient,
    XapiError,
    client_from_params,
    describe_user,
    is_active,
    map_items,
    new_module,
    pool_size_for,
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

    now = client.now()
    was_active = is_active(current, now)
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
        "diff": {"before": {"active": was_active}, "after": {"active": is_active(after, client.now())}},
    }


def validate_ids(ids: list[str]) -> list[str]:
    """Every id checked before the first call, each once, in the order given."""
    return list(dict.fromkeys(validate_id(user_id, option=f"ids[{n}]") for n, user_id in enumerate(ids)))


def ensure_all_inactive(client: XapiClient, ids: list[str], missing_ok: bool, check_mode: bool) -> dict:
    """ensure_inactive for every (validated, distinct) id, concurrently; every outcome in ``results``."""
    outcomes = map_items(lambda user_id: ensure_inactive(client, {"id": user_id, "missing_ok": missing_ok},
                                                         check_mode), ids)
    results = []
    before: dict[str, bool] = {}
    after: dict[str, bool] = {}
    for user_id, outcome in outcomes:
        if isinstance(outcome, XapiError):
            results.append({"id": user_id, "changed": False, "failed": True, "msg": client.redact(outcome.msg),
                            "system_user": None})
            continue
        results.append({"id": user_id, "changed": outcome["changed"], "failed": False, "msg": outcome["msg"],
                        "system_user": outcome["system_user"]})
        if outcome["system_user"] is not None:
            before[user_id] = outcome["diff"]["before"]["active"]
            after[user_id] = outcome["diff"]["after"]["active"]

    result = {"changed": any(entry["changed"] for entry in results), "results": results,
              "diff": {"before": before, "after": after}}
    failed = [entry for entry in results if entry["failed"]]
    if failed:
        raise XapiError(f"could not deactivate {len(failed)} of {len(results)} system users; first: "
                        f"{failed[0]['id']}: {failed[0]['msg']}", **result)
    changed = sum(1 for entry in results if entry["changed"])
    missing = sum(1 for entry in results if entry["system_user"] is None)
    verb = "would be deactivated" if check_mode else "deactivated"
    result["msg"] = (f"{len(results)} system users: {changed} {verb}, {len(results) - changed - missing} already "
                     f"inactive, {missing} not found")
    return result


ARGUMENT_SPEC = {
    "id": {"type": "str"},
    "ids": {"type": "list", "elements": "str"},
    "missing_ok": {"type": "bool", "default": False},
}
ARGUMENT_RULES = {"mutually_exclusive": [("id", "ids")], "required_one_of": [("id", "ids")]}


def run(params: dict, check_mode: bool, diff: bool, warn: Callable[[str], None]) -> dict:
    """The module's work for validated ``params`` (also run in the controller by the role's action)."""
    if params["ids"] is None:
        return ensure_inactive(client_from_params(params), params, check_mode)
    # Every id is checked before the first call: one bad id changes nothing.
    ids = validate_ids(params["ids"])
    client = client_from_params(params, pool_maxsize=pool_size_for(len(ids)))
    return ensure_all_inactive(client, ids, params["missing_ok"], check_mode)


def main() -> None:
    module = new_module(ARGUMENT_SPEC, supports_check_mode=True, **ARGUMENT_RULES)
    run_module(module, lambda: run(module.params, module.check_mode, module._diff, module.warn))


if __name__ == "__main__":
    main()

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
  - With O(users) instead of O(name), does the same for a whole list of system users in one module
    run, up to 16 at a time over one connection pool, and reports each in RV(results).
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
  - On a platform without the list route (RV(capabilities.list=false)), the name cannot be looked
    up. The module then sends the create without a lookup (an active user of that name makes the
    platform refuse it with HTTP 409, and the task fails saying so), and a lost create answer fails the
    task at once, naming the system user that may now exist with a lost token; it never sends a second
    create. Only an HTTP 429 answer, which means the platform did not carry the create out, is retried
    there. See the compatibility guide of the collection.
  - With O(users), every item is checked before any call (a bad item fails the task and changes
    nothing), then each is ensured as with O(name). An item that fails does not stop the others;
    the task then fails with every item's outcome still in RV(results), so a task with
    C(failed_when=false) can store the tokens of the users that were created.
author:
  - xapi.system_auth maintainers (@xapi)
extends_documentation_fragment:
  - xapi.system_auth.api
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the platform.
    support: full
    details:
      - Looks the name (or each name of O(users)) up (read-only calls) and reports what it would create;
        sends no create.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: full
    details:
      - With O(users), the diff is a list with one entry per item that was ensured, each headed by its name.
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
      - Exactly one of O(name) and O(users) is required.
    type: str
  users:
    description:
      - Several system users to ensure in one module run, instead of O(name); each item is ensured
        as O(name) would be, and reported in RV(results) in the order given.
      - Names must be unique within the list.
      - An empty list does nothing.
      - Mutually exclusive with O(name) and O(description); the top-level O(expires_in_days) does not
        apply to the items, each has its own.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Name of the system user, as O(name).
        type: str
        required: true
      description:
        description:
          - Free-text description stored with it if it is created.
        type: str
      expires_in_days:
        description:
          - Lifetime of its token in days if it is created, between 1 and 365.
        type: int
        default: 90
  description:
    description:
      - Free-text description stored with a new system user.
      - Only with O(name); each item of O(users) has its own.
    type: str
  expires_in_days:
    description:
      - Lifetime of a new system user's token in days, between 1 and 365.
      - Only with O(name); each item of O(users) has its own.
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
  - The collection's action plugin hides a result that carries a token (at the top or in any item of
    RV(results)) even when the task forgot C(no_log); the registered variable still holds it.
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

- name: Ensure the credentials of a whole fleet in one module run
  xapi.system_auth.system_user:
    users:
      - name: billing-service-20261203
        description: Rotated credential of the billing service
      - name: orders-service-20261203
        expires_in_days: 30
  register: fleet_users
  failed_when: false  # keep the tokens of the users created even if another item failed
  no_log: true  # the items of results hold the new tokens

- name: Say which items failed, without any token
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.msg }}"
  loop: "{{ fleet_users.results | selectattr('failed') }}"
  loop_control:
    label: "{{ item.name }}"
"""

RETURN = r"""
system_user:
  description:
    - The active system user of that name, as the platform returns it, plus the derived
      RV(system_user.days_remaining) and RV(system_user.expired). Never contains the token.
    - In check mode when it would be created, what would be created (RV(system_user.id) is V(null)).
  returned: success, with O(name)
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
      description:
        - Whether it is active (not deactivated).
        - When the platform's object has no C(active) field, derived - inactive once C(deactivated_at) is set
          or C(expires_at) has passed, else active.
      type: bool
      returned: success
      sample: true
    created_at:
      description: Creation time, RFC 3339 UTC.
      type: str
      returned: success, when the platform sends it (see RV(capabilities.fields))
      sample: "2026-12-03T02:00:05Z"
    expires_at:
      description: Expiry time of its token, RFC 3339 UTC.
      type: str
      returned: success
      sample: "2027-03-03T02:00:05Z"
    deactivated_at:
      description: Deactivation time, or V(null).
      type: str
      returned: success, when the platform sends it (see RV(capabilities.fields))
      sample: null
    last_used_at:
      description: Last time its token was used, or V(null).
      type: str
      returned: success, when the platform sends it (see RV(capabilities.fields))
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
capabilities:
  description:
    - What this module run learned of the platform, without any extra call, so that a caller can
      choose what it may rely on.
  returned: success, and on a failure once the options were checked
  type: dict
  contains:
    list:
      description:
        - Whether the platform serves the list route C(GET /api/v1/system-users) (the name lookup needs it).
        - V(false) when it answered 404, 405 or 501, an HTML page, or a list without C(meta).
        - V(null) when no lookup was made (an empty O(users)).
      type: bool
      returned: success
      sample: true
    name_filter:
      description:
        - Whether the list route filters by C(name) (the module compares names itself either way).
        - V(false) without a list route; V(null) when not yet seen.
      type: bool
      returned: success
      sample: true
    fields:
      description:
        - The fields of the system user objects the platform sent during this run, in the order first
          seen; never C(token). Empty when it sent none (for example a lookup that found nobody).
        - For example a usage check needs C(last_used_at).
      type: list
      elements: str
      returned: success
      sample: [id, name, description, active, created_at, expires_at, deactivated_at, last_used_at]
token:
  description:
    - The new system user's token.
    - Returned only on creation; the platform never reveals it again. Use C(no_log=true) on the task.
  returned: when the system user was created with O(name) (not in check mode)
  type: str
  sample: xsu_EXAMPLE-not-a-real-token
token_fingerprint:
  description: First 8 hex characters of the SHA-256 of RV(token), safe to log and compare.
  returned: when the system user was created with O(name) (not in check mode)
  type: str
  sample: 3fa1c09e
msg:
  description:
    - What the module did, in one sentence, without the token.
    - "With O(users), a count of what happened; when an item failed, how many failed and the first
      one's error, for example V(could not create 2 of 50 system users; first: billing-service-20261203:
      ...)."
  returned: always
  type: str
  sample: created system user billing-service-20261203 (su_4f9c2a7d1e3b5a6c8d0e2f41), token fingerprint 3fa1c09e
orphaned_ids:
  description:
    - Ids of users the platform created while the answer was lost, and that the module deactivated
      because their tokens are unknown.
  returned: when a create answer was lost, with O(name)
  type: list
  elements: str
  sample: [su_0a1b2c3d4e5f60718293a4b5]
results:
  description:
    - With O(users), one entry per item, in the order given, also when the task fails because an
      item failed.
    - Entries of created users hold their tokens; use C(no_log=true) on the task.
  returned: when O(users) is given and every item passed the input checks
  type: list
  elements: dict
  contains:
    name:
      description: Name of the system user.
      type: str
      returned: always
      sample: billing-service-20261203
    changed:
      description:
        - Whether it was created (or would be, in check mode).
        - For a failed item, whether users were created and deactivated again on the way (see
          RV(results[].orphaned_ids)).
      type: bool
      returned: always
      sample: true
    failed:
      description: Whether this item failed.
      type: bool
      returned: always
      sample: false
    msg:
      description: What was done for this item, or why it failed, in one sentence without a token.
      type: str
      returned: always
      sample: created system user billing-service-20261203 (su_4f9c2a7d1e3b5a6c8d0e2f41), token fingerprint 3fa1c09e
    system_user:
      description: The active system user of that name, with the same fields as RV(system_user).
      type: dict
      returned: when the item succeeded
      sample:
        id: su_4f9c2a7d1e3b5a6c8d0e2f41
        name: billing-service-20261203
        active: true
        expires_at: "2027-03-03T02:00:05Z"
        days_remaining: 89
        expired: false
    token:
      description: The new user's token, as RV(token).
      type: str
      returned: when the item's user was created (not in check mode)
      sample: xsu_EXAMPLE-not-a-real-token
    token_fingerprint:
      description: First 8 hex characters of the SHA-256 of RV(results[].token).
      type: str
      returned: when the item's user was created (not in check mode)
      sample: 3fa1c09e
    orphaned_ids:
      description: As RV(orphaned_ids), for this item.
      type: list
      elements: str
      returned: when the item failed after a lost create answer left users it deactivated
      sample: [su_0a1b2c3d4e5f60718293a4b5]
diff:
  description:
    - In diff mode with O(users), a list of one C(before)/C(after) pair per item that succeeded, each
      with C(before_header) and C(after_header) set to the item's name; C(before) is empty for a
      user that was (or would be) created.
    - With O(name), the usual single C(before)/C(after) pair.
  returned: in diff mode
  type: raw
  sample:
    - before_header: billing-service-20261203
      after_header: billing-service-20261203
      before: {}
      after:
        name: billing-service-20261203
        description: Rotated credential of the billing service
        active: true
        expires_at: "2027-03-03T02:00:05Z"
"""

from collections.abc import Callable
from datetime import timedelta

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    NoListRoute,
    XapiClient,
    XapiError,
    client_from_params,
    describe_user,
    fingerprint,
    format_time,
    map_items,
    new_module,
    pool_size_for,
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

    try:
        existing = client.find_active(name)
        unlisted = False
    except NoListRoute:
        # Nothing can tell whether the name is taken; the create's own 409 will, if it is.
        existing, unlisted = None, True
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
        msg = f"system user {name} would be created"
        if unlisted:
            msg += (f"; the platform has no list route ({client.caps.no_list_reason}), so whether an active user "
                    "of that name exists was not checked")
        result = {"changed": True, "system_user": describe_user(planned, now), "msg": msg}
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


def validate_users(users: list[dict]) -> list[dict]:
    """The items of ``users``, checked all at once before any call; the first bad one is one sentence."""
    first_seen: dict[str, int] = {}
    items = []
    for n, item in enumerate(users):
        name = validate_name(item.get("name"), option=f"users[{n}].name")
        try:
            validate_expires_in_days(item["expires_in_days"])
        except XapiError as exc:
            raise XapiError(f"users[{n}] ({name}): {exc.msg}") from None
        if name in first_seen:
            raise XapiError(f"users[{n}] repeats the name {name} of users[{first_seen[name]}]: list each system "
                            "user once.")
        first_seen[name] = n
        items.append({"name": name, "description": item.get("description"),
                      "expires_in_days": item["expires_in_days"]})
    return items


def _item_result(client: XapiClient, name: str, outcome: dict | XapiError) -> dict:
    if isinstance(outcome, XapiError):
        orphans = [str(i) for i in outcome.details.get("orphaned_ids") or () if i]
        entry: dict = {"name": name, "changed": bool(orphans), "failed": True, "msg": client.redact(outcome.msg)}
        if orphans:
            entry["orphaned_ids"] = orphans
        return entry
    entry = {"name": name, "changed": outcome["changed"], "failed": False, "msg": outcome["msg"],
             "system_user": outcome["system_user"]}
    if "token" in outcome:
        entry["token"] = outcome["token"]
        entry["token_fingerprint"] = outcome["token_fingerprint"]
    return entry


def ensure_all_present(client: XapiClient, items: list[dict], check_mode: bool, diff: bool,
                       warn: Callable[[str], None]) -> dict:
    """ensure_present for every (validated) item, concurrently; every item's outcome in ``results``."""
    outcomes = map_items(lambda item: ensure_present(client, item, check_mode, diff), items)
    results = [_item_result(client, item["name"], outcome) for item, outcome in outcomes]
    for _item, outcome in outcomes:
        if isinstance(outcome, dict):
            for warning in outcome.get("warnings", ()):
                warn(warning)

    result: dict = {"changed": any(entry["changed"] for entry in results), "results": results}
    if diff:
        result["diff"] = [dict(outcome["diff"], before_header=item["name"], after_header=item["name"])
                          for item, outcome in outcomes if isinstance(outcome, dict)]
    failed = [entry for entry in results if entry["failed"]]
    if failed:
        raise XapiError(f"could not create {len(failed)} of {len(results)} system users; first: "
                        f"{failed[0]['name']}: {failed[0]['msg']}", **result)

    created = sum(1 for entry in results if entry["changed"])
    verb = "would be created" if check_mode else "created"
    result["msg"] = f"{len(results)} system users ensured: {created} {verb}, {len(results) - created} already active"
    return result


def with_capabilities(client: XapiClient, work: Callable[[], dict]) -> dict:
    """What ``work`` returns, and what the run learned of the platform (no extra call: the lookups asked).

    A failure carries it too: a caller deciding what to do next needs it most then.
    """
    try:
        result = work()
    except XapiError as exc:
        exc.details.setdefault("capabilities", client.capabilities(probe=False))
        raise
    result["capabilities"] = client.capabilities(probe=False)
    return result


ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "users": {
        "type": "list",
        "elements": "dict",
        "options": {
            "name": {"type": "str", "required": True},
            "description": {"type": "str"},
            "expires_in_days": {"type": "int", "default": 90},
        },
    },
    "description": {"type": "str"},
    "expires_in_days": {"type": "int", "default": 90},
    "state": {"type": "str", "default": "present", "choices": ["present"]},
}
ARGUMENT_RULES = {
    "mutually_exclusive": [("name", "users"), ("users", "description")],
    "required_one_of": [("name", "users")],
}


def run(params: dict, check_mode: bool, diff: bool, warn: Callable[[str], None]) -> dict:
    """The module's work for validated ``params`` (also run in the controller by the role's action)."""
    if params["users"] is None:
        client = client_from_params(params)
        return with_capabilities(client, lambda: ensure_present(client, params, check_mode, diff))
    # Every item is checked before the first call: one bad item changes nothing.
    items = validate_users(params["users"])
    client = client_from_params(params, pool_maxsize=pool_size_for(len(items)))
    return with_capabilities(client, lambda: ensure_all_present(client, items, check_mode, diff, warn))


def main() -> None:
    module = new_module(ARGUMENT_SPEC, supports_check_mode=True, **ARGUMENT_RULES)
    run_module(module, lambda: run(module.params, module.check_mode, module._diff, module.warn))


if __name__ == "__main__":
    main()

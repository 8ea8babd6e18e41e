#!/usr/bin/python
# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: system_user_info
short_description: Look up platform system users and the expiry of their tokens
version_added: 0.1.0
description:
  - Looks system users up by O(id) (one or many, fetched concurrently over one connection pool),
    by O(name), by a O(token) itself, or lists them all.
  - Each user comes with C(days_remaining) and C(expired), computed by the platform's clock.
  - With O(token), the platform's C(token-info) call answers with the token's own user, so a service
    that holds only its token can learn its id and expiry; no admin O(api_token) is needed then.
author:
  - xapi.system_auth maintainers (@xapi)
extends_documentation_fragment:
  - xapi.system_auth.api
attributes:
  check_mode:
    description: Can run in check mode and return the changed status prediction without modifying the platform.
    support: full
    details:
      - This module only reads, and works the same in check mode.
  diff_mode:
    description: Returns details on what has changed (or would change in check mode) when in diff mode.
    support: none
  action_group:
    description: Use C(group/xapi.system_auth.api) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - xapi.system_auth.api
options:
  id:
    description:
      - One system user id, or a list of them.
      - Ids the platform does not know are listed in RV(missing_ids); that is not a failure.
      - The users are returned in the order given, each id once.
    type: list
    elements: str
  name:
    description:
      - Return the system users of this name (active and inactive, newest first, unless O(active) is set).
    type: str
  token:
    description:
      - A system user's token; return the user it belongs to, asking the platform with that token.
      - O(api_token) is not needed in this mode.
    type: str
  active:
    description:
      - Only return active (V(true)) or inactive (V(false)) users. Applies to O(name) and to listing all.
    type: bool
  verify_access:
    description:
      - With O(token), also call an ordinary API route (the tenants list) with it, and fail if it is refused.
    type: bool
    default: false
  wait_timeout:
    description:
      - With O(token), keep retrying for up to this many seconds, with backoff, while the platform
        answers 401; platforms can take a while before a new token is accepted everywhere.
      - V(0) fails at the first 401.
    type: float
    default: 0
notes:
  - Always returns C(changed=false).
seealso:
  - module: xapi.system_auth.system_user
  - module: xapi.system_auth.system_user_deactivate
"""

EXAMPLES = r"""
- name: How long until the billing service's credential expires
  xapi.system_auth.system_user_info:
    api_url: https://platform.example.com
    api_token: "{{ platform_admin_token }}"
    id: su_4f9c2a7d1e3b5a6c8d0e2f41
  register: billing

- name: Warn early
  ansible.builtin.debug:
    msg: "Rotate soon: {{ billing.system_users[0].days_remaining }} days left"
  when: billing.system_users[0].days_remaining < 7

- name: Check hundreds of credentials in one call
  xapi.system_auth.system_user_info:
    id: "{{ service_credential_ids }}"
  register: credentials

- name: Ask the platform which user a service's own token belongs to, and that it works
  xapi.system_auth.system_user_info:
    api_url: https://platform.example.com
    token: "{{ service_token }}"
    verify_access: true
    wait_timeout: 60
  register: own
  no_log: false  # the token option is no_log already; the result holds no token

- name: Every active system user
  xapi.system_auth.system_user_info:
    active: true
  register: all_active
"""

RETURN = r"""
system_users:
  description:
    - The system users found, each as the platform returns it plus the derived C(days_remaining)
      and C(expired). Never contains a token.
    - In the order of O(id) when ids were given; newest first otherwise.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Id of the system user.
      type: str
      sample: su_4f9c2a7d1e3b5a6c8d0e2f41
    name:
      description: Name of the system user.
      type: str
      sample: billing-service-20261203
    description:
      description: Its description.
      type: str
      sample: Rotated credential of the billing service
    active:
      description: Whether it is active (not deactivated).
      type: bool
      sample: true
    created_at:
      description: Creation time, RFC 3339 UTC.
      type: str
      sample: "2026-12-03T02:00:05Z"
    expires_at:
      description: Expiry time of its token, RFC 3339 UTC.
      type: str
      sample: "2027-03-03T02:00:05Z"
    deactivated_at:
      description: Deactivation time, or V(null).
      type: str
      sample: null
    last_used_at:
      description: Last time its token was used, or V(null).
      type: str
      sample: "2026-12-04T09:12:44Z"
    days_remaining:
      description: Whole days until expiry (rounded down, negative once expired), by the platform's clock.
      type: int
      sample: 89
    expired:
      description: Whether the token has expired.
      type: bool
      sample: false
missing_ids:
  description: The ids of O(id) that the platform does not know.
  returned: always
  type: list
  elements: str
  sample: []
system_user:
  description: With O(token), the user the token belongs to (the same fields as an item of RV(system_users)).
  returned: when O(token) is given
  type: dict
  sample:
    id: su_4f9c2a7d1e3b5a6c8d0e2f41
    name: billing-service-20261203
    active: true
    expires_at: "2027-03-03T02:00:05Z"
    days_remaining: 89
    expired: false
access_verified:
  description:
    - V(true) when O(verify_access=true) and an ordinary API call with the token succeeded (a refused
      call fails the task instead).
    - V(false) when O(verify_access) was not requested.
  returned: when O(token) is given
  type: bool
  sample: true
"""

import time

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    XapiClient,
    XapiError,
    client_from_module,
    describe_user,
    new_module,
    run_module,
    validate_id,
    validate_name,
)

MAX_CONCURRENCY = 16


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def by_ids(client: XapiClient, ids: list[str]) -> dict:
    wanted = _unique([validate_id(i) for i in ids])
    if not wanted:
        raise XapiError("id must name at least one system user id.")
    workers = min(MAX_CONCURRENCY, len(wanted))
    if workers == 1:
        found = [client.get_user(wanted[0])]
    else:
        # Imported here: a single lookup, the common case, should not pay for it.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map() keeps the order of the ids; the first failure is raised here, once.
            found = list(pool.map(client.get_user, wanted))
    now = client.now()
    return {
        "changed": False,
        "system_users": [describe_user(u, now) for u in found if u is not None],
        "missing_ids": [wanted[n] for n, u in enumerate(found) if u is None],
    }


def by_token(client: XapiClient, token: str, verify_access: bool, wait_timeout: float) -> dict:
    deadline = time.monotonic() + wait_timeout
    delay = 0.25

    def patiently(call):
        nonlocal delay
        while True:
            try:
                return call(token)
            except XapiError as exc:
                # Only a 401 can be "not yet": a new token propagating through the platform.
                remaining = deadline - time.monotonic()
                if exc.status != 401 or remaining <= 0:
                    raise
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 5.0)

    user = describe_user(patiently(client.token_info), client.now())
    if verify_access:
        patiently(client.verify_access)
    return {"changed": False, "system_user": user, "system_users": [user], "missing_ids": [],
            "access_verified": bool(verify_access)}


def lookup(client: XapiClient, params: dict) -> dict:
    if params["id"] is not None:
        return by_ids(client, params["id"])
    if params["token"] is not None:
        if not params["token"].strip():
            raise XapiError("token must not be empty: pass the system user's token.")
        return by_token(client, params["token"], params["verify_access"], params["wait_timeout"])
    if params["name"] is not None:
        name = validate_name(params["name"])
        users = [u for u in client.list_users(name=name, active=params["active"]) if u.get("name") == name]
    else:
        users = client.list_users(active=params["active"])
    now = client.now()
    return {"changed": False, "system_users": [describe_user(u, now) for u in users], "missing_ids": []}


def main() -> None:
    module = new_module(
        {
            "id": {"type": "list", "elements": "str"},
            "name": {"type": "str"},
            "token": {"type": "str", "no_log": True},
            "active": {"type": "bool"},
            "verify_access": {"type": "bool", "default": False},
            "wait_timeout": {"type": "float", "default": 0},
        },
        mutually_exclusive=[("id", "name", "token"), ("active", "id"), ("active", "token")],
        supports_check_mode=True,
    )
    params = module.params

    def work() -> dict:
        uses_token = params["token"] is not None
        if not uses_token and (params["verify_access"] or params["wait_timeout"]):
            raise XapiError("verify_access and wait_timeout apply to a token lookup only: also set token.")
        if params["wait_timeout"] < 0:
            raise XapiError(f"wait_timeout must be 0 or more seconds, got {params['wait_timeout']:g}.")
        pool = min(MAX_CONCURRENCY, len(params["id"] or ())) or 1
        client = client_from_module(module, pool_maxsize=pool, token_required=not uses_token)
        return lookup(client, params)

    run_module(module, work)


if __name__ == "__main__":
    main()

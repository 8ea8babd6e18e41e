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
    by O(name), by a O(token) itself, by a list of O(tokens), or lists them all.
  - Each user comes with C(days_remaining) and C(expired), computed by the platform's clock.
  - With O(token), the platform's C(token-info) call answers with the token's own user, so a service
    that holds only its token can learn its id and expiry; no admin O(api_token) is needed then.
  - With O(tokens), each token is looked up (and verified, with O(verify_access)) as O(token) would
    be, up to 16 at a time, and reported in RV(results) without the token itself; the task fails when
    any token was not accepted, with every token's outcome still in RV(results).
  - Lookups by O(id), O(token) and O(tokens) use only the routes the platform's reference documents.
    A lookup by O(name), a listing, and the O(active) filter need the list route
    C(GET /api/v1/system-users); on a platform that does not serve it the task fails with one sentence
    saying so. RV(capabilities) tells which the platform serves.
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
      - Needs the platform's list route (see RV(capabilities.list)).
    type: str
  token:
    description:
      - A system user's token; return the user it belongs to, asking the platform with that token.
      - O(api_token) is not needed in this mode.
    type: str
  tokens:
    description:
      - Several system users' tokens, each looked up as O(token) is, in one module run.
      - Each outcome is in RV(results), in the order given; the users found are in RV(system_users).
      - An empty string in the list fails the task before any call. An empty list does nothing.
      - O(api_token) is not needed in this mode.
      - Mutually exclusive with O(id), O(name), O(token) and O(active).
    type: list
    elements: str
  active:
    description:
      - Only return active (V(true)) or inactive (V(false)) users. Applies to O(name) and to listing all.
      - Needs the platform's list route, as listing does.
    type: bool
  verify_access:
    description:
      - With O(token), also call an ordinary API route (the tenants list) with it, and fail if it is refused.
      - With O(tokens), the same for each token; a refused one is a failed item of RV(results).
    type: bool
    default: false
  wait_timeout:
    description:
      - With O(token), keep retrying for up to this many seconds, with backoff, while the platform
        answers 401; platforms can take a while before a new token is accepted everywhere.
      - V(0) fails at the first 401.
      - With O(tokens), each token may wait this long; they wait side by side, up to 16 at a time.
    type: float
    default: 0
notes:
  - Always returns C(changed=false).
  - Ansible takes a top-level C(results) list for the results of a loop, so it shows the items of
    RV(results) even when the task has C(no_log=true); they never hold a token.
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

- name: Check that every service's new token works, in one module run
  xapi.system_auth.system_user_info:
    api_url: https://platform.example.com
    tokens: "{{ services | map(attribute='new_token') }}"
    verify_access: true
    wait_timeout: 60
  register: verified
  failed_when: false  # look at each item instead

- name: Report the tokens the platform did not accept (by fingerprint, never the token)
  ansible.builtin.debug:
    msg: "token {{ item.token_fingerprint }}: {{ item.msg }}"
  loop: "{{ verified.results | selectattr('failed') }}"

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
    - With O(tokens), the users of the accepted tokens, in the order of the tokens, each once.
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
      description:
        - Whether it is active (not deactivated).
        - When the platform's object has no C(active) field, derived - inactive once C(deactivated_at) is set
          or C(expires_at) has passed, else active (so a user deactivated early still reads as active there).
      type: bool
      sample: true
    created_at:
      description: Creation time, RFC 3339 UTC, when the platform sends it (see RV(capabilities.fields)).
      type: str
      sample: "2026-12-03T02:00:05Z"
    expires_at:
      description: Expiry time of its token, RFC 3339 UTC.
      type: str
      sample: "2027-03-03T02:00:05Z"
    deactivated_at:
      description: Deactivation time, or V(null), when the platform sends it (see RV(capabilities.fields)).
      type: str
      sample: null
    last_used_at:
      description:
        - Last time its token was used, or V(null), when the platform sends it (see RV(capabilities.fields)).
        - Absent, not V(null), on a platform that does not report usage.
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
capabilities:
  description:
    - What the platform serves, learned in this module run, so that a caller can choose what it may
      rely on (an orphan sweep needs RV(capabilities.list), a usage check needs C(last_used_at) in
      RV(capabilities.fields)).
  returned: success, and on a failure once the options were checked
  type: dict
  contains:
    list:
      description:
        - Whether the platform serves the list route C(GET /api/v1/system-users).
        - V(false) when it answered 404, 405 or 501, an HTML page, or a list without C(meta).
        - With O(id), asked with one small request if this run did not learn it otherwise.
        - V(null) when not asked - with O(token) or O(tokens), which are a service's lookups.
      type: bool
      returned: success
      sample: true
    name_filter:
      description:
        - Whether the list route filters by C(name) (the module compares names itself either way).
        - V(false) without a list route; V(null) when not asked.
      type: bool
      returned: success
      sample: true
    fields:
      description:
        - The fields of the system user objects the platform sent in this run, in the order first seen;
          never C(token). Empty when it sent none.
      type: list
      elements: str
      returned: success
      sample: [id, name, description, active, created_at, expires_at, deactivated_at, last_used_at]
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
results:
  description:
    - With O(tokens), one entry per token, in the order given, also when the task fails because a
      token was not accepted. An entry never holds the token, only its fingerprint.
  returned: when O(tokens) is given and none of them is empty
  type: list
  elements: dict
  contains:
    failed:
      description: Whether the token was not accepted (lookup or access check refused, or another error).
      type: bool
      returned: always
      sample: false
    msg:
      description: Why the token was not accepted, in one sentence without a token.
      type: str
      returned: when the item failed
      sample: "the API token was rejected: expired, deactivated or wrong."
    status:
      description:
        - The HTTP status of the answer that refused the token (V(401) for a token the platform does
          not accept), or V(null) when there was no answer (a timeout, a connection error).
      type: int
      returned: when the item failed
      sample: 401
    system_user:
      description: The user the token belongs to (the same fields as an item of RV(system_users)).
      type: dict
      returned: when the item succeeded
      sample:
        id: su_4f9c2a7d1e3b5a6c8d0e2f41
        name: billing-service-20261203
        active: true
        expires_at: "2027-03-03T02:00:05Z"
        days_remaining: 89
        expired: false
    access_verified:
      description: V(true) when O(verify_access=true) and an ordinary API call with the token succeeded.
      type: bool
      returned: always
      sample: true
    token_fingerprint:
      description: First 8 hex characters of the SHA-256 of the token, safe to log and compare.
      type: str
      returned: always
      sample: 3fa1c09e
msg:
  description:
    - "With O(tokens), how many tokens were accepted; when some were not, how many and the first one's
      error, as V(2 of 50 tokens were not accepted; first: token 3fa1c09e: ...)."
    - On any other failure, the reason in one sentence.
  returned: with O(tokens), and on failure
  type: str
  sample: 50 tokens accepted
"""

import time
from collections.abc import Callable

from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    MAX_CONCURRENCY,
    XapiClient,
    XapiError,
    client_from_params,
    describe_user,
    fingerprint,
    map_items,
    new_module,
    pool_size_for,
    run_module,
    validate_id,
    validate_name,
)


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


def validate_tokens(tokens: list[str]) -> list[str]:
    for n, token in enumerate(tokens):
        if not token.strip():
            raise XapiError(f"tokens[{n}] is empty: pass each system user's token, and leave out services that "
                            "have none.")
    return tokens


def by_tokens(client: XapiClient, tokens: list[str], verify_access: bool, wait_timeout: float) -> dict:
    """by_token for every token (each distinct one asked once), concurrently; every outcome in ``results``."""
    distinct = _unique(tokens)
    outcomes = dict(map_items(lambda t: by_token(client, t, verify_access, wait_timeout), distinct))
    results = []
    users: dict[str, dict] = {}
    for token in tokens:
        outcome = outcomes[token]
        if isinstance(outcome, XapiError):
            results.append({"failed": True, "msg": client.redact(outcome.msg), "status": outcome.status,
                            "access_verified": False, "token_fingerprint": fingerprint(token)})
            continue
        user = outcome["system_user"]
        users.setdefault(str(user.get("id")), user)
        results.append({"failed": False, "system_user": user, "access_verified": outcome["access_verified"],
                        "token_fingerprint": fingerprint(token)})

    result = {"changed": False, "results": results, "system_users": list(users.values()), "missing_ids": []}
    failed = [entry for entry in results if entry["failed"]]
    if failed:
        raise XapiError(f"{len(failed)} of {len(results)} tokens were not accepted; first: token "
                        f"{failed[0]['token_fingerprint']}: {failed[0]['msg']}", **result)
    result["msg"] = f"{len(results)} tokens accepted" + (", access verified" if verify_access else "")
    return result


def by_list(client: XapiClient, name: str | None, active: bool | None) -> dict:
    """The users of the list route (of that name, in that state); one sentence on a platform without it."""
    if name is not None:
        name = validate_name(name)
        purpose = "looking system users up by name"
    elif active is not None:
        purpose = "filtering system users by active"
    else:
        purpose = "listing system users"
    users = client.list_users(name=name, active=active, purpose=purpose)
    now = client.now()
    return {"changed": False, "system_users": [describe_user(u, now) for u in users], "missing_ids": []}


def lookup(client: XapiClient, params: dict) -> dict:
    if params["id"] is not None:
        return by_ids(client, params["id"])
    if params["tokens"] is not None:
        return by_tokens(client, params["tokens"], params["verify_access"], params["wait_timeout"])
    if params["token"] is not None:
        if not params["token"].strip():
            raise XapiError("token must not be empty: pass the system user's token.")
        return by_token(client, params["token"], params["verify_access"], params["wait_timeout"])
    return by_list(client, params["name"], params["active"])


def with_capabilities(client: XapiClient, work: Callable[[], dict], probe: bool) -> dict:
    """What ``work`` returns, and what the platform serves; with ``probe``, an unknown list route is asked once.

    A failure carries what was learned so far (without a probe).
    """
    try:
        result = work()
    except XapiError as exc:
        exc.details.setdefault("capabilities", client.capabilities(probe=False))
        raise
    result["capabilities"] = client.capabilities(probe=probe)
    return result


ARGUMENT_SPEC = {
    "id": {"type": "list", "elements": "str"},
    "name": {"type": "str"},
    "token": {"type": "str", "no_log": True},
    "tokens": {"type": "list", "elements": "str", "no_log": True},
    "active": {"type": "bool"},
    "verify_access": {"type": "bool", "default": False},
    "wait_timeout": {"type": "float", "default": 0},
}
ARGUMENT_RULES = {
    "mutually_exclusive": [("id", "name", "token", "tokens"), ("active", "id"), ("active", "token"),
                           ("active", "tokens")],
}


def run(params: dict, check_mode: bool, diff: bool, warn: Callable[[str], None]) -> dict:
    """The module's work for validated ``params`` (also run in the controller by the role's action)."""
    uses_token = params["token"] is not None or params["tokens"] is not None
    if not uses_token and (params["verify_access"] or params["wait_timeout"]):
        raise XapiError("verify_access and wait_timeout apply to token lookups only: also set token or tokens.")
    if params["wait_timeout"] < 0:
        raise XapiError(f"wait_timeout must be 0 or more seconds, got {params['wait_timeout']:g}.")
    if params["tokens"] is not None:
        validate_tokens(params["tokens"])
    client = client_from_params(params, pool_maxsize=pool_size_for(len(params["id"] or params["tokens"] or ())),
                                token_required=not uses_token)
    # Only a lookup by id asks the list route on purpose (one small request): a name lookup or a
    # listing has just asked it, and token lookups are a service's business, not an admin's.
    return with_capabilities(client, lambda: lookup(client, params), probe=params["id"] is not None)


def main() -> None:
    module = new_module(ARGUMENT_SPEC, supports_check_mode=True, **ARGUMENT_RULES)
    run_module(module, lambda: run(module.params, module.check_mode, module._diff, module.warn))


if __name__ == "__main__":
    main()

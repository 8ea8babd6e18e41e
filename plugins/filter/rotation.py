# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters of the credential_rotation role: each a thin call into module_utils/_rotation.py.

They are internal to the role (their names start with an underscore): the role hands them what a
step's module answered and they say what that means and what comes next. Their documentation is in
the ``.yml`` file of the same name beside this one (``ansible-doc -t filter xapi.system_auth._rotation_fold``).
"""

from __future__ import annotations

import time
from typing import Any

from ansible.errors import AnsibleFilterError

from ansible_collections.xapi.system_auth.plugins.module_utils import _rotation as rules


def _plain(value: Any) -> Any:
    """Ansible's lazy containers and tagged strings, as plain JSON-able Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return value
    return str(value)


def _guard(func):
    def wrapper(*args, **kwargs):
        try:
            return func(*[_plain(a) for a in args], **{k: _plain(v) for k, v in kwargs.items()})
        except (rules.RotationError, KeyError, TypeError, ValueError) as error:
            raise AnsibleFilterError(f"{func.__name__}: {error}") from error
    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper


@_guard
def _rotation_start(inputs_by_host: dict, run_id: str, check_mode: bool = False,
                    invalid: dict | None = None) -> dict:
    """The run's state from every service's role variables."""
    return rules.pack(rules.indexed(rules.start(inputs_by_host, run_id, check_mode, invalid)))


@_guard
def _rotation_requests(run: dict, step: str, tokens: dict | None = None) -> Any:
    """What a step sends: module arguments or kubernetes.core calls for every service due for it."""
    run = rules.unpack(run)
    now = time.time()
    if step in ("lock", "store", "promote", "rb_restore", "clear"):
        return rules.writes(run, step, tokens, now)
    if step in ("restart", "rb_restart"):
        return rules.restart_calls(run, step)
    if step == "lookup":
        return rules.lookup_ids(run)
    if step == "lookup_tokens":
        hosts = rules.lookup_token_hosts(run)
        return [rules.unb64((tokens or {}).get(h, {}).get("current")) for h in hosts]
    if step == "create":
        return rules.create_requests(run)
    if step == "create_retries":
        return rules.create_retries(run)
    if step == "verify":
        return rules.verify_requests(run, tokens or {})
    if step == "verify_timeout":
        return rules.verify_timeout(run)
    if step in ("discard", "deactivate"):
        return rules.deactivate_ids(run, step)
    if step in ("discard_list", "sweep_list"):
        return rules.list_needed(run, step)
    if step == "usage":
        return rules.usage_ids(run)
    if step == "health":
        return [r["host"] for r in rules.health_requests(run)]
    if step in ("wait", "rb_wait"):
        return [r["host"] for r in rules.wait_requests(run, step)]
    raise rules.RotationError(f"step {step!r} has no requests")


@_guard
def _rotation_fold(run: dict, step: str, answer: Any = None, extra: Any = None) -> dict:
    """The run's state after a step, from what the step's module answered."""
    return rules.pack(rules.indexed(rules.fold(rules.unpack(run), step, answer, extra, time.time())))


@_guard
def _rotation_tokens(tokens: dict, step: str, answer: Any = None, run: dict | None = None) -> dict:
    """The tokens fact after a step that reads or creates tokens (only for no_log tasks)."""
    tokens, run = dict(tokens or {}), rules.unpack(run)
    if step == "read":
        found = rules.inspect(run or {}, (answer or {}).get("reads") or {}, time.time())[1]
        tokens.update(found)
    elif step == "create":
        created = rules.fold_create(run or {}, answer or {})[1]
        for host, token in created.items():
            tokens.setdefault(host, {})["pending"] = token
    else:
        raise rules.RotationError(f"step {step!r} yields no tokens")
    return tokens


@_guard
def _rotation_report(run: dict, what: str) -> Any:
    """What the run says at the end: summary lines, outcomes, audit records, expiry, failed hosts."""
    run = rules.unpack(run)
    if what == "lines":
        return rules.summary_lines(run)
    if what == "outcomes":
        return rules.outcomes(run)
    if what == "stats":
        return rules.stats(run)
    if what == "summary":
        return {"lines": rules.summary_lines(run), "stats": rules.stats(run),
                "failed": [svc["host"] for svc in run["services"].values() if svc["status"] == "failed"]}
    if what == "notify":
        return [{"host": host, **{k: run["services"][host][k] for k in ("service", "namespace", "secret", "message")}}
                for host in rules.notify_hosts(run)]
    if what == "audit":
        return rules.audit_records(run, time.time())
    if what == "expiry":
        return rules.expiry_lines(run)
    if what == "diffs":
        return rules.preview(run, time.time())[1]
    if what == "failed":
        return [svc["host"] for svc in run["services"].values() if svc["status"] == "failed"]
    raise rules.RotationError(f"no report {what!r}")


class FilterModule:
    """The credential_rotation role's rules, reached from its tasks."""

    def filters(self) -> dict:
        return {f.__name__: f for f in (_rotation_start, _rotation_requests, _rotation_fold,
                                        _rotation_tokens, _rotation_report)}

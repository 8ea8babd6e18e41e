# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs the system_user module and keeps a newly revealed token out of every output.

A module cannot mark its own result as secret (ansible-core strips ``_ansible_no_log`` from
module returns), so a task that forgot ``no_log: true`` would print the token at ``-v``. This
action plugin sets the flag after the module ran, whenever the result carries a token: at the
top, or in an item of ``results`` when the module ran with ``users`` (also when it failed, since
the items created before the failure keep their tokens). The registered variable still holds the
tokens for the tasks that store them.

Ansible takes a top-level ``results`` list for a loop's results, and its censoring keeps those
items unless each is marked itself, even under the task's own ``no_log: true``. So every item that
carries a token is marked too, and every item when the task has ``no_log`` set.
"""

from __future__ import annotations

from typing import Any

from ansible.plugins.action import ActionBase


def _items(result: dict[str, Any]) -> list[dict[str, Any]]:
    items = result.get("results")
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def carries_token(result: dict[str, Any]) -> bool:
    """Whether a system_user result holds a token anywhere the module puts one."""
    return bool(result.get("token")) or any(item.get("token") for item in _items(result))


def hide_secrets(result: dict[str, Any], task_no_log: bool = False) -> dict[str, Any]:
    """Mark ``result`` (and each item of its ``results``) as no_log where it holds a token."""
    for item in _items(result):
        if task_no_log or item.get("token"):
            item["_ansible_no_log"] = True
    if carries_token(result):
        result["_ansible_no_log"] = True
    return result


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="xapi.system_auth.system_user",
                                           module_args=self._task.args, task_vars=task_vars))
        return hide_secrets(result, bool(self._play_context.no_log))

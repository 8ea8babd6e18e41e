# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs the system_user module and keeps a newly revealed token out of every output.

A module cannot mark its own result as secret (ansible-core strips ``_ansible_no_log`` from
module returns), so a task that forgot ``no_log: true`` would print the token at ``-v``. This
action plugin sets the flag after the module ran, whenever the result carries a token; the
registered variable still holds the token for the tasks that store it.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="xapi.system_auth.system_user",
                                           module_args=self._task.args, task_vars=task_vars))
        if result.get("token"):
            result["_ansible_no_log"] = True
        return result

#!/usr/bin/python
# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: rotation_observe
short_description: Reads, writes, calls and waits for the services of a credential rotation (internal to the role)
version_added: 0.1.0
description:
  - B(Internal) to the role C(xapi.system_auth.credential_rotation); its arguments and results may
    change without notice. It is documented so that readers of the role know what its steps do.
  - Runs on the controller as an action plugin. It reads Kubernetes objects with the steps of the
    C(kubernetes.core.k8s) lookup (one client per cluster) and writes them with kubernetes.core's own code for
    C(kubernetes.core.k8s) (no module process), calls the platform with the code of this
    collection's modules (no module process either), asks health URLs through
    C(ansible.builtin.uri), and judges every answer with the rotation's rules
    (C(module_utils/_rotation.py)).
  - O(step=inputs) resolves every play host's C(credential_rotation_*) variables as a task of the
    role would see them on that host and checks them against the role's argument spec.
  - O(step=read) reads every due service's Secret (and its companion Secret when it records a
    rotation); a Secret whose rotation lock another live run holds is read again until that lock is
    released or lapses. O(step=check) reads the workloads (and companion) of the services that will
    change something.
  - O(step=write) and O(step=restart) apply O(calls) (the Secrets' patches, the workloads' restart
    patches) as C(kubernetes.core.k8s) with O(state), C(merge_type=merge) and
    C(continue_on_error=true) would, one call per cluster (nothing in check mode).
  - O(step=call) runs O(module) (M(xapi.system_auth.system_user), M(xapi.system_auth.system_user_info)
    or M(xapi.system_auth.system_user_deactivate)) with O(args) and the connection options in this
    process, as that module would run. Its argument spec checks O(args) with the same sentences, its
    connection options fall back to the same environment variables, its C(no_log) values are masked
    in the answer, and the answer is the module's (also a failed one). In check mode it runs the
    module in check mode.
  - O(step=wait) and O(step=rb_wait) wait for the rollouts by the rules of C(kubectl rollout status)
    and until no pod that reads the Secret may still hold the token being retired;
    O(step=usage) until the platform sees the new credentials used; O(step=health) for the health
    URLs; O(step=preview) gives the check-mode diffs. A wait prints a progress line now and then and
    renews the run's rotation locks every third of their duration.
  - O(step=lookup) looks the credentials up by O(ids) and by O(tokens) (M(xapi.system_auth.system_user_info)),
    and is used with O(fold=lookup) only.
  - Every step but O(step=inputs), O(step=read) and O(step=call) needs O(fold). Its answers are folded into
    O(run) here, so that a step of the role is one task, and only the run's new state is returned.
author:
  - xapi.system_auth maintainers (@xapi)
extends_documentation_fragment:
  - xapi.system_auth.api
options:
  step:
    description: What to read or wait for.
    type: str
    required: true
    choices: [inputs, read, check, write, restart, call, lookup, wait, rb_wait, usage, health, preview]
  run:
    description:
      - The run's state, as the role keeps it (what C(xapi.system_auth._rotation_start),
        C(xapi.system_auth._rotation_fold) or a task with O(fold) returned).
      - Required by every step but O(step=inputs), and by O(fold).
    type: dict
  fold:
    description:
      - The step of the rotation's table whose answers these are (for example C(lock) for O(step=write), C(verify) for
        O(step=call) with the module C(system_user_info)). The action then makes the step only for the services of
        O(run) due for it, folds the answers into O(run) with the rules of C(module_utils/_rotation.py), as the
        C(xapi.system_auth._rotation_fold) filter would, and returns the run's new state instead of the answers, for
        the task to register as the run.
      - When no service is due for it, nothing is called, the result is C(skipped) and the state is O(run) unchanged
        (a task that Ansible skipped would register a skipped result in the run's place). A call with an empty
        list to send (O(args) C(id), C(ids), C(tokens) or C(users)) is not made; a due step with nothing to send
        or wait for is folded and reported C(skipped) too.
      - Not with O(step=inputs) or O(step=read), whose answers the role folds itself; required by every other step
        but O(step=call) (the create, whose answer the role folds itself, since it holds the new tokens).
    type: str
  ids:
    description: With O(step=lookup), the credential ids to look up (M(xapi.system_auth.system_user_info) C(id)).
    type: list
    elements: str
  tokens:
    description:
      - With O(step=lookup), the tokens of the Secrets that hold no credential id, looked up by token
        (M(xapi.system_auth.system_user_info) C(tokens)). The task must be C(no_log).
    type: list
    elements: str
  module:
    description: With O(step=call), the platform module to run.
    type: str
    choices: [system_user, system_user_info, system_user_deactivate]
  args:
    description: With O(step=call), the module's arguments but the connection options.
    type: dict
  calls:
    description:
      - With O(step=write) or O(step=restart), what C(xapi.system_auth._rotation_requests) returned for the
        step, C([{cluster, hosts, definitions}]).
    type: list
    elements: dict
  state:
    description: With O(step=write), C(patched), or C(present) to create a companion Secret that does not exist yet.
    type: str
    choices: [patched, present]
    default: patched
  display_every:
    description: Seconds between two progress lines of a wait.
    type: float
    default: 15
attributes:
  check_mode:
    description: Can run in check mode.
    support: full
    details:
      - It only reads, except for O(step=write) and O(step=restart), which change nothing in check mode, and the
        renewal of the run's own rotation locks during a wait, which check mode never reaches.
  diff_mode:
    description: Returns details on what would change in diff mode.
    support: full
    details:
      - O(step=preview) returns per service what a rotation would change in each object, every token masked.
  action_group:
    description: Use C(group/xapi.system_auth.api) in C(module_defaults) to set the connection options.
    support: full
    membership:
      - xapi.system_auth.api
"""

EXAMPLES = r"""
# Used by the role only; see roles/credential_rotation/tasks/wait.yml.
- name: Wait for the rollouts and the old pods
  xapi.system_auth.rotation_observe:
    step: wait
    fold: wait
    run: "{{ _credential_rotation_run }}"
  register: _credential_rotation_run
"""

RETURN = r"""
reads:
  description: With O(step=read), what was read per service (it holds the Secrets' data, so the result is hidden).
  returned: step is read
  type: dict
inputs:
  description: With O(step=inputs), every host's role variables (the result is hidden; they may hold the admin token).
  returned: step is inputs
  type: dict
invalid:
  description: With O(step=inputs), per host the sentence of a value the role's argument spec refused.
  returned: step is inputs
  type: dict
webhooks:
  description: With O(step=inputs), per host the failure webhook URL, for the hosts that set one (hidden).
  returned: step is inputs
  type: dict
changed:
  description: Whether the step changed something (with O(step=call), the module's answer is at the top too).
  returned: always
  type: bool
state_json:
  description:
    - With O(fold), the run's new state as one JSON string (no token in it), beside C(due_steps), C(due_groups),
      C(statuses) and C(token_lookups); the answers themselves are not returned.
  returned: fold is given
  type: str
due_steps:
  description: With O(fold), the steps of the table some service of the run is due for next.
  returned: fold is given
  type: list
  elements: str
"""

from ansible_collections.xapi.system_auth.plugins.module_utils._api import new_module


def main() -> None:
    module = new_module(
        {
            "step": {"type": "str", "required": True,
                     "choices": ["inputs", "read", "check", "write", "restart", "call", "lookup", "wait", "rb_wait",
                                 "usage", "health", "preview"]},
            "run": {"type": "dict"},
            "fold": {"type": "str"},
            "ids": {"type": "list", "elements": "str"},
            "tokens": {"type": "list", "elements": "str", "no_log": True},
            "calls": {"type": "list", "elements": "dict"},
            "state": {"type": "str", "choices": ["patched", "present"], "default": "patched"},
            "display_every": {"type": "float", "default": 15},
            "module": {"type": "str", "choices": ["system_user", "system_user_info", "system_user_deactivate"]},
            "args": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    module.fail_json(msg="xapi.system_auth.rotation_observe runs on the controller as an action plugin of the "
                         "credential_rotation role; call it from a task, not as a module.")


if __name__ == "__main__":
    main()

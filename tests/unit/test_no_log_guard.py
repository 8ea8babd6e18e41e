"""Every task of the collection that creates a credential hides its result.

system_user returns the new token, and a module cannot hide its own result from Ansible's
output: only the calling task's ``no_log: true`` can. This walks every task file, playbook and
documented example the collection ships and fails on a system_user task that could print a token.

The action plugin is the second line: it marks a result that carries a token as no_log, and (since
Ansible keeps the items of a top-level ``results`` list through censoring unless each is marked)
each item of the list form's ``results`` that carries one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.xapi.system_auth.plugins.action.system_user import carries_token, hide_secrets
from tests.unit.helpers import REPO

CREATING_MODULES = {"xapi.system_auth.system_user", "system_user"}
# The role runs the module's code in-process: rotation_observe with step call, module system_user.
CALLING_ACTIONS = {"xapi.system_auth.rotation_observe", "rotation_observe"}
SEARCHED = ["roles", "playbooks", "extensions", "docs", "benchmarks", "hack"]
BLOCK_KEYS = ("block", "rescue", "always")


class _Loader(yaml.SafeLoader):
    """Safe loading that accepts Ansible's tags (!vault, !unsafe) as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _yaml_files() -> Iterator[Path]:
    for top in SEARCHED:
        base = REPO / top
        if base.is_dir():
            for path in sorted(base.rglob("*.y*ml")):
                if not any(part.startswith(".") for part in path.relative_to(REPO).parts):
                    yield path


def _module_examples() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "plugins" / "modules").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "EXAMPLES" for t in node.targets):
                yield f"{path.relative_to(REPO)} EXAMPLES", ast.literal_eval(node.value)


def _tasks(node: Any, inherited_no_log: bool = False) -> Iterator[tuple[dict[str, Any], bool]]:
    """(task, effective no_log) for every task under a play, a task list or a block."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item, inherited_no_log)
        return
    if not isinstance(node, dict):
        return
    no_log = node.get("no_log", inherited_no_log) is True or inherited_no_log
    if "hosts" in node:  # a play
        for key in ("pre_tasks", "tasks", "post_tasks", "handlers"):
            yield from _tasks(node.get(key) or [], no_log)
        return
    if any(key in node for key in BLOCK_KEYS):
        for key in BLOCK_KEYS:
            yield from _tasks(node.get(key) or [], no_log)
        return
    yield node, no_log


def _creates(task: dict[str, Any]) -> bool:
    """Whether the task runs system_user, as a module or through the role's action."""
    if CREATING_MODULES & set(task):
        return True
    return any(isinstance(task.get(action), dict) and task[action].get("step") == "call"
               and task[action].get("module") == "system_user" for action in CALLING_ACTIONS)


def _offenders(document: Any) -> list[str]:
    found = []
    for task, no_log in _tasks(document):
        if _creates(task) and not no_log:
            found.append(task.get("name", "(unnamed task)"))
    return found


def _sources() -> list[tuple[str, str]]:
    sources = [(str(path.relative_to(REPO)), path.read_text()) for path in _yaml_files()]
    return sources + list(_module_examples())


def test_the_guard_sees_tasks_and_catches_a_missing_no_log() -> None:
    bad = yaml.load("""
- hosts: localhost
  tasks:
    - block:
        - name: leaks
          xapi.system_auth.system_user: {name: x}
    - name: hidden
      xapi.system_auth.system_user: {name: y}
      no_log: true
    - block:
        - name: hidden by its block
          xapi.system_auth.system_user: {name: z}
      no_log: true
    - name: leaks through the action
      xapi.system_auth.rotation_observe: {step: call, module: system_user, args: {users: []}}
    - name: looks up only
      xapi.system_auth.rotation_observe: {step: call, module: system_user_info, args: {id: [a]}}
""", Loader=_Loader)
    assert _offenders(bad) == ["leaks", "leaks through the action"]


def test_the_guard_finds_the_creating_tasks_it_must_check() -> None:
    creating = [
        where
        for where, text in _sources()
        for document in yaml.load_all(text, Loader=_Loader)
        for task, _no_log in _tasks(document)
        if _creates(task)
    ]
    assert creating.count("plugins/modules/system_user.py EXAMPLES") == 3
    assert any(where.startswith("roles/") for where in creating), "the rotation role creates credentials"


@pytest.mark.parametrize("source", _sources(), ids=lambda s: s[0])
def test_every_system_user_task_has_no_log(source: tuple[str, str]) -> None:
    where, text = source
    documents = list(yaml.load_all(text, Loader=_Loader))
    offenders = [name for document in documents for name in _offenders(document)]
    assert not offenders, f"{where}: system_user tasks without no_log: true: {offenders}"


TOKEN = "xsu_" + "t" * 43


def test_the_action_plugin_hides_a_top_level_token() -> None:
    result = hide_secrets({"changed": True, "token": TOKEN, "system_user": {"id": "su_1"}})
    assert result["_ansible_no_log"] is True and result["token"] == TOKEN


def test_the_action_plugin_hides_every_item_that_carries_a_token() -> None:
    result = hide_secrets({"changed": True, "failed": True, "results": [
        {"name": "a", "changed": True, "failed": False, "token": TOKEN},
        {"name": "b", "changed": False, "failed": False},
        {"name": "c", "changed": False, "failed": True, "msg": "refused"},
    ]})
    assert carries_token(result) and result["_ansible_no_log"] is True
    assert [item.get("_ansible_no_log", False) for item in result["results"]] == [True, False, False]
    # The registered variable keeps the token for the task that stores it.
    assert result["results"][0]["token"] == TOKEN


def test_the_action_plugin_hides_every_item_under_the_tasks_no_log() -> None:
    result = hide_secrets({"changed": False, "results": [{"name": "a"}, {"name": "b"}]}, task_no_log=True)
    assert "_ansible_no_log" not in result
    assert all(item["_ansible_no_log"] is True for item in result["results"])


def test_the_action_plugin_leaves_a_result_without_a_token_visible() -> None:
    for result in ({"changed": False, "system_user": {"id": "su_1"}}, {"changed": False, "results": []},
                   {"changed": False, "results": [{"name": "a", "token_fingerprint": "3fa1c09e"}]},
                   {"failed": True, "msg": "bad", "results": "not a list"}):
        assert not carries_token(result)
        assert "_ansible_no_log" not in hide_secrets(result)

"""The rotation_observe action's folded steps (option ``fold``): a step of the role is one task.

The action makes the step for the services due for it, folds the answers with ``rules.fold`` and
returns the run's new state, which the task registers as the run. These drive the action's own code
with fake calls (the platform and the cluster are the integration tests'): what is called, what is
not, and that the registered state is what the filter would have folded, with no answer and no
token in it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from ansible_collections.xapi.system_auth.plugins.action import rotation_observe
from ansible_collections.xapi.system_auth.plugins.module_utils import _rotation as R
from tests.unit.test_rotation_rules import NEW_ID, NOW, OLD_ID, OLD_TOKEN, assert_no_token, decided, read_run, user


def action(args: dict[str, Any], check_mode: bool = False) -> tuple[rotation_observe.ActionModule, list]:
    """The action as Ansible would hold it for a task with ``args``, its platform calls recorded."""
    module = rotation_observe.ActionModule.__new__(rotation_observe.ActionModule)
    module._task = SimpleNamespace(args=args, check_mode=check_mode, diff=False)
    module._connection_args, module._every, module._drains, module._vars = {}, 15.0, {}, {}
    calls: list = []
    answers: dict[str, Any] = args.pop("_answers", {})

    def call(name: str, call_args: dict) -> dict:
        calls.append((name, call_args))
        return answers.get(name, {"changed": False}) if not callable(answers.get(name)) else answers[name](call_args)

    module._call = call  # type: ignore[method-assign]
    return module, calls


def folded(args: dict[str, Any], run: dict, check_mode: bool = False) -> tuple[dict, list]:
    module, calls = action(dict(args), check_mode)
    result = module._step_and_fold({}, args["step"], args["fold"], run)
    return result, calls


def test_a_step_nobody_is_due_for_calls_nothing_and_keeps_the_state() -> None:
    run, _tokens, _cluster = read_run()  # due for the lookup only
    result, calls = folded({"step": "call", "fold": "deactivate", "module": "system_user_deactivate",
                            "args": {"ids": ["su_x"]}}, run)
    assert calls == []
    assert result["skipped"] is True and "deactivate" in result["msg"]
    assert R.unpack(result) == R.indexed(run)


@pytest.mark.parametrize("args, called", [
    ({"ids": [], "missing_ok": True}, False),   # nothing to send: no call, the fold gets a skipped answer
    ({"ids": [OLD_ID], "missing_ok": True}, True),
])
def test_a_call_with_nothing_to_send_is_not_made(args: dict, called: bool) -> None:
    run, _tokens, _cluster = decided(users=[user(days=3)])
    run = {**run, "services": {h: {**s, "step": "deactivate", "to_deactivate": args["ids"]}
                               for h, s in run["services"].items()}}
    answer = {"changed": True, "results": [{"id": OLD_ID, "changed": True}]}
    result, calls = folded({"step": "call", "fold": "deactivate", "module": "system_user_deactivate", "args": args,
                            "_answers": {"system_user_deactivate": answer}}, R.indexed(run))
    assert bool(calls) is called
    expected = R.fold(R.indexed(run), "deactivate", answer if called else {"skipped": True}, None, NOW)
    assert R.unpack(result)["services"]["h1"]["step"] == expected["services"]["h1"]["step"]
    assert result["changed"] is called
    assert bool(result.get("skipped")) is not called  # the operator sees the step skipped


def test_the_lookup_asks_by_id_and_by_token_and_decides_as_the_filter_would() -> None:
    run, _tokens, _cluster = read_run()
    run["services"]["h1"]["current_id"] = ""  # a Secret without an id: looked up by its token too
    run = R.indexed(run)
    by_id = {"changed": False, "system_users": []}
    by_token = {"changed": False, "results": [{"system_user": user(days=3), "token_fingerprint": "x"}]}
    result, calls = folded({"step": "lookup", "fold": "lookup", "ids": [], "tokens": [OLD_TOKEN],
                            "_answers": {"system_user_info": lambda a: by_token if "tokens" in a else by_id}}, run)
    assert calls == [("system_user_info", {"tokens": [OLD_TOKEN]})]  # no ids: no lookup by id
    state = R.unpack(result)
    assert state == R.indexed(R.fold(run, "lookup", {"skipped": True}, by_token, NOW))
    assert result["due_steps"] == state["due_steps"]
    assert_no_token(result)


def test_the_registered_state_holds_no_answer() -> None:
    run, _tokens, _cluster = decided(users=[user(days=3)])
    answer = {"changed": False, "results": [{"system_user": user(NEW_ID), "access_verified": True,
                                              "token": OLD_TOKEN}], "warnings": ["a warning"]}
    run = {**run, "services": {h: {**s, "step": "verify", "new_id": NEW_ID} for h, s in run["services"].items()}}
    result, _calls = folded({"step": "call", "fold": "verify", "module": "system_user_info",
                             "args": {"tokens": [OLD_TOKEN], "verify_access": True},
                             "_answers": {"system_user_info": answer}}, R.indexed(run))
    assert set(result) == {"changed", "warnings", R.PACKED, "due_steps", "due_groups", "statuses", "token_lookups"}
    assert result["warnings"] == ["a warning"]  # shown as the module's would be
    assert R.unpack(result)["services"]["h1"]["step"] == "promote"
    assert_no_token(result)


def test_writes_in_check_mode_change_nothing() -> None:
    run, _tokens, _cluster = decided(users=[user(days=3)])
    run = R.indexed({**run, "services": {h: {**s, "step": "lock"} for h, s in run["services"].items()}})
    result, calls = folded({"step": "write", "fold": "lock", "calls": [{"cluster": {}, "definitions": [{}]}]},
                           run, check_mode=True)
    assert result["skipped"] is True and calls == []
    assert R.unpack(result) == run


@pytest.mark.parametrize("step, fold", [("read", "read"), ("inputs", "lock"), ("write", "nonsense")])
def test_what_cannot_be_folded_fails_the_task(step: str, fold: str) -> None:
    run, _tokens, _cluster = read_run()
    result, calls = folded({"step": step, "fold": fold}, run)
    assert result["failed"] is True and calls == []


def test_a_run_that_is_not_the_state_fails_with_a_sentence() -> None:
    result, _calls = folded({"step": "wait", "fold": "wait"}, {})
    assert result["failed"] is True and "run's state" in result["msg"]


def test_the_fold_of_every_step_of_the_table_exists() -> None:
    run, _tokens, _cluster = read_run()
    for step in R.STEPS:
        if step != "done":
            json.dumps(R.fold(run, step, {"skipped": True}, None, NOW))  # each returns a plain state
    with pytest.raises(R.RotationError):
        R.fold(run, "nonsense")


def test_a_due_step_with_nothing_to_wait_for_moves_on_and_says_skipped() -> None:
    run, _tokens, _cluster = decided(users=[user(days=3)])  # no health URL set
    run = R.indexed({**run, "services": {h: {**s, "step": "health"} for h, s in run["services"].items()}})
    result, calls = folded({"step": "health", "fold": "health"}, run)
    assert calls == [] and result["skipped"] is True
    assert R.unpack(result)["services"]["h1"]["step"] == R.fold(run, "health", {}, None, NOW)["services"]["h1"]["step"]
    assert R.unpack(result)["services"]["h1"]["step"] != "health"



@pytest.mark.parametrize("step", ["write", "restart", "check", "wait", "usage", "health", "preview", "lookup"])
def test_a_step_the_role_always_folds_fails_without_fold(step: str) -> None:
    run, _tokens, _cluster = read_run()
    module, calls = action({"step": step})
    result = module._dispatch({}, step, None, R.indexed(run))
    assert result["failed"] is True and "needs fold" in result["msg"] and calls == []

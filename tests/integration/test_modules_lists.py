"""The list options of the three modules (system_user users, system_user_info tokens,
system_user_deactivate ids) through ansible-playbook against the platform sandbox.

Each test runs the module once for a whole list, as a fleet playbook does, registers the result
and keeps it in a file (by a no_log task) so the test can look at every item; the playbook's own
output is checked for tokens separately.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_modules import USERS, assert_no_token, fault, play, recap

MISSING = "su_000000000000000000000000"
TOKEN_INFO = f"{USERS}/token-info"

TASK = """
- name: The module under test
  {module}: {args}
  register: out
  ignore_errors: true
{no_log}
- name: Keep the registered result for the test
  ansible.builtin.copy:
    content: "{{{{ out | to_json }}}}"
    dest: "{result_file}"
    mode: "0600"
  no_log: true
  check_mode: false
"""


@pytest.fixture
def plat(platform: Any) -> Any:
    platform.reset()
    platform.api("POST", "/_sandbox/config", json={"token_activation_delay": 0}).raise_for_status()
    return platform


class Run:
    """One ansible-playbook run of one module task: the process, and the registered result."""

    def __init__(self, proc: subprocess.CompletedProcess, result: dict[str, Any]) -> None:
        self.proc = proc
        self.result = result
        self.output = proc.stdout + proc.stderr

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.result["results"]

    def tokens(self) -> list[str]:
        return [item["token"] for item in self.result.get("results", []) if item.get("token")]


@pytest.fixture
def run_task(run_playbook: Any, tmp_path: Path) -> Any:
    counter = iter(range(1_000_000))

    def run(module: str, args: dict[str, Any], *, no_log: bool = True, extra_vars: dict[str, Any] | None = None,
            env: dict[str, str] | None = None, check: bool = False, diff: bool = False,
            verbosity: int = 0) -> Run:
        result_file = tmp_path / f"result-{next(counter)}.json"
        tasks = TASK.format(module=f"xapi.system_auth.{module}", args=json.dumps(args), result_file=result_file,
                            no_log="  no_log: true" if no_log else "")
        proc = run_playbook(play(tasks), extra_vars=extra_vars, env=env, check=check, diff=diff,
                            verbosity=verbosity)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return Run(proc, json.loads(result_file.read_text()))

    return run


def users_named(plat: Any, name: str) -> list[dict[str, Any]]:
    return [u for u in plat.state()["system_users"] if u["name"] == name]


def route(plat: Any, key: str) -> dict[str, int]:
    return plat.state()["requests"]["by_route"].get(key, {})


def make_user(plat: Any, name: str, days: int = 30) -> tuple[str, str]:
    """A system user made directly through the sandbox, not the code under test: (id, token)."""
    response = plat.api("POST", USERS, json={"name": name, "expires_in_days": days})
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return data["id"], data["token"]


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def owner_of(plat: Any, token: str) -> str:
    response = plat.api("GET", TOKEN_INFO, token=token)
    assert response.status_code == 200, response.status_code
    return response.json()["data"]["id"]


# -- system_user users ------------------------------------------------------------------------

# Not in alphabetical order: the results must follow the list, not a sort.
FLEET = ["orders", "billing", "shipping", "api-gw", "audit"]


def test_users_creates_several_in_one_call_in_order(plat: Any, run_task: Any) -> None:
    users = [{"name": name, "description": f"{name} service", "expires_in_days": 10 + n}
             for n, name in enumerate(FLEET)]
    run = run_task("system_user", {"users": users}, verbosity=3)
    assert not run.failed and run.result["changed"] is True, run.result.get("msg")
    assert run.result["msg"] == "5 system users ensured: 5 created, 0 already active"
    assert [item["name"] for item in run.results] == FLEET
    assert all(item["changed"] is True and item["failed"] is False for item in run.results)
    assert "token" not in run.result and "system_user" not in run.result

    tokens = run.tokens()
    assert len(tokens) == 5 and len(set(tokens)) == 5
    for n, item in enumerate(run.results):
        user = item["system_user"]
        assert user["name"] == FLEET[n] and user["description"] == f"{FLEET[n]} service"
        assert user["days_remaining"] in (9 + n, 10 + n) and "token" not in user
        assert item["token_fingerprint"] == fingerprint(item["token"])
        assert item["msg"] == (f"created system user {FLEET[n]} ({user['id']}), token fingerprint "
                               f"{item['token_fingerprint']}")
        # Each token works, and belongs to its own item's user.
        assert owner_of(plat, item["token"]) == user["id"]
        assert [u["id"] for u in users_named(plat, FLEET[n])] == [user["id"]]
    assert route(plat, f"POST {USERS}") == {"201": 5}
    assert_no_token(run.output, {*tokens, plat.admin_token})


def test_users_second_call_changes_nothing_and_returns_no_token(plat: Any, run_task: Any) -> None:
    users = [{"name": name} for name in FLEET]
    first = run_task("system_user", {"users": users})
    second = run_task("system_user", {"users": users})
    assert not second.failed and second.result["changed"] is False
    assert second.result["msg"] == "5 system users ensured: 0 created, 5 already active"
    assert [item["system_user"]["id"] for item in second.results] == \
        [item["system_user"]["id"] for item in first.results]
    assert all(item["changed"] is False and "token" not in item and "token_fingerprint" not in item
               for item in second.results)
    assert route(plat, f"POST {USERS}") == {"201": 5}
    assert len(plat.state()["system_users"]) == 5


def test_users_mixes_existing_and_new(plat: Any, run_task: Any) -> None:
    existing_id = make_user(plat, "billing")[0]
    run = run_task("system_user", {"users": [{"name": "orders"}, {"name": "billing"}]})
    assert [item["changed"] for item in run.results] == [True, False]
    assert run.results[1]["system_user"]["id"] == existing_id and "token" not in run.results[1]
    assert run.results[0]["token"] and run.result["changed"] is True
    assert run.result["msg"] == "2 system users ensured: 1 created, 1 already active"


def test_users_check_mode_creates_nothing(plat: Any, run_task: Any) -> None:
    make_user(plat, "billing")
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    before = plat.state()["system_users"]
    # Without no_log, or --diff would show nothing: in check mode there is no token to hide.
    run = run_task("system_user", {"users": [{"name": "orders", "expires_in_days": 30}, {"name": "billing"}]},
                   check=True, diff=True, no_log=False)
    assert not run.failed and run.result["changed"] is True
    assert run.result["msg"] == "2 system users ensured: 1 would be created, 1 already active"
    planned, existing = run.results
    assert planned["changed"] is True and planned["system_user"]["id"] is None
    assert planned["system_user"]["days_remaining"] == 30 and "token" not in planned
    assert existing["changed"] is False and existing["system_user"]["id"] == before[0]["id"]
    # One diff per item, headed by its name; --diff shows the planned user.
    assert [d["before_header"] for d in run.result["diff"]] == ["orders", "billing"]
    assert run.result["diff"][0]["before"] == {} and run.result["diff"][0]["after"]["name"] == "orders"
    assert "+++ after: orders" in run.proc.stdout and "+    name: orders" in run.proc.stdout
    assert plat.state()["system_users"] == before
    assert f"POST {USERS}" not in plat.state()["requests"]["by_route"]


@pytest.mark.parametrize(("users", "message"), [
    ([{"name": "orders"}, {"name": "billing"}, {"name": "ship ping"}],
     "users[2].name 'ship ping' is not a valid system user name: use 1 to 128 letters, digits, '.', '_' or '-'."),
    ([{"name": "orders"}, {"name": "billing", "expires_in_days": 400}],
     ("users[1] (billing): expires_in_days must be between 1 and 365, got 400: choose a lifetime in days within "
      "that range.")),
    ([{"name": "orders"}, {"name": "billing"}, {"name": "orders"}],
     "users[2] repeats the name orders of users[0]: list each system user once."),
    ([{"name": "orders"}, {"name": ""}], "users[1].name must not be empty: give the system user's name."),
], ids=["bad-name", "bad-expiry", "duplicate", "empty-name"])
def test_users_bad_input_in_one_item_changes_nothing(plat: Any, run_task: Any, users: list, message: str) -> None:
    run = run_task("system_user", {"users": users})
    assert run.failed and run.result["msg"] == message
    assert "results" not in run.result and run.result.get("changed") is not True
    assert recap(run.proc.stdout)["ignored"] == 1
    assert "\n" not in run.result["msg"]
    # Not one API call: the whole list is checked first.
    assert plat.state()["requests"]["total"] == 0
    assert plat.state()["system_users"] == []


def test_users_one_item_refused_others_created(plat: Any, run_task: Any) -> None:
    # The platform refuses a description over 1024 characters: that one item fails, deterministically.
    users = [{"name": "orders"}, {"name": "billing", "description": "d" * 1025}, {"name": "shipping"}]
    run = run_task("system_user", {"users": users})
    assert run.failed and run.result["changed"] is True
    assert run.result["msg"] == ("could not create 1 of 3 system users; first: billing: the platform refused to "
                                 "create system user billing: description must be a string of at most 1024 "
                                 "characters.")
    ok1, bad, ok2 = run.results
    assert bad == {"name": "billing", "changed": False, "failed": True,
                   "msg": "the platform refused to create system user billing: description must be a string of at "
                          "most 1024 characters."}
    for item in (ok1, ok2):
        assert item["failed"] is False and item["changed"] is True
        assert owner_of(plat, item["token"]) == item["system_user"]["id"]
    assert users_named(plat, "billing") == []
    assert len(plat.state()["system_users"]) == 2


def test_users_a_fault_on_one_create_fails_only_that_item(plat: Any, run_task: Any) -> None:
    # One create answered 500 (not retryable for a create); which of the concurrent creates gets it is
    # up to the scheduling, so the test finds it by its result.
    fault(plat, method="POST", path=USERS, status=500, count=1)
    names = [f"svc-{n}" for n in range(6)]
    run = run_task("system_user", {"users": [{"name": name} for name in names]})
    assert run.failed
    failed = [item for item in run.results if item["failed"]]
    assert len(failed) == 1 and "token" not in failed[0] and "system_user" not in failed[0]
    assert failed[0]["msg"].startswith("the platform API at 127.0.0.1:")
    assert "answered HTTP 500 to POST /api/v1/system-users" in failed[0]["msg"]
    assert run.result["msg"] == f"could not create 1 of 6 system users; first: {failed[0]['name']}: {failed[0]['msg']}"
    assert [item["name"] for item in run.results] == names
    assert len(run.tokens()) == 5
    assert sorted(u["name"] for u in plat.state()["system_users"]) == sorted(set(names) - {failed[0]["name"]})


def test_users_lost_create_answers_end_with_one_active_user_each(plat: Any, run_task: Any) -> None:
    # Two creates are committed but their answers dropped: each of those names gets its orphan
    # deactivated and one more create, whose token is the one returned.
    fault(plat, method="POST", path=USERS, drop_after_commit=True, count=2)
    names = [f"lossy-{n}" for n in range(4)]
    run = run_task("system_user", {"users": [{"name": name} for name in names]})
    assert not run.failed, run.result["msg"]
    for item in run.results:
        active = [u for u in users_named(plat, item["name"]) if u["active"]]
        assert [u["id"] for u in active] == [item["system_user"]["id"]]
        assert owner_of(plat, item["token"]) == item["system_user"]["id"]
    assert sum(1 for u in plat.state()["system_users"] if not u["active"]) == 2


def test_users_orphans_of_a_failed_item_are_reported(plat: Any, run_task: Any) -> None:
    existing_id = make_user(plat, "steady")[0]
    # The only create of the run loses its answer twice: both orphans are deactivated and it fails.
    fault(plat, method="POST", path=USERS, drop_after_commit=True, count=2)
    run = run_task("system_user", {"users": [{"name": "steady"}, {"name": "unlucky"}]})
    assert run.failed and run.result["changed"] is True
    steady, unlucky = run.results
    assert steady["failed"] is False and steady["system_user"]["id"] == existing_id
    assert unlucky["failed"] is True and unlucky["changed"] is True
    orphans = {u["id"] for u in users_named(plat, "unlucky")}
    assert len(orphans) == 2 and set(unlucky["orphaned_ids"]) == orphans
    assert all(not u["active"] for u in users_named(plat, "unlucky"))
    assert run.result["msg"].startswith("could not create 1 of 2 system users; first: unlucky: the platform "
                                        "created system user unlucky twice but both answers were lost")


def test_users_tokens_are_hidden_even_when_the_task_forgets_no_log(plat: Any, run_task: Any) -> None:
    """The action plugin hides a result whose items carry tokens, also when the task failed."""
    run = run_task("system_user", {"users": [{"name": "orders"}, {"name": "billing"}]}, no_log=False,
                   verbosity=3, diff=True)
    assert not run.failed and len(run.tokens()) == 2
    hidden = "has been hidden due to the fact that 'no_log: true'"
    assert hidden in run.proc.stdout.replace("''", "'")
    assert_no_token(run.output, {*run.tokens(), plat.admin_token})

    partly = run_task("system_user", {"users": [{"name": "shipping"}, {"name": "audit", "description": "d" * 1025}]},
                      no_log=False, verbosity=3)
    assert partly.failed and len(partly.tokens()) == 1
    assert hidden in partly.proc.stdout.replace("''", "'")
    assert_no_token(partly.output, {*partly.tokens(), plat.admin_token})


# -- system_user_info tokens ------------------------------------------------------------------

NO_ADMIN = {"XAPI_TOKEN": "", "XAPI_ADMIN_TOKEN": ""}


def test_tokens_are_verified_in_order_without_an_admin_token(plat: Any, run_task: Any) -> None:
    good = [make_user(plat, f"svc-{n}") for n in range(3)]
    revoked_id, revoked = make_user(plat, "retired")
    plat.api("POST", f"{USERS}/{revoked_id}/deactivate").raise_for_status()
    unknown = "xsu_" + secrets.token_urlsafe(32)[:43]
    tokens = [good[0][1], revoked, good[1][1], unknown, good[2][1]]
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    run = run_task("system_user_info", {"tokens": "{{ service_tokens }}", "verify_access": True},
                   extra_vars={"service_tokens": tokens}, env=NO_ADMIN, no_log=False, verbosity=3)

    assert run.failed and run.result["changed"] is False
    assert [item["token_fingerprint"] for item in run.results] == [fingerprint(t) for t in tokens]
    assert [item["failed"] for item in run.results] == [False, True, False, True, False]
    assert [item["access_verified"] for item in run.results] == [True, False, True, False, True]
    assert [item["system_user"]["id"] for item in run.results if not item["failed"]] == [g[0] for g in good]
    assert [u["id"] for u in run.result["system_users"]] == [g[0] for g in good]
    for item in (run.results[1], run.results[3]):
        assert item["msg"].startswith("the API token was rejected: expired, deactivated or wrong")
        assert "system_user" not in item
    assert run.result["msg"] == (f"2 of 5 tokens were not accepted; first: token {fingerprint(revoked)}: "
                                 f"{run.results[1]['msg']}")
    # Each good token called token-info and tenants once; the admin token was never needed.
    assert route(plat, f"GET {TOKEN_INFO}")["200"] == 3 and route(plat, "GET /api/v1/tenants") == {"200": 3}
    assert "admin" not in plat.state()["requests"]["by_user"]

    # Not one token in the registered result nor in the -vvv output.
    registered = json.dumps(run.result)
    for token in tokens:
        assert token not in registered, "a token is in the registered result"
    assert_no_token(run.output, {*tokens, plat.admin_token})


def test_tokens_all_accepted(plat: Any, run_task: Any) -> None:
    good = [make_user(plat, f"svc-{n}") for n in range(4)]
    run = run_task("system_user_info", {"tokens": "{{ service_tokens }}"},
                   extra_vars={"service_tokens": [t for _, t in good]}, env=NO_ADMIN)
    assert not run.failed and run.result["msg"] == "4 tokens accepted"
    assert [item["system_user"]["id"] for item in run.results] == [i for i, _ in good]
    assert all(item["access_verified"] is False and "msg" not in item for item in run.results)
    assert route(plat, "GET /api/v1/tenants") == {}


def test_tokens_wait_timeout_rides_out_activation(plat: Any, run_task: Any) -> None:
    # Long enough that the first run (a whole ansible-playbook start) still meets inactive tokens.
    plat.api("POST", "/_sandbox/config", json={"token_activation_delay": 6}).raise_for_status()
    fresh = [make_user(plat, f"fresh-{n}") for n in range(3)]
    args = {"tokens": "{{ service_tokens }}", "verify_access": True}
    extra = {"service_tokens": [t for _, t in fresh]}
    impatient = run_task("system_user_info", args, extra_vars=extra, env=NO_ADMIN)
    assert impatient.failed and impatient.result["msg"].startswith("3 of 3 tokens were not accepted; first: token ")
    patient = run_task("system_user_info", dict(args, wait_timeout=15), extra_vars=extra, env=NO_ADMIN)
    assert not patient.failed, patient.result["msg"]
    assert [item["system_user"]["id"] for item in patient.results] == [i for i, _ in fresh]
    assert all(item["access_verified"] for item in patient.results)


def test_tokens_wait_timeout_gives_up_for_each_token(plat: Any, run_task: Any) -> None:
    plat.api("POST", "/_sandbox/config", json={"token_activation_delay": 600}).raise_for_status()
    slow = [make_user(plat, f"slow-{n}")[1] for n in range(6)]
    run = run_task("system_user_info", {"tokens": "{{ service_tokens }}", "wait_timeout": 2},
                   extra_vars={"service_tokens": slow}, env=NO_ADMIN)
    assert run.failed and run.result["msg"].startswith("6 of 6 tokens were not accepted; first: token ")
    assert all(item["msg"].startswith("the API token was rejected") for item in run.results)


def test_tokens_empty_item_fails_before_any_call(plat: Any, run_task: Any) -> None:
    token = make_user(plat, "svc")[1]
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    run = run_task("system_user_info", {"tokens": ["{{ service_token }}", ""]},
                   extra_vars={"service_token": token}, env=NO_ADMIN)
    assert run.failed and run.result["msg"] == ("tokens[1] is empty: pass each system user's token, and leave out "
                                                "services that have none.")
    assert "results" not in run.result
    assert plat.state()["requests"]["total"] == 0


def test_tokens_and_token_are_mutually_exclusive(plat: Any, run_task: Any) -> None:
    run = run_task("system_user_info", {"tokens": ["xsu_" + "a" * 43], "active": True}, env=NO_ADMIN)
    assert run.failed and "parameters are mutually exclusive: active|tokens" in run.result["msg"]


# -- system_user_deactivate ids ---------------------------------------------------------------


def test_ids_check_mode_then_deactivate_then_again(plat: Any, run_task: Any) -> None:
    made = [make_user(plat, f"old-{n}") for n in range(3)]
    ids = [i for i, _ in made]
    # A duplicate and an unknown id: each distinct id once, the unknown one is fine with missing_ok.
    wanted = [ids[2], ids[0], ids[2], MISSING, ids[1]]
    order = [ids[2], ids[0], MISSING, ids[1]]

    checked = run_task("system_user_deactivate", {"ids": wanted, "missing_ok": True}, check=True, diff=True)
    assert not checked.failed and checked.result["changed"] is True
    assert [item["id"] for item in checked.results] == order
    assert [item["changed"] for item in checked.results] == [True, True, False, True]
    assert checked.result["msg"] == "4 system users: 3 would be deactivated, 0 already inactive, 1 not found"
    assert all(u["active"] for u in plat.state()["system_users"])
    assert f"POST {USERS}/{{id}}/deactivate" not in plat.state()["requests"]["by_route"]

    done = run_task("system_user_deactivate", {"ids": wanted, "missing_ok": True}, diff=True)
    assert not done.failed and done.result["changed"] is True
    assert done.result["diff"] == {"before": dict.fromkeys(order[:2] + order[3:], True),
                                   "after": dict.fromkeys(order[:2] + order[3:], False)}
    assert done.results[2] == {"id": MISSING, "changed": False, "failed": False, "system_user": None,
                               "msg": f"system user {MISSING} does not exist"}
    assert all(item["system_user"]["active"] is False for item in done.results if item["id"] != MISSING)
    assert not any(u["active"] for u in plat.state()["system_users"])
    for _, token in made:
        assert plat.api("GET", "/api/v1/tenants", token=token).status_code == 401
    assert route(plat, f"POST {USERS}/{{id}}/deactivate") == {"200": 3}

    again = run_task("system_user_deactivate", {"ids": wanted, "missing_ok": True})
    assert not again.failed and again.result["changed"] is False
    assert again.result["msg"] == "4 system users: 0 deactivated, 3 already inactive, 1 not found"


def test_ids_unknown_id_fails_only_that_item(plat: Any, run_task: Any) -> None:
    ids = [make_user(plat, f"old-{n}")[0] for n in range(2)]
    run = run_task("system_user_deactivate", {"ids": [ids[0], MISSING, ids[1]]})
    assert run.failed and run.result["changed"] is True
    assert run.result["msg"] == (f"could not deactivate 1 of 3 system users; first: {MISSING}: system user {MISSING} "
                                 "was not found: check the id, or set missing_ok: true if it may already be gone.")
    assert [item["failed"] for item in run.results] == [False, True, False]
    assert run.results[1]["system_user"] is None and run.results[1]["changed"] is False
    assert not any(u["active"] for u in plat.state()["system_users"])


def test_ids_a_fault_on_one_id_fails_only_that_item(plat: Any, run_task: Any) -> None:
    ids = [make_user(plat, f"old-{n}")[0] for n in range(4)]
    fault(plat, method="POST", path=f"{USERS}/{ids[2]}/deactivate", status=500, count=None)
    run = run_task("system_user_deactivate", {"ids": ids})
    assert run.failed
    assert [item["failed"] for item in run.results] == [False, False, True, False]
    assert "answered HTTP 500 to POST" in run.results[2]["msg"]
    assert run.result["msg"].startswith(f"could not deactivate 1 of 4 system users; first: {ids[2]}: ")
    assert run.result["diff"]["after"] == dict.fromkeys([ids[0], ids[1], ids[3]], False)
    assert [u["active"] for u in sorted(plat.state()["system_users"], key=lambda u: ids.index(u["id"]))] == \
        [False, False, True, False]


def test_ids_bad_id_fails_before_any_call(plat: Any, run_task: Any) -> None:
    ids = [make_user(plat, f"old-{n}")[0] for n in range(2)]
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    run = run_task("system_user_deactivate", {"ids": [ids[0], "su_1/../../tenants", ids[1]]})
    assert run.failed and run.result["msg"] == ("ids[1] 'su_1/../../tenants' is not a system user id: ids contain "
                                                "no '/' or spaces.")
    assert plat.state()["requests"]["total"] == 0
    assert all(u["active"] for u in plat.state()["system_users"])

"""The three modules through ansible-playbook against a platform that serves only what its reference
document shows: no list route (405), user objects with id, name, description and expires_at only.

The session's platform sandbox is switched to its documented-only mode for each test and back
afterwards (a reset also returns it to the mode it started in); one test starts a sandbox of its own
with ``python -m tests.sandbox up --documented-only``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _start_sandbox, _stop_sandbox
from tests.integration.test_modules import USERS, assert_no_token, fault, play
from tests.integration.test_modules_lists import TASK, Run

DOCUMENTED = ["id", "name", "description", "expires_at"]
NO_LIST = ("needs the platform's list route, which it does not serve (HTTP 405); look the credential up by id or "
           "token instead.")


@pytest.fixture
def doc(platform: Any) -> Iterator[Any]:
    """The session's platform sandbox, emptied and in documented-only mode for one test."""
    platform.reset()
    platform.api("POST", "/_sandbox/config", json={"token_activation_delay": 0, "documented_only": True}
                 ).raise_for_status()
    try:
        yield platform
    finally:
        platform.api("POST", "/_sandbox/config", json={"documented_only": False}).raise_for_status()
        platform.api("DELETE", "/_sandbox/faults").raise_for_status()


@pytest.fixture
def run_task(run_playbook: Any, tmp_path: Path) -> Any:
    """One module task in a playbook; its registered result kept in a file by a no_log task."""
    counter = iter(range(1_000_000))

    def run(module: str, args: dict[str, Any], *, extra_vars: dict[str, Any] | None = None,
            check: bool = False) -> Run:
        result_file = tmp_path / f"result-{next(counter)}.json"
        tasks = TASK.format(module=f"xapi.system_auth.{module}", args=json.dumps(args), result_file=result_file,
                            no_log="  no_log: true")
        proc = run_playbook(play(tasks), extra_vars=extra_vars, check=check, verbosity=2)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return Run(proc, json.loads(result_file.read_text()))

    return run


def named(plat: Any, name: str) -> list[dict[str, Any]]:
    return [u for u in plat.state()["system_users"] if u["name"] == name]


def route(plat: Any, key: str) -> dict[str, int]:
    return plat.state()["requests"]["by_route"].get(key, {})


ROUND_TRIP = """
- name: Create the credential
  xapi.system_auth.system_user:
    name: doc-svc
    description: documented only
    expires_in_days: 30
  register: created
  no_log: true
- name: Read it by id
  xapi.system_auth.system_user_info:
    id: "{{ created.system_user.id }}"
  register: by_id
- name: Read it by its token, and check that the token works
  xapi.system_auth.system_user_info:
    token: "{{ created.token }}"
    verify_access: true
  register: by_token
- name: Read it with a list of tokens
  xapi.system_auth.system_user_info:
    tokens: ["{{ created.token }}"]
  register: by_tokens
- name: Deactivate it
  xapi.system_auth.system_user_deactivate:
    id: "{{ created.system_user.id }}"
  register: gone
- name: Deactivate it with a list of ids
  xapi.system_auth.system_user_deactivate:
    ids: ["{{ created.system_user.id }}"]
  register: gone_again
- name: Keep what the modules answered for the test
  ansible.builtin.copy:
    content: "{{ {'created': created, 'by_id': by_id, 'by_token': by_token, 'by_tokens': by_tokens,
                  'gone': gone, 'gone_again': gone_again} | to_json }}"
    dest: "{{ result_file }}"
    mode: "0600"
  no_log: true
"""


def test_create_read_by_id_and_token_and_deactivate(doc: Any, run_playbook: Any, tmp_path: Path) -> None:
    result_file = tmp_path / "round-trip.json"
    proc = run_playbook(play(ROUND_TRIP), extra_vars={"result_file": str(result_file)}, verbosity=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(result_file.read_text())
    created, token = out["created"], out["created"]["token"]
    assert_no_token(proc.stdout + proc.stderr, {token, doc.admin_token})

    user = created["system_user"]
    assert created["changed"] is True and user["name"] == "doc-svc" and user["description"] == "documented only"
    # Only what the platform sent, plus the derived fields; nothing made up (no last_used_at, no created_at).
    assert sorted(user) == sorted([*DOCUMENTED, "active", "days_remaining", "expired"])
    assert user["active"] is True and user["days_remaining"] in (29, 30)
    assert created["capabilities"] == {"list": False, "name_filter": False, "fields": DOCUMENTED}

    assert [u["id"] for u in out["by_id"]["system_users"]] == [user["id"]]
    assert out["by_id"]["capabilities"] == {"list": False, "name_filter": False, "fields": DOCUMENTED}
    assert out["by_token"]["system_user"]["id"] == user["id"] and out["by_token"]["access_verified"] is True
    assert out["by_token"]["capabilities"]["fields"] == DOCUMENTED
    assert [item["system_user"]["id"] for item in out["by_tokens"]["results"]] == [user["id"]]

    assert out["gone"]["changed"] is True and out["gone"]["system_user"]["active"] is False
    assert out["gone"]["diff"] == {"before": {"active": True}, "after": {"active": False}}
    # The platform's objects cannot show an early deactivation, so the second one reports a change too
    # (the platform's deactivate is idempotent); the user stays inactive either way.
    assert out["gone_again"]["results"][0]["failed"] is False
    assert [u["active"] for u in named(doc, "doc-svc")] == [False]
    assert doc.api("GET", "/api/v1/tenants", token=token).status_code == 401
    # One create; the list route asked once per module run that needs to know: system_user's lookup of
    # the name and system_user_info's probe with id (the token lookups and deactivations do not ask).
    assert route(doc, "POST /api/v1/system-users") == {"201": 1}
    assert route(doc, "GET /api/v1/system-users") == {"405": 2}
    for text in (json.dumps(out["by_id"]), json.dumps(out["by_token"]), json.dumps(out["gone"])):
        assert token not in text


LOST = ("the answer to creating system user {name} was lost (the connection closed before the answer arrived), so "
        "the platform may hold an active system user named {name} whose token was lost; it has no list route to "
        "find it (HTTP 405): deactivate it by id in the platform's console, then re-run the task.")


def test_a_lost_create_answer_fails_with_one_sentence_and_creates_one_credential(doc: Any, run_task: Any) -> None:
    fault(doc, method="POST", path=USERS, drop_after_commit=True, count=1)
    run = run_task("system_user", {"name": "lossy-doc"})
    assert run.failed and run.result["msg"] == LOST.format(name="lossy-doc")
    assert "token" not in run.result
    # The one create that was sent happened; no second one was sent.
    assert len(named(doc, "lossy-doc")) == 1 and route(doc, "POST /api/v1/system-users") == {"201": 1}
    assert_no_token(run.output, {doc.admin_token})

    # A re-run under the same name is refused by the platform (409), and says how to find the holder.
    again = run_task("system_user", {"name": "lossy-doc"})
    assert again.failed and again.result["msg"].startswith("the platform refused to create system user lossy-doc: ")
    assert again.result["msg"].endswith("; the platform has no list route to show which system user holds that name "
                                        "(HTTP 405): find it by id in the platform's console and deactivate it, or "
                                        "choose another name.")
    assert len(named(doc, "lossy-doc")) == 1


def test_a_lost_create_answer_in_the_list_form_fails_that_item_only(doc: Any, run_task: Any) -> None:
    fault(doc, method="POST", path=USERS, drop_after_commit=True, count=1)
    run = run_task("system_user", {"users": [{"name": "first-doc"}]})
    assert run.failed
    assert run.results[0]["failed"] is True and run.results[0]["msg"] == LOST.format(name="first-doc")
    assert run.result["capabilities"]["list"] is False
    assert len(named(doc, "first-doc")) == 1


@pytest.mark.parametrize(("args", "purpose"), [
    ({"name": "doc-svc"}, "looking system users up by name"),
    ({"name": "doc-svc", "active": True}, "looking system users up by name"),
    ({"active": True}, "filtering system users by active"),
    ({}, "listing system users"),
], ids=["name", "name-active", "active", "all"])
def test_lookups_that_need_the_list_route_fail_with_one_sentence(doc: Any, run_task: Any, args: dict[str, Any],
                                                                 purpose: str) -> None:
    run = run_task("system_user_info", args)
    assert run.failed and run.result["msg"] == f"{purpose} {NO_LIST}"
    assert route(doc, "GET /api/v1/system-users") == {"405": 1}


def test_check_mode_says_the_name_was_not_checked(doc: Any, run_task: Any) -> None:
    run = run_task("system_user", {"name": "planned-doc"}, check=True)
    assert run.result["changed"] is True and run.result["system_user"]["id"] is None
    assert run.result["msg"] == ("system user planned-doc would be created; the platform has no list route (HTTP 405), "
                                 "so whether an active user of that name exists was not checked")
    assert "POST /api/v1/system-users" not in doc.state()["requests"]["by_route"]


def test_list_forms_work_on_the_documented_routes(doc: Any, run_task: Any) -> None:
    created = run_task("system_user", {"users": [{"name": "a-doc"}, {"name": "b-doc", "expires_in_days": 10}]})
    assert not created.failed and [item["changed"] for item in created.results] == [True, True]
    tokens = created.tokens()
    ids = [item["system_user"]["id"] for item in created.results]
    info = run_task("system_user_info", {"tokens": "{{ service_tokens }}", "verify_access": True},
                    extra_vars={"service_tokens": tokens})
    assert not info.failed and [u["id"] for u in info.result["system_users"]] == ids
    gone = run_task("system_user_deactivate", {"ids": ids})
    assert not gone.failed and gone.result["diff"]["after"] == dict.fromkeys(ids, False)
    assert [u["active"] for u in doc.state()["system_users"]] == [False, False]
    assert_no_token(info.output + gone.output, {*tokens, doc.admin_token})


# -- the sandbox's documented-only mode itself ------------------------------------------------


def test_the_sandbox_serves_only_the_documented_routes_and_fields(doc: Any) -> None:
    listed = doc.api("GET", USERS, params={"name": "x"})
    assert listed.status_code == 405 and listed.headers["Allow"] == "POST"
    assert listed.json()["error"]["code"] == "method_not_allowed"
    made = doc.api("POST", USERS, json={"name": "shape", "expires_in_days": 5}).json()["data"]
    assert sorted(made) == sorted([*DOCUMENTED, "token"])
    for path, token in ((f"{USERS}/{made['id']}", None), (f"{USERS}/token-info", made["token"])):
        answer = doc.api("GET", path, token=token)
        assert answer.status_code == 200 and sorted(answer.json()["data"]) == sorted(DOCUMENTED), path
    assert sorted(doc.api("POST", f"{USERS}/{made['id']}/deactivate").json()["data"]) == sorted(DOCUMENTED)
    # The test's own view keeps everything.
    state = doc.state()
    assert state["config"]["documented_only"] is True
    assert {"active", "created_at", "deactivated_at", "last_used_at", "token_fingerprint"} <= set(
        state["system_users"][0])
    assert state["system_users"][0]["active"] is False
    assert state["requests"]["by_route"]["GET /api/v1/system-users"] == {"405": 1}


def test_the_sandbox_mode_switches_at_runtime(doc: Any) -> None:
    bad = doc.api("POST", "/_sandbox/config", json={"documented_only": "yes"})
    assert bad.status_code == 422 and "documented_only must be true or false" in bad.json()["error"]["message"]
    off = doc.api("POST", "/_sandbox/config", json={"documented_only": False})
    assert off.json()["data"]["documented_only"] is False
    assert doc.api("GET", USERS).status_code == 200
    doc.api("POST", "/_sandbox/config", json={"documented_only": True}).raise_for_status()
    assert doc.api("GET", USERS).status_code == 405
    doc.reset()  # back to the mode the process started in
    assert doc.api("GET", "/_sandbox/config").json()["data"]["documented_only"] is False


def test_up_documented_only_starts_a_sandbox_in_that_mode(tmp_path: Path) -> None:
    directory = tmp_path / "documented"
    sandbox = _start_sandbox(directory, "--no-k8s", "--no-seed", "--documented-only")
    try:
        assert sandbox.api("GET", USERS).status_code == 405
        assert sandbox.api("GET", "/_sandbox/config").json()["data"]["documented_only"] is True
        sandbox.reset()  # a reset keeps the mode the process was started in
        assert sandbox.api("GET", USERS).status_code == 405
        sandbox.api("POST", "/_sandbox/config", json={"documented_only": False}).raise_for_status()
        assert sandbox.api("GET", USERS).status_code == 200
    finally:
        _stop_sandbox(directory)

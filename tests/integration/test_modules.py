"""The three modules through ansible-playbook against the platform sandbox, as an operator runs them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

USERS = "/api/v1/system-users"
TOKEN_SHAPE = re.compile(r"x(?:su|adm)_[A-Za-z0-9_-]{20,}")

PLAY = """
- name: {title}
  hosts: localhost
  gather_facts: false
  tasks:
{tasks}
"""


def play(tasks: str, title: str = "modules") -> str:
    return PLAY.format(title=title, tasks="\n".join("    " + line for line in tasks.strip("\n").splitlines()))


def recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+(.*)", output)
    assert match, output
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@pytest.fixture
def plat(platform: Any) -> Any:
    platform.reset()
    platform.api("POST", "/_sandbox/config", json={"token_activation_delay": 0}).raise_for_status()
    return platform


def users(plat: Any, name: str) -> list[dict[str, Any]]:
    return [u for u in plat.state()["system_users"] if u["name"] == name]


def fault(plat: Any, **rule: Any) -> None:
    response = plat.api("POST", "/_sandbox/faults", json=rule)
    assert response.status_code == 201, response.text


def assert_no_token(text: str, tokens: set[str]) -> None:
    # pytest.fail without a traceback: a failing assert would print the very text that leaks.
    for token in tokens:
        if token in text:
            line = next(n for n, ln in enumerate(text.splitlines(), 1) if token in ln)
            pytest.fail(f"a token appears in ansible output (line {line})", pytrace=False)
    if TOKEN_SHAPE.search(text):
        pytest.fail("something shaped like a token appears in ansible output", pytrace=False)


CREATE = """
- name: Ensure the credential
  xapi.system_auth.system_user:
    name: "{{ credential_name }}"
    description: integration
    expires_in_days: 30
  register: created
  no_log: true
- name: Show it without the token
  ansible.builtin.debug:
    msg: "id={{ created.system_user.id }} changed={{ created.changed }} has_token={{ 'token' in created }}"
"""


def test_check_mode_then_create_then_idempotent(plat: Any, run_playbook: Any) -> None:
    before = plat.state()["system_users"]
    checked = run_playbook(play(CREATE), extra_vars={"credential_name": "svc"}, check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert recap(checked.stdout)["changed"] == 1
    assert "has_token=False" in checked.stdout
    assert plat.state()["system_users"] == before

    created = run_playbook(play(CREATE), extra_vars={"credential_name": "svc"})
    assert created.returncode == 0, created.stdout + created.stderr
    assert recap(created.stdout)["changed"] == 1 and "has_token=True" in created.stdout
    assert len(users(plat, "svc")) == 1

    again = run_playbook(play(CREATE), extra_vars={"credential_name": "svc"})
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0
    assert "has_token=False" in again.stdout
    assert len(users(plat, "svc")) == 1
    assert plat.state()["requests"]["by_route"]["POST /api/v1/system-users"] == {"201": 1}


def test_lost_create_answer_ends_with_exactly_one_active_user(plat: Any, run_playbook: Any) -> None:
    fault(plat, method="POST", path=USERS, drop_after_commit=True, count=1)
    result = run_playbook(play(CREATE), extra_vars={"credential_name": "lossy"})
    assert result.returncode == 0, result.stdout + result.stderr
    active = [u for u in users(plat, "lossy") if u["active"]]
    assert len(active) == 1
    assert f"id={active[0]['id']}" in result.stdout


def test_get_503_burst_is_retried(plat: Any, run_playbook: Any) -> None:
    fault(plat, method="GET", path=USERS, status=503, count=2)
    result = run_playbook(play(CREATE), extra_vars={"credential_name": "bursty"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert plat.state()["requests"]["by_route"]["GET /api/v1/system-users"]["503"] == 2
    assert len(users(plat, "bursty")) == 1


def test_401_gives_the_clear_sentence_and_changes_nothing(plat: Any, run_playbook: Any) -> None:
    wrong = "xadm_" + "q" * 43
    tasks = """
- name: With a wrong token
  xapi.system_auth.system_user_info:
    api_token: "{{ wrong_token }}"
"""
    result = run_playbook(play(tasks), extra_vars={"wrong_token": wrong}, verbosity=3)
    assert result.returncode == 2
    assert "the API token was rejected: expired, deactivated or wrong" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert_no_token(result.stdout + result.stderr, {wrong, plat.admin_token})
    assert plat.state()["system_users"] == []


def test_module_defaults_group_sets_the_connection_once(plat: Any, run_playbook: Any) -> None:
    tasks = """
- name: Everything with the group's defaults
  module_defaults:
    group/xapi.system_auth.api:
      api_url: "{{ platform_url }}"
      api_token: "{{ platform_token }}"
      timeout: 10
  block:
    - name: Create
      xapi.system_auth.system_user:
        name: grouped
      register: created
      no_log: true
    - name: Read
      xapi.system_auth.system_user_info:
        id: "{{ created.system_user.id }}"
      register: read
    - name: Deactivate
      xapi.system_auth.system_user_deactivate:
        id: "{{ created.system_user.id }}"
      register: gone
    - name: Check
      ansible.builtin.assert:
        that:
          - read.system_users[0].active
          - gone.changed
          - gone.system_user.active is false
"""
    # Blank environment: only module_defaults can give the connection.
    result = run_playbook(play(tasks), extra_vars={"platform_url": plat.url, "platform_token": plat.admin_token},
                          env={"XAPI_URL": "", "XAPI_ADMIN_TOKEN": "", "XAPI_TOKEN": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert [u["active"] for u in users(plat, "grouped")] == [False]


def test_deactivate_check_and_diff(plat: Any, run_playbook: Any) -> None:
    response = plat.api("POST", USERS, json={"name": "old", "expires_in_days": 10})
    user_id = response.json()["data"]["id"]
    tasks = """
- name: Retire the old credential
  xapi.system_auth.system_user_deactivate:
    id: "{{ old_id }}"
"""
    checked = run_playbook(play(tasks), extra_vars={"old_id": user_id}, check=True, diff=True)
    assert checked.returncode == 0 and recap(checked.stdout)["changed"] == 1
    assert "-    active: true" in checked.stdout and "+    active: false" in checked.stdout
    assert users(plat, "old")[0]["active"] is True
    done = run_playbook(play(tasks), extra_vars={"old_id": user_id}, diff=True)
    assert done.returncode == 0 and recap(done.stdout)["changed"] == 1
    assert users(plat, "old")[0]["active"] is False
    again = run_playbook(play(tasks), extra_vars={"old_id": user_id})
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0


def test_no_token_in_output_even_at_vvv(plat: Any, run_playbook: Any, tmp_path: Path) -> None:
    """A whole credential life cycle at -vvv with --diff: no token value appears anywhere."""
    token_file = tmp_path / "new-token"
    service = plat.api("POST", USERS, json={"name": "service", "expires_in_days": 5}).json()["data"]
    tasks = """
- name: Create the new credential
  xapi.system_auth.system_user:
    name: rotated
  register: created
  no_log: true
- name: Keep the token where a service would read it
  ansible.builtin.copy:
    content: "{{ created.token }}"
    dest: "{{ token_file }}"
    mode: "0600"
  no_log: true
- name: Ask who the new token belongs to and whether it works
  xapi.system_auth.system_user_info:
    token: "{{ created.token }}"
    verify_access: true
  register: own
- name: Ask about the service's current token
  xapi.system_auth.system_user_info:
    token: "{{ service_token }}"
- name: Print the harmless parts
  ansible.builtin.debug:
    msg: "{{ created.system_user.id }} {{ created.token_fingerprint }} {{ own.system_user.days_remaining }}"
- name: Look up both by id
  xapi.system_auth.system_user_info:
    id:
      - "{{ created.system_user.id }}"
      - "{{ service_id }}"
- name: Retire the service's old credential
  xapi.system_auth.system_user_deactivate:
    id: "{{ service_id }}"
- name: A failing lookup with the retired token
  xapi.system_auth.system_user_info:
    token: "{{ service_token }}"
  ignore_errors: true
"""
    result = run_playbook(play(tasks), verbosity=3, diff=True, extra_vars={
        "token_file": str(token_file), "service_token": service["token"], "service_id": service["id"]})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    new_token = token_file.read_text()
    assert new_token.startswith("xsu_")
    assert recap(result.stdout)["ignored"] == 1
    assert "the API token was rejected" in result.stdout
    assert_no_token(result.stdout + result.stderr, {new_token, service["token"], plat.admin_token})


def test_new_token_is_hidden_even_when_the_task_forgets_no_log(plat: Any, run_playbook: Any) -> None:
    """The action plugin hides a result that carries a token; the registered variable keeps it."""
    tasks = """
- name: Create the credential, forgetting no_log
  xapi.system_auth.system_user:
    name: forgetful
    expires_in_days: 5
  register: created
- name: The registered result still holds the token for the tasks that store it
  ansible.builtin.assert:
    that:
      - created.token is match('xsu_')
      - created.system_user.name == 'forgetful'
    quiet: true
"""
    result = run_playbook(play(tasks), verbosity=3, diff=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "has been hidden due to the fact that 'no_log: true'" in result.stdout.replace("''", "'")
    assert len(users(plat, "forgetful")) == 1
    assert_no_token(result.stdout + result.stderr, {plat.admin_token})

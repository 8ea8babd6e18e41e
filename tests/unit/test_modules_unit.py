"""The three modules, each run as the process Ansible would run, against the platform sandbox."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from tests.unit.helpers import add_fault, create_user, route_counts, users_of

USERS = "/api/v1/system-users"
MISSING = "su_000000000000000000000000"


# -- system_user ------------------------------------------------------------------------------


def test_system_user_creates_and_returns_the_token_once(api: Any, run_module: Any) -> None:
    run = run_module("system_user", {"name": "billing", "description": "billing service", "expires_in_days": 30})
    assert run.rc == 0 and run.result["changed"] is True
    user, token = run.result["system_user"], run.result["token"]
    assert user["name"] == "billing" and user["description"] == "billing service" and user["active"] is True
    assert user["days_remaining"] in (29, 30) and user["expired"] is False
    assert "token" not in user
    assert run.result["token_fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:8]
    assert run.result["msg"] == (f"created system user billing ({user['id']}), token fingerprint "
                                 f"{run.result['token_fingerprint']}")
    assert api.api("GET", f"{USERS}/token-info", token=token).json()["data"]["id"] == user["id"]
    assert [u["id"] for u in users_of(api, "billing")] == [user["id"]]


def test_system_user_is_idempotent(api: Any, run_module: Any) -> None:
    first = run_module("system_user", {"name": "billing"})
    second = run_module("system_user", {"name": "billing", "description": "ignored for an existing user"})
    assert second.rc == 0 and second.result["changed"] is False
    assert second.result["system_user"]["id"] == first.result["system_user"]["id"]
    assert "token" not in second.result and "token_fingerprint" not in second.result
    assert len(users_of(api, "billing")) == 1
    assert route_counts(api, "POST /api/v1/system-users") == {"201": 1}


def test_system_user_check_mode_creates_nothing(api: Any, run_module: Any) -> None:
    before = api.state()["system_users"]
    run = run_module("system_user", {"name": "planned", "expires_in_days": 90}, check=True, diff=True)
    assert run.rc == 0 and run.result["changed"] is True
    planned = run.result["system_user"]
    assert planned["id"] is None and planned["name"] == "planned" and planned["days_remaining"] == 90
    assert "token" not in run.result
    assert run.result["diff"]["before"] == {}
    assert run.result["diff"]["after"]["name"] == "planned" and run.result["diff"]["after"]["active"] is True
    assert api.state()["system_users"] == before
    assert "POST /api/v1/system-users" not in api.state()["requests"]["by_route"]


def test_system_user_check_mode_on_an_existing_user_is_no_change(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "exists")[0]
    run = run_module("system_user", {"name": "exists"}, check=True, diff=True)
    assert run.result["changed"] is False and run.result["system_user"]["id"] == user_id
    assert run.result["diff"]["before"] == run.result["diff"]["after"]


def test_system_user_diff_on_creation(api: Any, run_module: Any) -> None:
    run = run_module("system_user", {"name": "diffed", "description": "d"}, diff=True)
    assert run.result["diff"]["before"] == {}
    after = run.result["diff"]["after"]
    assert after == {"name": "diffed", "description": "d", "active": True,
                     "expires_at": run.result["system_user"]["expires_at"]}


def test_system_user_replaces_a_user_whose_token_expired(api: Any, run_module: Any) -> None:
    # Expiry deactivates a user on the platform, so the name is free for a new credential.
    old_id = create_user(api, "stale", days=1)[0]
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": 2 * 86400}).raise_for_status()
    run = run_module("system_user", {"name": "stale"})
    assert run.result["changed"] is True and run.result["system_user"]["id"] != old_id
    assert run.result["system_user"]["expired"] is False


def test_system_user_replaces_an_orphan_after_a_lost_answer(api: Any, run_module: Any) -> None:
    add_fault(api, method="POST", path=USERS, drop_after_commit=True, count=1)
    run = run_module("system_user", {"name": "lossy"})
    assert run.rc == 0 and run.result["changed"] is True
    active = [u for u in users_of(api, "lossy") if u["active"]]
    assert [u["id"] for u in active] == [run.result["system_user"]["id"]]
    token = run.result["token"]
    assert api.api("GET", f"{USERS}/token-info", token=token).status_code == 200


def test_system_user_with_connection_options_as_arguments(api: Any, run_module: Any) -> None:
    run = run_module("system_user", {"name": "explicit", "api_url": api.url + "/", "api_token": api.admin_token},
                     connection=False)
    assert run.rc == 0 and run.result["changed"] is True
    assert run.result["invocation"]["module_args"]["api_token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


def test_xapi_admin_token_alone_is_enough(api: Any, run_module: Any) -> None:
    run = run_module("system_user_info", {}, connection=False,
                     env={"XAPI_URL": api.url, "XAPI_ADMIN_TOKEN": api.admin_token})
    assert run.rc == 0 and run.result["system_users"] == []


def test_xapi_admin_token_wins_over_a_stray_xapi_token(api: Any, run_module: Any) -> None:
    # AWX's credential injects XAPI_ADMIN_TOKEN; a service token left in XAPI_TOKEN must not replace it.
    stray = create_user(api, "stray")[1]
    run = run_module("system_user_info", {}, connection=False,
                     env={"XAPI_URL": api.url, "XAPI_ADMIN_TOKEN": api.admin_token, "XAPI_TOKEN": stray})
    assert run.rc == 0, run.msg
    assert [u["name"] for u in run.result["system_users"]] == ["stray"]
    assert "admin" in api.state()["requests"]["by_user"]


def test_an_empty_xapi_admin_token_falls_through_to_xapi_token(api: Any, run_module: Any) -> None:
    # AWX injects an optional field left blank as '': that must not hide the next variable.
    run = run_module("system_user_info", {}, connection=False,
                     env={"XAPI_URL": api.url, "XAPI_ADMIN_TOKEN": "", "XAPI_TOKEN": api.admin_token})
    assert run.rc == 0 and run.result["system_users"] == []


def test_a_missing_token_names_both_variables(api: Any, run_module: Any) -> None:
    run = run_module("system_user", {"name": "x"}, connection=False,
                     env={"XAPI_URL": api.url, "XAPI_ADMIN_TOKEN": "", "XAPI_TOKEN": ""})
    assert run.failed and run.msg == ("api_token is required: set it or the XAPI_ADMIN_TOKEN (or XAPI_TOKEN) "
                                      "environment variable.")
    assert api.state()["requests"]["total"] == 0


# -- capabilities -----------------------------------------------------------------------------

FULL_FIELDS = ["id", "name", "description", "active", "created_at", "expires_at", "deactivated_at", "last_used_at"]


def test_capabilities_of_the_full_platform(api: Any, run_module: Any) -> None:
    created = run_module("system_user", {"name": "capable"})
    assert created.result["capabilities"] == {"list": True, "name_filter": True, "fields": FULL_FIELDS}
    info = run_module("system_user_info", {"id": created.result["system_user"]["id"]})
    assert info.result["capabilities"] == {"list": True, "name_filter": True, "fields": FULL_FIELDS}
    # One probe of the list route for the lookup by id, filtered by a name nobody has.
    assert route_counts(api, "GET /api/v1/system-users") == {"200": 2}
    listed = run_module("system_user_info", {"name": "capable"})
    assert listed.result["capabilities"]["list"] is True


def test_token_lookups_do_not_probe_the_list_route(api: Any, run_module: Any) -> None:
    token = create_user(api, "own")[1]
    api.api("POST", "/_sandbox/counters/reset").raise_for_status()
    run = run_module("system_user_info", {"token": token})
    assert run.result["capabilities"] == {"list": None, "name_filter": None, "fields": FULL_FIELDS}
    assert "GET /api/v1/system-users" not in api.state()["requests"]["by_route"]


# -- system_user_info -------------------------------------------------------------------------


def test_info_by_ids_keeps_order_and_reports_missing(api: Any, run_module: Any) -> None:
    ids = [create_user(api, f"svc-{n}")[0] for n in range(5)]
    wanted = [ids[3], MISSING, ids[0], ids[4], ids[3]]
    run = run_module("system_user_info", {"id": wanted})
    assert run.rc == 0 and run.result["changed"] is False
    assert [u["id"] for u in run.result["system_users"]] == [ids[3], ids[0], ids[4]]
    assert run.result["missing_ids"] == [MISSING]
    assert all("days_remaining" in u and "expired" in u for u in run.result["system_users"])


def test_info_single_id_as_a_string(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "single")[0]
    run = run_module("system_user_info", {"id": user_id})
    assert [u["id"] for u in run.result["system_users"]] == [user_id] and run.result["missing_ids"] == []


def test_info_fetches_many_ids_concurrently(api: Any, run_module: Any) -> None:
    ids = [create_user(api, f"many-{n:02d}")[0] for n in range(16)]
    # Every read takes 0.4 s: one after the other, 16 would take 6 s more than one does.
    add_fault(api, method="GET", path=f"{USERS}/*", latency=0.4, count=None)
    started = time.monotonic()
    run_module("system_user_info", {"id": ids[0]})
    one = time.monotonic() - started
    started = time.monotonic()
    run = run_module("system_user_info", {"id": ids})
    many = time.monotonic() - started
    assert [u["id"] for u in run.result["system_users"]] == ids
    assert many - one < 3.0, f"16 reads of 0.4 s took {many:.1f} s against {one:.1f} s for one: not concurrent"


def test_info_by_name_and_active_filter(api: Any, run_module: Any) -> None:
    old_id = create_user(api, "api-gw")[0]
    api.api("POST", f"{USERS}/{old_id}/deactivate").raise_for_status()
    new_id = create_user(api, "api-gw")[0]
    create_user(api, "api-gw-2")
    every = run_module("system_user_info", {"name": "api-gw"})
    assert {u["id"] for u in every.result["system_users"]} == {old_id, new_id}
    active = run_module("system_user_info", {"name": "api-gw", "active": True})
    assert [u["id"] for u in active.result["system_users"]] == [new_id]
    inactive = run_module("system_user_info", {"active": False})
    assert [u["id"] for u in inactive.result["system_users"]] == [old_id]


def test_info_lists_all(api: Any, run_module: Any) -> None:
    ids = {create_user(api, f"all-{n}")[0] for n in range(3)}
    run = run_module("system_user_info")
    assert {u["id"] for u in run.result["system_users"]} == ids


def test_info_by_token_needs_no_admin_token(api: Any, run_module: Any) -> None:
    user_id, token = create_user(api, "self-aware", days=7)
    run = run_module("system_user_info", {"token": token, "verify_access": True}, connection=False,
                     env={"XAPI_URL": api.url})
    assert run.rc == 0, run.result
    assert run.result["system_user"]["id"] == user_id and run.result["access_verified"] is True
    assert run.result["system_user"]["days_remaining"] in (6, 7)
    assert run.result["invocation"]["module_args"]["token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert route_counts(api, "GET /api/v1/tenants") == {"200": 1}


def test_info_wait_timeout_rides_out_token_activation(api: Any, run_module: Any) -> None:
    api.api("POST", "/_sandbox/config", json={"token_activation_delay": 1.5}).raise_for_status()
    user_id, token = create_user(api, "propagating")
    impatient = run_module("system_user_info", {"token": token})
    assert impatient.failed and impatient.msg.startswith("the API token was rejected")
    patient = run_module("system_user_info", {"token": token, "verify_access": True, "wait_timeout": 10})
    assert patient.rc == 0 and patient.result["system_user"]["id"] == user_id
    assert patient.result["access_verified"] is True


def test_info_wait_timeout_gives_up(api: Any, run_module: Any) -> None:
    api.api("POST", "/_sandbox/config", json={"token_activation_delay": 30}).raise_for_status()
    token = create_user(api, "slow-token")[1]
    started = time.monotonic()
    run = run_module("system_user_info", {"token": token, "wait_timeout": 1})
    assert run.failed and run.msg.startswith("the API token was rejected: expired, deactivated or wrong")
    assert 1.0 <= time.monotonic() - started < 10


def test_info_reports_expiry_by_the_platform_clock(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "aging", days=30)[0]
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": int(25.5 * 86400)}).raise_for_status()
    user = run_module("system_user_info", {"id": user_id}).result["system_users"][0]
    assert user["days_remaining"] == 4 and user["expired"] is False
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": 5 * 86400}).raise_for_status()
    user = run_module("system_user_info", {"id": user_id}).result["system_users"][0]
    assert user["days_remaining"] == -1 and user["expired"] is True


def test_info_retries_a_503_burst(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "bursty")[0]
    add_fault(api, method="GET", path=f"{USERS}/*", status=503, count=2)
    run = run_module("system_user_info", {"id": [user_id]})
    assert run.rc == 0 and run.result["system_users"][0]["id"] == user_id


def test_info_in_check_mode_reads_the_same(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "checked")[0]
    run = run_module("system_user_info", {"id": user_id}, check=True)
    assert run.result["changed"] is False and run.result["system_users"][0]["id"] == user_id


# -- system_user_deactivate -------------------------------------------------------------------


def test_deactivate_then_again_is_no_change(api: Any, run_module: Any) -> None:
    user_id, token = create_user(api, "old")
    first = run_module("system_user_deactivate", {"id": user_id}, diff=True)
    assert first.rc == 0 and first.result["changed"] is True
    assert first.result["diff"] == {"before": {"active": True}, "after": {"active": False}}
    assert first.result["system_user"]["active"] is False
    assert api.api("GET", "/api/v1/tenants", token=token).status_code == 401
    second = run_module("system_user_deactivate", {"id": user_id}, diff=True)
    assert second.result["changed"] is False
    assert second.result["diff"] == {"before": {"active": False}, "after": {"active": False}}
    assert first.result["msg"] == f"system user {user_id} was deactivated"
    assert second.result["msg"] == f"system user {user_id} is already inactive"
    assert route_counts(api, "POST /api/v1/system-users/{id}/deactivate") == {"200": 1}


def test_deactivate_check_mode_only_reads(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "keep")[0]
    run = run_module("system_user_deactivate", {"id": user_id}, check=True, diff=True)
    assert run.result["changed"] is True and run.result["system_user"]["active"] is False
    assert run.result["diff"] == {"before": {"active": True}, "after": {"active": False}}
    assert users_of(api, "keep")[0]["active"] is True
    assert "POST /api/v1/system-users/{id}/deactivate" not in api.state()["requests"]["by_route"]


def test_deactivate_missing_fails_or_is_ok(api: Any, run_module: Any) -> None:
    strict = run_module("system_user_deactivate", {"id": MISSING})
    assert strict.failed and strict.msg == (f"system user {MISSING} was not found: check the id, or set "
                                            "missing_ok: true if it may already be gone.")
    lenient = run_module("system_user_deactivate", {"id": MISSING, "missing_ok": True})
    assert lenient.rc == 0 and lenient.result["changed"] is False and lenient.result["system_user"] is None


def test_deactivate_retries_a_502(api: Any, run_module: Any) -> None:
    user_id = create_user(api, "through-proxy")[0]
    add_fault(api, method="POST", path=f"{USERS}/*", status=502, count=1)
    run = run_module("system_user_deactivate", {"id": user_id})
    assert run.rc == 0 and run.result["changed"] is True
    assert users_of(api, "through-proxy")[0]["active"] is False


# -- connection options -----------------------------------------------------------------------


def test_tls_connection_from_the_environment(tls_platform: Any, run_module: Any, witness: Any) -> None:
    witness.add(tls_platform.admin_token)
    env = {"XAPI_URL": tls_platform.url("localhost"), "XAPI_TOKEN": tls_platform.admin_token,
           "XAPI_CA_PATH": tls_platform.ca_path}
    created = run_module("system_user", {"name": "over-tls"}, connection=False, env=env)
    assert created.rc == 0 and created.result["changed"] is True, created.result
    gone = run_module("system_user_deactivate", {"id": created.result["system_user"]["id"]}, connection=False,
                      env=env)
    assert gone.rc == 0 and gone.result["changed"] is True
    assert created.result["invocation"]["module_args"]["ca_path"] == tls_platform.ca_path

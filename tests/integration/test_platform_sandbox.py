"""The platform API sandbox behaves as docs/internals.md ("Platform API") says, seen from a client.

Most tests use the shared ``platform`` fixture (started by the launcher, as every other
test sees it) and reset it first. Tests of the command line itself (TLS, the admin token
file, persistence, shutdown, logs) start their own server process.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.sandbox import _tls, client
from tests.sandbox.lifetime import owned_command

REPO = Path(__file__).resolve().parents[2]
USERS = "/api/v1/system-users"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TOKEN_RE = re.compile(r"xsu_[A-Za-z0-9_-]{43}")
ADMIN_TOKEN_RE = re.compile(r"xadm_[A-Za-z0-9_-]{43}")


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@pytest.fixture
def plat(platform: Any) -> Iterator[Any]:
    """The shared platform sandbox with no users, faults, counters, clock offset or activation delay."""
    platform.reset()
    yield platform
    # Leave it as found for the next test module that shares it.
    platform.reset()


# Every token this module has seen, to prove none of them reached the sandbox's log.
SEEN_TOKENS: list[str] = []


def create(plat: Any, name: str = "svc", days: int = 90, **extra: Any) -> dict[str, Any]:
    response = plat.api("POST", USERS, {"name": name, "expires_in_days": days, **extra})
    assert response.status_code == 201, response.text
    SEEN_TOKENS.append(response.json()["data"]["token"])
    return response.json()["data"]


def error_of(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


# --------------------------------------------------------------------------- routes


def test_create_returns_the_object_and_its_token_once(plat: Any) -> None:
    response = plat.api("POST", USERS, {"name": "billing-api", "description": "billing", "expires_in_days": 30})
    assert response.status_code == 201
    data = response.json()["data"]
    assert re.fullmatch(r"su_[0-9a-f]{24}", data["id"])
    assert TOKEN_RE.fullmatch(data["token"])
    assert data["name"] == "billing-api" and data["description"] == "billing" and data["active"] is True
    assert data["deactivated_at"] is None and data["last_used_at"] is None
    assert RFC3339.fullmatch(data["created_at"]) and RFC3339.fullmatch(data["expires_at"])
    assert ts(data["expires_at"]) - ts(data["created_at"]) == 30 * 86400
    assert abs(ts(data["created_at"]) - time.time()) < 5
    assert response.headers["Location"] == f"{USERS}/{data['id']}"

    again = plat.api("GET", f"{USERS}/{data['id']}").json()["data"]
    assert "token" not in again
    assert again == {k: v for k, v in data.items() if k != "token"}
    # Only a hash is kept: the state view shows its fingerprint, never the token.
    state = plat.state()
    assert data["token"] not in json.dumps(state)
    assert state["system_users"][0]["token_fingerprint"] == hashlib.sha256(data["token"].encode()).hexdigest()[:8]


BAD_CREATE_BODIES = [
    ("name missing", {"expires_in_days": 30}, 422, "validation_failed", "name"),
    ("name empty", {"name": "", "expires_in_days": 30}, 422, "validation_failed", "name"),
    ("name too long", {"name": "a" * 129, "expires_in_days": 30}, 422, "validation_failed", "name"),
    ("name with space", {"name": "my service", "expires_in_days": 30}, 422, "validation_failed", "name"),
    ("name with slash", {"name": "a/b", "expires_in_days": 30}, 422, "validation_failed", "name"),
    ("name not a string", {"name": 12, "expires_in_days": 30}, 422, "validation_failed", "name"),
    ("days missing", {"name": "ok"}, 422, "validation_failed", "expires_in_days"),
    ("days zero", {"name": "ok", "expires_in_days": 0}, 422, "validation_failed", "expires_in_days"),
    ("days negative", {"name": "ok", "expires_in_days": -5}, 422, "validation_failed", "expires_in_days"),
    ("days too many", {"name": "ok", "expires_in_days": 366}, 422, "validation_failed", "expires_in_days"),
    ("days a string", {"name": "ok", "expires_in_days": "90"}, 422, "validation_failed", "expires_in_days"),
    ("days fractional", {"name": "ok", "expires_in_days": 1.5}, 422, "validation_failed", "expires_in_days"),
    ("days boolean", {"name": "ok", "expires_in_days": True}, 422, "validation_failed", "expires_in_days"),
    ("description a list", {"name": "ok", "expires_in_days": 3, "description": ["x"]}, 422, "validation_failed",
     "description"),
    ("unknown field", {"name": "ok", "expires_in_days": 3, "state": "present"}, 422, "validation_failed", "state"),
    ("body a list", ["ok"], 400, "invalid_json", "object"),
]


@pytest.mark.parametrize(("body", "status", "code", "mentions"),
                         [case[1:] for case in BAD_CREATE_BODIES], ids=[case[0] for case in BAD_CREATE_BODIES])
def test_create_rejects_bad_bodies_and_creates_nothing(plat: Any, body: Any, status: int, code: str,
                                                       mentions: str) -> None:
    got_status, got_code, message = error_of(plat.api("POST", USERS, body))
    assert (got_status, got_code) == (status, code)
    assert mentions in message and message.endswith(".")
    assert plat.state()["system_users"] == []


@pytest.mark.parametrize("raw", [b"", b"{", b"{\"name\": \"x\",", b"\xff\xfe", b"name=x&expires_in_days=3"])
def test_create_rejects_bodies_that_are_not_json(plat: Any, raw: bytes) -> None:
    response = plat.api("POST", USERS, data=raw, headers={"Content-Type": "application/json"})
    assert error_of(response)[:2] == (400, "invalid_json")
    assert plat.state()["system_users"] == []


def test_name_conflict_only_while_a_user_of_that_name_is_active(plat: Any) -> None:
    first = create(plat, "orders")
    status, code, message = error_of(plat.api("POST", USERS, {"name": "orders", "expires_in_days": 5}))
    assert (status, code) == (409, "name_conflict") and "orders" in message
    plat.api("POST", f"{USERS}/{first['id']}/deactivate").raise_for_status()
    second = create(plat, "orders")
    assert second["id"] != first["id"]
    # Expiry frees the name too: an expired user is no longer active.
    plat.api("POST", "/_sandbox/clock", {"advance_seconds": 90 * 86400}).raise_for_status()
    assert create(plat, "orders")["active"] is True


def test_get_by_id_and_not_found(plat: Any) -> None:
    user = create(plat)
    assert plat.api("GET", f"{USERS}/{user['id']}").json()["data"]["id"] == user["id"]
    status, code, message = error_of(plat.api("GET", f"{USERS}/su_{'0' * 24}"))
    assert (status, code) == (404, "not_found") and f"su_{'0' * 24}" in message
    # A malformed id is not echoed back: it may be a token pasted in the wrong place.
    status, code, message = error_of(plat.api("GET", f"{USERS}/{user['token']}"))
    assert (status, code) == (404, "not_found") and user["token"] not in message


def test_list_paginates_newest_first_and_filters(plat: Any) -> None:
    made = [create(plat, f"svc-{i}", days=1 + i) for i in range(7)]
    pages = [plat.api("GET", f"{USERS}?per_page=3&page={page}").json() for page in (1, 2, 3, 4)]
    assert [p["meta"] for p in pages] == [
        {"page": n, "per_page": 3, "total": 7, "total_pages": 3} for n in (1, 2, 3, 4)
    ]
    assert [len(p["data"]) for p in pages] == [3, 3, 1, 0]
    listed = [u["id"] for p in pages for u in p["data"]]
    assert listed == [u["id"] for u in reversed(made)]

    default = plat.api("GET", USERS).json()
    assert default["meta"] == {"page": 1, "per_page": 50, "total": 7, "total_pages": 1}

    by_name = plat.api("GET", f"{USERS}?name=svc-3").json()
    assert [u["id"] for u in by_name["data"]] == [made[3]["id"]] and by_name["meta"]["total"] == 1

    plat.api("POST", f"{USERS}/{made[0]['id']}/deactivate").raise_for_status()
    active = plat.api("GET", f"{USERS}?active=true").json()
    inactive = plat.api("GET", f"{USERS}?active=false").json()
    assert active["meta"]["total"] == 6 and [u["id"] for u in inactive["data"]] == [made[0]["id"]]


@pytest.mark.parametrize("query", ["per_page=0", "per_page=101", "per_page=abc", "page=0", "page=-1",
                                   "active=maybe"])
def test_list_rejects_bad_query_parameters(plat: Any, query: str) -> None:
    status, code, message = error_of(plat.api("GET", f"{USERS}?{query}"))
    assert (status, code) == (422, "validation_failed")
    assert query.split("=")[0] in message


def test_deactivate_is_idempotent_and_revokes_the_token(plat: Any) -> None:
    user = create(plat)
    assert plat.api("GET", "/api/v1/tenants", token=user["token"]).status_code == 200
    first = plat.api("POST", f"{USERS}/{user['id']}/deactivate")
    assert first.status_code == 200
    data = first.json()["data"]
    assert data["active"] is False and RFC3339.fullmatch(data["deactivated_at"])
    plat.api("POST", "/_sandbox/clock", {"advance_seconds": 120}).raise_for_status()
    second = plat.api("POST", f"{USERS}/{user['id']}/deactivate")
    assert second.status_code == 200 and second.json()["data"] == data
    status, code, message = error_of(plat.api("GET", "/api/v1/tenants", token=user["token"]))
    assert (status, code) == (401, "unauthorized") and "deactivated" in message
    assert error_of(plat.api("POST", f"{USERS}/su_{'a' * 24}/deactivate"))[:2] == (404, "not_found")


def test_token_info_describes_the_callers_own_user(plat: Any) -> None:
    mine, other = create(plat, "mine", days=10), create(plat, "other")
    response = plat.api("GET", f"{USERS}/token-info", token=mine["token"])
    assert response.status_code == 200
    data = response.json()["data"]
    assert data["id"] == mine["id"] and data["id"] != other["id"] and "token" not in data
    assert RFC3339.fullmatch(data["last_used_at"])
    status, code, _ = error_of(plat.api("GET", f"{USERS}/token-info"))  # admin token
    assert (status, code) == (403, "forbidden")


def test_tenants_answer_any_valid_token(plat: Any) -> None:
    user = create(plat)
    for token in (None, user["token"]):
        response = plat.api("GET", "/api/v1/tenants", token=token)
        assert response.status_code == 200
        tenants = response.json()["data"]
        assert tenants and all(set(t) == {"id", "name"} for t in tenants)


def test_auth_failures(plat: Any) -> None:
    user = create(plat)
    anonymous = requests.get(plat.url + "/api/v1/tenants", verify=plat.ca_path or True, timeout=10)
    assert error_of(anonymous)[:2] == (401, "unauthorized")
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    basic = requests.get(plat.url + "/api/v1/tenants", headers={"Authorization": "Basic dXNlcjpwdw=="},
                         verify=plat.ca_path or True, timeout=10)
    assert error_of(basic)[:2] == (401, "unauthorized")
    wrong = "xsu_" + "A" * 43
    status, code, message = error_of(plat.api("GET", "/api/v1/tenants", token=wrong))
    assert (status, code) == (401, "unauthorized") and wrong not in message

    for method, path, permission in [("POST", USERS, "system-users:write"), ("GET", USERS, "system-users:read"),
                                     ("GET", f"{USERS}/{user['id']}", "system-users:read"),
                                     ("POST", f"{USERS}/{user['id']}/deactivate", "system-users:write"),
                                     ("GET", "/_sandbox/state", "sandbox:admin")]:
        body = {"name": "x", "expires_in_days": 1} if method == "POST" else None
        status, code, message = error_of(plat.api(method, path, body, token=user["token"]))
        assert (status, code) == (403, "forbidden") and permission in message, (method, path)
    # Nothing was done by the refused calls.
    state = plat.state()
    assert [u["id"] for u in state["system_users"]] == [user["id"]] and state["system_users"][0]["active"]


def test_unknown_routes_and_methods(plat: Any) -> None:
    assert error_of(plat.api("GET", "/api/v1/nothing-here"))[:2] == (404, "not_found")
    response = plat.api("DELETE", f"{USERS}/su_{'0' * 24}")
    assert error_of(response)[:2] == (405, "method_not_allowed") and response.headers["Allow"] == "GET"
    # Counted under the route template, not the raw path.
    assert plat.state()["requests"]["by_route"] == {
        "GET (unknown route)": {"404": 1}, "DELETE /api/v1/system-users/{id}": {"405": 1}}


def test_keep_alive_and_request_framing(plat: Any) -> None:
    if plat.url.startswith("https"):
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            urlsplit(plat.url).netloc, context=ssl.create_default_context(cafile=plat.ca_path), timeout=10)
    else:
        connection = http.client.HTTPConnection(urlsplit(plat.url).netloc, timeout=10)
    headers = {"Authorization": f"Bearer {plat.admin_token}"}
    for _ in range(3):  # one connection, several answers: keep-alive works
        connection.request("GET", "/api/v1/tenants", headers=headers)
        answer = connection.getresponse()
        assert answer.status == 200 and answer.version == 11 and answer.getheader("Connection") is None
        answer.read()
    first_socket = connection.sock
    # Announce a body over the 1 MiB limit; the answer comes before any of it is sent.
    connection.putrequest("POST", USERS)
    for key, value in {**headers, "Content-Length": str(2 << 20), "Content-Type": "application/json"}.items():
        connection.putheader(key, value)
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "payload_too_large"
    assert answer.getheader("Connection") == "close"
    connection.close()
    connection.connect()
    assert connection.sock is not first_socket
    connection.putrequest("POST", USERS)
    for key, value in {**headers, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}.items():
        connection.putheader(key, value)
    connection.endheaders(b"0\r\n\r\n")
    answer = connection.getresponse()
    assert answer.status == 411 and json.loads(answer.read())["error"]["code"] == "length_required"
    connection.close()
    assert plat.state()["system_users"] == []
    assert plat.state()["requests"]["by_route"]["POST /api/v1/system-users"] == {"413": 1, "411": 1}


# --------------------------------------------------------------------------- clock and activation


def test_clock_advance_expires_tokens(plat: Any) -> None:
    user = create(plat, days=1)
    assert plat.api("GET", f"{USERS}/token-info", token=user["token"]).status_code == 200
    before = ts(plat.api("GET", "/_sandbox/clock").json()["data"]["now"])
    moved = plat.api("POST", "/_sandbox/clock", {"advance_seconds": 86400 - 30})
    assert ts(moved.json()["data"]["now"]) - before >= 86400 - 30
    assert plat.api("GET", f"{USERS}/token-info", token=user["token"]).status_code == 200
    plat.api("POST", "/_sandbox/clock", {"advance_seconds": 60}).raise_for_status()
    status, code, message = error_of(plat.api("GET", f"{USERS}/token-info", token=user["token"]))
    assert (status, code) == (401, "unauthorized") and "expired" in message
    data = plat.api("GET", f"{USERS}/{user['id']}").json()["data"]
    assert data["active"] is False and data["deactivated_at"] == data["expires_at"]
    # The Date header follows the sandbox clock, so clients see the moved time too.
    server_date = parsedate_to_datetime(plat.api("GET", "/api/v1/tenants").headers["Date"]).timestamp()
    assert server_date - time.time() > 86000
    assert error_of(plat.api("POST", "/_sandbox/clock", {"advance_seconds": -10}))[:2] == (422, "validation_failed")
    # Deactivating an expired user changes nothing.
    again = plat.api("POST", f"{USERS}/{user['id']}/deactivate").json()["data"]
    assert again == data


def test_token_activation_delay(plat: Any) -> None:
    assert plat.api("POST", "/_sandbox/config", {"token_activation_delay": 1.0}).json() == {
        "data": {"token_activation_delay": 1.0, "documented_only": False}}
    user = create(plat)
    status, code, message = error_of(plat.api("GET", "/api/v1/tenants", token=user["token"]))
    assert (status, code) == (401, "unauthorized") and "not active yet" in message
    time.sleep(1.1)
    assert plat.api("GET", "/api/v1/tenants", token=user["token"]).status_code == 200
    # The delay runs on the sandbox clock, so advancing it activates a token at once.
    plat.api("POST", "/_sandbox/config", {"token_activation_delay": 600}).raise_for_status()
    slow = create(plat, "slow")
    assert plat.api("GET", "/api/v1/tenants", token=slow["token"]).status_code == 401
    plat.api("POST", "/_sandbox/clock", {"advance_seconds": 601}).raise_for_status()
    assert plat.api("GET", "/api/v1/tenants", token=slow["token"]).status_code == 200
    assert error_of(plat.api("POST", "/_sandbox/config", {"token_activation_delay": -1}))[1] == "validation_failed"
    assert error_of(plat.api("POST", "/_sandbox/config", {"pod_start_delay": 1}))[1] == "validation_failed"


# --------------------------------------------------------------------------- faults


def add_fault(plat: Any, **rule: Any) -> dict[str, Any]:
    response = plat.api("POST", "/_sandbox/faults", rule)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def test_fault_status_burst_then_recovery(plat: Any) -> None:
    add_fault(plat, method="GET", path="/api/v1/tenants", status=503, count=2, retry_after=2)
    answers = [plat.api("GET", "/api/v1/tenants") for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "2" and "Retry-After" not in answers[2].headers
    assert error_of(answers[0])[0] == 503
    assert plat.api("GET", "/_sandbox/faults").json()["data"] == []


def test_fault_html_page_and_truncated_json(plat: Any) -> None:
    add_fault(plat, method="GET", path=f"{USERS}*", status=502, count=1, content_type="text/html",
              body="<html><body><h1>502 Bad Gateway</h1></body></html>")
    add_fault(plat, method="GET", path=f"{USERS}*", status=200, count=1, content_type="application/json",
              body='{"data": {"id": "su_')
    html = plat.api("GET", USERS)
    assert html.status_code == 502 and html.headers["Content-Type"] == "text/html"
    assert html.text.startswith("<html>")
    truncated = plat.api("GET", f"{USERS}?page=1")
    assert truncated.status_code == 200
    with pytest.raises(ValueError):
        truncated.json()
    assert plat.api("GET", USERS).status_code == 200


def test_fault_latency_and_method_and_prefix_matching(plat: Any) -> None:
    add_fault(plat, method="POST", path="/api/v1/*", latency=0.4, count=1)
    assert plat.api("GET", "/api/v1/tenants").status_code == 200  # GET is not the rule's method
    assert [rule["hits"] for rule in plat.api("GET", "/_sandbox/faults").json()["data"]] == [0]
    started = time.monotonic()
    create(plat)  # latency alone: the request still succeeds
    assert time.monotonic() - started >= 0.4
    assert plat.api("GET", "/_sandbox/faults").json()["data"] == []  # its one use is spent


def test_fault_drop_after_commit_creates_the_user_but_loses_the_answer(plat: Any) -> None:
    add_fault(plat, method="POST", path=USERS, drop_after_commit=True, count=1)
    with pytest.raises(requests.ConnectionError):
        plat.api("POST", USERS, {"name": "lost-answer", "expires_in_days": 30})
    users = plat.state()["system_users"]
    assert [(u["name"], u["active"]) for u in users] == [("lost-answer", True)]
    # A client that looks before creating again finds it; a blind retry hits 409.
    found = plat.api("GET", f"{USERS}?name=lost-answer&active=true").json()
    assert found["meta"]["total"] == 1
    assert error_of(plat.api("POST", USERS, {"name": "lost-answer", "expires_in_days": 30}))[1] == "name_conflict"


def test_fault_rules_are_validated_and_never_touch_controls(plat: Any) -> None:
    for bad in ({"path": "no-slash"}, {"path": "/x", "status": 101}, {"path": "/x", "count": 0},
                {"path": "/x", "latency": -1}, {"path": "/x", "drop_after_commit": True, "status": 500},
                {"path": "/x", "colour": "red"}):
        assert error_of(plat.api("POST", "/_sandbox/faults", bad))[:2] == (422, "validation_failed"), bad
    add_fault(plat, path="*", status=500)
    assert plat.api("GET", "/api/v1/tenants").status_code == 500
    assert plat.api("GET", "/_sandbox/state").status_code == 200
    assert plat.api("DELETE", "/_sandbox/faults").status_code == 200
    assert plat.api("GET", "/api/v1/tenants").status_code == 200


# --------------------------------------------------------------------------- counters, state, reset


def test_counters_by_route_template_and_by_user(plat: Any) -> None:
    user = create(plat)
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    for _ in range(3):
        plat.api("GET", "/api/v1/tenants", token=user["token"])
    plat.api("GET", f"{USERS}/{user['id']}")
    plat.api("GET", f"{USERS}/su_{'0' * 24}")
    plat.api("GET", "/api/v1/tenants", token="xsu_not-a-real-token")
    plat.api("POST", f"{USERS}/{user['id']}/deactivate")
    plat.api("GET", "/api/v1/tenants", token=user["token"])
    for _ in range(4):
        plat.api("GET", "/_sandbox/clock")  # controls are never counted
    requests_seen = plat.state()["requests"]
    assert requests_seen == {
        "total": 8,
        "by_route": {
            "GET /api/v1/tenants": {"200": 3, "401": 2},
            "GET /api/v1/system-users/{id}": {"200": 1, "404": 1},
            "POST /api/v1/system-users/{id}/deactivate": {"200": 1},
        },
        "by_user": {user["id"]: {"200": 3, "401": 1}, "admin": {"200": 2, "404": 1}, "unknown": {"401": 1}},
    }
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    assert plat.state()["requests"] == {"total": 0, "by_route": {}, "by_user": {}}
    assert len(plat.state()["system_users"]) == 1


def test_reset_forgets_users_faults_counters_and_clock(plat: Any) -> None:
    create(plat)
    plat.api("POST", "/_sandbox/clock", {"advance_seconds": 3600}).raise_for_status()
    add_fault(plat, path="/api/v1/nothing", status=500)
    plat.api("GET", "/api/v1/tenants")
    assert plat.api("POST", "/_sandbox/reset").status_code == 200
    state = plat.state()
    assert state["system_users"] == [] and state["faults"] == [] and state["requests"]["total"] == 0
    assert abs(ts(state["now"]) - time.time()) < 5


def test_controls_need_the_admin_token(plat: Any) -> None:
    user = create(plat)
    assert error_of(plat.api("POST", "/_sandbox/reset", token=user["token"]))[:2] == (403, "forbidden")
    anonymous = requests.post(plat.url + "/_sandbox/reset", verify=plat.ca_path or True, timeout=10)
    assert error_of(anonymous)[:2] == (401, "unauthorized")
    assert len(plat.state()["system_users"]) == 1


def test_concurrent_requests_over_one_pooled_session(plat: Any) -> None:
    users = [create(plat, f"c{i}") for i in range(20)]
    plat.api("POST", "/_sandbox/counters/reset").raise_for_status()
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=32))
    headers = {"Authorization": f"Bearer {plat.admin_token}"}

    def fetch(user_id: str) -> int:
        return session.get(f"{plat.url}{USERS}/{user_id}", headers=headers, timeout=10,
                           verify=plat.ca_path or True).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(fetch, [u["id"] for u in users] * 15))
    assert statuses == [200] * 300
    assert plat.state()["requests"]["by_route"] == {"GET /api/v1/system-users/{id}": {"200": 300}}


def test_client_helper_returns_status_and_body(plat: Any) -> None:
    status, body = client.api(plat.url, "POST", USERS, token=plat.admin_token,
                              json={"name": "via-client", "expires_in_days": 7}, ca=plat.ca_path)
    assert status == 201 and TOKEN_RE.fullmatch(body["data"]["token"])
    status, body = client.api(plat.url, "GET", f"{USERS}/su_{'0' * 24}", token=plat.admin_token, ca=plat.ca_path)
    assert status == 404 and body["error"]["code"] == "not_found"
    add_fault(plat, path="/api/v1/tenants", status=502, body="<html>bad gateway</html>", content_type="text/html",
              count=1)
    assert client.api(plat.url, "GET", "/api/v1/tenants", token=plat.admin_token, ca=plat.ca_path) == (
        502, {"raw": "<html>bad gateway</html>"})


# --------------------------------------------------------------------------- the reference document's scripts

# Step 1 of the reference procedure (scripts/check-token-expiry.sh), as written there except:
# TOKEN and API_URL come from the environment, and `date -j` (BSD) falls back to GNU
# `date -d` exactly as the document's own auto-rotate.sh does.
CHECK_TOKEN_EXPIRY = r"""
TOKEN="$CHECK_TOKEN"
API_URL="$XAPI_URL"

# Get token info
response=$(curl -s -X GET "$API_URL/api/v1/system-users/token-info" \
  -H "Authorization: Bearer $TOKEN")

echo "$response" | jq '.'

# Extract expiry
expiry=$(echo "$response" | jq -r '.data.expires_at')
echo "Token expires: $expiry"

# Calculate days remaining
expires_epoch=$(date -j -f "%Y-%m-%dT%H:%M:%SZ" "$expiry" +%s 2>/dev/null || date -d "$expiry" +%s)
now_epoch=$(date +%s)
days_remaining=$(( ($expires_epoch - $now_epoch) / 86400 ))

echo "Days remaining: $days_remaining"

if [ $days_remaining -lt 7 ]; then
  echo "⚠️  WARNING: Token expires soon! Rotate now."
  exit 1
fi
"""

# Step 4 (scripts/verify-new-token.sh): the token file and API_URL come from the environment.
VERIFY_NEW_TOKEN = r"""
NEW_TOKEN=$(cat "$TOKEN_FILE")
API_URL="$XAPI_URL"

echo "Testing new token..."

# Test API call
response=$(curl -s -w "\nHTTP_CODE:%{http_code}" \
  -H "Authorization: Bearer $NEW_TOKEN" \
  "$API_URL/api/v1/tenants")

http_code=$(echo "$response" | grep "HTTP_CODE" | cut -d: -f2)

if [ "$http_code" == "200" ]; then
  echo "✓ New token works!"
else
  echo "✗ New token failed with code: $http_code"
  echo "$response"
  exit 1
fi
"""


def run_script(plat: Any, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The scripts call curl without a CA option; curl reads one from CURL_CA_BUNDLE when the sandbox uses TLS.
    ca = {"CURL_CA_BUNDLE": plat.ca_path} if plat.ca_path else {}
    return subprocess.run(["bash", "-c", script], env={**os.environ, "XAPI_URL": plat.url, **ca, **env},
                          capture_output=True, text=True, timeout=30)


def days_reported(result: subprocess.CompletedProcess[str]) -> int:
    found = re.search(r"^Days remaining: (-?\d+)$", result.stdout, re.MULTILINE)
    assert found, result.stdout + result.stderr
    return int(found.group(1))


def whole_days_left(expires_at: str, before: float, after: float) -> set[int]:
    # The script reads the wall clock itself, somewhere between before and after.
    return {int(ts(expires_at) - int(moment)) // 86400 for moment in (before, after)}


def test_reference_check_token_expiry_script(plat: Any) -> None:
    healthy, expiring = create(plat, "healthy", days=90), create(plat, "expiring", days=3)
    before = time.time()
    result = run_script(plat, CHECK_TOKEN_EXPIRY, CHECK_TOKEN=healthy["token"])
    after = time.time()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Token expires: {healthy['expires_at']}" in result.stdout
    assert days_reported(result) in whole_days_left(healthy["expires_at"], before, after) <= {89, 90}
    assert "WARNING" not in result.stdout
    assert json.loads(result.stdout.split("Token expires:")[0])["data"]["id"] == healthy["id"]

    before = time.time()
    result = run_script(plat, CHECK_TOKEN_EXPIRY, CHECK_TOKEN=expiring["token"])
    after = time.time()
    assert result.returncode == 1
    assert days_reported(result) in whole_days_left(expiring["expires_at"], before, after) <= {2, 3}
    assert "WARNING: Token expires soon! Rotate now." in result.stdout


def test_reference_verify_new_token_script(plat: Any, tmp_path: Path) -> None:
    user = create(plat, "new-credential")
    token_file = tmp_path / "new-token.txt"
    token_file.write_text(user["token"] + "\n")
    token_file.chmod(0o600)
    result = run_script(plat, VERIFY_NEW_TOKEN, TOKEN_FILE=str(token_file))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "✓ New token works!"), result.stdout

    plat.api("POST", f"{USERS}/{user['id']}/deactivate").raise_for_status()
    result = run_script(plat, VERIFY_NEW_TOKEN, TOKEN_FILE=str(token_file))
    assert result.returncode == 1 and "✗ New token failed with code: 401" in result.stdout

    plat.api("POST", "/_sandbox/config", {"token_activation_delay": 300}).raise_for_status()
    fresh = create(plat, "not-yet-propagated")
    token_file.write_text(fresh["token"])
    result = run_script(plat, VERIFY_NEW_TOKEN, TOKEN_FILE=str(token_file))
    assert result.returncode == 1 and "code: 401" in result.stdout


def test_no_token_reaches_the_shared_sandbox_log(plat: Any) -> None:
    user = create(plat, "leak-check")
    # Tokens where they do not belong: in the path and in the query string.
    plat.api("GET", f"{USERS}/{user['token']}?api_token={user['token']}", token=user["token"])
    plat.api("GET", f"/api/v1/tenants?token={plat.admin_token}")
    log_file = Path(plat.dir) / "platform.log"
    deadline = time.monotonic() + 5
    while "/api/v1/tenants?token=" not in log_file.read_text():  # the line is written just after the answer
        assert time.monotonic() < deadline, "the sandbox never logged the requests"
        time.sleep(0.05)
    log = log_file.read_text()
    assert user["token"] in SEEN_TOKENS
    leaked = [t for t in [*SEEN_TOKENS, plat.admin_token] if t in log]
    assert leaked == [], "a token reached the platform sandbox log"
    assert "token=[redacted]" in log


# --------------------------------------------------------------------------- the command line


class Server:
    def __init__(self, state_dir: Path, token_file: Path, *extra: str) -> None:
        self.state_dir, self.token_file = state_dir, token_file
        self.log = state_dir.parent / f"{state_dir.name}.log"
        with open(self.log, "ab") as log:
            # owned_command: the server stops by itself if this pytest process is killed.
            self.proc = subprocess.Popen(
                owned_command("tests.sandbox.platform_api", "--state-dir", str(state_dir),
                              "--admin-token-file", str(token_file), "--port", "0", *extra),
                cwd=REPO, stdout=log, stderr=log,
            )
        self.ready = client.wait_ready(state_dir, timeout=30, process=self.proc)
        self.url: str = self.ready["url"]
        self.admin_token = token_file.read_text().strip()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    started: list[Server] = []

    def start(*extra: str, name: str = "state") -> Server:
        server = Server(tmp_path / name, tmp_path / "admin-token", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def test_cli_creates_admin_token_persists_state_and_stops_cleanly(start_server: Any) -> None:
    server = start_server()
    mode = stat.S_IMODE(server.token_file.stat().st_mode)
    assert mode == 0o600 and ADMIN_TOKEN_RE.fullmatch(server.admin_token)
    assert server.ready == {"url": server.url, "pid": server.proc.pid, "ca_file": None}
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)

    status, body = client.api(server.url, "POST", USERS, token=server.admin_token,
                              json={"name": "survivor", "expires_in_days": 9})
    assert status == 201
    token = body["data"]["token"]
    client.api(server.url, "POST", "/_sandbox/clock", token=server.admin_token, json={"advance_seconds": 86400})
    # Tokens in odd places (path, query string) must not reach the log either.
    client.api(server.url, "GET", f"{USERS}/{token}?token={token}", token=token)
    assert server.stop() == 0
    assert not (server.state_dir / "ready.json").exists()

    database = (server.state_dir / "platform.sqlite3").read_bytes()
    assert token.encode() not in database and server.admin_token.encode() not in database

    again = start_server()
    assert again.admin_token == server.admin_token  # the existing file is reused
    status, body = client.api(again.url, "GET", f"{USERS}/token-info", token=token)
    assert status == 200 and body["data"]["name"] == "survivor"
    # The clock offset survives too: 9 days minus the day moved before the restart.
    status, body = client.api(again.url, "GET", "/_sandbox/clock", token=again.admin_token)
    assert ts(body["data"]["now"]) - time.time() > 86000
    assert again.stop() == 0

    log = server.log.read_text()
    assert "POST /api/v1/system-users HTTP/1.1\" 201" in log and "platform sandbox stopped" in log
    assert token not in log and server.admin_token not in log and "Traceback" not in log


def test_cli_refuses_a_busy_port_in_one_sentence(start_server: Any, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "tests.sandbox.platform_api", "--state-dir", str(tmp_path / "s"),
             "--admin-token-file", str(tmp_path / "t"), "--port", str(port)],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(("prepare", "expected"), [
    (lambda tmp: (tmp / "t").mkdir(), "cannot use {tmp}/t: Is a directory"),
    (lambda tmp: (tmp / "t").write_text(""), "{tmp}/t must hold one admin token on one line"),
    (lambda tmp: (tmp / "t").write_text("two words\n"), "{tmp}/t must hold one admin token on one line"),
], ids=["token file is a directory", "token file empty", "token file with spaces"])
def test_cli_bad_admin_token_file_is_one_sentence(tmp_path: Path, prepare: Any, expected: str) -> None:
    prepare(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tests.sandbox.platform_api", "--state-dir", str(tmp_path / "s"),
         "--admin-token-file", str(tmp_path / "t")],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert expected.format(tmp=tmp_path) in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("generator", ["cryptography", "openssl"])
def test_generated_certificates_verify_for_loopback_names(tmp_path: Path, generator: str) -> None:
    files = _tls.TLSFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server-key.pem")
    if generator == "openssl":
        _tls._generate_with_openssl(files, _tls.DEFAULT_HOSTS, "test")
    else:
        _tls._generate_with_cryptography(files, _tls.DEFAULT_HOSTS, "test")
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    server_context = _tls.server_context(files)
    for name in ("localhost", "127.0.0.1", "::1", "example.com"):
        client_side, server_side = socket.socketpair()
        with client_side, server_side:
            client_side.settimeout(10)
            server_side.settimeout(10)
            accepted = concurrent.futures.ThreadPoolExecutor(1).submit(
                lambda sock=server_side: server_context.wrap_socket(sock, server_side=True))
            context = ssl.create_default_context(cafile=str(files.ca_file))
            if name == "example.com":
                with pytest.raises(ssl.SSLCertVerificationError):
                    context.wrap_socket(client_side, server_hostname=name)
                with pytest.raises(OSError):  # the client walked away mid-handshake
                    accepted.result(10)
            else:
                with context.wrap_socket(client_side, server_hostname=name) as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
                accepted.result(10).close()
    # An existing, usable set is kept rather than replaced, so clients holding ca.pem keep working.
    before = files.ca_file.read_bytes()
    assert _tls.ensure_certificates(tmp_path) == files and files.ca_file.read_bytes() == before


def test_tls_needs_the_generated_ca(start_server: Any) -> None:
    server = start_server("--tls", name="tls")
    ca_file = server.ready["ca_file"]
    assert server.url.startswith("https://127.0.0.1:") and ca_file == str(server.state_dir / "ca.pem")
    headers = {"Authorization": f"Bearer {server.admin_token}"}

    assert requests.get(server.url + "/api/v1/tenants", headers=headers, verify=ca_file, timeout=10).status_code == 200
    by_name = server.url.replace("127.0.0.1", "localhost")
    assert requests.get(by_name + "/api/v1/tenants", headers=headers, verify=ca_file, timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.url + "/api/v1/tenants", headers=headers, timeout=10)
    assert client.api(server.url, "GET", "/api/v1/tenants", token=server.admin_token, ca=ca_file)[0] == 200
    # The failed handshake did not hurt the server, and curl agrees about the CA.
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca_file,
                           "-H", f"Authorization: Bearer {server.admin_token}", server.url + "/api/v1/tenants"],
                          capture_output=True, text=True, timeout=30)
    assert curl.stdout == "200"
    untrusted = subprocess.run(["curl", "-s", server.url + "/api/v1/tenants"], capture_output=True, timeout=30)
    assert untrusted.returncode == 60  # curl: peer certificate cannot be authenticated
    assert server.stop() == 0
    assert "TLS handshake failed" in server.log.read_text() and "Traceback" not in server.log.read_text()

"""The API client (plugins/module_utils/_api.py) against the platform sandbox over real HTTP."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ansible_collections.xapi.system_auth.plugins.module_utils import _api
from ansible_collections.xapi.system_auth.plugins.module_utils._api import (
    USER_AGENT,
    XapiClient,
    XapiError,
    days_remaining,
    fingerprint,
    is_expired,
    redact,
)
from tests.unit.helpers import add_fault, create_user, route_counts, users_of

USERS = "/api/v1/system-users"
T0 = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def client(api: Any, **kwargs: Any) -> XapiClient:
    kwargs.setdefault("retries", 2)
    return XapiClient(api.url, kwargs.pop("token", api.admin_token), **kwargs)


def error_of(call: Any) -> XapiError:
    with pytest.raises(XapiError) as caught:
        call()
    return caught.value


# -- dates and fingerprints: one definition, checked at its edges ----------------------------


@pytest.mark.parametrize(
    ("expires_at", "now", "days", "expired"),
    [
        ("2027-03-03T10:00:00Z", T0, 90, False),
        ("2027-03-03T09:59:59Z", T0, 89, False),  # one second short of 90 days: 89 whole days
        ("2026-12-04T10:00:00Z", T0, 1, False),
        ("2026-12-03T10:00:01Z", T0, 0, False),
        ("2026-12-03T10:00:00Z", T0, 0, True),  # the instant of expiry counts as expired
        ("2026-12-03T09:59:59Z", T0, -1, True),  # expired a second ago: negative
        ("2026-12-01T10:00:00Z", T0, -2, True),
        ("2026-12-03T12:00:00+02:00", T0, 0, True),  # offsets are honoured: this is 10:00Z
    ],
)
def test_days_remaining_is_whole_days_rounded_down(expires_at: str, now: datetime, days: int, expired: bool) -> None:
    assert days_remaining(expires_at, now) == days
    assert is_expired(expires_at, now) is expired


def test_fingerprint_is_the_first_8_hex_of_sha256() -> None:
    token = "xsu_" + "A" * 43
    assert fingerprint(token) == hashlib.sha256(token.encode()).hexdigest()[:8]
    assert len(fingerprint(token)) == 8 and fingerprint(token) != fingerprint(token + "B")


def test_redact_removes_known_secrets_token_shapes_and_bearer_values() -> None:
    text = redact("got secret-value, xsu_abcdefghijklmnopqrstuvwxyz and Authorization: Bearer abc.def",
                  ["secret-value"])
    assert "secret-value" not in text and "xsu_abc" not in text and "abc.def" not in text
    assert text.count(_api.REDACTED) == 3


# -- what goes over the wire ------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers.items()))
        body = json.dumps({"data": [], "meta": {"page": 1, "per_page": 100, "total": 0, "total_pages": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_requests_carry_bearer_token_and_collection_user_agent() -> None:
    # The sandbox does not report request headers, so a tiny local server records them.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        XapiClient(f"http://127.0.0.1:{server.server_address[1]}", "xadm_recorded").list_users(name="x")
    finally:
        server.shutdown()
    headers = {k.lower(): v for k, v in _Recorder.seen[-1].items()}
    assert headers["authorization"] == "Bearer xadm_recorded"
    assert headers["user-agent"] == USER_AGENT == "xapi.system_auth/0.1.0 (+ansible)"


class _Scripted(BaseHTTPRequestHandler):
    """Answers from a script, for shapes the sandbox never produces (redirects, lists without meta)."""

    script: list[tuple[int, dict[str, str], bytes]] = []
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        status, headers, body = type(self).script.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve_script(script: list[tuple[int, dict[str, str], bytes]]) -> tuple[ThreadingHTTPServer, str]:
    _Scripted.script = list(script)
    _Scripted.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_a_redirect_is_not_followed_and_says_where_it_points() -> None:
    server, url = _serve_script([(301, {"Location": "https://platform.example.com/api/v1/system-users?x=1"}, b"")])
    try:
        err = error_of(lambda: XapiClient(url, "xadm_t").list_users())
    finally:
        server.shutdown()
    assert err.msg == (f"the platform API at {url[7:]} redirects GET /api/v1/system-users to "
                       "https://platform.example.com/api/v1/system-users (HTTP 301): put the URL the platform "
                       "really serves in api_url, for example with https://.")


JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html; charset=utf-8"}
ERROR_PAGE = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
A_USER = {"id": "su_a", "name": "a", "description": "", "expires_at": "2030-01-01T00:00:00Z"}


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _listing(users: list[dict[str, Any]], meta: bool = True) -> bytes:
    body: dict[str, Any] = {"data": users}
    if meta:
        body["meta"] = {"page": 1, "per_page": 100, "total": len(users), "total_pages": 1}
    return json.dumps(body).encode()


# What the list route may answer, and what the client must conclude: "no list route" (with the reason
# its sentences give), a list, or an error as strict as any other route's.
LIST_ANSWERS = [
    ("404-json", 404, JSON, _error("not_found", "No such API route."), False, "HTTP 404"),
    ("404-html", 404, HTML, ERROR_PAGE, False, "HTTP 404"),
    ("405", 405, {**JSON, "Allow": "POST"}, _error("method_not_allowed", "GET is not supported here; use POST."),
     False, "HTTP 405"),
    ("501", 501, {}, b"", False, "HTTP 501"),
    ("200-html-page", 200, HTML, b"<!doctype html><html><body>console</body></html>", False,
     "HTTP 200 with text/html instead of the JSON list"),
    ("200-without-meta", 200, JSON, _listing([A_USER], meta=False), False,
     "HTTP 200 without the documented list and its meta"),
    ("200-data-not-a-list", 200, JSON, json.dumps({"data": A_USER, "meta": {}}).encode(), False,
     "HTTP 200 without the documented list and its meta"),
    ("200-list", 200, JSON, _listing([A_USER]), True, None),
    ("200-empty-list", 200, JSON, _listing([]), True, None),
]


@pytest.mark.parametrize(("status", "headers", "body", "lists", "reason"),
                         [case[1:] for case in LIST_ANSWERS], ids=[case[0] for case in LIST_ANSWERS])
def test_list_route_capability_is_detected_from_its_answer(status: int, headers: dict[str, str], body: bytes,
                                                           lists: bool, reason: str | None) -> None:
    # Twice the same answer: a client that asked again would find the script empty and hang up.
    server, url = _serve_script([(status, headers, body)] * 2)
    try:
        api = XapiClient(url, "xadm_t", retries=0)
        assert api.capabilities(probe=False)["list"] is None
        assert api.can_list() is lists
        assert api.can_list() is lists and len(_Scripted.paths) == 1  # learned once, kept
        caps = api.capabilities()
        assert caps["list"] is lists and len(_Scripted.paths) == 1
        if lists:
            stranger = b"su_a" in body
            # The probe asks for a name nobody has: a user in the answer means the filter is ignored.
            assert caps["name_filter"] is not stranger
            assert caps["fields"] == (list(A_USER) if stranger else [])
        else:
            assert caps == {"list": False, "name_filter": False, "fields": []}
            # Every lookup that needs the list now fails with one sentence, without asking again.
            err = error_of(lambda: api.list_users(name="a", purpose="looking system users up by name"))
            assert isinstance(err, _api.NoListRoute)
            assert err.msg == (f"looking system users up by name needs the platform's list route, which it does "
                               f"not serve ({reason}); look the credential up by id or token instead.")
            assert len(_Scripted.paths) == 1
    finally:
        server.shutdown()
    assert "page=1" in _Scripted.paths[0] and "per_page=1" in _Scripted.paths[0]
    assert f"name={_api.PROBE_NAME}" in _Scripted.paths[0]


@pytest.mark.parametrize(("status", "body", "text"), [
    (500, _error("internal_error", "No."), "answered HTTP 500 to GET /api/v1/system-users"),
    (401, _error("unauthorized", "No."), "the API token was rejected: expired, deactivated or wrong"),
    (403, _error("forbidden", "No."), "the API token is not allowed to list system users"),
    (400, _error("bad_request", "No."), "the platform refused to list system users"),
    # JSON that does not parse is a broken answer, not another kind of route.
    (200, b'{"data": [{"id": "su_1', "with a body that is not the expected JSON (application/json)"),
], ids=["500", "401", "403", "400", "truncated-json"])
def test_other_list_answers_stay_errors_and_teach_nothing(status: int, body: bytes, text: str) -> None:
    server, url = _serve_script([(status, JSON, body)] * 2)
    try:
        api = XapiClient(url, "xadm_t", retries=0)
        err = error_of(api.can_list)
        assert not isinstance(err, _api.NoListRoute) and err.status == status and text in err.msg
        err = error_of(api.list_users)
        assert not isinstance(err, _api.NoListRoute) and text in err.msg
    finally:
        server.shutdown()
    assert api.capabilities(probe=False)["list"] is None


def test_a_list_that_ignores_the_name_filter_is_filtered_here() -> None:
    others = [{"id": "su_b", "name": "b"}, {"id": "su_a", "name": "a"}, {"id": "su_c", "name": "a-2"}]
    server, url = _serve_script([(200, JSON, _listing(others))])
    try:
        api = XapiClient(url, "xadm_t")
        assert [u["id"] for u in api.list_users(name="a")] == ["su_a"]
    finally:
        server.shutdown()
    assert api.capabilities(probe=False) == {"list": True, "name_filter": False, "fields": ["id", "name"]}


def test_a_list_with_meta_but_no_total_pages_ends_at_the_first_short_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_api, "LIST_PAGE_SIZE", 2)
    page = [{"id": "su_a", "name": "a"}, {"id": "su_b", "name": "b"}]
    server, url = _serve_script([
        (200, JSON, json.dumps({"data": page, "meta": {"page": 1}}).encode()),
        (200, JSON, json.dumps({"data": page[:1], "meta": {"page": 2}}).encode()),
    ])
    try:
        users = XapiClient(url, "xadm_t").list_users()
    finally:
        server.shutdown()
    assert [u["id"] for u in users] == ["su_a", "su_b", "su_a"]
    assert [p.split("page=")[1].split("&")[0] for p in _Scripted.paths] == ["1", "2"]


@pytest.mark.parametrize(("user", "active"), [
    ({"active": True, "expires_at": "2020-01-01T00:00:00Z"}, True),  # the platform's own word wins
    ({"active": False, "expires_at": "2030-01-01T00:00:00Z"}, False),
    ({"expires_at": "2030-01-01T00:00:00Z"}, True),  # no active field: active until expiry
    ({"expires_at": "2026-12-03T10:00:00Z"}, False),  # the instant of expiry is expired
    ({"expires_at": "2030-01-01T00:00:00Z", "deactivated_at": "2026-12-01T00:00:00Z"}, False),
    ({"expires_at": "2030-01-01T00:00:00Z", "deactivated_at": None}, True),
    ({}, True),
])
def test_active_is_derived_when_the_platform_sends_none(user: dict[str, Any], active: bool) -> None:
    assert _api.is_active(user, T0) is active
    described = _api.describe_user(dict(user, id="su_x"), T0)
    assert described["active"] is active
    assert "last_used_at" not in described and "created_at" not in described  # nothing else is made up


def test_a_user_found_after_a_lost_answer_is_ours_only_if_new() -> None:
    api = XapiClient("http://127.0.0.1:9", "xadm_t")
    started = T0
    # Without created_at, "not there before the call" decides; unknown before means not ours.
    assert api._is_ours({"id": "su_new"}, started, {"su_old"}) is True
    assert api._is_ours({"id": "su_old"}, started, {"su_old"}) is False
    assert api._is_ours({"id": "su_new"}, started, None) is False
    # With created_at, it must also be no older than the call.
    assert api._is_ours({"id": "su_new", "created_at": "2026-12-03T09:00:00Z"}, started, set()) is False
    assert api._is_ours({"id": "su_new", "created_at": "2026-12-03T10:00:00Z"}, started, set()) is True


# -- a platform that serves only the documented routes and fields (the sandbox's documented-only mode)

DOCUMENTED = ["id", "name", "description", "expires_at"]


@pytest.fixture
def documented(api: Any) -> Any:
    api.api("POST", "/_sandbox/config", json={"documented_only": True}).raise_for_status()
    try:
        yield api
    finally:
        api.api("POST", "/_sandbox/config", json={"documented_only": False}).raise_for_status()


def test_documented_only_platform_create_read_token_info_deactivate(documented: Any) -> None:
    api = client(documented)
    user, token = api.create_user("doc-svc", "documented", 30)
    assert sorted(user) == sorted([*DOCUMENTED, "token"])
    assert api.get_user(user["id"]) == {k: user[k] for k in DOCUMENTED}
    assert api.token_info(token)["id"] == user["id"]
    assert _api.describe_user(api.get_user(user["id"]), api.now())["active"] is True
    gone = api.deactivate_user(user["id"])
    assert gone["active"] is False  # the 200 of deactivate says so, though the object does not
    assert api.capabilities() == {"list": False, "name_filter": False, "fields": DOCUMENTED}
    # Asked once (by the create's lookup of the name), then known: capabilities() asks nothing more.
    assert route_counts(documented, "GET /api/v1/system-users") == {"405": 1}


def test_documented_only_lost_create_answer_fails_and_creates_nothing_more(documented: Any) -> None:
    add_fault(documented, method="POST", path=USERS, drop_after_commit=True, count=1)
    err = error_of(lambda: client(documented).create_user("lost-doc", None, 30))
    assert err.msg == ("the answer to creating system user lost-doc was lost (the connection closed before the "
                       "answer arrived), so the platform may hold an active system user named lost-doc whose token "
                       "was lost; it has no list route to find it (HTTP 405): deactivate it by id in the platform's "
                       "console, then re-run the task.")
    # Exactly the one create that was sent: the orphan exists, nothing was created beside it.
    assert [u["active"] for u in users_of(documented, "lost-doc")] == [True]
    assert route_counts(documented, "POST /api/v1/system-users") == {"201": 1}
    assert not _api._TOKEN_PATTERN.search(err.msg)


def test_documented_only_a_taken_name_says_how_to_find_its_holder(documented: Any) -> None:
    create_user(documented, "taken-doc")
    err = error_of(lambda: client(documented).create_user("taken-doc", None, 30))
    assert err.status == 409
    assert err.msg.startswith("the platform refused to create system user taken-doc: ")
    assert err.msg.endswith("; the platform has no list route to show which system user holds that name (HTTP 405): "
                            "find it by id in the platform's console and deactivate it, or choose another name.")


def test_documented_only_a_rate_limited_create_is_sent_again(documented: Any) -> None:
    # 429 means the platform did not carry the create out: no lookup is needed to resend it.
    add_fault(documented, method="POST", path=USERS, status=429, count=1, retry_after=0)
    user = client(documented).create_user("limited-doc", None, 30)[0]
    assert route_counts(documented, "POST /api/v1/system-users") == {"429": 1, "201": 1}
    assert [u["id"] for u in users_of(documented, "limited-doc")] == [user["id"]]


def test_documented_only_mode_is_switched_back_by_a_reset(api: Any) -> None:
    api.api("POST", "/_sandbox/config", json={"documented_only": True}).raise_for_status()
    api.reset()
    assert api.api("GET", "/_sandbox/config").json()["data"]["documented_only"] is False
    assert client(api).can_list() is True


def test_full_platform_capabilities_name_every_field(api: Any) -> None:
    api_client = client(api)
    user_id = api_client.create_user("full", None, 30)[0]["id"]
    api_client.get_user(user_id)
    caps = api_client.capabilities()
    assert caps["list"] is True and caps["name_filter"] is True
    assert set(caps["fields"]) == {"id", "name", "description", "active", "created_at", "expires_at",
                                   "deactivated_at", "last_used_at"}


# -- retries of idempotent requests -----------------------------------------------------------


def test_get_is_retried_through_a_503_burst(api: Any) -> None:
    user_id = create_user(api, "burst")[0]
    add_fault(api, method="GET", path=f"{USERS}/*", status=503, count=2)
    assert client(api).get_user(user_id)["id"] == user_id
    assert route_counts(api, "GET /api/v1/system-users/{id}") == {"503": 2, "200": 1}


def test_get_gives_up_after_the_configured_retries_with_one_sentence(api: Any) -> None:
    add_fault(api, method="GET", path=USERS, status=503, count=None)
    err = error_of(lambda: client(api, retries=2).list_users())
    assert err.msg.startswith("the platform API at 127.0.0.1:")
    assert "answered HTTP 503 to GET /api/v1/system-users after 2 retries" in err.msg
    assert route_counts(api, "GET /api/v1/system-users") == {"503": 3}


def test_429_retry_after_is_honoured(api: Any) -> None:
    add_fault(api, method="GET", path=USERS, status=429, count=1, retry_after=1)
    started = time.monotonic()
    client(api).list_users()
    assert time.monotonic() - started >= 0.9
    assert route_counts(api, "GET /api/v1/system-users") == {"429": 1, "200": 1}


def test_deactivate_is_retried_because_it_is_idempotent(api: Any) -> None:
    user_id = create_user(api, "retired")[0]
    add_fault(api, method="POST", path=f"{USERS}/*", status=502, count=2)
    assert client(api).deactivate_user(user_id)["active"] is False
    assert route_counts(api, "POST /api/v1/system-users/{id}/deactivate") == {"502": 2, "200": 1}


def test_500_is_not_retried(api: Any) -> None:
    add_fault(api, method="GET", path=USERS, status=500, count=None)
    err = error_of(lambda: client(api).list_users())
    assert "answered HTTP 500 to GET /api/v1/system-users" in err.msg
    assert route_counts(api, "GET /api/v1/system-users") == {"500": 1}


# -- create: never two credentials where one was meant ----------------------------------------


def test_create_returns_user_and_a_working_token(api: Any) -> None:
    user, token = client(api).create_user("fresh", "a description", 30)
    assert user["name"] == "fresh" and user["description"] == "a description" and user["active"] is True
    info = api.api("GET", f"{USERS}/token-info", token=token)
    assert info.status_code == 200 and info.json()["data"]["id"] == user["id"]


def test_create_503_is_not_repeated_blindly_but_after_a_lookup(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, status=503, count=1)
    user = client(api).create_user("after-503", None, 30)[0]
    assert route_counts(api, "POST /api/v1/system-users") == {"503": 1, "201": 1}
    # The lookup by name between the two attempts.
    assert route_counts(api, "GET /api/v1/system-users").get("200", 0) >= 1
    assert [u["id"] for u in users_of(api, "after-503")] == [user["id"]]


def test_create_with_lost_answer_leaves_exactly_one_active_user_whose_token_we_hold(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, drop_after_commit=True, count=1)
    user, token = client(api).create_user("lost-once", None, 30)
    users = users_of(api, "lost-once")
    active = [u for u in users if u["active"]]
    assert [u["id"] for u in active] == [user["id"]]
    assert len(users) == 2  # the orphan whose token was lost, now inactive
    assert api.api("GET", f"{USERS}/token-info", token=token).json()["data"]["id"] == user["id"]


def test_replacing_an_orphan_does_not_need_retries(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, drop_after_commit=True, count=1)
    user = client(api, retries=0).create_user("no-retries", None, 30)[0]
    assert [u["id"] for u in users_of(api, "no-retries") if u["active"]] == [user["id"]]


def test_create_gives_up_after_retries_when_nothing_was_created(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, status=503, count=None)
    err = error_of(lambda: client(api, retries=2).create_user("never", None, 30))
    assert err.msg == (f"could not create system user never at {api.url.split('//')[1]} (after 2 retries) (last: "
                       "HTTP 503): nothing usable was created, re-run the task later.")
    assert route_counts(api, "POST /api/v1/system-users") == {"503": 3}
    assert users_of(api, "never") == []


def test_create_honours_retry_after(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, status=429, count=1, retry_after=1)
    started = time.monotonic()
    client(api).create_user("patient", None, 30)
    assert time.monotonic() - started >= 0.9
    assert route_counts(api, "POST /api/v1/system-users") == {"429": 1, "201": 1}


def test_create_with_two_lost_answers_fails_and_leaves_nothing_active(api: Any) -> None:
    add_fault(api, method="POST", path=USERS, drop_after_commit=True, count=2)
    err = error_of(lambda: client(api).create_user("lost-twice", None, 30))
    users = users_of(api, "lost-twice")
    assert len(users) == 2 and not any(u["active"] for u in users)
    assert sorted(err.details["orphaned_ids"]) == sorted(u["id"] for u in users)
    assert "both answers were lost" in err.msg and "re-run the task" in err.msg


def test_create_read_timeout_then_late_commit_still_ends_with_one_active_user(api: Any) -> None:
    # The first create is slow: the client gives up waiting, looks the name up (nothing yet) and
    # creates again while the first one is still in flight.
    add_fault(api, method="POST", path=USERS, latency=2.5, count=1)
    user, token = client(api, timeout=1.0).create_user("slow", None, 30)
    time.sleep(2.5)  # let the first request finish on the server
    active = [u for u in users_of(api, "slow") if u["active"]]
    assert [u["id"] for u in active] == [user["id"]]
    assert api.api("GET", f"{USERS}/token-info", token=token).status_code == 200


def test_lost_answer_never_deactivates_a_user_this_call_did_not_create(api: Any) -> None:
    existing_id = create_user(api, "theirs")[0]
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": 60}).raise_for_status()
    add_fault(api, method="POST", path=USERS, drop_after_commit=True, count=1)
    err = error_of(lambda: client(api).create_user("theirs", None, 30))
    assert f"an active system user named theirs ({existing_id}) exists that this task did not create" in err.msg
    assert [u["id"] for u in users_of(api, "theirs") if u["active"]] == [existing_id]


def test_create_conflict_is_the_apis_own_message(api: Any) -> None:
    create_user(api, "taken")
    err = error_of(lambda: client(api).create_user("taken", None, 30))
    assert err.status == 409
    assert err.msg.startswith("the platform refused to create system user taken: ")
    assert "already exists" in err.msg


# -- reads ------------------------------------------------------------------------------------


def test_list_walks_every_page(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_api, "LIST_PAGE_SIZE", 5)
    ids = [create_user(api, f"paged-{n:02d}")[0] for n in range(12)]
    listed = client(api).list_users()
    assert sorted(u["id"] for u in listed) == sorted(ids)
    assert route_counts(api, "GET /api/v1/system-users") == {"200": 3}


def test_list_by_name_and_active_filter(api: Any) -> None:
    old_id = create_user(api, "svc")[0]
    api.api("POST", f"{USERS}/{old_id}/deactivate").raise_for_status()
    new_id = create_user(api, "svc")[0]
    create_user(api, "svc-other")
    c = client(api)
    assert {u["id"] for u in c.list_users(name="svc")} == {old_id, new_id}
    assert [u["id"] for u in c.list_users(name="svc", active=True)] == [new_id]
    assert c.find_active("svc")["id"] == new_id
    assert c.find_active("nobody") is None


def test_unknown_id_is_none_for_reads_and_an_error_naming_it_for_deactivate(api: Any) -> None:
    c = client(api)
    assert c.get_user("su_000000000000000000000000") is None
    err = error_of(lambda: c.deactivate_user("su_000000000000000000000000"))
    assert err.msg == "system user su_000000000000000000000000 was not found."


def test_days_remaining_follow_the_platforms_clock(api: Any) -> None:
    user_id = create_user(api, "clocked", days=90)[0]
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": int(85.5 * 86400)}).raise_for_status()
    c = client(api)
    user = c.get_user(user_id)
    assert days_remaining(user["expires_at"], c.now()) == 4
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": 5 * 86400}).raise_for_status()
    user = c.get_user(user_id)
    assert days_remaining(user["expires_at"], c.now()) == -1
    assert is_expired(user["expires_at"], c.now())


def test_token_info_and_verify_access(api: Any) -> None:
    user_id, token = create_user(api, "self")
    c = XapiClient(api.url, None)
    assert c.token_info(token)["id"] == user_id
    c.verify_access(token)
    err = error_of(lambda: c.token_info(api.admin_token))
    assert "not a system user token" in err.msg


# -- one sentence for each failure, never a token ---------------------------------------------


def test_wrong_token_gives_the_401_sentence_without_the_token(api: Any) -> None:
    wrong = "xadm_" + "W" * 43
    err = error_of(lambda: client(api, token=wrong).list_users())
    assert err.msg.startswith("the API token was rejected: expired, deactivated or wrong")
    assert wrong not in err.msg and "WWWWWWWW" not in err.msg


def test_system_user_token_on_admin_route_names_the_missing_permission(api: Any) -> None:
    user_id, token = create_user(api, "weak")
    err = error_of(lambda: client(api, token=token).deactivate_user(user_id))
    assert err.status == 403
    assert err.msg.startswith(f"the API token is not allowed to deactivate system user {user_id}: ")
    assert "system-users:write" in err.msg
    err = error_of(lambda: client(api, token=token).list_users())
    assert err.msg.startswith("the API token is not allowed to list system users: ")
    assert "system-users:read" in err.msg
    assert token not in err.msg


def test_api_message_echoing_a_token_is_scrubbed(api: Any) -> None:
    echoed = "xsu_" + "E" * 43
    add_fault(api, method="GET", path=USERS, status=422, count=1,
              body=json.dumps({"error": {"code": "validation_failed", "message": f"bad token {echoed}"}}),
              content_type="application/json")
    err = error_of(lambda: client(api).list_users())
    assert echoed not in err.msg and "<redacted>" in err.msg


@pytest.mark.parametrize("body", ["<html><body>502 Bad Gateway</body></html>", '{"data": [', '{"items": []}'])
def test_a_body_that_is_not_the_expected_json(api: Any, body: str) -> None:
    # On the list route such an answer means "no list route" (see the capability table above);
    # on every other route it is an error.
    add_fault(api, method="GET", path=f"{USERS}/*", status=200, count=1, body=body, content_type="text/html")
    err = error_of(lambda: client(api).get_user("su_000000000000000000000000"))
    assert "with a body that is not the expected JSON (text/html)" in err.msg
    assert "not a proxy or login page" in err.msg


def test_connection_refused_names_the_host(api: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nothing listens once closed
    err = error_of(lambda: XapiClient(f"http://127.0.0.1:{port}", "t", retries=1).list_users())
    assert err.msg == (f"cannot reach the platform API at 127.0.0.1:{port}: connection refused (after 1 retry); "
                       "check api_url and that the API is up.")


def test_read_timeout_of_a_read(api: Any) -> None:
    add_fault(api, method="GET", path=USERS, latency=1.0, count=None)
    err = error_of(lambda: client(api, timeout=0.3, retries=0).list_users())
    assert "did not answer within 0.3 seconds (no retries)" in err.msg


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (None, "api_url is required: set it or the XAPI_URL environment variable."),
        ("  ", "api_url is required: set it or the XAPI_URL environment variable."),
        ("platform.example.com", "is not a valid URL"),
        ("ftp://platform.example.com", "is not a valid URL"),
        ("http://127.0.0.1:99999", "is not a valid URL"),
        ("https://platform.example.com/?x=1", "must not have a query or fragment"),
    ],
)
def test_bad_api_url(url: str | None, message: str) -> None:
    assert message in error_of(lambda: XapiClient(url, "t")).msg


def test_url_credentials_never_reach_a_message() -> None:
    err = error_of(lambda: XapiClient("ftp://user:s3cret@host", "t"))
    assert "s3cret" not in err.msg


# -- TLS ----------------------------------------------------------------------------------------


def test_tls_with_ca_path_works(tls_platform: Any) -> None:
    c = XapiClient(tls_platform.url("localhost"), tls_platform.admin_token, ca_path=tls_platform.ca_path)
    assert c.list_users() == []


def test_tls_unknown_ca_suggests_ca_path(tls_platform: Any) -> None:
    c = XapiClient(tls_platform.url("localhost"), tls_platform.admin_token, retries=0)
    err = error_of(c.list_users)
    assert err.msg.startswith(f"TLS verification of the platform API at localhost:{tls_platform.port} failed (")
    assert "set ca_path" in err.msg and "validate_certs: false" in err.msg


def test_tls_hostname_mismatch_is_a_tls_error(tls_platform: Any) -> None:
    c = XapiClient(tls_platform.url("127.0.0.1"), tls_platform.admin_token, ca_path=tls_platform.ca_path,
                   retries=0)
    err = error_of(c.list_users)
    assert "TLS verification of the platform API at 127.0.0.1:" in err.msg
    assert "mismatch" in err.msg and "use in api_url a host name the certificate was issued for" in err.msg


def test_validate_certs_false_accepts_the_mismatch(tls_platform: Any) -> None:
    c = XapiClient(tls_platform.url("127.0.0.1"), tls_platform.admin_token, validate_certs=False)
    assert c.list_users() == []


def test_https_against_a_plain_http_port(api: Any) -> None:
    err = error_of(lambda: XapiClient(api.url.replace("http://", "https://"), api.admin_token, retries=0).list_users())
    assert "does not speak TLS on that port): use http:// in api_url" in err.msg


def test_empty_ca_path_means_none_as_awx_injects_a_blank_input(api: Any) -> None:
    # AWX sets every injector variable, a blank optional input as '' (XAPI_CA_PATH='').
    assert XapiClient(api.url, api.admin_token, ca_path="").list_users() == []


def test_missing_ca_path_file() -> None:
    err = error_of(lambda: XapiClient("https://localhost:1", "t", ca_path="/nonexistent/ca.pem"))
    assert err.msg.startswith("ca_path '/nonexistent/ca.pem' cannot be read")


def test_server_clock_falls_back_to_local_time_before_any_answer() -> None:
    c = XapiClient("http://127.0.0.1:1", "t")
    assert abs(c.now() - datetime.now(UTC)) < timedelta(seconds=5)

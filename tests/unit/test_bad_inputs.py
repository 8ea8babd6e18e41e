"""Bad input: one clear sentence, no traceback, and nothing changed on the platform.

Each case runs a module as Ansible would and asserts the exact sentence (or its telling part).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.helpers import add_fault, create_user

MISSING = "su_000000000000000000000000"
WRONG_TOKEN = "xadm_" + "w" * 43


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Case:
    id: str
    module: str
    args: dict[str, Any]
    message: str
    exact: bool = False
    # Replaces XAPI_URL/XAPI_TOKEN; values may use {url}, {admin}, {port}.
    env: dict[str, str] | None = None
    # Run before the module against the sandbox; returns extra module arguments.
    setup: Callable[[Any], dict[str, Any]] | None = None
    tls: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def _expired_token(api: Any) -> dict[str, Any]:
    token = create_user(api, "expiring", days=1)[1]
    api.api("POST", "/_sandbox/clock", json={"advance_seconds": 2 * 86400}).raise_for_status()
    return {"token": token}


def _service_token_as_admin(api: Any) -> dict[str, Any]:
    token = create_user(api, "service")[1]
    return {"api_token": token}


def _deactivated_token(api: Any) -> dict[str, Any]:
    user_id, token = create_user(api, "retired")
    api.api("POST", f"/api/v1/system-users/{user_id}/deactivate").raise_for_status()
    return {"token": token}


def _html_page(api: Any) -> dict[str, Any]:
    # A sign-in page in front of the whole API (an HTML page on the list route alone means "no list route").
    add_fault(api, method="*", path="/api/v1/*", status=200, count=None,
              body="<html><head><title>Sign in</title></head><body>SSO</body></html>", content_type="text/html")
    return {}


def _truncated_json(api: Any) -> dict[str, Any]:
    add_fault(api, method="GET", path="/api/v1/system-users", status=200, count=None,
              body='{"data": [{"id": "su_1', content_type="application/json")
    return {}


def _persistent_503(api: Any) -> dict[str, Any]:
    add_fault(api, method="GET", path="/api/v1/system-users", status=503, count=None)
    return {}


def _proxy_404_html(api: Any) -> dict[str, Any]:
    # A proxy that serves none of the API (a 404 on the list route alone means "no list route").
    add_fault(api, method="*", path="/api/v1/*", status=404, count=None,
              body="<html>Not Found</html>", content_type="text/html")
    return {}


CASES = [
    Case("missing-url", "system_user", {"name": "x"},
         "api_url is required: set it or the XAPI_URL environment variable.", exact=True,
         env={"XAPI_TOKEN": "{admin}"}),
    Case("malformed-url", "system_user", {"name": "x", "api_url": "platform example com"},
         "api_url 'platform example com' is not a valid URL: use http(s)://host[:port], for example "
         "https://platform.example.com.", exact=True),
    Case("url-without-scheme", "system_user_info", {"api_url": "127.0.0.1:8080"}, "is not a valid URL"),
    Case("url-bad-port", "system_user_info", {"api_url": "http://127.0.0.1:70000"}, "is not a valid URL"),
    Case("missing-token", "system_user", {"name": "x"},
         "api_token is required: set it or the XAPI_ADMIN_TOKEN (or XAPI_TOKEN) environment variable.", exact=True,
         env={"XAPI_URL": "{url}"}),
    Case("expires-zero", "system_user", {"name": "x", "expires_in_days": 0},
         "expires_in_days must be between 1 and 365, got 0: choose a lifetime in days within that range.",
         exact=True),
    Case("expires-negative", "system_user", {"name": "x", "expires_in_days": -5},
         "expires_in_days must be between 1 and 365, got -5"),
    Case("expires-huge", "system_user", {"name": "x", "expires_in_days": 100000},
         "expires_in_days must be between 1 and 365, got 100000"),
    Case("expires-not-a-number", "system_user", {"name": "x", "expires_in_days": "ninety"},
         "argument 'expires_in_days' is of type str and we were unable to convert to int"),
    Case("empty-name", "system_user", {"name": ""},
         "name must not be empty: give the system user's name.", exact=True),
    Case("blank-name", "system_user", {"name": "   "}, "name must not be empty"),
    Case("name-bad-characters", "system_user", {"name": "billing service/v2"},
         "name 'billing service/v2' is not a valid system user name: use 1 to 128 letters, digits, '.', '_' "
         "or '-'.", exact=True),
    Case("name-too-long", "system_user", {"name": "n" * 129},
         "name 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'... (129 characters) is not a valid system user name"),
    Case("unknown-state", "system_user", {"name": "x", "state": "absent"},
         "value of state must be one of: present, got: absent"),
    Case("unknown-id", "system_user_deactivate", {"id": MISSING},
         f"system user {MISSING} was not found: check the id, or set missing_ok: true if it may already be gone.",
         exact=True),
    Case("empty-id", "system_user_deactivate", {"id": ""}, "id must not be empty"),
    Case("id-with-slash", "system_user_deactivate", {"id": "su_1/../../tenants"},
         "is not a system user id: ids contain no '/' or spaces."),
    Case("wrong-token", "system_user", {"name": "x", "api_token": WRONG_TOKEN},
         "the API token was rejected: expired, deactivated or wrong"),
    Case("expired-token-lookup", "system_user_info", {}, "the API token was rejected: expired, deactivated or wrong",
         setup=_expired_token, env={"XAPI_URL": "{url}"}),
    Case("deactivated-token-lookup", "system_user_info", {},
         "the API token was rejected: expired, deactivated or wrong", setup=_deactivated_token,
         env={"XAPI_URL": "{url}"}),
    Case("admin-token-as-service-token", "system_user_info", {"token": "{admin}"},
         "the token given is not a system user token"),
    Case("service-token-as-admin", "system_user", {"name": "x"},
         "the API token is not allowed to list system users: ", setup=_service_token_as_admin),
    Case("html-page", "system_user", {"name": "x"},
         "with a body that is not the expected JSON (text/html): check that api_url points at the platform API "
         "itself, not a proxy or login page.", setup=_html_page),
    Case("truncated-json", "system_user_info", {"name": "x"},
         "with a body that is not the expected JSON (application/json)", setup=_truncated_json),
    Case("5xx-after-retries", "system_user", {"name": "x", "retries": 1},
         "answered HTTP 503 to GET /api/v1/system-users after 1 retry: ", setup=_persistent_503),
    Case("wrong-base-path", "system_user", {"name": "x"},
         "has no POST /api/v1/system-users (HTTP 404): check that api_url is the platform's base URL.",
         setup=_proxy_404_html),
    Case("connection-refused", "system_user", {"name": "x", "api_url": "http://127.0.0.1:{port}", "retries": 0},
         "cannot reach the platform API at 127.0.0.1:{port}: connection refused (no retries); check api_url and "
         "that the API is up.", exact=True),
    Case("https-to-http-port", "system_user", {"name": "x", "api_url": "{https_url}", "retries": 0},
         "TLS with the platform API at 127.0.0.1:{api_port} failed (the server does not speak TLS on that port): "
         "use http:// in api_url, or the port that serves HTTPS.", exact=True),
    Case("tls-hostname-mismatch", "system_user", {"name": "x", "api_url": "{tls_ip_url}", "ca_path": "{tls_ca}"},
         "TLS verification of the platform API at 127.0.0.1:{tls_port} failed (IP address mismatch, certificate is "
         "not valid for '127.0.0.1'): use in api_url a host name the certificate was issued for, or "
         "validate_certs: false only for a test system.", exact=True, tls=True),
    Case("tls-unknown-ca", "system_user", {"name": "x", "api_url": "{tls_url}", "retries": 0},
         "TLS verification of the platform API at localhost:{tls_port} failed (self-signed certificate in certificate "
         "chain): set ca_path to the CA certificate that signed the server's certificate, or validate_certs: false "
         "only for a test system.", exact=True, tls=True),
    Case("ca-path-missing", "system_user", {"name": "x", "ca_path": "/nonexistent/ca.pem"},
         "ca_path '/nonexistent/ca.pem' cannot be read"),
    Case("negative-timeout", "system_user_info", {"timeout": -1},
         "timeout must be a positive number of seconds, got -1.", exact=True),
    Case("too-many-retries", "system_user_info", {"retries": 50}, "retries must be between 0 and 10, got 50."),
    Case("verify-without-token", "system_user_info", {"verify_access": True},
         "verify_access and wait_timeout apply to token lookups only: also set token or tokens.", exact=True),
    Case("id-and-name", "system_user_info", {"id": [MISSING], "name": "x"}, "parameters are mutually exclusive"),
    # The list options: every item is checked before the first call.
    Case("users-and-name", "system_user", {"name": "x", "users": [{"name": "y"}]},
         "parameters are mutually exclusive: name|users", exact=True),
    Case("neither-name-nor-users", "system_user", {}, "one of the following is required: name, users", exact=True),
    Case("users-and-description", "system_user", {"users": [{"name": "y"}], "description": "d"},
         "parameters are mutually exclusive: users|description", exact=True),
    Case("users-item-without-name", "system_user", {"users": [{"name": "a"}, {"description": "d"}]},
         "missing required arguments: name found in users"),
    Case("users-bad-name", "system_user", {"users": [{"name": "a"}, {"name": "b/c"}]},
         "users[1].name 'b/c' is not a valid system user name: use 1 to 128 letters, digits, '.', '_' or '-'.",
         exact=True),
    Case("users-bad-expiry", "system_user", {"users": [{"name": "a", "expires_in_days": 0}, {"name": "b"}]},
         "users[0] (a): expires_in_days must be between 1 and 365, got 0: choose a lifetime in days within that "
         "range.", exact=True),
    Case("users-duplicate", "system_user", {"users": [{"name": "a"}, {"name": "b"}, {"name": " a "}]},
         "users[2] repeats the name a of users[0]: list each system user once.", exact=True),
    Case("users-bad-item-with-wrong-token", "system_user",
         {"users": [{"name": "a"}, {"name": ""}], "api_token": WRONG_TOKEN},
         "users[1].name must not be empty: give the system user's name.", exact=True),
    Case("tokens-empty-item", "system_user_info", {"tokens": ["xsu_" + "e" * 43, ""]},
         "tokens[1] is empty: pass each system user's token, and leave out services that have none.", exact=True,
         env={"XAPI_URL": "{url}"}),
    Case("tokens-and-id", "system_user_info", {"tokens": ["xsu_" + "e" * 43], "id": [MISSING]},
         "parameters are mutually exclusive: id|name|token|tokens", exact=True),
    Case("ids-and-id", "system_user_deactivate", {"id": MISSING, "ids": [MISSING]},
         "parameters are mutually exclusive: id|ids", exact=True),
    Case("neither-id-nor-ids", "system_user_deactivate", {}, "one of the following is required: id, ids", exact=True),
    Case("ids-bad-id", "system_user_deactivate", {"ids": [MISSING, "su_1 su_2"]},
         "ids[1] 'su_1 su_2' is not a system user id: ids contain no '/' or spaces.", exact=True),
    Case("ids-empty-id", "system_user_deactivate", {"ids": [MISSING, " "]},
         "ids[1] must not be empty: give a system user id such as su_0123abcd.", exact=True),
]


def _fill(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in subs.items():
            value = value.replace("{" + key + "}", sub)
    return value


def _users(api: Any) -> list[dict[str, Any]]:
    # last_used_at records that a token was presented, which a refused call still does.
    return [{k: v for k, v in u.items() if k != "last_used_at"} for u in api.state()["system_users"]]


def test_there_are_at_least_15_cases() -> None:
    assert len(CASES) >= 15 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, api: Any, run_module: Any, witness: Any, request: pytest.FixtureRequest) -> None:
    subs = {"url": api.url, "admin": api.admin_token, "port": str(_closed_port()),
            "https_url": api.url.replace("http://", "https://"), "api_port": api.url.rsplit(":", 1)[1]}
    if case.tls:
        tls = request.getfixturevalue("tls_platform")
        subs.update(tls_url=tls.url("localhost"), tls_ip_url=tls.url("127.0.0.1"), tls_ca=tls.ca_path,
                    tls_port=str(tls.port))
    args = {k: _fill(v, subs) for k, v in case.args.items()}
    if case.setup:
        args.update(case.setup(api))
    witness.add(*(v for v in args.values() if isinstance(v, str) and v.startswith(("xsu_", "xadm_"))))
    before = _users(api)

    env = None if case.env is None else {k: _fill(v, subs) for k, v in case.env.items()}
    run = run_module(case.module, args, env=env, connection=case.env is None)

    assert run.rc == 1 and run.failed, run.stdout
    expected = _fill(case.message, subs)
    if case.exact:
        assert run.msg == expected
    else:
        assert expected in run.msg
    # One sentence: no line breaks, no Python exception text.
    assert "\n" not in run.msg and "Traceback" not in run.msg and "Error(" not in run.msg
    assert "exception" not in run.result
    assert _users(api) == before

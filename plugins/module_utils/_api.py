# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one client of the platform's System Users API, shared by every module of the collection.

Internal to xapi.system_auth (leading underscore): no compatibility promise to other collections.
Everything that knows about HTTP, the ``{"data": ...}`` envelope, retries, error wording, dates and
token fingerprints lives here, so the modules only declare options and call one function.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.errors import AnsibleFallbackNotFound

REQUESTS_IMPORT_ERROR: str | None = None
try:
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry
except ImportError:
    REQUESTS_IMPORT_ERROR = traceback.format_exc()

# datetime.UTC is Python 3.11+; modules may run on older target interpreters.
UTC = timezone.utc  # noqa: UP017

DATEUTIL_IMPORT_ERROR: str | None = None
try:
    from dateutil.parser import isoparse
    from dateutil.parser import parse as parse_http_date
except ImportError:
    DATEUTIL_IMPORT_ERROR = traceback.format_exc()

COLLECTION_VERSION = "0.1.0"
USER_AGENT = f"xapi.system_auth/{COLLECTION_VERSION} (+ansible)"

API_PREFIX = "/api/v1"
USERS_PATH = f"{API_PREFIX}/system-users"

# Answers that mean "the server did not do it, or a proxy lost the answer; asking again is fine"
# for an idempotent request. 429 and 503 may carry Retry-After, which urllib3 honours.
RETRYABLE_STATUSES = (429, 502, 503, 504)
BACKOFF_FACTOR = 0.5
BACKOFF_MAX = 30.0
# A Retry-After above this is treated as this: an unattended 2 AM run should fail in minutes,
# not hang for hours on a misconfigured proxy.
RETRY_AFTER_MAX = 60
LIST_PAGE_SIZE = 100
MAX_PAGES = 1000  # 100,000 users: beyond that, a paging bug on the server rather than a real list
CLOCK_SLACK_SECONDS = 2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
EXPIRES_IN_DAYS_RANGE = (1, 365)
# Requests in flight at once for the list options (ids, users, tokens): enough to hide the
# latency of a fleet's calls, few enough not to look like a flood to the platform.
MAX_CONCURRENCY = 16

# Where api_token comes from when the task does not set it, first one set and not empty wins.
# XAPI_ADMIN_TOKEN first: it is what AWX's credential type injects, and a stray XAPI_TOKEN in an
# operator's shell (often a service's own token) must not silently replace it.
TOKEN_ENV = ("XAPI_ADMIN_TOKEN", "XAPI_TOKEN")
MISSING_TOKEN = "api_token is required: set it or the XAPI_ADMIN_TOKEN (or XAPI_TOKEN) environment variable."

# Answers of the list route that mean "this platform has no list route" rather than a failure.
NO_LIST_STATUSES = (404, 405, 501)
# The name the capability probe filters by: valid, and not one anybody gives a credential.
PROBE_NAME = "xapi-system-auth-capability-probe"

# Both token kinds of the platform, so that a token echoed by a proxy or by the API itself is
# scrubbed from messages even when this process never held it.
_TOKEN_PATTERN = re.compile(r"\bx(?:su|adm)_[A-Za-z0-9_-]{8,}")
_BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
REDACTED = "<redacted>"


class XapiError(Exception):
    """An expected failure, worded as one sentence for the operator.

    ``details`` are extra keys for the module result (e.g. ids an operator must act on). They hold no
    token, except the per-item ``results`` of system_user's list form, which carry the tokens of the
    users created before another item failed (its action plugin hides such a result).
    """

    def __init__(self, msg: str, status: int | None = None, code: str | None = None, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.status = status
        self.code = code
        self.details = details


class NoListRoute(XapiError):
    """The platform serves no list route, so a lookup by name (or a listing) cannot be made."""


class Capabilities:
    """What the platform was seen to serve, learned at first use and kept for the client's life.

    A module run is one process with one client, so "for the client" is "for the process". ``list``
    and ``name_filter`` are None until the list route was asked; ``fields`` are the keys of the user
    objects the platform sent so far (never ``token``), in the order first seen.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.list: bool | None = None
        self.name_filter: bool | None = None
        # Why there is no list route, for the sentence that says so: "HTTP 405", ...
        self.no_list_reason = ""
        self.fields: list[str] = []

    def note_fields(self, user: Any) -> None:
        if not isinstance(user, dict):
            return
        with self.lock:
            for key in user:
                if key != "token" and key not in self.fields:
                    self.fields.append(key)

    def as_result(self) -> dict[str, Any]:
        with self.lock:
            return {"list": self.list, "name_filter": self.name_filter, "fields": list(self.fields)}


class _OutcomeUnknown(Exception):
    """A create was sent but its answer never arrived (or was a proxy's 5xx): it may have happened."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


# ---------------------------------------------------------------------------------------------
# Tokens, dates


def fingerprint(token: str) -> str:
    """The only form of a token allowed in output, logs and audit records."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove every token this process knows, and anything shaped like a platform token."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_PATTERN.sub(REDACTED, text)
    return _BEARER_PATTERN.sub(lambda m: m.group(1) + REDACTED, text)


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp of the API as an aware UTC datetime."""
    parsed = isoparse(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def days_remaining(expires_at: str | datetime, now: datetime | None = None) -> int:
    """Whole days until expiry, rounded down; negative once expired.

    The one place this is computed, so the module results, the role's decisions and the audit
    records can never disagree by a day.
    """
    expiry = parse_time(expires_at) if isinstance(expires_at, str) else expires_at
    moment = now or datetime.now(UTC)
    return math.floor((expiry - moment).total_seconds() / 86400)


def is_expired(expires_at: str | datetime, now: datetime | None = None) -> bool:
    expiry = parse_time(expires_at) if isinstance(expires_at, str) else expires_at
    return (now or datetime.now(UTC)) >= expiry


def is_active(user: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether a user is active: its own ``active`` field when the platform sends one.

    A platform whose objects carry no ``active`` (the reference document shows none) gets the
    answer from what it does send: inactive once ``deactivated_at`` is set or ``expires_at`` has
    passed (expiry deactivates by itself), else active.
    """
    if "active" in user:
        return bool(user["active"])
    if user.get("deactivated_at"):
        return False
    expires_at = user.get("expires_at")
    if expires_at:
        try:
            return not is_expired(str(expires_at), now)
        except (ValueError, OverflowError):
            return True
    return True


def describe_user(user: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The API object plus the derived fields every module returns; never a token.

    ``days_remaining`` and ``expired`` come from ``expires_at``; ``active`` is added (see
    :func:`is_active`) when the platform's object has none. No other missing field is made up:
    ``capabilities`` says which fields the platform really sends.
    """
    described = {key: value for key, value in user.items() if key != "token"}
    expires_at = user.get("expires_at")
    if expires_at:
        described["days_remaining"] = days_remaining(expires_at, now)
        described["expired"] = is_expired(expires_at, now)
    else:
        described["days_remaining"] = None
        described["expired"] = False
    if "active" not in described:
        described["active"] = is_active(user, now)
    return described


# ---------------------------------------------------------------------------------------------
# Options shared by every module (documented once in plugins/doc_fragments/api.py)


def first_set_env(*names: str) -> str:
    """The value of the first of ``names`` that is set and not empty (an argument spec fallback).

    Unlike env_fallback, an empty variable does not hide the next one: AWX injects an optional
    credential field left blank as ''.
    """
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    raise AnsibleFallbackNotFound


def connection_argument_spec() -> dict[str, Any]:
    return {
        "api_url": {"type": "str", "fallback": (env_fallback, ["XAPI_URL"])},
        "api_token": {"type": "str", "no_log": True, "fallback": (first_set_env, list(TOKEN_ENV))},
        "validate_certs": {"type": "bool", "default": True},
        "ca_path": {"type": "path", "fallback": (env_fallback, ["XAPI_CA_PATH"])},
        "timeout": {"type": "float", "default": 30},
        "retries": {"type": "int", "default": 3},
    }


def validate_expires_in_days(value: int) -> None:
    low, high = EXPIRES_IN_DAYS_RANGE
    if not low <= value <= high:
        raise XapiError(f"expires_in_days must be between {low} and {high}, got {value}: choose a lifetime in days "
                        "within that range.")


def validate_name(value: str | None, option: str = "name") -> str:
    name = (value or "").strip()
    if not name:
        raise XapiError(f"{option} must not be empty: give the system user's name.")
    if not NAME_PATTERN.match(name):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise XapiError(f"{option} {shown} is not a valid system user name: use 1 to 128 letters, digits, '.', "
                        "'_' or '-'.")
    return name


def validate_id(value: str | None, option: str = "id") -> str:
    user_id = (value or "").strip()
    if not user_id:
        raise XapiError(f"{option} must not be empty: give a system user id such as su_0123abcd.")
    if "/" in user_id or any(ch.isspace() for ch in user_id):
        raise XapiError(f"{option} {user_id!r} is not a system user id: ids contain no '/' or spaces.")
    return user_id


def _validated_base_url(raw: str | None) -> str:
    if raw is None or not raw.strip():
        raise XapiError("api_url is required: set it or the XAPI_URL environment variable.")
    url = raw.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise XapiError(f"api_url {_display_url(url)!r} is not a valid URL: use http(s)://host[:port], "
                        "for example https://platform.example.com.")
    if parts.query or parts.fragment:
        raise XapiError(f"api_url {_display_url(url)!r} must not have a query or fragment: give only the base "
                        "URL of the platform.")
    return url.rstrip("/")


def _display_url(url: str) -> str:
    """A URL without any user:password part, safe for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
    return redact(parts.geturl())


# ---------------------------------------------------------------------------------------------
# The client


def _retry(**options: Any) -> Retry:
    """A urllib3 Retry with the options this urllib3 knows.

    backoff_max (urllib3 2.0) and retry_after_max (2.6) are refinements; an older urllib3 on a
    controller still gets retries, with its own defaults for those two.
    """
    known = inspect.signature(Retry.__init__).parameters
    return Retry(**{key: value for key, value in options.items() if key in known})


class XapiClient:
    """One requests.Session talking to one platform, with the retry policy of the collection.

    Idempotent requests (every GET, and deactivate) are retried by urllib3 on connection errors and
    on 429/502/503/504 with exponential backoff, honouring Retry-After. Create is never retried by
    urllib3 once sent: :meth:`create_user` looks the name up before deciding to send it again.
    """

    def __init__(
        self,
        api_url: str,
        api_token: str | None,
        *,
        validate_certs: bool = True,
        ca_path: str | None = None,
        timeout: float = 30,
        retries: int = 3,
        pool_maxsize: int = 10,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = _validated_base_url(api_url)
        parts = urlsplit(self.base_url)
        self.host = parts.netloc.rsplit("@", 1)[-1]
        self.api_token = api_token
        self.timeout = timeout
        self.retries = retries
        self._secrets = {s for s in (api_token, *secrets) if s}
        self._sleep = sleep
        # The server's clock when it last answered: expiry arithmetic follows the platform, not
        # the controller, whose clock may be skewed (and the sandbox's clock can be moved).
        self._server_clock: tuple[datetime, float] | None = None
        self.caps = Capabilities()
        self._probe_lock = threading.Lock()
        # name -> ids of the active users of that name at the last lookup (see create_user).
        self._active_seen: dict[str, set[str]] = {}

        if timeout <= 0:
            raise XapiError(f"timeout must be a positive number of seconds, got {timeout:g}.")
        if retries < 0 or retries > 10:
            raise XapiError(f"retries must be between 0 and 10, got {retries}.")
        # AWX injects every variable of a credential type, an optional one left blank as '':
        # an empty XAPI_CA_PATH means "no CA bundle", not a file named ''.
        ca_path = ca_path or None
        if ca_path is not None:
            try:
                with open(ca_path, "rb"):
                    pass
            except OSError:
                raise XapiError(f"ca_path {ca_path!r} cannot be read: give the path of a PEM file holding the CA "
                                "that signed the platform's certificate.") from None

        self.session = requests.Session()
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        # verify=ca_path pins the CA; False only when the operator explicitly turned checks off.
        # Passed with every request, not set on the session: requests lets REQUESTS_CA_BUNDLE
        # override a session's verify, which would silently ignore ca_path or validate_certs.
        self._verify: bool | str = ca_path if (validate_certs and ca_path) else bool(validate_certs)
        # Environment proxies still apply (trust_env stays on); the Authorization header is set
        # per request, which also keeps a .netrc entry from replacing it.

        idempotent = HTTPAdapter(
            max_retries=_retry(
                total=retries,
                connect=retries,
                read=retries,
                status=retries,
                other=0,
                allowed_methods=frozenset({"GET", "POST"}),
                status_forcelist=RETRYABLE_STATUSES,
                backoff_factor=BACKOFF_FACTOR,
                backoff_max=BACKOFF_MAX,
                respect_retry_after_header=True,
                retry_after_max=RETRY_AFTER_MAX,
                raise_on_status=False,
                raise_on_redirect=False,
            ),
            pool_connections=1,
            pool_maxsize=max(pool_maxsize, 1),
        )
        # The create endpoint only: a connection that was never established can be retried
        # (nothing was sent), anything after sending is decided by create_user itself.
        create_once = HTTPAdapter(
            max_retries=_retry(
                total=retries,
                connect=retries,
                read=0,
                status=0,
                other=0,
                # POST is not listed: urllib3 never repeats a create once it may have been sent.
                allowed_methods=frozenset({"GET"}),
                backoff_factor=BACKOFF_FACTOR,
                backoff_max=BACKOFF_MAX,
                raise_on_status=False,
                raise_on_redirect=False,
            ),
            pool_connections=1,
            # One connection per concurrent create: the list form of system_user sends several at once.
            pool_maxsize=max(pool_maxsize, 1),
        )
        # requests picks the adapter with the longest matching prefix: the create URL is exactly
        # USERS_PATH, while ids and list queries continue with "/" or "?".
        self.session.mount(self.base_url + "/", idempotent)
        self.session.mount(self.base_url + USERS_PATH, create_once)
        self.session.mount(self.base_url + USERS_PATH + "/", idempotent)
        self.session.mount(self.base_url + USERS_PATH + "?", idempotent)

    # -- plumbing ---------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def now(self) -> datetime:
        """The platform's current time, as last reported in its Date header, else this host's."""
        if self._server_clock is None:
            return datetime.now(UTC)
        server_time, local_mono = self._server_clock
        return server_time + timedelta(seconds=time.monotonic() - local_mono)

    def _note_server_clock(self, response: requests.Response) -> None:
        header = response.headers.get("Date")
        if not header:
            return
        try:
            server_time = parse_http_date(header)
        except (ValueError, OverflowError):
            return
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        self._server_clock = (server_time.astimezone(UTC), time.monotonic())

    def _send(self, method: str, path: str, *, token: str | None = None, json: Any = None,
              params: dict[str, Any] | None = None) -> requests.Response:
        """One request (urllib3 retries included); transport failures become XapiError.

        A create's read failure is re-raised as _OutcomeUnknown for create_user to resolve.
        """
        bearer = token if token is not None else self.api_token
        if not bearer:
            raise XapiError(MISSING_TOKEN)
        self._secrets.add(bearer)
        headers = {"Authorization": f"Bearer {bearer}"}
        url = self.base_url + path
        try:
            response = self.session.request(method, url, headers=headers, json=json, params=params,
                                            timeout=self.timeout, verify=self._verify, allow_redirects=False)
        except requests.exceptions.SSLError as exc:
            raise XapiError(self._tls_message(exc)) from None
        except requests.exceptions.ConnectTimeout:
            raise XapiError(f"cannot reach the platform API at {self.host}: the connection timed out "
                            f"{self._attempts()}; check api_url and the network path.") from None
        except requests.exceptions.ReadTimeout:
            if self._is_create(method, path):
                raise _OutcomeUnknown(f"no answer within {self.timeout:g}s") from None
            raise XapiError(f"the platform API at {self.host} did not answer within {self.timeout:g} seconds "
                            f"{self._attempts()}; raise timeout or check the platform's health.") from None
        except requests.exceptions.ConnectionError as exc:
            if self._never_connected(exc):
                raise XapiError(f"cannot reach the platform API at {self.host}: {self._connect_reason(exc)} "
                                f"{self._attempts()}; check api_url and that the API is up.") from None
            if self._is_create(method, path):
                raise _OutcomeUnknown("the connection closed before the answer arrived") from None
            if self._timed_out_reading(exc):
                raise XapiError(f"the platform API at {self.host} did not answer within {self.timeout:g} seconds "
                                f"{self._attempts()}; raise timeout or check the platform's health.") from None
            raise XapiError(f"the platform API at {self.host} closed the connection without answering "
                            f"{self._attempts()}; check the platform's health or a proxy in between.") from None
        except requests.exceptions.RequestException as exc:
            # Invalid URLs and the like; the exception text names the URL, never a header.
            raise XapiError(f"the request to the platform API at {self.host} failed: "
                            f"{self.redact(type(exc).__name__)}.") from None
        self._note_server_clock(response)
        return response

    def _attempts(self) -> str:
        return "(no retries)" if self.retries == 0 else f"(after {self._retries_text()})"

    def _retries_text(self) -> str:
        return "1 retry" if self.retries == 1 else f"{self.retries} retries"

    @staticmethod
    def _is_create(method: str, path: str) -> bool:
        return method == "POST" and path == USERS_PATH

    @staticmethod
    def _causes(exc: BaseException) -> list[str]:
        """Type names along the chain requests -> urllib3 -> socket, outermost first."""
        names: list[str] = []
        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            names.append(type(current).__name__)
            reason = getattr(current, "reason", None)
            nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
            if isinstance(reason, BaseException):
                current = reason
            elif nested:
                current = nested[0]
            else:
                current = current.__cause__ or current.__context__
        return names

    def _never_connected(self, exc: BaseException) -> bool:
        """True when the TCP connection was never made, so the request cannot have been carried out."""
        return any(n in ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError") for n in self._causes(exc))

    def _timed_out_reading(self, exc: BaseException) -> bool:
        # urllib3 wraps a read timeout in MaxRetryError once retries are spent, which requests
        # reports as ConnectionError rather than ReadTimeout.
        return "ReadTimeoutError" in self._causes(exc)

    def _connect_reason(self, exc: Exception) -> str:
        text = str(exc)
        if "Name or service not known" in text or "NameResolutionError" in text or "nodename nor servname" in text:
            return "the host name does not resolve"
        if "Connection refused" in text:
            return "connection refused"
        if "timed out" in text:
            return "the connection timed out"
        if "Network is unreachable" in text or "No route to host" in text:
            return "no route to the host"
        return "the connection failed"

    def _tls_message(self, exc: Exception) -> str:
        text = str(exc)
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return (f"TLS with the platform API at {self.host} failed (the server does not speak TLS on that port): "
                    "use http:// in api_url, or the port that serves HTTPS.")
        match = re.search(r"certificate verify failed: (.+?)\.? \(_ssl", text)
        reason = redact(match.group(1).strip()) if match else "the TLS handshake failed"
        if "mismatch" in reason or "doesn't match" in reason:
            return (f"TLS verification of the platform API at {self.host} failed ({reason}): use in api_url a host "
                    "name the certificate was issued for, or validate_certs: false only for a test system.")
        return (f"TLS verification of the platform API at {self.host} failed ({reason}): set ca_path to the CA "
                "certificate that signed the server's certificate, or validate_certs: false only for a test system.")

    def _decode(self, response: requests.Response, want: type) -> Any:
        """The ``data`` member of a JSON envelope, or one sentence about what came instead."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("data"), want):
            kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip()
            raise XapiError(
                f"the platform API at {self.host} answered HTTP {response.status_code} to {response.request.method} "
                f"{self._path_of(response)} with a body that is not the expected JSON ({kind}): check that api_url "
                "points at the platform API itself, not a proxy or login page.", status=response.status_code)
        return body["data"]

    def _path_of(self, response: requests.Response) -> str:
        url = response.request.url or ""
        path = url[len(self.base_url):] if url.startswith(self.base_url) else urlsplit(url).path
        return self.redact(path.split("?", 1)[0])

    def _api_message(self, response: requests.Response) -> tuple[str | None, str | None]:
        """The API's own error code and message, if the body is the documented error object."""
        try:
            body = response.json()
        except ValueError:
            return None, None
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return None, None
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if message:
            # One sentence, bounded, scrubbed: this text came from the network.
            message = self.redact(" ".join(message.split()))[:300].rstrip(".")
        return code, message

    def _fail(self, response: requests.Response, *, what: str, not_found: str | None = None) -> XapiError:
        """The one sentence for an unexpected status."""
        status = response.status_code
        code, message = self._api_message(response)
        route = f"{response.request.method} {self._path_of(response)}"
        if status == 401:
            text = "the API token was rejected: expired, deactivated or wrong"
            if message:
                text += f" (the API said: {message})"
            return XapiError(text + ".", status=status, code=code)
        if status == 403:
            if message:
                return XapiError(f"the API token is not allowed to {what}: {message}.", status=status, code=code)
            return XapiError(f"the API token is not allowed to {what} (HTTP 403 without a reason): use a token "
                             "with the platform's system-users permissions.", status=status, code=code)
        if status == 404:
            if not_found and (code == "not_found" or message):
                return XapiError(not_found + ".", status=status, code=code)
            return XapiError(f"the platform API at {self.host} has no {route} (HTTP 404): check that api_url is the "
                             "platform's base URL.", status=status, code=code)
        if status in (400, 409, 422) and message:
            return XapiError(f"the platform refused to {what}: {message}.", status=status, code=code)
        if status >= 500 or status == 429:
            tried = "" if self.retries == 0 else f" after {self._retries_text()}"
            detail = f": {message}" if message else ""
            return XapiError(f"the platform API at {self.host} answered HTTP {status} to {route}{tried}{detail}; "
                             "try again later or check the platform's health.", status=status, code=code)
        if 300 <= status < 400:
            target = _display_url(response.headers.get("Location") or "").split("?", 1)[0] or "elsewhere"
            return XapiError(f"the platform API at {self.host} redirects {route} to {target} (HTTP {status}): put the "
                             "URL the platform really serves in api_url, for example with https://.",
                             status=status, code=code)
        detail = f": {message}" if message else ""
        return XapiError(f"the platform API at {self.host} answered HTTP {status} to {route}{detail}.",
                         status=status, code=code)

    # -- the API ------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        """The system user with that id, or None when the platform does not know it."""
        user_id = validate_id(user_id)
        response = self._send("GET", f"{USERS_PATH}/{quote(user_id, safe='')}")
        if response.status_code == 404:
            code = self._api_message(response)[0]
            if code == "not_found":
                return None
        if response.status_code != 200:
            raise self._fail(response, what=f"read system user {user_id}", not_found=f"system user {user_id} was "
                             "not found")
        return self._user(response)

    # -- capabilities ---------------------------------------------------------------------------

    def _user(self, response: requests.Response) -> dict[str, Any]:
        """The user object of a success answer, its fields noted in the capabilities."""
        user = self._decode(response, dict)
        self.caps.note_fields(user)
        return user

    def _no_list(self, reason: str) -> None:
        with self.caps.lock:
            self.caps.list = False
            self.caps.name_filter = False
            self.caps.no_list_reason = reason

    def _list_page(self, response: requests.Response, name: str | None) -> tuple[list[dict[str, Any]], Any] | None:
        """One page of the list route and its ``meta``, or None when the answer means there is no list route.

        404, 405 and 501, an HTML (or other non-JSON) page in place of a success, and a success that
        is not the documented list (``data`` a list, with ``meta``) all mean "no list route": then a
        lookup by name is impossible, not failed. Every other status is an error as anywhere else,
        and so is a body that says it is JSON but does not parse (a broken answer, not another route).
        """
        status = response.status_code
        if status in NO_LIST_STATUSES:
            self._no_list(f"HTTP {status}")
            return None
        if status != 200:
            raise self._fail(response, what="list system users")
        kind = (response.headers.get("Content-Type") or "no content type").split(";")[0].strip().lower()
        try:
            body = response.json()
        except ValueError:
            if kind == "application/json" or kind.endswith("+json"):
                self._decode(response, list)  # raises the sentence about a body that is not the expected JSON
            body = None
        if not isinstance(body, dict):
            self._no_list(f"HTTP 200 with {kind} instead of the JSON list")
            return None
        batch, meta = body.get("data"), body.get("meta")
        if not isinstance(batch, list) or not isinstance(meta, dict):
            self._no_list("HTTP 200 without the documented list and its meta")
            return None
        users = [u for u in batch if isinstance(u, dict)]
        for user in users:
            self.caps.note_fields(user)
        with self.caps.lock:
            self.caps.list = True
            if name is not None:
                if any(u.get("name") != name for u in users):
                    self.caps.name_filter = False
                elif self.caps.name_filter is None:
                    self.caps.name_filter = True
        return users, meta

    def no_list_message(self, purpose: str) -> str:
        """The sentence for a lookup that needs the list route this platform does not serve."""
        return (f"{purpose} needs the platform's list route, which it does not serve "
                f"({self.caps.no_list_reason or 'no list route'}); look the credential up by id or token instead.")

    def can_list(self) -> bool:
        """Whether the platform serves the list route; asked once (one small request), then known."""
        with self._probe_lock:
            if self.caps.list is None:
                response = self._send("GET", USERS_PATH, params={"name": PROBE_NAME, "page": 1, "per_page": 1})
                self._list_page(response, PROBE_NAME)
        return bool(self.caps.list)

    def capabilities(self, probe: bool = True) -> dict[str, Any]:
        """``{"list", "name_filter", "fields"}`` as learned so far.

        With ``probe``, an unknown list route is asked first, when there is an admin token to ask with.
        """
        if probe and self.caps.list is None and self.api_token:
            self.can_list()
        return self.caps.as_result()

    # -- the API, continued -------------------------------------------------------------------

    def list_users(self, name: str | None = None, active: bool | None = None,
                   purpose: str = "listing system users") -> list[dict[str, Any]]:
        """Every system user (of that name, with that state), newest first, across all pages.

        The filters are applied here as well, so a platform that ignores one still gives the right
        answer. Raises NoListRoute (with ``purpose`` in its sentence) on a platform without the route.
        """
        if self.caps.list is False:
            raise NoListRoute(self.no_list_message(purpose))
        users: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "per_page": LIST_PAGE_SIZE}
            if name is not None:
                params["name"] = name
            if active is not None:
                params["active"] = "true" if active else "false"
            response = self._send("GET", USERS_PATH, params=params)
            listed = self._list_page(response, name)
            if listed is None:
                raise NoListRoute(self.no_list_message(purpose), status=response.status_code)
            batch, meta = listed
            users.extend(batch)
            try:
                total_pages: int | None = int(meta["total_pages"])
            except (ValueError, TypeError, KeyError):
                total_pages = None
            # Without total_pages, a short page is the last one.
            last = page >= total_pages if total_pages is not None else len(batch) < LIST_PAGE_SIZE
            if last or not batch or page >= MAX_PAGES:
                break
            page += 1
        now = self.now()
        return [u for u in users
                if (name is None or u.get("name") == name) and (active is None or is_active(u, now) == active)]

    def find_active(self, name: str) -> dict[str, Any] | None:
        """The active user of that name, newest first; raises NoListRoute without a list route."""
        matches = self.list_users(name=name, active=True, purpose="looking a system user up by name")
        with self.caps.lock:
            self._active_seen[name] = {str(u.get("id")) for u in matches}
        return matches[0] if matches else None

    def deactivate_user(self, user_id: str) -> dict[str, Any]:
        user_id = validate_id(user_id)
        response = self._send("POST", f"{USERS_PATH}/{quote(user_id, safe='')}/deactivate")
        if response.status_code != 200:
            raise self._fail(response, what=f"deactivate system user {user_id}",
                             not_found=f"system user {user_id} was not found")
        user = self._user(response)
        # The 200 itself says it is inactive now, whatever fields the object carries.
        return user if "active" in user else dict(user, active=False)

    def token_info(self, token: str) -> dict[str, Any]:
        """The system user that owns ``token``, asked with that token itself."""
        response = self._send("GET", f"{USERS_PATH}/token-info", token=token)
        if response.status_code == 403:
            code = self._api_message(response)[0]
            raise XapiError("the token given is not a system user token (an admin token cannot be looked up with "
                            "token-info): pass the service's own token.", status=403, code=code)
        if response.status_code != 200:
            raise self._fail(response, what="read its own token information")
        return self._user(response)

    def verify_access(self, token: str) -> None:
        """Raises unless ``token`` can call an ordinary API route (the tenants list)."""
        response = self._send("GET", f"{API_PREFIX}/tenants", token=token)
        if response.status_code != 200:
            raise self._fail(response, what="list tenants")
        self._decode(response, list)

    def create_user(self, name: str, description: str | None, expires_in_days: int) -> tuple[dict[str, Any], str]:
        """Create a system user and return it with its token; never leaves two active users for one call.

        When the answer to the create is lost, the platform may or may not have carried it out. The
        name is looked up first; if the user appeared, its token is lost for good, so that orphan is
        deactivated (nobody can be using it) and the create is sent once more. A second orphan is
        deactivated too and the call fails, so at most one active user of that name ever results and
        it is always one whose token the caller holds.

        A platform without a list route cannot be asked whether the lost create happened: the call
        then fails at once, naming the credential to look for, and never sends a second create.
        """
        body: dict[str, Any] = {"name": name, "expires_in_days": expires_in_days}
        if description is not None:
            body["description"] = description
        orphans: list[str] = []
        unknown_outcomes = 0
        if self.caps.list is not False and (self._server_clock is None or name not in self._active_seen):
            # Learn the platform's clock and who holds the name now (modules have usually looked
            # the name up already); a platform without a list route says so here.
            try:
                self.find_active(name)
            except NoListRoute:
                pass
        # Users of this name created from here on can only be this call's: active ones not seen
        # before it, created (when the platform says when) after it began; the slack covers the
        # one-second resolution of created_at and of the Date header the clock follows.
        seen_before = self._active_seen.get(name)
        started = self.now() - timedelta(seconds=CLOCK_SLACK_SECONDS)
        failures = 0
        last_reason = ""
        while True:
            retry_after: float | None = None
            try:
                response = self._send("POST", USERS_PATH, json=body)
            except _OutcomeUnknown as unknown:
                response = None
                last_reason = unknown.reason
            else:
                # 201 as documented by the sandbox; 200 from a platform that answers creates that way.
                if response.status_code in (200, 201):
                    user = self._user(response)
                    token = user.get("token")
                    if not isinstance(token, str) or not token:
                        raise XapiError(f"the platform API at {self.host} created system user {user.get('id')} but "
                                        "returned no token: deactivate it and check the API version.",
                                        orphaned_ids=[user.get("id")])
                    self._secrets.add(token)
                    return user, token
                if response.status_code == 409 and not unknown_outcomes:
                    raise self._conflict(response, name)
                if response.status_code not in RETRYABLE_STATUSES and response.status_code != 409:
                    raise self._fail(response, what=f"create system user {name}")
                # A proxy's 5xx may hide a create that happened; a 409 after a lost answer means
                # the earlier attempt committed after the lookup.
                last_reason = f"HTTP {response.status_code}"
                retry_after = self._retry_after(response)

            rate_limited = response is not None and response.status_code == 429
            if self.caps.list is False and not rate_limited:
                # Nothing can tell whether it happened, so nothing may be sent again.
                raise self._lost_unlisted(name, last_reason)
            if self.caps.list is False:
                # 429 means the platform did not carry the create out: sending it again is safe.
                failures += 1
                if failures > self.retries:
                    raise XapiError(f"could not create system user {name} at {self.host} {self._attempts()} (last: "
                                    f"{last_reason}): nothing was created, re-run the task later.")
                self._sleep(min(retry_after if retry_after is not None else BACKOFF_FACTOR * (2 ** failures),
                                BACKOFF_MAX))
                continue
            unknown_outcomes += 1

            if response is None or response.status_code != 409:
                # Also gives a slow create time to land before the lookup.
                self._sleep(min(retry_after if retry_after is not None else BACKOFF_FACTOR * (2 ** failures),
                                BACKOFF_MAX))
            try:
                appeared = self.find_active(name)
            except NoListRoute:
                # The list route stopped answering as one (an HTML page, a list without meta).
                raise self._lost_unlisted(name, last_reason) from None
            if appeared is not None and not self._is_ours(appeared, started, seen_before):
                # Someone else's user, made before this call began: not ours to deactivate.
                raise XapiError(f"an active system user named {name} ({appeared.get('id')}) exists that this task "
                                "did not create: check who else manages that name, then re-run the task.",
                                orphaned_ids=orphans)
            if appeared is not None:
                orphan_id = str(appeared.get("id"))
                self.deactivate_user(orphan_id)
                orphans.append(orphan_id)
                if len(orphans) > 1:
                    raise XapiError(
                        f"the platform created system user {name} twice but both answers were lost "
                        f"({last_reason}); both ({', '.join(orphans)}) were deactivated since their tokens are "
                        "unknown: re-run the task once the connection to the platform is stable.",
                        orphaned_ids=orphans)
                continue  # replacing the one orphan does not count against retries
            failures += 1
            if failures > self.retries:
                ids = f"; orphaned user {orphans[0]} was deactivated" if orphans else ""
                raise XapiError(f"could not create system user {name} at {self.host} {self._attempts()} (last: "
                                f"{last_reason}){ids}: nothing usable was created, re-run the task later.",
                                orphaned_ids=orphans)

    def _lost_unlisted(self, name: str, reason: str) -> XapiError:
        """The sentence for a lost create answer on a platform that cannot be asked whether it happened."""
        return XapiError(
            f"the answer to creating system user {name} was lost ({reason}), so the platform may "
            f"hold an active system user named {name} whose token was lost; it has no list route to find "
            f"it ({self.caps.no_list_reason}): deactivate it by id in the platform's console, then re-run "
            "the task.")

    def _conflict(self, response: requests.Response, name: str) -> XapiError:
        """The 409 of a create whose name an active user holds; without a list route, how to find it."""
        error = self._fail(response, what=f"create system user {name}")
        if self.caps.list is False:
            error.msg = (f"{error.msg.rstrip('.')}; the platform has no list route to show which system user holds "
                         f"that name ({self.caps.no_list_reason}): find it by id in the platform's console and "
                         "deactivate it, or choose another name.")
        return error

    def _is_ours(self, user: dict[str, Any], started: datetime, seen_before: set[str] | None) -> bool:
        """Whether an active user of the name, found after a lost answer, was created by this call."""
        if seen_before is not None and str(user.get("id")) in seen_before:
            return False
        if "created_at" in user:
            return self._created_since(user, started)
        # No creation time: only "not there before this call" can tell, when it is known.
        return seen_before is not None

    @staticmethod
    def _created_since(user: dict[str, Any], moment: datetime) -> bool:
        try:
            return parse_time(str(user.get("created_at"))) >= moment
        except (ValueError, OverflowError):
            return False

    @staticmethod
    def _retry_after(response: requests.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if not value:
            return None
        try:
            return min(max(float(value), 0.0), float(RETRY_AFTER_MAX))
        except ValueError:
            return None


# ---------------------------------------------------------------------------------------------
# What every module's main() shares


def new_module(argument_spec: dict[str, Any], **kwargs: Any) -> AnsibleModule:
    """An AnsibleModule with the connection options added and the Python requirements checked."""
    spec = connection_argument_spec()
    spec.update(argument_spec)
    module = AnsibleModule(argument_spec=spec, **kwargs)
    if REQUESTS_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMPORT_ERROR)
    if DATEUTIL_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("python-dateutil"), exception=DATEUTIL_IMPORT_ERROR)
    return module


def client_from_params(params: dict[str, Any], *, pool_maxsize: int = 10, token_required: bool = True) -> XapiClient:
    """The client for a module's validated parameters (connection options and any tokens to redact)."""
    if token_required and not params.get("api_token"):
        raise XapiError(MISSING_TOKEN)
    return XapiClient(
        params.get("api_url"),
        params.get("api_token"),
        validate_certs=params["validate_certs"],
        ca_path=params.get("ca_path"),
        timeout=params["timeout"],
        retries=params["retries"],
        pool_maxsize=pool_maxsize,
        secrets=[v for v in (params.get("token"), *(params.get("tokens") or ())) if isinstance(v, str)],
    )


def map_items(work: Callable[[Any], dict[str, Any]], items: list[Any],
              max_workers: int = MAX_CONCURRENCY) -> list[tuple[Any, dict[str, Any] | XapiError]]:
    """``(item, work(item))`` for every item, at most ``max_workers`` at a time, in the order of ``items``.

    An expected failure of one item (XapiError) takes the place of that item's answer instead of
    stopping the others, so a list option can report every item. Anything else is a bug and is
    raised as it is.
    """

    def one(item: Any) -> tuple[Any, dict[str, Any] | XapiError]:
        try:
            return item, work(item)
        except XapiError as exc:
            return item, exc

    workers = min(max_workers, len(items))
    if workers <= 1:
        return [one(item) for item in items]
    # Imported here: a module run on one item should not pay for it.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


def pool_size_for(count: int) -> int:
    """The HTTP connection pool that ``count`` items handled by :func:`map_items` keep busy."""
    return min(MAX_CONCURRENCY, count) or 1


def run_module(module: AnsibleModule, work: Callable[[], dict[str, Any]]) -> None:
    """exit_json with what ``work`` returns; an expected failure becomes one fail_json sentence."""
    try:
        result = work()
    except XapiError as exc:
        # fail_json also masks every no_log value; redact() catches tokens it never saw.
        module.fail_json(msg=redact(exc.msg), **exc.details)
    module.exit_json(**result)

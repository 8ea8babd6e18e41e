"""A stand-in for the platform's System Users API, served over real HTTP(S).

``python -m tests.sandbox.platform_api --state-dir D --admin-token-file F [--host H] [--port N] [--tls]
[--documented-only]``

It speaks the contract in docs/internals.md ("Platform API"): the ``{"data": ...}``
envelope, ``{"error": {"code", "message"}}`` errors, admin versus system-user tokens,
pagination, idempotent deactivation, token-info and tenants, RFC 3339 UTC times. Test
controls live under ``/_sandbox/`` (admin token only): a movable clock, a token
activation delay, documented-only mode, fault rules, request counters and reset.

Documented-only mode (``--documented-only``, or ``{"documented_only": true}`` to
``POST /_sandbox/config``) serves only what the platform's reference document shows: the
list route answers 405 and user objects carry ``id``, ``name``, ``description`` and
``expires_at`` (plus ``token`` on creation) and nothing else. tests/sandbox/README.md
describes what it serves and what it does not model.

Standard library only, so anything that has Python can run it. System users live in
SQLite under the state directory (tokens only as SHA-256 hashes); fault rules and
request counters live in memory and start empty with each process.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/api/v1"
SANDBOX_PREFIX = "/_sandbox"
MAX_BODY_BYTES = 1 << 20
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_RE = re.compile(r"su_[0-9a-f]{24}")
MAX_DESCRIPTION = 1024
MAX_EXPIRES_IN_DAYS = 365
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 100
# Connections idle longer than this are closed, so that abandoned keep-alive
# connections do not pin a thread each; generous, so pooled clients rarely notice.
IDLE_TIMEOUT = 120.0
# last_used_at is written at most this often per user: pods poll many times a second.
LAST_USED_RESOLUTION = 1.0

# What a user object carries in documented-only mode: the fields the reference document shows.
DOCUMENTED_FIELDS = ("id", "name", "description", "expires_at")

TENANTS = (
    {"id": "tn_0001", "name": "acme"},
    {"id": "tn_0002", "name": "globex"},
    {"id": "tn_0003", "name": "initech"},
)

# Anything shaped like one of our tokens is masked before it reaches a log line or
# an error message, even if a client put it somewhere odd (a path, a query string).
_TOKEN_SHAPE = re.compile(r"(xsu_|xadm_)[A-Za-z0-9_-]+")
_SECRET_QUERY = re.compile(r"([?&;][^=&;\s]*(?:token|secret|password|key)[^=&;\s]*=)[^&;\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask token-shaped strings and secret-looking query values in ``text``."""
    return _SECRET_QUERY.sub(r"\1[redacted]", _TOKEN_SHAPE.sub(r"\1[redacted]", text))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def fingerprint(token_hash: str) -> str:
    """The first 8 hex characters of the token's SHA-256, as the collection prints it."""
    return token_hash[:8]


def new_token(prefix: str) -> str:
    # 32 random bytes in URL-safe base64 without padding: 43 characters.
    return prefix + secrets.token_urlsafe(32)


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An answer other than success: becomes ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _validation(message: str) -> ApiError:
    return ApiError(422, "validation_failed", message)


# --------------------------------------------------------------------------- state


class Store:
    """System users, the clock offset and settings, in SQLite.

    One connection guarded by one lock: requests are tiny, so serialising them is
    far below the load the sandbox sees, and it makes check-then-insert (the 409 on
    a duplicate active name) atomic without further thought.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS system_users (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        usable_from REAL NOT NULL,
        deactivated_at INTEGER,
        last_used_at INTEGER
    );
    CREATE INDEX IF NOT EXISTS system_users_name ON system_users (name);
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value REAL NOT NULL);
    """

    def __init__(self, path: Path) -> None:
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(self.SCHEMA)
        self._settings = {row["key"]: row["value"] for row in self.db.execute("SELECT key, value FROM settings")}

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # settings (clock offset, activation delay) are read on every request: cached.
    def setting(self, key: str, default: float = 0.0) -> float:
        return float(self._settings.get(key, default))

    def set_setting(self, key: str, value: float) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            self._settings[key] = value

    def now(self) -> float:
        return time.time() + self.setting("clock_offset")

    def reset(self) -> None:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM system_users")
            self.db.execute("DELETE FROM settings")
            self.db.execute("COMMIT")
            self._settings = {}

    @staticmethod
    def _active_sql() -> str:
        return "deactivated_at IS NULL AND expires_at > ?"

    def create(self, name: str, description: str, expires_in_days: int) -> tuple[sqlite3.Row, str]:
        with self.lock:
            now = self.now()
            clash = self.db.execute(
                f"SELECT 1 FROM system_users WHERE name = ? AND {self._active_sql()}", (name, now)
            ).fetchone()
            if clash:
                raise ApiError(
                    409, "name_conflict",
                    f"An active system user named '{name}' already exists; choose another name "
                    "or deactivate the existing one first.",
                )
            token = new_token("xsu_")
            user_id = "su_" + secrets.token_hex(12)
            created = int(now)
            self.db.execute(
                "INSERT INTO system_users (id, name, description, token_hash, created_at, expires_at, usable_from) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (user_id, name, description, hash_token(token), created, created + expires_in_days * 86400,
                 now + self.setting("token_activation_delay")),
            )
            row = self.db.execute("SELECT * FROM system_users WHERE id = ?", (user_id,)).fetchone()
            return row, token

    def get(self, user_id: str) -> sqlite3.Row | None:
        with self.lock:
            return self.db.execute("SELECT * FROM system_users WHERE id = ?", (user_id,)).fetchone()

    def by_token_hash(self, token_hash: str) -> sqlite3.Row | None:
        with self.lock:
            return self.db.execute("SELECT * FROM system_users WHERE token_hash = ?", (token_hash,)).fetchone()

    def page(self, name: str | None, active: bool | None, page: int, per_page: int) -> tuple[list[sqlite3.Row], int]:
        where, params = [], []
        with self.lock:
            now = self.now()
            if name is not None:
                where.append("name = ?")
                params.append(name)
            if active is True:
                where.append(self._active_sql())
                params.append(now)
            elif active is False:
                where.append(f"NOT ({self._active_sql()})")
                params.append(now)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            total = self.db.execute(f"SELECT COUNT(*) FROM system_users {clause}", params).fetchone()[0]
            rows = self.db.execute(
                f"SELECT * FROM system_users {clause} ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            ).fetchall()
            return rows, total

    def all_users(self) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute("SELECT * FROM system_users ORDER BY seq").fetchall()

    def deactivate(self, user_id: str) -> sqlite3.Row | None:
        with self.lock:
            now = self.now()
            # An expired user is already inactive: leave it as it is (idempotent).
            self.db.execute(
                f"UPDATE system_users SET deactivated_at = ? WHERE id = ? AND {self._active_sql()}",
                (int(now), user_id, now),
            )
            return self.get(user_id)

    def touch(self, row: sqlite3.Row) -> None:
        now = self.now()
        if row["last_used_at"] is not None and now - row["last_used_at"] < LAST_USED_RESOLUTION:
            return
        with self.lock:
            self.db.execute("UPDATE system_users SET last_used_at = ? WHERE id = ?", (int(now), row["id"]))


def is_active(row: sqlite3.Row, now: float) -> bool:
    return row["deactivated_at"] is None and now < row["expires_at"]


def user_object(row: sqlite3.Row, now: float) -> dict[str, Any]:
    # Expiry deactivates a user by itself (the reference procedure: "Old token
    # expires - automatically deactivated"), so an expired user reads as inactive
    # with deactivated_at at the moment it expired.
    deactivated_at = row["deactivated_at"]
    if deactivated_at is None and now >= row["expires_at"]:
        deactivated_at = row["expires_at"]
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "active": is_active(row, now),
        "created_at": rfc3339(row["created_at"]),
        "expires_at": rfc3339(row["expires_at"]),
        "deactivated_at": rfc3339(deactivated_at),
        "last_used_at": rfc3339(row["last_used_at"]),
    }


class Counters:
    """Requests by route template, by caller and by status code (API routes only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.total = 0
            self.by_route: dict[str, dict[str, int]] = {}
            self.by_user: dict[str, dict[str, int]] = {}

    def add(self, route: str, caller: str, status: int) -> None:
        code = str(status)
        with self.lock:
            self.total += 1
            bucket = self.by_route.setdefault(route, {})
            bucket[code] = bucket.get(code, 0) + 1
            bucket = self.by_user.setdefault(caller, {})
            bucket[code] = bucket.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total": self.total,
                "by_route": {k: dict(v) for k, v in self.by_route.items()},
                "by_user": {k: dict(v) for k, v in self.by_user.items()},
            }


@dataclass
class FaultRule:
    id: int
    method: str
    path: str
    status: int | None = None
    count: int | None = None
    latency: float = 0.0
    body: str | None = None
    content_type: str | None = None
    drop_after_commit: bool = False
    retry_after: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "method": self.method, "path": self.path, "status": self.status,
            "count": self.count, "latency": self.latency, "body": self.body,
            "content_type": self.content_type, "drop_after_commit": self.drop_after_commit,
            "retry_after": self.retry_after, "hits": self.hits,
        }


FAULT_FIELDS = {
    "method", "path", "status", "count", "latency", "body", "content_type", "drop_after_commit", "retry_after",
}


def parse_fault(body: Any, rule_id: int) -> FaultRule:
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object describing one fault rule.")
    unknown = sorted(set(body) - FAULT_FIELDS)
    if unknown:
        raise _validation(f"Unknown fault field '{unknown[0]}'; allowed: {', '.join(sorted(FAULT_FIELDS))}.")
    method = body.get("method") or "*"
    if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+|\*", method):
        raise _validation("method must be an HTTP method such as 'GET' or 'POST', or '*' for any.")
    path = body.get("path")
    if not isinstance(path, str) or not (path.startswith("/") or path == "*"):
        raise _validation("path must be a string starting with '/', optionally ending in '*' for a prefix match, "
                          "or '*' for every API path.")
    status = body.get("status")
    if status is not None and (type(status) is not int or not 200 <= status <= 599):
        raise _validation("status must be an integer HTTP status from 200 to 599, or null.")
    count = body.get("count")
    if count is not None and (type(count) is not int or count < 1):
        raise _validation("count must be a positive integer, or null for every matching request.")
    latency = body.get("latency") or 0.0
    if type(latency) not in (int, float) or not 0 <= latency <= 300:
        raise _validation("latency must be a number of seconds from 0 to 300.")
    raw = body.get("body")
    if raw is not None and not isinstance(raw, str):
        raise _validation("body must be the raw response text as a string, or null.")
    content_type = body.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise _validation("content_type must be a string such as 'text/html', or null.")
    drop = body.get("drop_after_commit", False)
    if not isinstance(drop, bool):
        raise _validation("drop_after_commit must be true or false.")
    if drop and (status is not None or raw is not None):
        raise _validation("drop_after_commit sends no answer, so it cannot be combined with status or body.")
    retry_after = body.get("retry_after")
    if retry_after is not None:
        if type(retry_after) is int and retry_after >= 0:
            retry_after = str(retry_after)
        elif not isinstance(retry_after, str) or not retry_after.strip():
            raise _validation("retry_after must be a number of seconds or an HTTP date, or null.")
    return FaultRule(
        id=rule_id, method=method.upper(), path=path, status=status, count=count, latency=float(latency),
        body=raw, content_type=content_type, drop_after_commit=drop, retry_after=retry_after,
    )


class FaultBook:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.next_id = 1

    def add(self, body: Any) -> FaultRule:
        with self.lock:
            rule = parse_fault(body, self.next_id)
            self.next_id += 1
            self.rules.append(rule)
            return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """The first rule that applies to this request, with one of its uses spent."""
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    if rule.count is not None and rule.hits >= rule.count:
                        self.rules.remove(rule)
                    return rule
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [rule.as_dict() for rule in self.rules]


# --------------------------------------------------------------------------- requests


@dataclass
class Caller:
    """Who sent the request, as far as the token tells (validity is checked later)."""

    kind: str  # "none", "malformed", "unknown", "admin" or "user"
    row: sqlite3.Row | None = None

    @property
    def key(self) -> str:
        if self.kind == "admin":
            return "admin"
        if self.kind == "user" and self.row is not None:
            return self.row["id"]
        return "unknown"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    caller: Caller
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.body.strip():
            raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None

    def json_object(self) -> dict[str, Any]:
        data = self.json()
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
        return data

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    # "admin:<permission>", "user" (a system-user token only) or "any" (any valid token)
    auth: str


def _compile(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")


class Platform:
    """The API's behaviour, independent of the HTTP plumbing."""

    def __init__(self, store: Store, admin_token: str, documented_only: bool = False) -> None:
        self.store = store
        self.admin_hash = hash_token(admin_token)
        # The mode the process was started in, which a reset returns to; the current mode can be
        # switched at runtime through /_sandbox/config.
        self.documented_only_default = documented_only
        self.documented_only = documented_only
        self.counters = Counters()
        self.faults = FaultBook()
        api, sb = API_PREFIX, SANDBOX_PREFIX
        api_routes: list[tuple[str, str, Handler, str]] = [
            ("POST", "/system-users", self.create, "admin:system-users:write"),
            ("GET", "/system-users", self.list_users, "admin:system-users:read"),
            # Before {id}, which would otherwise swallow "token-info".
            ("GET", "/system-users/token-info", self.token_info, "user"),
            ("GET", "/system-users/{id}", self.get, "admin:system-users:read"),
            ("POST", "/system-users/{id}/deactivate", self.deactivate, "admin:system-users:write"),
            ("GET", "/tenants", self.tenants, "any"),
        ]
        self.routes = [Route(m, api + p, _compile(api + p), h, auth) for m, p, h, auth in api_routes]
        sandbox_routes = [
            ("GET", "/clock", self.sb_get_clock), ("POST", "/clock", self.sb_clock),
            ("GET", "/config", self.sb_get_config), ("POST", "/config", self.sb_config),
            ("GET", "/faults", self.sb_get_faults), ("POST", "/faults", self.sb_add_fault),
            ("DELETE", "/faults", self.sb_clear_faults),
            ("GET", "/state", self.sb_state), ("POST", "/reset", self.sb_reset),
            ("POST", "/counters/reset", self.sb_counters_reset),
        ]
        self.routes += [Route(m, sb + p, _compile(sb + p), h, "admin:sandbox:admin") for m, p, h in sandbox_routes]

    # ---- dispatch

    def identify(self, authorization: str | None) -> Caller:
        if not authorization:
            return Caller("none")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Caller("malformed")
        token_hash = hash_token(token)
        if hmac.compare_digest(token_hash, self.admin_hash):
            return Caller("admin")
        row = self.store.by_token_hash(token_hash)
        return Caller("user", row) if row is not None else Caller("unknown")

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str], str]:
        """The route for this request, its path parameters, the methods the path allows, its counter template."""
        allowed: list[str] = []
        template = "(unknown route)"
        for route in self.routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if self.documented_only and route.handler == self.list_users:
                continue  # the reference shows no list route: GET on that path answers 405
            if route.method == method:
                return route, found.groupdict(), allowed, route.template
            if not allowed:
                template = route.template
            allowed.append(route.method)
        return None, {}, allowed, template

    def authorize(self, route: Route, caller: Caller) -> None:
        unauthorized = {"WWW-Authenticate": 'Bearer realm="xapi", error="invalid_token"'}
        if caller.kind == "none":
            raise ApiError(401, "unauthorized",
                           "No bearer token was sent; add an 'Authorization: Bearer <token>' header.",
                           {"WWW-Authenticate": 'Bearer realm="xapi"'})
        if caller.kind == "malformed":
            raise ApiError(401, "unauthorized", "The Authorization header must be 'Bearer <token>'.", unauthorized)
        if caller.kind == "unknown":
            raise ApiError(401, "unauthorized",
                           "The bearer token is not recognised; check that it is complete and current.", unauthorized)
        if caller.kind == "user":
            row = caller.row
            assert row is not None
            now = self.store.now()
            if row["deactivated_at"] is not None:
                raise ApiError(401, "unauthorized", "The token belongs to a deactivated system user.", unauthorized)
            if now >= row["expires_at"]:
                raise ApiError(401, "unauthorized", "The token has expired; rotate to a new system user credential.",
                               unauthorized)
            if now < row["usable_from"]:
                raise ApiError(401, "unauthorized",
                               "The token is not active yet; new credentials take a moment to propagate.", unauthorized)
            self.store.touch(row)
        if route.auth.startswith("admin:") and caller.kind != "admin":
            permission = route.auth.removeprefix("admin:")
            raise ApiError(403, "forbidden",
                           f"This token lacks the '{permission}' permission; use a platform admin token.")
        if route.auth == "user" and caller.kind != "user":
            raise ApiError(403, "forbidden",
                           "token-info describes a system user's own token; call it with a system user token, "
                           "not the admin token.")

    def handle(self, request: Request, route: Route | None, allowed: list[str]) -> Response:
        try:
            if route is None:
                if allowed:
                    raise ApiError(405, "method_not_allowed",
                                   f"{request.method} is not supported here; use {' or '.join(sorted(set(allowed)))}.",
                                   {"Allow": ", ".join(sorted(set(allowed)))})
                raise ApiError(404, "not_found", "No such API route.")
            self.authorize(route, request.caller)
            return route.handler(request)
        except ApiError as exc:
            return Response(exc.status, {"error": {"code": exc.code, "message": redact(exc.message)}}, exc.headers)
        except Exception:  # a sandbox bug: answer like a server would, and keep the evidence
            sys.stderr.write(redact(traceback.format_exc()))
            return Response(500, {"error": {"code": "internal_error",
                                            "message": "The platform sandbox failed; see its log."}})

    # ---- API routes

    def user(self, row: sqlite3.Row) -> dict[str, Any]:
        """A user object as the API answers it: only the documented fields in documented-only mode."""
        data = user_object(row, self.store.now())
        if self.documented_only:
            data = {key: data[key] for key in DOCUMENTED_FIELDS}
        return data

    def _user_or_404(self, user_id: str) -> sqlite3.Row:
        row = self.store.get(user_id) if ID_RE.fullmatch(user_id) else None
        if row is None:
            shown = f" '{user_id}'" if ID_RE.fullmatch(user_id) else ""
            raise ApiError(404, "not_found", f"No system user with id{shown} exists.")
        return row

    def create(self, request: Request) -> Response:
        body = request.json_object()
        allowed = {"name", "description", "expires_in_days"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _validation(
                f"Unknown field '{unknown[0]}'; allowed fields are name, description and expires_in_days.")
        name = body.get("name")
        if name is None:
            raise _validation("name is required.")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise _validation("name must be 1 to 128 characters of letters, digits, '.', '_' or '-'.")
        description = body.get("description")
        if description is None:
            description = ""
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise _validation(f"description must be a string of at most {MAX_DESCRIPTION} characters.")
        days = body.get("expires_in_days")
        if days is None:
            raise _validation("expires_in_days is required.")
        if type(days) is not int or not 1 <= days <= MAX_EXPIRES_IN_DAYS:
            raise _validation(f"expires_in_days must be a whole number from 1 to {MAX_EXPIRES_IN_DAYS}.")
        row, token = self.store.create(name, description, days)
        data = self.user(row)
        data["token"] = token
        return Response(201, {"data": data}, {"Location": f"{API_PREFIX}/system-users/{row['id']}"})

    def list_users(self, request: Request) -> Response:
        name = request.one("name") or None
        active_text = request.one("active")
        active: bool | None = None
        if active_text:
            if active_text.lower() not in ("true", "false"):
                raise _validation("active must be 'true' or 'false'.")
            active = active_text.lower() == "true"
        page = _int_param(request.one("page"), "page", 1, 1, None)
        per_page = _int_param(request.one("per_page"), "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        rows, total = self.store.page(name, active, page, per_page)
        now = self.store.now()
        return Response(200, {
            "data": [user_object(row, now) for row in rows],
            "meta": {"page": page, "per_page": per_page, "total": total, "total_pages": math.ceil(total / per_page)},
        })

    def get(self, request: Request) -> Response:
        return Response(200, {"data": self.user(self._user_or_404(request.params["id"]))})

    def deactivate(self, request: Request) -> Response:
        self._user_or_404(request.params["id"])
        row = self.store.deactivate(request.params["id"])
        assert row is not None
        return Response(200, {"data": self.user(row)})

    def token_info(self, request: Request) -> Response:
        row = request.caller.row
        assert row is not None
        return Response(200, {"data": self.user(self.store.get(row["id"]) or row)})

    def tenants(self, request: Request) -> Response:
        return Response(200, {"data": [dict(t) for t in TENANTS]})

    # ---- test controls

    def _now_body(self) -> dict[str, Any]:
        return {"data": {"now": rfc3339(self.store.now())}}

    def sb_get_clock(self, request: Request) -> Response:
        return Response(200, self._now_body())

    def sb_clock(self, request: Request) -> Response:
        body = request.json_object()
        seconds = body.get("advance_seconds")
        if type(seconds) not in (int, float) or not 0 <= seconds <= 10 * 366 * 86400:
            raise _validation(
                "advance_seconds must be a number of seconds from 0 to ten years; the clock only moves forward.")
        self.store.set_setting("clock_offset", self.store.setting("clock_offset") + seconds)
        return Response(200, self._now_body())

    def _config(self) -> dict[str, Any]:
        return {"data": {"token_activation_delay": self.store.setting("token_activation_delay"),
                         "documented_only": self.documented_only}}

    def sb_get_config(self, request: Request) -> Response:
        return Response(200, self._config())

    def sb_config(self, request: Request) -> Response:
        body = request.json_object()
        unknown = sorted(set(body) - {"token_activation_delay", "documented_only"})
        if unknown:
            raise _validation(f"Unknown setting '{unknown[0]}'; the platform sandbox has token_activation_delay "
                              "and documented_only.")
        if "documented_only" in body and not isinstance(body["documented_only"], bool):
            raise _validation("documented_only must be true or false.")
        if "token_activation_delay" in body:
            delay = body["token_activation_delay"]
            if type(delay) not in (int, float) or not 0 <= delay <= 3600:
                raise _validation("token_activation_delay must be a number of seconds from 0 to 3600.")
            self.store.set_setting("token_activation_delay", float(delay))
        if "documented_only" in body:
            self.documented_only = body["documented_only"]
        return Response(200, self._config())

    def sb_get_faults(self, request: Request) -> Response:
        return Response(200, {"data": self.faults.snapshot()})

    def sb_add_fault(self, request: Request) -> Response:
        return Response(201, {"data": self.faults.add(request.json()).as_dict()})

    def sb_clear_faults(self, request: Request) -> Response:
        self.faults.clear()
        return Response(200, {"data": []})

    def sb_state(self, request: Request) -> Response:
        now = self.store.now()
        users = []
        for row in self.store.all_users():
            item = user_object(row, now)
            item["token_fingerprint"] = fingerprint(row["token_hash"])
            users.append(item)
        return Response(200, {"data": {
            "now": rfc3339(now),
            "system_users": users,
            "requests": self.counters.snapshot(),
            "faults": self.faults.snapshot(),
            "config": self._config()["data"],
        }})

    def sb_reset(self, request: Request) -> Response:
        self.store.reset()
        self.documented_only = self.documented_only_default
        self.faults.clear()
        self.counters.reset()
        return Response(200, self._now_body())

    def sb_counters_reset(self, request: Request) -> Response:
        self.counters.reset()
        return Response(200, {"data": self.counters.snapshot()})


def _int_param(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or int(text) < low or (high is not None and int(text) > high):
        limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise _validation(f"{name} must be a whole number {limit}.")
    return int(text)


# --------------------------------------------------------------------------- HTTP


_REASONS = {s.value: s for s in HTTPStatus}


def _error_code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


class PlatformHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xapi-platform-sandbox/1.0"
    timeout = IDLE_TIMEOUT
    # Headers and body leave in separate writes; with Nagle on, a client's delayed
    # ACK would add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: PlatformServer

    def version_string(self) -> str:
        return self.server_version

    # Dates in the Date header follow the sandbox clock, so a client can see moved time.
    def date_time_string(self, timestamp: float | None = None) -> str:
        return email.utils.formatdate(self.server.platform.store.now() if timestamp is None else timestamp, usegmt=True)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request is written by _log_access, with the caller and timing

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(redact(f"{self.address_string()} - - [{self.log_date_time_string()}] {format % args}") + "\n")

    def _log_access(self, status: int | str, size: int, caller: str, started: float, note: str = "") -> None:
        elapsed = (time.monotonic() - started) * 1000
        self.log_message('"%s" %s %s caller=%s %.1fms%s', self.requestline, status, size, caller, elapsed, note)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def _read_body(self) -> bytes | ApiError:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            return ApiError(411, "length_required", "Chunked request bodies are not supported; send Content-Length.")
        length_text = self.headers.get("Content-Length")
        if not length_text:
            return b""
        if not length_text.isdigit():
            self.close_connection = True
            return ApiError(400, "bad_request", "Content-Length must be a whole number.")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return ApiError(413, "payload_too_large", f"The request body exceeds {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(length)

    def _serve(self) -> None:
        started = time.monotonic()
        platform = self.server.platform
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        method = self.command.upper()
        body = self._read_body()
        caller = platform.identify(self.headers.get("Authorization"))
        route, params, allowed, template = platform.match(method, path)
        is_control = path == SANDBOX_PREFIX or path.startswith(SANDBOX_PREFIX + "/")
        route_key = f"{method} {template}"

        rule = None if is_control else platform.faults.take(method, path)
        if rule is not None and rule.latency:
            time.sleep(rule.latency)
        if rule is not None and (rule.status is not None or rule.body is not None):
            status = rule.status or 200
            headers = {"Retry-After": rule.retry_after} if rule.retry_after else {}
            if rule.body is not None:
                payload = rule.body.encode("utf-8")
                content_type = rule.content_type or "text/plain; charset=utf-8"
            else:
                message = f"Injected fault: the platform answered {status}."
                payload = json.dumps({"error": {"code": _error_code_for(status), "message": message}}).encode()
                content_type = rule.content_type or "application/json"
            platform.counters.add(route_key, caller.key, status)
            self._send(status, payload, content_type, headers)
            self._log_access(status, len(payload), caller.key, started, f" fault={rule.id}")
            return

        if isinstance(body, ApiError):
            response = Response(body.status, {"error": {"code": body.code, "message": body.message}}, body.headers)
        else:
            request = Request(method, path, parse_qs(parts.query, keep_blank_values=True), body, caller, params)
            response = platform.handle(request, route, allowed)
        if not is_control:
            platform.counters.add(route_key, caller.key, response.status)

        if rule is not None and rule.drop_after_commit:
            # The work is done (committed); the client never learns the outcome.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._log_access(response.status, 0, caller.key, started, f" fault={rule.id} dropped")
            return

        payload = json.dumps(response.body, separators=(",", ":")).encode("utf-8")
        self._send(response.status, payload, "application/json", response.headers)
        self._log_access(response.status, len(payload), caller.key, started, f" fault={rule.id}" if rule else "")

    def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status, _REASONS[status].phrase if status in _REASONS else "Status")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class PlatformServer(ThreadingHTTPServer):
    daemon_threads = True
    # Hundreds of concurrent connections from one module call must not overflow the backlog.
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], platform: Platform, tls: ssl.SSLContext | None = None) -> None:
        self.platform = platform
        self.tls = tls
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, PlatformHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so a client
        # that never finishes its handshake cannot stall the accept loop.
        if self.tls is not None:
            request.settimeout(30)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                sys.stderr.write(f"{client_address[0]} - - TLS handshake failed: {exc.__class__.__name__}: "
                                 f"{getattr(exc, 'reason', None) or exc}\n")
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-request is normal here (timeouts, dropped faults): one line, no traceback.
        exc = sys.exc_info()[1]
        sys.stderr.write(redact(f"{client_address[0]} - - connection error: {exc.__class__.__name__}: {exc}") + "\n")


# --------------------------------------------------------------------------- process


def read_or_create_admin_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = new_token("xadm_")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return read_or_create_admin_token(path)  # another process won the race: use its token
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
    if not token or any(ch.isspace() for ch in token):
        raise SystemExit(f"platform sandbox: {path} must hold one admin token on one line; delete it to get a new one.")
    return token


def write_ready(state_dir: Path, data: dict[str, Any]) -> None:
    tmp = state_dir / "ready.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(state_dir / "ready.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox.platform_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="where the SQLite state and ready.json live")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with a generated CA written to STATE_DIR/ca.pem")
    parser.add_argument("--admin-token-file", type=Path, required=True,
                        help="file holding the admin token; created (mode 0600) with a fresh token if missing")
    parser.add_argument("--documented-only", action="store_true",
                        help="serve only what the reference document shows: the list route answers 405 and user "
                             "objects carry id, name, description, expires_at (and token on creation)")
    args = parser.parse_args(argv)

    state_dir: Path = args.state_dir.resolve()
    context = None
    ca_file = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "ready.json").unlink(missing_ok=True)
        admin_token = read_or_create_admin_token(args.admin_token_file)
        store = Store(state_dir / "platform.sqlite3")
        if args.tls:
            from tests.sandbox import _tls

            files = _tls.ensure_certificates(state_dir)
            context = _tls.server_context(files)
            ca_file = str(files.ca_file)
    except (OSError, sqlite3.Error, ssl.SSLError, subprocess.CalledProcessError, RuntimeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        what = getattr(exc, "filename", None) or "the state directory"
        print(f"platform sandbox: cannot use {what}: {detail}; check --state-dir and --admin-token-file.",
              file=sys.stderr)
        return 1
    platform = Platform(store, admin_token, documented_only=args.documented_only)

    try:
        server = PlatformServer((args.host, args.port), platform, context)
    except OSError as exc:
        print(f"platform sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
              "choose another --port (0 picks a free one).", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host in ("::", "::1") else host)
    url = f"{'https' if context else 'http'}://{shown_host}:{port}"

    def stop(signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this very
        # thread: ask from another one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    write_ready(state_dir, {"url": url, "pid": os.getpid(), "ca_file": ca_file})
    print(f"platform sandbox listening on {url} (state {state_dir})", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        store.close()
        (state_dir / "ready.json").unlink(missing_ok=True)
        print("platform sandbox stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

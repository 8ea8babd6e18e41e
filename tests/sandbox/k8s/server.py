"""The HTTPS front of the emulator: routing, authentication, serialisation, watch streams."""

from __future__ import annotations

import copy
import datetime
import json
import logging
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.sandbox.k8s import patch as patching
from tests.sandbox.k8s import protobuf, rbac
from tests.sandbox.k8s.resources import (
    GROUPS,
    ResourceType,
    api_group,
    api_group_list,
    api_resource_list,
    lookup,
)
from tests.sandbox.k8s.store import ApiError, Store, not_found, now_rfc3339

if TYPE_CHECKING:
    from tests.sandbox.k8s.controller import Controller

log = logging.getLogger("k8s-emulator")

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-xapi-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
# Discovery and health are open to every authenticated identity, as the system:discovery
# ClusterRole makes them on a real cluster; /version and health also to anonymous callers.
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")
DISCOVERY_PREFIXES = ("/api", "/apis", "/openapi", "/version")
WATCH_MAX_SECONDS = 1800
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public")


@dataclass
class Route:
    rt: ResourceType
    namespace: str  # "" for cluster-scoped or all-namespaces requests
    name: str
    subresource: str
    watch_path: bool  # the legacy /watch/ prefix


class ParsedSelector:
    """A label selector in its string form: ``a=b,c!=d,e in (x,y),f notin (z),g,!h``."""

    _term = re.compile(
        r"\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
    )

    def __init__(self, text: str) -> None:
        self.terms: list[tuple[str, str, list[str]]] = []
        for raw in re.split(r",(?![^(]*\))", text or ""):
            if not raw.strip():
                continue
            match = self._term.match(raw)
            if not match:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"unable to parse requirement: {raw.strip()!r} is not a valid label selector term",
                )
            negate, key, op, value, set_op, set_values = match.groups()
            if negate:
                self.terms.append(("!", key, []))
            elif op:
                self.terms.append(("!=" if op == "!=" else "=", key, [value or ""]))
            elif set_op:
                self.terms.append((set_op, key, [v.strip() for v in set_values.split(",") if v.strip()]))
            else:
                self.terms.append(("exists", key, []))

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        for op, key, values in self.terms:
            present = key in labels
            if (op == "=" and labels.get(key) != values[0]) or (op == "!=" and present and labels[key] == values[0]):
                return False
            if (op == "in" and labels.get(key) not in values) or (op == "notin" and present and labels[key] in values):
                return False
            if (op == "exists" and not present) or (op == "!" and present):
                return False
        return True


def _field_value(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_selector(text: str) -> list[tuple[str, bool, str]]:
    terms = []
    for raw in (text or "").split(","):
        if not raw.strip():
            continue
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector: {raw.strip()!r}")
        terms.append((match.group(1), match.group(2) != "!=", match.group(3)))
    return terms


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _table_columns(rt: ResourceType) -> list[tuple[str, str]]:
    return {
        "Deployment": [("Ready", "string"), ("Up-to-date", "integer"), ("Available", "integer")],
        "StatefulSet": [("Ready", "string")],
        "DaemonSet": [
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
        ],
        "Job": [("Status", "string"), ("Completions", "string")],
        "CronJob": [("Schedule", "string"), ("Suspend", "boolean"), ("Active", "integer")],
        "ReplicaSet": [("Desired", "integer"), ("Current", "integer"), ("Ready", "integer")],
        "Pod": [("Ready", "string"), ("Status", "string"), ("Restarts", "string")],
        "Secret": [("Type", "string"), ("Data", "string")],
        "Namespace": [("Status", "string")],
        "Lease": [("Holder", "string")],
    }.get(rt.kind, [])


def _table_cells(rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if rt.kind == "Deployment":
        return [
            f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            status.get("updatedReplicas", 0),
            status.get("availableReplicas", 0),
        ]
    if rt.kind == "ReplicaSet":
        return [spec.get("replicas", 0), status.get("replicas", 0), status.get("readyReplicas", 0)]
    if rt.kind == "StatefulSet":
        return [f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}"]
    if rt.kind == "DaemonSet":
        return [
            status.get("desiredNumberScheduled", 0),
            status.get("currentNumberScheduled", 0),
            status.get("numberReady", 0),
            status.get("updatedNumberScheduled", 0),
            status.get("numberAvailable", 0),
        ]
    if rt.kind == "Job":
        done = any(c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or [])
        state = "Complete" if done else "Suspended" if spec.get("suspend") else "Running"
        wanted = spec.get("completions")
        return [state, f"{status.get('succeeded', 0)}/{wanted if wanted is not None else 1}"]
    if rt.kind == "CronJob":
        return [spec.get("schedule", ""), bool(spec.get("suspend")), len(status.get("active") or [])]
    if rt.kind == "Pod":
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for c in statuses if c.get("ready"))
        phase = "Terminating" if obj["metadata"].get("deletionTimestamp") else status.get("phase", "Pending")
        for container in statuses:
            state = container.get("state") or {}
            waiting = state.get("waiting") or state.get("terminated")
            if waiting and phase != "Terminating":
                phase = waiting.get("reason", phase)
        return [f"{ready}/{len(spec.get('containers') or [])}", phase, "0"]
    if rt.kind == "Secret":
        return [obj.get("type", "Opaque"), str(len(obj.get("data") or {}))]
    if rt.kind == "Namespace":
        return [status.get("phase", "Active")]
    if rt.kind == "Lease":
        return [spec.get("holderIdentity", "")]
    return []


def to_table(
    rt: ResourceType, objects: list[dict[str, Any]], list_rv: str | None, include_object: str
) -> dict[str, Any]:
    columns = [("Name", "string")] + _table_columns(rt) + [("Age", "string")]
    rows = []
    for obj in objects:
        if include_object == "Object":
            row_object: Any = obj
        elif include_object == "None":
            row_object = None
        else:
            row_object = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append(
            {
                "cells": [
                    obj["metadata"]["name"],
                    *_table_cells(rt, obj),
                    age(obj["metadata"].get("creationTimestamp")),
                ],
                "object": row_object,
            }
        )
    definitions = [
        {"name": n, "type": t, "format": "name" if n == "Name" else "", "description": n, "priority": 0}
        for n, t in columns
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": list_rv or ""},
        "columnDefinitions": definitions,
        "rows": rows,
    }


class App:
    """Everything a request handler needs: the store, identities, counters and the controller."""

    def __init__(self, store: Store, admin_token: str, static_tokens: dict[str, rbac.User] | None = None) -> None:
        self.store = store
        self.admin_token = admin_token
        self.static_tokens: dict[str, rbac.User] = dict(static_tokens or {})
        self.tokens: dict[str, rbac.User] = dict(self.static_tokens)
        self.controller: Controller | None = None
        self.counter_lock = threading.Lock()
        self.requests_total = 0
        self.by_route: dict[str, dict[str, int]] = {}
        self.by_user: dict[str, dict[str, int]] = {}

    def authenticate(self, header: str | None) -> rbac.User | None:
        if not header or not header.startswith("Bearer "):
            return None
        token = header[len("Bearer ") :].strip()
        if token and secrets.compare_digest(token, self.admin_token):
            return rbac.User("admin", ("system:masters", "system:authenticated"), admin=True)
        user = self.tokens.get(token)
        return user

    def add_token(self, user: str, groups: list[str] | None = None) -> str:
        token = "k8s_" + secrets.token_urlsafe(32)
        parts = user.split(":")
        implied = ["system:authenticated"]
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
            implied += ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}"]
        self.tokens[token] = rbac.User(user, tuple(implied + list(groups or [])))
        return token

    def count(self, route: str, user: str, status: int) -> None:
        with self.counter_lock:
            self.requests_total += 1
            for table, key in ((self.by_route, route), (self.by_user, user)):
                bucket = table.setdefault(key, {})
                bucket[str(status)] = bucket.get(str(status), 0) + 1

    def reset_counters(self) -> None:
        with self.counter_lock:
            self.requests_total = 0
            self.by_route.clear()
            self.by_user.clear()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 is what lets watch streams use chunked encoding, flushed per event.
    protocol_version = "HTTP/1.1"
    server: EmulatorServer
    server_version = "xapi-k8s-emulator/1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is logged once, by _log_request, without headers or bodies

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def app(self) -> App:
        return self.server.app

    def _read_body(self) -> bytes:
        return self._body

    def _consume_body(self) -> bytes:
        # Read every request's body before answering, even when refusing it: an unread body
        # would be parsed as the next request on this keep-alive connection.
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._status = status

    def _send_error(self, error: ApiError) -> None:
        self._send(error.code, error.status())

    def _log_request(self, started: float) -> None:
        # Request lines, identities and content types only: bodies may hold Secret data.
        log.info(
            "%s %s %s ct=%s accept=%s ua=%s -> %s %.0fms",
            self._user_name,
            self.command,
            self.path,
            self.headers.get("Content-Type", "-"),
            self.headers.get("Accept", "-"),
            (self.headers.get("User-Agent") or "-").split(" ")[0],
            self._status,
            (time.monotonic() - started) * 1000,
        )

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._status = 0
        self._user_name = "anonymous"
        self._route_key = "other"
        try:
            self._body = self._consume_body()
            self._handle()
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self._status = self._status or 499
        except Exception as exc:  # a bug in the emulator: answer like an apiserver would, keep serving
            log.exception("internal error on %s %s", self.command, self.path)
            self._send_error(
                ApiError(
                    500,
                    "InternalError",
                    f"an error on the server has prevented the request from succeeding ({type(exc).__name__})",
                )
            )
        finally:
            self.app.count(self._route_key, self._user_name, self._status)
            self._log_request(started)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        user = self.app.authenticate(self.headers.get("Authorization"))
        if user:
            self._user_name = user.name
        if path in PUBLIC_PATHS:
            self._route_key = f"get {path}"
            if path == "/version":
                self._send(200, VERSION)
            else:
                self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        if user is None:
            self._route_key = "unauthorized"
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if path.startswith("/_sandbox/"):
            self._route_key = f"sandbox {path}"
            if not user.admin:
                raise ApiError(403, "Forbidden", "the /_sandbox/ controls need the admin token")
            self._sandbox(path, query)
            return
        if self._discovery(path):
            return
        route = self._parse_route(path)
        if route is None:
            self._route_key = "notfound"
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self._resource(route, query, user)

    # -- discovery ---------------------------------------------------------------------------

    def _discovery(self, path: str) -> bool:
        if self.command != "GET":
            return False
        if path == "/api":
            body: Any = {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self._host()}],
            }
        elif path == "/api/v1":
            body = api_resource_list("", "v1")
        elif path == "/apis":
            body = api_group_list()
        elif path.startswith("/apis/") and path.count("/") == 2 and path.split("/")[2] in GROUPS:
            body = api_group(path.split("/")[2])
        elif (
            path.startswith("/apis/")
            and path.count("/") == 3
            and path.split("/")[2] in GROUPS
            and path.split("/")[3] in GROUPS[path.split("/")[2]]
        ):
            body = api_resource_list(path.split("/")[2], path.split("/")[3])
        elif path == "/openapi/v2":
            # kubectl wants protobuf here and treats an empty document as "no schema",
            # which makes it fall back to its built-in knowledge of the core types.
            self._route_key = "get /openapi/v2"
            self._send(200, b"", "application/octet-stream")
            return True
        else:
            return False
        self._route_key = "get discovery"
        self._send(200, body)
        return True

    def _host(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    # -- resources ---------------------------------------------------------------------------

    def _parse_route(self, path: str) -> Route | None:
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3 and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        if not rest:
            return None
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and lookup(group, version, rest[2]) is not None:
            namespace, rest = rest[1], rest[2:]
        rt = lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            return None
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if namespace and not rt.namespaced:
            return None
        if sub and sub not in rt.subresources:
            return None
        return Route(rt, namespace, name, sub, watch_path)

    def _verb(self, route: Route, query: dict[str, str]) -> str:
        if self.command == "GET":
            if route.watch_path or query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if route.name else "deletecollection",
        }.get(self.command, self.command.lower())

    def _resource(self, route: Route, query: dict[str, str], user: rbac.User) -> None:
        rt = route.rt
        verb = self._verb(route, query)
        resource_label = f"{rt.plural}/{route.subresource}" if route.subresource else rt.plural
        self._route_key = f"{verb} {resource_label}"
        fields = field_selector(query.get("fieldSelector", ""))
        named = route.name or next((v for k, eq, v in fields if k == "metadata.name" and eq), "")
        attr_namespace = route.namespace or (route.name if rt.plural == "namespaces" else "")
        attrs = rbac.Attributes(verb, rt.group, rt.plural, route.subresource, attr_namespace, named)
        if not rbac.allowed(self.app.store, user, attrs):
            raise ApiError(
                403,
                "Forbidden",
                rbac.forbidden_message(user, attrs),
                {"name": route.name, "group": rt.group, "kind": rt.plural},
            )
        if verb not in rt.verbs and not (route.subresource and verb in ("get", "update", "patch")):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if rt.namespaced and not route.namespace and route.name:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        dry_run = query.get("dryRun") == "All"
        if verb in ("list", "watch"):
            self._list_or_watch(route, query, verb == "watch", fields)
        elif verb == "get":
            obj = self.app.store.get(rt, route.namespace, route.name)
            if route.subresource == "scale":
                obj = self._scale_of(obj)
            self._respond_object(200, rt, obj, query)
        elif verb == "create":
            if route.name:  # POST goes to a collection; no subresource served here accepts create
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            body = self._json_body()
            self._check_kind(rt, body)
            if not rt.client_writable and rt.kind != "Pod":
                raise ApiError(
                    405, "MethodNotAllowed", f"{rt.plural} are created by the emulator's controllers, not by clients"
                )
            if rt.kind == "Pod":
                # A bare pod: the simulated kubelet owns its status; it lands on the first node.
                body["status"] = {"phase": "Pending", "qosClass": "BestEffort", "hostIP": "127.0.0.1"}
                if isinstance(body.get("spec"), dict):
                    body["spec"].setdefault("nodeName", "sandbox-node")
            namespace = route.namespace
            meta = body.get("metadata") or {}
            if not isinstance(meta, dict):
                raise ApiError(400, "BadRequest", "metadata must be an object")
            if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            if rt.namespaced and not namespace:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            obj = self.app.store.create(rt, namespace, body, dry_run=dry_run)
            self._respond_object(201, rt, obj, query)
        elif verb == "update":
            body = self._json_body()
            self._writable(rt, route)
            if route.subresource == "scale":
                obj = self._set_scale(route, body, dry_run)
            else:
                if not route.subresource:
                    self._check_kind(rt, body)
                obj = self.app.store.replace(
                    rt, route.namespace, route.name, body, subresource=route.subresource or None, dry_run=dry_run
                )
            self._respond_object(200, rt, obj, query)
        elif verb == "patch":
            self._writable(rt, route)
            self._patch(route, query, dry_run)
        elif verb == "delete":
            self._delete(route, dry_run)
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _writable(self, rt: ResourceType, route: Route) -> None:
        if not rt.client_writable:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"{rt.plural} are managed by the emulator's controllers; clients may only read them",
            )

    def _check_kind(self, rt: ResourceType, body: dict[str, Any]) -> None:
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind not in (None, rt.kind) or api_version not in (None, rt.group_version):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rt.group_version})"
                if kind == rt.kind
                else f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})",
            )

    def _json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if content_type in ("application/yaml", "application/apply-patch+yaml"):
            try:
                import yaml

                body = yaml.safe_load(raw.decode() or "{}")
            except Exception:
                raise ApiError(400, "BadRequest", "the request body is not valid YAML") from None
        elif content_type == "application/vnd.kubernetes.protobuf" and self.command == "POST":
            try:
                body = protobuf.decode(raw)
            except (protobuf.ProtobufError, UnicodeDecodeError) as exc:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: application/json, application/yaml ({exc})",
                ) from None
        elif content_type.startswith("application/vnd.kubernetes.protobuf"):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted "
                "media types include: application/json, application/yaml",
            )
        else:
            try:
                body = json.loads(raw.decode() or "{}")
            except ValueError:
                raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        return body

    def _respond_object(self, status: int, rt: ResourceType, obj: dict[str, Any], query: dict[str, str]) -> None:
        accept = self.headers.get("Accept") or ""
        if "as=Table" in accept and obj.get("kind") == rt.kind:
            self._send(status, to_table(rt, [obj], None, query.get("includeObject", "Metadata")))
        else:
            self._send(status, obj)

    def _list_or_watch(
        self, route: Route, query: dict[str, str], watch: bool, fields: list[tuple[str, bool, str]]
    ) -> None:
        rt = route.rt
        labels = ParsedSelector(query.get("labelSelector", ""))
        if route.name:
            fields = [*fields, ("metadata.name", True, route.name)]

        def matches(obj: dict[str, Any]) -> bool:
            if not labels.matches(obj["metadata"].get("labels")):
                return False
            return all((_field_value(obj, key) == value) == equal for key, equal, value in fields)

        namespace = route.namespace if rt.namespaced and route.namespace else None
        if watch:
            self._watch(rt, namespace, query, matches)
            return
        items, rv = self.app.store.list(rt, namespace, matches)
        accept = self.headers.get("Accept") or ""
        if "as=Table" in accept:
            self._send(200, to_table(rt, items, str(rv), query.get("includeObject", "Metadata")))
            return
        for item in items:
            # Items in a list carry no kind/apiVersion on a real server.
            item.pop("kind", None)
            item.pop("apiVersion", None)
        self._send(
            200,
            {
                "kind": rt.list_kind,
                "apiVersion": rt.group_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _watch(self, rt: ResourceType, namespace: str | None, query: dict[str, str], matches: Any) -> None:
        since = query.get("resourceVersion", "")
        try:
            since_rv = int(since) if since not in ("", "0") else None
        except ValueError:
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {since!r}") from None
        try:
            timeout = min(float(query.get("timeoutSeconds") or WATCH_MAX_SECONDS), WATCH_MAX_SECONDS)
        except ValueError:
            timeout = WATCH_MAX_SECONDS
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self._status = 200
        stop_at = time.monotonic() + timeout
        try:
            self.wfile.flush()
            for type_, obj in self.app.store.watch(rt, namespace, since_rv, stop_at, matches):
                if self.server.stopping.is_set():
                    self.close_connection = True
                    break
                if not type_:
                    if self._client_gone():
                        self.close_connection = True
                        return
                    continue
                line = json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()
            # The stream ends cleanly (timeoutSeconds): the connection stays usable, as with a real server.
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _client_gone(self) -> bool:
        """On an idle watch: has the client hung up? (Nothing else tells a quiet stream.)"""
        sock = self.connection
        try:
            sock.settimeout(0)
            try:
                return sock.recv(1) == b""
            finally:
                sock.settimeout(None)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True

    def _scale_of(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {
                "replicas": (obj.get("status") or {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
            },
        }

    def _set_scale(self, route: Route, body: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(
                422, "Invalid", f'Scale "{route.name}" is invalid: spec.replicas: must be a non-negative integer'
            )
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")

        def change(obj: dict[str, Any]) -> dict[str, Any]:
            if wanted_rv and wanted_rv != obj["metadata"]["resourceVersion"]:
                from tests.sandbox.k8s.store import conflict

                raise conflict(route.rt, route.name)
            obj["spec"]["replicas"] = replicas
            return obj

        return self._scale_of(
            self.app.store.update_with(route.rt, route.namespace, route.name, change, dry_run=dry_run)
        )

    def _patch(self, route: Route, query: dict[str, str], dry_run: bool) -> None:
        rt = route.rt
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        raw = self._read_body()
        if content_type == "application/apply-patch+yaml":
            try:
                import yaml

                document = yaml.safe_load(raw.decode() or "{}")
            except Exception:
                raise ApiError(400, "BadRequest", "the apply patch is not valid YAML") from None
            self._server_side_apply(route, document, dry_run, query)
            return
        try:
            document = json.loads(raw.decode() or "null")
        except ValueError:
            raise ApiError(400, "BadRequest", "the patch body is not valid JSON") from None
        appliers = {
            "application/merge-patch+json": patching.json_merge_patch,
            "application/strategic-merge-patch+json": patching.strategic_merge_patch,
            "application/json-patch+json": patching.json_patch,
        }
        applier = appliers.get(content_type)
        if applier is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: {', '.join(appliers)}, application/apply-patch+yaml",
            )

        def change(current: dict[str, Any]) -> dict[str, Any]:
            base = self._scale_of(current) if route.subresource == "scale" else current
            try:
                patched = applier(base, document)
            except patching.PatchError as exc:
                raise ApiError(
                    422 if content_type == "application/json-patch+json" else 400,
                    "Invalid" if content_type == "application/json-patch+json" else "BadRequest",
                    str(exc),
                ) from None
            if route.subresource == "scale":
                replicas = (patched.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise ApiError(422, "Invalid", "spec.replicas must be a non-negative integer")
                current["spec"]["replicas"] = replicas
                return current
            return patched

        sub = route.subresource if route.subresource == "status" else None
        obj = self.app.store.update_with(rt, route.namespace, route.name, change, subresource=sub, dry_run=dry_run)
        if route.subresource == "scale":
            obj = self._scale_of(obj)
        self._respond_object(200, rt, obj, query)

    def _server_side_apply(self, route: Route, document: Any, dry_run: bool, query: dict[str, str]) -> None:
        """A simplified server-side apply: create, or merge the applied fields (no field ownership)."""
        rt = route.rt
        if not isinstance(document, dict):
            raise ApiError(400, "BadRequest", "the apply patch must be an object")
        if not query.get("fieldManager"):
            raise ApiError(
                400, "BadRequest", "PATCH requests with the apply content type must set the fieldManager parameter"
            )
        self._check_kind(rt, document)
        document.setdefault("metadata", {})["name"] = route.name
        try:
            self.app.store.get(rt, route.namespace, route.name)
        except ApiError as exc:
            if exc.code != 404:
                raise
            obj = self.app.store.create(rt, route.namespace, document, dry_run=dry_run)
            self._respond_object(201, rt, obj, query)
            return
        obj = self.app.store.update_with(
            rt,
            route.namespace,
            route.name,
            lambda current: patching.strategic_merge_patch(current, document),
            dry_run=dry_run,
        )
        self._respond_object(200, rt, obj, query)

    def _delete(self, route: Route, dry_run: bool) -> None:
        rt = route.rt
        raw = self._read_body()
        try:
            options = json.loads(raw.decode()) if raw.strip() else {}
        except ValueError:
            raise ApiError(400, "BadRequest", "the DeleteOptions body is not valid JSON") from None
        if not isinstance(options, dict):
            raise ApiError(400, "BadRequest", "the DeleteOptions body must be a JSON object")
        store = self.app.store
        preconditions = (options or {}).get("preconditions") or {}
        with store.lock:
            current = store.peek(rt, route.namespace, route.name)
            if current is None:
                raise not_found(rt, route.name)
            if (
                preconditions.get("resourceVersion")
                and preconditions["resourceVersion"] != current["metadata"]["resourceVersion"]
            ):
                from tests.sandbox.k8s.store import conflict

                raise conflict(rt, route.name)
            if preconditions.get("uid") and preconditions["uid"] != current["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                    f"UID in object meta: {current['metadata']['uid']}",
                )
            if dry_run:
                self._send(200, copy.deepcopy(current) if rt.kind == "Pod" else self._success(rt, current))
                return
            if rt.kind == "Pod" and self.app.controller is not None:
                grace = options.get("gracePeriodSeconds")
                obj = self.app.controller.terminate_pod(current, None if grace is None else float(grace))
                self._send(200, obj)
                return
            if rt.kind == "Namespace":
                self._delete_namespace_contents(route.name)
            obj = store.delete(rt, route.namespace, route.name)
        self._send(200, self._success(rt, obj))

    def _success(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": obj["metadata"]["name"],
                "group": rt.group,
                "kind": rt.plural,
                "uid": obj["metadata"]["uid"],
            },
        }

    def _delete_namespace_contents(self, namespace: str) -> None:
        from tests.sandbox.k8s.resources import RESOURCE_TYPES

        for rt in RESOURCE_TYPES:
            if rt.namespaced:
                for obj in list(self.app.store.items(rt, namespace)):
                    self.app.store.delete(rt, namespace, obj["metadata"]["name"])

    # -- sandbox controls --------------------------------------------------------------------

    def _sandbox(self, path: str, query: dict[str, str]) -> None:
        controller = self.app.controller
        body = self._json_body() if self.command in ("POST", "PUT") else {}
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        if path == "/_sandbox/state" and self.command == "GET":
            state: dict[str, Any] = {
                "now": now_rfc3339(),
                "resourceVersion": str(self.app.store.rv),
                "requests": {
                    "total": self.app.requests_total,
                    "by_route": copy.deepcopy(self.app.by_route),
                    "by_user": copy.deepcopy(self.app.by_user),
                },
            }
            if controller is not None:
                state.update(controller.state())
            self._send(200, {"data": state})
        elif path == "/_sandbox/config" and self.command in ("GET", "POST"):
            if controller is None:
                raise ApiError(404, "NotFound", "no controller is running")
            if self.command == "POST":
                controller.configure(body)
            self._send(200, {"data": controller.config.as_dict()})
        elif path == "/_sandbox/faults" and self.command in ("GET", "POST", "DELETE"):
            if controller is None:
                raise ApiError(404, "NotFound", "no controller is running")
            if self.command == "POST":
                controller.add_fault(body)
            elif self.command == "DELETE":
                controller.clear_faults()
            self._send(200, {"data": controller.faults_list()})
        elif path == "/_sandbox/tokens" and self.command == "POST":
            user = body.get("user")
            groups = body.get("groups") or []
            if not isinstance(user, str) or not user or not isinstance(groups, list):
                raise ApiError(
                    400, "BadRequest", 'POST /_sandbox/tokens needs {"user": "<name>"} and optionally "groups": [..]'
                )
            self._send(201, {"data": {"user": user, "token": self.app.add_token(user, groups)}})
        elif path == "/_sandbox/reset" and self.command == "POST":
            self._reset_world()
            self._send(200, {"data": {}})
        elif path == "/_sandbox/cronjobs/run" and self.command == "POST":
            if controller is None:
                raise ApiError(404, "NotFound", "no controller is running")
            namespace, name = body.get("namespace"), body.get("name")
            if not isinstance(namespace, str) or not isinstance(name, str):
                raise ApiError(400, "BadRequest", 'POST /_sandbox/cronjobs/run needs {"namespace": .., "name": ..}')
            with self.app.store.lock:
                job = controller.run_cronjob(namespace, name)
            controller.wake.set()
            self._send(201, {"data": job})
        elif path == "/_sandbox/counters/reset" and self.command == "POST":
            self.app.reset_counters()
            if controller is not None:
                controller.reset_counters()
            self._send(200, {"data": {}})
        else:
            raise ApiError(404, "NotFound", f"no sandbox control {self.command} {path}")

    def _reset_world(self) -> None:
        """Back to a fresh start: only the system namespaces, no faults, initial timings, no extra tokens."""
        from tests.sandbox.k8s.resources import RESOURCE_TYPES

        store = self.app.store
        with store.lock:
            for rt in RESOURCE_TYPES:
                for obj in list(store.items(rt)):
                    meta = obj["metadata"]
                    if rt.plural == "namespaces" and meta["name"] in SYSTEM_NAMESPACES:
                        continue
                    store.delete(rt, meta.get("namespace", ""), meta["name"])
            if self.app.controller is not None:
                self.app.controller.reset()
        self.app.tokens = dict(self.app.static_tokens)
        self.app.reset_counters()


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, ssl_context: Any) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.stopping = threading.Event()
        super().__init__(address, Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # Headers and body leave in separate TLS records; without NODELAY, Nagle plus the
        # client's delayed ACK would add ~40 ms to every response.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens in the worker thread (do_handshake_on_connect on first
        # read), so one slow client cannot stall the accept loop.
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshake failures from clients that do not trust the CA are expected noise.
        log.debug("connection error from %s", client_address, exc_info=True)

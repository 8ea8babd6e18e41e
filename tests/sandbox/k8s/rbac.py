"""Role/RoleBinding authorization for the emulator's non-admin tokens.

Only namespaced Roles and RoleBindings are served, so a non-admin identity can do only
what a RoleBinding in the request's namespace grants it; cluster-wide requests (listing
across namespaces, creating namespaces) are denied to it, as they would be on a cluster
that gives it no ClusterRoleBinding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.sandbox.k8s.resources import lookup
from tests.sandbox.k8s.store import Store


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = field(default=())
    admin: bool = False


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


def _subject_matches(subject: dict[str, Any], user: User, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == user.name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"system:serviceaccount:{namespace}:{name}"
    return False


def _rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    def has(values: Any, wanted: str) -> bool:
        return isinstance(values, list) and ("*" in values or wanted in values)

    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if not has(rule.get("verbs"), attrs.verb) or not has(rule.get("apiGroups"), attrs.group):
        return False
    resources = rule.get("resources")
    if not (has(resources, resource) or (attrs.subresource and has(resources, f"*/{attrs.subresource}"))):
        return False
    names = rule.get("resourceNames")
    if names:
        # Named rules cover requests about one object only (create never names one).
        return bool(attrs.name) and attrs.name in names
    return True


def allowed(store: Store, user: User, attrs: Attributes) -> bool:
    if user.admin:
        return True
    if not attrs.namespace:
        return False
    roles_rt = lookup("rbac.authorization.k8s.io", "v1", "roles")
    bindings_rt = lookup("rbac.authorization.k8s.io", "v1", "rolebindings")
    assert roles_rt is not None and bindings_rt is not None
    with store.lock:
        for binding in store.items(bindings_rt, attrs.namespace):
            if not any(
                _subject_matches(s, user, attrs.namespace) for s in binding.get("subjects") or [] if isinstance(s, dict)
            ):
                continue
            ref = binding.get("roleRef") or {}
            if ref.get("kind") != "Role":
                continue  # ClusterRoles are not served: a binding to one grants nothing here
            role = store.peek(roles_rt, attrs.namespace, ref.get("name", ""))
            if role and any(_rule_allows(rule, attrs) for rule in role.get("rules") or [] if isinstance(rule, dict)):
                return True
    return False


def forbidden_message(user: User, attrs: Attributes) -> str:
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    subject = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
    what = f'{subject} "{attrs.name}"' if attrs.name else subject
    scope = f' in the namespace "{attrs.namespace}"' if attrs.namespace else " at the cluster scope"
    return (
        f'{what} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{resource}" '
        f'in API group "{attrs.group}"{scope}'
    )

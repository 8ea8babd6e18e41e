"""Helpers shared by the unit tests: direct sandbox calls that do not go through the code under test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".collections"

# The client and the modules import through the installed collection path, as Ansible does.
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


def create_user(api: Any, name: str, days: int = 90) -> tuple[str, str]:
    """A system user made directly through the sandbox (not through the code under test): (id, token)."""
    response = api.api("POST", "/api/v1/system-users", json={"name": name, "expires_in_days": days})
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return data["id"], data["token"]


def add_fault(api: Any, **rule: Any) -> None:
    response = api.api("POST", "/_sandbox/faults", json=rule)
    assert response.status_code == 201, response.text


def users_of(api: Any, name: str | None = None) -> list[dict[str, Any]]:
    return [u for u in api.state()["system_users"] if name is None or u["name"] == name]


def route_counts(api: Any, route: str) -> dict[str, int]:
    return api.state()["requests"]["by_route"].get(route, {})

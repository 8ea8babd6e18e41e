"""Tiny HTTP helpers for tests and seeding, on urllib only (the sandbox package needs nothing else).

``api(url, "POST", "/api/v1/system-users", token=admin, json={...})`` returns ``(status, body)``
whatever the status; ``body`` is the decoded JSON, or ``{"raw": text}`` when the answer is not JSON.
"""

from __future__ import annotations

import json as jsonlib
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _context(url: str, ca: str | Path | None) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def api(
    url: str,
    method: str,
    path: str,
    token: str | None = None,
    json: Any = None,
    ca: str | Path | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, Any]]:
    """One request to ``url + path``; the answer's status and decoded body, errors included."""
    headers = {"Accept": "application/json"}
    data = None
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if json is not None:
        data = jsonlib.dumps(json).encode("utf-8")
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers, method=method.upper())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_context(url, ca)) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        body = jsonlib.loads(text) if text else {}
    except ValueError:
        body = {"raw": text}
    if not isinstance(body, dict):
        body = {"raw": text}
    return status, body


def wait_ready(state_dir: str | Path, timeout: float = 30, process: Any = None) -> dict[str, Any]:
    """The sandbox's ready.json once it exists; raises if it does not appear in time or the process died."""
    ready = Path(state_dir) / "ready.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return jsonlib.loads(ready.read_text())
        except (OSError, ValueError):
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the sandbox exited with code {process.returncode} before it was ready")
        time.sleep(0.05)
    raise TimeoutError(f"{ready} did not appear within {timeout:.0f}s")

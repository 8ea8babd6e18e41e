"""Small helpers on stored objects shared by the controllers (hashes, owners, omitempty)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

ANNOTATION = "sandbox.xapi.io/"
HASH_LABEL = "pod-template-hash"
REVISION_LABEL = "controller-revision-hash"
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def fingerprint(token: str | None) -> str | None:
    return hashlib.sha256(token.encode()).hexdigest()[:8] if token else None


def template_hash(template: dict[str, Any]) -> str:
    clean = copy.deepcopy(template)
    labels = (clean.get("metadata") or {}).get("labels", {})
    labels.pop(HASH_LABEL, None)
    labels.pop(REVISION_LABEL, None)
    digest = int.from_bytes(hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).digest()[:8], "big")
    out = ""
    while len(out) < 10:
        digest, rem = divmod(digest, len(SAFE_ALPHABET))
        out += SAFE_ALPHABET[rem]
    return out


def resolve_int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        fraction = int(text[:-1]) * total / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return int(text)


def owner_uid(obj: dict[str, Any]) -> str | None:
    """The uid of the object's controller (the ownerReference with ``controller: true``)."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to ``obj`` as its controller, the way the real controllers write them."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def set_if(container: dict[str, Any], key: str, value: Any) -> None:
    """Status fields are ``omitempty`` in Go: zero values are absent, not 0."""
    if value:
        container[key] = value
    else:
        container.pop(key, None)

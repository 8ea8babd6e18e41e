"""Rotation against a platform that serves only the routes the reference document shows.

The sandbox runs with --documented-only: the list route answers 405 and user objects carry only
id, name, description and expires_at (and the token on creation). Every guarantee must hold all
the same: one new credential, the old one deactivated, zero 401s for the workloads, a crash at any
step boundary resumed by the next run, and a lost create answer that never turns into a second
credential behind the operator's back.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _start_sandbox, _stop_sandbox
from tests.integration.test_rotation import STATE_ANNOTATIONS, Service, outcome
from tests.integration.test_rotation_crash import BOUNDARIES, _crash_then_resume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory):
    """Platform sandbox serving only the documented routes and fields, and the Kubernetes emulator."""
    directory = tmp_path_factory.mktemp("documented-sandbox")
    running = _start_sandbox(directory, "--documented-only", "--no-seed")
    listed = running.api("GET", "/api/v1/system-users")
    assert listed.status_code == 405, "the sandbox serves a list route in documented-only mode"
    yield running
    _stop_sandbox(directory)


@pytest.mark.parametrize("strategy", ["restart", "reload"])
def test_rotates_with_the_documented_routes_only(documented: Any, tmp_path: Path, strategy: str) -> None:
    service = Service(documented, tmp_path, strategy=strategy)

    first = service.rotate()

    assert first.returncode == 0, first.stdout[-4000:]
    summary = outcome(first)
    assert summary.startswith(f"rotated ({service.original_id} -> "), summary
    # What the platform cannot show is said, not guessed: no sweep, and no last_used_at to wait for.
    assert "the orphan sweep needs the platform's list route, which it does not serve, and was skipped" in summary
    assert "does not report when a credential was last used" in summary
    new_id = service.assert_rotated_cleanly(service.original_id)
    service.assert_no_failed_requests(service.original_id, new_id)
    assert len(service.users()) == 2, [u["name"] for u in service.users()]

    again = service.rotate()
    assert again.returncode == 0 and outcome(again).startswith("not due ("), outcome(again)


def test_a_crash_at_any_step_boundary_is_resumed_without_the_list_route(documented: Any, tmp_path: Path) -> None:
    # The boundary right after the create is the one the list route used to settle: there the next
    # run creates again under the recorded name, which the platform refuses only if the dead run's
    # create went through (then the operator is told; see the next test). A crash before the create
    # was sent leaves nothing behind.
    boundaries = [b for b in BOUNDARIES if b != "Write the Secrets: store the new tokens as pending"]
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(_crash_then_resume, documented, tmp_path / f"crash{i}", boundary)
                   for i, boundary in enumerate(boundaries)]
        failures = [message for future in futures if (message := future.result())]
    assert not failures, "\n".join(failures)


def test_a_lost_create_answer_is_reported_and_never_silently_replaced(documented: Any, tmp_path: Path) -> None:
    service = Service(documented, tmp_path)
    documented.api("POST", "/_sandbox/faults", json={
        "method": "POST", "path": "/api/v1/system-users", "drop_after_commit": True, "count": 1}).raise_for_status()
    try:
        lost = service.rotate()
    finally:
        documented.api("DELETE", "/_sandbox/faults")

    # The create happened but its answer was lost: one sentence names the credential and what to check.
    assert lost.returncode != 0
    name = service.annotations()["xapi.io/pending-name"]
    summary = outcome(lost)
    assert summary.startswith(f"failed (Could not create the new system user {name} ("), summary
    assert "deactivate it by id in the platform's console, then re-run" in summary
    orphans = [u for u in service.users() if u["name"] == name]
    assert len(orphans) == 1 and orphans[0]["active"], orphans
    assert service.data()["token"] == service.original_token
    assert service.annotations()["xapi.io/rotation-phase"] == "creating"

    # The next run does not create another credential behind the operator's back: the platform
    # refuses the recorded name while the orphan is active, and the run says what to do.
    again = service.rotate()
    assert again.returncode != 0
    assert "deactivate it by id in the platform's console" in outcome(again), outcome(again)
    assert {u["id"] for u in service.users() if u["active"]} == {service.original_id, orphans[0]["id"]}
    assert len(service.users()) == 2, "a second new credential was created"

    # The operator deactivates it; the next run resumes under the same name and finishes.
    documented.api("POST", f"/api/v1/system-users/{orphans[0]['id']}/deactivate").raise_for_status()
    finished = service.rotate()
    assert finished.returncode == 0, finished.stdout[-4000:]
    assert outcome(finished).startswith(f"rotated ({service.original_id} -> "), outcome(finished)
    new_id = service.assert_rotated_cleanly(service.original_id)
    assert new_id != orphans[0]["id"]
    assert not any(k in STATE_ANNOTATIONS for k in service.annotations())
    service.assert_no_failed_requests(service.original_id, new_id)

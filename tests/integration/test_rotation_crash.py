"""Crash safety: kill ansible-playbook (SIGKILL, workers included) at every step boundary, run again.

After the second run there must be exactly one active credential, the one the Secret references,
the old one deactivated, no orphan left active, no rotation state in the Secret, and no request of
the workload refused along the way. The scenarios run a few at a time, each on its own service, a
StatefulSet (one pod replaced at a time, in ordinal order); test_rotation_documented_only.py runs the
same scenarios on a Deployment, so both kinds keep a crash at every boundary covered.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_rotation import STATE_ANNOTATIONS, Service, outcome

pytestmark = pytest.mark.slow

# The banner of the task during which the run dies, in the order the steps run. Every write of the
# Secret and every change on the platform or the cluster has a boundary before and after it here.
BOUNDARIES = [
    "Write the Secrets: take the rotation locks and record the new credentials' names",  # nothing written
    "Create the new system users",                              # lock and name recorded (phase creating)
    "Write the Secrets: store the new tokens as pending",       # user created, its token only in the dead run
    "Verify the pending tokens against the API",                # pending token in the companion Secret
    "Write the Secrets: promote the pending credentials",       # verified, not promoted
    "Restart the workloads: restart the workloads",             # phase promoted, nothing restarted yet
    "Wait: wait for the rollouts and until no pod holds the old token",  # restart under way
    "Deactivate the credentials: old and unused credentials",   # rollout done, old pods gone
    "Write the Secrets: clear the rotation state and release the locks",  # old credential deactivated
    "Conclude the run",                                         # all done
]
# The crash tests use the default lock settings: the run right after a crash waits for the dead
# run's lock to lapse (a minute at most), then resumes.


def resumed_cleanly(service: Service, result: Any, wanted: str, allow_expired_lock: bool = False) -> list[str]:
    """What is wrong after the run that followed a crash: its summary must start with ``wanted``, and
    the service must be rotated cleanly, with no failed request and at most one discarded credential."""
    if result.returncode != 0:
        return [f"the second run failed: {result.stdout[-3000:]}"]
    problems = []
    try:
        summary = outcome(result)
        if not summary.startswith(wanted):
            problems.append(f"summary {summary!r}")
        new_id = service.assert_rotated_cleanly(service.original_id, allow_expired_lock=allow_expired_lock)
        service.assert_no_failed_requests(service.original_id, new_id)
        stray = [u for u in service.users() if u["id"] not in (service.original_id, new_id)]
        if any(u["active"] for u in stray):
            problems.append(f"orphans left active: {stray}")
        if len(stray) > 1:
            problems.append(f"more than one credential was created and discarded: {stray}")
    except AssertionError as error:
        problems.append(str(error))
    return problems


def _crash_then_resume(sandbox: Any, directory: Path, boundary: str, kind: str = "Deployment") -> str | None:
    directory.mkdir()
    service = Service(sandbox, directory, kind=kind)
    service.rotate_until(boundary)
    # Run again at once, as an operator (or the next scheduled job) would.
    done = boundary == "Conclude the run"
    problems = resumed_cleanly(service, service.rotate(), "not due (" if done else "rotated (")
    return f"{boundary}: " + "; ".join(problems) if problems else None


def test_a_crash_at_any_step_boundary_is_resumed_by_the_next_run(sandbox: Any, tmp_path: Path) -> None:
    # Five at a time: each scenario is mostly waiting (for pods, and for the dead run's lock to lapse).
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(_crash_then_resume, sandbox, tmp_path / f"crash{i}", boundary, "StatefulSet")
                   for i, boundary in enumerate(BOUNDARIES)]
        failures = [message for future in futures if (message := future.result())]
    assert not failures, "\n".join(failures)


def test_abort_discards_a_pending_credential(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path)
    service.rotate_until("Write the Secrets: promote the pending credentials")
    pending_id = service.companion()["metadata"]["annotations"]["xapi.io/pending-id"]
    assert "pending-token" in (service.companion().get("data") or {})
    assert "pending-token" not in service.data()  # the Secret the pods read did not change

    result = service.rotate({"credential_rotation_abort": True})

    assert result.returncode == 0, result.stdout[-3000:]
    discarded = f"aborted (the interrupted rotation was discarded, the new credential {pending_id}"
    assert outcome(result).startswith(discarded)
    assert [u["id"] for u in service.active_users()] == [service.original_id]
    data = service.data()
    assert data["token"] == service.original_token and "pending-token" not in data
    assert not any(k in STATE_ANNOTATIONS for k in service.annotations())
    assert not (service.companion().get("data") or {}), "the companion Secret still holds tokens"
    service.assert_no_failed_requests(service.original_id)


def test_abort_after_promotion_rolls_back(sandbox: Any, tmp_path: Path) -> None:
    service = Service(sandbox, tmp_path)
    service.rotate_until("Wait: wait for the rollouts and until no pod holds the old token")
    new_id = service.data()["id"]
    assert new_id != service.original_id

    result = service.rotate({"credential_rotation_abort": True})

    assert result.returncode == 0, result.stdout[-3000:]
    summary = outcome(result)
    assert summary.startswith(f"aborted (rolled back: the Secret holds the previous credential {service.original_id}")
    assert f"the new credential {new_id} was deactivated" in summary
    assert [u["id"] for u in service.active_users()] == [service.original_id]
    assert service.data()["token"] == service.original_token
    assert not any(k in STATE_ANNOTATIONS for k in service.annotations())
    service.assert_no_failed_requests(service.original_id, new_id)


def test_no_rollback_to_a_credential_an_earlier_run_deactivated(sandbox: Any, tmp_path: Path) -> None:
    # The dead run had deactivated the old credential; the next run's health check then fails.
    service = Service(sandbox, tmp_path)
    service.rotate_until("Write the Secrets: clear the rotation state and release the locks")
    new_id = service.data()["id"]
    assert [u["id"] for u in service.active_users()] == [new_id]

    result = service.rotate({"credential_rotation_health_url": "http://127.0.0.1:9/health",
                             "credential_rotation_health_timeout": 2})

    assert result.returncode != 0
    summary = outcome(result)
    assert summary.startswith("failed (The service's health URL did not answer 200 within 2 s"), summary
    assert f"not rolled back, because the previous credential {service.original_id} is no longer active" in summary
    data = service.data()
    assert data["id"] == new_id and [u["id"] for u in service.active_users()] == [new_id]
    assert service.annotations()["xapi.io/rotation-phase"] == "promoted"
    service.assert_no_failed_requests(new_id)

    # Once the service is healthy again (no health URL here), the next run finishes the rotation.
    finished = service.rotate()
    assert finished.returncode == 0, finished.stdout[-3000:]
    service.assert_rotated_cleanly(service.original_id)

"""The fleet triage (roles/credential_rotation/tasks/triage.yml) in front of rotate.yml and check_expiry.yml.

It must settle exactly the services the per-service role would leave alone, hand every other one to
the role, and produce the same lines, outcomes and failures as the role would have.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, ansible_env, playbook_command
from tests.integration.test_rotation import ROTATE, Service, assert_no_token, outcome

pytestmark = pytest.mark.slow

ROLE_INSPECT = "TASK [xapi.system_auth.credential_rotation : Check the inputs the argument spec cannot express]"


def _fleet(services: dict[str, tuple[Service, dict[str, Any]]], tmp_path: Path) -> str:
    """One inventory with a host per service (named by the key), each with extra host vars."""
    hosts = {}
    for host, (service, extra) in services.items():
        variables = yaml.safe_load(service.inventory.read_text())["services"]["hosts"][service.name]
        hosts[host] = {**variables, **extra}
    path = tmp_path / f"fleet-{len(list(tmp_path.iterdir()))}.yml"
    path.write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    return str(path)


def _run(sandbox: Any, playbook: str, inventory: str, extra_vars: dict[str, Any] | None = None,
         check: bool = False, verbosity: int = 0, diff: bool = False) -> subprocess.CompletedProcess:
    # Several namespaces in one run: the sandbox's admin kubeconfig (the grants are tested per service
    # in test_rotation.py, whose second run goes through the triage with deploy/rbac.yml's Role).
    return subprocess.run(playbook_command(playbook, inventory, extra_vars, check=check, diff=diff,
                                           verbosity=verbosity),
                          cwd=REPO, env=ansible_env(sandbox, {"KUBECONFIG": sandbox.kubeconfig}),
                          capture_output=True, text=True, timeout=600)


def _role_hosts(result: subprocess.CompletedProcess) -> set[str]:
    """The hosts that ran the per-service role's inspection (its first task)."""
    hosts: set[str] = set()
    for block in result.stdout.split("\nTASK [")[1:]:
        if ("TASK [" + block).startswith(ROLE_INSPECT):
            hosts |= set(re.findall(r"^(?:ok|fatal|changed): \[([^\]]+)\]", block, re.MULTILINE))
    return hosts


def test_rotate_settles_fresh_services_and_hands_the_others_to_the_role(sandbox: Any, tmp_path: Path) -> None:
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    other_fresh = Service(sandbox, tmp_path, expires_in_days=30)
    due = Service(sandbox, tmp_path, expires_in_days=5)
    fleet = _fleet({
        "fresh": (fresh, {}),
        "due": (due, {}),
        "missing": (other_fresh, {"credential_rotation_secret_name": "no-such-secret"}),
        # Bad input on a service with nothing due still gets the role's one sentence, and fails.
        "short": (other_fresh, {"credential_rotation_threshold_days": 2}),
    }, tmp_path)
    before = fresh.secret()["metadata"]["resourceVersion"]

    result = _run(sandbox, ROTATE, fleet)

    assert result.returncode != 0
    assert _role_hosts(result) == {"due", "missing", "short"}, result.stdout[-3000:]
    assert re.fullmatch(r"not due \(29 days left\)", outcome(result, "fresh")), outcome(result, "fresh")
    assert outcome(result, "due").startswith(f"rotated ({due.original_id} -> ")
    assert "does not exist; create it with the service's current token" in outcome(result, "missing")
    text = " ".join(result.stdout.split())
    assert "credential_rotation_threshold_days is 2, below the minimum of 3 days" in text
    assert "Credential rotation of fresh failed" not in text
    for host in ("missing", "short"):
        assert re.search(rf"^{host}\s+:.*failed=1", result.stdout, re.MULTILINE), result.stdout[-2000:]
    due.assert_rotated_cleanly(due.original_id)
    assert fresh.secret()["metadata"]["resourceVersion"] == before
    assert [u["id"] for u in fresh.active_users()] == [fresh.original_id]
    assert [u["id"] for u in other_fresh.active_users()] == [other_fresh.original_id]
    assert_no_token({"stdout": result.stdout, "stderr": result.stderr},
                    [fresh.original_token, due.original_token, other_fresh.original_token, due.token()])

    # Forcing, or check mode, reach the role (or its preview) for every service as before.
    preview = _run(sandbox, ROTATE, _fleet({"fresh": (fresh, {})}, tmp_path), check=True)
    assert preview.returncode == 0
    assert outcome(preview, "fresh") == "not due (29 days left; nothing to do)"
    forced = _run(sandbox, ROTATE, _fleet({"fresh": (fresh, {})}, tmp_path), {"credential_rotation_force": True},
                  check=True)
    assert forced.returncode == 0 and _role_hosts(forced) == {"fresh"}
    assert outcome(forced, "fresh").startswith("would rotate (29 days left (threshold 7, forced)")


def test_an_argument_spec_error_sends_every_service_to_the_role(sandbox: Any, tmp_path: Path) -> None:
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    fleet = _fleet({"fresh": (fresh, {}), "odd": (fresh, {"credential_rotation_strategy": "rolling"})}, tmp_path)

    result = _run(sandbox, ROTATE, fleet)

    assert result.returncode != 0
    assert _role_hosts(result) == {"fresh"}  # odd stops at the role's argument spec, before inspecting
    assert outcome(result, "fresh") == "not due (29 days left)"
    assert "credential_rotation_strategy" in result.stdout and "rolling" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_check_expiry_lines_are_the_same_from_the_triage_and_from_the_role(sandbox: Any, tmp_path: Path) -> None:
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    fleet = _fleet({"fresh": (fresh, {})}, tmp_path)

    settled = _run(sandbox, "playbooks/check_expiry.yml", fleet)
    # A setting the triage leaves to the role (an orphan sweep) sends it through the per-service inspection.
    inspected = _run(sandbox, "playbooks/check_expiry.yml", fleet, {"credential_rotation_sweep_orphans": True})

    assert settled.returncode == 0 and inspected.returncode == 0, inspected.stdout[-2000:]
    assert _role_hosts(settled) == set() and _role_hosts(inspected) == {"fresh"}
    line = f"fresh: {fresh.original_id}, 29 days left"
    for result in (settled, inspected):
        lines = [" ".join(m.split()) for m in re.findall(r"^ +- '?(fresh: [^\n]*(?:\n {8}[^\n]*)*)", result.stdout,
                                                             re.MULTILINE)]
        assert [entry.rstrip("'") for entry in lines] == [line], result.stdout[-2000:]


def test_a_failed_batch_lookup_leaves_the_services_to_the_role(sandbox: Any, tmp_path: Path) -> None:
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    fleet = _fleet({"fresh": (fresh, {})}, tmp_path)
    # The triage's lookup gets the error; the role's own lookup, the next request, does not.
    sandbox.api("POST", "/_sandbox/faults", json={
        "method": "GET", "path": f"/api/v1/system-users/{fresh.original_id}", "status": 403, "count": 1,
    }).raise_for_status()

    result = _run(sandbox, ROTATE, fleet)

    assert result.returncode == 0, result.stdout[-3000:]
    assert _role_hosts(result) == {"fresh"}
    assert outcome(result, "fresh") == "not due (29 days left)"
    assert sandbox.api("GET", "/_sandbox/faults").json()["data"] == []  # used up: the triage did get the error


def test_a_variable_that_cannot_be_templated_fails_its_service_alone(sandbox: Any, tmp_path: Path) -> None:
    fresh = Service(sandbox, tmp_path, expires_in_days=30)
    fleet = _fleet({"fresh": (fresh, {}),
                    "undefined": (fresh, {"credential_rotation_description": "{{ no_such_variable }}"}),
                    # Not even parseable: the triage itself stops, and every service goes to the role.
                    "unparsable": (fresh, {"credential_rotation_description": "{{ ( }}"})}, tmp_path)

    result = _run(sandbox, ROTATE, fleet)

    assert result.returncode != 0
    assert _role_hosts(result) == {"fresh"}  # the other two stop at the role's argument validation
    assert outcome(result, "fresh") == "not due (29 days left)"
    assert "no_such_variable" in result.stdout
    assert "Credential rotation of fresh failed" not in " ".join(result.stdout.split())
    for host in ("undefined", "unparsable"):
        assert re.search(rf"^{host}\s+:.*failed=1", result.stdout, re.MULTILINE), result.stdout[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert [u["id"] for u in fresh.active_users()] == [fresh.original_id]

    # Without the unparsable one, the triage runs and settles fresh; undefined still fails in the role.
    del_unparsable = _fleet({"fresh": (fresh, {}),
                             "undefined": (fresh, {"credential_rotation_description": "{{ no_such_variable }}"})},
                            tmp_path)
    settled = _run(sandbox, ROTATE, del_unparsable)
    assert settled.returncode != 0
    assert _role_hosts(settled) == set()
    assert outcome(settled, "fresh") == "not due (29 days left)"
    assert re.search(r"^undefined\s+:.*failed=1", settled.stdout, re.MULTILINE), settled.stdout[-2000:]

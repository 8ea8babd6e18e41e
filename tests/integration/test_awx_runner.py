"""Running where operators run it: AWX (through ansible-runner, the engine AWX uses) and cron.

The AWX test lays out a private data directory the way AWX does for a job:

- ``project/``: the project checkout (the repository's tracked files, nothing installed);
- ``inventory/hosts``: an executable script printing the inventory as JSON, one host per service;
- ``env/envvars``: what the job's credentials inject: the "xapi platform API" credential type
  (``extensions/awx/credential_type.yml``) rendered with this sandbox's values, and AWX's built-in
  Kubernetes bearer-token credential (``K8S_AUTH_*``); no KUBECONFIG;
- ``env/extravars``: the survey answers (strings, as AWX sends them) and never a token;
- ``env/cmdline``: the job template's prompted limit.

The collections come from the built tarball installed next to kubernetes.core, as in the
execution environment. The runner's own process environment carries no XAPI_*, K8S_* or
KUBECONFIG, so whatever reaches the modules came from the credential injection.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2 import Environment, StrictUndefined

from tests.sandbox.seed import Cluster, seed_service, wait_available

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
KUBERNETES_CORE = REPO / ".collections" / "ansible_collections" / "kubernetes" / "core"
CRON = REPO / "hack" / "cron-rotate.sh"
NAMESPACE = "awx-jobs"

pytestmark = pytest.mark.slow


def _base_env() -> dict[str, str]:
    """The runner's process environment: none of the job's secrets or connection settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XAPI_", "K8S_", "ANSIBLE_")) and k != "KUBECONFIG"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class SecretData(dict):
    """A Secret's decoded data whose repr shows token fingerprints only: a failed assert must not print a token."""

    def __repr__(self) -> str:
        return repr({k: (f"<sha256:{hashlib.sha256(v.encode()).hexdigest()[:8]}>" if k == "token" else v)
                     for k, v in self.items()})


def _secret(cluster: Cluster, name: str) -> SecretData:
    status, body = cluster.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{name}")
    assert status == 200, f"reading Secret {NAMESPACE}/{name}: HTTP {status}"
    return SecretData({k: base64.b64decode(v).decode() for k, v in body["data"].items()})


def _same(a: SecretData, b: SecretData) -> bool:
    # A plain `assert a == b` makes pytest print both dicts item by item, tokens included.
    return dict(a) == dict(b)


def _kubeconfig_parts(kubeconfig: str) -> tuple[str, str, str]:
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    return cluster["server"], config["users"][0]["user"]["token"], cluster["certificate-authority"]


def _credential_env(sandbox: Any) -> dict[str, str]:
    """Render the credential type's injectors the way AWX does (Jinja over the credential's inputs)."""
    spec = yaml.safe_load((REPO / "extensions" / "awx" / "credential_type.yml").read_text())
    inputs = {"api_url": sandbox.url, "admin_token": sandbox.admin_token}
    if sandbox.ca_path:
        inputs["ca_path"] = sandbox.ca_path
    # Every required input is set, and nothing is injected that the inputs do not define.
    declared = {f["id"] for f in spec["inputs"]["fields"]}
    assert set(spec["inputs"]["required"]) <= set(inputs) <= declared
    assert {f["id"] for f in spec["inputs"]["fields"] if f.get("secret")} == {"admin_token"}
    jinja = Environment(undefined=StrictUndefined, autoescape=False)
    env = {name: jinja.from_string(template).render(**inputs) for name, template in spec["injectors"]["env"].items()}
    assert set(env) == {"XAPI_URL", "XAPI_ADMIN_TOKEN", "XAPI_CA_PATH"}
    # AWX's "OpenShift or Kubernetes API Bearer Token" credential.
    host, token, ca_file = _kubeconfig_parts(sandbox.kubeconfig)
    env.update({"K8S_AUTH_HOST": host, "K8S_AUTH_API_KEY": token, "K8S_AUTH_VERIFY_SSL": "True",
                "K8S_AUTH_SSL_CA_CERT": ca_file})
    return env


@pytest.fixture(scope="module")
def ee_collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collections of the execution environment: this collection's tarball and kubernetes.core."""
    build = tmp_path_factory.mktemp("ee-build")
    dest = tmp_path_factory.mktemp("ee-collections")
    galaxy = str(VENV_BIN / "ansible-galaxy")
    for cmd in ([galaxy, "collection", "build", "--force", "--output-path", str(build), str(REPO)],
                [galaxy, "collection", "install", "--offline", "-p", str(dest), str(KUBERNETES_CORE)]):
        subprocess.run(cmd, cwd=build, env=_base_env(), check=True, capture_output=True, timeout=300)
    tarball = next(build.glob("xapi-system_auth-*.tar.gz"))
    subprocess.run([galaxy, "collection", "install", "--offline", "-p", str(dest), str(tarball)], cwd=build,
                   env=_base_env(), check=True, capture_output=True, timeout=300)
    return dest


@pytest.fixture(scope="module")
def services(sandbox: Any) -> dict[str, dict[str, Any]]:
    """Two services of this module's own: one due for rotation (5 days left), one not (90 days)."""
    seeded = {}
    for name, days in (("billing-due", 5), ("ledger-fresh", 90)):
        seeded[name] = seed_service(sandbox.url, sandbox.admin_token, sandbox.kubeconfig, namespace=NAMESPACE,
                                    name=name, replicas=1, expires_in_days=days, platform_ca=sandbox.ca_path)
    for name in seeded:
        wait_available(sandbox.kubeconfig, NAMESPACE, name)
    return seeded


def _inventory_script(services: dict[str, dict[str, Any]]) -> str:
    hostvars = {
        name: {"credential_rotation_namespace": NAMESPACE,
               "credential_rotation_secret_name": info["secret"],
               "credential_rotation_deployments": [info["deployment"]]}
        for name, info in services.items()
    }
    inventory = {
        "all": {"children": ["services"]},
        "services": {"hosts": sorted(hostvars),
                     "vars": {"credential_rotation_poll_interval": 1, "credential_rotation_usage_timeout": 30}},
        "_meta": {"hostvars": hostvars},
    }
    # AWX writes the inventory as a script that prints it: the same here.
    return f"#!/usr/bin/env python3\nimport json\nprint(json.dumps({json.dumps(inventory)}))\n"


def _private_data_dir(root: Path, services: dict[str, dict[str, Any]], envvars: dict[str, str],
                      extravars: dict[str, Any], limit: str | None) -> Path:
    pdd = root / "pdd"
    project = pdd / "project"
    # What a clone of the project would hold (untracked work included, ignored files not).
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, project / rel)
    (pdd / "inventory").mkdir(parents=True)
    hosts = pdd / "inventory" / "hosts"
    hosts.write_text(_inventory_script(services))
    hosts.chmod(0o700)
    (pdd / "env").mkdir()
    (pdd / "env" / "envvars").write_text(yaml.safe_dump(envvars))
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    (pdd / "env" / "settings").write_text(yaml.safe_dump({"job_timeout": 600, "suppress_ansible_output": False}))
    if limit:
        (pdd / "env" / "cmdline").write_text(f"--limit {limit}")
    return pdd


def _run_job(pdd: Path, ident: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ansible-runner"), "run", str(pdd), "-p", "playbooks/rotate.yml", "--ident", ident],
        cwd=pdd, env=_base_env(), capture_output=True, text=True, timeout=900, check=False,
    )


def _events(pdd: Path, ident: str) -> list[dict[str, Any]]:
    events_dir = pdd / "artifacts" / ident / "job_events"
    return [json.loads(p.read_text()) for p in sorted(events_dir.glob("*.json"))]


def _stats(pdd: Path, ident: str) -> dict[str, Any]:
    stats = [e for e in _events(pdd, ident) if e.get("event") == "playbook_on_stats"]
    assert len(stats) == 1, "ansible-runner recorded no playbook_on_stats event"
    return stats[0]["event_data"]


def _assert_no_token_anywhere(pdd: Path, ident: str, result: subprocess.CompletedProcess, tokens: list[str]) -> None:
    artifacts = pdd / "artifacts" / ident
    places: dict[str, str] = {"runner stdout": result.stdout, "runner stderr": result.stderr}
    for name in ("stdout", "stderr"):
        if (artifacts / name).exists():
            places[f"artifacts/{ident}/{name}"] = (artifacts / name).read_text(errors="replace")
    for path in sorted((artifacts / "job_events").glob("*.json")):
        places[str(path.relative_to(pdd))] = path.read_text(errors="replace")
    assert len(places) > 3, "no job events to inspect"
    for token in tokens:
        assert token, "a token to look for is empty"
        leaks = [where for where, text in places.items() if token in text]
        assert not leaks, f"a token ({token[:5]}...) appears in {leaks[:5]}"


def test_awx_job_rotates_the_due_service_only_and_publishes_stats(
    sandbox: Any, services: dict, ee_collections: Path, tmp_path: Path,
) -> None:
    cluster = Cluster(sandbox.kubeconfig)
    before = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    envvars = _credential_env(sandbox)
    # The EE's collections (an EE image has them in its default collections path).
    envvars["ANSIBLE_COLLECTIONS_PATH"] = str(ee_collections)
    # The survey answer for "force", a string as AWX sends it: "false" must not force anything.
    extravars = {"credential_rotation_force": "false"}
    pdd = _private_data_dir(tmp_path, services, envvars, extravars, limit=",".join(sorted(services)))
    token_in_extravars = sandbox.admin_token in (pdd / "env" / "extravars").read_text()
    assert not token_in_extravars, "the admin token reached env/extravars"

    result = _run_job(pdd, "nightly")
    artifacts = pdd / "artifacts" / "nightly"
    assert result.returncode == 0, f"the job failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert (artifacts / "status").read_text().strip() == "successful"
    assert (artifacts / "rc").read_text().strip() == "0"

    after = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    due, fresh = services["billing-due"], services["ledger-fresh"]
    users = {u["id"]: u for u in sandbox.state()["system_users"]}

    # The due service: a new credential in its Secret, the old one deactivated.
    new_id = after["billing-due"]["id"]
    assert new_id != due["system_user_id"]
    assert not _same(after["billing-due"], before["billing-due"])
    assert users[new_id]["active"] is True
    assert users[due["system_user_id"]]["active"] is False
    # The fresh service: untouched, although "false" is a non-empty string.
    assert _same(after["ledger-fresh"], before["ledger-fresh"]), (
        f"the survey's \"false\" forced a rotation: {before['ledger-fresh']!r} -> {after['ledger-fresh']!r}")
    assert users[fresh["system_user_id"]]["active"] is True

    # set_stats: the per-service summary AWX shows as the job's artifacts.
    summary = _stats(pdd, "nightly").get("artifact_data", {}).get("credential_rotation")
    assert isinstance(summary, dict), f"no credential_rotation in the job's artifact_data: {_stats(pdd, 'nightly')}"
    assert set(summary) == {"billing-due", "ledger-fresh"}
    assert summary["billing-due"]["status"] == "rotated"
    assert summary["billing-due"]["credential_id"] == new_id
    assert summary["billing-due"]["namespace"] == NAMESPACE
    assert summary["ledger-fresh"]["status"] not in ("rotated", "failed")
    assert summary["ledger-fresh"]["credential_id"] == fresh["system_user_id"]

    k8s_token = _kubeconfig_parts(sandbox.kubeconfig)[1]
    tokens = [sandbox.admin_token, k8s_token, before["billing-due"]["token"], after["billing-due"]["token"],
              before["ledger-fresh"]["token"]]
    _assert_no_token_anywhere(pdd, "nightly", result, tokens)


def test_awx_job_force_survey_and_limit_rotate_only_the_chosen_service(
    sandbox: Any, services: dict, ee_collections: Path, tmp_path: Path,
) -> None:
    cluster = Cluster(sandbox.kubeconfig)
    before = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    envvars = _credential_env(sandbox)
    envvars["ANSIBLE_COLLECTIONS_PATH"] = str(ee_collections)
    pdd = _private_data_dir(tmp_path, services, envvars, {"credential_rotation_force": "true"}, limit="ledger-fresh")

    result = _run_job(pdd, "manual")
    assert result.returncode == 0, f"the job failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    after = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    # Forced: the fresh credential was replaced although it had 90 days left ...
    assert after["ledger-fresh"]["id"] != before["ledger-fresh"]["id"]
    users = {u["id"]: u for u in sandbox.state()["system_users"]}
    assert users[before["ledger-fresh"]["id"]]["active"] is False
    # ... and the limit kept the other service out of the run.
    assert _same(after["billing-due"], before["billing-due"]), "the limit did not keep billing-due out of the run"
    summary = _stats(pdd, "manual")["artifact_data"]["credential_rotation"]
    assert set(summary) == {"ledger-fresh"} and summary["ledger-fresh"]["status"] == "rotated"
    tokens = [sandbox.admin_token, _kubeconfig_parts(sandbox.kubeconfig)[1], before["ledger-fresh"]["token"],
              after["ledger-fresh"]["token"]]
    _assert_no_token_anywhere(pdd, "manual", result, tokens)


def test_configure_awx_playbook_passes_syntax_check() -> None:
    env = _base_env() | {"ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections")}
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), "--syntax-check", "extensions/awx/configure_awx.yml"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schedule is the reference procedure's `0 2 * * *`: daily at 02:00.
    play = yaml.safe_load((REPO / "extensions" / "awx" / "configure_awx.yml").read_text())[0]
    rrule = play["vars"]["xapi_awx_schedule_rrule"]
    assert "T020000Z" in rrule and "FREQ=DAILY;INTERVAL=1" in rrule


# --- cron ------------------------------------------------------------------------------------------

def _cron_env(tmp_path: Path, playbook: Path, env_file: Path, **extra: str) -> dict[str, str]:
    return _base_env() | {
        "XAPI_ROTATE_ENV_FILE": str(env_file),
        "XAPI_ROTATE_LOG": str(tmp_path / "log" / "rotation.log"),
        "XAPI_ROTATE_LOCK": str(tmp_path / "rotation.lock"),
        "XAPI_ROTATE_PLAYBOOK": str(playbook),
        **extra,
    }


def _write_env_file(path: Path, values: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text("".join(f"export {k}={v}\n" for k, v in values.items()))
    path.chmod(mode)
    return path


def _local_playbook(tmp_path: Path, task: dict[str, Any]) -> Path:
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([{"name": "Stand-in rotation", "hosts": "localhost", "connection": "local",
                                     "gather_facts": False, "tasks": [task]}]))
    return path


def test_cron_wrapper_logs_with_timestamps_and_fails_loudly(tmp_path: Path) -> None:
    env_file = _write_env_file(tmp_path / "env", {"XAPI_URL": "http://127.0.0.1:9", "XAPI_ADMIN_TOKEN": "xadm_cron"})
    failing = _local_playbook(tmp_path, {
        "name": "Fail like a broken rotation", "ansible.builtin.fail": {"msg": "the rotation broke"}})
    result = subprocess.run(["bash", str(CRON)], env=_cron_env(tmp_path, failing, env_file), capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    # Cron mails stderr: one line that says it failed and where the log is.
    assert "rotation FAILED (exit 2)" in result.stderr and "rotation.log" in result.stderr
    log = (tmp_path / "log" / "rotation.log").read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert all(time.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ") for line in lines)
    assert any("the rotation broke" in line for line in lines)
    assert "end rc=2" in lines[-1]
    assert "xadm_cron" not in log + result.stdout + result.stderr


def test_cron_wrapper_refuses_to_overlap(tmp_path: Path) -> None:
    env_file = _write_env_file(tmp_path / "env", {"XAPI_URL": "http://127.0.0.1:9", "XAPI_ADMIN_TOKEN": "x"})
    ok = _local_playbook(tmp_path, {"name": "Succeed", "ansible.builtin.debug": {"msg": "fine"}})
    env = _cron_env(tmp_path, ok, env_file)
    # Another run holds the lock, as a slow rotation still running at the next 02:00 would.
    with open(tmp_path / "rotation.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        blocked = subprocess.run(["bash", str(CRON)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert blocked.returncode == 75
    assert "another rotation is still running" in blocked.stderr
    free = subprocess.run(["bash", str(CRON)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert free.returncode == 0, free.stdout + free.stderr
    assert "end rc=0" in (tmp_path / "log" / "rotation.log").read_text()


@pytest.mark.parametrize(("case", "message"), [
    ("world_readable", "is readable by others (mode 644); run: chmod 600"),
    ("no_url", "XAPI_URL is not set"),
    ("no_token", "XAPI_ADMIN_TOKEN is not set"),
    ("no_playbook", "not found; set XAPI_ROTATE_PLAYBOOK"),
])
def test_cron_wrapper_rejects_bad_setup_with_one_sentence(tmp_path: Path, case: str, message: str) -> None:
    values = {"XAPI_URL": "http://127.0.0.1:9", "XAPI_ADMIN_TOKEN": "xadm_secret_value"}
    if case == "no_url":
        del values["XAPI_URL"]
    if case == "no_token":
        del values["XAPI_ADMIN_TOKEN"]
    env_file = _write_env_file(tmp_path / "env", values, mode=0o644 if case == "world_readable" else 0o600)
    playbook = tmp_path / "missing.yml" if case == "no_playbook" else _local_playbook(tmp_path, {
        "name": "Must not run", "ansible.builtin.debug": {"msg": "ran"}})
    result = subprocess.run(["bash", str(CRON)], env=_cron_env(tmp_path, playbook, env_file), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "xadm_secret_value" not in result.stderr
    # Nothing was started: the log holds only the refusal.
    assert "cron-rotate: start" not in (tmp_path / "log" / "rotation.log").read_text()


def test_cron_wrapper_runs_the_real_rotation_playbook(sandbox: Any, services: dict, tmp_path: Path) -> None:
    # A crontab entry has only the env file: connection settings and secrets come from it.
    values = {"XAPI_URL": sandbox.url, "XAPI_ADMIN_TOKEN": sandbox.admin_token, "KUBECONFIG": sandbox.kubeconfig}
    if sandbox.ca_path:
        values["XAPI_CA_PATH"] = sandbox.ca_path
    env_file = _write_env_file(tmp_path / "env", values)
    inventory = tmp_path / "services.yml"
    inventory.write_text(yaml.safe_dump({"services": {"hosts": {"ledger-fresh": {
        "credential_rotation_namespace": NAMESPACE,
        "credential_rotation_secret_name": services["ledger-fresh"]["secret"],
        "credential_rotation_deployments": ["ledger-fresh"]}}}}))
    env = _cron_env(tmp_path, REPO / "playbooks" / "rotate.yml", env_file)
    before = _secret(Cluster(sandbox.kubeconfig), services["ledger-fresh"]["secret"])
    result = subprocess.run(["bash", str(CRON), "-i", str(inventory)], env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    log = (tmp_path / "log" / "rotation.log").read_text()
    assert result.returncode == 0, log[-5000:] + result.stderr
    # Not due (it has weeks left): the nightly run reports it and changes nothing.
    assert "ledger-fresh" in log and "end rc=0" in log
    assert _same(_secret(Cluster(sandbox.kubeconfig), services["ledger-fresh"]["secret"]), before)
    output = log + result.stdout + result.stderr
    leaked = [token[:5] for token in (sandbox.admin_token, before["token"]) if token in output]
    assert not leaked, f"tokens starting {leaked} appear in the cron log or output"
    assert stat.S_IMODE((tmp_path / "env").stat().st_mode) == 0o600

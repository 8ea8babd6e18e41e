"""Running where operators run it: AWX (through ansible-runner, the engine AWX uses) and cron.

The AWX test lays out a private data directory the way AWX does for a job:

- ``project/``: the project checkout (the repository's tracked files, nothing installed);
- ``inventory/hosts``: an executable script printing the inventory as JSON, one host per service;
- ``env/envvars``: what the job's credentials inject: the "xapi platform API" credential type
  (``extensions/awx/credential_type.yml``) rendered with this sandbox's values exactly as AWX's
  ``CredentialType.inject_credential`` does (its ``file`` injector writes the CA's PEM text to a
  mode-600 file under ``env/``, whose path the ``env`` injector passes as ``XAPI_CA_PATH``; the
  failure webhook URL is a secret input injected as ``XAPI_FAILURE_WEBHOOK_URL``), and AWX's
  built-in Kubernetes bearer-token credential (``K8S_AUTH_*``); no KUBECONFIG;
- ``env/extravars``: the survey answers (strings, as AWX sends them) and never a token;
- ``env/cmdline``: the job template's prompted limit.

The platform API of this module's sandbox is served over HTTPS with a generated CA that nothing
trusts but the injected CA file. The collections come from the built tarball installed next to
kubernetes.core, as in the execution environment. The runner's own process environment carries no XAPI_*, K8S_* or
KUBECONFIG, so whatever reaches the modules came from the credential injection.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.conftest import _start_sandbox, _stop_sandbox
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


CREDENTIAL_TYPE = REPO / "extensions" / "awx" / "credential_type.yml"


class _TowerNamespace:
    """AWX's ``tower`` template namespace (``tower.filename.<label>``)."""


def _awx_validate(spec: dict[str, Any]) -> None:
    """What AWX checks when the credential type is saved (CredentialTypeInputField / InjectorField)."""
    fields = spec["inputs"]["fields"]
    ids = [f["id"] for f in fields]
    assert len(ids) == len(set(ids)), "field ids must be unique"
    for field in fields:
        assert field["type"] in ("string", "boolean"), field
        assert set(field) <= {"id", "type", "label", "help_text", "secret", "multiline", "format", "choices",
                              "ask_at_runtime"}, field
    assert set(spec["inputs"]["required"]) <= set(ids)
    assert set(spec["injectors"]) <= {"file", "env", "extra_vars"}
    namespace: dict[str, Any] = dict.fromkeys(ids, "EXAMPLE")
    namespace["tower"] = _TowerNamespace()
    namespace["tower"].filename = _TowerNamespace()
    labels = list(spec["injectors"].get("file", {}))
    assert all(re.fullmatch(r"template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?", label) for label in labels), labels
    for label in labels:
        setattr(namespace["tower"].filename, label.split(".")[1], "EXAMPLE_FILENAME")
    for name in spec["injectors"].get("env", {}):
        assert re.fullmatch(r"[a-zA-Z_]+[a-zA-Z0-9_]*", name) and not name.startswith("ANSIBLE_"), name
    strict = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    for injector in spec["injectors"].values():
        for template in injector.values():
            strict.from_string(template).render(namespace)  # an undefined field raises, as AWX refuses it


def _awx_inject(spec: dict[str, Any], inputs: dict[str, str], pdd: Path) -> dict[str, str]:
    """AWX's CredentialType.inject_credential for a custom type: the files it writes, the env it sets.

    Empty inputs are left out of the namespace; each ``file`` template is written (even when it
    renders empty) to a mkstemp file under ``env/`` with mode 600; ``env`` templates render with
    Jinja's default Undefined in the sandboxed environment.
    """
    namespace: dict[str, Any] = {name: value for name, value in inputs.items() if len(value)}
    tower = namespace["tower"] = _TowerNamespace()
    jinja = ImmutableSandboxedEnvironment()
    for label, template in spec["injectors"].get("file", {}).items():
        data = jinja.from_string(template).render(**namespace)
        _fd, path = tempfile.mkstemp(dir=pdd / "env")
        os.close(_fd)
        Path(path).write_text(data)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        if "." not in label:
            tower.filename = path
        else:
            if not hasattr(tower, "filename"):
                tower.filename = _TowerNamespace()
            setattr(tower.filename, label.split(".")[1], path)
    return {name: jinja.from_string(template).render(**namespace)
            for name, template in spec["injectors"].get("env", {}).items()}


def _credential_env(sandbox: Any, pdd: Path, webhook_url: str = "") -> dict[str, str]:
    """What the job's two credentials inject: "xapi platform API" and AWX's Kubernetes bearer token."""
    spec = yaml.safe_load(CREDENTIAL_TYPE.read_text())
    _awx_validate(spec)
    assert sandbox.ca_path, "this module's sandbox serves the platform API over HTTPS"
    # What an operator pastes into the credential: the URL, the token, the CA's PEM text.
    inputs = {"api_url": sandbox.url, "admin_token": sandbox.admin_token,
              "ca": Path(sandbox.ca_path).read_text(), "failure_webhook_url": webhook_url}
    declared = {f["id"]: f for f in spec["inputs"]["fields"]}
    assert set(spec["inputs"]["required"]) == {"api_url", "admin_token"} and set(inputs) == set(declared)
    assert {i for i, f in declared.items() if f.get("secret")} == {"admin_token", "failure_webhook_url"}
    assert declared["ca"].get("multiline") is True and not declared["ca"].get("secret")
    env = _awx_inject(spec, inputs, pdd)
    assert set(env) == {"XAPI_URL", "XAPI_ADMIN_TOKEN", "XAPI_CA_PATH", "XAPI_FAILURE_WEBHOOK_URL"}
    # The CA went into a private file of the job's env/ directory, and only there.
    ca_file = Path(env["XAPI_CA_PATH"])
    assert ca_file.parent == pdd / "env" and ca_file.read_text() == inputs["ca"]
    assert stat.S_IMODE(ca_file.stat().st_mode) == 0o600
    assert env["XAPI_FAILURE_WEBHOOK_URL"] == webhook_url
    # AWX's "OpenShift or Kubernetes API Bearer Token" credential.
    host, token, ca_file_k8s = _kubeconfig_parts(sandbox.kubeconfig)
    env.update({"K8S_AUTH_HOST": host, "K8S_AUTH_API_KEY": token, "K8S_AUTH_VERIFY_SSL": "True",
                "K8S_AUTH_SSL_CA_CERT": ca_file_k8s})
    return env


def test_credential_type_without_ca_or_webhook_injects_empty_values(tmp_path: Path) -> None:
    spec = yaml.safe_load(CREDENTIAL_TYPE.read_text())
    _awx_validate(spec)
    (tmp_path / "env").mkdir()
    env = _awx_inject(spec, {"api_url": "https://api.example.com", "admin_token": "xadm_x"}, tmp_path)
    # AWX still writes the (empty) CA file; XAPI_CA_PATH must not point at it, or TLS would trust nothing.
    assert env["XAPI_CA_PATH"] == "" and env["XAPI_FAILURE_WEBHOOK_URL"] == ""
    assert env["XAPI_URL"] == "https://api.example.com" and env["XAPI_ADMIN_TOKEN"] == "xadm_x"


class _Webhook:
    """A local endpoint recording what the role POSTs to the failure webhook."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                hook.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secretpart"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Any:
    hook = _Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This module's own sandbox (it overrides conftest's): its platform API over HTTPS with a generated CA."""
    directory = tmp_path_factory.mktemp("awx-sandbox")
    running = _start_sandbox(directory, "--tls", "--no-seed")
    yield running
    _stop_sandbox(directory)


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection as released: built from the repository (galaxy.yml's build_ignore applies)."""
    build = tmp_path_factory.mktemp("build")
    subprocess.run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(build),
                    str(REPO)], cwd=build, env=_base_env(), check=True, capture_output=True, timeout=300)
    return next(build.glob("xapi-system_auth-*.tar.gz"))


def _install(tarball: Path, cwd: Path, env: dict[str, str], *path: str) -> None:
    """ansible-galaxy collection install of kubernetes.core, then of the tarball (offline: no Galaxy here)."""
    galaxy = str(VENV_BIN / "ansible-galaxy")
    for source in (KUBERNETES_CORE, tarball):
        result = subprocess.run([galaxy, "collection", "install", "--offline", *path, str(source)], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def ee_collections(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collections of the execution environment: this collection's tarball and kubernetes.core."""
    dest = tmp_path_factory.mktemp("ee-collections")
    _install(tarball, dest, _base_env(), "-p", str(dest))
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


def _private_data_dir(root: Path, services: dict[str, dict[str, Any]], sandbox: Any, ee_collections: Path,
                      extravars: dict[str, Any], limit: str | None, webhook_url: str = "") -> Path:
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
    envvars = _credential_env(sandbox, pdd, webhook_url)
    # The EE's collections (an EE image has them in its default collections path).
    envvars["ANSIBLE_COLLECTIONS_PATH"] = str(ee_collections)
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
    sandbox: Any, services: dict, ee_collections: Path, tmp_path: Path, webhook: _Webhook,
) -> None:
    cluster = Cluster(sandbox.kubeconfig)
    before = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    # The survey answer for "force", a string as AWX sends it: "false" must not force anything.
    extravars = {"credential_rotation_force": "false"}
    pdd = _private_data_dir(tmp_path, services, sandbox, ee_collections, extravars, limit=",".join(sorted(services)),
                            webhook_url=webhook.url)
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
    # Keyed by the service's name (its namespace and Secret), each naming its inventory host.
    assert set(summary) == {f"{NAMESPACE}/{services[h]['secret']}" for h in ("billing-due", "ledger-fresh")}
    summary = {outcome["host"]: outcome for outcome in summary.values()}
    assert set(summary) == {"billing-due", "ledger-fresh"}
    assert summary["billing-due"]["status"] == "rotated"
    assert summary["billing-due"]["credential_id"] == new_id
    assert summary["billing-due"]["namespace"] == NAMESPACE
    assert summary["ledger-fresh"]["status"] not in ("rotated", "failed")
    assert summary["ledger-fresh"]["credential_id"] == fresh["system_user_id"]

    # Nothing failed, so nothing was posted to the failure webhook.
    assert webhook.bodies == []

    k8s_token = _kubeconfig_parts(sandbox.kubeconfig)[1]
    tokens = [sandbox.admin_token, k8s_token, before["billing-due"]["token"], after["billing-due"]["token"],
              before["ledger-fresh"]["token"], webhook.url]
    _assert_no_token_anywhere(pdd, "nightly", result, tokens)


def test_awx_job_force_survey_and_limit_rotate_only_the_chosen_service(
    sandbox: Any, services: dict, ee_collections: Path, tmp_path: Path,
) -> None:
    cluster = Cluster(sandbox.kubeconfig)
    before = {name: _secret(cluster, info["secret"]) for name, info in services.items()}
    pdd = _private_data_dir(tmp_path, services, sandbox, ee_collections, {"credential_rotation_force": "true"},
                            limit="ledger-fresh")

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
    summary = {outcome["host"]: outcome for outcome in summary.values()}
    assert set(summary) == {"ledger-fresh"} and summary["ledger-fresh"]["status"] == "rotated"
    tokens = [sandbox.admin_token, _kubeconfig_parts(sandbox.kubeconfig)[1], before["ledger-fresh"]["token"],
              after["ledger-fresh"]["token"]]
    _assert_no_token_anywhere(pdd, "manual", result, tokens)


def test_awx_job_failure_is_posted_to_the_credential_webhook(
    sandbox: Any, services: dict, ee_collections: Path, tmp_path: Path, webhook: _Webhook,
) -> None:
    defaults = (REPO / "roles" / "credential_rotation" / "defaults" / "main.yml").read_text()
    if "XAPI_FAILURE_WEBHOOK_URL" not in defaults:
        pytest.skip("the role does not read credential_rotation_failure_webhook_url from XAPI_FAILURE_WEBHOOK_URL yet")
    cluster = Cluster(sandbox.kubeconfig)
    before = _secret(cluster, services["billing-due"]["secret"])
    # The platform refuses every new credential: the forced rotation fails before it changed anything.
    fault = {"method": "POST", "path": "/api/v1/system-users", "status": 503, "count": None}
    sandbox.api("POST", "/_sandbox/faults", json=fault).raise_for_status()
    try:
        pdd = _private_data_dir(tmp_path, services, sandbox, ee_collections, {"credential_rotation_force": "true"},
                                limit="billing-due", webhook_url=webhook.url)
        result = _run_job(pdd, "failing")
    finally:
        sandbox.api("DELETE", "/_sandbox/faults").raise_for_status()
    assert result.returncode != 0, "the job succeeded although the platform refused every new credential"
    assert (pdd / "artifacts" / "failing" / "status").read_text().strip() == "failed"
    assert _same(_secret(cluster, services["billing-due"]["secret"]), before)
    # The webhook came from the credential (env), not from the inventory or extra vars.
    assert webhook.url not in (pdd / "inventory" / "hosts").read_text() + (pdd / "env" / "extravars").read_text()
    # One POST, about that service (named by the role's credential_rotation_service_name).
    assert [(body.get("namespace"), body.get("secret")) for body in webhook.bodies] == [
        (NAMESPACE, services["billing-due"]["secret"])], webhook.bodies
    assert "failed" in webhook.bodies[0]["text"]
    _assert_no_token_anywhere(pdd, "failing", result, [sandbox.admin_token, before["token"], webhook.url])


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
    """The wrapper's settings through the environment (what an env file may also set)."""
    inventory = tmp_path / "inventory.yml"
    if not inventory.exists():
        inventory.write_text(yaml.safe_dump({"services": {"hosts": {"svc-a": {}}}}))
    return _base_env() | {
        "XAPI_ROTATE_ENV_FILE": str(env_file),
        "XAPI_ROTATE_LOG": str(tmp_path / "log" / "rotation.log"),
        "XAPI_ROTATE_LOCK": str(tmp_path / "rotation.lock"),
        "XAPI_ROTATE_PLAYBOOK": str(playbook),
        "XAPI_ROTATE_INVENTORY": str(inventory),
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
    ("no_inventory", "no inventory given; pass -i /path/to/inventory.yml or set XAPI_ROTATE_INVENTORY"),
    ("missing_inventory", "inventory /nonexistent/inventory.yml not found"),
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
    env = _cron_env(tmp_path, playbook, env_file)
    if case == "no_inventory":
        del env["XAPI_ROTATE_INVENTORY"]
    if case == "missing_inventory":
        env["XAPI_ROTATE_INVENTORY"] = "/nonexistent/inventory.yml"
    result = subprocess.run(["bash", str(CRON)], env=env, capture_output=True, text=True, timeout=60, check=False)
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


# --- cron, exactly as the README says, from an installed collection -------------------------------

README = REPO / "README.md"
# Where `ansible-galaxy collection install` puts the collection by default, under HOME.
INSTALLED = Path(".ansible", "collections", "ansible_collections", "xapi", "system_auth")
CRON_LINE = re.compile(r"^\s*(0 2 \* \* \* (\S*/cron-rotate\.sh\b.*?))\s*$", re.MULTILINE)


def _documented_cron_line() -> tuple[str, str]:
    """The crontab line of README.md's Scheduling section (the AWX guide must show the same one)."""
    found = CRON_LINE.findall(README.read_text())
    assert len(found) == 1, f"README.md should show exactly one crontab line: {found}"
    line, command = found[0]
    guide = (REPO / "docs" / "docsite" / "rst" / "guide_awx.rst").read_text()
    assert line in guide, "the AWX guide's crontab line differs from the README's"
    assert line in CRON.read_text(), "the wrapper's header shows another crontab line"
    return line, command


@pytest.fixture(scope="module")
def cron_home(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's home outside the repository, the collection installed there as the README says."""
    home = tmp_path_factory.mktemp("cron-home")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "SHELL": "/bin/sh"}
    # `ansible-galaxy collection install xapi.system_auth` (here from the built tarball): ~/.ansible/collections.
    _install(tarball, home, env)
    script = home / INSTALLED / "hack" / "cron-rotate.sh"
    assert script.is_file() and os.access(script, os.X_OK), "the installed collection has no executable cron wrapper"
    return home


def _run_as_cron(home: Path, command: str) -> subprocess.CompletedProcess:
    """What cron does with a crontab line: /bin/sh -c, from HOME, with an environment of four variables."""
    return subprocess.run(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "SHELL=/bin/sh",
                           f"LOGNAME={os.environ.get('LOGNAME', 'root')}", "/bin/sh", "-c", command],
                          cwd=home, capture_output=True, text=True, timeout=600, check=False)


def _cron_setup(home: Path, command: str, sandbox: Any, hosts: dict[str, Any], **values: str) -> dict[str, Path]:
    """The env file, inventory and log the documented line names, at the paths it names."""
    expanded = command.replace("$HOME", str(home))
    paths = {"env": Path(re.search(r"--env-file (\S+)", expanded).group(1)),
             "inventory": Path(re.search(r"-i (\S+)", expanded).group(1)),
             "log": Path(re.search(r"--log (\S+)", expanded).group(1))}
    assert all(str(path).startswith(str(home)) for path in paths.values()), paths
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"XAPI_URL": sandbox.url, "XAPI_ADMIN_TOKEN": sandbox.admin_token, "KUBECONFIG": sandbox.kubeconfig,
                # cron's PATH has no ansible-playbook: the env file says which one.
                "XAPI_ANSIBLE_PLAYBOOK": str(VENV_BIN / "ansible-playbook")}
    if sandbox.ca_path:
        settings["XAPI_CA_PATH"] = sandbox.ca_path
    _write_env_file(paths["env"], settings | values)
    paths["inventory"].write_text(yaml.safe_dump({"services": {"hosts": hosts}}))
    paths["log"].unlink(missing_ok=True)
    return paths


def test_documented_cron_line_rotates_from_the_installed_collection_under_crons_environment(
    sandbox: Any, cron_home: Path,
) -> None:
    line, command = _documented_cron_line()
    seeded = seed_service(sandbox.url, sandbox.admin_token, sandbox.kubeconfig, namespace=NAMESPACE, name="cron-due",
                          replicas=1, expires_in_days=3, platform_ca=sandbox.ca_path)
    wait_available(sandbox.kubeconfig, NAMESPACE, "cron-due")
    cluster = Cluster(sandbox.kubeconfig)
    before = _secret(cluster, seeded["secret"])
    paths = _cron_setup(cron_home, command, sandbox, {"cron-due": {
        "credential_rotation_namespace": NAMESPACE, "credential_rotation_secret_name": seeded["secret"],
        "credential_rotation_deployments": [seeded["deployment"]],
        "credential_rotation_poll_interval": 1, "credential_rotation_usage_timeout": 30}})

    result = _run_as_cron(cron_home, command)
    log = paths["log"].read_text() if paths["log"].exists() else ""
    assert result.returncode == 0, f"{line}\nexited {result.returncode}: {result.stderr}\n{log[-6000:]}"
    assert result.stdout == "" and result.stderr == "", "cron would mail output of a successful run"

    lines = [entry for entry in log.splitlines() if entry.strip()]
    assert all(time.strptime(entry.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ") for entry in lines)
    installed = cron_home / INSTALLED
    # The playbook of the collection the script is installed in, with the documented inventory.
    assert f"cron-rotate: start xapi.system_auth.rotate -i {paths['inventory']}" in log
    assert f"cron-rotate: collection {installed};" in log
    assert "cron-due" in log and "end rc=0" in lines[-1]
    assert "No inventory was parsed" not in log and "was not found" not in log

    # The rotation ran: a new credential in the Secret, the old one deactivated.
    after = _secret(cluster, seeded["secret"])
    assert after["id"] != before["id"], "the cron run did not rotate the due service"
    users = {u["id"]: u for u in sandbox.state()["system_users"]}
    assert users[after["id"]]["active"] is True and users[before["id"]]["active"] is False

    output = log + result.stdout + result.stderr
    tokens = (sandbox.admin_token, before["token"], after["token"], _kubeconfig_parts(sandbox.kubeconfig)[1])
    leaked = [token[:5] for token in tokens if token in output]
    assert not leaked, f"tokens starting {leaked} appear in the cron log or output"


def test_documented_cron_line_exits_non_zero_and_says_so_when_the_rotation_fails(
    sandbox: Any, services: dict, cron_home: Path,
) -> None:
    _line, command = _documented_cron_line()
    info = services["ledger-fresh"]
    paths = _cron_setup(cron_home, command, sandbox, {"ledger-fresh": {
        "credential_rotation_namespace": NAMESPACE, "credential_rotation_secret_name": info["secret"],
        "credential_rotation_deployments": [info["deployment"]]}},
        # The platform API is down (nothing listens there).
        XAPI_URL="http://127.0.0.1:9")
    result = _run_as_cron(cron_home, command)
    log = paths["log"].read_text()
    assert result.returncode not in (0, 75), log[-5000:]
    assert f"rotation FAILED (exit {result.returncode}); see {paths['log']}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"end rc={result.returncode}" in log.splitlines()[-1]
    assert sandbox.admin_token not in log + result.stderr

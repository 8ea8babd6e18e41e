"""Shared fixtures: sandboxes started over real processes, and ansible-playbook runs against them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"

# Any sandbox a test starts in a subprocess of its own (`python -m tests.sandbox up`, e.g. the
# benchmark harness's) belongs to the process that started it: it stops when that one is gone.
os.environ.setdefault("XAPI_SANDBOX_OWNER_PID", "parent")


class Sandbox:
    """A running sandbox (platform API, and the Kubernetes emulator unless started with --no-k8s)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env: dict[str, str] = {}
        for line in (directory / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export "):].partition("=")
                self.env[key] = shlex.split(value)[0] if value else ""
        self.url: str = self.env["XAPI_URL"]
        self.admin_token: str = self.env["XAPI_ADMIN_TOKEN"]
        self.kubeconfig: str | None = self.env.get("KUBECONFIG")
        self.ca_path: str | None = self.env.get("XAPI_CA_PATH")
        self._session = requests.Session()

    def api(
        self, method: str, path: str, json: Any = None, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """One request to the platform sandbox, as the admin unless another token is given."""
        headers = kwargs.pop("headers", {})
        headers["Authorization"] = f"Bearer {self.admin_token if token is None else token}"
        kwargs.setdefault("timeout", 30)
        kwargs.setdefault("verify", self.ca_path or True)
        return self._session.request(method, self.url + path, json=json, headers=headers, **kwargs)

    def state(self) -> dict:
        response = self.api("GET", "/_sandbox/state")
        response.raise_for_status()
        return response.json()["data"]

    def reset(self) -> None:
        self.api("POST", "/_sandbox/reset").raise_for_status()
        self.api("DELETE", "/_sandbox/faults").raise_for_status()


def _start_sandbox(directory: Path, *extra: str) -> Sandbox:
    # --owner-pid: the servers stop by themselves once this pytest process is gone, however it
    # ended (timeout, Ctrl-C, a killed CI job), instead of serving on for hours.
    cmd = [sys.executable, "-m", "tests.sandbox", "up", "--dir", str(directory),
           "--platform-port", "0", "--k8s-port", "0", "--owner-pid", str(os.getpid()), *extra]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        logs = "".join(p.read_text()[-3000:] for p in sorted(directory.glob("*.log")) if p.exists())
        pytest.fail(f"sandbox did not start: {result.stderr.strip()}\n{logs}", pytrace=False)
    return Sandbox(directory)


def _stop_sandbox(directory: Path) -> None:
    subprocess.run([sys.executable, "-m", "tests.sandbox", "down", "--dir", str(directory)],
                   cwd=REPO, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory):
    """The platform API sandbox alone, on a free port."""
    directory = tmp_path_factory.mktemp("platform-sandbox")
    sandbox = _start_sandbox(directory, "--no-k8s", "--no-seed")
    yield sandbox
    _stop_sandbox(directory)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    """Platform API sandbox and Kubernetes emulator with the demo world seeded."""
    directory = tmp_path_factory.mktemp("sandbox")
    running = _start_sandbox(directory)
    yield running
    _stop_sandbox(directory)


def ansible_env(sandbox: Sandbox | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment an operator would have after `. .sandbox/env`, plus this repo's ansible.cfg."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    if sandbox is not None:
        env.update(sandbox.env)
    env.update(extra or {})
    return env


def playbook_command(playbook: str | Path, inventory: str | None = None, extra_vars: dict | None = None,
                     check: bool = False, diff: bool = False, verbosity: int = 0,
                     args: list[str] | None = None) -> list[str]:
    """The ansible-playbook command line an operator would type, for subprocess.run or Popen."""
    cmd = [str(ANSIBLE_PLAYBOOK), str(playbook)]
    if inventory:
        cmd += ["-i", inventory]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    return cmd + (args or [])


@pytest.fixture
def run_playbook(request: pytest.FixtureRequest, tmp_path: Path):
    """Run ansible-playbook from the repo root against the sandbox the test uses."""
    if "sandbox" in request.fixturenames:
        active: Sandbox | None = request.getfixturevalue("sandbox")
    elif "platform" in request.fixturenames:
        active = request.getfixturevalue("platform")
    else:
        active = request.getfixturevalue("sandbox")
    counter = iter(range(1_000_000))

    def run(playbook: str | Path, extra_vars: dict | None = None, env: dict[str, str] | None = None,
            check: bool = False, diff: bool = False, verbosity: int = 0, inventory: str | None = None,
            timeout: float = 600, args: list[str] | None = None) -> subprocess.CompletedProcess:
        if isinstance(playbook, str) and "\n" in playbook:
            path = tmp_path / f"playbook_{next(counter)}.yml"
            path.write_text(playbook)
            playbook = path
        cmd = playbook_command(playbook, inventory, extra_vars, check, diff, verbosity, args)
        return subprocess.run(cmd, cwd=REPO, env=ansible_env(active, env), capture_output=True,
                              text=True, timeout=timeout)

    return run

"""Fixtures for the client and module tests: the real platform sandbox, modules run as real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.helpers import COLLECTIONS, REPO

MODULE_PACKAGE = "ansible_collections.xapi.system_auth.plugins.modules"
TOKEN_SHAPE = re.compile(r"x(?:su|adm)_[A-Za-z0-9_-]{20,}")


@dataclass
class ModuleRun:
    """What one module process printed and returned."""

    rc: int
    stdout: str
    stderr: str
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any XAPI_* setting, so each test says what it uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XAPI_")}
    env["PYTHONPATH"] = str(COLLECTIONS)
    env.update(extra or {})
    return env


@pytest.fixture
def api(platform: Any) -> Iterator[Any]:
    """The platform sandbox, emptied before the test."""
    platform.reset()
    platform.api("POST", "/_sandbox/config", json={"token_activation_delay": 0}).raise_for_status()
    yield platform
    platform.api("DELETE", "/_sandbox/faults")


class TokenWitness:
    """Every token a test handled; asserts none of them shows up where it must not."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()

    def add(self, *tokens: str | None) -> None:
        self.tokens.update(t for t in tokens if t)

    def assert_absent(self, text: str, where: str) -> None:
        # pytest.fail without a traceback: a failing assert would print the very text that leaks.
        if any(token in text for token in self.tokens):
            pytest.fail(f"a token leaked into {where}", pytrace=False)
        if TOKEN_SHAPE.search(text):
            pytest.fail(f"something shaped like a token leaked into {where}", pytrace=False)


@pytest.fixture
def witness(api: Any) -> TokenWitness:
    w = TokenWitness()
    w.add(api.admin_token)
    return w


@pytest.fixture(params=["module-process", "in-process"])
def run_module(api: Any, witness: TokenWitness, request: pytest.FixtureRequest) -> Callable[..., ModuleRun]:
    """Run a module of the collection as Ansible does: a Python process given its arguments as JSON.

    Every test that uses it runs twice: once so, and once with the module's code run as the
    credential_rotation role runs it (``plugins/plugin_utils/_platform_call.py``, which its
    rotation_observe action calls), in a process of its own; both must answer the same.

    The connection comes from XAPI_URL/XAPI_TOKEN (as an operator's shell would give it) unless
    ``env`` replaces them. Every run is checked for leaked tokens, except the one ``token`` value a
    creating system_user call must return.
    """

    def run(module: str, args: dict[str, Any] | None = None, *, check: bool = False, diff: bool = False,
            env: dict[str, str] | None = None, connection: bool = True, timeout: float = 120,
            in_process: bool = request.param == "in-process") -> ModuleRun:
        module_args = dict(args or {})
        base = {"XAPI_URL": api.url, "XAPI_TOKEN": api.admin_token} if connection else {}
        base.update(env or {})
        if in_process:  # as the role's rotation_observe action calls it (tests/unit/in_process.py)
            command = [sys.executable, "-m", "tests.unit.in_process"]
            stdin = json.dumps({"module": module, "args": module_args, "check": check, "diff": diff})
        else:
            module_args["_ansible_check_mode"] = check
            module_args["_ansible_diff"] = diff
            command = [sys.executable, "-m", f"{MODULE_PACKAGE}.{module}"]
            stdin = json.dumps({"ANSIBLE_MODULE_ARGS": module_args})
        environment = clean_env(base)
        environment["PYTHONPATH"] += os.pathsep + str(REPO)
        proc = subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=REPO, env=environment,
                              timeout=timeout, check=False)
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            result = {}
        run = ModuleRun(proc.returncode, proc.stdout, proc.stderr, result)
        returned_token = result.get("token")
        stdout_without_returned = proc.stdout.replace(returned_token, "") if returned_token else proc.stdout
        witness.add(returned_token)
        witness.assert_absent(stdout_without_returned, f"{module} stdout")
        witness.assert_absent(proc.stderr, f"{module} stderr")
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
        return run

    return run


@dataclass
class TlsPlatform:
    """A second platform sandbox serving HTTPS with a certificate valid for "localhost" only."""

    port: int
    ca_path: str
    admin_token: str

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"


@pytest.fixture(scope="session")
def tls_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPlatform]:
    from tests.sandbox import _tls

    state = tmp_path_factory.mktemp("tls-platform")
    # Pre-made so the certificate names only "localhost": https://127.0.0.1 is then a real
    # hostname mismatch against a CA the client does trust.
    files = _tls.ensure_certificates(state, hosts=("localhost",))
    token_file = state / "admin-token"
    log = open(state / "platform.log", "wb")  # noqa: SIM115 - the child writes to it for its lifetime
    from tests.sandbox.lifetime import owned_command

    # owned_command: the server stops by itself if this pytest process is killed.
    proc = subprocess.Popen(
        owned_command("tests.sandbox.platform_api", "--state-dir", str(state), "--tls",
                      "--admin-token-file", str(token_file)),
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    ready = state / "ready.json"
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"TLS platform sandbox did not start: {(state / 'platform.log').read_text()[-2000:]}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    port = int(info["url"].rsplit(":", 1)[1])
    yield TlsPlatform(port=port, ca_path=str(files.ca_file), admin_token=token_file.read_text().strip())
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()

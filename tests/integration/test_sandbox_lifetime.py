"""A killed test run leaves no sandbox behind.

A process starts a sandbox the way the tests do (``tests/conftest.py``'s ``_start_sandbox``,
``--owner-pid`` = itself) or the way the benchmark harness does (``XAPI_SANDBOX_OWNER_PID=parent``),
is SIGKILLed, and both servers (their pids read from the sandbox's ``ready.json`` files) must be
gone within a few seconds. The killed process is left unreaped while the servers are watched: a
zombie owner counts as gone. A sandbox started without an owner (``make sandbox-up``) outlives
the process that started it, as the README documents.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.sandbox import lifetime

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN = 10.0


def _server_pids(directory: Path) -> dict[str, int]:
    pids = {}
    for name in ("platform", "k8s"):
        ready = json.loads((directory / name / "ready.json").read_text())
        pids[name] = int(ready["pid"])
    return pids


def _wait_gone(pids: dict[str, int], timeout: float) -> dict[str, int]:
    """The servers still alive after ``timeout`` (none, hopefully)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {name: pid for name, pid in pids.items() if lifetime.alive(pid)}
        if not left:
            return {}
        time.sleep(0.1)
    return {name: pid for name, pid in pids.items() if lifetime.alive(pid)}


def _starter(script: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A small python process that starts a sandbox, prints READY and then just waits."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "READY":
        proc.kill()
        _out, err = proc.communicate(timeout=30)
        pytest.fail(f"the starter did not start its sandbox: {line!r}\n{err[-3000:]}")


def _stop(directory: Path, pids: dict[str, int]) -> None:
    subprocess.run([sys.executable, "-m", "tests.sandbox", "down", "--dir", str(directory)], cwd=REPO,
                   capture_output=True, timeout=60, check=False)
    for pid in pids.values():
        if lifetime.alive(pid):
            os.kill(pid, signal.SIGKILL)


def _kill_and_check(proc: subprocess.Popen, directory: Path) -> None:
    pids = _server_pids(directory)
    try:
        assert all(lifetime.alive(pid) for pid in pids.values()), "the sandbox was not running to begin with"
        proc.send_signal(signal.SIGKILL)
        # Not reaped yet: the starter is a zombie now, which must count as gone.
        left = _wait_gone(pids, GONE_WITHIN)
        assert not left, f"sandbox processes still running {GONE_WITHIN:.0f}s after their owner died: {left}"
        logs = "".join((directory / f"{name}.log").read_text() for name in pids)
        assert "owner process" in logs and "is gone; stopping" in logs, logs[-2000:]
    finally:
        proc.wait(timeout=30)
        _stop(directory, pids)


def test_sandbox_of_a_killed_test_process_stops(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    # Exactly what a pytest session does: tests/conftest.py's _start_sandbox with this process as owner.
    proc = _starter(f"""
        import sys, time
        from pathlib import Path
        from tests.conftest import _start_sandbox
        _start_sandbox(Path({str(directory)!r}), "--no-seed")
        print("READY", flush=True)
        time.sleep(600)
    """)
    _wait_ready(proc)
    _kill_and_check(proc, directory)


def test_sandbox_owned_by_the_parent_through_the_environment_stops(tmp_path: Path) -> None:
    directory = tmp_path / "sandbox"
    # As the benchmark harness starts one under `make bench` or a test: plain `up`, owner from the env.
    env = dict(os.environ, XAPI_SANDBOX_OWNER_PID="parent")
    proc = _starter(f"""
        import subprocess, sys, time
        subprocess.run([sys.executable, "-m", "tests.sandbox", "up", "--dir", {str(directory)!r},
                        "--platform-port", "0", "--k8s-port", "0", "--no-seed"], check=True,
                       stdout=subprocess.DEVNULL)
        print("READY", flush=True)
        time.sleep(600)
    """, env=env)
    _wait_ready(proc)
    _kill_and_check(proc, directory)


def test_sandbox_without_owner_outlives_its_starter(tmp_path: Path) -> None:
    # `make sandbox-up` / `make demo`: the sandbox keeps running after make has exited.
    directory = tmp_path / "sandbox"
    env = {k: v for k, v in os.environ.items() if k != lifetime.OWNER_ENV}
    result = subprocess.run([sys.executable, "-m", "tests.sandbox", "up", "--dir", str(directory),
                             "--platform-port", "0", "--k8s-port", "0", "--no-seed", "--no-k8s"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    pid = int(json.loads((directory / "platform" / "ready.json").read_text())["pid"])
    try:
        time.sleep(2 * lifetime.POLL_INTERVAL + 0.5)
        assert lifetime.alive(pid), "a sandbox without an owner stopped when its starter exited"
    finally:
        _stop(directory, {"platform": pid})


def test_owner_that_is_not_running_is_refused(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    result = subprocess.run([sys.executable, "-m", "tests.sandbox", "up", "--dir", str(tmp_path / "s"),
                             "--platform-port", "0", "--no-seed", "--no-k8s", "--owner-pid", str(dead.pid)],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"the owner process {dead.pid} is not running" in result.stderr
    assert not (tmp_path / "s" / "platform" / "ready.json").exists()

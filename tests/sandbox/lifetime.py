"""Tie a sandbox server's life to the process that needs it.

``python -m tests.sandbox.lifetime --owner-pid PID MODULE [ARGS...]`` runs ``python -m MODULE
ARGS...`` in this very process (so its pid, the one in ``ready.json``, stays the server's) with a
thread that polls the owner every half second and stops the server once the owner is gone,
however it died (SIGKILL included): first SIGTERM to itself (the servers' clean shutdown), then
a hard exit if that has not ended it within a few seconds.

"Gone" is checked through ``/proc``: a pid that no longer exists, a zombie (killed but not yet
reaped by its parent) and a pid reused by another process (a different start time) all count.

``python -m tests.sandbox up --owner-pid PID`` (or ``XAPI_SANDBOX_OWNER_PID``) starts both
servers this way; ``owned_command`` does it for a test that starts one server itself.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

# `python -m tests.sandbox up` reads its owner from here when --owner-pid is not given.
# A pid, or "parent": the process that ran `python -m tests.sandbox up`.
OWNER_ENV = "XAPI_SANDBOX_OWNER_PID"
POLL_INTERVAL = 0.5
STOP_GRACE = 5.0


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return []
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return raw[raw.rfind(")") + 2:].split()


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), which tells a reused pid apart; None if unknown."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether the process exists, is not a zombie, and (given ``started``) is still the same process."""
    if Path("/proc/self/stat").exists():
        fields = _stat(pid)
        if fields is None:
            return False
        if fields:
            if fields[0] in ("Z", "X", "x"):
                return False
            if started is not None and len(fields) > 19 and fields[19] != started:
                return False
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_owner(value: str | int | None, parent: int | None = None) -> int | None:
    """The owner pid from --owner-pid or XAPI_SANDBOX_OWNER_PID: a pid, or "parent"; None/"" = no owner."""
    if value is None or value == "":
        return None
    if value == "parent":
        return parent if parent is not None else os.getppid()
    try:
        pid = int(value)
    except ValueError:
        raise ValueError(f"the owner must be a process id or 'parent', not {value!r}") from None
    if pid <= 1:
        raise ValueError(f"the owner must be a process id greater than 1, not {pid}")
    return pid


def watch(owner: int, interval: float = POLL_INTERVAL, grace: float = STOP_GRACE) -> threading.Thread:
    """Stop this process once ``owner`` is gone: SIGTERM to itself, then a hard exit after ``grace``."""
    started = start_time(owner)

    def run() -> None:
        while alive(owner, started):
            time.sleep(interval)
        print(f"sandbox: the owner process {owner} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        print(f"sandbox: still running {grace:.0f}s after SIGTERM; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    thread = threading.Thread(target=run, name=f"owner-{owner}-watch", daemon=True)
    thread.start()
    return thread


def owned_command(module: str, *args: str, owner: int | None = None) -> list[str]:
    """The command line of ``python -m MODULE ARGS`` that stops when ``owner`` (default: this process) dies."""
    return [sys.executable, "-m", "tests.sandbox.lifetime", "--owner-pid", str(owner or os.getpid()), module, *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox.lifetime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--owner-pid", required=True, help="stop when this process is gone")
    parser.add_argument("module", help="the server module to run, e.g. tests.sandbox.platform_api")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    try:
        owner = resolve_owner(args.owner_pid)
    except ValueError as exc:
        parser.error(str(exc))
    if owner is None or not alive(owner):
        print(f"sandbox: the owner process {args.owner_pid} is not running; not starting {args.module}",
              file=sys.stderr)
        return 1
    watch(owner)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

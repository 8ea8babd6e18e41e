"""Start and stop the sandboxes: ``python -m tests.sandbox up|down|status``.

``up`` starts the platform API sandbox and the Kubernetes emulator as background
processes, waits until both answer, seeds the demo world and writes a
shell-sourceable ``env`` file. ``down`` stops them. See docs/internals.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.sandbox import lifetime

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".sandbox"
READY_TIMEOUT = 30.0


class LaunchError(Exception):
    """A sandbox process did not come up; the message says which and where its log is."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pids(sandbox_dir: Path) -> dict[str, int]:
    data = _read_json(sandbox_dir / "pids.json") or {}
    return {name: int(pid) for name, pid in data.items()}


def running(sandbox_dir: Path) -> bool:
    pids = _pids(sandbox_dir)
    return bool(pids) and all(_alive(pid) for pid in pids.values()) and (sandbox_dir / "env").exists()


def _start(name: str, args: list[str], state_dir: Path, sandbox_dir: Path, owner: int | None = None) -> dict:
    state_dir.mkdir(parents=True, exist_ok=True)
    ready_file = state_dir / "ready.json"
    ready_file.unlink(missing_ok=True)
    log = open(sandbox_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child for its lifetime
    # An owned server runs under tests.sandbox.lifetime, in the same process (same pid), and stops
    # by itself once its owner is gone: a killed test run leaves nothing serving.
    command = [*args] if owner is None else ["tests.sandbox.lifetime", "--owner-pid", str(owner), *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    pids = _pids(sandbox_dir)
    pids[name] = proc.pid
    (sandbox_dir / "pids.json").write_text(json.dumps(pids))
    log_path = sandbox_dir / f"{name}.log"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready = _read_json(ready_file)
        if ready:
            return ready
        if proc.poll() is not None:
            raise LaunchError(f"the {name} sandbox exited with code {proc.returncode}; see {log_path}")
        time.sleep(0.05)
    raise LaunchError(f"the {name} sandbox did not become ready in {READY_TIMEOUT:.0f}s; see {log_path}")


def _write_env(sandbox_dir: Path, values: dict[str, str]) -> None:
    lines = ["# Written by `python -m tests.sandbox up`; source it: . .sandbox/env"]
    lines += [f"export {key}={value}" for key, value in values.items()]
    tmp = sandbox_dir / "env.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(sandbox_dir / "env")


def up(sandbox_dir: Path, platform_port: int, k8s_port: int, tls: bool, seed: bool, k8s: bool,
       owner: int | None = None, documented_only: bool = False) -> None:
    if owner is not None and not lifetime.alive(owner):
        raise LaunchError(f"the owner process {owner} is not running")
    if running(sandbox_dir):
        print(f"sandbox already running; environment in {sandbox_dir / 'env'}")
        return
    down(sandbox_dir, quiet=True)
    # A fresh world every time: the emulator keeps its objects in memory, so an old
    # platform database would describe credentials no Secret holds any more.
    if sandbox_dir.exists():
        shutil.rmtree(sandbox_dir)
    sandbox_dir.mkdir(parents=True)
    sandbox_dir.chmod(0o700)

    platform_args = [
        "tests.sandbox.platform_api",
        "--state-dir", str(sandbox_dir / "platform"),
        "--port", str(platform_port),
        "--admin-token-file", str(sandbox_dir / "admin-token"),
    ]
    if tls:
        platform_args.append("--tls")
    if documented_only:
        platform_args.append("--documented-only")
    try:
        platform = _start("platform", platform_args, sandbox_dir / "platform", sandbox_dir, owner)
        env = {
            "XAPI_URL": platform["url"],
            "XAPI_ADMIN_TOKEN": (sandbox_dir / "admin-token").read_text().strip(),
        }
        if platform.get("ca_file"):
            env["XAPI_CA_PATH"] = platform["ca_file"]
        if k8s:
            k8s_args = [
                "tests.sandbox.k8s",
                "--state-dir", str(sandbox_dir / "k8s"),
                "--port", str(k8s_port),
                "--platform-url", platform["url"],
            ]
            if platform.get("ca_file"):
                k8s_args += ["--platform-ca", platform["ca_file"]]
            cluster = _start("k8s", k8s_args, sandbox_dir / "k8s", sandbox_dir, owner)
            env["KUBECONFIG"] = cluster["kubeconfig"]
        env["XAPI_SANDBOX_DIR"] = str(sandbox_dir)
        if k8s and seed:
            from tests.sandbox.seed import seed_demo

            seed_demo(
                platform_url=env["XAPI_URL"],
                admin_token=env["XAPI_ADMIN_TOKEN"],
                kubeconfig=env["KUBECONFIG"],
                platform_ca=env.get("XAPI_CA_PATH"),
            )
    except Exception:
        down(sandbox_dir, quiet=True)
        raise
    _write_env(sandbox_dir, env)
    print(f"sandbox up: platform API {env['XAPI_URL']}" + (f", Kubernetes {cluster['url']}" if k8s else ""))
    print(f"environment: . {sandbox_dir / 'env'}")
    if owner is not None:
        print(f"the sandbox stops by itself when process {owner} exits")


def down(sandbox_dir: Path, quiet: bool = False) -> None:
    pids = _pids(sandbox_dir)
    for pid in pids.values():
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for pid in pids.values():
        while _alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    (sandbox_dir / "pids.json").unlink(missing_ok=True)
    (sandbox_dir / "env").unlink(missing_ok=True)
    if not quiet:
        print("sandbox down" if pids else "sandbox was not running")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start both sandboxes and seed the demo world")
    p_up.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    p_up.add_argument("--platform-port", type=int, default=18080)
    p_up.add_argument("--k8s-port", type=int, default=16443)
    p_up.add_argument("--tls", action="store_true", help="serve the platform API over HTTPS with a generated CA")
    p_up.add_argument("--no-seed", action="store_true", help="do not create the demo world")
    p_up.add_argument("--no-k8s", action="store_true", help="start only the platform API sandbox")
    p_up.add_argument("--documented-only", action="store_true",
                      help="the platform API serves only the documented routes and fields (no list route)")
    p_up.add_argument("--owner-pid", default=os.environ.get(lifetime.OWNER_ENV) or None, metavar="PID|parent",
                      help="stop both servers once this process is gone (however it dies); 'parent' = the "
                           f"process running this command; default ${lifetime.OWNER_ENV}, else they run "
                           "until `down`")
    for name in ("down", "status"):
        sub.add_parser(name).add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    sandbox_dir = args.dir.resolve()
    try:
        if args.command == "up":
            try:
                owner = lifetime.resolve_owner(args.owner_pid)
            except ValueError as exc:
                parser.error(f"--owner-pid: {exc}")
            up(sandbox_dir, args.platform_port, args.k8s_port, args.tls, not args.no_seed, not args.no_k8s,
               owner=owner, documented_only=args.documented_only)
        elif args.command == "down":
            down(sandbox_dir)
        else:
            print("running" if running(sandbox_dir) else "not running")
            return 0 if running(sandbox_dir) else 1
    except LaunchError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The pieces every scenario uses: a private sandbox, seeded services, a measured contender run.

Nothing here prints or stores a token: tokens live in the sandboxes, the Secrets and the
contenders' own environment; what is kept are ids, fingerprints, counts and timings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.sandbox.client import api
from tests.sandbox.seed import Cluster, seed_service

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
SHELL_DIR = REPO / "benchmarks" / "shell"
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024

# Anything shaped like a platform, admin or emulator token. A contender's output containing one
# is a leak, whatever else the run did.
TOKEN_SHAPE = re.compile(r"\b(?:xsu|xadm)_[A-Za-z0-9_-]{20,}|\bk8s_[A-Za-z0-9_-]{20,}")


class BenchError(RuntimeError):
    """The benchmark itself could not go on (a sandbox did not start, seeding failed...)."""


# -- sandbox ---------------------------------------------------------------------------------


class Sandbox:
    """A private platform sandbox + Kubernetes emulator on free ports, in its own directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env: dict[str, str] = {}
        self.cluster: Cluster | None = None

    def __enter__(self) -> Sandbox:
        cmd = [sys.executable, "-m", "tests.sandbox", "up", "--dir", str(self.dir),
               "--platform-port", "0", "--k8s-port", "0", "--no-seed"]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BenchError(f"the sandbox did not start in {self.dir}: {result.stderr.strip()}")
        for line in (self.dir / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _sep, value = line[len("export "):].partition("=")
                self.env[key] = shlex.split(value)[0] if value else ""
        self.cluster = Cluster(self.env["KUBECONFIG"])
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([sys.executable, "-m", "tests.sandbox", "down", "--dir", str(self.dir)],
                       cwd=REPO, capture_output=True, timeout=60, check=False)

    @property
    def url(self) -> str:
        return self.env["XAPI_URL"]

    @property
    def admin_token(self) -> str:
        return self.env["XAPI_ADMIN_TOKEN"]

    def platform(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, answer = api(self.url, method, path, token=self.admin_token, json=body,
                             ca=self.env.get("XAPI_CA_PATH"), timeout=30)
        if status >= 300:
            raise BenchError(f"platform sandbox {method} {path} answered HTTP {status}")
        return answer.get("data", answer)

    def k8s(self, method: str, path: str, body: Any = None,
            content_type: str = "application/json") -> dict[str, Any]:
        assert self.cluster is not None
        status, answer = self.cluster.request(method, path, body, content_type=content_type)
        if status >= 300:
            raise BenchError(f"Kubernetes emulator {method} {path} answered HTTP {status}: {answer.get('message', '')}")
        return answer.get("data", answer) if path.startswith("/_sandbox/") else answer

    def reset_counters(self) -> None:
        self.platform("POST", "/_sandbox/counters/reset")
        self.k8s("POST", "/_sandbox/counters/reset")

    def counters(self) -> dict[str, Any]:
        """Requests both sandboxes counted since the last reset, without the harness's own."""
        # The pods keep calling the platform while the two states are read: read the emulator's
        # workload count on both sides of the platform's and retry until it did not move, so the
        # pods' share of GET /api/v1/tenants is known exactly.
        for _attempt in range(50):
            k8s_state = self.k8s("GET", "/_sandbox/state")
            platform_state = self.platform("GET", "/_sandbox/state")
            if _workload_calls(self.k8s("GET", "/_sandbox/state")) == _workload_calls(k8s_state):
                break
            time.sleep(0.01)
        else:
            raise BenchError("the pods never paused long enough to count the requests consistently")
        k8s_routes = {route: sum(codes.values()) for route, codes in k8s_state["requests"]["by_route"].items()
                      if not route.startswith("sandbox ")}
        workload = _workload_calls(k8s_state)
        by_route = {route: sum(codes.values()) for route, codes in platform_state["requests"]["by_route"].items()}
        by_user = {user: sum(codes.values()) for user, codes in platform_state["requests"]["by_user"].items()}
        outcomes = dict(k8s_state.get("workload", {}).get("requests", {}))
        return {"platform_by_route": by_route, "platform_admin": by_user.get("admin", 0),
                "platform_total": platform_state["requests"]["total"], "workload_calls": workload,
                "workload_by_outcome": outcomes, "workload_failed": _workload_failed(outcomes),
                "k8s_by_route": k8s_routes, "k8s_total": sum(k8s_routes.values())}


def _workload_calls(k8s_state: dict[str, Any]) -> int:
    """Calls the emulator's pods made to the platform (answered, whatever the status)."""
    return sum(count for outcome, count in k8s_state.get("workload", {}).get("requests", {}).items()
               if outcome != "error")


def _workload_failed(outcomes: dict[str, int]) -> int:
    """The pods' calls the platform refused (401 above all: a deactivated token); not transport errors."""
    return sum(count for outcome, count in outcomes.items() if outcome.isdigit() and int(outcome) >= 400)


# -- services --------------------------------------------------------------------------------


@dataclass
class Service:
    namespace: str
    deployment: str
    secret: str
    system_user_id: str
    token_fingerprint: str
    replicas: int

    @property
    def host(self) -> str:
        return self.deployment


def pod_timings(start: float, ready: float, grace: float, interval: float) -> dict[str, str]:
    """Per-deployment emulator timings (pod template annotations, see tests/sandbox/k8s)."""
    return {"sandbox.xapi.io/pod-start-delay": f"{start:g}", "sandbox.xapi.io/pod-ready-delay": f"{ready:g}",
            "sandbox.xapi.io/termination-grace": f"{grace:g}", "sandbox.xapi.io/request-interval": f"{interval:g}"}


def seed_services(sandbox: Sandbox, prefix: str, count: int, replicas: int, expires_in_days: int,
                  annotations: dict[str, str], workers: int = 8) -> list[Service]:
    """``count`` services, each in its own namespace with its own Secret, Deployment and credential."""

    def one(index: int) -> Service:
        name = f"{prefix}-{index:03d}"
        made = seed_service(sandbox.url, sandbox.admin_token, sandbox.env["KUBECONFIG"], namespace=f"ns-{name}",
                            name=name, replicas=replicas, expires_in_days=expires_in_days, strategy="restart",
                            platform_ca=sandbox.env.get("XAPI_CA_PATH"), template_annotations=annotations)
        return Service(namespace=made["namespace"], deployment=made["deployment"], secret=made["secret"],
                       system_user_id=made["system_user_id"], token_fingerprint=made["token_fingerprint"],
                       replicas=replicas)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        services = list(pool.map(one, range(count)))
    wait_rollouts_complete(sandbox, services, timeout=120 + count)
    return services


def _rollout_complete(deployment: dict[str, Any]) -> bool:
    # The rules `kubectl rollout status` applies.
    spec, status = deployment["spec"], deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)
            and status.get("updatedReplicas", 0) == wanted and status.get("replicas", 0) == wanted
            and status.get("availableReplicas", 0) == wanted)


def wait_rollouts_complete(sandbox: Sandbox, services: list[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = {(s.namespace, s.deployment) for s in services}
    while pending:
        listing = sandbox.k8s("GET", "/apis/apps/v1/deployments")
        for item in listing.get("items", []):
            key = (item["metadata"]["namespace"], item["metadata"]["name"])
            if key in pending and _rollout_complete(item):
                pending.discard(key)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} deployment(s) did not become available within {timeout:.0f}s")
        time.sleep(0.1)


def wait_old_pods_gone(sandbox: Sandbox, services: list[Service], timeout: float = 15) -> bool:
    """Wait until no pod of these services is terminating: their last calls (with the old token) are counted."""
    wanted = {(s.namespace, s.deployment) for s in services}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = sandbox.k8s("GET", "/_sandbox/state")["pods"]
        if not any(p["terminating"] and (p["namespace"], p["deployment"]) in wanted for p in pods):
            return True
        time.sleep(0.1)
    return False


def bare_rollout(sandbox: Sandbox, service: Service, timeout: float = 120) -> float:
    """Seconds from a `kubectl rollout restart`-style patch to a complete rollout, polled every 50 ms."""
    path = f"/apis/apps/v1/namespaces/{service.namespace}/deployments/{service.deployment}"
    marker = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"-{time.time_ns()}"
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": marker}}}}}
    started = time.monotonic()
    sandbox.k8s("PATCH", path, patch, content_type="application/strategic-merge-patch+json")
    while time.monotonic() - started < timeout:
        if _rollout_complete(sandbox.k8s("GET", path)):
            return time.monotonic() - started
        time.sleep(0.05)
    raise BenchError(f"the calibration rollout of {service.namespace}/{service.deployment} did not complete")


def services_file(services: list[Service], path: Path) -> Path:
    path.write_text("".join(f"{s.namespace} {s.secret} {s.deployment} {s.deployment}\n" for s in services))
    return path


def inventory_file(services: list[Service], group_vars: dict[str, Any], path: Path) -> Path:
    """A fleet inventory as the role documents it: one host per service."""
    hosts = {s.host: {"credential_rotation_namespace": s.namespace, "credential_rotation_secret_name": s.secret,
                      "credential_rotation_deployments": [s.deployment]} for s in services}
    path.write_text(json.dumps({"services": {"hosts": hosts, "vars": group_vars}}, indent=1))
    return path


def plain_inventory_file(services: list[Service], path: Path) -> Path:
    """The plain playbook's inventory (benchmarks/plain/rotate-plain.yml): one host per service."""
    hosts = {s.host: {"service_namespace": s.namespace, "service_secret": s.secret,
                      "service_deployment": s.deployment} for s in services}
    path.write_text(json.dumps({"services": {"hosts": hosts}}, indent=1))
    return path


def module_processes(path: Path) -> dict[str, Any]:
    """What benchmarks/profile/module_count/sitecustomize.py recorded: module processes, by module."""
    by_module: dict[str, int] = {}
    seconds = 0.0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        by_module[record["module"]] = by_module.get(record["module"], 0) + 1
        seconds += float(record.get("seconds", 0))
    return {"processes": sum(by_module.values()), "seconds": round(seconds, 2),
            "by_module": dict(sorted(by_module.items(), key=lambda kv: (-kv[1], kv[0])))}


def _secret_data(sandbox: Sandbox, service: Service) -> dict[str, str]:
    secret = sandbox.k8s("GET", f"/api/v1/namespaces/{service.namespace}/secrets/{service.secret}")
    return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


def check_rotated(sandbox: Sandbox, services: list[Service]) -> list[str]:
    """What is wrong after a rotation run (empty when every service was rotated cleanly)."""
    state = sandbox.platform("GET", "/_sandbox/state")
    users = {u["id"]: u for u in state["system_users"]}
    pods = sandbox.k8s("GET", "/_sandbox/state")["pods"]
    problems = []
    for service in services:
        where = f"{service.namespace}/{service.deployment}"
        data = _secret_data(sandbox, service)
        new_id = data.get("id", "")
        fingerprint = hashlib.sha256(data.get("token", "").encode()).hexdigest()[:8]
        new, old = users.get(new_id), users.get(service.system_user_id)
        if new_id == service.system_user_id or new is None:
            problems.append(f"{where}: the Secret does not name a new credential")
            continue
        if not new["active"] or new["token_fingerprint"] != fingerprint:
            problems.append(f"{where}: the Secret's token is not the new active credential's")
        if old is None or old["active"]:
            problems.append(f"{where}: the old credential is still active")
        live = [p for p in pods if p["namespace"] == service.namespace and p["deployment"] == service.deployment
                and not p["terminating"]]
        if len(live) != service.replicas or any(p["token_fingerprint"] != fingerprint for p in live):
            problems.append(f"{where}: not every pod holds the new token")
    return problems


def check_unchanged(sandbox: Sandbox, services: list[Service]) -> list[str]:
    """What changed although nothing was due (empty when the run left every credential alone)."""
    state = sandbox.platform("GET", "/_sandbox/state")
    active = {u["id"] for u in state["system_users"] if u["active"]}
    problems = []
    if len(state["system_users"]) != len(services):
        problems.append(f"{len(state['system_users']) - len(services)} credential(s) were created")
    gone = [s for s in services if s.system_user_id not in active]
    if gone:
        problems.append(f"{len(gone)} credential(s) were deactivated")
    return problems


def known_tokens(sandbox: Sandbox, services: list[Service]) -> list[str]:
    """Every token a run could leak: the admin token and whatever the Secrets hold now."""
    tokens = [sandbox.admin_token]
    for service in services:
        tokens += [v for k, v in _secret_data(sandbox, service).items() if "token" in k and v]
    return tokens


def count_leaks(text: str, tokens: list[str]) -> int:
    return len(TOKEN_SHAPE.findall(text)) + sum(text.count(t) for t in tokens if len(t) >= 16)


# -- measuring a contender ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found += [int(c) for c in handle.read().split()]
        except OSError:
            continue
    return found


def _rss_pss(pid: int, with_pss: bool) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            rss = int(handle.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0, 0
    pss = 0
    if with_pss:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            pass
    return rss, pss


class TreeSampler(threading.Thread):
    """Samples the summed RSS (and PSS) of a process and all its descendants every ``interval`` s.

    RSS sums count pages shared between forks once per process, so they overstate what the
    machine really spends (PSS splits shared pages fairly); the target is stated on RSS.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name=f"sampler-{pid}", daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            tree, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += _children(pid)
            rss = pss = 0
            for pid in tree:
                r, p = _rss_pss(pid, with_pss=True)
                rss, pss = rss + r, pss + p
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_processes = max(self.peak_processes, len(tree))
            self.samples += 1
            self.stopping.wait(self.interval)


@dataclass
class RolloutWindow:
    """When each watched Deployment's rollout began (first new pod) and completed (all new pods ready)."""

    started: dict[str, float] = field(default_factory=dict)
    completed: dict[str, float] = field(default_factory=dict)


class RolloutObserver(threading.Thread):
    """Watches the emulator's pods (its uncounted /_sandbox/state) to time the rollouts themselves."""

    def __init__(self, sandbox: Sandbox, services: list[Service], interval: float = 0.1) -> None:
        super().__init__(name="rollout-observer", daemon=True)
        self.sandbox, self.interval = sandbox, interval
        self.wanted = {f"{s.namespace}/{s.deployment}": s.replicas for s in services}
        self.initial: dict[str, set[str]] = {}
        for pod in sandbox.k8s("GET", "/_sandbox/state")["pods"]:
            key = f"{pod['namespace']}/{pod['deployment']}"
            if key in self.wanted:
                self.initial.setdefault(key, set()).add(pod["replicaset"])
        self.window = RolloutWindow()
        self.t0 = time.monotonic()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.window.completed) < len(self.wanted):
            try:
                pods = self.sandbox.k8s("GET", "/_sandbox/state")["pods"]
            except (BenchError, OSError):
                self.stopping.wait(self.interval)
                continue
            now = time.monotonic() - self.t0
            live: dict[str, list[dict[str, Any]]] = {}
            for pod in pods:
                key = f"{pod['namespace']}/{pod['deployment']}"
                if key in self.wanted:
                    live.setdefault(key, []).append(pod)
            for key, wanted in self.wanted.items():
                new = [p for p in live.get(key, []) if p["replicaset"] not in self.initial.get(key, set())]
                if new and key not in self.window.started:
                    self.window.started[key] = now
                current = [p for p in live.get(key, []) if not p["terminating"]]
                if (key in self.window.started and key not in self.window.completed and len(current) == wanted
                        and all(p["ready"] and p in new for p in current)):
                    self.window.completed[key] = now
            self.stopping.wait(self.interval)


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    returncode: int
    timed_out: bool
    peak_rss_mib: float
    peak_pss_mib: float
    peak_processes: int
    log: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float,
                 sample_memory: bool = True) -> Measured:
    """Run ``cmd`` in its own process group, timing it and sampling its process tree's memory."""
    with open(log_path, "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeSampler(proc.pid) if sample_memory else None
        if sampler:
            sampler.start()
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            _kill_group(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            # wait4 rather than Popen.wait: its rusage covers every descendant the child reaped.
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            raise
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(proc.pid)  # leftovers (a stuck kubectl watch) must not outlive the run
        if sampler:
            sampler.stopping.set()
            sampler.join()
    return Measured(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, returncode=proc.returncode,
                    timed_out=fired.is_set(),
                    peak_rss_mib=(sampler.peak_rss / MIB) if sampler else 0.0,
                    peak_pss_mib=(sampler.peak_pss / MIB) if sampler else 0.0,
                    peak_processes=sampler.peak_processes if sampler else 0,
                    log=str(log_path.relative_to(REPO)) if log_path.is_relative_to(REPO) else str(log_path))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- the contenders' command lines --------------------------------------------------------


def shell_env(sandbox: Sandbox, kubectl: Path, home: Path) -> dict[str, str]:
    """What the cron user's environment holds: the URL, the admin token, a kubeconfig, kubectl 1.20."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{kubectl.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "API_URL": sandbox.url, "PLATFORM_ADMIN_TOKEN": sandbox.admin_token,
            "KUBECONFIG": sandbox.env["KUBECONFIG"]}


def ansible_env(sandbox: Sandbox) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "XAPI_"))}
    env.update(sandbox.env)
    env.update({"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".collections"),
                "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"})
    return env

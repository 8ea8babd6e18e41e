"""`make bench`: the collection against what operators would use without it, side by side.

    .venv/bin/python -m benchmarks.run [--scenarios single,fleet,daily] [--quick] ...

Four contenders: the reference document's auto-rotate.sh in a sequential cron loop (shell) and
for every service at once with `xargs -P` (parallel), a plain playbook of the document's steps
with stock modules (plain, benchmarks/plain/rotate-plain.yml), and this collection's
playbooks/rotate.yml (collection). Every run gets a fresh sandbox (except the daily check, whose
500 credentials nothing changes), the contenders alternate within each repetition, and every
rotation is checked afterwards: a contender that did not rotate correctly is reported as failed,
not as fast. Writes
benchmarks/results.json (raw numbers) and benchmarks/results.md (the tables); logs of every run
go to benchmarks/out/ (ignored by git). docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host_platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import report
from benchmarks.harness import (
    REPO,
    SHELL_DIR,
    VENV_BIN,
    BenchError,
    RolloutObserver,
    Sandbox,
    Service,
    ansible_env,
    bare_rollout,
    check_rotated,
    check_unchanged,
    count_leaks,
    inventory_file,
    known_tokens,
    module_processes,
    plain_inventory_file,
    pod_timings,
    run_measured,
    seed_services,
    services_file,
    shell_env,
    wait_old_pods_gone,
)

SHELL = "shell"
PARALLEL = "parallel"
PLAIN = "plain"
COLLECTION = "collection"
CONTENDERS = (SHELL, PARALLEL, PLAIN, COLLECTION)
PLAYBOOKS = (PLAIN, COLLECTION)
# The daily check keeps its two contenders: the plain playbook would start two module processes
# for each of the 500 services (minutes), and the targets there are the collection's own.
DAILY_CONTENDERS = (SHELL, COLLECTION)
PLAIN_PLAYBOOK = REPO / "benchmarks" / "plain" / "rotate-plain.yml"
MODULE_COUNTER = REPO / "benchmarks" / "profile" / "module_count"
# A rollout of "a fixed few seconds": 2 replicas, one at a time (maxSurge 1, maxUnavailable 0),
# each pod 1.0 s to start and 0.5 s to become ready. Pods call the API once a second.
ROLLOUT_TIMINGS = pod_timings(start=1.0, ready=0.5, grace=1.0, interval=1.0)
# The fleet's services roll out in about 2 s: the same 2 replicas, 0.6 s to start, 0.4 s more to be ready.
FLEET_TIMINGS = pod_timings(start=0.6, ready=0.4, grace=1.0, interval=1.0)
REPLICAS = 2
# The daily check's 500 services: one quiet pod each (the check never restarts them).
QUIET_TIMINGS = pod_timings(start=0.2, ready=0.1, grace=0.5, interval=600)
DUE_DAYS, NOT_DUE_DAYS = 5, 90


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.out.mkdir(parents=True, exist_ok=True)
        self.kubectl: Path = args.kubectl
        self.sandboxes = 0
        self.group_vars = self._documented_group_vars()
        self.results: dict[str, Any] = {"meta": self._meta(), "scenarios": {}}

    # -- plumbing ------------------------------------------------------------------------------

    def _documented_group_vars(self) -> dict[str, Any]:
        """The group vars of the sandbox inventory the role documents (playbooks/inventory/sandbox.yml)."""
        path = REPO / "playbooks" / "inventory" / "sandbox.yml"
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError:
            return {}
        for group in data.values():
            if isinstance(group, dict) and isinstance(group.get("vars"), dict):
                return dict(group["vars"])
        return {}

    def _meta(self) -> dict[str, Any]:
        def version(cmd: list[str]) -> str:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            except OSError:
                return "missing"
            return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "roles", "plugins", "playbooks"], cwd=REPO,
                               capture_output=True, text=True, check=False)
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit.stdout.strip() + (" (roles/plugins/playbooks modified)" if dirty.stdout.strip() else ""),
            "cpus": len(os.sched_getaffinity(0)),
            "python": sys.version.split()[0],
            "machine": host_platform.platform(),
            "ansible": version([str(VENV_BIN / "ansible-playbook"), "--version"]),
            "kubectl": version([str(self.kubectl), "version", "--client", "--short"]),
            "curl": version(["curl", "--version"]),
            "jq": version(["jq", "--version"]),
            "bash": version(["bash", "--version"]),
            "inventory_group_vars": self.group_vars,
            "forks": self.args.forks,
            "parallel_cap": self.args.parallel,
            "contenders": self.args.contenders,
            "repetitions": {"single": self.args.single_reps, "fleet": self.args.fleet_reps,
                            "daily": self.args.daily_reps},
            "fleet_size": self.args.fleet_size, "daily_size": self.args.daily_size,
            "rollout_timings": ROLLOUT_TIMINGS, "fleet_rollout_timings": FLEET_TIMINGS, "replicas": REPLICAS,
        }

    def sandbox(self) -> Sandbox:
        self.sandboxes += 1
        return Sandbox(self.out / f"sandbox-{self.sandboxes:02d}")

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def contender_cmd(self, who: str, job: str, sandbox: Sandbox, services: list[Service], tag: str
                      ) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of one contender for one job (rotate or check)."""
        if who == SHELL:
            listing = services_file(services, self.out / f"{tag}.services")
            script = {"rotate": "cron-rotate-all.sh", "check": "cron-check-all.sh"}[job]
            return (["bash", str(SHELL_DIR / script), str(listing)],
                    shell_env(sandbox, self.kubectl, self.out / f"{tag}.home"))
        if who == PARALLEL:
            if job != "rotate":
                raise BenchError("the parallel script only rotates")
            listing = services_file(services, self.out / f"{tag}.services")
            return (["bash", str(SHELL_DIR / "parallel-rotate-all.sh"), str(listing),
                     str(self.parallelism(len(services)))],
                    shell_env(sandbox, self.kubectl, self.out / f"{tag}.home"))
        if who == PLAIN:
            if job != "rotate":
                raise BenchError("the plain playbook only rotates")
            playbook = PLAIN_PLAYBOOK
            inventory = plain_inventory_file(services, self.out / f"{tag}.inventory.json")
        else:
            playbook = REPO / "playbooks" / {"rotate": "rotate.yml", "check": "check_expiry.yml"}[job]
            inventory = inventory_file(services, self.group_vars, self.out / f"{tag}.inventory.json")
        cmd = [str(VENV_BIN / "ansible-playbook"), str(playbook), "-i", str(inventory)]
        if self.args.forks:
            cmd += ["--forks", str(self.args.forks)]
        env = ansible_env(sandbox)
        # Per-task timings (names and seconds only) for the "where the time goes" tables, and
        # one line per module process (name and seconds only) for the module counts.
        env.update({"ANSIBLE_CALLBACK_PLUGINS": str(REPO / "benchmarks" / "profile" / "callback_plugins"),
                    "ANSIBLE_CALLBACKS_ENABLED": "bench_task_timing",
                    "BENCH_TASK_TIMING_FILE": str(self.out / f"{tag}.tasks.json"),
                    "BENCH_MODULE_LOG": str(self.out / f"{tag}.modules.jsonl"),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(MODULE_COUNTER), env.get("PYTHONPATH")) if p)})
        if self.args.profile and who == COLLECTION:
            # py-spy samples ansible-playbook and every worker and module process it starts; the
            # sampling slows the run, so profiled runs say where time goes, not how much there is.
            cmd = [str(VENV_BIN / "py-spy"), "record", "--subprocesses", "--format", "raw", "--rate", "50",
                   "--nonblocking", "-o", str(self.out / f"{tag}.pyspy.txt"), "--", *cmd]
        return cmd, env

    def parallelism(self, services: int) -> int:
        """xargs -P of the parallel script: every service at once, up to --parallel."""
        return max(1, min(services, self.args.parallel)) if self.args.parallel else services

    def measure(self, who: str, job: str, sandbox: Sandbox, services: list[Service], tag: str,
                observe: bool, expect: str) -> dict[str, Any]:
        cmd, env = self.contender_cmd(who, job, sandbox, services, tag)
        observer = RolloutObserver(sandbox, services) if observe else None
        sandbox.reset_counters()
        if observer:
            observer.start()
        measured = run_measured(cmd, env, self.out / f"{tag}.log", timeout=self.args.timeout)
        if observer:
            # The contender may return a moment before the observer's next look.
            deadline = time.monotonic() + 2
            while observer.is_alive() and len(observer.window.completed) < len(observer.wanted) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            observer.stopping.set()
            observer.join()
            # The old pods' last calls (with the old token) count against the contender that
            # deactivated it: wait for them to end before reading the counters.
            wait_old_pods_gone(sandbox, services)
        counters = sandbox.counters()
        problems = check_rotated(sandbox, services) if expect == "rotated" else check_unchanged(sandbox, services)
        text = (REPO / measured.log).read_text(errors="replace")
        shown = problems[:5] + ([f"... {len(problems) - 5} more"] if len(problems) > 5 else [])
        run: dict[str, Any] = {"contender": who, "job": job, **measured.as_dict(), "counters": counters,
                               "ok": measured.returncode == 0 and not problems, "problems": shown,
                               "token_leaks": count_leaks(text, known_tokens(sandbox, services))}
        timings = self.out / f"{tag}.tasks.json"
        if who in PLAYBOOKS and timings.exists():
            run["tasks"] = report.task_profile(json.loads(timings.read_text()))
        if who in PLAYBOOKS:
            run["modules"] = module_processes(self.out / f"{tag}.modules.jsonl")
        if who == PARALLEL:
            run["parallel"] = self.parallelism(len(services))
        if observer:
            window = observer.window
            starts, ends = list(window.started.values()), list(window.completed.values())
            run["rollouts_observed"] = len(ends)
            if ends:
                run["rollout_s"] = max(ends) - min(starts)
                per = [window.completed[k] - window.started[k] for k in window.completed]
                run["rollout_each_s"] = sorted(per)[len(per) // 2]
                run["overhead_s"] = measured.wall_s - run["rollout_s"]
        if measured.timed_out:
            run["problems"].insert(0, f"killed after the {self.args.timeout:.0f} s timeout")
        self.log(f"  {tag}: {who} {job} {measured.wall_s:.1f}s rc={measured.returncode}"
                 f"{'' if run['ok'] else ' FAILED: ' + '; '.join(run['problems'][:2]) or ''}")
        return run

    def order(self, rep: int, among: tuple[str, ...] = CONTENDERS) -> list[str]:
        # Alternate the order (forwards, then backwards), so a slow spell of the shared machine
        # hits every contender; the collection and the plain playbook are neighbours either way.
        chosen = [who for who in CONTENDERS if who in self.args.contenders and who in among]
        return chosen if rep % 2 == 0 else chosen[::-1]

    # -- scenarios -----------------------------------------------------------------------------

    def single(self) -> dict[str, Any]:
        runs = []
        for rep in range(self.args.single_reps):
            for who in self.order(rep):
                with self.sandbox() as sandbox:
                    services = seed_services(sandbox, "svc", 1, REPLICAS, DUE_DAYS, ROLLOUT_TIMINGS)
                    time.sleep(0.3)
                    runs.append({"rep": rep, **self.measure(who, "rotate", sandbox, services, f"single-{rep}-{who}",
                                                            observe=True, expect="rotated")})
        return {"runs": runs}

    def fleet(self) -> dict[str, Any]:
        runs, calibration = [], []
        for rep in range(self.args.fleet_reps):
            for who in self.order(rep):
                with self.sandbox() as sandbox:
                    services = seed_services(sandbox, "svc", self.args.fleet_size, REPLICAS, DUE_DAYS,
                                             FLEET_TIMINGS)
                    # One more service, rolled out alone before the contender starts: the duration of
                    # "a single rollout" the target is stated against, on the same busy sandbox.
                    calib = seed_services(sandbox, "calib", 1, REPLICAS, NOT_DUE_DAYS, FLEET_TIMINGS)[0]
                    calibration.append(bare_rollout(sandbox, calib))
                    time.sleep(0.3)
                    runs.append({"rep": rep, **self.measure(who, "rotate", sandbox, services, f"fleet-{rep}-{who}",
                                                            observe=True, expect="rotated")})
        return {"runs": runs, "single_rollout_s": calibration}

    def daily(self) -> dict[str, Any]:
        runs: list[dict[str, Any]] = []
        with self.sandbox() as sandbox:
            self.log(f"  seeding {self.args.daily_size} services (nothing due)")
            services = seed_services(sandbox, "svc", self.args.daily_size, 1, NOT_DUE_DAYS, QUIET_TIMINGS, workers=8)
            have_check = (REPO / "playbooks" / "check_expiry.yml").exists()
            for rep in range(self.args.daily_reps):
                for job in ("check", "rotate"):
                    for who in self.order(rep, DAILY_CONTENDERS):
                        if who == COLLECTION and job == "check" and not have_check:
                            continue
                        runs.append({"rep": rep, **self.measure(who, job, sandbox, services,
                                                                f"daily-{rep}-{job}-{who}", observe=False,
                                                                expect="unchanged")})
        return {"runs": runs, "check_expiry_playbook": have_check}

    def run(self) -> int:
        started = time.monotonic()
        for name in self.args.scenarios:
            self.log(f"scenario {name}")
            scenario_started = time.monotonic()
            try:
                self.results["scenarios"][name] = getattr(self, name)()
            except BenchError as exc:
                self.log(f"  scenario {name} could not run: {exc}")
                self.results["scenarios"][name] = {"error": str(exc), "runs": []}
            self.results["scenarios"][name]["seconds"] = time.monotonic() - scenario_started
            # After every scenario, so a long run that is stopped still leaves what it measured.
            self.write(started)
        self.log(f"wrote {self.args.markdown} and {self.args.json} in {time.monotonic() - started:.0f}s")
        return 0

    def write(self, started: float) -> None:
        self.results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.results["meta"]["seconds"] = time.monotonic() - started
        self.results["summary"] = report.summarize(self.results)
        self.args.json.write_text(json.dumps(self.results, indent=1, sort_keys=False) + "\n")
        self.args.markdown.write_text(report.markdown(self.results))
        shutil.copy(self.args.json, self.out / "results.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="single,fleet,daily",
                        help="comma-separated: single, fleet, daily (default: all; request counts come from single)")
    parser.add_argument("--single-reps", type=int, default=5)
    parser.add_argument("--fleet-reps", type=int, default=2)
    parser.add_argument("--daily-reps", type=int, default=2)
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="comma-separated: shell (sequential loop), parallel (xargs -P), plain (stock-module "
                             "playbook), collection; default all (the daily check runs shell and collection only)")
    parser.add_argument("--fleet-size", type=int, default=20)
    parser.add_argument("--daily-size", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=20, metavar="N",
                        help="the parallel script's xargs -P: every service at once, at most N (default 20; "
                             "0: no cap)")
    parser.add_argument("--forks", type=int, default=20,
                        help="ansible-playbook --forks (default 20, the fleet guide's example; 0: ansible.cfg's)")
    parser.add_argument("--profile", action="store_true",
                        help="run the collection under py-spy (requirements-test.txt); writes OUT/*.pyspy.txt")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one contender run may take")
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition, a fleet of 3 and a daily check of 10 (the harness's smoke test)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="only write --markdown from an earlier run's results.json")
    parser.add_argument("--kubectl", type=Path, default=REPO / ".cache" / "kubectl-1.20" / "usr" / "bin" / "kubectl")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "results.md")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {"single", "fleet", "daily"}
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from single, fleet, daily")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if not args.contenders or set(args.contenders) - set(CONTENDERS):
        parser.error(f"--contenders takes {', '.join(CONTENDERS)}, separated by commas")
    if args.quick:
        args.single_reps = args.fleet_reps = args.daily_reps = 1
        args.fleet_size, args.daily_size = min(args.fleet_size, 3), min(args.daily_size, 10)
    for name in ("single_reps", "fleet_reps", "daily_reps", "fleet_size", "daily_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.parallel < 0:
        parser.error("--parallel must be 0 (no cap) or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        # Re-render the tables from raw results, e.g. after a change of the report's layout.
        try:
            results = json.loads(args.render.read_text())
        except (OSError, ValueError) as exc:
            print(f"bench: cannot read {args.render}: {exc}", file=sys.stderr)
            return 2
        results["summary"] = report.summarize(results)
        args.markdown.write_text(report.markdown(results))
        print(f"wrote {args.markdown} from {args.render}")
        return 0
    for tool in ("curl", "jq", "bash", "base64", "xargs"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed; the shell contender needs it (apt-get install {tool}).",
                  file=sys.stderr)
            return 2
    if args.profile and not (VENV_BIN / "py-spy").is_file():
        print("bench: --profile needs py-spy in .venv; run 'make venv' (it is in requirements-test.txt).",
              file=sys.stderr)
        return 2
    if not args.kubectl.is_file():
        print(f"bench: no kubectl at {args.kubectl}; run 'bash hack/get-kubectl-1.20.sh' first.", file=sys.stderr)
        return 2
    try:
        return Bench(args).run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; no results written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark harness itself (`make bench`), kept from rotting: every contender at a tiny size.

Runs benchmarks/run.py for real, twice: one service, one repetition, all four contenders (the
sequential shell loop, the parallel script, the plain playbook, the collection's rotate.yml), and
a fleet of two services for the parallel script alone, whose `xargs -P` one service does not
exercise (two hosts of the plain playbook are Ansible's forks, nothing of ours). Checks
that each contender really rotated, that the table and the JSON carry the measures and verdicts,
and that no token reached the output or the results. No timing is asserted: the numbers are the
benchmark's business, not the tests'.

Each contender has its own tests, so a contender that breaks (the collection while its role is
being rewritten, say) fails its own tests only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONTENDERS = ["shell", "parallel", "plain", "collection"]
FLEET = 2
SHAPED = re.compile(r"(?:xsu|xadm)_[A-Za-z0-9_-]{20,}|k8s_[A-Za-z0-9_-]{20,}")
# A cell of the tables: a median with its range, or n/a when no run of that contender succeeded.
CELL = r"(?:[\d.]+(?: \([\d.]+-[\d.]+\))?(?: s)?|n/a)"


@pytest.fixture(scope="module")
def kubectl() -> Path:
    result = subprocess.run(["bash", str(REPO / "hack" / "get-kubectl-1.20.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"kubectl 1.20 for the shell contender is not available: {result.stderr.strip()}", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


def _bench(kubectl: Path, out: Path, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.run", *args, "--kubectl", str(kubectl), "--out", str(out / "out"),
           "--json", str(out / "results.json"), "--markdown", str(out / "results.md")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"dir": out, "stdout": result.stdout + result.stderr,
            "json": json.loads((out / "results.json").read_text()), "md": (out / "results.md").read_text()}


@pytest.fixture(scope="module")
def bench_run(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(kubectl, tmp_path_factory.mktemp("bench-single"), "--scenarios", "single", "--single-reps", "1")


@pytest.fixture(scope="module")
def fleet_run(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(kubectl, tmp_path_factory.mktemp("bench-fleet"), "--scenarios", "fleet", "--fleet-reps", "1",
                  "--fleet-size", str(FLEET), "--contenders", "parallel")


def _run_of(bench: dict[str, Any], scenario: str, who: str) -> dict[str, Any]:
    runs = [r for r in bench["json"]["scenarios"][scenario]["runs"] if r["contender"] == who]
    assert len(runs) == 1, f"{who}: {len(runs)} runs in {scenario}"
    return runs[0]


def _assert_rotated(run: dict[str, Any], services: int) -> None:
    assert run["ok"], f"{run['contender']}: exit {run['returncode']}, {run['problems']}"
    assert run["wall_s"] > run["rollout_s"] > 0
    assert run["rollouts_observed"] == services
    assert run["peak_rss_mib"] > 0 and run["cpu_s"] > 0
    routes = run["counters"]["platform_by_route"]
    assert routes["POST /api/v1/system-users"] == services
    assert routes["POST /api/v1/system-users/{id}/deactivate"] == services
    assert run["counters"]["k8s_total"] > 0
    # The workloads' answers are counted, refused ones (401) apart.
    assert run["counters"]["workload_by_outcome"].get("200", 0) > 0
    assert run["counters"]["workload_failed"] >= 0
    assert run["token_leaks"] == 0


@pytest.mark.parametrize("who", CONTENDERS)
def test_each_contender_rotated_the_service(bench_run: dict[str, Any], who: str) -> None:
    run = _run_of(bench_run, "single", who)
    _assert_rotated(run, 1)
    assert run["overhead_s"] == pytest.approx(run["wall_s"] - run["rollout_s"])
    if who in ("plain", "collection"):
        assert run["tasks"]["executed_per_host"] > 0 and run["tasks"]["top_tasks"]
        # Module processes are counted, by module; the shell contenders start none.
        assert run["modules"]["processes"] == sum(run["modules"]["by_module"].values())
        if who == "plain":
            assert run["modules"]["processes"] > 0
        else:  # the role's Kubernetes and platform calls run in the controller's process
            assert not [m for m in run["modules"]["by_module"] if "system_user" in m or "k8s" in m], \
                run["modules"]["by_module"]
    else:
        assert "modules" not in run


def test_the_plain_playbook_uses_stock_modules_only(bench_run: dict[str, Any]) -> None:
    modules = _run_of(bench_run, "single", "plain")["modules"]["by_module"]
    assert set(modules) <= {"ansible.legacy.uri", "ansible.builtin.uri", "kubernetes.core.k8s",
                            "kubernetes.core.k8s_info"}, modules
    assert any(m.endswith(".uri") for m in modules) and "kubernetes.core.k8s" in modules


def test_the_parallel_script_rotates_a_fleet_at_once(fleet_run: dict[str, Any]) -> None:
    run = _run_of(fleet_run, "fleet", "parallel")
    _assert_rotated(run, FLEET)
    assert run["parallel"] == FLEET  # every service at once
    log = Path(run["log"]) if Path(run["log"]).is_absolute() else REPO / run["log"]
    assert log.read_text().count("=== Rotation Complete! ===") == FLEET


def test_the_table_has_the_measures_and_verdicts(bench_run: dict[str, Any]) -> None:
    md = bench_run["md"]
    for heading in ("## Targets", "## 1. One service, rotation due", "## 4. Requests per rotation",
                    "## Module processes per rotation", "## Where the playbooks' time goes"):
        assert heading in md
    header = ("| measure | shell loop | parallel script | plain playbook | collection | collection ÷ shell loop "
              "| collection ÷ parallel script | collection ÷ plain playbook |")
    assert header in md
    assert re.search(r"\| wall time \|" + r"(?: " + CELL + r" \|){7}", md), md
    assert re.search(r"\| overhead = wall - rollout \|", md)
    assert re.search(r"\| failed requests of the workloads \(401\) \|(?: " + CELL + r" \|){4}", md)
    assert re.search(r"\| one service: the collection within 1.2x the plain playbook .* \| "
                     r"(yes|\*\*no\*\*|not measured)", md)
    assert re.search(r"\| module processes per rotation: fewer than 12 .* \| (yes|\*\*no\*\*|not measured)", md)
    assert re.search(r"\| single service: overhead .* \| (yes|\*\*no\*\*|not measured) \|", md)
    summary = bench_run["json"]["summary"]
    assert {t["met"] for t in summary["targets"] + summary["earlier_targets"]} <= {True, False, None}
    assert set(summary["failed_requests"]["single"]) == set(CONTENDERS)


def test_the_fleet_table_has_the_parallel_script(fleet_run: dict[str, Any]) -> None:
    md = fleet_run["md"]
    assert f"## 2. Fleet of {FLEET} services, all due" in md
    assert "| measure | parallel script |" in md
    assert "xargs -P" in md
    # Without the collection in the run there is no verdict to give, and the report says so.
    targets = {t["target"]: t for t in fleet_run["json"]["summary"]["targets"]}
    fleet_target = next(t for name, t in targets.items() if "no slower than the parallel script" in name)
    assert fleet_target["met"] is None


def test_failed_requests_are_named_per_contender() -> None:
    """The report says which contender made the workloads' calls fail (synthetic numbers, no sandbox)."""

    def run(who: str, rep: int, wall: float, failed: int) -> dict[str, Any]:
        return {"contender": who, "job": "rotate", "rep": rep, "ok": True, "wall_s": wall, "rollout_s": 2.0,
                "cpu_s": 1.0, "peak_rss_mib": 100.0, "peak_pss_mib": 80.0, "peak_processes": 4,
                "returncode": 0, "problems": [], "log": "x.log", "token_leaks": 0,
                "counters": {"platform_by_route": {}, "platform_admin": 3, "workload_calls": 10,
                             "workload_by_outcome": {"200": 10, "401": failed}, "workload_failed": failed,
                             "k8s_by_route": {}, "k8s_total": 10},
                **({"modules": {"processes": 8, "by_module": {"kubernetes.core.k8s": 8}}}
                   if who in ("plain", "collection") else {})}

    runs = [run("parallel", 0, 3.0, 4), run("plain", 0, 10.0, 0), run("collection", 0, 9.0, 0),
            run("collection", 1, 9.5, 0), run("plain", 1, 10.5, 0), run("parallel", 1, 3.1, 0)]
    results = {"meta": {"started": "t0", "commit": "c", "cpus": 2, "machine": "m", "python": "3.11",
                        "ansible": "a", "kubectl": "k", "jq": "j", "curl": "c (x)", "inventory_group_vars": {},
                        "forks": 20, "parallel_cap": 20, "repetitions": {}, "fleet_size": 20, "daily_size": 500,
                        "replicas": 2},
               "scenarios": {"fleet": {"runs": runs, "single_rollout_s": [2.0]},
                             "single": {"runs": [dict(r, counters=dict(r["counters"])) for r in runs]}}}
    results["summary"] = report.summarize(results)
    md = report.markdown(results)
    assert "**parallel script: 4 failed request(s) of the workloads (401) in 1 of 2 run(s)**" in md
    assert "| parallel script | **4** (1 of 2) | **4** (1 of 2) |" in md
    assert "**plain playbook:" not in md and "**collection:" not in md
    targets = {t["target"]: t for t in results["summary"]["targets"]}
    fleet = next(t for name, t in targets.items() if "no slower than the parallel script" in name)
    assert fleet["met"] is False  # 9.25 s against 3.05 s
    single = next(t for name, t in targets.items() if "within 1.2x the plain playbook" in name)
    assert single["met"] is True and "2 round(s)" in single["measured"]  # 0.9 and 0.905
    modules = next(t for name, t in targets.items() if name.startswith("module processes per rotation"))
    assert modules["met"] is True and "per rotation" in modules["note"]


def test_no_token_in_results_or_logs(bench_run: dict[str, Any], fleet_run: dict[str, Any]) -> None:
    for bench in (bench_run, fleet_run):
        assert not SHAPED.search(bench["md"])
        assert not SHAPED.search(json.dumps(bench["json"]))
        assert not SHAPED.search(bench["stdout"])
        for log in (bench["dir"] / "out").rglob("*"):
            if not log.is_file() or any(part.startswith("sandbox-") for part in log.parts):
                continue  # the sandboxes' own logs are theirs to mask (tests/integration/test_platform_sandbox.py)
            assert not SHAPED.search(log.read_text(errors="replace")), log


def test_bad_scenario_name_is_one_sentence_and_changes_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--scenarios", "fleet,nope",
                             "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown scenario(s) nope" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("args", "message"), [(["--contenders", "shell,nope"], "--contenders takes"),
                                               (["--parallel", "-1"], "--parallel must be")])
def test_bad_contender_options_are_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", *args, "--json", str(tmp_path / "r.json"),
                             "--markdown", str(tmp_path / "r.md")],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()

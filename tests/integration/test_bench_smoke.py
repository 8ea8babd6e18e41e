"""The benchmark harness itself (`make bench`), kept from rotting: one scenario, one service, one repetition.

Runs benchmarks/run.py for real (its own sandbox, the shell contender with kubectl 1.20, the
collection's rotate.yml) and checks the table and the JSON it writes, that both contenders really
rotated the service, and that no token reached the output or the results.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kubectl() -> Path:
    result = subprocess.run(["bash", str(REPO / "hack" / "get-kubectl-1.20.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
    if result.returncode != 0:
        pytest.fail(f"kubectl 1.20 for the shell contender is not available: {result.stderr.strip()}", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bench_run(kubectl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "benchmarks.run", "--scenarios", "single", "--single-reps", "1",
           "--kubectl", str(kubectl), "--out", str(out / "out"), "--json", str(out / "results.json"),
           "--markdown", str(out / "results.md")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"dir": out, "stdout": result.stdout + result.stderr,
            "json": json.loads((out / "results.json").read_text()), "md": (out / "results.md").read_text()}


def test_both_contenders_rotated_the_service(bench_run: dict) -> None:
    runs = bench_run["json"]["scenarios"]["single"]["runs"]
    assert sorted(r["contender"] for r in runs) == ["collection", "shell"]
    for run in runs:
        assert run["ok"], f"{run['contender']}: exit {run['returncode']}, {run['problems']}"
        assert run["wall_s"] > run["rollout_s"] > 0
        assert run["overhead_s"] == pytest.approx(run["wall_s"] - run["rollout_s"])
        assert run["peak_rss_mib"] > 0 and run["cpu_s"] > 0
        routes = run["counters"]["platform_by_route"]
        assert routes["POST /api/v1/system-users"] == 1
        assert routes["POST /api/v1/system-users/{id}/deactivate"] == 1
        assert run["counters"]["k8s_total"] > 0
    collection = next(r for r in runs if r["contender"] == "collection")
    assert collection["tasks"]["executed_per_host"] > 0 and collection["tasks"]["top_tasks"]


def test_the_table_has_the_measures_and_verdicts(bench_run: dict) -> None:
    md = bench_run["md"]
    for heading in ("## Targets", "## 1. One service, rotation due", "## 4. Requests per rotation",
                    "## Where the collection's time goes"):
        assert heading in md
    assert re.search(r"\| wall time \| [\d.]+ \([\d.]+-[\d.]+\) s \| [\d.]+ \([\d.]+-[\d.]+\) s \| [\d.]+ \|", md)
    assert re.search(r"\| overhead = wall - rollout \|", md)
    assert re.search(r"\| single service: overhead .* \| (yes|\*\*no\*\*) \|", md)
    targets = bench_run["json"]["summary"]["targets"]
    assert {t["met"] for t in targets} <= {True, False, None}
    assert "Every run rotated" in md


def test_no_token_in_results_or_logs(bench_run: dict) -> None:
    shaped = re.compile(r"(?:xsu|xadm)_[A-Za-z0-9_-]{20,}|k8s_[A-Za-z0-9_-]{20,}")
    assert not shaped.search(bench_run["md"])
    assert not shaped.search(json.dumps(bench_run["json"]))
    assert not shaped.search(bench_run["stdout"])
    for log in (bench_run["dir"] / "out").rglob("*.log"):
        if log.parent.name.startswith("sandbox-"):
            continue  # the sandboxes' own logs are theirs to mask (tests/integration/test_platform_sandbox.py)
        assert not shaped.search(log.read_text(errors="replace")), log
    assert all(r["token_leaks"] == 0 for r in bench_run["json"]["scenarios"]["single"]["runs"])


def test_bad_scenario_name_is_one_sentence_and_changes_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--scenarios", "fleet,nope",
                             "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown scenario(s) nope" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r.json").exists()

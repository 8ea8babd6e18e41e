"""Turn the raw runs into medians, ratios, the targets' verdicts and the Markdown of results.md."""

from __future__ import annotations

import statistics
from typing import Any

SHELL, PARALLEL, PLAIN, COLLECTION = "shell", "parallel", "plain", "collection"
CONTENDERS = (SHELL, PARALLEL, PLAIN, COLLECTION)
LABELS = {SHELL: "shell loop", PARALLEL: "parallel script", PLAIN: "plain playbook", COLLECTION: "collection"}
CREATE = "POST /api/v1/system-users"
DEACTIVATE = "POST /api/v1/system-users/{id}/deactivate"
TOKEN_INFO = "GET /api/v1/system-users/token-info"
TENANTS = "GET /api/v1/tenants"
# The issue's targets.
FLEET_VS_PARALLEL = 1.0  # the fleet: the collection no slower than the parallel script
SINGLE_VS_PLAIN = 1.2  # one service: the collection within 1.2x the plain playbook
DAILY_LIMIT_S = 10.0
MODULES_TODAY = 12  # module processes of one rotation before this benchmark's issue


def _runs(results: dict[str, Any], scenario: str, who: str, job: str = "rotate", ok_only: bool = True
          ) -> list[dict[str, Any]]:
    runs = results["scenarios"].get(scenario, {}).get("runs", [])
    return [r for r in runs if r["contender"] == who and r["job"] == job and (r["ok"] or not ok_only)]


def present(results: dict[str, Any], scenario: str, job: str = "rotate") -> list[str]:
    """The contenders that ran (successfully or not) in this scenario, in the report's order."""
    runs = results["scenarios"].get(scenario, {}).get("runs", [])
    seen = {r["contender"] for r in runs if r["job"] == job}
    return [who for who in CONTENDERS if who in seen]


def value(run: dict[str, Any], key: str) -> float | None:
    """A run's number by key; dotted keys reach into the run's records ("modules.processes")."""
    node: Any = run
    for part in key.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node if isinstance(node, int | float) else None


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def metric(results: dict[str, Any], scenario: str, who: str, key: str, job: str = "rotate") -> dict[str, float] | None:
    return stats([v for r in _runs(results, scenario, who, job) if (v := value(r, key)) is not None])


def ratio(collection: dict[str, float] | None, other: dict[str, float] | None) -> float | None:
    """Collection ÷ contender, of the medians: below 1 means the collection is faster (or smaller)."""
    if not collection or not other or other["median"] <= 0:
        return None
    return collection["median"] / other["median"]


def paired_ratios(results: dict[str, Any], scenario: str, who: str, key: str = "wall_s") -> list[float]:
    """Collection ÷ contender within each repetition (round) in which both succeeded."""
    by_rep: dict[Any, dict[str, float]] = {}
    for run in results["scenarios"].get(scenario, {}).get("runs", []):
        v = value(run, key)
        if run["ok"] and run["job"] == "rotate" and v is not None:
            by_rep.setdefault(run.get("rep"), {})[run["contender"]] = v
    return [both[COLLECTION] / both[who] for both in by_rep.values()
            if COLLECTION in both and both.get(who, 0) > 0]


def failed_requests(results: dict[str, Any], scenario: str, who: str) -> dict[str, int] | None:
    """The workloads' refused calls (401s) over every rotation run of a contender, failed runs included."""
    runs = [r for r in _runs(results, scenario, who, ok_only=False) if value(r, "counters.workload_failed") is not None]
    if not runs:
        return None
    counts = [int(r["counters"]["workload_failed"]) for r in runs]
    return {"total": sum(counts), "runs": len(runs), "runs_with": sum(c > 0 for c in counts), "max": max(counts)}


def verifications(counters: dict[str, Any]) -> int:
    """Token checks a contender made: token-info calls plus the GET /tenants calls the pods did not make."""
    routes = counters["platform_by_route"]
    return routes.get(TOKEN_INFO, 0) + max(0, routes.get(TENANTS, 0) - counters["workload_calls"])


def per_rotation(run: dict[str, Any]) -> dict[str, Any]:
    c = run["counters"]
    routes = c["platform_by_route"]
    # The pods' own calls are not the contender's: take them out of the tenants count.
    contender_routes = dict(routes)
    if TENANTS in contender_routes:
        contender_routes[TENANTS] = max(0, routes[TENANTS] - c["workload_calls"])
        if not contender_routes[TENANTS]:
            del contender_routes[TENANTS]
    return {"creates": routes.get(CREATE, 0), "deactivations": routes.get(DEACTIVATE, 0),
            "verifications": verifications(c), "platform": contender_routes,
            "platform_total": sum(contender_routes.values()), "k8s": c["k8s_by_route"], "k8s_total": c["k8s_total"]}


def task_profile(records: list[dict[str, Any]], top: int = 12) -> dict[str, Any]:
    """Where a collection run's time went, from the bench_task_timing callback's records."""
    hosts = {r["host"] for r in records} or {""}
    by_task: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = by_task.setdefault(r["task"], {"task": r["task"], "action": r["action"], "runs": 0, "skipped": 0,
                                               "host_seconds": 0.0})
        entry["runs"] += 1
        entry["skipped"] += r["status"] == "skipped"
        entry["host_seconds"] += r["seconds"]
    ranked = sorted(by_task.values(), key=lambda e: -e["host_seconds"])
    by_action: dict[str, float] = {}
    for r in records:
        by_action[r["action"]] = by_action.get(r["action"], 0.0) + r["seconds"]
    return {"hosts": len(hosts), "task_results": len(records),
            "executed_per_host": sum(r["status"] != "skipped" for r in records) / len(hosts),
            "skipped_per_host": sum(r["status"] == "skipped" for r in records) / len(hosts),
            "host_seconds": sum(r["seconds"] for r in records),
            "top_tasks": [{**e, "host_seconds": round(e["host_seconds"], 2)} for e in ranked[:top]],
            "by_action": {a: round(s, 2) for a, s in sorted(by_action.items(), key=lambda kv: -kv[1])}}


def _killed(results: dict[str, Any], scenario: str, who: str, job: str = "rotate") -> float | None:
    """The longest wall time of this contender's runs that the timeout killed (they ran at least that long)."""
    walls = [r["wall_s"] for r in _runs(results, scenario, who, job, ok_only=False) if r.get("timed_out")]
    return max(walls) if walls else None


def _target(name: str, measured: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "measured": measured, "met": met, "note": note}


def _fmt(number: float | None, unit: str = "s", digits: int = 1) -> str:
    return "n/a" if number is None else f"{number:.{digits}f} {unit}".strip()


def _no_run(results: dict[str, Any], scenario: str, who: str) -> str:
    killed = _killed(results, scenario, who)
    if killed:
        return f"{LABELS[who]}: more than {killed:.0f} s (killed by the timeout)"
    ran = _runs(results, scenario, who, ok_only=False)
    return f"no successful {LABELS[who]} run" + (f" ({len(ran)} failed)" if ran else "")


def _issue_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of the issue that added the parallel script and the plain playbook."""
    targets: list[dict[str, Any]] = []
    scenarios, meta = results["scenarios"], results["meta"]
    if "fleet" in scenarios and PARALLEL in present(results, "fleet"):
        name = f"fleet of {meta['fleet_size']} (~2 s rollouts): the collection no slower than the parallel script"
        coll, par = metric(results, "fleet", COLLECTION, "wall_s"), metric(results, "fleet", PARALLEL, "wall_s")
        r = ratio(coll, par)
        if r is None:
            missing = COLLECTION if not coll else PARALLEL
            targets.append(_target(name, _no_run(results, "fleet", missing),
                                   False if missing == COLLECTION and _killed(results, "fleet", COLLECTION) else None))
        else:
            assert coll and par
            targets.append(_target(name, f"{coll['median']:.1f} s vs {par['median']:.1f} s (collection ÷ parallel "
                                   f"{r:.2f})", r <= FLEET_VS_PARALLEL))
    if "single" in scenarios and PLAIN in present(results, "single"):
        name = f"one service: the collection within {SINGLE_VS_PLAIN:g}x the plain playbook (median of the rounds)"
        rounds = paired_ratios(results, "single", PLAIN)
        coll, plain = metric(results, "single", COLLECTION, "wall_s"), metric(results, "single", PLAIN, "wall_s")
        if rounds and coll and plain:
            median = statistics.median(rounds)
            targets.append(_target(name, f"{median:.2f}x over {len(rounds)} round(s) (medians {coll['median']:.1f} s "
                                   f"vs {plain['median']:.1f} s)", median <= SINGLE_VS_PLAIN,
                                   "" if len(rounds) >= 4 else "fewer than 4 rounds"))
        else:
            targets.append(_target(name, _no_run(results, "single", COLLECTION if not coll else PLAIN), None))
    if "daily" in scenarios:
        size = meta["daily_size"]
        for job, label in (("check", "check_expiry.yml"), ("rotate", "rotate.yml, nothing due")):
            coll = metric(results, "daily", COLLECTION, "wall_s", job)
            killed = _killed(results, "daily", COLLECTION, job)
            name = f"daily check of {size} ({label}): under {DAILY_LIMIT_S:g} s"
            if coll is None and killed:
                targets.append(_target(name, f"more than {killed:.0f} s (killed by the timeout)", False))
            else:
                targets.append(_target(name, _fmt(coll and coll["median"]),
                                       None if coll is None else coll["median"] < DAILY_LIMIT_S))
    if "single" in scenarios or "fleet" in scenarios:
        name = f"module processes per rotation: fewer than {MODULES_TODAY} (one service)"
        single = metric(results, "single", COLLECTION, "modules.processes")
        fleet = metric(results, "fleet", COLLECTION, "modules.processes")
        note = ""
        if fleet:
            note = (f"fleet of {meta['fleet_size']}: {fleet['median']:.0f} in all, "
                    f"{fleet['median'] / meta['fleet_size']:.1f} per rotation")
        if single:
            targets.append(_target(name, f"{single['median']:.0f}" + ("" if single["min"] == single["max"] else
                                   f" ({single['min']:.0f}-{single['max']:.0f})"), single["median"] < MODULES_TODAY,
                                   note))
        elif _runs(results, "single", COLLECTION):
            targets.append(_target(name, "not counted in this run", None, note))
        else:
            targets.append(_target(name, "no successful one-service collection run", None, note))
    return targets


def _earlier_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of the earlier rounds of this benchmark, still measured."""
    targets: list[dict[str, Any]] = []
    scenarios, meta = results["scenarios"], results["meta"]
    if "fleet" in scenarios:
        coll = metric(results, "fleet", COLLECTION, "wall_s")
        shell = metric(results, "fleet", SHELL, "wall_s")
        single = stats(scenarios["fleet"].get("single_rollout_s", []))
        name = f"fleet of {meta['fleet_size']}: within 2x a single rollout + 30 s"
        if coll and single:
            limit = 2 * single["median"] + 30
            targets.append(_target(name, f"{coll['median']:.1f} s (limit {limit:.1f} s: 2 x {single['median']:.1f} s "
                                   "+ 30 s)", coll["median"] <= limit))
        elif single and _killed(results, "fleet", COLLECTION):
            targets.append(_target(name, f"more than {_killed(results, 'fleet', COLLECTION):.0f} s (killed by the "
                                   "timeout)", False))
        else:
            targets.append(_target(name, "no successful collection run", None))
        r = ratio(coll, shell)
        if SHELL in present(results, "fleet"):
            targets.append(_target("fleet: at least 10x faster than the shell loop (stated for a fleet of 50)",
                                   "n/a" if r is None else f"{1 / r:.1f}x (collection ÷ shell loop {r:.2f})",
                                   None if r is None else r <= 0.1))
        mem = stats([x["peak_rss_mib"] for x in _runs(results, "fleet", COLLECTION)])
        targets.append(_target("fleet: peak memory under 1 GiB (summed RSS of the process tree)",
                               "n/a" if mem is None else f"{mem['max']:.0f} MiB (worst run)",
                               None if mem is None else mem["max"] < 1024))

    if "daily" in scenarios:
        for job, label in (("check", "check_expiry.yml"), ("rotate", "rotate.yml, nothing due")):
            coll = metric(results, "daily", COLLECTION, "wall_s", job)
            shell = metric(results, "daily", SHELL, "wall_s", job)
            if coll is None and shell is None:
                continue
            r = ratio(coll, shell)
            targets.append(_target(f"daily check of {meta['daily_size']} ({label}): faster than the shell loop",
                                   "n/a" if r is None or shell is None else
                                   f"collection ÷ shell loop {r:.2f} (shell {shell['median']:.1f} s)",
                                   None if r is None else r < 1))

    if "single" in scenarios:
        coll = metric(results, "single", COLLECTION, "overhead_s")
        shell = metric(results, "single", SHELL, "overhead_s")
        met = None if not coll or not shell else coll["median"] <= 2 * shell["median"]
        targets.append(_target("single service: overhead (rollout excluded) within 2x the shell script's",
                               "n/a" if met is None or not coll or not shell else
                               f"{coll['median']:.1f} s vs {shell['median']:.1f} s "
                               f"({coll['median'] / max(shell['median'], 1e-9):.1f}x)", met))
        runs = _runs(results, "single", COLLECTION)
        if runs:
            counts = [per_rotation(r) for r in runs]
            ok = all(c["creates"] == 1 and c["deactivations"] == 1 and c["verifications"] <= 2 for c in counts)
            first = counts[0]
            targets.append(_target("per rotation: one create, one deactivate, at most two verifications",
                                   f"{first['creates']} create, {first['deactivations']} deactivate, "
                                   f"{first['verifications']} verification(s)", ok))
            repeated = {route: n for route, n in first["platform"].items()
                        if n > 1 and route not in (CREATE, DEACTIVATE)}
            listed = ", ".join(f"{route} x{n}" for route, n in sorted(repeated.items()))
            targets.append(_target("per rotation: no platform request repeated without a cause",
                                   listed or "none repeated",
                                   None if repeated else True,
                                   "judged by hand in docs/benchmarks.md" if repeated else ""))
        else:
            targets.append(_target("per rotation: one create, one deactivate, at most two verifications",
                                   "no successful collection run", None))
    return targets


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    failed = {scenario: {who: f for who in present(results, scenario)
                         if (f := failed_requests(results, scenario, who)) is not None}
              for scenario in ("single", "fleet") if scenario in results["scenarios"]}
    return {"targets": _issue_targets(results), "earlier_targets": _earlier_targets(results),
            "failed_requests": failed}


def _cell(s: dict[str, float] | None, unit: str = "s", digits: int = 1) -> str:
    if not s:
        return "n/a"
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}{' ' + unit if unit else ''}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}){' ' + unit if unit else ''}"


def _ratio_cell(coll: dict[str, float] | None, other: dict[str, float] | None) -> str:
    r = ratio(coll, other)
    return "n/a" if r is None else f"{r:.2f}"


def _table(results: dict[str, Any], scenario: str, rows: list[tuple[str, str, str, int]], job: str = "rotate"
           ) -> list[str]:
    """One column per contender that ran, then collection ÷ each other contender."""
    who_ran = present(results, scenario, job)
    others = [who for who in who_ran if who != COLLECTION] if COLLECTION in who_ran else []
    lines = ["| measure | " + " | ".join(LABELS[w] for w in who_ran)
             + "".join(f" | collection ÷ {LABELS[w]}" for w in others) + " |",
             "| --- " * (1 + len(who_ran) + len(others)) + "|"]
    for label, key, unit, digits in rows:
        cells = {who: metric(results, scenario, who, key, job) for who in who_ran}
        if not any(cells.values()):
            continue
        # A ratio of counts that are often zero (refused calls) says nothing: the counts are the point.
        lines.append(f"| {label} | " + " | ".join(_cell(cells[w], unit, digits) for w in who_ran)
                     + "".join(f" | {'' if key in NO_RATIO else _ratio_cell(cells[COLLECTION], cells[w])}"
                               for w in others) + " |")
    return lines


def _failed_note(results: dict[str, Any], scenario: str) -> list[str]:
    """Under a scenario's table: who made the workloads' calls fail, and what that means."""
    out = []
    for who in present(results, scenario):
        f = failed_requests(results, scenario, who)
        if f and f["total"]:
            out.append(f"- **{LABELS[who]}: {f['total']} failed request(s) of the workloads (401) in "
                       f"{f['runs_with']} of {f['runs']} run(s)**: it deactivated the old credential while old pods "
                       "still called the platform with it.")
    return out + [""] if out else []


def _counts(results: dict[str, Any], scenario: str) -> list[str]:
    per = {who: [per_rotation(r) for r in _runs(results, scenario, who)] for who in present(results, scenario)}
    per = {who: counted for who, counted in per.items() if counted}
    if not per:
        return ["(no successful run to count)"]

    def cell(who: str, key: str, route: str | None) -> str:
        values = [c[key + "_total"] if route is None else c[key].get(route, 0) for c in per[who]]
        low, high = min(values), max(values)
        text = str(low) if low == high else f"{low}-{high}"
        return f"**{text}**" if route is None else text

    lines = ["| API | request | " + " | ".join(LABELS[w] for w in per) + " |", "| --- " * (2 + len(per)) + "|"]
    for api, key in (("platform", "platform"), ("Kubernetes", "k8s")):
        routes = sorted({route for counted in per.values() for c in counted for route in c[key]})
        for route in routes:
            lines.append(f"| {api} | `{route}` | " + " | ".join(cell(w, key, route) for w in per) + " |")
        lines.append(f"| {api} | **total** | " + " | ".join(cell(w, key, None) for w in per) + " |")
    return lines


def _modules(results: dict[str, Any]) -> list[str]:
    """Module processes per rotation of the playbook contenders."""
    meta = results["meta"]
    rows = []
    for who in (PLAIN, COLLECTION):
        single = [r for r in _runs(results, "single", who) if value(r, "modules.processes") is not None]
        fleet = [r for r in _runs(results, "fleet", who) if value(r, "modules.processes") is not None]
        if not single and not fleet:
            continue
        s = stats([r["modules"]["processes"] for r in single])
        f = stats([r["modules"]["processes"] / meta["fleet_size"] for r in fleet])
        by = ""
        if single:
            run = sorted(single, key=lambda r: r["modules"]["processes"])[len(single) // 2]
            by = ", ".join(f"`{m}` {n}" for m, n in run["modules"]["by_module"].items())
        rows.append(f"| {LABELS[who]} | {_cell(s, '', 0)} | {_cell(f, '', 1)} | {by or 'n/a'} |")
    if not rows:
        return []
    return ["## Module processes per rotation", "",
            ("Counted by `benchmarks/profile/module_count/sitecustomize.py`: every Python process of a playbook run "
             "that ran a module payload notes its module's name at exit. One service: per run; the fleet: per run "
             f"divided by its {meta['fleet_size']} services. The shell contenders start no module processes "
             "(kubectl, curl and jq instead)."), "",
            "| contender | one service | fleet, per rotation | one service, by module |",
            "| --- | --- | --- | --- |", *rows, ""]


NO_RATIO = {"counters.workload_failed"}
TIME_ROWS = [("wall time", "wall_s", "s", 1), ("rollout (observed)", "rollout_s", "s", 1),
             ("overhead = wall - rollout", "overhead_s", "s", 1),
             ("CPU time (user+sys, whole tree)", "cpu_s", "s", 1),
             ("peak memory, summed RSS", "peak_rss_mib", "MiB", 0),
             ("peak memory, summed PSS", "peak_pss_mib", "MiB", 0),
             ("peak processes", "peak_processes", "", 0),
             ("module processes", "modules.processes", "", 0),
             ("failed requests of the workloads (401)", "counters.workload_failed", "", 0)]


def _where_time_goes(results: dict[str, Any]) -> list[str]:
    out = ["## Where the playbooks' time goes", "",
           ("From the `bench_task_timing` callback (benchmarks/profile/): seconds from a task's start on a host to "
            "its result, summed over the hosts of the median-time run. With many hosts this includes "
            "the time a finished task waits for the controller to take its result, so controller-side tasks "
            "(`set_fact`, skipped `fail`) show up too."), ""]
    found = False
    for scenario, job, label, who in (("single", "rotate", "one service, collection", COLLECTION),
                                      ("single", "rotate", "one service, plain playbook", PLAIN),
                                      ("fleet", "rotate", "fleet, collection", COLLECTION),
                                      ("fleet", "rotate", "fleet, plain playbook", PLAIN),
                                      ("daily", "check", "daily check_expiry.yml", COLLECTION),
                                      ("daily", "rotate", "daily rotate.yml", COLLECTION)):
        runs = sorted((r for r in _runs(results, scenario, who, job) if r.get("tasks")),
                      key=lambda r: r["wall_s"])
        if not runs:
            continue
        found = True
        run = runs[len(runs) // 2]
        prof = run["tasks"]
        out += [(f"**{label}** (wall {run['wall_s']:.1f} s, {prof['hosts']} host(s), "
                f"{prof['executed_per_host']:.0f} tasks run and {prof['skipped_per_host']:.0f} skipped per host, "
                 f"{prof['host_seconds']:.0f} host-seconds):"), "",
                "| task | module | results | skipped | host-seconds |", "| --- | --- | --- | --- | --- |"]
        for e in prof["top_tasks"][:8]:
            out.append(f"| {e['task']} | `{e['action']}` | {e['runs']} | {e['skipped']} | {e['host_seconds']:.1f} |")
        actions = ", ".join(f"`{a}` {s:.0f}" for a, s in list(prof["by_action"].items())[:6])
        out += ["", f"By module (host-seconds): {actions}.", ""]
    return out if found else []


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    out = ["| target | measured | met |", "| --- | --- | --- |"]
    for t in targets:
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        out.append(f"| {t['target']} | {t['measured']} | {verdict}{note} |")
    return out + [""]


CONTENDER_LINES = {
    SHELL: "**shell loop**: `benchmarks/shell/cron-rotate-all.sh`, the guide's `auto-rotate.sh` for one service "
           "after the other (cron)",
    PARALLEL: "**parallel script**: `benchmarks/shell/parallel-rotate-all.sh`, the same per-service step for every "
              "service at once with `xargs -P`",
    PLAIN: "**plain playbook**: `benchmarks/plain/rotate-plain.yml`, the guide's steps with `ansible.builtin.uri` and "
           "kubernetes.core only (no lock, no state, no usage check)",
    COLLECTION: "**collection**: `playbooks/rotate.yml` (and `playbooks/check_expiry.yml` for the daily check)",
}


def markdown(results: dict[str, Any]) -> str:
    meta, scenarios = results["meta"], results["scenarios"]
    summary = results.get("summary", {})
    ran = [who for who in CONTENDERS if any(who in present(results, name, job) for name in scenarios
                                            for job in ("rotate", "check"))]
    out = ["# Benchmark results", "",
           "Written by `make bench` (`benchmarks/run.py`); the method and the reading of these numbers are in",
           "[docs/benchmarks.md](../docs/benchmarks.md). Raw numbers: [results.json](results.json).", "",
           (f"- run: {meta['started']} to {meta.get('finished', '?')} ({meta.get('seconds', 0) / 60:.1f} min), "
            f"commit {meta['commit']}"),
           f"- machine: {meta['cpus']} CPUs, {meta['machine']}, Python {meta['python']}",
           (f"- tools: `{meta['ansible']}`; kubectl `{meta['kubectl']}`, `{meta['jq']}`, "
            f"`{meta['curl'].split(' (')[0]}`"),
           (f"- inventory group vars (from playbooks/inventory/sandbox.yml): `{meta['inventory_group_vars']}`; "
            f"forks: {meta['forks'] or 'ansible.cfg default'}"
            + (f"; the parallel script's `xargs -P`: every service, at most {meta['parallel_cap'] or 'no cap'}"
               if PARALLEL in ran else "")),
           f"- repetitions: {meta['repetitions']}",
           "- cells: median (min-max) over the successful runs; ratios are collection ÷ contender (of the medians),",
           "  so below 1 means the collection is faster or smaller.", "",
           "Contenders:", ""]
    out += [f"- {CONTENDER_LINES[who]}" for who in ran] + [""]

    out += ["## Targets", ""] + _targets_table(summary.get("targets", []))
    if summary.get("earlier_targets"):
        out += ["Earlier targets, still measured:", ""] + _targets_table(summary["earlier_targets"])

    failed = summary.get("failed_requests", {})
    if any(failed.values()):
        out += ["## Failed requests of the workloads", "",
                ("Calls the pods made to the platform that it refused (401: the token the pod held was deactivated), "
                 "from the contender's start until the last old pod had ended; over every run, failed ones "
                 "included. A contender that deactivates the old credential before the last old pod is gone "
                 "makes the workload fail."), "",
                "| contender | " + " | ".join(f"{name}: failed requests (runs with any)" for name in failed) + " |",
                "| --- " * (1 + len(failed)) + "|"]
        for who in CONTENDERS:
            if not any(who in per for per in failed.values()):
                continue
            cells = []
            for per in failed.values():
                f = per.get(who)
                cells.append("n/a" if f is None else
                             (f"**{f['total']}** ({f['runs_with']} of {f['runs']})" if f["total"] else
                              f"0 (0 of {f['runs']})"))
            out.append(f"| {LABELS[who]} | " + " | ".join(cells) + " |")
        out.append("")

    if "single" in scenarios:
        out += ["## 1. One service, rotation due", "",
                (f"One Deployment of {meta['replicas']} replicas; the rollout is observed from the emulator's pods "
                 "(first new pod to all new pods ready)."), ""]
        out += _table(results, "single", TIME_ROWS) + [""]
        rounds = paired_ratios(results, "single", PLAIN)
        if rounds:
            out += [("Collection ÷ plain playbook, wall time, per round: "
                     + ", ".join(f"{r:.2f}" for r in rounds) + f" (median {statistics.median(rounds):.2f})."), ""]
        out += _failed_note(results, "single")
    if "fleet" in scenarios:
        single = stats(scenarios["fleet"].get("single_rollout_s", []))
        out += [f"## 2. Fleet of {meta['fleet_size']} services, all due", "",
                (f"A single rollout alone on the same sandbox took {_cell(single)}. The shell loop rotates the "
                 "services one by one, the parallel script all at once; the playbooks run over an inventory of one "
                 "host per service."), ""]
        # Wall minus rollout says nothing for a fleet: the rollouts are spread over the whole run.
        fleet_rows = [row for row in TIME_ROWS if row[1] != "overhead_s"]
        fleet_rows[1] = ("rollouts (first start to last completion)", "rollout_s", "s", 1)
        out += _table(results, "fleet", fleet_rows + [("median rollout of one service (observed)", "rollout_each_s",
                                                       "s", 1)]) + [""]
        out += _failed_note(results, "fleet")
    if "daily" in scenarios:
        out += [f"## 3. Daily check, {meta['daily_size']} credentials, nothing due", ""]
        out += [("Shell `cron-check-all.sh` (check-token-expiry.sh per service) against "
                "`playbooks/check_expiry.yml`:"), ""]
        if not scenarios["daily"].get("check_expiry_playbook", True):
            out += ["(playbooks/check_expiry.yml does not exist in this checkout: the collection side was not run)", ""]
        daily_rows = TIME_ROWS[:1] + TIME_ROWS[3:8]  # no rollouts, so no overhead nor refused calls
        out += _table(results, "daily", daily_rows, job="check") + [""]
        out += [("Shell `cron-rotate-all.sh` (auto-rotate.sh per service, which checks and exits) against "
                "`playbooks/rotate.yml` with nothing to rotate:"), ""]
        out += _table(results, "daily", daily_rows, job="rotate") + [""]
    if "single" in scenarios:
        out += ["## 4. Requests per rotation", "",
                ("Counted by the sandboxes over the runs of scenario 1. The pods' own calls (counted by the emulator) "
                 "are taken out of `GET /api/v1/tenants`; Kubernetes counts leave out the harness's `/_sandbox/` "
                 "reads. A range means the runs differed."), ""]
        out += _counts(results, "single") + [""]
        if "fleet" in scenarios:
            out += [("Per rotation in the fleet runs (admin requests to the platform, all requests to Kubernetes, "
                    "divided by the number of services):"), "", "| contender | platform (admin) | Kubernetes |",
                    "| --- | --- | --- |"]
            for who in present(results, "fleet"):
                runs = _runs(results, "fleet", who)
                if runs:
                    n = meta["fleet_size"]
                    out.append(f"| {LABELS[who]} | "
                               f"{statistics.median(r['counters']['platform_admin'] for r in runs) / n:.1f} "
                               f"| {statistics.median(r['counters']['k8s_total'] for r in runs) / n:.1f} |")
            out.append("")

    out += _modules(results)
    out += _where_time_goes(results)
    failed_runs = [(name, r) for name, s in scenarios.items() for r in s.get("runs", []) if not r["ok"]]
    leaks = [(name, r) for name, s in scenarios.items() for r in s.get("runs", []) if r.get("token_leaks")]
    out += ["## Failed runs and token leaks", ""]
    if not failed_runs and not leaks:
        out.append("Every run rotated (or left alone) every service correctly; no token-shaped string or known "
                   "token appeared in any contender's output.")
    for name, r in failed_runs:
        out.append(f"- {name} rep {r.get('rep')} {LABELS.get(r['contender'], r['contender'])} {r['job']} after "
                   f"{r['wall_s']:.0f} s: exit {r['returncode']}; "
                   f"{'; '.join(r['problems']) or 'no state problem found'} (log `{r['log']}`)")
    for name, r in leaks:
        out.append(f"- **token leak**: {name} rep {r.get('rep')} {LABELS.get(r['contender'], r['contender'])} "
                   f"{r['job']}: {r['token_leaks']} token(s) in the output")
    for name, s in scenarios.items():
        if s.get("error"):
            out.append(f"- scenario {name} could not run: {s['error']}")
    out.append("")
    return "\n".join(out)

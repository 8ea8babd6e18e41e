"""Turn the raw runs into medians, ratios, the targets' verdicts and the Markdown of results.md."""

from __future__ import annotations

import statistics
from typing import Any

SHELL, COLLECTION = "shell", "collection"
CREATE = "POST /api/v1/system-users"
DEACTIVATE = "POST /api/v1/system-users/{id}/deactivate"
TOKEN_INFO = "GET /api/v1/system-users/token-info"
TENANTS = "GET /api/v1/tenants"


def _runs(results: dict[str, Any], scenario: str, who: str, job: str = "rotate", ok_only: bool = True
          ) -> list[dict[str, Any]]:
    runs = results["scenarios"].get(scenario, {}).get("runs", [])
    return [r for r in runs if r["contender"] == who and r["job"] == job and (r["ok"] or not ok_only)]


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def metric(results: dict[str, Any], scenario: str, who: str, key: str, job: str = "rotate") -> dict[str, float] | None:
    return stats([r[key] for r in _runs(results, scenario, who, job) if r.get(key) is not None])


def ratio(shell: dict[str, float] | None, collection: dict[str, float] | None) -> float | None:
    if not shell or not collection or collection["median"] <= 0:
        return None
    return shell["median"] / collection["median"]


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


def _fmt(value: float | None, unit: str = "s", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}".strip()


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    targets: list[dict[str, Any]] = []
    scenarios = results["scenarios"]

    if "fleet" in scenarios:
        coll = metric(results, "fleet", COLLECTION, "wall_s")
        shell = metric(results, "fleet", SHELL, "wall_s")
        single = stats(scenarios["fleet"].get("single_rollout_s", []))
        if coll and single:
            limit = 2 * single["median"] + 30
            targets.append(_target(f"fleet of {results['meta']['fleet_size']}: within 2x a single rollout + 30 s",
                                   f"{coll['median']:.1f} s (limit {limit:.1f} s: 2 x {single['median']:.1f} s + 30 s)",
                                   coll["median"] <= limit))
        elif single and _killed(results, "fleet", COLLECTION):
            targets.append(_target("fleet: within 2x a single rollout + 30 s",
                                   f"more than {_killed(results, 'fleet', COLLECTION):.0f} s (killed by the timeout)",
                                   False))
        else:
            targets.append(_target("fleet: within 2x a single rollout + 30 s", "no successful collection run", None))
        r = ratio(shell, coll)
        targets.append(_target("fleet: at least 10x faster than the shell loop",
                               "n/a" if r is None else f"{r:.1f}x", None if r is None else r >= 10))
        mem = stats([x["peak_rss_mib"] for x in _runs(results, "fleet", COLLECTION)])
        targets.append(_target("fleet: peak memory under 1 GiB (summed RSS of the process tree)",
                               "n/a" if mem is None else f"{mem['max']:.0f} MiB (worst run)",
                               None if mem is None else mem["max"] < 1024))

    if "daily" in scenarios:
        for job, label in (("check", "check_expiry.yml"), ("rotate", "rotate.yml, nothing due")):
            coll = metric(results, "daily", COLLECTION, "wall_s", job)
            shell = metric(results, "daily", SHELL, "wall_s", job)
            size = results["meta"]["daily_size"]
            killed = _killed(results, "daily", COLLECTION, job)
            if coll is None and killed:
                targets.append(_target(f"daily check of {size} ({label}): under 10 s",
                                       f"more than {killed:.0f} s (killed by the timeout)", False))
                continue
            targets.append(_target(f"daily check of {size} ({label}): under 10 s",
                                   _fmt(coll and coll["median"]), None if coll is None else coll["median"] < 10))
            r = ratio(shell, coll)
            targets.append(_target(f"daily check of {size} ({label}): faster than the shell loop",
                                   "n/a" if r is None else f"{r:.2f}x (shell {shell['median']:.1f} s)",
                                   None if r is None else r > 1))

    if "single" in scenarios:
        coll = metric(results, "single", COLLECTION, "overhead_s")
        shell = metric(results, "single", SHELL, "overhead_s")
        met = None if not coll or not shell else coll["median"] <= 2 * shell["median"]
        targets.append(_target("single service: overhead (rollout excluded) within 2x the shell script's",
                               "n/a" if met is None else f"{coll['median']:.1f} s vs {shell['median']:.1f} s "
                               f"({coll['median'] / max(shell['median'], 1e-9):.1f}x)", met))

    if "single" in scenarios:
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
    return {"targets": targets}


def _cell(s: dict[str, float] | None, unit: str = "s", digits: int = 1) -> str:
    if not s:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}){' ' + unit if unit else ''}"


def _ratio_cell(shell: dict[str, float] | None, coll: dict[str, float] | None) -> str:
    r = ratio(shell, coll)
    return "n/a" if r is None else f"{r:.2f}"


def _table(results: dict[str, Any], scenario: str, rows: list[tuple[str, str, str, int]], job: str = "rotate"
           ) -> list[str]:
    lines = ["| measure | shell | collection | shell ÷ collection |", "| --- | --- | --- | --- |"]
    for label, key, unit, digits in rows:
        shell = metric(results, scenario, SHELL, key, job)
        coll = metric(results, scenario, COLLECTION, key, job)
        if shell is None and coll is None:
            continue
        lines.append(f"| {label} | {_cell(shell, unit, digits)} | {_cell(coll, unit, digits)} "
                     f"| {_ratio_cell(shell, coll)} |")
    return lines


def _counts(results: dict[str, Any], scenario: str) -> list[str]:
    per = {who: [per_rotation(r) for r in _runs(results, scenario, who)] for who in (SHELL, COLLECTION)}
    for who, counted in per.items():
        if not counted:
            return [f"(no successful {who} run to count)"]

    def cell(who: str, key: str, route: str | None) -> str:
        values = [c[key + "_total"] if route is None else c[key].get(route, 0) for c in per[who]]
        low, high = min(values), max(values)
        text = str(low) if low == high else f"{low}-{high}"
        return f"**{text}**" if route is None else text

    lines = ["| API | request | shell | collection |", "| --- | --- | --- | --- |"]
    for api, key in (("platform", "platform"), ("Kubernetes", "k8s")):
        routes = sorted({route for counted in per.values() for c in counted for route in c[key]})
        for route in routes:
            lines.append(f"| {api} | `{route}` | {cell(SHELL, key, route)} | {cell(COLLECTION, key, route)} |")
        lines.append(f"| {api} | **total** | {cell(SHELL, key, None)} | {cell(COLLECTION, key, None)} |")
    return lines


TIME_ROWS = [("wall time", "wall_s", "s", 1), ("rollout (observed)", "rollout_s", "s", 1),
             ("overhead = wall - rollout", "overhead_s", "s", 1),
             ("CPU time (user+sys, whole tree)", "cpu_s", "s", 1),
             ("peak memory, summed RSS", "peak_rss_mib", "MiB", 0),
             ("peak memory, summed PSS", "peak_pss_mib", "MiB", 0),
             ("peak processes", "peak_processes", "", 0)]


def _where_time_goes(results: dict[str, Any]) -> list[str]:
    out = ["## Where the collection's time goes", "",
           ("From the `bench_task_timing` callback (benchmarks/profile/): seconds from a task's start on a host to "
            "its result, summed over the hosts of the collection's median-time run. With many hosts this includes "
            "the time a finished task waits for the controller to take its result, so controller-side tasks "
            "(`set_fact`, skipped `fail`) show up too."), ""]
    found = False
    for scenario, job, label, who in (("single", "rotate", "one service", COLLECTION),
                                      ("fleet", "rotate", "fleet", COLLECTION),
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


def markdown(results: dict[str, Any]) -> str:
    meta, scenarios = results["meta"], results["scenarios"]
    out = ["# Benchmark results", "",
           "Written by `make bench` (`benchmarks/run.py`); the method and the reading of these numbers are in",
           "[docs/benchmarks.md](../docs/benchmarks.md). Raw numbers: [results.json](results.json).", "",
           (f"- run: {meta['started']} to {meta.get('finished', '?')} ({meta.get('seconds', 0) / 60:.1f} min), "
            f"commit {meta['commit']}"),
           f"- machine: {meta['cpus']} CPUs, {meta['machine']}, Python {meta['python']}",
           (f"- contenders: `{meta['ansible']}`; kubectl `{meta['kubectl']}`, `{meta['jq']}`, "
            f"`{meta['curl'].split(' (')[0]}`"),
           (f"- inventory group vars (from playbooks/inventory/sandbox.yml): `{meta['inventory_group_vars']}`; "
            f"forks: {meta['forks'] or 'ansible.cfg default'}"),
           f"- repetitions: {meta['repetitions']}",
           "- cells: median (min-max) over the successful runs; the ratio is shell ÷ collection, so above 1 means",
           "  the collection is faster or smaller.", ""]

    out += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in results.get("summary", {}).get("targets", []):
        verdict = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        out.append(f"| {t['target']} | {t['measured']} | {verdict}{note} |")
    out.append("")

    if "single" in scenarios:
        out += ["## 1. One service, rotation due", "",
                (f"One Deployment of {meta['replicas']} replicas; the rollout is observed from the emulator's pods "
                 "(first new pod to all new pods ready)."), ""]
        out += _table(results, "single", TIME_ROWS) + [""]
    if "fleet" in scenarios:
        single = stats(scenarios["fleet"].get("single_rollout_s", []))
        out += [f"## 2. Fleet of {meta['fleet_size']} services, all due", "",
                (f"A single rollout alone on the same sandbox took {_cell(single)}. The shell loops over the "
                 "services one by one; the collection runs `playbooks/rotate.yml` over an inventory of one host "
                 "per service."), ""]
        # Wall minus rollout says nothing for a fleet: the rollouts are spread over the whole run.
        fleet_rows = [row for row in TIME_ROWS if row[1] != "overhead_s"]
        fleet_rows[1] = ("rollouts (first start to last completion)", "rollout_s", "s", 1)
        out += _table(results, "fleet", fleet_rows + [("median rollout of one service (observed)", "rollout_each_s",
                                                       "s", 1)]) + [""]
    if "daily" in scenarios:
        out += [f"## 3. Daily check, {meta['daily_size']} credentials, nothing due", ""]
        out += [("Shell `cron-check-all.sh` (check-token-expiry.sh per service) against "
                "`playbooks/check_expiry.yml`:"), ""]
        if not scenarios["daily"].get("check_expiry_playbook", True):
            out += ["(playbooks/check_expiry.yml does not exist in this checkout: the collection side was not run)", ""]
        out += _table(results, "daily", TIME_ROWS[:1] + TIME_ROWS[3:], job="check") + [""]
        out += [("Shell `cron-rotate-all.sh` (auto-rotate.sh per service, which checks and exits) against "
                "`playbooks/rotate.yml` with nothing to rotate:"), ""]
        out += _table(results, "daily", TIME_ROWS[:1] + TIME_ROWS[3:], job="rotate") + [""]
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
            for who in (SHELL, COLLECTION):
                runs = _runs(results, "fleet", who)
                if runs:
                    n = meta["fleet_size"]
                    out.append(f"| {who} | {statistics.median(r['counters']['platform_admin'] for r in runs) / n:.1f} "
                               f"| {statistics.median(r['counters']['k8s_total'] for r in runs) / n:.1f} |")
            out.append("")

    out += _where_time_goes(results)
    failed = [(name, r) for name, s in scenarios.items() for r in s.get("runs", []) if not r["ok"]]
    leaks = [(name, r) for name, s in scenarios.items() for r in s.get("runs", []) if r.get("token_leaks")]
    out += ["## Failed runs and token leaks", ""]
    if not failed and not leaks:
        out.append("Every run rotated (or left alone) every service correctly; no token-shaped string or known "
                   "token appeared in any contender's output.")
    for name, r in failed:
        out.append(f"- {name} rep {r.get('rep')} {r['contender']} {r['job']} after {r['wall_s']:.0f} s: "
                   f"exit {r['returncode']}; "
                   f"{'; '.join(r['problems']) or 'no state problem found'} (log `{r['log']}`)")
    for name, r in leaks:
        out.append(f"- **token leak**: {name} rep {r.get('rep')} {r['contender']} {r['job']}: "
                   f"{r['token_leaks']} token(s) in the output")
    for name, s in scenarios.items():
        if s.get("error"):
            out.append(f"- scenario {name} could not run: {s['error']}")
    out.append("")
    return "\n".join(out)

# Copyright (c) 2026, xapi.system_auth maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The credential_rotation role's eyes: reads and waits for every service of a run, in this process.

It reads and writes through kubernetes.core's own code (the ``k8s`` lookup's steps for a GET or a
list, the ``k8s`` module's runner for a write, one client per cluster: ``plugin_utils/_k8s.py``),
calls the platform through this collection's modules' own code (``plugin_utils/_platform_call.py``),
all in this process, asks services' health URLs through ``ansible.builtin.uri``, and judges every
answer with the rules in ``module_utils/_rotation.py``. A wait prints a progress line now and then
instead of Ansible's ``FAILED - RETRYING`` and, while it lasts, keeps the run's rotation locks alive
(a conditional write through ``kubernetes.core.k8s`` every third of the lock's duration), so that a
lock lapses only once its holder is gone. While only old pods are left, it watches their namespace
so that the wait ends when they are gone rather than at the next poll.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.template import Templar
from ansible.utils.display import Display

from ansible_collections.xapi.system_auth.plugins.action.system_user import hide_secrets
from ansible_collections.xapi.system_auth.plugins.module_utils import _rotation as rules
from ansible_collections.xapi.system_auth.plugins.module_utils._rotation_inputs import spec_sentence
from ansible_collections.xapi.system_auth.plugins.plugin_utils import _k8s as k8s
from ansible_collections.xapi.system_auth.plugins.plugin_utils import _platform_call as platform

display = Display()
CONNECTION = ("api_url", "api_token", "ca_path", "validate_certs", "timeout", "retries")
# The role's variables; credential_rotation_outcomes is what the role itself sets.
_INPUT = re.compile(r"^credential_rotation_(?!outcomes?$|hosts$)[a-z_]+$")
_SPECS: dict[str, dict] = {}


def _templated(value: Any) -> bool:
    """Whether a variable's value may hold a template (a string with a brace, at any depth)."""
    if isinstance(value, str):
        return "{" in value
    if isinstance(value, dict):
        return any(_templated(k) or _templated(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_templated(v) for v in value)
    return False


def _role_spec(task) -> dict:
    """The options of the role's ``main`` entry point (``meta/argument_specs.yml``), read once."""
    role = getattr(task, "_role", None)
    path = os.path.join(getattr(role, "_role_path", "") or "", "meta", "argument_specs.yml")
    if path not in _SPECS:
        try:
            with open(path, encoding="utf-8") as handle:
                _SPECS[path] = (yaml.safe_load(handle) or {})["argument_specs"]["main"]["options"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            _SPECS[path] = {}
    return _SPECS[path]


def _message(error: Exception) -> str:
    text = str(error)
    found = re.search(r'"message": ?"(.*?)", ?"reason"', text)
    if found:
        return found.group(1).replace("\\", "")
    status = getattr(error, "status", None)
    first = (text.strip().splitlines() or ["unknown error"])[0]
    return f"HTTP {status}: {first}" if status and str(status) not in first else first


# How many namespaces a wait watches at once while old pods terminate (see _poll). A watch may
# outlive its round by up to a second, so two rounds' watches and a read must fit in the client's
# connection pool (five connections per CPU, at least ten) without urllib3 discarding any.
_WATCHES = 4
# The list options of the platform modules: a call whose list is empty has nothing to send.
_LISTS = ("id", "ids", "tokens", "users")
# The steps whose answers the action folds into the run itself (``fold``): all but the read, the
# create (whose answers carry tokens, which the role keeps in a fact of their own) and the inputs.
_FOLDED = ("lookup", "call", "write", "restart", "check", "wait", "rb_wait", "usage", "health", "preview")


def _slim(answer: dict) -> dict:
    """A write's answer with each object cut to its metadata, all the folds read: the whole objects
    (a Deployment's spec and status, twenty times over) would only be carried from task to task."""
    for entry in (answer.get("result") or {}).get("results") or []:
        obj = entry.get("result")
        if isinstance(obj, dict) and obj.get("metadata"):
            metadata = obj["metadata"]
            entry["result"] = {"kind": obj.get("kind"), "metadata": {
                k: metadata[k] for k in ("name", "namespace", "resourceVersion", "generation", "annotations")
                if k in metadata}}
    return answer


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("step", "run", "fold", "display_every", "calls", "state", "module", "args", "ids",
                             "tokens") + CONNECTION)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        self._vars = task_vars or {}
        self._apply_task_environment()
        args = self._task.args
        step = args.get("step")
        run = rules.unpack(args.get("run")) or {}
        self._connection_args = {k: args[k] for k in CONNECTION if args.get(k) not in (None, "")}
        self._every = float(args.get("display_every", 15))
        self._drains: dict[str, tuple] = {}  # host: what to watch while its old pods go
        return self._dispatch(result, step, args.get("fold"), run)

    def _dispatch(self, result: dict, step: Any, fold: Any, run: dict) -> dict:
        if fold:
            return self._step_and_fold(result, str(step), str(fold), run)
        if step not in ("inputs", "read", "call"):
            result.update(failed=True, msg=f"rotation_observe: step {step!r} needs fold, the step of the table it "
                                           "makes (its answers are folded into the run, never returned)")
            return result
        return self._step(result, step, run)

    def _step_and_fold(self, result: dict, step: str, fold: str, run: dict) -> dict:
        """Make the step for the services due for the table's step ``fold`` and fold the answers into
        the run (``rules.fold``): the result is the run's new state (``rules.pack``), which the task
        registers as the run, and never the answer itself (a Secret's data, a new token).

        A step nobody is due for is reported skipped and leaves the run as it was (Ansible's own skip
        would register a skipped result in the run's place). A call with nothing to send is not made,
        and the fold gets ``{"skipped": True}`` for its answer.
        """
        if not isinstance(run.get("services"), dict):
            result.update(failed=True, msg="rotation_observe: run must be the run's state (the role's "
                                           "_credential_rotation_run), which has no services here")
            return result
        if step not in _FOLDED or fold not in rules.STEPS:
            result.update(failed=True, msg=f"rotation_observe: step {step!r} cannot be folded as {fold!r}")
            return result
        check_mode_write = step in ("write", "restart") and bool(self._task.check_mode)
        if check_mode_write or not rules.due(run, fold):
            why = "nothing is written in check mode" if check_mode_write else f"no service is due for the step {fold}"
            result.update(rules.pack(rules.indexed(run)), skipped=True, msg=why)
            return result
        args, extra = self._task.args, None
        if step == "lookup":
            ids, tokens = args.get("ids") or [], args.get("tokens") or []
            answer = self._call("system_user_info", {"id": ids}) if ids else {"skipped": True}
            extra = self._call("system_user_info", {"tokens": tokens}) if tokens else {"skipped": True}
        elif step == "call":
            call_args = dict(args.get("args") or {})
            nothing = any(isinstance(call_args.get(k), list) and not call_args[k] for k in _LISTS)
            answer = {"skipped": True} if nothing else self._call(str(args.get("module")), call_args)
        else:
            answer = self._step({}, step, run)
        result.update(rules.pack(rules.indexed(rules.fold(run, fold, answer, extra, time.time()))))
        result["changed"] = bool(answer.get("changed"))
        # Due, but nothing to send or wait for (no health URL, no id to deactivate): the state moves
        # on, and the operator sees the step skipped rather than an "ok" that did nothing.
        if (answer.get("skipped") and (extra or {"skipped": True}).get("skipped")) \
                or (step in ("wait", "rb_wait", "usage", "health") and not answer.get("verdicts")):
            result.update(skipped=True, msg=f"nothing to send or wait for in the step {fold}")
        warnings = [w for a in (answer, extra or {}) for w in a.get("warnings") or []]
        if warnings:  # what the modules warned about, shown as a module's warnings are
            result["warnings"] = warnings
        if answer.get("diff"):
            result["diff"] = answer["diff"]
        return result

    def _call(self, module: str, call_args: dict) -> dict:
        """One of the collection's platform modules, its own code run here (plugin_utils/_platform_call)."""
        return platform.call(module, {**self._connection_args, **call_args},
                             check_mode=bool(self._task.check_mode), diff=bool(self._task.diff))

    def _step(self, result: dict, step: Any, run: dict) -> dict:
        """The step's answer: for a fold, or for the task itself with the steps the role folds through
        the filters (inputs, read, and the call of the create)."""
        args = self._task.args
        task_vars = self._vars
        if step == "inputs":
            result.update(self._inputs(task_vars or {}))
            result["_ansible_no_log"] = True  # the variables hold the admin token and webhook URLs
        elif step == "call":
            answer = self._call(str(args.get("module")), dict(args.get("args") or {}))
            result.update(hide_secrets(answer, bool(self._play_context.no_log)))
        elif step in ("write", "restart"):  # never in check mode: _step_and_fold skips them there
            # One kubernetes.core write per cluster, in this process; registered as a loop would be.
            hidden = ["data", "metadata.managedFields"] if step == "write" else None
            result["results"] = [dict(_slim(k8s.write(call["definitions"], call["cluster"],
                                                      args.get("state") or "patched", hidden)), item=call)
                                 for call in args.get("calls") or []]
            result["changed"] = any(r.get("changed") for r in result["results"])
            if step == "write":
                result["_ansible_no_log"] = True  # the definitions carry tokens
                for entry in result["results"]:  # "results" is shown as a loop's, entry by entry
                    entry["_ansible_no_log"] = True
        elif step == "read":
            result["reads"] = self._read(run)
            result["_ansible_no_log"] = True  # the Secrets' data
        elif step == "check":
            result["reads"] = {r["host"]: self._check_one(r) for r in rules.check_requests(run)}
            result["_ansible_no_log"] = True  # a companion Secret's data
        elif step in ("wait", "rb_wait"):
            result["verdicts"] = self._wait_workloads(run, step)
        elif step == "usage":
            result["verdicts"] = self._wait_usage(run)
        elif step == "health":
            result["verdicts"] = self._wait_health(run)
        elif step == "preview":
            diffs = rules.preview(run, time.time())[1]
            result["changed"] = bool(rules.due(run, "preview"))
            if self._task.diff and diffs:
                result["diff"] = diffs
        else:
            result.update(failed=True, msg=f"rotation_observe: unknown step {step!r}")
        return result

    # -- the services' variables ----------------------------------------------------------------

    def _inputs(self, task_vars: dict) -> dict:
        """Every play host's ``credential_rotation_*`` variables, as a task of the role sees them.

        One task for the whole play instead of one per host: for each host, Ansible's variable
        manager resolves the variables exactly as it does before it runs a task of this role for
        that host (role defaults, inventory, play and role vars, role parameters, facts, extra
        vars), and they are templated in that host's context. Each host's values are then checked
        against the role's argument spec (``meta/argument_specs.yml``), as Ansible's own role
        validation would, but a service whose values fail fails alone, with the sentence.
        """
        hostvars = task_vars.get("hostvars")
        manager = getattr(hostvars, "_variable_manager", None)
        inventory = getattr(hostvars, "_inventory", None)
        if manager is None or inventory is None:
            return {"failed": True, "msg": "rotation_observe step=inputs needs the hostvars of a play; "
                                           "include the role in a play rather than calling this action."}
        hosts = list(task_vars.get("ansible_play_hosts") or [])
        batch = list(task_vars.get("ansible_play_batch") or hosts)
        every = list(task_vars.get("ansible_play_hosts_all") or hosts)
        play = self._task.get_play()
        spec = _role_spec(self._task)
        validator = ArgumentSpecValidator(spec) if spec else None
        inputs: dict[str, dict] = {}
        invalid: dict[str, str] = {}
        for name in hosts:
            host = inventory.get_host(name)
            try:
                variables = manager.get_vars(play=play, host=host, task=self._task, _hosts=batch, _hosts_all=every)
            except TypeError:  # a variable manager without the host caches
                variables = manager.get_vars(play=play, host=host, task=self._task)
            templar = None
            values: dict[str, Any] = {}
            for key in variables:
                if not _INPUT.match(key):
                    continue
                value = variables[key]
                if not _templated(value):
                    values[key] = value  # nothing to template: most values
                    continue
                try:
                    templar = templar or Templar(loader=self._loader, variables=variables)
                    values[key] = templar.template(value)
                except Exception as error:  # an undefined variable or a broken template
                    invalid.setdefault(name, f"{key} cannot be templated ({_message(error)}); correct it.")
            inputs[name] = values
            if validator and name not in invalid:
                errors = validator.validate({k: v for k, v in values.items() if k in spec},
                                            validate_role_argument_spec=True).error_messages
                if errors:
                    invalid[name] = spec_sentence(errors, values, {k for k, o in spec.items() if o.get("no_log")})
        webhooks = {name: str(values.get("credential_rotation_failure_webhook_url") or "")
                    for name, values in inputs.items()}
        return {"inputs": inputs, "invalid": invalid, "webhooks": {k: v for k, v in webhooks.items() if v}}

    def _apply_task_environment(self) -> None:
        """The task's ``environment:`` (KUBECONFIG, K8S_AUTH_*, proxies) for the lookups, as modules get it.

        Lookups run in this worker process, which Ansible forks for this task alone, so setting its
        environment affects nothing else.
        """
        for entry in self._task.environment or []:
            values = self._templar.template(entry)
            if isinstance(values, dict):
                os.environ.update({str(k): str(v) for k, v in values.items() if v is not None})
        # The kubernetes library reads KUBECONFIG when it is imported, which happened in Ansible's
        # main process (with this action, before any task environment): read it again here.
        for name in ("kubernetes.config.kube_config", "kubernetes.config"):
            loaded = sys.modules.get(name)
            if loaded is not None and hasattr(loaded, "KUBE_CONFIG_DEFAULT_LOCATION"):
                loaded.KUBE_CONFIG_DEFAULT_LOCATION = os.environ.get("KUBECONFIG", "~/.kube/config")

    @staticmethod
    def _kubeconfig_of(cluster: dict) -> str:
        """Which kubeconfig a read used, for the sentence of a read that failed."""
        path = cluster.get("kubeconfig") or os.environ.get("KUBECONFIG") or ""
        if not path:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                return "the in-cluster service account"
            path = os.path.expanduser("~/.kube/config")
        missing = [p for p in path.split(os.pathsep) if p and not os.path.exists(os.path.expanduser(p))]
        return f"{path}, which does not exist" if missing and len(missing) == len(path.split(os.pathsep)) else path

    # -- kubernetes, through kubernetes.core -----------------------------------------------------

    def _get(self, cluster: dict, kind: str, namespace: str, name: str | None = None,
             api_version: str = "v1", versions: dict | None = None) -> tuple[Any, str]:
        """(object, list of objects or None when absent; error sentence or '')."""
        try:
            found = k8s.read(cluster, kind, api_version, namespace, name, versions)
        except Exception as error:
            return None, _message(error)
        if name:
            return found, ""
        return found or [], ""

    def _read(self, run: dict) -> dict:
        reads: dict[str, dict] = {}
        waiting: dict[str, float] = {}
        now = time.time()
        for request in rules.read_requests(run):
            reads[request["host"]] = self._read_one(request)
            secret = reads[request["host"]].get("secret") or {}
            ann = (secret.get("metadata") or {}).get("annotations") or {}
            if not run.get("check_mode") and rules.lock_held_by_other(ann, run["run_id"], now):
                waiting[request["host"]] = now
        services = run.get("services") or {}
        if waiting:
            longest = max(services[h]["cfg"]["lock_wait"] for h in waiting)
            display.display(f"waiting up to {longest} s for the rotation locks other runs hold on "
                            f"{len(waiting)} service(s): they lapse within a minute once their holder is gone")
        last_note = time.time()
        while waiting:
            delay = min(services[h]["cfg"]["poll_interval"] for h in waiting)
            time.sleep(delay)
            now = time.time()
            for request in rules.read_requests(run):
                host = request["host"]
                if host not in waiting:
                    continue
                fresh = self._read_one(request)
                secret = fresh.get("secret") or {}
                ann = (secret.get("metadata") or {}).get("annotations") or {}
                held = rules.lock_held_by_other(ann, run["run_id"], now)
                if not held or now - waiting[host] >= services[host]["cfg"]["lock_wait"]:
                    fresh["lock_waited"] = now - waiting[host]
                    reads[host] = fresh
                    del waiting[host]
            if waiting and now - last_note >= self._every:
                display.display(f"still waiting for the rotation locks of {', '.join(sorted(waiting))}")
                last_note = now
        return reads

    def _read_one(self, request: dict) -> dict:
        """The Secret, and its companion when the Secret records a rotation (one GET in the common case)."""
        cluster, ns = request["cluster"], request["namespace"]
        secret, error = self._get(cluster, "Secret", ns, request["secret"])
        out: dict[str, Any] = {"secret": secret, "secret_error": error}
        if error:
            out["kubeconfig"] = self._kubeconfig_of(cluster)
        if error or not secret:
            return out
        if ((secret.get("metadata") or {}).get("annotations") or {}).get(rules.PHASE):
            out["companion"], out["companion_error"] = self._get(cluster, "Secret", ns, request["state_secret"])
        return out

    def _check_one(self, request: dict) -> dict:
        """What a service that will change something must have: its workloads (and companion)."""
        cluster, ns = request["cluster"], request["namespace"]
        out: dict[str, Any] = {"workloads": []}
        if request["companion"]:
            out["companion"], out["companion_error"] = self._get(cluster, "Secret", ns, request["state_secret"])
        if request.get("auto"):  # credential_rotation_workloads: auto
            listed: dict[str, list] = {}
            for kind, api_version in rules.KINDS.items():
                listed[kind], error = self._get(cluster, kind, ns, None, api_version)
                if error:
                    out["list_error"] = f"{kind}: {error}"
                    return out
            out["workloads"] = rules.found_workloads(request, listed)
            return out
        for w in request["workloads"]:
            obj, w_error = self._get(cluster, w["kind"], ns, w["name"], rules.KINDS[w["kind"]])
            out["workloads"].append({**w, "object": obj, "error": w_error})
        return out

    # -- the lock, kept alive while this run waits -------------------------------------------------

    def _renew(self, run: dict, hosts: list[str], verdicts: dict[str, dict]) -> None:
        services = run["services"]
        for cluster, group in rules.clusters_of([services[h] for h in hosts]):
            now = time.time()
            definitions = [rules.secret_patch(svc, {}, None, run["run_id"], now) for svc in group]
            answer = k8s.write(definitions, cluster, "patched", ["data", "metadata.managedFields"])
            entries = rules._answers(answer, len(group))
            for svc, entry in zip(group, entries, strict=False):
                metadata = ((entry or {}).get("result") or {}).get("metadata")
                if metadata:
                    svc["rv"] = metadata.get("resourceVersion", svc["rv"])
                    verdicts.setdefault(svc["host"], {})["rv"] = svc["rv"]
                elif rules._k8s_error(entry or {})[0] == "Conflict":
                    verdicts[svc["host"]] = {"state": "failed", "phase": "lock", "why": "conflict", "conflict": True}

    def _poll(self, run: dict, hosts: list[str], judge, what: str) -> dict[str, dict]:
        """Poll ``judge(host, now)`` for every host until none is waiting; renew the locks meanwhile."""
        services = run["services"]
        verdicts: dict[str, dict] = {}
        waiting = list(hosts)
        started = time.time()
        last_renew, last_note, last_text = started, 0.0, ""
        while waiting:
            now = time.time()
            for host in list(waiting):
                verdict = judge(host, now, started)
                if verdict["state"] != "waiting":
                    verdicts[host] = {**verdicts.get(host, {}), **verdict}
                    verdicts[host].pop("pods", None)  # what the last waiting round waited for
                    waiting.remove(host)
                else:
                    verdicts.setdefault(host, {}).update(verdict)
            if not waiting:
                break
            text = "; ".join(f"{services[h]['service']}: {verdicts[h]['why']}" for h in waiting[:5])
            if now - last_note >= self._every or (text != last_text and now - last_note >= 3):
                more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
                display.display(f"{what} ({int(now - started)} s): {text}{more}")
                last_note, last_text = now, text
            lock = min(services[h]["cfg"]["lock_duration"] for h in waiting)
            if now - last_renew >= lock / 3:
                self._renew(run, waiting, verdicts)
                waiting = [h for h in waiting if not verdicts.get(h, {}).get("conflict")]
                last_renew = time.time()
            if waiting:  # a poll every poll_interval, however long a round of reads took
                interval = min(services[h]["cfg"]["poll_interval"] for h in waiting)
                left = max(0.2, interval - (time.time() - now))
                # Waiting only for old pods to go: a watch of their namespace ends the sleep when one
                # of them changes (goes, or ends), instead of up to a whole interval later. At most a
                # few watches, well within the client's connection pool; a change starts a round.
                watches = [(*self._drains[h], verdicts[h].get("pods") or []) for h in waiting
                           if verdicts[h].get("phase") == "drain" and h in self._drains][:_WATCHES]
                if watches and k8s.wait_for_change(watches, left):
                    time.sleep(0.05)  # a burst of changes (several pods going at once) is one round
                else:
                    time.sleep(0 if watches else left)
        return verdicts

    # -- the waits --------------------------------------------------------------------------------

    def _wait_workloads(self, run: dict, step: str) -> dict[str, dict]:
        requests = {r["host"]: r for r in rules.wait_requests(run, step)}
        services = run["services"]
        unlisted: dict[str, set] = {}
        restarted: dict[str, list] = {}

        def judge(host: str, now: float, started: float) -> dict:
            verdict = judge_once(host, now, started)
            unlisted.setdefault(host, set()).update(verdict.get("unlisted") or [])
            if unlisted[host]:
                verdict["unlisted"] = sorted(unlisted[host])
            if restarted.get(host):
                verdict["reloader_missed"] = restarted[host]
            return verdict

        def judge_once(host: str, now: float, started: float) -> dict:
            request = requests[host]
            objects, pods = [], []
            if request["strategy"] == "restart":
                for w in request["workloads"]:
                    obj, error = self._get(request["cluster"], w["kind"], request["namespace"], w["name"],
                                           rules.KINDS[w["kind"]])
                    if error:
                        return {"state": "waiting" if now - started < request["rollout_timeout"] else "failed",
                                "phase": "rollout", "why": f"{w['kind']} {w['name']} could not be read ({error})"}
                    objects.append(obj)
                versions: dict = {}
                pods, error = self._get(request["cluster"], "Pod", request["namespace"], versions=versions)
                if versions.get(("Pod", request["namespace"])):
                    self._drains[host] = (request["cluster"], "Pod", "v1", request["namespace"],
                                          versions[("Pod", request["namespace"])])
                if error:
                    pods = [{"metadata": {"name": f"(pods could not be listed: {error})", "deletionTimestamp": "?"},
                             "spec": {"volumes": [{"secret": {"secretName": services[host]["secret"]}}]}}]
                for w in rules.reloader_missed(services[host], request, objects, pods, now):
                    failed = self._restart(request, w)
                    w["restarted"] = True
                    if failed:
                        return {"state": "failed", "phase": "rollout",
                                "why": f"{w['kind']} {request['namespace']}/{w['name']} could not be restarted "
                                       f"({failed})",
                                "sentence": f"Could not restart {w['kind']} {request['namespace']}/{w['name']} "
                                            f"({failed}), which no Reloader-style controller restarted either."}
                    restarted.setdefault(host, []).append(f"{w['kind']} {request['namespace']}/{w['name']}")
                    display.display(f"{services[host]['service']}: no rollout of {w['kind']} {w['name']} started "
                                    f"within {request['reloader_grace']} s of the Secret's change, although it is "
                                    "annotated for Reloader; restarting it")
            return rules.judge_workloads(request, services[host], objects, pods, now, started)

        what = "waiting for the rollback's rollouts" if step == "rb_wait" else "waiting for the rollouts"
        return self._poll(run, list(requests), judge, what)

    def _restart(self, request: dict, workload: dict) -> str:
        """Restart one workload as the restart step does (the Secret's marker); '' or why it failed."""
        definition = rules.restart_definition(request["namespace"], workload, request["restart_marker"])
        entry = rules._answers(k8s.write([definition], request["cluster"]), 1)[0]
        return "" if ((entry or {}).get("result") or {}).get("metadata") else rules._k8s_error(entry or {})[1]

    def _wait_usage(self, run: dict) -> dict[str, dict]:
        services = run["services"]
        hosts = [svc["host"] for svc in rules.due(run, "usage") if svc["cfg"]["verify_usage"]]
        if not hosts:
            return {}
        seen: dict[str, dict] = {}
        polled = {"at": 0.0}

        def judge(host: str, now: float, started: float) -> dict:
            svc = services[host]
            if polled["at"] < now - 0.5:
                ids = [services[h]["current_id"] for h in hosts]
                answer = platform.call("system_user_info", {"id": ids, **self._connection_args})
                polled["at"] = now
                seen.clear()
                seen.update({u.get("id"): u for u in answer.get("system_users") or []})
                if answer.get("failed"):
                    seen["__error__"] = {"msg": answer.get("msg", "")}
            user = seen.get(svc["current_id"])
            if user is not None and "last_used_at" not in user:
                return {"state": "skipped", "why": "the platform does not report when a credential was last used, "
                                                   "so the rollout and the verification stood for the usage check"}
            if user is not None and not rules.usage_unused(svc, user):
                return {"state": "done", "why": "the platform saw the new credential in use"}
            if now - started >= svc["cfg"]["usage_timeout"]:
                return {"state": "failed", "why": (seen.get("__error__") or {}).get("msg") or "not used"}
            return {"state": "waiting", "why": "no request with the new credential yet"}

        return self._poll(run, hosts, judge, "waiting until the workloads use the new credentials")

    def _wait_health(self, run: dict) -> dict[str, dict]:
        requests = {r["host"]: r for r in rules.health_requests(run)}
        if not requests:
            return {}

        def judge(host: str, now: float, started: float) -> dict:
            request = requests[host]
            answer = self._execute_module(
                module_name="ansible.builtin.uri",
                module_args={"url": request["url"], "method": "GET", "status_code": request["status"],
                             "validate_certs": request["validate_certs"], "timeout": 10},
                task_vars=self._vars)
            status = int(answer.get("status") or -1)
            if status in request["status"]:
                return {"state": "done", "status": status, "why": f"HTTP {status}"}
            if now - started >= request["timeout"]:
                return {"state": "failed", "status": status, "why": f"HTTP {status}"}
            return {"state": "waiting", "status": status, "why": f"health URL answered HTTP {status}"}

        return self._poll(run, list(requests), judge, "waiting for the health URLs")

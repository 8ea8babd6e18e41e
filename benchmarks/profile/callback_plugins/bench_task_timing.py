"""Per-task wall time for the benchmarks: which tasks of the role the time goes to.

Enabled by benchmarks/run.py for the collection's runs (ANSIBLE_CALLBACKS_ENABLED=bench_task_timing);
writes a JSON list of {task, action, host, seconds, status} to $BENCH_TASK_TIMING_FILE. It sees
task names and timings only, never results, so nothing a task returns (a token) can reach the file.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: bench_task_timing
    type: aggregate
    short_description: per-task timings for the xapi.system_auth benchmarks
    description:
      - Writes the wall time of every task on every host to the file named by BENCH_TASK_TIMING_FILE.
    requirements:
      - enabled with ANSIBLE_CALLBACKS_ENABLED=bench_task_timing
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_task_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._started: dict[tuple[str, str], float] = {}
        self._records: list[dict[str, Any]] = []
        self._t0 = time.monotonic()

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._started[(host.get_name(), task._uuid)] = time.monotonic()

    def _done(self, result: Any, status: str) -> None:
        host, task = result._host.get_name(), result._task
        started = self._started.pop((host, task._uuid), None)
        if started is None:
            return
        self._records.append({"task": task.get_name(), "action": task.action, "host": host, "status": status,
                              "start": round(started - self._t0, 3), "seconds": round(time.monotonic() - started, 3)})

    def v2_runner_on_ok(self, result: Any) -> None:
        self._done(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._done(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._done(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._done(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        path = os.environ.get("BENCH_TASK_TIMING_FILE")
        if path:
            with open(path, "w") as handle:
                json.dump(self._records, handle)

"""Counts Ansible module processes for the benchmarks (module processes per rotation).

benchmarks/run.py puts this directory on PYTHONPATH of the playbook contenders (the collection
and the plain playbook) with BENCH_MODULE_LOG set. Every Python process of the run imports it at
start-up; a module process (an AnsiballZ payload, which runs in the process the controller
started) appends one JSON line at exit: its module's name and how long the process lived. Other
Python processes (ansible-playbook itself) write nothing. It sees names and times only, never a
module's arguments or results.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import time

_LOG = os.environ.get("BENCH_MODULE_LOG")
_STARTED = time.monotonic()
_PAYLOAD = re.compile(r"ansible_(.+)_payload\.zip$")


def _module_name() -> str | None:
    for entry in sys.path:
        found = _PAYLOAD.search(os.path.basename(entry))
        if found:
            return found.group(1)
    return None


def _record() -> None:
    name = _module_name()
    if name is None or not _LOG:
        return
    line = json.dumps({"module": name, "pid": os.getpid(), "seconds": round(time.monotonic() - _STARTED, 3)})
    try:
        # One short O_APPEND write per process: lines of concurrent modules do not interleave.
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass


if _LOG:
    atexit.register(_record)

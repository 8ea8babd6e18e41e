"""Runs a platform module the way the credential_rotation role does, in the caller's process.

``python -m tests.unit.in_process`` reads ``{"module", "args", "check", "diff"}`` as JSON on stdin
and prints what ``plugins/plugin_utils/_platform_call.call`` answers, so that a test can run the
same case through a module process and through the role's in-process call and compare them, each in
an environment of its own.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from ansible_collections.xapi.system_auth.plugins.plugin_utils._platform_call import call

    request = json.load(sys.stdin)
    answer = call(request["module"], request.get("args") or {}, bool(request.get("check")),
                  bool(request.get("diff")))
    print(json.dumps(answer))
    sys.exit(1 if answer.get("failed") else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# `make bench`: the collection against the reference document's shell script (one service after the
# other, and every service at once with xargs -P) and a plain playbook of its steps (docs/benchmarks.md).
# Writes benchmarks/results.md and benchmarks/results.json; logs of each run under benchmarks/out/.
# Extra arguments go to the runner, e.g. `bash hack/bench.sh --scenarios single --single-reps 3`, or a
# smoke-sized run that leaves the committed results alone: `bash hack/bench.sh --scenarios single,fleet
# --single-reps 1 --fleet-reps 1 --fleet-size 2 --json /tmp/bench.json --markdown /tmp/bench.md`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "bench: .venv is missing; run 'bash hack/bootstrap.sh' (or make venv) first." >&2; exit 2; }
for tool in curl jq xargs; do
  command -v "$tool" >/dev/null || { echo "bench: the shell contenders need $tool; install it (apt-get install $tool)." >&2; exit 2; }
done
# The shell contender's kubectl: Debian's kubernetes-client, unpacked under .cache/.
kubectl=$(bash hack/get-kubectl-1.20.sh)
# The harness's sandboxes stop by themselves once the runner is gone (Ctrl-C, a kill -9, a timeout).
export XAPI_SANDBOX_OWNER_PID=parent
exec .venv/bin/python -m benchmarks.run --kubectl "$kubectl" "$@"

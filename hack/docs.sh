#!/usr/bin/env bash
# Builds the documentation site into docs/build/html, offline, with Sphinx warnings as errors.
#
#   1. antsibull-docs lint-collection-docs: the plugin/role docs and the guide (docs/docsite/) are
#      valid, with references that resolve inside this collection.
#   2. antsibull-docs collection: RST pages for every module and the role, from their own
#      DOCUMENTATION / argument_specs, plus the guide listed in docs/docsite/extra-docs.yml.
#   3. sphinx-build -W with docs/site/conf.py (no intersphinx: nothing is fetched).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv/bin
[ -x "$venv/antsibull-docs" ] || { echo "docs: .venv is missing; run 'bash hack/bootstrap.sh' first." >&2; exit 2; }
# antsibull-docs runs ansible-doc and ansible-galaxy from PATH; .collections holds this
# collection (as a link to the working tree) and kubernetes.core.
export PATH=$venv:$PATH
export ANSIBLE_COLLECTIONS_PATH=$root/.collections
unset ANSIBLE_CONFIG

echo "== antsibull-docs lint-collection-docs"
antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs self \
  --disallow-unknown-collection-refs --check-extra-docs-refs .

work=$(mktemp -d "${TMPDIR:-/tmp}/xapi-docs.XXXXXX")
trap 'rm -rf "$work"' EXIT
# antsibull-docs refuses a destination that others may write to.
chmod 700 "$work"
cp docs/site/conf.py docs/site/antsibull-docs.cfg "$work/"
mkdir -m 700 "$work/rst"

echo "== antsibull-docs collection"
antsibull-docs --config-file "$work/antsibull-docs.cfg" collection --fail-on-error --use-current \
  --squash-hierarchy --dest-dir "$work/rst" xapi.system_auth
cp docs/site/rst/*.rst "$work/rst/"

echo "== sphinx-build"
rm -rf docs/build/html docs/build/doctrees
mkdir -p docs/build
sphinx-build -b html -W --keep-going -n -q -c "$work" -d docs/build/doctrees "$work/rst" docs/build/html
echo "docs: built docs/build/html/index.html"

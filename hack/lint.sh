#!/usr/bin/env bash
# Lint gate: ruff over the Python, ansible-lint (production profile) over the Ansible content,
# antsibull-changelog lint over the changelog fragments. Offline: nothing here talks to Galaxy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv/bin
[ -x "$venv/ruff" ] || { echo "lint: .venv is missing; run 'bash hack/bootstrap.sh' first." >&2; exit 2; }

failed=()

echo "== ruff check (plugins tests hack benchmarks)"
py_paths=()
for p in plugins tests hack benchmarks; do [ -d "$p" ] && py_paths+=("$p"); done
"$venv/ruff" check --no-cache --config ruff.toml "${py_paths[@]}" || failed+=(ruff)

echo "== ansible-lint --profile production (roles playbooks extensions)"
yaml_paths=()
for p in roles playbooks extensions molecule; do
  # An empty directory is not Ansible content; ansible-lint would lint the whole tree instead.
  [ -d "$p" ] && [ -n "$(find "$p" -name '*.yml' -print -quit)" ] && yaml_paths+=("$p")
done
if [ ${#yaml_paths[@]} -gt 0 ]; then
  # .collections holds kubernetes.core, awx.awx and this collection (as a link), so
  # module names resolve without installing anything.
  ANSIBLE_COLLECTIONS_PATH=$root/.collections ANSIBLE_ROLES_PATH=$root/roles PATH=$venv:$PATH \
    "$venv/ansible-lint" --offline --profile production --nocolor "${yaml_paths[@]}" || failed+=(ansible-lint)
else
  echo "(no Ansible content yet)"
fi

echo "== antsibull-changelog lint"
"$venv/antsibull-changelog" lint || failed+=(antsibull-changelog)

if [ ${#failed[@]} -gt 0 ]; then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all clean"

#!/usr/bin/env bash
# Runs playbooks/rotate.yml unattended, for cron. The crontab line (the reference procedure's
# schedule, every day at 02:00):
#
#   0 2 * * * /opt/xapi-system-auth/hack/cron-rotate.sh
#
# - Secrets come from an env file readable only by its owner (XAPI_ROTATE_ENV_FILE, default
#   /etc/xapi-rotation/env) holding `export XAPI_URL=... XAPI_ADMIN_TOKEN=... KUBECONFIG=...`;
#   never from the crontab, where `ps` and cron mail would show them.
# - Every line of output goes to XAPI_ROTATE_LOG (default /var/log/xapi-credential-rotation.log)
#   with a UTC timestamp; ansible-playbook's own output carries no token (no_log).
# - flock keeps a slow run and the next day's from overlapping: the second one exits 75.
# - The exit status is ansible-playbook's, so cron mail or a monitor notices a failure; a
#   failure also prints one line on stderr, which cron mails.
#
# Extra arguments are passed to ansible-playbook (e.g. --limit svc-a, -e credential_rotation_force=true).
set -uo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
env_file=${XAPI_ROTATE_ENV_FILE:-/etc/xapi-rotation/env}
log_file=${XAPI_ROTATE_LOG:-/var/log/xapi-credential-rotation.log}
lock_file=${XAPI_ROTATE_LOCK:-${XDG_RUNTIME_DIR:-/tmp}/xapi-credential-rotation.lock}
playbook=${XAPI_ROTATE_PLAYBOOK:-$here/playbooks/rotate.yml}
ansible_playbook=${XAPI_ANSIBLE_PLAYBOOK:-}
if [ -z "$ansible_playbook" ]; then
  if [ -x "$here/.venv/bin/ansible-playbook" ]; then
    ansible_playbook=$here/.venv/bin/ansible-playbook
  else
    ansible_playbook=$(command -v ansible-playbook || true)
  fi
fi

stamp() {
  while IFS= read -r line; do
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$line"
  done
}

fail() {
  echo "cron-rotate: $1" | stamp >>"$log_file" 2>/dev/null
  echo "cron-rotate: $1" >&2
  exit "${2:-1}"
}

mkdir -p "$(dirname "$log_file")" 2>/dev/null
touch "$log_file" 2>/dev/null || { echo "cron-rotate: cannot write the log file $log_file; set XAPI_ROTATE_LOG to a writable path." >&2; exit 1; }
[ -n "$ansible_playbook" ] && [ -x "$ansible_playbook" ] || fail "ansible-playbook not found; set XAPI_ANSIBLE_PLAYBOOK to its path."
[ -f "$playbook" ] || fail "playbook $playbook not found; set XAPI_ROTATE_PLAYBOOK."

if [ -e "$env_file" ]; then
  # A world-readable file of secrets is a leak waiting to happen: refuse it.
  perms=$(stat -c %a "$env_file")
  case $perms in
    *00) ;;
    *) fail "$env_file is readable by others (mode $perms); run: chmod 600 $env_file" ;;
  esac
  # shellcheck disable=SC1090
  . "$env_file"
fi
[ -n "${XAPI_URL:-}" ] || fail "XAPI_URL is not set; put it in $env_file (or set XAPI_ROTATE_ENV_FILE)."
[ -n "${XAPI_ADMIN_TOKEN:-}${XAPI_TOKEN:-}" ] || fail "XAPI_ADMIN_TOKEN is not set; put it in $env_file (or set XAPI_ROTATE_ENV_FILE)."

exec 9>"$lock_file" || fail "cannot open the lock file $lock_file; set XAPI_ROTATE_LOCK."
if ! flock -n 9; then
  fail "another rotation is still running (lock $lock_file held); this run is skipped." 75
fi

cd "$here" || fail "cannot enter $here"
echo "cron-rotate: start $playbook $*" | stamp >>"$log_file"
start=$(date +%s)
ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 "$ansible_playbook" "$playbook" "$@" 2>&1 | stamp >>"$log_file"
rc=${PIPESTATUS[0]}
echo "cron-rotate: end rc=$rc after $(( $(date +%s) - start ))s" | stamp >>"$log_file"
if [ "$rc" -ne 0 ]; then
  echo "cron-rotate: rotation FAILED (exit $rc); see $log_file" >&2
fi
exit "$rc"

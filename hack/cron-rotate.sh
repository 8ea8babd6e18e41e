#!/usr/bin/env bash
# Runs the xapi.system_auth.rotate playbook unattended, for cron, from the installed collection
# this script belongs to (ansible_collections/xapi/system_auth/hack/cron-rotate.sh). The crontab
# line (the reference procedure's schedule, every day at 02:00), for a collection installed with
# `ansible-galaxy collection install xapi.system_auth` by the user whose crontab it is:
#
#   0 2 * * * $HOME/.ansible/collections/ansible_collections/xapi/system_auth/hack/cron-rotate.sh --env-file $HOME/.config/xapi-rotation/env -i $HOME/.config/xapi-rotation/inventory.yml --log $HOME/.local/state/xapi-rotation.log
#
# (`ansible-galaxy collection list xapi.system_auth` shows where it is installed.)
#
# Usage: cron-rotate.sh [--env-file FILE] -i INVENTORY [-i INVENTORY...] [--log FILE] [--lock FILE]
#                       [--ansible-playbook PATH] [--collections-path PATHS] [--playbook NAME|FILE]
#                       [--] [more ansible-playbook arguments, e.g. --limit svc-a -e credential_rotation_force=true]
#
# Works under cron's minimal environment (PATH=/usr/bin:/bin, HOME, SHELL=/bin/sh, nothing else):
# - Connection settings and secrets come from the env file (--env-file, XAPI_ROTATE_ENV_FILE,
#   default /etc/xapi-rotation/env), readable by its owner only (mode 600), of NAME=value lines
#   (`export` optional): XAPI_URL, XAPI_ADMIN_TOKEN, KUBECONFIG, optionally XAPI_CA_PATH and
#   XAPI_FAILURE_WEBHOOK_URL; never the crontab, where `ps` and cron mail would show them. It may
#   also set the wrapper's own settings: XAPI_ROTATE_INVENTORY (colon-separated), XAPI_ROTATE_LOG,
#   XAPI_ROTATE_LOCK, XAPI_ANSIBLE_PLAYBOOK, XAPI_ROTATE_PLAYBOOK, ANSIBLE_COLLECTIONS_PATH.
#   A command-line option wins over the env file, which wins over the environment.
# - The inventory is required: without one ansible-playbook would rotate nothing.
# - ansible-playbook: --ansible-playbook / XAPI_ANSIBLE_PLAYBOOK, else the one in PATH, else
#   ~/.local/bin/ansible-playbook (pip install --user).
# - Collections: the ansible_collections root this script is installed in comes first, then
#   ANSIBLE_COLLECTIONS_PATH if set, else Ansible's defaults (~/.ansible/collections and
#   /usr/share/ansible/collections), where kubernetes.core is found.
# - Every line of output goes to the log (--log, XAPI_ROTATE_LOG, default
#   /var/log/xapi-credential-rotation.log for root, else ~/.local/state/xapi-credential-rotation.log)
#   with a UTC timestamp; ansible-playbook's own output carries no token (no_log).
# - flock keeps a slow run and the next day's from overlapping: the second one exits 75
#   (--lock, XAPI_ROTATE_LOCK, default: the log file's path + .lock).
# - The exit status is ansible-playbook's, so cron mail or a monitor notices a failure; a
#   failure (or a refusal to start) also prints one line on stderr, which cron mails.
set -uo pipefail

usage="usage: cron-rotate.sh [--env-file FILE] -i INVENTORY [--log FILE] [--lock FILE] [--ansible-playbook PATH] [--collections-path PATHS] [--playbook NAME|FILE] [-- ansible-playbook args]"
cli_env_file='' cli_log='' cli_lock='' cli_ansible_playbook='' cli_collections='' cli_playbook=''
cli_inventories=()
passthrough=()
need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || { echo "cron-rotate: $1 needs a value; $usage" >&2; exit 64; }; }
while [ "$#" -gt 0 ]; do
  case $1 in
    --env-file) need_value "$@"; cli_env_file=$2; shift 2 ;;
    --env-file=*) cli_env_file=${1#*=}; shift ;;
    -i|--inventory|--inventory-file) need_value "$@"; cli_inventories+=("$2"); shift 2 ;;
    --inventory=*) cli_inventories+=("${1#*=}"); shift ;;
    --log) need_value "$@"; cli_log=$2; shift 2 ;;
    --log=*) cli_log=${1#*=}; shift ;;
    --lock) need_value "$@"; cli_lock=$2; shift 2 ;;
    --lock=*) cli_lock=${1#*=}; shift ;;
    --ansible-playbook) need_value "$@"; cli_ansible_playbook=$2; shift 2 ;;
    --ansible-playbook=*) cli_ansible_playbook=${1#*=}; shift ;;
    --collections-path) need_value "$@"; cli_collections=$2; shift 2 ;;
    --collections-path=*) cli_collections=${1#*=}; shift ;;
    --playbook) need_value "$@"; cli_playbook=$2; shift 2 ;;
    --playbook=*) cli_playbook=${1#*=}; shift ;;
    -h|--help) sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; passthrough+=("$@"); break ;;
    *) passthrough+=("$1"); shift ;;
  esac
done

home=${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}
# The collection this script belongs to, and the ansible_collections root it is installed in.
self=$(readlink -f "$0")
collection=$(cd "$(dirname "$self")/.." && pwd -P)
case $collection in
  */ansible_collections/xapi/system_auth) own_root=${collection%/ansible_collections/xapi/system_auth} ;;
  *) own_root=''
     # A checkout of the repository: its .collections holds the collection and kubernetes.core.
     [ -d "$collection/.collections/ansible_collections/xapi/system_auth" ] && own_root=$collection/.collections ;;
esac

stamp() {
  while IFS= read -r line; do
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$line"
  done
}

log_file=''
fail() {
  [ -n "$log_file" ] && echo "cron-rotate: $1" | stamp >>"$log_file" 2>/dev/null
  echo "cron-rotate: $1" >&2
  exit "${2:-1}"
}

# Until the env file is read, a refusal goes to the log the command line or environment names.
log_file=${cli_log:-${XAPI_ROTATE_LOG:-}}
if [ -n "$log_file" ]; then
  mkdir -p "$(dirname "$log_file")" 2>/dev/null
  touch "$log_file" 2>/dev/null || log_file=''
fi

env_file=${cli_env_file:-${XAPI_ROTATE_ENV_FILE:-/etc/xapi-rotation/env}}
if [ -e "$env_file" ]; then
  [ -f "$env_file" ] && [ -r "$env_file" ] || fail "cannot read the env file $env_file."
  # A file of secrets readable by others is a leak waiting to happen: refuse it.
  perms=$(stat -c %a "$env_file")
  case $perms in
    *00) ;;
    *) fail "$env_file is readable by others (mode $perms); run: chmod 600 $env_file" ;;
  esac
  # set -a: plain NAME=value lines reach ansible-playbook as well as `export` ones.
  set -a
  # shellcheck disable=SC1090
  . "$env_file" || { set +a; fail "the env file $env_file has an error (see above)."; }
  set +a
elif [ -n "$cli_env_file" ]; then
  fail "the env file $env_file does not exist."
fi

if [ -n "$cli_log" ]; then
  log_file=$cli_log
elif [ -n "${XAPI_ROTATE_LOG:-}" ]; then
  log_file=$XAPI_ROTATE_LOG
elif [ "$(id -u)" -eq 0 ]; then
  log_file=/var/log/xapi-credential-rotation.log
else
  log_file=${XDG_STATE_HOME:-$home/.local/state}/xapi-credential-rotation.log
fi
mkdir -p "$(dirname "$log_file")" 2>/dev/null
if ! touch "$log_file" 2>/dev/null; then
  log_file=''
  fail "cannot write the log file ${cli_log:-${XAPI_ROTATE_LOG:-its default path}}; pass --log FILE or set XAPI_ROTATE_LOG to a writable path."
fi
lock_file=${cli_lock:-${XAPI_ROTATE_LOCK:-$log_file.lock}}

ansible_playbook=${cli_ansible_playbook:-${XAPI_ANSIBLE_PLAYBOOK:-}}
if [ -z "$ansible_playbook" ]; then
  ansible_playbook=$(command -v ansible-playbook || true)
  for candidate in "$home/.local/bin/ansible-playbook" "$collection/.venv/bin/ansible-playbook"; do
    [ -z "$ansible_playbook" ] && [ -x "$candidate" ] && ansible_playbook=$candidate
  done
fi
[ -n "$ansible_playbook" ] && [ -x "$ansible_playbook" ] && [ -f "$ansible_playbook" ] \
  || fail "ansible-playbook not found (PATH is $PATH); set XAPI_ANSIBLE_PLAYBOOK in the env file or pass --ansible-playbook PATH."

playbook=${cli_playbook:-${XAPI_ROTATE_PLAYBOOK:-xapi.system_auth.rotate}}
case $playbook in
  */*|*.yml|*.yaml) [ -f "$playbook" ] || fail "playbook $playbook not found; set XAPI_ROTATE_PLAYBOOK or pass --playbook." ;;
  xapi.system_auth.*)
    [ -f "$collection/playbooks/${playbook#xapi.system_auth.}.yml" ] \
      || fail "playbook $playbook not found in $collection; set XAPI_ROTATE_PLAYBOOK or pass --playbook." ;;
esac

if [ -n "$cli_collections" ]; then
  collections_path=$cli_collections
else
  [ -n "$own_root" ] || [ -n "${ANSIBLE_COLLECTIONS_PATH:-}" ] \
    || fail "$collection is not inside an ansible_collections directory; set ANSIBLE_COLLECTIONS_PATH or pass --collections-path."
  collections_path=${ANSIBLE_COLLECTIONS_PATH:-$home/.ansible/collections:/usr/share/ansible/collections}
  [ -n "$own_root" ] && collections_path=$own_root:$collections_path
fi

inventories=("${cli_inventories[@]}")
if [ "${#inventories[@]}" -eq 0 ] && [ -n "${XAPI_ROTATE_INVENTORY:-}" ]; then
  IFS=: read -r -a inventories <<<"$XAPI_ROTATE_INVENTORY"
fi
[ "${#inventories[@]}" -gt 0 ] \
  || fail "no inventory given; pass -i /path/to/inventory.yml or set XAPI_ROTATE_INVENTORY in the env file."
inventory_args=()
for inventory in "${inventories[@]}"; do
  case $inventory in
    *,*) ;;  # a host list, not a path
    *) [ -e "$inventory" ] || fail "inventory $inventory not found; pass -i with the path of the services' inventory." ;;
  esac
  inventory_args+=(-i "$inventory")
done

[ -n "${XAPI_URL:-}" ] || fail "XAPI_URL is not set; put it in $env_file (or pass --env-file)."
[ -n "${XAPI_ADMIN_TOKEN:-}${XAPI_TOKEN:-}" ] || fail "XAPI_ADMIN_TOKEN is not set; put it in $env_file (or pass --env-file)."

exec 9>>"$lock_file" || fail "cannot open the lock file $lock_file; pass --lock FILE or set XAPI_ROTATE_LOCK."
if ! flock -n 9; then
  fail "another rotation is still running (lock $lock_file held); this run is skipped." 75
fi

export ANSIBLE_COLLECTIONS_PATH=$collections_path ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
# The ansible-playbook's own directory first (a virtualenv's ansible-* tools and python).
PATH=$(dirname "$ansible_playbook"):$PATH
export PATH
{
  echo "cron-rotate: start $playbook ${inventory_args[*]} ${passthrough[*]}"
  echo "cron-rotate: collection $collection; collections path $collections_path; $ansible_playbook"
} | stamp >>"$log_file"
start=$(date +%s)
"$ansible_playbook" "$playbook" "${inventory_args[@]}" "${passthrough[@]}" 2>&1 | stamp >>"$log_file"
rc=${PIPESTATUS[0]}
echo "cron-rotate: end rc=$rc after $(( $(date +%s) - start ))s" | stamp >>"$log_file"
if [ "$rc" -ne 0 ]; then
  echo "cron-rotate: rotation FAILED (exit $rc); see $log_file" >&2
fi
exit "$rc"

#!/usr/bin/env bash
# The "parallel script" contender: the reference document's auto-rotate.sh for every service at
# once, as an operator who parallelises the cron job would run it: the per-service step of
# cron-rotate-all.sh (read the current id from the Secret, run auto-rotate.sh), handed to
# `xargs -P`. Not from the document; see CHANGES.md.
# Usage: parallel-rotate-all.sh SERVICES_FILE [PARALLEL]   (lines: namespace secret deployment service-name)
#   PARALLEL: how many services at once (default: every service of the file).
# Environment: API_URL, PLATFORM_ADMIN_TOKEN, KUBECONFIG, kubectl/curl/jq on PATH.
# Exit status: 0 when every service's run succeeded, 1 when any failed (all are attempted).
set -u
here=$(cd "$(dirname "$0")" && pwd)
parallel=${2:-$(grep -c . "$1")}
[ "$parallel" -ge 1 ] 2>/dev/null || parallel=1

rotate_one() {
  local namespace=$1 secret=$2 deployment=$3 service=$4 old_id
  old_id=$(kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.id}' | base64 -d) || old_id=""
  if ! OLD_TOKEN_ID="$old_id" NAMESPACE="$namespace" SECRET_NAME="$secret" DEPLOYMENT="$deployment" \
      SERVICE_NAME="$service" bash "$here/auto-rotate.sh"; then
    echo "rotation of $namespace/$deployment failed"
    return 1
  fi
}
export -f rotate_one
export here

# xargs exits 123 when any invocation failed; every line is still run.
if xargs -P "$parallel" -L 1 bash -c 'rotate_one "$@"' rotate_one < "$1"; then
  exit 0
fi
exit 1

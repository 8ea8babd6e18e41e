#!/usr/bin/env bash
# The shell contender for the daily check, as a cron user would run it: the reference document's
# check-token-expiry.sh once per service, with the token read from the service's Secret.
# Not from the document; see CHANGES.md.
# Usage: cron-check-all.sh SERVICES_FILE   (lines: namespace secret deployment service-name)
# Environment: API_URL, KUBECONFIG, kubectl/curl/jq on PATH.
# Exit status: 0 when nothing is due, 1 when any service is due or could not be checked.
set -u
here=$(cd "$(dirname "$0")" && pwd)
due=0
while read -r namespace secret _deployment _service; do
  [ -n "$namespace" ] || continue
  token=$(kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d) || token=""
  if ! TOKEN="$token" bash "$here/check-token-expiry.sh"; then
    echo "$namespace/$secret: rotate now"
    due=1
  fi
done < "$1"
exit "$due"

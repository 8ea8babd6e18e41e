#!/usr/bin/env bash
# The shell contender for a fleet, as a cron user would run it: the reference document's
# auto-rotate.sh once per service, one after the other. Not from the document; see CHANGES.md.
# Usage: cron-rotate-all.sh SERVICES_FILE   (lines: namespace secret deployment service-name)
# Environment: API_URL, PLATFORM_ADMIN_TOKEN, KUBECONFIG, kubectl/curl/jq on PATH.
# Exit status: 0 when every service's run succeeded, 1 when any failed (all are attempted).
set -u
here=$(cd "$(dirname "$0")" && pwd)
failed=0
while read -r namespace secret deployment service; do
  [ -n "$namespace" ] || continue
  # auto-rotate.sh writes the new id next to the token (--from-literal=id=...), so the Secret
  # is where the next run finds the id of the credential it has to check.
  old_id=$(kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.id}' | base64 -d) || old_id=""
  if ! OLD_TOKEN_ID="$old_id" NAMESPACE="$namespace" SECRET_NAME="$secret" DEPLOYMENT="$deployment" \
      SERVICE_NAME="$service" bash "$here/auto-rotate.sh"; then
    echo "rotation of $namespace/$deployment failed"
    failed=1
  fi
done < "$1"
exit "$failed"

#!/usr/bin/env bash
# `make demo`, after `python -m tests.sandbox up`: rotate the sandbox's payments-api credential with
# playbooks/rotate.yml while its pods keep calling the platform, show that no request failed, then
# run the playbook again to show that it changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1090
source "${SANDBOX_ENV:-.sandbox/env}"
export ANSIBLE_CONFIG="$PWD/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$PWD/.collections"
PY=.venv/bin/python

# Prints the workload's requests per credential: ids and status counts, never a token.
requests_report() {
  "$PY" - "$@" <<'PY'
import json, os, sys, urllib.request

def get(url, token, ca=None):
    import ssl
    ctx = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as answer:
        return json.load(answer)["data"]

state = get(os.environ["XAPI_URL"] + "/_sandbox/state", os.environ["XAPI_ADMIN_TOKEN"], os.environ.get("XAPI_CA_PATH"))
users = {u["id"]: u for u in state["system_users"]}
by_user = state["requests"]["by_user"]
failed = 0
for user_id in sys.argv[1:]:
    counts = by_user.get(user_id, {})
    failed += sum(n for status, n in counts.items() if status.startswith(("4", "5")))
    user = users.get(user_id, {})
    print(f"  {user_id} ({user.get('name', '?')}, active={user.get('active')}): "
          + (", ".join(f"HTTP {s}: {n}" for s, n in sorted(counts.items())) or "no requests"))
print(f"  failed requests of the workload: {failed}")
sys.exit(0 if failed == 0 else 3)
PY
}

secret_field() {
  "$PY" - "$1" <<'PY'
import base64, json, os, ssl, sys, urllib.request, yaml
config = yaml.safe_load(open(os.environ["KUBECONFIG"]))
cluster = config["clusters"][0]["cluster"]
token = config["users"][0]["user"]["token"]
ctx = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
req = urllib.request.Request(cluster["server"] + "/api/v1/namespaces/demo/secrets/payments-api-token",
                             headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(req, context=ctx, timeout=10) as answer:
    secret = json.load(answer)
print(base64.b64decode(secret["data"][sys.argv[1]]).decode())
PY
}

old_id=$(secret_field id)
echo "== Before: Secret demo/payments-api-token references $old_id"
echo
echo "== Rotating with ansible-playbook playbooks/rotate.yml (the pods keep calling the API meanwhile)"
.venv/bin/ansible-playbook playbooks/rotate.yml
new_id=$(secret_field id)
if [ "$old_id" = "$new_id" ]; then
  echo "demo: nothing was due, the sandbox's credential was rotated before; 'make sandbox-down' then 'make demo' starts afresh." >&2
fi
echo
echo "== After: Secret demo/payments-api-token references $new_id"
echo "== Requests the workload made with each credential (platform sandbox counters):"
if [ "$old_id" = "$new_id" ]; then
  requests_report "$old_id"
else
  requests_report "$old_id" "$new_id"
fi
echo
echo "== Second run: nothing is due any more, so nothing changes"
out=$(.venv/bin/ansible-playbook playbooks/rotate.yml)
echo "$out" | grep -E "not due|rotated|failed|changed=" || true
if echo "$out" | grep -qE "changed=[1-9]"; then
  echo "demo: the second run changed something; it should not have." >&2
  exit 1
fi
echo
if [ "$old_id" = "$new_id" ]; then
  echo "demo: nothing was due for $old_id (rotated by an earlier demo), zero failed requests; the second run changed nothing."
else
  echo "demo: rotated $old_id -> $new_id with zero failed requests; the second run changed nothing."
fi

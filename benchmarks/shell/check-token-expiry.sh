#!/usr/bin/env bash
# scripts/check-token-expiry.sh
# Benchmark copy of the reference document's "Step 1: Check Current Token Expiry" script, run
# as written with only the token, the URL and the BSD-only date call changed. CHANGES.md lists
# every changed line and why, as a diff against the document's text.
# shellcheck disable=SC2004,SC2269  # bench: the document's style, kept as written (see CHANGES.md)

TOKEN="${TOKEN}"  # bench: the document's "your-current-token"; the cron loop reads it from the service's Secret
API_URL="${API_URL:-http://localhost:8080}"  # bench: the document hard-codes http://localhost:8080

# Get token info
response=$(curl -s -X GET "$API_URL/api/v1/system-users/token-info" \
  -H "Authorization: Bearer $TOKEN")

echo "$response" | jq '.'

# Extract expiry
expiry=$(echo "$response" | jq -r '.data.expires_at')
echo "Token expires: $expiry"

# Calculate days remaining
expires_epoch=$(date -j -f "%Y-%m-%dT%H:%M:%SZ" "$expiry" +%s 2>/dev/null || date -d "$expiry" +%s)  # bench: GNU date fallback
now_epoch=$(date +%s)
days_remaining=$(( ($expires_epoch - $now_epoch) / 86400 ))

echo "Days remaining: $days_remaining"

if [ $days_remaining -lt 7 ]; then
  echo "⚠️  WARNING: Token expires soon! Rotate now."
  exit 1
fi

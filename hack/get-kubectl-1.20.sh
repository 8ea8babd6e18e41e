#!/usr/bin/env bash
# Unpacks Debian's kubernetes-client (kubectl 1.20) into .cache/kubectl-1.20/ for the
# emulator's contract tests. `apt-get install` would clash with this image's kubectl
# package, so the .deb is downloaded and extracted beside the tests instead. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$PWD/.cache/kubectl-1.20
bin=$dest/usr/bin/kubectl
if [ -x "$bin" ] && "$bin" version --client >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "get-kubectl-1.20: apt-get and dpkg are needed to fetch Debian's kubernetes-client; install kubectl 1.20 at $bin by hand." >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt's download user (_apt) must be able to write here
(
  cd "$work"
  # The package lists may be missing or stale on a fresh image: refresh them only when needed.
  apt-get download -q kubernetes-client >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get download -q kubernetes-client >/dev/null
  }
)
deb=$(ls "$work"/kubernetes-client_*.deb)
rm -rf "$dest"
mkdir -p "$dest"
dpkg -x "$deb" "$dest"
"$bin" version --client >/dev/null
echo "$bin"

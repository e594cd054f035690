#!/usr/bin/env bash
# Install the Debian packages d4fs's tests, demo and benchmark use. Idempotent:
# only missing packages are installed, and apt-get update runs at most once.
set -euo pipefail
PKGS=(containerd runc fuse3 libfuse2 libfuse3-dev zlib1g-dev umoci skopeo docker-registry zstd bsdiff xdelta3 attr apache2-utils jq iproute2 time libdivsufsort-dev openssl gcc libc6-dev curl golang-go golang-github-klauspost-compress-dev golang-github-klauspost-pgzip-dev pigz zopfli libdeflate-tools llvm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The system containerd/registry services are not used: tests start private ones.
for svc in containerd docker-registry; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then :; fi
done

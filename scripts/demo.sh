#!/usr/bin/env bash
# make demo: the main job end to end on a fresh machine. Idempotent: every
# output is rebuilt under demo-out/ (Debian package downloads are cached in .cache/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${D4FS_DEMO_DIR:-demo-out}
CLI="node dist/cli/ctr-cli.js"
rm -rf "$OUT"
mkdir -p "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. Build two versions of an nginx image from real Debian packages (OCI layouts)"
node dist/test/fixtures/build-test-images.js nginx-v1 nginx-v2 > "$OUT/images.txt"
REF1=$(awk '$1=="nginx-v1"{print $2}' "$OUT/images.txt")
REF2=$(awk '$1=="nginx-v2"{print $2}' "$OUT/images.txt")
echo "v1: $REF1"
echo "v2: $REF2"

step "2. Convert both into full delta-image files"
$CLI convert --image "$REF1" --output "$OUT/nginx-1.cdimg" --no-progress
$CLI convert --image "$REF2" --output "$OUT/nginx-2.cdimg" --no-progress

step "3. Inspect and verify"
$CLI cdimg show "$OUT/nginx-2.cdimg"
$CLI cdimg verify "$OUT/nginx-1.cdimg"
$CLI cdimg verify "$OUT/nginx-2.cdimg"

step "4. Unpack v2 with all metadata and look at it"
$CLI cdimg unpack "$OUT/nginx-2.cdimg" "$OUT/rootfs-2"
ls -l "$OUT/rootfs-2/usr/sbin/nginx" "$OUT/rootfs-2/tmp" -d
if [ "$(id -u)" -eq 0 ]; then
  echo "running the unpacked image's own nginx (chroot, its own libc and libssl):"
  chroot "$OUT/rootfs-2" /usr/sbin/nginx -v
fi

step "Done. Outputs are in $OUT/"

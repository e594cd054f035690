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

step "5. Delta: what an update from v1 to v2 costs"
$CLI cdimg diff --old "$OUT/nginx-1.cdimg" --new "$OUT/nginx-2.cdimg" --out "$OUT/nginx-1-2.cdimg" --no-progress
$CLI cdimg patch "$OUT/nginx-1.cdimg" "$OUT/nginx-1-2.cdimg" --out "$OUT/nginx-2-patched.cdimg" >/dev/null
cmp "$OUT/nginx-2-patched.cdimg" "$OUT/nginx-2.cdimg" && echo "patch(v1, delta) is byte-identical to converting v2"

step "6. A chain of three libssl versions: diff each step, merge the chain, patch it back"
node dist/test/fixtures/build-test-images.js libssl-v1 libssl-v2 libssl-v3 > "$OUT/libssl.txt"
for v in 1 2 3; do
  $CLI convert --image "$(awk -v n=libssl-v$v '$1==n{print $2}' "$OUT/libssl.txt")" --output "$OUT/libssl-$v.cdimg" --no-progress >/dev/null
done
$CLI cdimg diff --old "$OUT/libssl-1.cdimg" --new "$OUT/libssl-2.cdimg" --out "$OUT/libssl-1-2.cdimg" --no-progress >/dev/null
$CLI cdimg diff --old "$OUT/libssl-2.cdimg" --new "$OUT/libssl-3.cdimg" --out "$OUT/libssl-2-3.cdimg" --no-progress >/dev/null
$CLI cdimg merge "$OUT/libssl-1-2.cdimg" "$OUT/libssl-2-3.cdimg" --out "$OUT/libssl-1-3.cdimg"
$CLI cdimg patch "$OUT/libssl-1.cdimg" "$OUT/libssl-1-3.cdimg" --out "$OUT/libssl-3-patched.cdimg" >/dev/null
cmp "$OUT/libssl-3-patched.cdimg" "$OUT/libssl-3.cdimg" && echo "patch(v1, merge(1-2, 2-3)) is byte-identical to converting v3"

step "7. Export the patched image back to a standard OCI layout"
$CLI cdimg export "$OUT/libssl-3-patched.cdimg" --to "oci:$OUT/libssl-3-oci:3"

if [ "$(id -u)" -eq 0 ] && [ -e /dev/fuse ]; then
  node dist/scripts/demo-runtime.js "$OUT"
else
  echo "skipping the containerd part: it needs root and /dev/fuse"
fi

node dist/scripts/demo-registry.js "$OUT"

node dist/scripts/demo-fleet.js "$OUT"

step "Done. Outputs are in $OUT/"

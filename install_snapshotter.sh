#!/usr/bin/env bash
# install_snapshotter.sh — register d4fs-snapshotter with containerd.
#
#  1. adds to containerd's config (default /etc/containerd/config.toml):
#
#       [proxy_plugins.d4fs]
#         type = "snapshot"
#         address = "/run/d4fs/d4fs.sock"
#
#     unless a d4fs proxy plugin is already configured (the file is created,
#     as a version 2 config, when it does not exist);
#  2. creates the state directory (/var/lib/d4fs) and the socket directory
#     (/run/d4fs);
#  3. installs the systemd unit d4fs-snapshotter.service running the built
#     entry point (dist/snapshotter/main.js) with node, and runs
#     `systemctl daemon-reload` when the unit changed and systemd is running.
#
# Idempotent: a second run changes nothing (not even modification times).
# containerd must be restarted to load a newly added proxy plugin.
#
# Environment (all optional):
#   CONTAINERD_CONFIG  containerd config file      (/etc/containerd/config.toml)
#   D4FS_ROOT          snapshotter state directory (/var/lib/d4fs)
#   D4FS_ADDRESS       snapshotter socket          (/run/d4fs/d4fs.sock)
#   SYSTEMD_UNIT_DIR   where the unit goes         (/etc/systemd/system)
#   D4FS_ENTRY         entry point                 (<this dir>/dist/snapshotter/main.js)
#   NODE_BIN           node executable             (node found in PATH)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
config="${CONTAINERD_CONFIG:-/etc/containerd/config.toml}"
root="${D4FS_ROOT:-/var/lib/d4fs}"
address="${D4FS_ADDRESS:-/run/d4fs/d4fs.sock}"
unit_dir="${SYSTEMD_UNIT_DIR:-/etc/systemd/system}"
entry="${D4FS_ENTRY:-$here/dist/snapshotter/main.js}"
node="${NODE_BIN:-$(command -v node || true)}"
unit_name="d4fs-snapshotter.service"

log() { printf 'install_snapshotter: %s\n' "$*"; }
die() { printf 'install_snapshotter: error: %s\n' "$*" >&2; exit 1; }

[ -n "$node" ] || die "node not found in PATH (set NODE_BIN)"
node="$(readlink -f "$node")"
[ -f "$entry" ] || die "$entry not found: build first (make build) or set D4FS_ENTRY"
entry="$(readlink -f "$entry")"
case "$address" in /*) ;; *) die "D4FS_ADDRESS must be an absolute path" ;; esac
case "$root" in /*) ;; *) die "D4FS_ROOT must be an absolute path" ;; esac

# Prints the address of an existing d4fs proxy plugin in containerd config $1
# (empty line when it has none), and exits 1 when there is no d4fs plugin.
# Understands [proxy_plugins.d4fs], [proxy_plugins."d4fs"] and an inline
# table `d4fs = { ... }` inside [proxy_plugins].
find_d4fs_plugin() {
  awk '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    /^[ \t]*\[/ {
      t = $0; sub(/#.*/, "", t); t = trim(t)
      gsub(/[ \t]/, "", t); gsub(/"/, "", t); gsub(/\047/, "", t)
      table = t; in_d4fs = (table == "[proxy_plugins.d4fs]")
      if (in_d4fs) found = 1
      next
    }
    in_d4fs && /^[ \t]*address[ \t]*=/ {
      a = $0; sub(/^[^=]*=[ \t]*/, "", a); gsub(/"/, "", a); addr = trim(a)
    }
    table == "[proxy_plugins]" && /^[ \t]*"?d4fs"?[ \t]*=/ {
      found = 1
      if (match($0, /address[ \t]*=[ \t]*"[^"]*"/)) {
        a = substr($0, RSTART, RLENGTH); sub(/^[^"]*"/, "", a); sub(/"$/, "", a); addr = a
      }
    }
    END { if (!found) exit 1; print addr }
  ' "$1"
}

stanza() {
  cat <<EOF

# d4fs: delta-image snapshotter (added by install_snapshotter.sh)
[proxy_plugins.d4fs]
  type = "snapshot"
  address = "$address"
EOF
}

# Writes stdin to $1 through a temporary file in the same directory, keeping
# the mode of an existing file (default $2).
write_atomically() {
  local dest="$1" mode="$2" tmp
  tmp="$(mktemp "$(dirname "$dest")/.$(basename "$dest").XXXXXX")"
  cat >"$tmp"
  if [ -e "$dest" ]; then chmod --reference="$dest" "$tmp"; else chmod "$mode" "$tmp"; fi
  mv -f "$tmp" "$dest"
}

# --- 1. containerd config ----------------------------------------------------
config_changed=0
mkdir -p "$(dirname "$config")"
if [ ! -e "$config" ]; then
  { echo 'version = 2'; stanza; } | write_atomically "$config" 0644
  config_changed=1
  log "created $config with the d4fs proxy plugin"
elif existing="$(find_d4fs_plugin "$config")"; then
  if [ -n "$existing" ] && [ "$existing" != "$address" ]; then
    log "warning: $config already configures proxy plugin d4fs with address $existing (not $address); left unchanged"
  else
    log "$config already configures the d4fs proxy plugin; unchanged"
  fi
else
  {
    cat "$config"
    # make sure the appended stanza starts on a line of its own
    if [ -s "$config" ] && [ "$(tail -c1 "$config" | od -An -c | tr -d ' ')" != '\n' ]; then echo; fi
    stanza
  } | write_atomically "$config" 0644
  config_changed=1
  log "added the d4fs proxy plugin to $config"
fi

# --- 2. directories ----------------------------------------------------------
mkdir -p -m 0700 "$root"
mkdir -p -m 0711 "$(dirname "$address")"

# --- 3. systemd unit -----------------------------------------------------------
unit="$(cat <<EOF
[Unit]
Description=d4fs snapshotter (containerd proxy snapshotter for delta images)
Documentation=file://$here/README.md
After=local-fs.target
Before=containerd.service

[Service]
Type=simple
ExecStart=$node $entry --root $root --address $address
Restart=always
RestartSec=1
# Only the snapshotter is stopped on restart: filesystem helpers it starts
# keep serving the files under running containers.
KillMode=process
LimitNOFILE=1048576
OOMScoreAdjust=-500

[Install]
WantedBy=multi-user.target
EOF
)"
unit_changed=0
mkdir -p "$unit_dir"
if [ -f "$unit_dir/$unit_name" ] && [ "$(cat "$unit_dir/$unit_name")" = "$unit" ]; then
  log "$unit_dir/$unit_name is up to date"
else
  printf '%s\n' "$unit" | write_atomically "$unit_dir/$unit_name" 0644
  unit_changed=1
  log "installed $unit_dir/$unit_name"
fi

if [ "$unit_changed" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  log "systemd reloaded"
fi

if [ "$config_changed" = 1 ] || [ "$unit_changed" = 1 ]; then
  log "next: systemctl enable --now $unit_name && systemctl restart containerd"
fi

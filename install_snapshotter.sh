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
#  With --cri (Kubernetes nodes), also:
#
#  4. sets, in containerd's config, the CRI plugin's snapshotter to d4fs and
#     turns the snapshot annotations on, so that kubelet's image pulls go
#     through d4fs and each layer's Prepare carries the cri.* labels:
#
#       [plugins."io.containerd.grpc.v1.cri".containerd]
#         snapshotter = "d4fs"
#         disable_snapshot_annotations = false
#
#     (version 2 configs; [plugins.cri.containerd] in version 1 ones and
#     [plugins."io.containerd.cri.v1.images"] in version 3 ones). Only these
#     two keys are touched: where they exist their value is replaced in place,
#     where the table exists the missing ones are added under its header,
#     otherwise the table is appended; every other line stays as it was.
#
# Idempotent: a second run changes nothing (not even modification times).
# containerd must be restarted to load a newly added proxy plugin or a
# changed CRI setting.
#
# Usage: install_snapshotter.sh [--cri]
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

cri=0
for arg in "$@"; do
  case "$arg" in
    --cri) cri=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $arg (usage: install_snapshotter.sh [--cri])" ;;
  esac
done

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

# --- CRI plugin settings (--cri) -------------------------------------------------

# The config's version (the top-level `version = N` before any table; 1 when
# absent, as containerd reads it).
config_version() {
  awk '
    /^[ \t]*\[/ { exit }
    /^[ \t]*version[ \t]*=/ { v = $0; sub(/^[^=]*=[ \t]*/, "", v); sub(/[ \t]*(#.*)?$/, "", v); print v; found = 1; exit }
    END { if (!found) print 1 }
  ' "$1"
}

# Prints containerd config $1 with the keys snapshotter = "d4fs" and
# disable_snapshot_annotations = false in table $2 (dotted, unquoted form,
# e.g. plugins.io.containerd.grpc.v1.cri.containerd); $3 is the header to
# append when the table is nowhere. A key is recognised however it is
# spelled: in its table, as a dotted key in a parent table, quoted or not.
# Notes on what changed go to stderr. Exits 2 when the table is an inline
# table (not edited: the user has to change it by hand).
cri_edit() {
  awk -v T="$2" -v HEADER="$3" '
    function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
    # a key or header in the dotted, unquoted form used for comparisons
    function norm(s) { s = trim(s); gsub(/[ \t]/, "", s); gsub(/"/, "", s); gsub(/\047/, "", s); return s }
    function header(line,   h) { h = line; sub(/#.*/, "", h); h = norm(h); gsub(/^\[+|\]+$/, "", h); return h }
    function rawkey(line,   k) { k = line; sub(/=.*/, "", k); return k }
    function value(line,   v) { v = line; sub(/^[^=]*=/, "", v); sub(/#.*/, "", v); v = trim(v); gsub(/^["\047]|["\047]$/, "", v); return v }
    function full(line,   k) { k = norm(rawkey(line)); return table == "" ? k : table "." k }
    function want(name) { return name == "snapshotter" ? "\"d4fs\"" : "false" }
    function ok(name, v) { return name == "snapshotter" ? v == "d4fs" : v == "false" }
    BEGIN { keys[1] = "snapshotter"; keys[2] = "disable_snapshot_annotations" }
    FNR == 1 { pass++; table = "" }
    /^[ \t]*\[/ { table = header($0); if (pass == 1 && table == T) has_table = 1 }
    pass == 1 && !/^[ \t]*\[/ && /^[ \t]*[A-Za-z0-9_"\047.-][^=]*=/ {
      f = full($0)
      if (f == T || index(T, f ".") == 1) { if (value($0) ~ /^\{/) inline = 1 }
      for (i in keys) if (f == T "." keys[i]) seen[keys[i]] = 1
      # first dotted definition of a key of T in a table above it: missing keys go after it
      if (!has_table && !dotted_at && index(f, T ".") == 1 && (table == "" || index(T, table ".") == 1)) {
        dotted_at = FNR; dotted_prefix = rawkey($0); sub(/[^.]*$/, "", dotted_prefix); sub(/^[ \t]*/, "", dotted_prefix)
        dotted_indent = $0; sub(/[^ \t].*/, "", dotted_indent)
      }
      next
    }
    pass == 1 { next }
    pass == 2 && FNR == 1 && inline { exit 2 }
    pass == 2 && /^[ \t]*\[/ {
      print
      if (table == T && !added) {
        ind = $0; sub(/[^ \t].*/, "", ind)
        for (i = 1; i <= 2; i++) if (!seen[keys[i]]) { print ind "  " keys[i] " = " want(keys[i]); note("added " keys[i] " = " want(keys[i])) }
        added = 1
      }
      next
    }
    pass == 2 && /^[ \t]*[A-Za-z0-9_"\047.-][^=]*=/ {
      f = full($0)
      for (i = 1; i <= 2; i++) if (f == T "." keys[i] && !ok(keys[i], value($0))) {
        note(keys[i] " was " trim(substr($0, index($0, "=") + 1)) ", now " want(keys[i]))
        k = rawkey($0); sub(/[ \t]*$/, "", k); $0 = k " = " want(keys[i])
      }
      print
      if (FNR == dotted_at && !added) {
        for (i = 1; i <= 2; i++) if (!seen[keys[i]]) { print dotted_indent dotted_prefix keys[i] " = " want(keys[i]); note("added " dotted_prefix keys[i] " = " want(keys[i])) }
        added = 1
      }
      next
    }
    pass == 2 { print }
    function note(s) { printf "install_snapshotter: CRI: %s\n", s > "/dev/stderr" }
    END {
      if (inline) exit 2
      if (!added && (!seen["snapshotter"] || !seen["disable_snapshot_annotations"])) {
        printf "\n# d4fs: CRI image pulls through the d4fs snapshotter (added by install_snapshotter.sh --cri)\n%s\n", HEADER
        for (i = 1; i <= 2; i++) if (!seen[keys[i]]) { print "  " keys[i] " = " want(keys[i]); note("added " HEADER " " keys[i] " = " want(keys[i])) }
      }
    }
  ' "$1" "$1"
}

# Where the CRI settings live, by config version; refuse (before changing
# anything) a config whose CRI settings are an inline table.
if [ "$cri" = 1 ]; then
  if [ -e "$config" ]; then version="$(config_version "$config")"; else version=2; fi
  case "$version" in
    1) cri_table='plugins.cri.containerd'; cri_header='[plugins.cri.containerd]'; cri_plugin='cri' ;;
    2) cri_table='plugins.io.containerd.grpc.v1.cri.containerd'; cri_header='[plugins."io.containerd.grpc.v1.cri".containerd]'; cri_plugin='io.containerd.grpc.v1.cri' ;;
    3) cri_table='plugins.io.containerd.cri.v1.images'; cri_header='[plugins."io.containerd.cri.v1.images"]'; cri_plugin='io.containerd.grpc.v1.cri' ;;
    *) die "$config: unknown config version $version" ;;
  esac
  if [ -e "$config" ]; then
    rc=0
    cri_edit "$config" "$cri_table" "$cri_header" >/dev/null 2>&1 || rc=$?
    [ "$rc" != 2 ] || die "$config gives the CRI plugin's settings as an inline table: set snapshotter = \"d4fs\" and disable_snapshot_annotations = false in $cri_header by hand; nothing changed"
  fi
fi

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

# --- 1b. CRI plugin settings (--cri, item 4 above) ----------------------------
if [ "$cri" = 1 ]; then
  # (the candidate goes to $TMPDIR: the config's directory is touched only when the config changes)
  edited="$(mktemp)"
  trap 'rm -f "$edited"' EXIT
  rc=0
  cri_edit "$config" "$cri_table" "$cri_header" >"$edited" || rc=$?
  if [ "$rc" != 0 ]; then
    die "could not edit $config (awk exited $rc)"
  fi
  # the file always ends with a newline once edited; the comparison ignores a missing final one
  if cmp -s "$edited" "$config" || cmp -s "$edited" <(cat "$config"; echo); then
    log "$config already sends CRI pulls through d4fs with the snapshot annotations; unchanged"
  else
    write_atomically "$config" 0644 <"$edited"
    config_changed=1
    log "set the CRI plugin's snapshotter to d4fs (disable_snapshot_annotations = false) in $config"
  fi
  rm -f "$edited"
  trap - EXIT
  if grep -Eq "^[[:space:]]*disabled_plugins[[:space:]]*=.*[\"']($cri_plugin|cri)[\"']" "$config"; then
    log "warning: $config lists the CRI plugin in disabled_plugins: Kubernetes cannot use this containerd until it is enabled"
  fi
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

#!/usr/bin/env bash
# Checks the systemd units in packaging/systemd, installing nothing: the lines each must have
# (binary, environment file, capabilities, sandboxing) by grep, then `systemd-analyze verify`
# where it exists, with the binaries replaced by stubs (any warning it prints fails the check).
# The container image is not built here. Exits non-zero on the first unit that fails.
set -euo pipefail
cd "$(dirname "$0")"

failed=0
fail() {
  echo "packaging/check.sh: $*" >&2
  failed=1
}
# has UNIT LINE: the unit holds exactly this line.
has() {
  grep -qxF -- "$2" "$1" || fail "$1: no line '$2'"
}
# lacks UNIT REGEX: no line of the unit matches.
lacks() {
  if grep -qE -- "$2" "$1"; then fail "$1: unexpected line matching '$2'"; fi
}

for name in portal relay client gateway; do
  unit="systemd/zta-$name.service"
  [ -f "$unit" ] || { fail "$unit is missing"; continue; }
  [ -f "env/$name.env" ] || fail "env/$name.env is missing"
  has "$unit" "ExecStart=/usr/local/bin/$name"
  has "$unit" "EnvironmentFile=/etc/zta/$name.env"
  has "$unit" "NoNewPrivileges=yes"
  has "$unit" "ProtectSystem=strict"
  has "$unit" "DynamicUser=yes"
  case "$name" in
    client | gateway)
      has "$unit" "CapabilityBoundingSet=CAP_NET_ADMIN"
      has "$unit" "AmbientCapabilities=CAP_NET_ADMIN"
      has "$unit" "DeviceAllow=/dev/net/tun rw"
      has "$unit" "StateDirectory=zta-$name"
      has "$unit" "Environment=ZTA_STATE_DIR=/var/lib/zta-$name"
      ;;
    portal | relay)
      # No capabilities at all.
      has "$unit" "CapabilityBoundingSet="
      lacks "$unit" '^(CapabilityBoundingSet|AmbientCapabilities)=.+'
      ;;
  esac
done
has systemd/zta-portal.service "StateDirectory=zta-portal"
has systemd/zta-portal.service "Environment=PORTAL_DB=/var/lib/zta-portal/portal.db"

if command -v systemd-analyze >/dev/null 2>&1; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  mkdir "$scratch/bin"
  for unit in systemd/*.service; do
    binary=$(sed -n 's#^ExecStart=/usr/local/bin/\([^ ]*\).*#\1#p' "$unit")
    printf '#!/bin/sh\n' >"$scratch/bin/$binary"
    chmod +x "$scratch/bin/$binary"
    sed "s#/usr/local/bin/#$scratch/bin/#" "$unit" >"$scratch/$(basename "$unit")"
  done
  if ! output=$(systemd-analyze verify --man=no "$scratch"/*.service 2>&1) || [ -n "$output" ]; then
    fail "systemd-analyze verify: ${output:-failed}"
  else
    echo "packaging/check.sh: systemd-analyze verify: no findings"
  fi
else
  echo "packaging/check.sh: systemd-analyze not found: the units were checked by grep only"
fi

if [ "$failed" -ne 0 ]; then
  exit 1
fi
echo "packaging/check.sh: 4 units passed"

#!/usr/bin/env bash
# The project's test command: installs what the tests need when it is missing, then runs every test.
# Interop and end-to-end tests fail (never skip) when a tool is absent, so they are installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests build from scratch on CI: incremental caches would only cost time and disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

missing=()
require() { # require COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
# (tools are added here as the tests that drive them land)
require turnutils_uclient coturn # relay-sim/tests/interop.rs, relay-sim/scripts/bench-vs-coturn.sh
require turnserver coturn        # node/core/src/turn/coturn_interop.rs
require ip iproute2              # tests/e2e.rs (scripts/e2e.sh): namespaces, veth, routes
require iptables iptables        # tests/e2e.rs: the NATs (masquerade), blocking direct UDP
require iperf3 iperf3            # tests/e2e.rs: TCP transfers through the tunnel
require ping iputils-ping        # tests/e2e.rs
require openssl openssl          # tests/e2e.rs: the test CA and the portal's certificate
# portal-sim's PostgreSQL tests (store, two instances): a throwaway server started below.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing ${missing[*]}: run as root, or install them first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The systemd units (systemd-analyze verify where installed).
packaging/check.sh
# Each patches/<crate>.diff still says what patches/<crate>/ holds.
scripts/check-patches.sh
# Unit, integration and interop tests of every crate.
cargo test --workspace --all-targets --exclude zta "$@"
# The own tests of the patched ICE agent, WireGuard and UDP socket (patches/, outside the
# workspace so that each stays the crate as published plus our diff): built in copies that are
# workspaces of their own. quinn-udp's tests of the error queue are its integration tests.
patched=$(mktemp -d)
for crate in is boringtun quinn-udp; do
  cp -r "patches/$crate" "$patched/$crate"
  printf '\n[workspace]\n' >>"$patched/$crate/Cargo.toml"
  targets=(--lib)
  if [ "$crate" = quinn-udp ]; then targets+=(--test tests); fi
  CARGO_TARGET_DIR="$PWD/target/patched" cargo test --release "${targets[@]}" --manifest-path "$patched/$crate/Cargo.toml"
done
rm -rf "$patched"
# The portal's store and its two-instance test on a real PostgreSQL server (ignored by a plain
# `cargo test`, which has none).
source scripts/lib/postgres.sh
trap stop_postgres EXIT
start_postgres
cargo test -p portal-sim --test store --test admin "$@" -- --ignored
stop_postgres
# The whole-system tests: the deterministic simulation (256 cases, fast only when optimised; the
# release profile keeps debug assertions off but the same code) and the end-to-end test in
# network namespaces with the real binaries.
cargo test --release -p zta "$@"

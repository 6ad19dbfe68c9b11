#!/usr/bin/env bash
# Throughput benchmark: iperf3 TCP from a client namespace to a resource behind a gateway
# namespace, over three paths in one run:
#
#   plain      veth, routed by the gateway namespace, no tunnel (the ceiling)
#   boringtun  boringtun-cli (userspace WireGuard) on both ends, `--threads 1 --disable-multi-queue`
#   zta        our client and gateway (release build), direct UDP between them
#
#   cli 192.168.10.2 --veth-- 192.168.10.1 gw 10.10.0.1 --veth-- res 10.10.0.5 (zta), .6 (plain),
#                                                                     .7 (boringtun)
#
# The portal runs in the gateway namespace; no relays. The gateway masquerades towards res.
# All tunnels use MTU 1420. Prints the three figures and the ratios. Needs root, iproute2,
# iptables, iperf3, wireguard-tools (`wg`) and boringtun-cli; missing Debian tools are installed,
# boringtun-cli with `cargo install boringtun-cli`.
#
# Environment: SECONDS_PER_RUN (default 10), PERF=1 to `perf record` our client and gateway during
# their run (reports in $PERF_DIR, default /tmp/zta-perf).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "bench: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "must run as root"
missing=()
for pair in ip:iproute2 iptables:iptables iperf3:iperf3 wg:wireguard-tools; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
BORINGTUN=$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")
if [ ! -x "$BORINGTUN" ]; then
  cargo install --locked boringtun-cli
  BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
fi

if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --quiet -p node --bin client --bin gateway -p portal-sim --bin portal
  BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
SECS=${SECONDS_PER_RUN:-10}
MTU=1420

ID=$$
CLI=ztab$ID-cli GW=ztab$ID-gw RES=ztab$ID-res
WORK=$(mktemp -d /tmp/zta-bench.XXXXXX)
PIDS=()
cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  for ns in $CLI $GW $RES; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}
bg() { # bg NAME NS COMMAND...
  local name=$1 ns=$2
  shift 2
  ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

for ns in $CLI $GW $RES; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
done
ip link add eth0 netns "$CLI" type veth peer name cli netns "$GW"
ip link add res netns "$GW" type veth peer name eth0 netns "$RES"
in_ns "$CLI" ip addr add 192.168.10.2/24 dev eth0
in_ns "$GW" ip addr add 192.168.10.1/24 dev cli
in_ns "$GW" ip addr add 10.10.0.1/24 dev res
for a in 10.10.0.5 10.10.0.6 10.10.0.7; do in_ns "$RES" ip addr add $a/24 dev eth0; done
in_ns "$CLI" ip link set eth0 up
in_ns "$GW" ip link set cli up
in_ns "$GW" ip link set res up
in_ns "$RES" ip link set eth0 up
in_ns "$CLI" ip route add default via 192.168.10.1
in_ns "$GW" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
in_ns "$GW" iptables -t nat -A POSTROUTING -o res -j MASQUERADE

bg iperf-server "$RES" iperf3 -s

# boringtun: wg-c in the client, wg-g in the gateway, each peer allowed the other's side.
umask 077
wg genkey >"$WORK/c.key"
wg genkey >"$WORK/g.key"
bg boringtun-c "$CLI" "$BORINGTUN" wgc$ID --foreground --disable-drop-privileges --threads 1 --disable-multi-queue
bg boringtun-g "$GW" "$BORINGTUN" wgg$ID --foreground --disable-drop-privileges --threads 1 --disable-multi-queue
for i in $(seq 50); do
  [ -S /var/run/wireguard/wgc$ID.sock ] && [ -S /var/run/wireguard/wgg$ID.sock ] && break
  [ "$i" -lt 50 ] || fail "boringtun-cli did not start: $(cat "$WORK"/boringtun-*.log)"
  sleep 0.1
done
in_ns "$GW" wg set wgg$ID private-key "$WORK/g.key" listen-port 51820 \
  peer "$(wg pubkey <"$WORK/c.key")" allowed-ips 10.200.0.2/32
in_ns "$CLI" wg set wgc$ID private-key "$WORK/c.key" \
  peer "$(wg pubkey <"$WORK/g.key")" allowed-ips 10.10.0.7/32 endpoint 192.168.10.1:51820
in_ns "$CLI" ip addr add 10.200.0.2/32 dev wgc$ID
in_ns "$CLI" ip link set wgc$ID mtu $MTU up
in_ns "$GW" ip link set wgg$ID mtu $MTU up
in_ns "$CLI" ip route add 10.10.0.7/32 dev wgc$ID
in_ns "$GW" ip route add 10.200.0.2/32 dev wgg$ID

# zta: portal on the gateway host, client and gateway talking directly.
cat >"$WORK/seed.json" <<'JSON'
{
  "clients": [{ "id": 1, "name": "bench", "token": "client-token", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1" }],
  "gateways": [{ "id": 1, "name": "gw", "token": "gateway-token", "site": "hq" }],
  "resources": [{ "id": 1, "name": "res", "site": "hq", "type": "host", "address": "10.10.0.5" }],
  "policies": [{ "client_id": 1, "resource_id": 1 }],
  "relays": []
}
JSON
bg portal "$GW" env PORTAL_RELAY_SECRET=bench RUST_LOG=warn "$BIN_DIR/portal" \
  --listen 192.168.10.1:8080 --seed-file "$WORK/seed.json" --db "$WORK/portal.db"
sleep 0.5
bg gateway "$GW" env RUST_LOG=warn "$BIN_DIR/gateway" --portal-url ws://192.168.10.1:8080 --insecure-no-tls \
  --token gateway-token --tun-name ztagw --mtu $MTU --state-dir "$WORK/gateway-state"
GATEWAY_PID=${PIDS[-1]}
bg client "$CLI" env RUST_LOG=warn "$BIN_DIR/client" --portal-url ws://192.168.10.1:8080 --insecure-no-tls \
  --token client-token --tun-name ztacl --mtu $MTU --state-dir "$WORK/client-state"
CLIENT_PID=${PIDS[-1]}

ready() { in_ns "$CLI" ping -c 1 -W 1 "$1" >/dev/null 2>&1; }
for target in 10.10.0.5 10.10.0.6 10.10.0.7; do
  for i in $(seq 30); do
    ready $target && break
    [ "$i" -lt 30 ] || fail "no answer from $target: $(tail -n 5 "$WORK"/*.log)"
  done
done

measure() { # measure TARGET: Gbit/s received
  in_ns "$CLI" iperf3 -c "$1" -t "$SECS" --json >"$WORK/iperf.json"
  python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$WORK/iperf.json"
}
echo "bench: iperf3 TCP client -> resource, ${SECS}s each, MTU $MTU, $(nproc) cores ($(uname -r))"
plain=$(measure 10.10.0.6)
echo "bench:   plain veth      ${plain} Gbit/s"
boringtun=$(measure 10.10.0.7)
echo "bench:   boringtun-cli   ${boringtun} Gbit/s"
if [ "${PERF:-0}" = 1 ]; then
  PERF_DIR=${PERF_DIR:-/tmp/zta-perf}
  mkdir -p "$PERF_DIR"
  perf record -g -o "$PERF_DIR/client.data" -p "$CLIENT_PID" -- sleep "$SECS" >/dev/null 2>&1 &
  perf_c=$!
  perf record -g -o "$PERF_DIR/gateway.data" -p "$GATEWAY_PID" -- sleep "$SECS" >/dev/null 2>&1 &
  perf_g=$!
fi
zta=$(measure 10.10.0.5)
echo "bench:   zta             ${zta} Gbit/s"
if [ "${PERF:-0}" = 1 ]; then
  wait "$perf_c" "$perf_g" || true
  echo "bench: perf data in $PERF_DIR (perf report -i $PERF_DIR/client.data --no-children)"
fi
python3 - "$plain" "$boringtun" "$zta" <<'PY'
import sys
plain, bt, zta = map(float, sys.argv[1:])
print(f"bench: zta / boringtun-cli = {zta / bt:.2f}, zta / plain = {zta / plain:.3f}, boringtun-cli / plain = {bt / plain:.3f}")
PY

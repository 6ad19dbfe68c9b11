#!/usr/bin/env bash
# Throughput benchmark: iperf3 TCP from a client namespace to a resource behind a gateway
# namespace, over every path below in one run, then the connection setup time of our client.
#
#   plain           veth, routed by the gateway namespace, no tunnel (the ceiling)
#   boringtun-cli   userspace WireGuard on both ends, `--threads 1 --disable-multi-queue`
#   wireguard-go    userspace WireGuard (Go) on both ends, default settings (all cores); installed
#                   with apt-get when missing, and reported as not measured (with the reason) when
#                   that fails
#   zta direct      our client and gateway (release build), direct UDP between them, each pinned
#                   with `taskset` to one core of its own (client CPU 0, gateway the last CPU, as
#                   on two one-core hosts; their crypto then runs on their event loops), then each
#                   on all cores (iperf3 and the kernel unpinned), first with the crypto on the
#                   event loop (`ZTA_CRYPTO_THREADS=1`), then spread over one thread per core
#                   (`ZTA_CRYPTO_THREADS=<cores>`); the relayed runs use the default
#   zta via relay   the same, direct UDP blocked, through our TURN relay (`relay`)
#   zta via coturn  the same, direct UDP blocked, through coturn's turnserver
#
#   cli 192.168.10.2 --veth-- 192.168.10.1 gw 10.10.0.1 --veth-- res 10.10.0.5 (zta), .6 (plain),
#     |  172.16.1.2                         | 172.16.2.2        .7 (boringtun), .8 (wireguard-go)
#     +--veth-- 172.16.1.1 rly 172.16.2.1 --veth--+
#               our relay 172.16.0.11:3478, coturn 172.16.0.12:3478 (on rly's lo)
#
# rly does not forward (and its default route is a black hole): client and gateway reach each
# other only over their own veth (the direct path) or through a relay. The gateway namespace
# forwards plain traffic from the client to .6 only, so .5, .7 and .8 answer only through their
# tunnels (never around them while a tunnel comes up). The portal runs in the gateway namespace
# (ws://192.168.10.1:8080, no TLS) and is restarted with a fresh database for each phase, its
# seed file listing no relay (direct), only our relay, or only coturn; the gateway and client
# restart with it. For the relayed phases, the
# client namespace drops all UDP on its veth to the gateway (the portal's TCP still flows), so
# whatever the candidates, only the relay listed in the seed can carry the tunnel. Both relays
# run throughout, and iptables byte counters in rly (per relay address, UDP only) must show the
# listed relay carrying at least what iperf3 received and the other one (almost) nothing, or
# the script fails; for our relay its own /metrics counters are checked too.
#
# Setup time: SETUP_STARTS times, the client is stopped and started again (same key, gateway and
# portal running) while a ping loop (one echo request every 5 ms) runs towards 10.10.0.5; the
# time from just before the client process is started to the first echo reply (ping -D stamp)
# is one sample. Printed as p50 and p99 (nearest rank: with fewer than 100 samples p99 is the
# maximum), for the direct path and through our relay. A start without an answer within 10 s
# counts as an infinite sample; the script then still prints every figure, and fails at the end.
#
# All tunnels use MTU 1420. Prints Gbit/s and the ratios to boringtun-cli and to plain veth.
# Needs root, iproute2, iptables, iperf3, ping, wireguard-tools (`wg`), coturn (`turnserver`),
# taskset, python3 and boringtun-cli; missing Debian tools are installed, boringtun-cli with
# `cargo install boringtun-cli`.
#
# Environment:
#   SECONDS_PER_RUN  seconds of each iperf3 run (default 10)
#   SETUP_STARTS     client starts per setup-time measurement (default 20)
#   BIN_DIR          directory of prebuilt client, gateway, portal and relay binaries; without it
#                    they are built with `cargo build --release`
#   PERF=1           `perf record` our client and gateway during the `crypto on the loop` run
#                    (reports in $PERF_DIR, default /tmp/zta-perf)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "bench: FAIL: $*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || fail "must run as root"
missing=()
for pair in ip:iproute2 iptables:iptables iperf3:iperf3 wg:wireguard-tools ping:iputils-ping \
  turnserver:coturn taskset:util-linux python3:python3; do
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
# wireguard-go is optional: when it cannot be had, its line says why.
WGGO=$(command -v wireguard-go || true)
WGGO_WHY=
if [ -z "$WGGO" ]; then
  apt_log=$(mktemp /tmp/zta-bench-apt.XXXXXX)
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends wireguard-go; } >"$apt_log" 2>&1; then
    WGGO=$(command -v wireguard-go || true)
    [ -n "$WGGO" ] || WGGO_WHY="the wireguard-go package installed no wireguard-go command"
  else
    WGGO_WHY="apt-get install wireguard-go failed: $(tail -n 1 "$apt_log")"
  fi
  rm -f "$apt_log"
fi

if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --quiet -p node --bin client --bin gateway -p portal-sim --bin portal \
    -p relay-sim --bin relay
  BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
for bin in client gateway portal relay; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing"
done
SECS=${SECONDS_PER_RUN:-10}
STARTS=${SETUP_STARTS:-20}
MTU=1420
NCPU=$(nproc)
ALL_CPUS=0-$((NCPU - 1))
SECRET=bench-relay-secret
T0=$(date +%s)

ID=$$
CLI=ztab$ID-cli GW=ztab$ID-gw RES=ztab$ID-res RLY=ztab$ID-rly
ALL_NS=("$CLI" "$GW" "$RES" "$RLY")
WORK=$(mktemp -d /tmp/zta-bench.XXXXXX)
declare -A PIDS=()
cleanup() {
  local status=$?
  set +e
  for name in "${!PIDS[@]}"; do kill "${PIDS[$name]}" 2>/dev/null; done
  for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null; done
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do
      [ -s "$log" ] || continue
      echo "----- $(basename "$log") (last 15 lines)" >&2
      tail -n 15 "$log" >&2
    done
  fi
  for ns in "${ALL_NS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
  done
  for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
in_ns() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}
bg() { # bg NAME NS COMMAND...: in the background, logs to $WORK/NAME.log
  local name=$1 ns=$2
  shift 2
  ip netns exec "$ns" "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
}
stop() { # stop NAME: SIGTERM, SIGKILL after 5 s
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$1]"
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for: $what"
    sleep 0.1
  done
}
step() { echo "bench: [$(($(date +%s) - T0))s] $*"; }

for ns in "${ALL_NS[@]}"; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
done
ip link add eth0 netns "$CLI" type veth peer name cli netns "$GW"
ip link add res netns "$GW" type veth peer name eth0 netns "$RES"
ip link add eth1 netns "$CLI" type veth peer name c netns "$RLY"
ip link add rly netns "$GW" type veth peer name g netns "$RLY"
in_ns "$CLI" ip addr add 192.168.10.2/24 dev eth0
in_ns "$CLI" ip addr add 172.16.1.2/24 dev eth1
in_ns "$GW" ip addr add 192.168.10.1/24 dev cli
in_ns "$GW" ip addr add 10.10.0.1/24 dev res
in_ns "$GW" ip addr add 172.16.2.2/24 dev rly
in_ns "$RLY" ip addr add 172.16.1.1/24 dev c
in_ns "$RLY" ip addr add 172.16.2.1/24 dev g
in_ns "$RLY" ip addr add 172.16.0.11/32 dev lo
in_ns "$RLY" ip addr add 172.16.0.12/32 dev lo
for a in 10.10.0.5 10.10.0.6 10.10.0.7 10.10.0.8; do in_ns "$RES" ip addr add $a/24 dev eth0; done
for pair in "$CLI eth0" "$CLI eth1" "$GW cli" "$GW res" "$GW rly" "$RES eth0" "$RLY c" "$RLY g"; do
  read -r ns dev <<<"$pair"
  in_ns "$ns" ip link set "$dev" up
done
in_ns "$CLI" ip route add default via 192.168.10.1
in_ns "$CLI" ip route add 172.16.0.0/24 via 172.16.1.1
in_ns "$GW" ip route add 172.16.0.0/24 via 172.16.2.1
in_ns "$GW" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
in_ns "$RLY" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'
# rly's default route is a black hole that drops silently, as the internet would: with no route
# at all, sending to a peer candidate it cannot reach (192.168.10.x) fails with ENETUNREACH, and
# coturn then closes the whole allocation. The hole: a veth pair inside rly, the route's next hop
# a permanent neighbour whose MAC no interface has, so the other end discards every frame.
ip link add dark netns "$RLY" type veth peer name dark-end netns "$RLY"
in_ns "$RLY" ip addr add 172.16.9.1/30 dev dark
in_ns "$RLY" ip link set dark up
in_ns "$RLY" ip link set dark-end up
in_ns "$RLY" ip neigh add 172.16.9.2 lladdr 02:00:00:00:00:01 dev dark nud permanent
in_ns "$RLY" ip route add default via 172.16.9.2 dev dark
in_ns "$GW" iptables -t nat -A POSTROUTING -o res -j MASQUERADE
# Plain forwarding to .6 only: the tunnels' resources are reached through their tunnels or not at
# all (no measurement or setup ping can go around a tunnel that is not up yet).
in_ns "$GW" iptables -A FORWARD -i cli -o res ! -d 10.10.0.6 -j DROP
# What reaches each relay (UDP: control and relayed data, both sides), in bytes.
in_ns "$RLY" iptables -A INPUT -p udp -d 172.16.0.11
in_ns "$RLY" iptables -A INPUT -p udp -d 172.16.0.12
relay_bytes() { # relay_bytes ADDR
  in_ns "$RLY" iptables -L INPUT -v -x -n | awk -v d="$1" '$8 == d { print $2 }'
}

bg iperf-server "$RES" iperf3 -s

# Userspace WireGuard: one interface in the client, one in the gateway, each peer allowed the
# other's side. boringtun-cli on 51820 for .7, wireguard-go on 51821 for .8.
umask 077
wg genkey >"$WORK/c.key"
wg genkey >"$WORK/g.key"
wg_pair() { # wg_pair CLIENT_IF GATEWAY_IF PORT CLIENT_TUNNEL_IP RESOURCE
  local c=$1 g=$2
  for i in $(seq 50); do
    [ -S "/var/run/wireguard/$c.sock" ] && [ -S "/var/run/wireguard/$g.sock" ] && break
    [ "$i" -lt 50 ] || return 1
    sleep 0.1
  done
  in_ns "$GW" wg set "$g" private-key "$WORK/g.key" listen-port "$3" \
    peer "$(wg pubkey <"$WORK/c.key")" allowed-ips "$4/32"
  in_ns "$CLI" wg set "$c" private-key "$WORK/c.key" \
    peer "$(wg pubkey <"$WORK/g.key")" allowed-ips "$5/32" endpoint "192.168.10.1:$3"
  in_ns "$CLI" ip addr add "$4/32" dev "$c"
  in_ns "$CLI" ip link set "$c" mtu $MTU up
  in_ns "$GW" ip link set "$g" mtu $MTU up
  in_ns "$CLI" ip route add "$5/32" dev "$c"
  in_ns "$GW" ip route add "$4/32" dev "$g"
}
bg boringtun-c "$CLI" "$BORINGTUN" "wgc$ID" --foreground --disable-drop-privileges --threads 1 --disable-multi-queue
bg boringtun-g "$GW" "$BORINGTUN" "wgg$ID" --foreground --disable-drop-privileges --threads 1 --disable-multi-queue
wg_pair "wgc$ID" "wgg$ID" 51820 10.200.0.2 10.10.0.7 ||
  fail "boringtun-cli did not start: $(cat "$WORK"/boringtun-*.log)"
if [ -n "$WGGO" ]; then
  bg wggo-c "$CLI" env WG_PROCESS_FOREGROUND=1 "$WGGO" -f "wgoc$ID"
  bg wggo-g "$GW" env WG_PROCESS_FOREGROUND=1 "$WGGO" -f "wgog$ID"
  if ! wg_pair "wgoc$ID" "wgog$ID" 51821 10.200.1.2 10.10.0.8; then
    WGGO_WHY="wireguard-go did not start: $(tail -n 2 "$WORK"/wggo-c.log | tr '\n' ' ')"
    WGGO=
    stop wggo-c
    stop wggo-g
  fi
fi

# zta: the portal in the gateway namespace; our relay and coturn in rly.
bg relay "$RLY" env RELAY_AUTH_SECRET=$SECRET RUST_LOG=warn "$BIN_DIR/relay" \
  --listen 172.16.0.11:3478 --relay-ports 50000-50999 --allow-peer 172.16.0.0/16 \
  --metrics-listen 172.16.0.11:9101
# coturn: TURN REST API credentials (use-auth-secret) with the portal's secret; UDP only; peers in
# 172.16.0.0/16 explicitly allowed (by default coturn refuses only loopback peers, and multicast
# ones with --no-multicast-peers, while our relay refuses every private range: the allow-lists
# keep the two alike).
bg coturn "$RLY" turnserver -n --listening-ip 172.16.0.12 --relay-ip 172.16.0.12 \
  --listening-port 3478 --min-port 52000 --max-port 52999 \
  --use-auth-secret --static-auth-secret=$SECRET --realm zta \
  --no-cli --no-tls --no-dtls --no-tcp --no-tcp-relay --no-multicast-peers \
  --allowed-peer-ip=172.16.0.0-172.16.255.255 --userdb "$WORK/turndb" \
  --pidfile "$WORK/coturn.pid" --log-file stdout --simple-log
wait_for 10 "our relay's metrics endpoint" in_ns "$RLY" bash -c 'exec 3<>/dev/tcp/172.16.0.11/9101'
wait_for 10 "coturn listening on 172.16.0.12:3478" \
  sh -c "ip netns exec $RLY ss -Hlun | grep -q '172.16.0.12:3478'"
relay_metric() { # relay_metric NAME: the sum of our relay's metric NAME over its labels
  in_ns "$RLY" python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://172.16.0.11:9101/metrics", timeout=5).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines()
              if l.startswith(sys.argv[1] + "{") or l.startswith(sys.argv[1] + " "))))
PY
}

write_seed() { # write_seed RELAYS_JSON
  cat >"$WORK/seed.json" <<JSON
{
  "clients": [{ "id": 1, "name": "bench", "token": "client-token", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1" }],
  "gateways": [{ "id": 1, "name": "gw", "token": "gateway-token", "site": "hq" }],
  "resources": [{ "id": 1, "name": "res", "site": "hq", "type": "host", "address": "10.10.0.5" }],
  "policies": [{ "client_id": 1, "resource_id": 1 }],
  "relays": $1
}
JSON
}
pinned() { # pinned NAME CPUS: whether process NAME runs on CPUS (as the kernel lists them)
  [ "$(awk '/^Cpus_allowed_list:/ { print $2 }' "/proc/${PIDS[$1]}/status")" = "$2" ] ||
    fail "$1 runs on CPUs $(awk '/^Cpus_allowed_list:/ { print $2 }' "/proc/${PIDS[$1]}/status"), not $2"
}
# Crypto threads of our nodes: empty for their default (one per core they may run on).
CRYPTO_THREADS=
crypto_env() { # the environment setting CRYPTO_THREADS, if set
  echo "RUST_LOG=warn${CRYPTO_THREADS:+ ZTA_CRYPTO_THREADS=$CRYPTO_THREADS}"
}
start_client() { # start_client CPUS
  # shellcheck disable=SC2046 # the variables are split on purpose
  bg client "$CLI" taskset -c "$1" env $(crypto_env) "$BIN_DIR/client" \
    --portal-url ws://192.168.10.1:8080 --insecure-no-tls --token client-token --tun-name ztacl \
    --mtu $MTU --state-dir "$WORK/client-state"
}
# zta_up RELAYS_JSON CLIENT_CPUS GATEWAY_CPUS: (re)starts the portal with a fresh database and a
# seed listing RELAYS_JSON, then the gateway and the client pinned to their CPUs, and waits for
# an answer from 10.10.0.5 through the tunnel.
CLIENT_CPUS=$ALL_CPUS
zta_up() {
  stop client
  stop gateway
  stop portal
  CLIENT_CPUS=$2
  write_seed "$1"
  rm -f "$WORK"/portal.db*
  bg portal "$GW" env PORTAL_RELAY_SECRET=$SECRET RUST_LOG=warn "$BIN_DIR/portal" \
    --listen 192.168.10.1:8080 --seed-file "$WORK/seed.json" --db "$WORK/portal.db"
  wait_for 10 "portal listening" in_ns "$CLI" bash -c 'exec 3<>/dev/tcp/192.168.10.1/8080'
  # shellcheck disable=SC2046 # the variables are split on purpose
  bg gateway "$GW" taskset -c "$3" env $(crypto_env) "$BIN_DIR/gateway" \
    --portal-url ws://192.168.10.1:8080 --insecure-no-tls --token gateway-token --tun-name ztagw \
    --mtu $MTU --state-dir "$WORK/gateway-state"
  start_client "$CLIENT_CPUS"
  wait_for 20 "client route to 10.10.0.5 through ztacl" \
    sh -c "ip -n $CLI route show 10.10.0.5 | grep -q ztacl"
  in_ns "$CLI" ping -n -c 1 -w 30 -i 0.05 10.10.0.5 >/dev/null 2>&1 ||
    fail "no answer from 10.10.0.5 through zta within 30 s (relays: $1)"
  pinned client "$2"
  pinned gateway "$3"
}

for target in 10.10.0.6 10.10.0.7; do
  in_ns "$CLI" ping -n -c 1 -w 15 -i 0.1 "$target" >/dev/null 2>&1 || fail "no answer from $target"
done
if [ -n "$WGGO" ] && ! in_ns "$CLI" ping -n -c 1 -w 15 -i 0.1 10.10.0.8 >/dev/null 2>&1; then
  WGGO_WHY="no answer from 10.10.0.8 through wireguard-go within 15 s"
  WGGO=
  stop wggo-c
  stop wggo-g
fi

measure() { # measure NAME TARGET: iperf3 into $WORK/iperf-NAME.json
  in_ns "$CLI" timeout $((SECS + 30)) iperf3 -c "$2" -t "$SECS" --connect-timeout 5000 --json \
    >"$WORK/iperf-$1.json" 2>&1 || fail "iperf3 to $2 ($1) failed: $(tail -c 300 "$WORK/iperf-$1.json")"
}
received() { # received NAME: bytes the iperf3 receiver got in run NAME
  python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"]))' \
    "$WORK/iperf-$1.json"
}
LABELS=() RESULTS=()
result() { # result LABEL NAME|"-" [NOTE]: records run NAME's Gbit/s (or "not measured: NOTE")
  local gbits retr
  LABELS+=("$1")
  if [ "$2" = - ]; then
    RESULTS+=("-|$3")
    step "  $1: not measured: $3"
    return
  fi
  read -r gbits retr < <(python3 -c 'import json,sys; e = json.load(open(sys.argv[1]))["end"]
print("%.2f %d" % (e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"].get("retransmits", -1)))' \
    "$WORK/iperf-$2.json")
  [ -n "$gbits" ] || fail "no result in $WORK/iperf-$2.json"
  RESULTS+=("$gbits")
  step "  $1: $gbits Gbit/s ($retr TCP retransmits${3:+, $3})"
}

step "iperf3 TCP client -> resource, ${SECS}s each, MTU $MTU, $NCPU cores ($(uname -r))"
measure plain 10.10.0.6
result "plain veth" plain
measure boringtun 10.10.0.7
result "boringtun-cli" boringtun "1 thread each"
if [ -n "$WGGO" ]; then
  measure wggo 10.10.0.8
  result "wireguard-go" wggo "$(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null || echo '?'), GOMAXPROCS default"
  stop wggo-c
  stop wggo-g
else
  result "wireguard-go" - "$WGGO_WHY"
fi
# The userspace WireGuards are done with: they would only compete for the CPU from here on.
stop boringtun-c
stop boringtun-g

zta_up '[]' 0 $((NCPU - 1))
measure direct1 10.10.0.5
result "zta direct (1 core each)" direct1 "client on CPU 0, gateway on CPU $((NCPU - 1))"
# All cores, the crypto on each node's event loop (the default below 4 cores): what the crypto
# threads after it add.
CRYPTO_THREADS=1
zta_up '[]' "$ALL_CPUS" "$ALL_CPUS"
if [ "${PERF:-0}" = 1 ]; then
  PERF_DIR=${PERF_DIR:-/tmp/zta-perf}
  mkdir -p "$PERF_DIR"
  perf record -g -o "$PERF_DIR/client.data" -p "${PIDS[client]}" -- sleep "$SECS" >/dev/null 2>&1 &
  perf_c=$!
  perf record -g -o "$PERF_DIR/gateway.data" -p "${PIDS[gateway]}" -- sleep "$SECS" >/dev/null 2>&1 &
  perf_g=$!
fi
measure direct-loop 10.10.0.5
result "zta direct ($NCPU cores each, crypto on the loop)" direct-loop
if [ "${PERF:-0}" = 1 ]; then
  wait "$perf_c" "$perf_g" || true
  step "  perf data in $PERF_DIR (perf report -i $PERF_DIR/client.data --no-children)"
fi
CRYPTO_THREADS=$NCPU
zta_up '[]' "$ALL_CPUS" "$ALL_CPUS"
measure direct 10.10.0.5
result "zta direct ($NCPU cores each, $NCPU crypto threads)" direct
CRYPTO_THREADS=
if [ "$(relay_bytes 172.16.0.11)" != 0 ] || [ "$(relay_bytes 172.16.0.12)" != 0 ]; then
  fail "a relay received traffic in the direct phase, whose seed lists none"
fi

# setup_times NAME: SETUP_STARTS client restarts, the milliseconds from each start to the first
# echo reply from 10.10.0.5, one a line ("inf" for a start that got no answer within
# SETUP_TIMEOUT seconds), into $WORK/setup-NAME.txt.
SETUP_TIMEOUT=10
SETUP_FAILURES=()
setup_times() {
  local i t0 line failed=0
  : >"$WORK/setup-$1.txt"
  for i in $(seq "$STARTS"); do
    stop client
    t0=$(date +%s%N)
    start_client "$CLIENT_CPUS"
    # -c 1 with -w: echo requests every 5 ms until one reply arrives (or the time is up).
    if in_ns "$CLI" ping -n -D -c 1 -w $SETUP_TIMEOUT -i 0.005 10.10.0.5 >"$WORK/setup-ping.log" 2>&1; then
      line=$(grep -m 1 'bytes from' "$WORK/setup-ping.log")
      python3 -c 'import sys; print("%.1f" % ((float(sys.argv[1].split("]")[0].lstrip("[")) * 1e9 - int(sys.argv[2])) / 1e6))' \
        "$line" "$t0" >>"$WORK/setup-$1.txt"
    else
      echo inf >>"$WORK/setup-$1.txt"
      failed=$((failed + 1))
      echo "bench:   start $i ($1): no answer within ${SETUP_TIMEOUT}s" >&2
    fi
  done
  [ "$failed" -eq 0 ] ||
    SETUP_FAILURES+=("$1: $failed of $STARTS client starts got no answer within ${SETUP_TIMEOUT}s")
}
setup_summary() { # setup_summary NAME: "p50 X ms   p99 Y ms ..." from $WORK/setup-NAME.txt
  python3 - "$WORK/setup-$1.txt" "$SETUP_TIMEOUT" <<'PY'
import math, sys
v = sorted(float(l) for l in open(sys.argv[1]) if l.strip())
rank = lambda p: v[max(0, math.ceil(p / 100 * len(v)) - 1)]
ms = lambda x: f"{x:7.1f} ms" if math.isfinite(x) else f"> {float(sys.argv[2]) * 1000:.0f} ms"
note = " = max" if math.ceil(0.99 * len(v)) == len(v) else ""
failed = sum(1 for x in v if not math.isfinite(x))
print(f"p50 {ms(rank(50))}   p99{note} {ms(rank(99))}   min {ms(v[0]).strip()}   (n={len(v)}"
      + (f", {failed} without an answer" if failed else "") + ")")
PY
}
SETUP_LABELS=() SETUP_RESULTS=()
step "connection setup: $STARTS client starts, direct"
setup_times direct
SETUP_LABELS+=("zta direct") SETUP_RESULTS+=("$(setup_summary direct)")
step "  ${SETUP_RESULTS[-1]}"

# Relayed: the client namespace drops every UDP datagram on its veth to the gateway, both ways.
in_ns "$CLI" iptables -A OUTPUT -o eth0 -p udp -j DROP
in_ns "$CLI" iptables -A INPUT -i eth0 -p udp -j DROP
direct_dropped() { in_ns "$CLI" iptables -L "$1" -v -x -n | awk '$3 == "DROP" { print $1 }'; }
# relayed NAME LABEL ADDR OTHER_ADDR: measures through the relay at ADDR (the only one in the
# seed) and checks the counters: ADDR received at least what iperf3 received, OTHER_ADDR (almost)
# nothing.
relayed() {
  local name=$1 label=$2 addr=$3 other=$4 before other_before metric_before=0 got used
  local other_used dropped_before dropped
  zta_up "[{ \"id\": 1, \"address\": \"$addr:3478\" }]" "$ALL_CPUS" "$ALL_CPUS"
  before=$(relay_bytes "$addr") other_before=$(relay_bytes "$other")
  dropped_before=$(($(direct_dropped OUTPUT) + $(direct_dropped INPUT)))
  [ "$addr" != 172.16.0.11 ] || metric_before=$(relay_metric zta_relay_received_bytes_total)
  measure "$name" 10.10.0.5
  got=$(received "$name")
  used=$(($(relay_bytes "$addr") - before)) other_used=$(($(relay_bytes "$other") - other_before))
  [ "$got" -gt 0 ] || fail "$label: iperf3 received nothing"
  [ "$used" -ge "$got" ] ||
    fail "$label: $addr received $used UDP bytes for $got bytes delivered: the traffic did not go through it"
  [ $((other_used * 100)) -lt "$got" ] ||
    fail "$label: the other relay $other received $other_used bytes (for $got delivered)"
  local note="$addr got $((used / 1000000)) MB of UDP for $((got / 1000000)) MB delivered"
  dropped=$(($(direct_dropped OUTPUT) + $(direct_dropped INPUT) - dropped_before))
  note+=", $other $other_used B, direct attempts dropped: $dropped pkts"
  if [ "$addr" = 172.16.0.11 ]; then
    sleep 1.2 # the metrics snapshot is refreshed every second
    local counted
    counted=$(($(relay_metric zta_relay_received_bytes_total) - metric_before))
    [ "$counted" -ge "$got" ] ||
      fail "$label: our relay's own counters show $counted bytes received for $got delivered"
    note+=", relay's /metrics: $((counted / 1000000)) MB received"
  fi
  result "$label" "$name" "$note"
}
relayed relay "zta via our relay" 172.16.0.11 172.16.0.12
step "connection setup: $STARTS client starts, through our relay"
setup_times relay
SETUP_LABELS+=("zta via our relay") SETUP_RESULTS+=("$(setup_summary relay)")
step "  ${SETUP_RESULTS[-1]}"
relayed coturn "zta via coturn" 172.16.0.12 172.16.0.11

plain=${RESULTS[0]%%|*} boringtun=${RESULTS[1]%%|*}
echo
echo "bench: iperf3 TCP client -> resource, ${SECS}s each, MTU $MTU, $NCPU cores ($(uname -r))"
printf 'bench:   %-44s %8s %14s %9s\n' path Gbit/s "/boringtun-cli" "/plain"
for i in "${!LABELS[@]}"; do
  value=${RESULTS[$i]%%|*}
  if [ "$value" = - ]; then
    printf 'bench:   %-44s not measured: %s\n' "${LABELS[$i]}" "${RESULTS[$i]#*|}"
  else
    awk -v l="${LABELS[$i]}" -v g="$value" -v b="$boringtun" -v p="$plain" \
      'BEGIN { printf "bench:   %-44s %8.2f %14.2f %9.3f\n", l, g, (b > 0 ? g / b : 0), (p > 0 ? g / p : 0) }'
  fi
done
echo "bench: connection setup, client process start -> first echo reply from the resource:"
for i in "${!SETUP_LABELS[@]}"; do
  printf 'bench:   %-44s %s\n' "${SETUP_LABELS[$i]}" "${SETUP_RESULTS[$i]}"
done
echo "bench: relayed runs verified by the relays' iptables byte counters (and our relay's /metrics)"
[ ${#SETUP_FAILURES[@]} -eq 0 ] || fail "connection setup: $(IFS=';'; echo "${SETUP_FAILURES[*]}")"
step "done"

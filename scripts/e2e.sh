#!/usr/bin/env bash
# End-to-end test of the real binaries in network namespaces, with the kernel's own NAT in the path.
#
#   cli (client, 192.168.1.2) -- natc (masquerade) --+
#                                                      pub (portal 192.0.2.10, relays .11 and .12)
#   res (10.0.0.5, 10.0.0.6) -- gw (gateway, 192.168.2.2) -- natg (masquerade) --+
#
# pub routes between the two NATs' public sides (203.0.113.2 and 198.51.100.2), so blocking
# forwarded UDP in pub blocks the direct path between the NATs and leaves only the relays.
# The gateway masquerades the clients' range on the resource side; res has no route back.
#
# Checks, in order: ping and a 10 MiB TCP transfer (iperf3) client -> 10.0.0.5 over the direct
# path (the relays carry almost none of it); 10.0.0.6, a
# resource the client has no policy for, is unreachable and sees nothing; with direct UDP
# blocked, traffic flows through a relay; killing that relay during a transfer, the transfer
# completes through the other one; restarting the portal keeps the tunnel, and after it returns
# new connections work; through the admin CLI, removing the policy stops the client's traffic at
# once (nothing more reaches 10.0.0.5), and granting 10.0.0.6 lets it through, with no restart;
# with the client's portal link cut for 25 s the tunnel carries on, and a policy granted during
# the cut works once the link heals; with the client's address changed, traffic, the portal link
# and the direct path come back; a restarted gateway carries traffic within seconds; with both
# NATs port-randomising (MASQUERADE --random-fully) a relay carries the traffic.
#
# Needs root, iproute2, iptables, iperf3, ping (scripts/test.sh installs them). Binaries come from
# BIN_DIR, or are built with cargo (debug) when it is unset. Every namespace, process and
# temporary file is removed on exit, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "e2e: FAIL: $*" >&2
  exit 1
}
step() { echo "e2e: [$(($(date +%s) - START))s] $*"; }
START=$(date +%s)

[ "$(id -u)" -eq 0 ] || fail "must run as root (it creates network namespaces and TUN devices)"
for tool in ip iptables iperf3 ping; do
  command -v "$tool" >/dev/null 2>&1 ||
    fail "'$tool' is missing: run scripts/test.sh as root, or apt-get install iproute2 iptables iperf3 iputils-ping"
done
[ -c /dev/net/tun ] || fail "/dev/net/tun is missing"

if [ -z "${BIN_DIR:-}" ]; then
  "${CARGO:-cargo}" build --quiet -p node --bin client --bin gateway -p portal-sim --bin portal \
    -p relay-sim --bin relay
  BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
START=$(date +%s)
for bin in client gateway portal relay; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing"
done

ID=${ZTA_E2E_ID:-$$}
NS_PUB=zta$ID-pub NS_NATC=zta$ID-natc NS_CLI=zta$ID-cli NS_NATG=zta$ID-natg NS_GW=zta$ID-gw NS_RES=zta$ID-res
ALL_NS=("$NS_PUB" "$NS_NATC" "$NS_CLI" "$NS_NATG" "$NS_GW" "$NS_RES")
WORK=$(mktemp -d /tmp/zta-e2e.XXXXXX)
declare -A PIDS=()

cleanup() {
  local status=$?
  set +e
  for name in "${!PIDS[@]}"; do kill "${PIDS[$name]}" 2>/dev/null; done
  for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null; done
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do
      [ -f "$log" ] || continue
      echo "----- $(basename "$log") (last 40 lines)" >&2
      tail -n 40 "$log" >&2
    done
  fi
  for ns in "${ALL_NS[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
  for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
  if [ "$status" -eq 0 ]; then echo "e2e: PASS ($(($(date +%s) - START))s)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { # in_ns NS COMMAND...
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}
start() { # start NAME NS COMMAND... (background, logs to $WORK/NAME.log)
  local name=$1 ns=$2
  shift 2
  ip netns exec "$ns" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
}
stop() { # stop NAME
  kill "${PIDS[$1]}" 2>/dev/null || true
  wait "${PIDS[$1]}" 2>/dev/null || true
  unset "PIDS[$1]"
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for: $what"
    sleep 0.2
  done
}
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  in_ns "$1" ip addr add "$3" dev "$2"
  in_ns "$4" ip addr add "$6" dev "$5"
  in_ns "$1" ip link set "$2" up
  in_ns "$4" ip link set "$5" up
}
forwarding() { in_ns "$1" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'; }
# A home router's firewall (OpenWrt's wan zone, for one): unsolicited traffic to the router itself
# is dropped. Without it Linux accepts such a datagram, confirms a conntrack entry for it (and
# answers ICMP port unreachable), and when the inside host then sends to that peer, a
# port-preserving MASQUERADE finds its port taken by that entry and maps it to another one:
# whichever side's check arrives first defeats the other's hole punch, and only a relay is left.
router_firewall() { in_ns "$1" iptables -A INPUT -i wan -m conntrack --ctstate NEW,INVALID -j DROP; }

step "namespaces"
for ns in "${ALL_NS[@]}"; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
done
# The public internet: the portal and both relays live in pub, which routes between the NATs.
in_ns "$NS_PUB" ip addr add 192.0.2.10/32 dev lo
in_ns "$NS_PUB" ip addr add 192.0.2.11/32 dev lo
in_ns "$NS_PUB" ip addr add 192.0.2.12/32 dev lo
link "$NS_PUB" pc 203.0.113.1/24 "$NS_NATC" wan 203.0.113.2/24
link "$NS_PUB" pg 198.51.100.1/24 "$NS_NATG" wan 198.51.100.2/24
forwarding "$NS_PUB"
# Byte counters of what reaches each relay (control and relayed data).
in_ns "$NS_PUB" iptables -A INPUT -p udp -d 192.0.2.11
in_ns "$NS_PUB" iptables -A INPUT -p udp -d 192.0.2.12
# Client behind its NAT.
link "$NS_NATC" lan 192.168.1.1/24 "$NS_CLI" eth0 192.168.1.2/24
in_ns "$NS_NATC" ip route add default via 203.0.113.1
in_ns "$NS_NATC" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
router_firewall "$NS_NATC"
forwarding "$NS_NATC"
in_ns "$NS_CLI" ip route add default via 192.168.1.1
# Gateway behind its NAT, with the resource network on its other side.
link "$NS_NATG" lan 192.168.2.1/24 "$NS_GW" eth0 192.168.2.2/24
in_ns "$NS_NATG" ip route add default via 198.51.100.1
in_ns "$NS_NATG" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE
router_firewall "$NS_NATG"
forwarding "$NS_NATG"
in_ns "$NS_GW" ip route add default via 192.168.2.1
link "$NS_GW" res 10.0.0.1/24 "$NS_RES" eth0 10.0.0.5/24
in_ns "$NS_RES" ip addr add 10.0.0.6/24 dev eth0
in_ns "$NS_GW" iptables -t nat -A POSTROUTING -s 100.64.0.0/10 -o res -j MASQUERADE
# Count whatever reaches each resource.
in_ns "$NS_RES" iptables -A INPUT -d 10.0.0.6
in_ns "$NS_RES" iptables -A INPUT -d 10.0.0.5

cat >"$WORK/seed.json" <<'JSON'
{
  "clients": [{ "id": 1, "name": "laptop", "token": "client-token", "ipv4": "100.64.0.1", "ipv6": "fd00:2021:1111::1" }],
  "gateways": [{ "id": 1, "name": "gw", "token": "gateway-token", "site": "hq" }],
  "resources": [
    { "id": 1, "name": "allowed", "site": "hq", "type": "host", "address": "10.0.0.5" },
    { "id": 2, "name": "forbidden", "site": "hq", "type": "host", "address": "10.0.0.6" }
  ],
  "policies": [{ "client_id": 1, "resource_id": 1 }],
  "relays": [{ "id": 1, "address": "192.0.2.11:3478" }, { "id": 2, "address": "192.0.2.12:3478" }]
}
JSON

# A test CA and the portal's certificate for 192.0.2.10: the control plane runs over TLS, as in
# production, with the CA given to the nodes as a private one (--ca-file).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=zta e2e test CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=portal" \
  -keyout "$WORK/portal.key" -out "$WORK/portal.csr" 2>/dev/null
printf 'subjectAltName=IP:192.0.2.10\nbasicConstraints=CA:FALSE\n' >"$WORK/portal.ext"
openssl x509 -req -in "$WORK/portal.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/portal.ext" -out "$WORK/portal.pem" 2>/dev/null

SECRET=e2e-relay-secret
LOG=${ZTA_E2E_LOG:-info}
start_portal() {
  start portal "$NS_PUB" env PORTAL_RELAY_SECRET=$SECRET RUST_LOG="$LOG" "$BIN_DIR/portal" \
    --listen 192.0.2.10:8080 --seed-file "$WORK/seed.json" --db "$WORK/portal.db" \
    --admin-listen 192.0.2.10:8081 --admin-token "$ADMIN_TOKEN" \
    --tls-cert "$WORK/portal.pem" --tls-key "$WORK/portal.key"
}
ADMIN_TOKEN=e2e-admin-token
admin() { # admin ARGS...: `portal admin` against the running portal, over TLS
  in_ns "$NS_PUB" "$BIN_DIR/portal" admin --url https://192.0.2.10:8081 --ca "$WORK/ca.pem" \
    --token "$ADMIN_TOKEN" "$@"
}
start_relay() { # start_relay N PORTS
  start "relay$1" "$NS_PUB" env RELAY_AUTH_SECRET=$SECRET RUST_LOG="$LOG" "$BIN_DIR/relay" \
    --listen "192.0.2.1$1:3478" --relay-ports "$2"
}

step "starting portal, relays, gateway, client"
start_portal
start_relay 1 50000-50999
start_relay 2 51000-51999
wait_for 10 "portal listening" in_ns "$NS_PUB" bash -c 'exec 3<>/dev/tcp/192.0.2.10/8080'
start gateway "$NS_GW" env RUST_LOG="$LOG" "$BIN_DIR/gateway" --portal-url wss://192.0.2.10:8080 \
  --ca-file "$WORK/ca.pem" --token gateway-token --tun-name zta-gw --state-dir "$WORK/gateway-state"
start client "$NS_CLI" env RUST_LOG="$LOG" "$BIN_DIR/client" --portal-url wss://192.0.2.10:8080 \
  --ca-file "$WORK/ca.pem" --token client-token --tun-name zta-cl --state-dir "$WORK/client-state"
wait_for 15 "client route to 10.0.0.5 through its TUN device" \
  sh -c "ip -n $NS_CLI route show 10.0.0.5 | grep -q zta-cl"

in_ns "$NS_RES" iperf3 -s -B 10.0.0.5 >"$WORK/iperf-server.log" 2>&1 &
PIDS[iperf_server]=$!

ping_ok() { in_ns "$NS_CLI" ping -c 1 -W 1 "$1"; }
relay_bytes() { in_ns "$NS_PUB" iptables -L INPUT -v -x -n | awk -v d="192.0.2.1$1" '$8 == d { print $2 }'; }
transfer() { # transfer BYTES [SECONDS]: a TCP transfer client -> 10.0.0.5, one retry for the server
  in_ns "$NS_CLI" timeout "${2:-30}" iperf3 -c 10.0.0.5 -n "$1" --connect-timeout 3000 >"$WORK/iperf.out" 2>&1 ||
    fail "TCP transfer of $1 to 10.0.0.5 failed: $(tail -n 3 "$WORK/iperf.out")"
  grep -E "receiver$" "$WORK/iperf.out" | sed 's/^/e2e:   /'
}
# A transfer of $1 that must go direct: the relays may carry at most 5 % of it.
direct_transfer() {
  local before relayed got
  before=$(($(relay_bytes 1) + $(relay_bytes 2)))
  transfer "$1"
  relayed=$(($(relay_bytes 1) + $(relay_bytes 2) - before)) got=$(received)
  [ $((relayed * 20)) -lt "$got" ] ||
    fail "the transfer went through a relay ($relayed bytes to the relays for $got received) although a direct path exists"
  step "  direct: $relayed bytes to the relays for $got received"
}
# Bytes the receiver got in the last transfer. iperf3 -n stops when the sender has written its
# bytes into its socket, and the receiver's count ends there: what was still queued (in the
# socket, the TUN queue, the tunnel) is cut off, the more so with TSO runs of 64 KiB queued.
# Every byte counted here crossed the tunnel, with WireGuard and TURN framing on top.
received() {
  awk '/receiver$/ { m = 1; if ($6 == "KBytes") m = 1024; if ($6 == "MBytes") m = 1048576;
    if ($6 == "GBytes") m = 1073741824; printf "%d\n", $5 * m }' "${1:-$WORK/iperf.out}"
}

step "ping 10.0.0.5"
wait_for 20 "a ping answer from 10.0.0.5" ping_ok 10.0.0.5
in_ns "$NS_CLI" ping -c 5 -i 0.2 -W 1 10.0.0.5 >"$WORK/ping.out" || fail "ping loss: $(tail -n 2 "$WORK/ping.out")"
wait_for 5 "iperf3 server" in_ns "$NS_RES" bash -c 'exec 3<>/dev/tcp/10.0.0.5/5201'
step "10 MiB TCP transfer, direct"
# Both NATs keep ports and firewall like routers, and UDP between them is allowed: ICE must find
# the direct path (server-reflexive to server-reflexive) and keep it, relays carrying (almost)
# nothing of the transfer. The traffic started with the first ping, before every candidate had
# arrived, so a relayed first nomination must have been upgraded by then.
direct_transfer 10M

step "unauthorized resource 10.0.0.6"
if in_ns "$NS_CLI" ping -c 3 -i 0.3 -W 1 10.0.0.6 >/dev/null 2>&1; then
  fail "10.0.0.6 answered a ping, the client has no policy for it"
fi
if in_ns "$NS_CLI" timeout 3 bash -c 'exec 3<>/dev/tcp/10.0.0.6/5201' 2>/dev/null; then
  fail "a TCP connection to 10.0.0.6 succeeded"
fi
resource_packets() { in_ns "$NS_RES" iptables -L INPUT -v -x -n | awk -v d="$1" '$8 == d { print $1 }'; }
seen=$(resource_packets 10.0.0.6)
[ "$seen" = "0" ] || fail "10.0.0.6 received $seen packets"

step "blocking direct UDP between the NATs"
in_ns "$NS_PUB" iptables -I FORWARD -p udp -j DROP
blocked_at=$(date +%s)
# ICE checks an active path every second and gives it up after 4 unanswered checks (about 3 s
# after the first); the ping loop and whole seconds add up to 2 s to what this measures.
PATH_FAILOVER=8
wait_for $PATH_FAILOVER "traffic again after the direct path was blocked" ping_ok 10.0.0.5
step "  traffic flows again $(($(date +%s) - blocked_at))s after the block"
before1=$(relay_bytes 1) before2=$(relay_bytes 2)
transfer 5M
used1=$(($(relay_bytes 1) - before1)) used2=$(($(relay_bytes 2) - before2))
got=$(received)
echo "e2e:   bytes to relay 1: $used1, relay 2: $used2; received $got"
[ "$got" -gt 1000000 ] || fail "the 5 MiB transfer delivered only $got bytes"
if [ "$used1" -ge "$got" ]; then
  in_use=1 other=2
elif [ "$used2" -ge "$got" ]; then
  in_use=2 other=1
else
  fail "the 5 MiB transfer did not go through a relay (relay 1: $used1 B, relay 2: $used2 B, received $got B)"
fi

step "killing relay $in_use during a transfer"
# The transfer (TCP) must survive: the connection moves to relay $other within 5 s, the promise
# for a relay in use that dies, and TCP retransmits across the gap. The relay's machine answers
# what is sent to the dead process with ICMP port unreachable; the nodes read it from their
# sockets' error queues and leave the relay at the first one, without waiting for ICE's checks.
RELAY_FAILOVER=5
in_ns "$NS_CLI" timeout 90 iperf3 -c 10.0.0.5 -t 8 --connect-timeout 3000 >"$WORK/iperf-kill.out" 2>&1 &
PIDS[iperf_kill]=$!
sleep 2
stop "relay$in_use"
killed_at=$(date +%s)
wait_for $RELAY_FAILOVER "traffic through relay $other after relay $in_use died" ping_ok 10.0.0.5
step "  traffic again $(($(date +%s) - killed_at))s after the kill"
wait "${PIDS[iperf_kill]}" || fail "the transfer broke when relay $in_use died: $(tail -n 3 "$WORK/iperf-kill.out")"
unset "PIDS[iperf_kill]"
grep -E "receiver$" "$WORK/iperf-kill.out" | sed 's/^/e2e:   /'
before_other=$(relay_bytes "$other")
transfer 2M
moved=$(($(relay_bytes "$other") - before_other)) got=$(received)
[ "$got" -gt 200000 ] || fail "a 2 MiB transfer after relay $in_use died delivered only $got bytes"
[ "$moved" -ge "$got" ] || fail "a 2 MiB transfer after relay $in_use died put only $moved of the $got bytes received through relay $other"
step "  the transfer completed; relay $other carries the traffic now"

step "direct UDP allowed again"
# Every direct pair failed while UDP was blocked. While data flows on the relayed path the
# nodes check them again every 5 s (BETTER_PATH_RETRY) and ICE nominates the direct pair once
# it answers: within DIRECT_WITHIN (10 s; whole seconds and the pings add up to 2 s more) the
# relay must carry no more than the checks on its pairs while 5 pings of 1 KB cross the tunnel.
DIRECT_BOUND=12
in_ns "$NS_PUB" iptables -D FORWARD -p udp -j DROP
unblocked_at=$(date +%s)
relays_bytes() { # relays_bytes N...: what reaches relays N... together
  local n sum=0
  for n in "$@"; do sum=$((sum + $(relay_bytes "$n"))); done
  echo "$sum"
}
off_the_relays() { # off_the_relays N...: relays N... carry 5 pings of 1 KB no more
  local before
  before=$(relays_bytes "$@")
  in_ns "$NS_CLI" ping -c 5 -i 0.2 -W 1 -s 1000 10.0.0.5 >/dev/null 2>&1 &&
    [ $(($(relays_bytes "$@") - before)) -lt 2500 ]
}
wait_for $DIRECT_BOUND "the direct path again once direct UDP works" off_the_relays "$other"
step "  direct again $(($(date +%s) - unblocked_at))s after direct UDP works"
direct_transfer 5M

step "restarting the portal"
# While the portal is away the established tunnel carries on. When it returns (a new generation:
# new PSKs, new relay credentials, no memory of flows) its `init` to the gateway lists every pair
# a policy allows, so the gateway keeps what it has and revokes only what policy removed. New
# connections must work within PORTAL_RECOVERY seconds of its return.
PORTAL_RECOVERY=60
stop portal
in_ns "$NS_CLI" ping -c 5 -i 0.4 -W 1 10.0.0.5 >"$WORK/ping.out" || fail "the tunnel broke while the portal was away: $(tail -n 2 "$WORK/ping.out")"
connected_before=$(grep -c "Portal connected" "$WORK/client.log" || true)
start_portal
returned_at=$(date +%s)
wait_for 30 "the client back on the portal" \
  sh -c "[ \$(grep -c 'Portal connected' '$WORK/client.log') -gt $connected_before ]"
wait_for $PORTAL_RECOVERY "a ping answer after the portal returned" ping_ok 10.0.0.5
step "  traffic again $(($(date +%s) - returned_at))s after the portal returned"
transfer 2M

step "revoking the policy live (portal admin remove-policy)"
# The portal tells the client and the gateway as it commits the change: the next ping must go
# unanswered, and nothing of the client's may reach 10.0.0.5 after a grace for packets already in
# flight.
REVOKE_BOUND=2
admin list | grep -q "c1 -> r1" || fail "the admin CLI does not list the policy c1 -> r1"
admin remove-policy --client c1 --resource r1 >"$WORK/admin.out" 2>&1 ||
  fail "remove-policy failed: $(cat "$WORK/admin.out")"
revoked_at=$(date +%s)
wait_for $REVOKE_BOUND "the ping to 10.0.0.5 to stop after the revocation" sh -c "! ip netns exec $NS_CLI ping -c 1 -W 1 10.0.0.5"
sleep 1
reached_before=$(resource_packets 10.0.0.5)
in_ns "$NS_CLI" ping -c 5 -i 0.2 -W 1 10.0.0.5 >/dev/null 2>&1 && fail "10.0.0.5 answered after the policy was removed"
reached=$(($(resource_packets 10.0.0.5) - reached_before))
[ "$reached" -eq 0 ] || fail "$reached packets reached 10.0.0.5 after the policy was removed"
step "  no answer and nothing delivered within $(($(date +%s) - revoked_at))s of the revocation"
admin add-policy --client c1 --resource r1 >/dev/null 2>&1 || fail "add-policy back failed"
admin add-policy --client 1 --resource 2 --duration 10m >/dev/null 2>&1 || fail "add-policy for 10.0.0.6 failed"
wait_for 20 "a ping answer from 10.0.0.6 once granted" ping_ok 10.0.0.6
wait_for 20 "a ping answer from 10.0.0.5 once granted again" ping_ok 10.0.0.5
step "  granted live: 10.0.0.5 and 10.0.0.6 answer"

step "cutting the client's link to the portal for 25 s"
# Longer than the heartbeat interval and its timeout (15 s + 5 s), so a heartbeat sent into the
# cut goes unanswered and the client gives the link up before the cut heals, then reconnects once
# it does (a real TCP connection that carried nothing during a shorter cut would simply carry on). Meanwhile the proven tunnel to 10.0.0.5 must keep
# working, and a policy granted during the cut must reach the client when it rejoins: 10.0.0.6 must
# answer within PORTAL_REJOIN seconds of the heal, the model's bound.
PORTAL_REJOIN=25
admin remove-policy --client c1 --resource r2 >/dev/null 2>&1 || fail "remove-policy for 10.0.0.6 failed"
wait_for 5 "10.0.0.6 to stop answering" sh -c "! ip netns exec $NS_CLI ping -c 1 -W 1 10.0.0.6"
portal_cut() { # portal_cut -I|-D: drops (or stops dropping) TCP between the client's NAT and the portal
  in_ns "$NS_PUB" iptables "$1" INPUT -s 203.0.113.2 -p tcp --dport 8080 -j DROP
  in_ns "$NS_PUB" iptables "$1" OUTPUT -d 203.0.113.2 -p tcp --sport 8080 -j DROP
}
lost_before=$(grep -c "Portal disconnected" "$WORK/client.log" || true)
portal_cut -I
cut_at=$(date +%s)
admin add-policy --client c1 --resource r2 >/dev/null 2>&1 || fail "add-policy for 10.0.0.6 during the cut failed"
in_ns "$NS_CLI" ping -c 10 -i 1 -W 1 10.0.0.5 >"$WORK/ping.out" || fail "the tunnel broke while the portal link was cut: $(tail -n 2 "$WORK/ping.out")"
left=$((cut_at + 25 - $(date +%s)))
[ "$left" -le 0 ] || sleep "$left"
portal_cut -D
healed_at=$(date +%s)
[ "$(grep -c "Portal disconnected" "$WORK/client.log")" -gt "$lost_before" ] ||
  fail "the client did not notice its portal link was cut"
wait_for $PORTAL_REJOIN "a ping answer from 10.0.0.6, granted during the cut" ping_ok 10.0.0.6
step "  10.0.0.6 answers $(($(date +%s) - healed_at))s after the heal"

step "the client's address changes (192.168.1.2 -> 192.168.1.3)"
# A laptop handed a new address on its network (DHCP, another access point): every 5-tuple the
# client had is gone: its host candidate, its NAT mappings (so its public address), its relay
# allocations and its TCP connection to the portal. The client hears of it from netlink, takes
# the new address as its host candidate, allocates anew on the relays and reconnects to the
# portal at once; the gateway follows the authenticated peer's new address. Traffic must be back
# within ADDRESS_CHANGE seconds (the model's bound for a client's new public address, plus the
# ping's whole second), and the path must be direct again.
ADDRESS_CHANGE=3
connected_before=$(grep -c "Portal connected" "$WORK/client.log" || true)
in_ns "$NS_CLI" sh -c 'echo 1 > /proc/sys/net/ipv4/conf/eth0/promote_secondaries'
in_ns "$NS_CLI" ip addr add 192.168.1.3/24 dev eth0
in_ns "$NS_CLI" ip addr del 192.168.1.2/24 dev eth0
in_ns "$NS_CLI" ip route replace default via 192.168.1.1
moved_at=$(date +%s)
wait_for $ADDRESS_CHANGE "a ping answer after the client's address changed" ping_ok 10.0.0.5
step "  traffic again $(($(date +%s) - moved_at))s after the address change"
wait_for 5 "the client back on the portal from its new address" \
  sh -c "[ \$(grep -c 'Portal connected' '$WORK/client.log') -gt $connected_before ]"
step "  on the portal again $(($(date +%s) - moved_at))s after the address change"
wait_for $DIRECT_BOUND "the direct path again after the address change" off_the_relays 1 2
direct_transfer 2M

step "restarting the gateway"
# The gateway keeps its key across restarts (its state directory): the portal tells the new
# process apart by the number it draws at each start, and tells the client, which fails its
# connection to the old process at once. Its next packet goes on a new connection, instead of
# waiting while ICE gives up every pair of the dead one. Traffic must be back within
# GATEWAY_RESTART seconds of the new process joining (the model's bound for a restart).
GATEWAY_RESTART=5
stop gateway
start gateway "$NS_GW" env RUST_LOG="$LOG" "$BIN_DIR/gateway" --portal-url wss://192.0.2.10:8080 \
  --ca-file "$WORK/ca.pem" --token gateway-token --tun-name zta-gw --state-dir "$WORK/gateway-state"
wait_for 10 "the restarted gateway on the portal" \
  sh -c "[ \$(grep -c 'Portal connected' '$WORK/gateway.log') -gt 0 ]"
rejoined_at=$(date +%s)
wait_for $GATEWAY_RESTART "a ping answer after the gateway's restart" ping_ok 10.0.0.5
step "  traffic again $(($(date +%s) - rejoined_at))s after the restarted gateway joined"
grep -q "gateway restarted" "$WORK/client.log" || fail "the client was not told of the gateway's restart"

step "port-randomising NATs (MASQUERADE --random-fully)"
# Each NAT now picks a new random port per destination (address-and-port-dependent mapping): no
# hole punch can work, only a relay carries the traffic. The client restarts so that its
# mappings are made under the new rules.
for ns in "$NS_NATC" "$NS_NATG"; do
  in_ns "$ns" iptables -t nat -R POSTROUTING 1 -o wan -j MASQUERADE --random-fully
done
stop client
start client "$NS_CLI" env RUST_LOG="$LOG" "$BIN_DIR/client" --portal-url wss://192.0.2.10:8080 \
  --ca-file "$WORK/ca.pem" --token client-token --tun-name zta-cl --state-dir "$WORK/client-state"
restarted_at=$(date +%s)
wait_for 15 "client route to 10.0.0.5 after its restart" \
  sh -c "ip -n $NS_CLI route show 10.0.0.5 | grep -q zta-cl"
wait_for 30 "a ping answer through port-randomising NATs" ping_ok 10.0.0.5
step "  traffic $(($(date +%s) - restarted_at))s after the client's restart"
before_relay=$(relay_bytes "$other")
transfer 2M
moved=$(($(relay_bytes "$other") - before_relay)) got=$(received)
[ "$moved" -ge "$got" ] || fail "through port-randomising NATs only $moved of $got bytes went through relay $other"
step "  relayed: $moved bytes through relay $other for $got received"
step "all checks passed"

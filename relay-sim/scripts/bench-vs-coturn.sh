#!/usr/bin/env bash
# Runs the same turnutils_uclient load against coturn's turnserver and against our release `relay`,
# both on loopback, and prints packet rate, loss and the ratio ours/coturn.
#
# Load (override with env): N=5000 messages per client, M=10 clients, L=1200-byte messages,
# client-to-client (-y), no RTCP (-c), no pacing (-z 0).
# Needs coturn (turnserver, turnutils_uclient): apt-get install -y --no-install-recommends coturn
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-5000}
M=${M:-10}
L=${L:-1200}
SECRET=bench-secret
REALM=bench
COTURN_PORT=${COTURN_PORT:-23478}
OURS_PORT=${OURS_PORT:-24478}
# coturn's relay threads (default: one per CPU, as coturn ships); ours is one event loop.
COTURN_THREADS=${COTURN_THREADS:-}

for tool in turnserver turnutils_uclient; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bench-vs-coturn: $tool is missing: apt-get install -y --no-install-recommends coturn" >&2
    exit 1
  }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p relay-sim --bin relay
RELAY_BIN="$CARGO_TARGET_DIR/release/relay"

workdir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$workdir"
}
trap cleanup EXIT

wait_port() { # wait until something answers STUN on 127.0.0.1:$1
  for _ in $(seq 50); do
    if timeout 1 turnutils_stunclient -p "$1" 127.0.0.1 >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "bench-vs-coturn: nothing answers on 127.0.0.1:$1" >&2
  exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# run_load NAME PORT PID: prints "rate loss_percent sent received lost seconds server_cpu_seconds"
run_load() {
  local name=$1 port=$2 pid=$3 out="$workdir/$1.out"
  local start end cpu0 cpu1
  cpu0=$(cpu_ticks "$pid")
  start=$(date +%s%N)
  turnutils_uclient -y -c -z 0 -n "$N" -m "$M" -l "$L" -p "$port" -W "$SECRET" -u bench 127.0.0.1 >"$out" 2>&1 || {
    echo "bench-vs-coturn: uclient against $name failed:" >&2
    tail -20 "$out" >&2
    exit 1
  }
  end=$(date +%s%N)
  cpu1=$(cpu_ticks "$pid")
  local totals sent recv lost secs
  totals=$(grep 'start_mclient: tot_send_msgs=' "$out" | tail -1)
  sent=$(sed -E 's/.*tot_send_msgs=([0-9]+).*/\1/' <<<"$totals")
  recv=$(sed -E 's/.*tot_recv_msgs=([0-9]+).*/\1/' <<<"$totals")
  lost=$(grep 'Total lost packets' "$out" | sed -E 's/.*Total lost packets ([0-9]+).*/\1/')
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  awk -v r="$recv" -v s="$sent" -v l="$lost" -v t="$secs" -v c=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.0f %.3f %d %d %d %.3f %.2f\n", r / t, (s > 0 ? 100 * l / s : 0), s, r, l, t, c / hz }'
}

# coturn
coturn_args=(-n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$COTURN_PORT"
  --min-port 30000 --max-port 30999 --use-auth-secret "--static-auth-secret=$SECRET" --realm "$REALM"
  --no-cli --no-tls --no-dtls --no-tcp --no-tcp-relay --allow-loopback-peers
  --log-file "$workdir/coturn.log" --simple-log --no-stdout-log)
[ -n "$COTURN_THREADS" ] && coturn_args+=(--relay-threads "$COTURN_THREADS")
turnserver "${coturn_args[@]}" >/dev/null 2>&1 &
pids+=($!)
wait_port "$COTURN_PORT"
read -r c_rate c_loss c_sent c_recv c_lost c_secs c_cpu < <(run_load coturn "$COTURN_PORT" "${pids[0]}")
kill "${pids[0]}" 2>/dev/null || true

# ours
"$RELAY_BIN" --listen "127.0.0.1:$OURS_PORT" --relay-ports 31000-31999 --auth-secret "$SECRET" \
  --realm "$REALM" --log warn 2>"$workdir/relay.log" &
pids+=($!)
wait_port "$OURS_PORT"
read -r o_rate o_loss o_sent o_recv o_lost o_secs o_cpu < <(run_load relay "$OURS_PORT" "${pids[1]}")

echo "load: turnutils_uclient -y -c -z 0 -n $N -m $M -l $L (loopback, $(nproc) CPUs)"
echo "(packets/s = messages received by the clients / wall time; each message crosses the server twice)"
printf '%-8s %12s %10s %10s %8s %8s %8s %12s\n' server "packets/s" sent received lost "loss%" seconds "server-CPU-s"
printf '%-8s %12s %10s %10s %8s %8s %8s %12s\n' coturn "$c_rate" "$c_sent" "$c_recv" "$c_lost" "$c_loss" "$c_secs" "$c_cpu"
printf '%-8s %12s %10s %10s %8s %8s %8s %12s\n' relay "$o_rate" "$o_sent" "$o_recv" "$o_lost" "$o_loss" "$o_secs" "$o_cpu"
awk -v o="$o_rate" -v c="$c_rate" 'BEGIN { printf "ratio relay/coturn (packets/s): %.2f\n", (c > 0 ? o / c : 0) }'
awk -v o="$o_cpu" -v c="$c_cpu" 'BEGIN { if (o > 0) printf "server CPU time coturn/relay: %.2f\n", c / o }'

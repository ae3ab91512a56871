#!/usr/bin/env bash
# Runs every scenario RUNS times against a fresh messenger-server each time (in memory
# by default; STORES=sqlite for the durable store on an empty data directory per run),
# and, in the same invocation, against the floor relay, writing one JSON per run to
# OUT. Load goes to 127.0.0.0/8 only; every run is bounded in time and stops by itself.
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   messenger-bench/scripts/bench.sh [OUT] [RUNS] [SCENARIOS...]
#
# Scenarios: idle pairs pairs-rate pairs-rate-low pairs-15k group biggroup biggroup-half
# biggroup-full reconnect (default: all but pairs-15k and the biggroups). pairs-rate sends RATE
# messages/s in all (default 50000), pairs-rate-low 20000. Waits for the 1-minute load
# average to fall under MAX_LOAD (default 2.5) before each run, up to 30 s, so runs do
# not land on top of a compile.
#
# Pinning (the default): the server and the floor relay run on core SERVER_CPUS (0), the
# generator on BENCH_CPUS (1), so each figure is per core and the floor gets exactly the
# server's conditions (it is started here, pinned like the server, not as the
# generator's child). PIN=off runs all three unpinned (the scheduler spreads them over
# both cores; the figures then include the contention between them).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-bench}
RUNS=${2:-3}
shift 2 2>/dev/null || shift $#
SCENARIOS=${*:-idle pairs pairs-rate pairs-rate-low group reconnect}
PORT=${PORT:-18090}
FLOOR_PORT=${FLOOR_PORT:-$((PORT + 1))}
MAX_LOAD=${MAX_LOAD:-2.5}
# SERVER / BENCH: the binaries (another build of the server to compare, for example).
# SERVER_CPUS / BENCH_CPUS: the cores of the server (and floor) and of the generator.
# FLOOR=off: no floor run (when comparing two servers).
# EXTRA_ARGS: more generator arguments.
# SERVER_ARGS: more server arguments (e.g. `--read-buffer-bytes 512`).
# STORES: the server's stores, each run of each scenario once per store, interleaved
# (`STORES="memory sqlite"` compares them in one invocation; the runs are then named
# SCENARIO.STORE-N). memory (default) or sqlite (an empty data directory per run,
# OUT/NAME-N.data, its size appended to NAME-N.txt and then removed); SYNC=full|normal
# is the SQLite store's durability (default full).
STORES=${STORES:-memory}
SYNC=${SYNC:-full}
STORE=memory
SERVER=${SERVER:-target/release/messenger-server}
BENCH=${BENCH:-target/release/messenger-bench}
PIN=${PIN:-on}
SERVER_PIN=(); BENCH_PIN=()
if [ "$PIN" != off ]; then
  SERVER_PIN=(taskset -c "${SERVER_CPUS:-0}")
  BENCH_PIN=(taskset -c "${BENCH_CPUS:-1}")
fi
mkdir -p "$OUT"

wait_for_quiet() {
  for _ in $(seq 30); do
    awk -v m="$MAX_LOAD" '{exit !($1 < m)}' /proc/loadavg && return
    sleep 1
  done
  echo "note: load average still $(cut -d' ' -f1 /proc/loadavg)" >&2
}

wait_listening() { # port: wait up to 10 s for a listener
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
}

run() { # name run-number bench-args...
  local name=$1 n=$2; shift 2
  wait_for_quiet
  # Limits raised so the server's own protections do not cap the load generator:
  # the default per-session rate limit is 50 frames/s and max connections 10 000.
  # taskset execs the server, so $! is the server's pid.
  local store_args=(--store memory) data="$OUT/$name-$n.data"
  # STORES=default: no store flag (a server binary from before --store existed).
  [ "$STORE" = default ] && store_args=()
  if [ "$STORE" = sqlite ]; then
    rm -rf "$data"
    store_args=(--store sqlite --data-dir "$data" --sync "$SYNC")
  fi
  # shellcheck disable=SC2086
  RUST_LOG=warn "${SERVER_PIN[@]}" "$SERVER" --listen "127.0.0.1:$PORT" --max-connections 1000000 \
    --rate-limit 100000000 --rate-burst 100000000 "${store_args[@]}" ${SERVER_ARGS:-} \
    >"$OUT/$name-$n.server.log" 2>&1 &
  local pid=$! fpid="" floor=(--floor off)
  if [ "${FLOOR:-on}" != off ]; then
    "${SERVER_PIN[@]}" "$BENCH" floor --listen "127.0.0.1:$FLOOR_PORT" >"$OUT/$name-$n.floor.log" 2>&1 &
    fpid=$!
    floor=(--floor "ws://127.0.0.1:$FLOOR_PORT/ws" --floor-pid "$fpid")
    wait_listening "$FLOOR_PORT"
  fi
  wait_listening "$PORT"
  echo "== $name run $n (pin $PIN, load $(cut -d' ' -f1 /proc/loadavg))" >&2
  # Kernel counters that explain a slow connect ramp (listen queue overflows, SYN
  # retransmissions), absolute before and after the run.
  nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPSynRetrans TcpExtTCPReqQFullDrop \
    >"$OUT/$name-$n.nstat" 2>/dev/null || true
  # shellcheck disable=SC2086
  "${BENCH_PIN[@]}" "$BENCH" "$@" "${floor[@]}" ${EXTRA_ARGS:-} --url "ws://127.0.0.1:$PORT/ws" --server-pid "$pid" \
    --json "$OUT/$name-$n.json" >"$OUT/$name-$n.txt" 2>"$OUT/$name-$n.progress" || echo "run failed" >&2
  nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPSynRetrans TcpExtTCPReqQFullDrop \
    >>"$OUT/$name-$n.nstat" 2>/dev/null || true
  kill "$pid" $fpid; wait "$pid" $fpid 2>/dev/null || true
  if [ "$STORE" = sqlite ]; then
    du -sk "$data" | awk '{print "data directory: " $1 " KiB"}' >>"$OUT/$name-$n.txt"
    rm -rf "$data"
  fi
  sed -n '/results/,$p' "$OUT/$name-$n.txt" >&2
}

for n in $(seq "$RUNS"); do
  for s in $SCENARIOS; do
   for STORE in $STORES; do
    # Several stores: one file name per store (pairs.sqlite-1.json).
    sfx=""; set -- $STORES; [ $# -gt 1 ] && sfx=".$STORE"
    case $s in
      idle) run "idle$sfx" "$n" idle --connections 19000 --duration 5 ;;
      pairs) run "pairs$sfx" "$n" pairs --pairs 50 --duration 10 ;;
      pairs-rate) run "pairs-rate$sfx" "$n" pairs --pairs 50 --rate "${RATE:-50000}" --duration 10 ;;
      pairs-rate-low) run "pairs-rate-low$sfx" "$n" pairs --pairs 50 --rate 20000 --duration 10 ;;
      # Moderate load: the issue 17 figure (CPU per message, tails at a fixed 15k/s).
      pairs-15k) run "pairs-15k$sfx" "$n" pairs --pairs 50 --rate 15000 --duration 10 ;;
      group) run "group$sfx" "$n" group --connections 200 --group-size 10 --duration 10 ;;
      # A 10 000-member group with 2 000 online: at 100 sends/s (~200k deliveries/s, the
      # issue 17 target) and at full speed.
      biggroup) run "biggroup$sfx" "$n" biggroup --group-size 10000 --online 2000 --senders 2 --rate 100 --duration 10 ;;
      # The same at half that rate, below saturation of one core, for latency.
      biggroup-half) run "biggroup-half$sfx" "$n" biggroup --group-size 10000 --online 2000 --senders 2 --rate 50 --duration 10 ;;
      biggroup-full) run "biggroup-full$sfx" "$n" biggroup --group-size 10000 --online 2000 --senders 2 --duration 10 ;;
      reconnect) run "reconnect$sfx" "$n" reconnect --connections 1000 --jitter-ms 1000 --messages 5 --duration 30 ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
   done
  done
done

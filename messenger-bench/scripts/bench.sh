#!/usr/bin/env bash
# Runs every scenario RUNS times against a fresh in-memory messenger-server each time
# (and, in the same invocation, against the floor relay), writing one JSON per run to
# OUT. Load goes to 127.0.0.0/8 only; every run is bounded in time and stops by itself.
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   messenger-bench/scripts/bench.sh [OUT] [RUNS] [SCENARIOS...]
#
# Scenarios: idle pairs pairs-rate pairs-rate-low group reconnect (default: all).
# Waits for the 1-minute load average to fall under MAX_LOAD (default 2.5) before
# each run, up to 30 s, so runs do not land on top of a compile.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-bench}
RUNS=${2:-3}
shift 2 2>/dev/null || shift $#
SCENARIOS=${*:-idle pairs pairs-rate pairs-rate-low group reconnect}
PORT=${PORT:-18090}
MAX_LOAD=${MAX_LOAD:-2.5}
# SERVER / BENCH: the binaries (another build of the server to compare, for example).
# SERVER_CPUS / BENCH_CPUS: pin each to cores with taskset (e.g. 0 and 1).
# EXTRA_ARGS: more generator arguments (e.g. `--floor off` when comparing two servers).
# SERVER_ARGS: more server arguments (e.g. `--read-buffer-bytes 512`).
SERVER=${SERVER:-target/release/messenger-server}
BENCH=${BENCH:-target/release/messenger-bench}
SERVER_PIN=(); [ -n "${SERVER_CPUS:-}" ] && SERVER_PIN=(taskset -c "$SERVER_CPUS")
BENCH_PIN=(); [ -n "${BENCH_CPUS:-}" ] && BENCH_PIN=(taskset -c "$BENCH_CPUS")
mkdir -p "$OUT"

wait_for_quiet() {
  for _ in $(seq 30); do
    awk -v m="$MAX_LOAD" '{exit !($1 < m)}' /proc/loadavg && return
    sleep 1
  done
  echo "note: load average still $(cut -d' ' -f1 /proc/loadavg)" >&2
}

run() { # name run-number bench-args...
  local name=$1 n=$2; shift 2
  wait_for_quiet
  # Limits raised so the server's own protections do not cap the load generator:
  # the default per-session rate limit is 50 frames/s and max connections 10 000.
  # taskset execs the server, so $! is the server's pid.
  RUST_LOG=warn "${SERVER_PIN[@]}" "$SERVER" --listen "127.0.0.1:$PORT" --max-connections 1000000 \
    --rate-limit 100000000 --rate-burst 100000000 ${SERVER_ARGS:-} >"$OUT/$name-$n.server.log" 2>&1 &
  local pid=$!
  sleep 1
  echo "== $name run $n (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  # shellcheck disable=SC2086
  "${BENCH_PIN[@]}" "$BENCH" "$@" ${EXTRA_ARGS:-} --url "ws://127.0.0.1:$PORT/ws" --server-pid "$pid" \
    --json "$OUT/$name-$n.json" >"$OUT/$name-$n.txt" 2>"$OUT/$name-$n.progress" || echo "run failed" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sed -n '/results/,$p' "$OUT/$name-$n.txt" >&2
}

for n in $(seq "$RUNS"); do
  for s in $SCENARIOS; do
    case $s in
      idle)           run idle "$n" idle --connections 19000 --duration 5 ;;
      pairs)          run pairs "$n" pairs --pairs 50 --duration 10 ;;
      pairs-rate)     run pairs-rate "$n" pairs --pairs 50 --rate 50000 --duration 10 ;;
      pairs-rate-low) run pairs-rate-low "$n" pairs --pairs 50 --rate 20000 --duration 10 ;;
      group)          run group "$n" group --connections 200 --group-size 10 --duration 10 ;;
      reconnect)      run reconnect "$n" reconnect --connections 1000 --jitter-ms 1000 --messages 5 --duration 30 ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done

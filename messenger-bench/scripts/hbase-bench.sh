#!/usr/bin/env bash
# The HBase figures of docs/benchmarks.md: messenger-server on a tuned single-node HBase
# against the same server in memory, the raw Thrift2 putMultiple ceiling, one hot group
# thread, and latency until message_sent at half the maximum rate. RUNS rounds; each
# round runs every scenario once, and each comparison happens inside one round:
#
#   pairs    `pairs` on HBase, then on memory (same flags, one messenger-bench
#            invocation: the memory server stands in as the "floor" target), then
#            hbase_bench's raw putMultiple ceiling at the same concurrency (and the
#            checkAndPut ceiling, the shape of a seq claim); with
#            BEFORE_SERVER=PATH (a messenger-server built from an older commit, e.g.
#            schema v1), also `pairs` on HBase through that binary (pairs-before-N)
#            and `pairs` in memory, this build against that one as the floor
#            (pairs-mem-N)
#   hot      one group of 200 members, all online, 20 of them sending, on HBase
#   hot-before  the same through BEFORE_SERVER (for a same-job A/B of two builds)
#   latency  `pairs` on HBase at half the delivered rate this round's `pairs` measured
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   cargo build --release -p messenger-storage-hbase --example hbase_bench
#   /work/tools/quiet messenger-bench/scripts/hbase-bench.sh [OUT] [RUNS] [SCENARIOS...]
#   python3 messenger-bench/scripts/medians.py OUT
#
# To compare with an older build in the same run:
#   git worktree add --detach /tmp/before OLD_COMMIT
#   (cd /tmp/before && cargo build --release -p messenger-server --features cli)
#   BEFORE_SERVER=/tmp/before/target/release/messenger-server /work/tools/quiet \
#     messenger-bench/scripts/hbase-bench.sh OUT 3
#
# It starts its own HBase with HBASE_PROFILE=tuned (full JIT, 4 GiB heap: see
# scripts/hbase.sh) in target/hbase-bench-run, from empty, and stops it at the end.
# Every server gets fresh tables (prefix per round). Load stays on 127.0.0.0/8; every
# run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-hbase-bench}
RUNS=${2:-3}
shift 2 2>/dev/null || shift $#
SCENARIOS=${*:-pairs hot latency}
PORT=${PORT:-18190}
MEM_PORT=${MEM_PORT:-18191}
REL=${CARGO_TARGET_DIR:-target}/release
SERVER=$REL/messenger-server
BENCH=$REL/messenger-bench
HBENCH=$REL/examples/hbase_bench
PAIRS=(--pairs 50 --window 8 --duration 10)
export HBASE_RUN_DIR=${HBASE_RUN_DIR:-$PWD/target/hbase-bench-run}
export HBASE_PROFILE=${HBASE_PROFILE:-tuned}
mkdir -p "$OUT"
BEFORE_SERVER=${BEFORE_SERVER:-}
for b in "$SERVER" "$BENCH" "$HBENCH" $BEFORE_SERVER; do
  [ -x "$b" ] || { echo "$b is missing: run the cargo build line at the top of $0" >&2; exit 1; }
done

log() { echo "[hbase-bench $(date +%T)] $*" >&2; }

scripts/hbase.sh stop >/dev/null 2>&1 || true
rm -rf "$HBASE_RUN_DIR"
ADDR=$(scripts/hbase.sh start | sed -n 's/^HBASE_THRIFT=//p')
[ -n "$ADDR" ] || { echo "HBase did not start (logs in $HBASE_RUN_DIR/logs)" >&2; exit 1; }
trap 'scripts/hbase.sh stop >/dev/null 2>&1 || true' EXIT
log "HBase ($HBASE_PROFILE) at $ADDR"
HBASE_PIDS="$(cat "$HBASE_RUN_DIR"/master.pid "$HBASE_RUN_DIR"/thrift.pid 2>/dev/null | tr '\n' ' ')"

. messenger-bench/scripts/hbase-cpu.sh

SERVER_FLAGS=(--max-connections 1000000 --rate-limit 100000000 --rate-burst 100000000)
PIDS=()
start_server() { # port log args...
  local port=$1 log=$2; shift 2
  RUST_LOG=warn "${BIN:-$SERVER}" --listen "127.0.0.1:$port" "${SERVER_FLAGS[@]}" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server on $port did not start: $(tail -n 5 "$log")" >&2
  return 1
}
stop_servers() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}

bench() { # name round args...
  local name=$1 n=$2; shift 2
  local c0; c0=$(hbase_cpu)
  log "$name round $n: messenger-bench $*"
  "$BENCH" "$@" --json "$OUT/$name-$n.json" >"$OUT/$name-$n.txt" 2>"$OUT/$name-$n.progress" \
    || echo "run failed (see $OUT/$name-$n.progress)" >&2
  local c1; c1=$(hbase_cpu)
  python3 - "$OUT/$name-$n.json" "$c0" "$c1" <<'PY'
import json, sys
p, c0, c1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
try:
    d = json.load(open(p))
except (OSError, ValueError):
    sys.exit(0)
d["hbase_cpu_secs"] = round(c1 - c0, 2)
if d.get("delivered"):
    d["hbase_cpu_us_per_delivered"] = round((c1 - c0) * 1e6 / d["delivered"], 1)
json.dump(d, open(p, "w"), indent=1)
PY
  sed -n '/results/,$p' "$OUT/$name-$n.txt" >&2
}

delivered_rate() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['delivered_per_sec']))" "$1"; }

# Warm-up (JIT on both JVMs, region caches): one discarded pairs run.
start_server "$PORT" "$OUT/warmup.server.log" --hbase "$ADDR" --hbase-table-prefix warm_
"$BENCH" pairs --url "ws://127.0.0.1:$PORT/ws" "${PAIRS[@]}" --floor off --duration 15 \
  >/dev/null 2>"$OUT/warmup.progress" || true
"$HBENCH" "$ADDR" ceiling --secs 5 >/dev/null 2>&1 || true
stop_servers

for n in $(seq "$RUNS"); do
  for s in $SCENARIOS; do
    case $s in
      pairs)
        start_server "$PORT" "$OUT/pairs-$n.server.log" --hbase "$ADDR" --hbase-table-prefix "p${n}_"
        start_server "$MEM_PORT" "$OUT/pairs-$n.mem.log" --store memory
        bench pairs "$n" pairs --url "ws://127.0.0.1:$PORT/ws" --server-pid "${PIDS[0]}" \
          --floor "ws://127.0.0.1:$MEM_PORT/ws" --floor-pid "${PIDS[1]}" "${PAIRS[@]}"
        stop_servers
        if [ -n "$BEFORE_SERVER" ]; then
          BIN=$BEFORE_SERVER start_server "$PORT" "$OUT/pairs-before-$n.server.log" \
            --hbase "$ADDR" --hbase-table-prefix "b${n}_"
          bench pairs-before "$n" pairs --url "ws://127.0.0.1:$PORT/ws" --server-pid "${PIDS[0]}" \
            "${PAIRS[@]}" --floor off
          stop_servers
          # The in-memory path, this build against the older one (as the floor).
          start_server "$PORT" "$OUT/pairs-mem-$n.server.log" --store memory
          BIN=$BEFORE_SERVER start_server "$MEM_PORT" "$OUT/pairs-mem-$n.before.log" --store memory
          bench pairs-mem "$n" pairs --url "ws://127.0.0.1:$PORT/ws" --server-pid "${PIDS[0]}" \
            --floor "ws://127.0.0.1:$MEM_PORT/ws" --floor-pid "${PIDS[1]}" "${PAIRS[@]}"
          stop_servers
        fi
        log "ceiling round $n"
        "$HBENCH" "$ADDR" ceiling --connections 32 --rows 25 --secs 10 \
          --json "$OUT/ceiling-$n.json" >"$OUT/ceiling-$n.txt" 2>&1 || echo "ceiling failed" >&2
        cat "$OUT/ceiling-$n.txt" >&2
        # The shape of the seq claim: one checkAndPut of a row holding 25 cells.
        "$HBENCH" "$ADDR" ceiling --cas --connections 32 --rows 25 --secs 10 \
          --json "$OUT/ceilingcas-$n.json" >"$OUT/ceilingcas-$n.txt" 2>&1 || echo "cas ceiling failed" >&2
        cat "$OUT/ceilingcas-$n.txt" >&2
        ;;
      hot|hot-before)
        bin=$SERVER
        if [ "$s" = hot-before ]; then
          [ -n "$BEFORE_SERVER" ] || { echo "hot-before needs BEFORE_SERVER" >&2; exit 2; }
          bin=$BEFORE_SERVER
        fi
        BIN=$bin start_server "$PORT" "$OUT/$s-$n.server.log" --hbase "$ADDR" \
          --hbase-table-prefix "h${n}${s#hot}_"
        bench "$s" "$n" group --url "ws://127.0.0.1:$PORT/ws" --server-pid "${PIDS[0]}" \
          --connections 200 --group-size 200 --senders 20 --window 8 --duration 10 --floor off
        stop_servers
        ;;
      latency)
        [ -f "$OUT/pairs-$n.json" ] || { echo "latency needs this round's pairs run" >&2; continue; }
        rate=$(( $(delivered_rate "$OUT/pairs-$n.json") / 2 ))
        start_server "$PORT" "$OUT/latency-$n.server.log" --hbase "$ADDR" --hbase-table-prefix "l${n}_"
        bench latency "$n" pairs --url "ws://127.0.0.1:$PORT/ws" --server-pid "${PIDS[0]}" \
          "${PAIRS[@]}" --rate "$rate" --floor off
        stop_servers
        ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done
log "done: python3 messenger-bench/scripts/medians.py $OUT"

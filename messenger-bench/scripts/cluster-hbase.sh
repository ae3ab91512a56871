#!/usr/bin/env bash
# Issue 17's cluster figures on a shared store: server nodes sharing one Redis (session
# directory, presence, relay) and one HBase (messages, threads), on this one box.
# RUNS rounds; each round runs every scenario once:
#
#   biggroup         3 nodes; one group of 10 000 members, 2 000 of them online spread
#                    over the 3 nodes (connection i to node i mod 3), 2 senders, 100
#                    messages/s in all (199 900 deliveries/s offered), 10 s; latency
#                    from each send to its last online member
#   biggroup-half, biggroup-lookup-half   the same at 50 messages/s (99 950 deliveries/s)
#   biggroup-lookup  the same with `[redis] large_group_relay = false`: the per-member
#                    directory lookup of every large-group message (the path before
#                    the members_of envelope), same binary, for the A/B
#   biggroup-nocache the same with `[hbase] member_cache = false`: every membership
#                    check reads the whole member list (same binary, for the A/B)
#   S-before         scenario S through the binary in BEFORE_SERVER (an older build),
#                    e.g. biggroup-before, xpairs-before: A/Bs of two builds in one job
#   xpairs           2 nodes; 50 pairs, the two sides of each pair on different nodes
#                    (cross-node 1:1), as fast as they go, 10 s; then xpairs-half at
#                    half of the rate this round's xpairs delivered (latency)
#   pairs1           the control for xpairs: the same 50 pairs on one node (Redis and
#                    HBase as above), full speed
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   /work/tools/quiet timeout 660 messenger-bench/scripts/cluster-hbase.sh [OUT] [RUNS] [SCENARIOS...]
#   python3 messenger-bench/scripts/medians.py OUT
#
# HBase runs with HBASE_PROFILE=tuned in target/cluster-hbase-run (from empty, stopped
# at the end); Redis on REDIS_PORT. Every server set gets fresh tables and a fresh Redis
# key prefix. Everything this script starts is stopped by pid on exit; every run is
# bounded in time. Server CPU is summed over the nodes; HBase's and Redis's CPU and the
# Redis commands of each run are added to its JSON (hbase_cpu_secs, redis_cpu_secs,
# redis_commands, redis_commands_per_send).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-cluster-hbase}
RUNS=${2:-1}
shift 2 2>/dev/null || shift $#
SCENARIOS=${*:-biggroup biggroup-lookup xpairs}
PORT=${PORT:-18300}
REDIS_PORT=${REDIS_PORT:-18299}
REL=${CARGO_TARGET_DIR:-target}/release
SERVER=${SERVER:-$REL/messenger-server}
BENCH=${BENCH:-$REL/messenger-bench}
export HBASE_RUN_DIR=${HBASE_RUN_DIR:-$PWD/target/cluster-hbase-run}
export HBASE_PROFILE=${HBASE_PROFILE:-tuned}
BIG=(--group-size 10000 --online 2000 --senders 2 --duration 10)
PAIRS=(--pairs 50 --window 8 --duration 10)
mkdir -p "$OUT"
for b in "$SERVER" "$BENCH"; do
  [ -x "$b" ] || { echo "$b is missing: run the cargo build line at the top of $0" >&2; exit 1; }
done
log() { echo "[cluster-hbase $(date +%T)] $*" >&2; }

PIDS=()
redis_pid=""
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  scripts/hbase.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/hbase.sh stop >/dev/null 2>&1 || true
rm -rf "$HBASE_RUN_DIR"
ADDR=$(scripts/hbase.sh start | sed -n 's/^HBASE_THRIFT=//p')
[ -n "$ADDR" ] || { echo "HBase did not start (logs in $HBASE_RUN_DIR/logs)" >&2; exit 1; }
HBASE_PIDS="$(cat "$HBASE_RUN_DIR"/master.pid "$HBASE_RUN_DIR"/thrift.pid 2>/dev/null | tr '\n' ' ')"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 10000 --dir "$OUT" --logfile "$OUT/redis.log" &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
log "HBase ($HBASE_PROFILE) at $ADDR, Redis on $REDIS_PORT"

. messenger-bench/scripts/hbase-cpu.sh

# start_nodes NAME COUNT [env assignments...]: COUNT nodes on fresh tables and a fresh
# key prefix; sets URLS and SPIDS.
start_nodes() {
  local name=$1 count=$2 k; shift 2
  URLS=""; SPIDS=""
  for k in $(seq 0 $((count - 1))); do
    env RUST_LOG=warn "$@" "$SERVER" --listen "127.0.0.1:$((PORT + k))" --node-id $((k + 1)) \
      --redis "redis://127.0.0.1:$REDIS_PORT" --redis-key-prefix "$name" \
      --hbase "$ADDR" --hbase-table-prefix "${name}_" \
      --max-connections 1000000 --rate-limit 100000000 --rate-burst 100000000 \
      >"$OUT/$name.server-$k.log" 2>&1 &
    PIDS+=($!)
    URLS="$URLS${URLS:+,}ws://127.0.0.1:$((PORT + k))/ws"
    SPIDS="$SPIDS${SPIDS:+,}$!"
  done
  for k in $(seq 0 $((count - 1))); do
    for _ in $(seq 300); do
      curl -sf "http://127.0.0.1:$((PORT + k))/healthz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:$((PORT + k))/healthz" >/dev/null 2>&1 \
      || { echo "node $k of $name did not start: $(tail -n 5 "$OUT/$name.server-$k.log")" >&2; return 1; }
  done
}
stop_nodes() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# Redis: user+system CPU seconds and commands processed so far.
redis_stat() {
  redis-cli -p "$REDIS_PORT" info | tr -d '\r' | awk -F: '
    $1=="used_cpu_user"||$1=="used_cpu_sys" {c+=$2} $1=="total_commands_processed" {n=$2}
    END {print c, n}'
}

bench() { # name round args...
  local name=$1 n=$2; shift 2
  local c0 r0; c0=$(hbase_cpu); r0=$(redis_stat)
  log "$name round $n: messenger-bench $*"
  timeout 120 "$BENCH" "$@" --floor off --json "$OUT/$name-$n.json" >"$OUT/$name-$n.txt" \
    2>"$OUT/$name-$n.progress" || echo "run failed (see $OUT/$name-$n.progress)" >&2
  local c1 r1; c1=$(hbase_cpu); r1=$(redis_stat)
  python3 - "$OUT/$name-$n.json" "$c0" "$c1" $r0 $r1 <<'PY'
import json, sys
p, c0, c1, rc0, rn0, rc1, rn1 = sys.argv[1], *map(float, sys.argv[2:])
try:
    d = json.load(open(p))
except (OSError, ValueError):
    sys.exit(0)
d["hbase_cpu_secs"] = round(c1 - c0, 2)
d["redis_cpu_secs"] = round(rc1 - rc0, 2)
d["redis_commands"] = int(rn1 - rn0)
if d.get("sent_total"):
    d["redis_commands_per_send"] = round((rn1 - rn0) / d["sent_total"], 1)
json.dump(d, open(p, "w"), indent=1)
PY
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('hbase_cpu_secs', d.get('hbase_cpu_secs'), 'redis_cpu_secs', d.get('redis_cpu_secs'), 'redis_commands', d.get('redis_commands'), 'per send', d.get('redis_commands_per_send'))" "$OUT/$name-$n.json" >&2 || true
  sed -n '/results/,$p' "$OUT/$name-$n.txt" >&2
}
delivered_rate() { python3 -c "import json,sys; print(int(json.load(open(sys.argv[1]))['delivered_per_sec']))" "$1"; }

# Warm-up (JIT on both JVMs, region caches): one discarded cross-node pairs run.
start_nodes warm 2
timeout 60 "$BENCH" pairs --url "$URLS" "${PAIRS[@]}" --floor off >/dev/null 2>"$OUT/warmup.progress" || true
stop_nodes

NEW_SERVER=$SERVER
for n in $(seq "$RUNS"); do
  for s in $SCENARIOS; do
    SERVER=$NEW_SERVER; sfx=""
    case $s in
      *-before)
        [ -x "${BEFORE_SERVER:-}" ] || { echo "$s needs BEFORE_SERVER=an older messenger-server" >&2; exit 2; }
        SERVER=$BEFORE_SERVER; sfx=-before; s=${s%-before} ;;
    esac
    case $s in
      biggroup|biggroup-half)
        rate=100; [ "$s" = biggroup-half ] && rate=50
        start_nodes "bg$n$rate${sfx:+b}" 3
        bench "$s$sfx" "$n" biggroup --url "$URLS" --server-pid "$SPIDS" "${BIG[@]}" --rate "$rate"
        stop_nodes ;;
      biggroup-nocache)
        start_nodes "bn$n${sfx:+b}" 3 MESSENGER_HBASE__MEMBER_CACHE=false
        bench "$s$sfx" "$n" biggroup --url "$URLS" --server-pid "$SPIDS" "${BIG[@]}" --rate 100
        stop_nodes ;;
      biggroup-lookup|biggroup-lookup-half)
        rate=100; [ "$s" = biggroup-lookup-half ] && rate=50
        start_nodes "bl$n$rate${sfx:+b}" 3 MESSENGER_REDIS__LARGE_GROUP_RELAY=false
        bench "$s$sfx" "$n" biggroup --url "$URLS" --server-pid "$SPIDS" "${BIG[@]}" --rate "$rate"
        stop_nodes ;;
      pairs1)
        start_nodes "p1n$n${sfx:+b}" 1
        bench "pairs1$sfx" "$n" pairs --url "$URLS" --server-pid "$SPIDS" "${PAIRS[@]}"
        stop_nodes ;;
      xpairs)
        start_nodes "xp$n${sfx:+b}" 2
        bench "xpairs$sfx" "$n" pairs --url "$URLS" --server-pid "$SPIDS" "${PAIRS[@]}"
        stop_nodes
        [ -f "$OUT/xpairs$sfx-$n.json" ] || { echo "no xpairs result: no half-rate run" >&2; continue; }
        rate=$(( $(delivered_rate "$OUT/xpairs$sfx-$n.json") / 2 ))
        start_nodes "xh$n${sfx:+b}" 2
        bench "xpairs-half$sfx" "$n" pairs --url "$URLS" --server-pid "$SPIDS" "${PAIRS[@]}" --rate "$rate"
        stop_nodes ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
  done
done
log "done: python3 messenger-bench/scripts/medians.py $OUT"

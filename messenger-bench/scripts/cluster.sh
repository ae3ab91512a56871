#!/usr/bin/env bash
# Many connections on one box: NODES messenger-server processes sharing one Redis
# (session directory, presence, relay), each held by its own generator process, since
# one process here may hold at most 20 000 file descriptors. Reports the connections
# held, total server RSS, RSS per connection, Redis memory per session and the connect
# rate. Bounded: every generator holds for HOLD seconds and stops; everything this
# script started is stopped by pid on exit.
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   messenger-bench/scripts/cluster.sh [OUT] [NODES] [CONNS_PER_NODE] [HOLD_SECS]
#
# Defaults: 11 nodes x 18 500 connections = 203 500, held 60 s (long enough that every
# node's connections are open at once even when some nodes connect slowly; the peak of
# connections established to the servers at the same moment is sampled every 5 s and
# reported as connections_concurrent_peak). Each generator uses its
# own block of source addresses (--source-block), so no two processes share source ports.
# Stores in memory per node (STORE_ARGS, default `--store memory`): idle connections
# need no shared store.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-cluster}
NODES=${2:-11}
PER_NODE=${3:-18500}
HOLD=${4:-60}
PORT=${PORT:-18200}
REDIS_PORT=${REDIS_PORT:-18199}
SERVER=${SERVER:-target/release/messenger-server}
BENCH=${BENCH:-target/release/messenger-bench}
mkdir -p "$OUT"
pids=()
server_pids=()
redis_pid=""
# Stops what this script started, by pid: the generators and samplers, then the servers
# (a node's shutdown removes its sessions and node id from Redis; SIGKILL after 15 s so a
# node that cannot finish does not hold the benchmark), then Redis.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${server_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 150); do
    alive=0
    for p in "${server_pids[@]}"; do
      if kill -0 "$p" 2>/dev/null; then alive=1; fi
    done
    if [ "$alive" = 0 ]; then break; fi
    sleep 0.1
  done
  for p in "${server_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 10000 --dir "$OUT" --logfile "$OUT/redis.log" &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_mem() { redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: -v k="$1" '$1==k {print $2}'; }
redis_before=$(redis_mem used_memory)

for k in $(seq 0 $((NODES - 1))); do
  RUST_LOG=warn "$SERVER" --listen "127.0.0.1:$((PORT + k))" --node-id $((k + 1)) \
    --redis "redis://127.0.0.1:$REDIS_PORT" --max-connections 1000000 ${STORE_ARGS---store memory} \
    --rate-limit 100000000 --rate-burst 100000000 ${SERVER_ARGS:-} >"$OUT/server-$k.log" 2>&1 &
  server_pids+=($!)
done
for k in $(seq 0 $((NODES - 1))); do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + k))") 2>/dev/null && break
    sleep 0.1
  done
done
echo "== $NODES nodes up; $NODES generators x $PER_NODE connections (load $(cut -d' ' -f1 /proc/loadavg))" >&2

# Redis memory is sampled while the generators hold their connections.
( peak=0
  while sleep 1; do
    m=$(redis_mem used_memory) || break
    [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m && echo "$peak" >"$OUT/redis-peak"
  done ) &
sampler=$!; pids+=($sampler)
# Connections established to the servers at the same moment (server side of each socket).
( peak=0
  while sleep 5; do
    n=$(ss -Htn state established "( sport >= :$PORT and sport < :$((PORT + NODES)) )" | wc -l)
    [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" >"$OUT/conns-peak"
    echo "$(date +%T) established $n" >>"$OUT/conns.log"
  done ) &
counter=$!; pids+=($counter)

start=$(date +%s.%N)
gen_pids=()
for k in $(seq 0 $((NODES - 1))); do
  "$BENCH" idle --url "ws://127.0.0.1:$((PORT + k))/ws" --server-pid "${server_pids[$k]}" \
    --connections "$PER_NODE" --duration "$HOLD" --floor off --source-block "$k" \
    --run-id "n$k-" --json "$OUT/idle-$k.json" >"$OUT/idle-$k.txt" 2>"$OUT/idle-$k.progress" &
  gen_pids+=($!); pids+=($!)
done
failed=0
for p in "${gen_pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
end=$(date +%s.%N)
kill "$sampler" "$counter" 2>/dev/null || true
redis_peak=$(cat "$OUT/redis-peak" 2>/dev/null || echo 0)
conns_peak=$(cat "$OUT/conns-peak" 2>/dev/null || echo 0)
redis_keys=$(redis-cli -p "$REDIS_PORT" dbsize)
python3 - "$OUT" "$NODES" "$redis_before" "$redis_peak" "$start" "$end" "$failed" "$conns_peak" <<'PY'
import json, sys, glob
out, nodes, r0, r1, t0, t1, failed, peak = sys.argv[1:]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/idle-*.json"))]
held = sum(r["connections"] for r in runs)
rss = sum(r.get("server_rss_bytes") or 0 for r in runs)
rss0 = sum(r.get("server_rss_baseline_bytes") or 0 for r in runs)
slowest = max(r["connect_secs"] for r in runs)
summary = {
    "nodes": int(nodes),
    "connections_held": held,
    "connections_concurrent_peak": int(peak),
    "failed": sum(r["failed"] for r in runs),
    "lost": sum(r["lost"] for r in runs),
    "generators_failed": int(failed),
    "server_rss_total_bytes": rss,
    "server_rss_per_conn_bytes": round((rss - rss0) / held) if held else None,
    "connect_secs_slowest_node": slowest,
    "connects_per_sec_total": round(held / slowest) if slowest else None,
    "connects_per_sec_per_node": [r["connects_per_sec"] for r in runs],
    "redis_used_memory_before": int(r0),
    "redis_used_memory_peak": int(r1),
    "redis_bytes_per_session": round((int(r1) - int(r0)) / held) if held else None,
    "wall_secs": round(float(t1) - float(t0), 1),
}
json.dump(summary, open(f"{out}/cluster.json", "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
echo "redis keys at the end: $redis_keys" >&2

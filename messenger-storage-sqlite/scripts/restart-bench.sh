#!/usr/bin/env bash
# Restart on a big data directory: fills DIR with MESSAGES messages once (the generator,
# examples/store_bench.rs), then RUNS times starts messenger-server on it and measures
# the time from spawn until /healthz answers (it accepts connections), then latest-50
# fetch_history p99 through the server (4 connections, 5000 requests), then stops it.
#
#   cargo build --release -p messenger-server --features cli
#   cargo build --release -p messenger-storage-sqlite --example store_bench
#   messenger-storage-sqlite/scripts/restart-bench.sh [DIR] [RUNS] [MESSAGES]
#
# Defaults: DIR=/tmp/messenger-1m, RUNS=3, MESSAGES=1000000 (THREADS=1000 threads).
# The directory is kept for the next invocation (delete it to refill). Load goes to
# 127.0.0.1 only; every step is bounded (60 s for a start).
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-/tmp/messenger-1m}
RUNS=${2:-3}
MESSAGES=${3:-1000000}
THREADS=${THREADS:-1000}
TOOL=${TOOL:-target/release/examples/store_bench}
SERVER=${SERVER:-target/release/messenger-server}
for b in "$TOOL" "$SERVER"; do
  [ -x "$b" ] || { echo "$b is missing: build it first (see the top of $0)" >&2; exit 1; }
done

if [ ! -f "$DIR/messenger.db" ]; then
  echo "== filling $DIR with $MESSAGES messages in $THREADS threads" >&2
  "$TOOL" fill --data-dir "$DIR" --messages "$MESSAGES" --threads "$THREADS" --read-check 5000
fi
du -sh "$DIR"

for n in $(seq "$RUNS"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$(mktemp "${TMPDIR:-/tmp}/restart-bench.XXXXXX.log")
  t0=$(date +%s%N)
  RUST_LOG=warn "$SERVER" --listen "127.0.0.1:$port" --data-dir "$DIR" \
    --rate-limit 1000000 --rate-burst 1000000 >"$log" 2>&1 &
  pid=$!
  ok=""
  for _ in $(seq 12000); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then ok=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.005
  done
  t1=$(date +%s%N)
  if [ -z "$ok" ]; then
    echo "the server did not start; its log:" >&2; cat "$log" >&2; kill "$pid" 2>/dev/null || true; exit 1
  fi
  echo "run $n: accepting connections $(( (t1 - t0) / 1000000 )) ms after spawn"
  "$TOOL" read --url "ws://127.0.0.1:$port/ws" --threads "$THREADS" --requests 5000 --connections 4
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$log"
done

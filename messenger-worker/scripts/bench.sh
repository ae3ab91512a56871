#!/usr/bin/env bash
# Benchmarks of the Kafka pipeline (docs/benchmarks.md, "Kafka pipeline"). Loopback only;
# every run is bounded. Needs release builds:
#   cargo build --release -p messenger-server --features messenger-server/cli && cargo build --release -p messenger-worker -p messenger-bench --bins --examples
#   messenger-worker/scripts/bench.sh OUT RUNS [pairs] [webhooks] [push]
#
# pairs:    `messenger-bench pairs` (50 pairs, 10 s) against a fresh in-memory server,
#           without and with `--kafka` (the event log), alternating in one invocation.
#           Server on core 0, generator on core 1, the broker on core 1.
#           PAIRS_MODES (default "plain kafka"): add `kafka1` for the event log with one
#           event per record (kafka.event_batch = 1), `plain-old` / `kafka-old` for another
#           server binary (OLD_SERVER=PATH, e.g. a build of another commit) in the same
#           run, for A/B; SERVER=PATH replaces the default binary. The server's event
#           log counters are saved as pairs-MODE-N.metrics.
# webhooks: one worker (core 0) hands 200 000 pre-produced events to a local receiver
#           that batches (100 per request), and 30 000 one request per event.
# perf:     one `pairs` run against `--kafka` with `perf record` on the server for 5 s
#           of the middle (not a figure: the profile), then `perf report` by thread and
#           by symbol into perf-kafka.txt.
# push:     senders -> server --kafka (core 0) -> Kafka -> worker -> receiver: first as
#           fast as the senders go (the maximum), then at half that rate; p99 of
#           server accept (sent_at) to the receiver.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/pipeline-bench}
RUNS=${2:-3}
shift 2 2>/dev/null || shift $#
WHAT=${*:-pairs webhooks push}
mkdir -p "$OUT"
SERVER=${SERVER:-target/release/messenger-server}
WORKER=target/release/messenger-worker
BENCH=target/release/messenger-bench
PB=target/release/examples/pipeline_bench
NEED="$SERVER $BENCH"
case " $WHAT " in *" webhooks "*|*" push "*) NEED="$NEED $WORKER $PB" ;; esac
for b in $NEED; do
  [ -x "$b" ] || { echo "$b missing: cargo build --release -p messenger-server --features messenger-server/cli && cargo build --release -p messenger-worker -p messenger-bench --bins --examples" >&2; exit 1; }
done
PAIRS_MODES=${PAIRS_MODES:-plain kafka}
export KAFKA_RUN_DIR=$PWD/target/kafka-bench
BROKERS=$(scripts/kafka.sh start | sed -n 's/^KAFKA_BROKERS=//p')
trap 'scripts/kafka.sh stop' EXIT
taskset -a -cp 1 "$(cat "$KAFKA_RUN_DIR/kafka.pid")" >/dev/null
echo "broker $BROKERS (core 1)" >&2
PORT=18190

server() { # extra args...
  RUST_LOG=warn taskset -c 0 "${BIN:-$SERVER}" --listen "127.0.0.1:$PORT" --store memory --max-connections 1000000 \
    --rate-limit 100000000 --rate-burst 100000000 "$@" >"$OUT/server.log" 2>&1 &
  SPID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "server did not start" >&2; cat "$OUT/server.log" >&2; exit 1
}
stop_server() { kill "$SPID"; wait "$SPID" 2>/dev/null || true; }

for n in $(seq "$RUNS"); do
  for w in $WHAT; do
    case $w in
      pairs)
        for mode in $PAIRS_MODES; do
          case $mode in
            plain) server ;;
            kafka) server --kafka "$BROKERS" ;;
            kafka1) MESSENGER_KAFKA__EVENT_BATCH=1 server --kafka "$BROKERS" ;;
            plain-old) BIN=${OLD_SERVER:?OLD_SERVER=PATH for $mode} server ;;
            kafka-old) BIN=${OLD_SERVER:?OLD_SERVER=PATH for $mode} server --kafka "$BROKERS" ;;
            *) echo "unknown pairs mode: $mode" >&2; exit 2 ;;
          esac
          echo "== pairs $mode run $n" >&2
          taskset -c 1 "$BENCH" pairs --pairs 50 --duration 10 --floor off --server-pid "$SPID" \
            --url "ws://127.0.0.1:$PORT/ws" --json "$OUT/pairs-$mode-$n.json" >"$OUT/pairs-$mode-$n.txt" 2>&1
          curl -sf "http://127.0.0.1:$PORT/metrics" | grep -E '^messenger_event(s_published|_log)' >"$OUT/pairs-$mode-$n.metrics" || true
          stop_server
          python3 -c "import json;d=json.load(open('$OUT/pairs-$mode-$n.json'));print('   delivered/s', d.get('delivered_per_sec'))" >&2
        done ;;
      perf)
        server --kafka "$BROKERS"
        echo "== perf: pairs with --kafka, profiled" >&2
        (sleep 3; perf record -F 999 -g -p "$SPID" -o "$OUT/perf-kafka.data" -- sleep 5 >/dev/null 2>&1) &
        PERF=$!
        taskset -c 1 "$BENCH" pairs --pairs 50 --duration 10 --floor off --server-pid "$SPID" \
          --url "ws://127.0.0.1:$PORT/ws" --json "$OUT/perf-pairs.json" >"$OUT/perf-pairs.txt" 2>&1
        wait "$PERF" || true
        stop_server
        { perf report -i "$OUT/perf-kafka.data" --no-children -g none --sort comm --stdio 2>/dev/null | grep '%' | head -8
          perf report -i "$OUT/perf-kafka.data" --no-children -g none --sort dso,sym --stdio 2>/dev/null | grep '%' | head -40
        } >"$OUT/perf-kafka.txt"
        echo "   profile in $OUT/perf-kafka.txt" >&2 ;;
      webhooks)
        echo "== webhooks batched run $n" >&2
        taskset -c 1 "$PB" webhooks --brokers "$BROKERS" --worker "$WORKER" --worker-cpus 0 \
          --events 200000 --batch 100 | tee "$OUT/webhooks-batch-$n.json" >&2
        echo "== webhooks one per request run $n" >&2
        taskset -c 1 "$PB" webhooks --brokers "$BROKERS" --worker "$WORKER" --worker-cpus 0 \
          --events 30000 --batch 1 | tee "$OUT/webhooks-single-$n.json" >&2 ;;
      push)
        server --kafka "$BROKERS"
        echo "== push max run $n" >&2
        "$PB" push --brokers "$BROKERS" --worker "$WORKER" --url "ws://127.0.0.1:$PORT/ws" \
          --rate 0 --duration 10 | tee "$OUT/push-max-$n.json" >&2
        max=$(python3 -c "import json;print(int(json.load(open('$OUT/push-max-$n.json'))['pushes_per_sec']))")
        echo "== push at half the maximum ($((max / 2))/s) run $n" >&2
        "$PB" push --brokers "$BROKERS" --worker "$WORKER" --url "ws://127.0.0.1:$PORT/ws" \
          --rate $((max / 2)) --duration 10 | tee "$OUT/push-half-$n.json" >&2
        stop_server ;;
      *) echo "unknown: $w" >&2; exit 2 ;;
    esac
  done
done

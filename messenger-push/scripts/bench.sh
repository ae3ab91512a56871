#!/usr/bin/env bash
# Notifications per second from one sender (one PushService, one HTTP/2 connection per
# endpoint) to local APNs, FCM and Web Push endpoints that speak the real protocols.
# Endpoints pinned to core 0, the sender to core 1; RUNS rounds; medians.
#
#   messenger-push/scripts/bench.sh [OUT_DIR] [RUNS] [N] [CONCURRENCY]
#
# PROFILE=webpush (or apns, fcm) afterwards runs that sender once more (PROFILE_N
# notifications, default 5000) under /usr/bin/time and once under `perf record`, and
# writes $OUT/PROFILE.time (CPU seconds) and $OUT/PROFILE.perf.txt (the flat profile).
#
# Run it under /work/tools/quiet on a shared machine. Needs taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/push-bench}
RUNS=${2:-3}
N=${3:-20000}
CONC=${4:-256}
mkdir -p "$OUT"
echo "building push_bench (release)..."
cargo build -q --release -p messenger-push --features testkit --example push_bench
BIN=target/release/examples/push_bench
PARAMS="$OUT/params.json"
rm -f "$PARAMS"
FIFO="$OUT/stdin"
rm -f "$FIFO"; mkfifo "$FIFO"
taskset -c 0 "$BIN" serve "$PARAMS" < "$FIFO" 2> "$OUT/serve.log" &
SERVE=$!
exec 3> "$FIFO"   # holds the server's stdin open; closing it stops the server
trap 'exec 3>&-; wait $SERVE 2>/dev/null || true; rm -f "$FIFO"' EXIT
for _ in $(seq 1 100); do [ -s "$PARAMS" ] && break; sleep 0.1; done
[ -s "$PARAMS" ] || { echo "the endpoints did not start: see $OUT/serve.log" >&2; exit 1; }
for p in apns fcm webpush; do
  : > "$OUT/$p.jsonl"
  for r in $(seq 1 "$RUNS"); do
    taskset -c 1 "$BIN" send "$PARAMS" "$p" "$N" "$CONC" | tee -a "$OUT/$p.jsonl"
  done
  python3 - "$OUT/$p.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rates = sorted(r["per_sec"] for r in rows)
print(f'{rows[0]["provider"]}: median {statistics.median(rates):.0f}/s over {len(rates)} runs ({", ".join(f"{x:.0f}" for x in rates)})')
PY
done
if [ -n "${PROFILE:-}" ]; then
  PN=${PROFILE_N:-5000}
  echo "profiling the $PROFILE sender: $PN notifications"
  /usr/bin/time -f "%U s user, %S s sys, %e s wall for $PN notifications" \
    -o "$OUT/$PROFILE.time" taskset -c 1 "$BIN" send "$PARAMS" "$PROFILE" "$PN" "$CONC"
  cat "$OUT/$PROFILE.time"
  if command -v perf >/dev/null 2>&1; then
    perf record -q -F 999 -o "$OUT/$PROFILE.perf.data" -- \
      taskset -c 1 "$BIN" send "$PARAMS" "$PROFILE" "$PN" "$CONC" >/dev/null
    perf report -i "$OUT/$PROFILE.perf.data" --stdio --no-children --sort dso,symbol \
      --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' > "$OUT/$PROFILE.perf.txt" || true
    head -40 "$OUT/$PROFILE.perf.txt"
  else
    echo "perf is not installed: no profile"
  fi
fi

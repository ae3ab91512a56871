#!/usr/bin/env bash
# Syscalls and context switches (wake-ups) per delivered message at a fixed rate, on
# the pinned server: `perf stat` (software events; this VM has no hardware counters)
# and `strace -c` (which slows every syscall, so its run reports its own delivered
# count and only the per-message ratios are meant to be compared). Bounded: each
# measurement lasts WINDOW seconds inside a generator run of WINDOW+6 seconds.
#
#   messenger-bench/scripts/syscalls.sh [OUT] [RATE] [WINDOW]     # default 15000 msg/s, 8 s
#
# SERVER / BENCH / SERVER_CPUS / BENCH_CPUS as in bench.sh; STORE_ARGS (default
# `--store memory`; empty for a binary from before --store).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/tmp/messenger-syscalls}
RATE=${2:-15000}
WINDOW=${3:-8}
PORT=${PORT:-18095}
SERVER=${SERVER:-target/release/messenger-server}
BENCH=${BENCH:-target/release/messenger-bench}
mkdir -p "$OUT"

one() { # name tool...
  local name=$1; shift
  RUST_LOG=warn taskset -c "${SERVER_CPUS:-0}" "$SERVER" --listen "127.0.0.1:$PORT" \
    --max-connections 1000000 --rate-limit 100000000 --rate-burst 100000000 ${STORE_ARGS---store memory} \
    ${SERVER_ARGS:-} >"$OUT/$name.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  # The measured window of the generator starts after its 2 s warm-up; the tool is
  # attached 3 s in and detaches WINDOW s later, inside the generator's window.
  taskset -c "${BENCH_CPUS:-1}" "$BENCH" pairs --pairs 50 --rate "$RATE" --warmup 2 \
    --duration $((WINDOW + 4)) --floor off --url "ws://127.0.0.1:$PORT/ws" --server-pid "$pid" \
    --json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.progress" &
  local gen=$!
  sleep 3
  "$@" "$pid" >"$OUT/$name.tool" 2>&1 || true
  wait "$gen" || echo "generator failed" >&2
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

perf_stat() { perf stat -e task-clock,context-switches,cpu-migrations -p "$1" -- sleep "$WINDOW"; }
strace_c() { timeout -s INT "$WINDOW" strace -c -f -q -p "$1"; }
report() { # name: per delivered message (the generator's delivered/s x WINDOW)
  python3 - "$OUT/$1.json" "$OUT/$1.tool" "$WINDOW" "$1" <<'PY'
import json, re, sys
j, tool, window, name = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
d = json.load(open(j))["delivered_per_sec"] * window
text = open(tool).read()
if name == "perf":
    for ev in ("task-clock", "context-switches", "cpu-migrations"):
        m = re.search(r"([\d,.]+)\s+(?:msec\s+)?" + ev, text)
        if m:
            v = float(m.group(1).replace(",", ""))
            unit = " ms" if ev == "task-clock" else ""
            print(f"{ev}: {v:.0f}{unit} total, {v / d * (1000 if ev == 'task-clock' else 1):.3f} per delivered message{' (us)' if ev == 'task-clock' else ''}")
else:
    total = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", text, re.M)
    if total:
        print(f"syscalls: {int(total.group(1))} total, {int(total.group(1)) / d:.3f} per delivered message")
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and int(m.group(1)) / d > 0.01:
            print(f"  {m.group(2)}: {int(m.group(1)) / d:.3f} per message")
print(f"(delivered in the window: {d:.0f}; {json.load(open(j))['delivered_per_sec']:.0f}/s)")
PY
}

one perf perf_stat
one strace strace_c
echo "== perf stat at $RATE msg/s"; report perf | tee "$OUT/perf.summary"
echo "== strace -c at $RATE msg/s"; report strace | tee "$OUT/strace.summary"

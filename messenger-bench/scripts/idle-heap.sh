#!/usr/bin/env bash
# Where the heap of an idle connection goes: runs the server under heaptrack twice, with
# N1 and N2 idle connections (messenger-bench idle), kills it with SIGKILL while they
# are held (so every live allocation counts as "leaked"), and prints the bytes per
# connection by allocation site: the slope (leaked(N2) - leaked(N1)) / (N2 - N1), so
# fixed costs drop out. Counts of bytes, not timings: no quiet machine needed.
#
#   cargo build --release -p messenger-server --features cli -p messenger-bench
#   messenger-bench/scripts/idle-heap.sh [SERVER] [N1] [N2]   (defaults: target/release, 1000, 3000)
#
# Needs heaptrack (Debian: apt-get install heaptrack). Heap bytes as requested from the
# allocator: RSS per connection adds malloc's per-allocation overhead and the maps'
# load factor (docs/benchmarks.md, "Idle memory").
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVER=${1:-target/release/messenger-server}
N1=${2:-1000}
N2=${3:-3000}
BENCH=${BENCH:-target/release/messenger-bench}
PORT=${PORT:-18490}
OUT=${OUT:-target/idle-heap}
command -v heaptrack >/dev/null || { echo "heaptrack not found: apt-get install heaptrack" >&2; exit 1; }
mkdir -p "$OUT"

profile() { # n -> $OUT/heap-n.stacks
  local n=$1 f="$OUT/heap-$1"
  rm -f "$f".zst "$f".gz
  RUST_LOG=warn heaptrack -o "$f" "$SERVER" --listen "127.0.0.1:$PORT" --max-connections 1000000 \
    --rate-limit 100000000 --rate-burst 100000000 --store memory >"$f.server.log" 2>&1 &
  local hp=$! pid=""
  for _ in $(seq 300); do
    pid=$(ss -ltnpH "sport = :$PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    [ -n "$pid" ] && break
    sleep 0.1
  done
  [ -n "$pid" ] || { echo "the server did not start: $f.server.log" >&2; exit 1; }
  "$BENCH" idle --connections "$n" --duration 30 --floor off --url "ws://127.0.0.1:$PORT/ws" \
    --server-pid "$pid" >"$f.bench.txt" 2>"$f.bench.err" &
  local bp=$!
  for _ in $(seq 600); do grep -q "open $n / $n" "$f.bench.err" 2>/dev/null && break; sleep 0.1; done
  grep -q "open $n / $n" "$f.bench.err" || { echo "not all $n connections opened: $f.bench.err" >&2; }
  sleep 3 # settle: welcome frames written, nothing in flight
  kill -9 "$pid"
  wait "$hp" || true
  kill "$bp" 2>/dev/null || true
  wait "$bp" 2>/dev/null || true
  # heaptrack's interpreter may still be writing the trace after the server died: wait
  # until the file stops growing (up to a minute).
  local data="" size=-1
  for _ in $(seq 60); do
    data=$(ls "$f".zst "$f".gz 2>/dev/null | head -1 || true)
    local now
    now=$(stat -c %s "$data" 2>/dev/null || echo 0)
    [ "$now" -gt 0 ] && [ "$now" = "$size" ] && break
    size=$now
    sleep 1
  done
  heaptrack_print -f "$data" -p 0 -a 0 -T 0 -l 0 \
    --flamegraph-cost-type leaked -F "$f.stacks" >/dev/null
  echo "profiled $n idle connections: $f.stacks" >&2
}

profile "$N1"
profile "$N2"
python3 - "$OUT/heap-$N1.stacks" "$N1" "$OUT/heap-$N2.stacks" "$N2" <<'PY'
import collections, sys

# First match wins; matched against the whole stack of the allocation.
SITES = [
    ("hashbrown", None),  # map tables: attributed below by owner
    ("insert_idle", "JoinSet entry (Server::track)"),
    ("Server::track", "session task (tokio task cell: the future)"),
    ("FrameCodec::new", "tungstenite read buffer"),
    ("buffer_frame", "tungstenite write buffer"),
    ("AllowStd", "tokio-tungstenite waker proxies"),
    ("RegistrationSet::allocate", "tokio I/O registration (ScheduledIo)"),
    ("Upgraded::new", "hyper Upgraded (boxed I/O)"),
    ("SessionShared::push", "engine outbound queue"),
    ("SessionId::from_id", "session id (Arc<str>)"),
    ("UserId::new", "user id (Arc<str>)"),
    ("MemSessionDirectory", "mem directory entry list"),
    ("MemPresence", "mem presence entry"),
    ("Batch::write", "batch metric Vecs (conn.rs)"),
    ("ReadOnDemand", "ReadOnDemand pending bytes"),
    ("Engine::connect", "engine: SessionShared + session list"),
    ("session_slot", "sessions-per-user limit"),
]
MAPS = [("MemSessionDirectory", "directory"), ("MemPresence", "presence"),
        ("Engine::connect", "engine sessions"), ("session_slot", "sessions-per-user limit")]

def site(stack):
    for key, name in SITES:
        if key in stack:
            if name is None:
                return "map tables: " + next((m for k, m in MAPS if k in stack), "other")
            return name
    return "other"

def load(path):
    c = collections.Counter()
    for line in open(path):
        stack, _, cost = line.rstrip("\n").rpartition(" ")
        c[site(stack)] += int(cost)
    return c

a, na, b, nb = load(sys.argv[1]), int(sys.argv[2]), load(sys.argv[3]), int(sys.argv[4])
rows = sorted((((b[k] - a[k]) / (nb - na)), k) for k in set(a) | set(b))
total = sum(v for v, _ in rows)
print(f"heap bytes per idle connection (slope {na} -> {nb} connections)")
for v, k in reversed(rows):
    if abs(v) >= 1:
        print(f"{v:8.0f}  {k}")
print(f"{total:8.0f}  total")
PY

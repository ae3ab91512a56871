#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) on the nightly toolchain.
#
#   scripts/fuzz.sh TARGET SECONDS     fuzz one target for SECONDS
#   scripts/fuzz.sh all SECONDS        each target in turn for SECONDS
#   scripts/fuzz.sh smoke [SECONDS]    every target briefly (default 10 s) plus the
#                                      regression inputs, built unoptimized (--dev:
#                                      half the build time): what scripts/test.sh runs
#   scripts/fuzz.sh list               the targets
#
# Targets (fuzz/fuzz_targets/): client_frame (the server's client-frame decoder),
# http_request (bytes before the WebSocket upgrade: hyper with the server's limits and
# router), jwt (HS256 verification), hbase_row_keys (the HBase row-key codec),
# client_server_frames (the SDK's handling of server frames).
#
# The working corpus grows in fuzz/corpus/TARGET (not committed), seeded from
# fuzz/seeds/TARGET (protocol examples, committed). Inputs in fuzz/regressions/TARGET
# (crashes found and fixed) are replayed by every run. A crash stops the run with the
# input in fuzz/artifacts/TARGET and a non-zero exit: copy it to fuzz/regressions/TARGET
# and add a unit test in the crate at fault. The last line of each run reports the
# executions (for docs/reliability.md).
#
# Builds with `--sanitizer none`: the workspace forbids `unsafe`, so AddressSanitizer
# adds little but build time and 2-3x slower executions; libFuzzer's coverage
# instrumentation and Rust's own checks (debug assertions, overflow checks) stay on.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(client_frame http_request jwt hbase_row_keys client_server_frames)

usage() {
  echo "usage: scripts/fuzz.sh TARGET|all SECONDS | smoke [SECONDS] | list" >&2
  echo "targets: ${TARGETS[*]}" >&2
  exit 2
}

[ $# -ge 1 ] || usage
what=$1
if [ "$what" = list ]; then
  printf '%s\n' "${TARGETS[@]}"
  exit 0
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (once; a few minutes)"
  cargo install cargo-fuzz --locked
fi

# Extra cargo-fuzz flags: --dev for the smoke run.
PROFILE_FLAGS=()

build() {
  echo "==> building the fuzz targets (nightly, coverage instrumentation ${PROFILE_FLAGS[*]})"
  cargo +nightly fuzz build -s none "${PROFILE_FLAGS[@]}" "$@"
}

# run TARGET SECONDS: fuzz, then print "fuzz TARGET: N executions in S s".
run() {
  local target=$1 secs=$2
  mkdir -p "corpus/$target" "artifacts/$target"
  local dirs=("corpus/$target" "seeds/$target")
  [ -d "regressions/$target" ] && dirs+=("regressions/$target")
  local log
  log=$(mktemp)
  echo "==> fuzzing $target for ${secs}s (corpus fuzz/corpus/$target)"
  set +e
  cargo +nightly fuzz run -s none "${PROFILE_FLAGS[@]}" "$target" "${dirs[@]}" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1
  local rc=$?
  set -e
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  if [ $rc -ne 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz $target: FAILED after ${execs:-?} executions; the input is in fuzz/artifacts/$target/." >&2
    echo "Reproduce: (cd fuzz && cargo +nightly fuzz run -s none $target artifacts/$target/<file>)" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
  echo "fuzz $target: ${execs:-0} executions in ${secs}s"
}

case "$what" in
  smoke)
    secs=${2:-10}
    PROFILE_FLAGS=(--dev)
    build
    for t in "${TARGETS[@]}"; do run "$t" "$secs"; done
    ;;
  all)
    [ $# -eq 2 ] || usage
    build
    for t in "${TARGETS[@]}"; do run "$t" "$2"; done
    ;;
  *)
    [ $# -eq 2 ] || usage
    printf '%s\n' "${TARGETS[@]}" | grep -qx "$what" || usage
    build "$what"
    run "$what" "$2"
    ;;
esac

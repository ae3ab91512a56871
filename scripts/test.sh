#!/usr/bin/env bash
# The one test command: formatting, lints, and every test in the workspace.
# It installs and starts what the tests need by itself (Redis, HBase), so it runs on a
# fresh machine. Usage: scripts/test.sh   (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi

# Services the tests start themselves; they fail, never skip, when one is missing, so
# install what is missing here (Debian packages). messenger-redis and the cluster tests
# start redis-server on free ports; messenger-server's multi-process test puts HAProxy in
# front of the server processes and messenger-client's TLS test uses it as the TLS
# terminator; HBase comes from Maven Central via scripts/hbase.sh,
# which installs a JDK and Maven the same way if they are missing.
missing=()
command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER:-}" ] || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -n "${HAPROXY:-}" ] || missing+=(haproxy)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# messenger-client's `native-tls` feature (built by --all-features) links OpenSSL.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and no apt-get: install them and run this again" >&2
    exit 1
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test: unit, integration, examples and benches (each bench runs once)"
cargo test --workspace --all-features --all-targets

step "independent Python client against the real server binary (tests/interop)"
cargo build -q -p messenger-server --bin messenger-server
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/messenger-server --listen "127.0.0.1:$port" >target/interop-server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
  sleep 0.1
done
if ! python3 tests/interop/protocol_check.py "127.0.0.1:$port"; then
  echo "--- server log (target/interop-server.log) ---" >&2
  tail -n 40 target/interop-server.log >&2
  exit 1
fi
kill $server_pid 2>/dev/null || true
wait $server_pid 2>/dev/null || true
trap - EXIT

step "cargo test: doc tests"
cargo test --workspace --all-features --doc

printf '\nall checks passed in %ss\n' "$(( $(date +%s) - started ))"

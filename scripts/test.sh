#!/usr/bin/env bash
# The one test command: formatting, lints, every test in the workspace, and the
# TypeScript SDK and browser chat (messenger-js/, Node and headless Chromium).
# It installs and starts what the tests need by itself (Redis, HBase, Kafka, Node packages
# from messenger-js/package-lock.json, Debian's chromium), so it runs on a
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
# terminator; HBase and Kafka come from Maven Central via scripts/hbase.sh and
# scripts/kafka.sh, which install a JDK and Maven the same way if they are missing.
# rdkafka builds librdkafka from source: it needs make and a C compiler.
# messenger-js needs Node 20+ with npm (its packages come from the committed lock file)
# and Debian's chromium for the browser test (nothing downloads a browser of its own).
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || [ -n "${CHROMIUM_PATH:-}" ] || missing+=(chromium fonts-liberation)
command -v redis-server >/dev/null 2>&1 || [ -n "${REDIS_SERVER:-}" ] || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -n "${HAPROXY:-}" ] || missing+=(haproxy)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# The chaos suite (messenger-server/tests/chaos.rs) steps one node's wall clock through
# libfaketime.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ -n "${LIBFAKETIME:-}" ] \
  || missing+=(faketime)
# messenger-client's `native-tls` feature (built by --all-features) links OpenSSL.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and no apt-get: install them and run this again" >&2
    exit 1
  fi
fi

step "Kafka jars from Maven Central (scripts/kafka.sh fetch; cached after the first run)"
scripts/kafka.sh fetch

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "feature combinations of messenger-server (lean default, none, each adapter alone)"
# The library must build and pass clippy for an embedder's choices, not only --all-features.
for features in "" "--no-default-features" "--no-default-features --features mem" \
    "--no-default-features --features axum" "--no-default-features --features redis" \
    "--no-default-features --features hbase" "--no-default-features --features kafka" \
    "--no-default-features --features sqlite" \
    "--no-default-features --features jwks-url" "--no-default-features --features push"; do
  echo "  messenger-server ${features:-(default features)}"
  # shellcheck disable=SC2086
  cargo clippy -q -p messenger-server $features --all-targets -- -D warnings
done

step "cargo doc -D warnings (every feature, as docs.rs builds it)"
RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --all-features --no-deps

step "cargo test: unit, integration, examples and benches (each bench runs once)"
cargo test --workspace --all-features --all-targets

step "fuzz smoke: every cargo-fuzz target for 10 s plus its regression inputs (scripts/fuzz.sh)"
# Installs the nightly toolchain and cargo-fuzz when missing; long runs:
# scripts/fuzz.sh TARGET SECONDS (docs/reliability.md).
fuzz_started=$(date +%s)
scripts/fuzz.sh smoke 10
echo "fuzz smoke took $(( $(date +%s) - fuzz_started ))s"

step "independent Python client against the real server binary (tests/interop)"
cargo build -q -p messenger-server --features cli --bin messenger-server
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# On the default durable store, in a data directory of its own (never ./messenger-data).
interop_data=$(mktemp -d "${TMPDIR:-/tmp}/messenger-interop.XXXXXX")
./target/debug/messenger-server --listen "127.0.0.1:$port" --data-dir "$interop_data" \
  >target/interop-server.log 2>&1 &
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
rm -rf "$interop_data"
trap - EXIT

step "messenger-js: npm ci, type checks, build, API reference, embedded chat up to date"
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "messenger-js needs Node 20 or newer (found $(node --version)): install it and run this again" >&2
  exit 1
fi
web_started=$(date +%s)
(
  cd messenger-js
  npm ci --no-audit --no-fund --loglevel=error
  npm run -s build
  npm run -s check:web
  npm run -s docs >/dev/null
)

step "messenger-js: SDK tests against the real server binary"
# Bounded: --test-force-exit ends the run when the tests are done even if something
# they opened is still alive, and `timeout` bounds the whole step.
(cd messenger-js && MESSENGER_SERVER_BIN=../target/debug/messenger-server timeout 600 npm run -s test)

step "messenger-js: the browser chat in headless Chromium (screenshots in target/web-chat/)"
# (`npm test` above compiled the tests into build-test/.)
(cd messenger-js && MESSENGER_SERVER_BIN=../target/debug/messenger-server timeout 300 \
  node --test --test-force-exit --test-reporter=spec build-test/test/browser.test.js)
echo "messenger-js steps took $(( $(date +%s) - web_started ))s"

step "cargo test: doc tests"
cargo test --workspace --all-features --doc

printf '\nall checks passed in %ss\n' "$(( $(date +%s) - started ))"

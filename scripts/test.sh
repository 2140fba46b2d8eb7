#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Examples (the demo upstream, the benchmark) are built by clippy above; they hold no tests.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --lib --bins --tests 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"

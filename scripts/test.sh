#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, lints, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets

#!/usr/bin/env bash
# The benchmark in one command: installs wrk (and the build deps) when
# missing, builds the release gateway, and runs bench/bench.rs.
# Usage: bench/run.sh [--mode all|throughput|revocation|memory] [--duration S]
#        [--rounds N] [--connections N] [--trials N] [--sessions N] [--idle N]
#        [--mode profile --target public|cache|nocache]  (needs linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if ! command -v wrk >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq wrk >/dev/null
fi
# 10k idle connections need file descriptors on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bin sessiongate --example bench
exec target/release/examples/bench "$@"

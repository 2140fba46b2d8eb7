#!/usr/bin/env bash
# The benchmark in one command: installs wrk (and the build deps) when
# missing, builds the release gateway, and runs bench/bench.rs.
# Usage: bench/run.sh [--mode all|throughput|revocation|memory|tls] [--duration S]
#        [--rounds N] [--connections N] [--trials N] [--sessions N] [--idle N]
#        [--mode profile --target public|cache|nocache]  (needs linux-perf)
#        [--mode instructions --target public|cache|nocache|jwt|jwt-nocache|profile --trials N]  (callgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
# wrk drives the load; Debian's nginx (with its Lua module) is the proxy-hop
# floor and the Redis-checking peer every run is compared with.
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -e /usr/share/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
# h2load drives the HTTP/2 load of --mode tls.
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged nginx on port 80; the benchmark runs its own.
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true
fi
# 10k idle connections need file descriptors on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bin sessiongate --example bench
exec target/release/examples/bench "$@"

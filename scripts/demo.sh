#!/usr/bin/env bash
# A working sessiongate in one command: a private redis-server, an upstream
# that echoes the headers it receives, the gateway with proxy.toml, a session
# minted with `sessiongate session create`, and curl through it, over plain
# HTTP and over TLS (HTTP/1.1 and HTTP/2) with a self-signed certificate.
# Usage: scripts/demo.sh [--once]   (--once: show the requests, then stop)
set -euo pipefail
cd "$(dirname "$0")/.."
once=false
[ "${1:-}" = "--once" ] && once=true

scripts/deps.sh
echo "building sessiongate (first build takes a few minutes)..."
cargo build --quiet --bin sessiongate --example echo_upstream
bin=target/debug/sessiongate

free_port() { # first port from $1 up that nothing listens on
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

redis_port=$(free_port 6390)
upstream_port=$(free_port 3000)
gateway_port=$(free_port 8080)
tls_port=$(free_port 8443)
export REDIS_URL="redis://127.0.0.1:$redis_port/0"
export UPSTREAM_ADDR="127.0.0.1:$upstream_port"
export LISTEN_ADDR="127.0.0.1:$gateway_port"
export ADMIN_ADDR="127.0.0.1:$(free_port 9100)"
export SESSION_SECRET="demo-secret-change-me"

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
target/debug/examples/echo_upstream "$UPSTREAM_ADDR" >"$work/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# TLS: a self-signed certificate for demo.localhost, and proxy.toml with a
# TLS listener and that certificate added.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=demo.localhost -addext subjectAltName=DNS:demo.localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1
sed "0,/^listen = .*/s||&\nlisten_tls = [\"127.0.0.1:$tls_port\"]|" proxy.toml >"$work/proxy.toml"
printf '\n[[tls.certificates]]\ncert = "%s"\nkey = "%s"\n' "$work/cert.pem" "$work/key.pem" \
  >>"$work/proxy.toml"
"$bin" check -c "$work/proxy.toml" >/dev/null

"$bin" run -c "$work/proxy.toml" >"$work/gateway.out" 2>"$work/gateway.log" &
pids+=($!)
gw="http://$LISTEN_ADDR"
for _ in $(seq 100); do curl -s -o /dev/null "$gw/public/" && break; sleep 0.1; done
if ! curl -s -o /dev/null "$gw/public/"; then
  echo "the gateway did not start:" >&2; cat "$work/gateway.log" >&2; exit 1
fi

cookie=$("$bin" session create -c proxy.toml --user 1001 --field email=alice@example.test \
  --field role=admin --ttl 1h | sed -n 's/^cookie: *//p')
viewer=$("$bin" session create -c proxy.toml --user 2002 --field role=viewer | sed -n 's/^cookie: *//p')

run() { echo; echo "\$ $(printf "%q " "$@")"; "$@"; echo; }
echo
echo "== sessiongate on $gw  (redis $REDIS_URL, upstream $UPSTREAM_ADDR)"
echo "== without a session: 401"
run curl -s -i "$gw/dashboard" -H 'Accept: application/json'
echo "== a browser without a session is sent to the login page"
run curl -s -o /dev/null -w '%{http_code} -> %{redirect_url}\n' "$gw/dashboard" -H 'Accept: text/html'
echo "== with the session cookie: forwarded, identity injected (the upstream echoes what it got)"
run curl -s "$gw/dashboard" -H "Cookie: $cookie" -H 'X-User-Id: spoofed'
echo "== a viewer on /admin/: 403"
run curl -s -i "$gw/admin/" -H "Cookie: $viewer"
id=$(printf '%s' "$cookie" | sed 's/^connect.sid=s%3A//; s/\..*$//')
echo "== the bare session id is no bearer token (without the cookie's signature): 401"
run curl -s -o /dev/null -w '%{http_code}\n' "$gw/dashboard" -H "Authorization: Bearer $id" -H 'Accept: application/json'
echo "== an API token the app stored under bearer_key (api:{id}) is one: forwarded"
redis-cli -p "$redis_port" set api:demo-token-3003 '{"user":{"id":"3003","role":"viewer"}}' EX 3600 >/dev/null
run curl -s "$gw/dashboard" -H "Authorization: Bearer demo-token-3003"
tls=(--cacert "$work/cert.pem" --resolve "demo.localhost:$tls_port:127.0.0.1")
gws="https://demo.localhost:$tls_port"
echo "== over TLS (self-signed certificate for demo.localhost), HTTP/2: the same gate"
run curl -s --http2 "${tls[@]}" -w '\n(HTTP/%{http_version})\n' "$gws/dashboard" -H "Cookie: $cookie"
echo "== a request for a host the certificate does not cover: 421"
run curl -s -o /dev/null -w '%{http_code}\n' --http1.1 "${tls[@]}" "$gws/dashboard" -H 'Host: other.example' -H "Cookie: $cookie"
echo "== after 'sessiongate session revoke': 401 on the very next request"
"$bin" session revoke -c proxy.toml "$id"
run curl -s -o /dev/null -w '%{http_code}\n' "$gw/dashboard" -H "Cookie: $cookie"

if ! $once; then
  echo "== try it yourself (Ctrl-C stops everything):"
  echo "   $bin session create -c proxy.toml --user 42 --field role=admin   (with REDIS_URL=$REDIS_URL SESSION_SECRET=$SESSION_SECRET UPSTREAM_ADDR=$UPSTREAM_ADDR LISTEN_ADDR=$LISTEN_ADDR)"
  echo "   curl -s $gw/ -H 'Cookie: <cookie>'"
  echo "   curl -s --http2 ${tls[*]} $gws/ -H 'Cookie: <cookie>'"
  wait
fi

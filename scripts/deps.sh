#!/usr/bin/env bash
# Installs what building and testing sessiongate needs on Debian/Ubuntu:
# cmake (Pingora builds a C library with it), redis-server (tests and demo),
# curl and openssl (demo), pebble (the ACME test server, for tests/acme.rs).
# Rust itself comes from rustup (https://rustup.rs).
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pebble >/dev/null 2>&1 || missing+=(pebble)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs what the build needs, idempotently: clang and libclang-dev (RocksDB's bindings are
# generated with libclang). Called by the other scripts; safe to run on its own.
set -euo pipefail

command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: not a Debian-like system; make sure clang and libclang are installed" >&2
  exit 0
fi

need=()
for pkg in clang libclang-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Try without refreshing the package lists first; refresh only if that fails.
  $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${need[@]}"
  }
fi

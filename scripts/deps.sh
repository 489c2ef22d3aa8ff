#!/usr/bin/env bash
# Installs what the build needs (clang + libclang for RocksDB's bindings), idempotently.
# Sourced by the other scripts; safe to run on its own.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${need[@]}"
  }
fi
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }

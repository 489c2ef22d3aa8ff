#!/usr/bin/env bash
# The whole test suite: format and lint checks, then every unit and integration test.
# Installs build dependencies first (idempotent). One cargo profile (release) for everything,
# so RocksDB is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --release --workspace --locked -- --test-threads=2
echo "== chaos (short mode: every scenario, fixed seed; fails on any violation)"
cargo build --release --locked -p ferry-broker -p ferry-bench --bins
target/release/ferry-bench chaos --scenario all --short --seed 20261126

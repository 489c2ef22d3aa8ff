#!/usr/bin/env bash
# The whole test suite: format and lint checks, then every unit and integration test.
# Installs build dependencies first (idempotent). One cargo profile (release) for everything,
# so RocksDB is compiled once. Starts throwaway PostgreSQL and MariaDB servers (installed from
# Debian's packages when missing) for the outbox tests, and stops them on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, -D warnings)"
cargo clippy --release --workspace --all-targets --locked -- -D warnings

echo "== throwaway PostgreSQL and MariaDB (outbox tests)"
dbdir=$(mktemp -d)
trap 'bash scripts/test-dbs.sh stop "$dbdir" || true; rm -rf "$dbdir"' EXIT
# Assigned first: a failing start stops the run here (an `eval "$(...)"` would not).
dbenv=$(bash scripts/test-dbs.sh start "$dbdir")
eval "$dbenv"
export FERRY_TEST_PG_URL FERRY_TEST_MYSQL_URL

echo "== cargo test"
cargo test --release --workspace --locked -- --test-threads=2
echo "== chaos (short mode: every scenario, fixed seed; fails on any violation)"
cargo build --release --locked -p ferry-broker -p ferry-bench -p ferry-ops --bins
target/release/ferry-bench chaos --scenario all --short --seed 20261126
echo "== outbox relay end to end (SQLite, PostgreSQL, MariaDB; fails on any violation)"
target/release/ferry-bench outbox --check --db "sqlite:$dbdir/outbox-check.db" --seed 20261126
target/release/ferry-bench outbox --check --db "$FERRY_TEST_PG_URL" --seed 20261126
target/release/ferry-bench outbox --check --db "$FERRY_TEST_MYSQL_URL" --seed 20261126

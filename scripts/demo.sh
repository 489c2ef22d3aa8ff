#!/usr/bin/env bash
# Builds ferrymq and runs a produce/consume round trip against a fresh broker.
#   scripts/demo.sh            one node
#   scripts/demo.sh --cluster  a local 3-node cluster, with its status
# Everything runs on 127.0.0.1 in a temp dir that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

nodes=1
[ "${1:-}" = "--cluster" ] && nodes=3

echo "== building (release)"
cargo build --release --locked -p ferry-broker -p ferry-ops
bin=target/release

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

peers=""
declare -a ports admin
for i in $(seq 1 "$nodes"); do
  ports[$i]=$(free_port); admin[$i]=$(free_port)
  peers+="${peers:+,}$i=127.0.0.1:${ports[$i]}"
done
for i in $(seq 1 "$nodes"); do
  args=(--node-id "$i" --listen "127.0.0.1:${ports[$i]}" --admin-listen "127.0.0.1:${admin[$i]}" --data-dir "$work/node-$i")
  [ "$nodes" -gt 1 ] && args+=(--peers "$peers")
  FERRY_LOG=warn "$bin/ferry-broker" "${args[@]}" >"$work/node-$i.log" 2>&1 &
  pids+=($!)
done
bootstrap=$(echo "$peers" | sed 's/[0-9]*=//g')
export FERRY_BOOTSTRAP="$bootstrap"

echo "== waiting for a leader"
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:${admin[1]}/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:${admin[1]}/readyz" >/dev/null || { cat "$work"/node-*.log; echo "broker not ready" >&2; exit 1; }

[ "$nodes" -gt 1 ] && "$bin/ferryctl" cluster status

echo "== create topic 'demo' (3 partitions)"
"$bin/ferryctl" topic create demo --partitions 3
echo "== produce 10 messages"
seq 1 10 | sed 's/^/hello ferrymq #/' | "$bin/ferryctl" produce demo
echo "== consume them back"
"$bin/ferryctl" consume demo --from earliest --count 10
echo "== topic describe"
"$bin/ferryctl" topic describe demo
echo "round trip OK"

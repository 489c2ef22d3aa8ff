#!/usr/bin/env bash
# Runs one ferry-bench produce workload against a 3-node NATS JetStream cluster and a 3-node
# ferrymq cluster, both on 127.0.0.1, and prints both results and the ferrymq/NATS ratios.
#
# The clusters run one after the other (NATS, then ferrymq), so neither competes with the
# other for CPU or disk while it is measured. Everything started here is stopped on exit and
# the temp dirs are removed (KEEP_TMP=1 keeps them, with the server logs).
#
# Knobs (environment):
#   COUNT=200000 SIZE=1024 PARTITIONS=4 CONCURRENCY=4 WARMUP=5000 REPLICAS=3
#   BENCH_ARGS="--rate 20000 --linger 2ms"   extra ferry-bench flags for both runs
#   READY_TIMEOUT=60 RUN_TIMEOUT=900 BUILD_TIMEOUT=3600 STOP_TIMEOUT=10   (seconds)
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
#   KEEP_TMP=1         keep the temp dir (data, configs, logs)
set -euo pipefail

COUNT=${COUNT:-200000}
SIZE=${SIZE:-1024}
PARTITIONS=${PARTITIONS:-4}
CONCURRENCY=${CONCURRENCY:-4}
WARMUP=${WARMUP:-5000}
REPLICAS=${REPLICAS:-3}
BENCH_ARGS=${BENCH_ARGS:-}
READY_TIMEOUT=${READY_TIMEOUT:-60}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-3600}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
TOPIC=bench

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-compare.XXXXXX")

log() { printf '[compare-nats] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- process bookkeeping -------------------------------------------------------------------

started_pids=()   # every server this script started, stopped on exit

# stop_pids PID...: TERM, wait up to STOP_TIMEOUT, then KILL whatever is left.
stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop within ${STOP_TIMEOUT}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#started_pids[@]} > 0)); then stop_pids "${started_pids[@]}"; fi
    if ((status != 0)); then
        local f
        for f in "$work"/*.log; do
            [[ -f $f ]] || continue
            log "last lines of $f:"
            tail -n 15 "$f" >&2 || true
        done
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# all_alive PID...: whether every process still runs.
all_alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
}

# wait_until DESC TIMEOUT_S PIDS CMD...: run CMD until it succeeds; fail after TIMEOUT_S or as
# soon as one of PIDS (space-separated) exits.
wait_until() {
    local desc=$1 timeout=$2 pids=$3
    shift 3
    local deadline=$((SECONDS + timeout))
    # shellcheck disable=SC2086 # PIDS is a word list on purpose
    until "$@" >/dev/null 2>&1; do
        all_alive $pids || die "a server exited while waiting for $desc"
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $desc"
        sleep 0.2
    done
}

# --- free ports ------------------------------------------------------------------------------

picked_ports=" "

# pick_port VAR: stores in VAR a loopback TCP port nobody listens on, not picked before.
pick_port() {
    local port attempt
    for attempt in $(seq 1 500); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        [[ $picked_ports == *" $port "* ]] && continue
        # A refused connection means nothing listens there.
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            picked_ports+="$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    die "no free port found after $attempt attempts"
}

http_ok() { curl -fsS --max-time 2 "$1"; }

# --- tools -----------------------------------------------------------------------------------

as_root() {
    if ((EUID == 0)); then "$@"; else sudo "$@"; fi
}

install_pkg() {   # install_pkg PACKAGE: apt-get install, with one apt-get update if that fails
    log "installing $1"
    as_root apt-get install -y "$1" >/dev/null ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y "$1" >/dev/null; } ||
        die "cannot install $1"
}

command -v nats-server >/dev/null || install_pkg nats-server
command -v jq >/dev/null || install_pkg jq
command -v curl >/dev/null || install_pkg curl
log "$(nats-server --version)"

log "building ferry-bench and ferry-broker (release)"
(cd "$repo" && timeout "$BUILD_TIMEOUT" cargo build --release -p ferry-bench -p ferry-broker) ||
    die "build failed"
bench_bin=$target_dir/release/ferry-bench
broker_bin=$target_dir/release/ferry-broker
[[ -x $bench_bin && -x $broker_bin ]] || die "binaries not found under $target_dir/release"

nats_json=""
ferry_json=""

# run_bench OUT_VAR FLAGS...: runs the produce workload with --json; stores its JSON line.
run_bench() {
    local out_var=$1
    shift
    local out status=0
    # shellcheck disable=SC2086 # BENCH_ARGS is a flag list on purpose
    out=$(timeout "$RUN_TIMEOUT" "$bench_bin" produce --json --topic "$TOPIC" \
        --partitions "$PARTITIONS" --count "$COUNT" --size "$SIZE" \
        --concurrency "$CONCURRENCY" --warmup "$WARMUP" $BENCH_ARGS "$@") || status=$?
    if ((status != 0)) || [[ -z $out ]]; then
        [[ -n $out ]] && printf '%s\n' "$out" >&2
        die "ferry-bench $* exited with status $status"
    fi
    printf -v "$out_var" '%s' "$out"
}

# --- NATS JetStream, 3 nodes -----------------------------------------------------------------

declare -a nats_client nats_route nats_http nats_pids
for i in 1 2 3; do
    pick_port "nats_client[$i]"
    pick_port "nats_route[$i]"
    pick_port "nats_http[$i]"
done
routes=""
for i in 1 2 3; do routes+="nats-route://127.0.0.1:${nats_route[$i]}, "; done
routes=${routes%, }
for i in 1 2 3; do
    mkdir -p "$work/nats$i"
    cat >"$work/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${nats_client[$i]}
http: 127.0.0.1:${nats_http[$i]}
jetstream {
  store_dir: "$work/nats$i"
}
cluster {
  name: ferrybench
  listen: 127.0.0.1:${nats_route[$i]}
  routes: [ $routes ]
}
EOF
    nats-server -c "$work/nats$i.conf" >"$work/nats$i.log" 2>&1 &
    nats_pids[i]=$!
    started_pids+=("$!")
done
log "NATS cluster starting on client ports ${nats_client[*]}"
for i in 1 2 3; do
    wait_until "NATS n$i healthz" "$READY_TIMEOUT" "${nats_pids[*]}" \
        http_ok "http://127.0.0.1:${nats_http[$i]}/healthz"
done
meta_ready() {   # a JetStream meta leader is known and all 3 servers are in the meta group
    http_ok "http://127.0.0.1:${nats_http[1]}/jsz" |
        jq -e '.meta_cluster.leader != null and .meta_cluster.leader != ""
               and (.meta_cluster.cluster_size // 0) >= 3'
}
wait_until "the NATS JetStream meta leader" "$READY_TIMEOUT" "${nats_pids[*]}" meta_ready

log "NATS: produce $COUNT x $SIZE B, $PARTITIONS subjects, concurrency $CONCURRENCY, R$REPLICAS"
run_bench nats_json --system nats --replicas "$REPLICAS" \
    --nats-url "nats://127.0.0.1:${nats_client[1]}"
stop_pids "${nats_pids[@]}"

# --- ferrymq, 3 nodes ------------------------------------------------------------------------

declare -a ferry_port ferry_admin ferry_pids
for i in 1 2 3; do
    pick_port "ferry_port[$i]"
    pick_port "ferry_admin[$i]"
done
peers="1=127.0.0.1:${ferry_port[1]},2=127.0.0.1:${ferry_port[2]},3=127.0.0.1:${ferry_port[3]}"
bootstrap="127.0.0.1:${ferry_port[1]},127.0.0.1:${ferry_port[2]},127.0.0.1:${ferry_port[3]}"
for i in 1 2 3; do
    mkdir -p "$work/ferry$i"
    "$broker_bin" --node-id "$i" --listen "127.0.0.1:${ferry_port[$i]}" \
        --admin-listen "127.0.0.1:${ferry_admin[$i]}" --data-dir "$work/ferry$i" \
        --peers "$peers" >"$work/ferry$i.log" 2>&1 &
    ferry_pids[i]=$!
    started_pids+=("$!")
done
log "ferrymq cluster starting on ports ${ferry_port[*]}"
for i in 1 2 3; do
    wait_until "ferrymq node $i /readyz" "$READY_TIMEOUT" "${ferry_pids[*]}" \
        http_ok "http://127.0.0.1:${ferry_admin[$i]}/readyz"
done

log "ferrymq: produce $COUNT x $SIZE B, $PARTITIONS partitions, concurrency $CONCURRENCY, 3 nodes"
run_bench ferry_json --system ferry --bootstrap "$bootstrap"
stop_pids "${ferry_pids[@]}"

# --- report ----------------------------------------------------------------------------------

echo "nats:  $nats_json"
echo "ferry: $ferry_json"
table() {   # column(1) if present, else tabs
    if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi
}
jq -rn --argjson n "$nats_json" --argjson f "$ferry_json" '
  def r(x): if x == null then "-" else ((x * 1000 | round) / 1000 | tostring) end;
  def row(x): [x.system, (x.messages | tostring), r(x.elapsed_s), (x.msgs_per_s | round | tostring),
               r(x.mb_per_s), r(x.latency_ms.p50), r(x.latency_ms.p99), r(x.latency_ms.p99_9),
               r(x.latency_ms.max), (x.errors | tostring)] | @tsv;
  (["system", "messages", "elapsed_s", "msgs/s", "MB/s", "p50_ms", "p99_ms", "p99.9_ms", "max_ms",
    "errors"] | @tsv),
  row($n), row($f)
' | table
jq -rn --argjson n "$nats_json" --argjson f "$ferry_json" '
  def ratio(a; b): if a == null or b == null or b == 0 then "-"
                   else ((a / b * 100 | round) / 100 | tostring) end;
  "ferrymq/NATS: msgs/s x\(ratio($f.msgs_per_s; $n.msgs_per_s))  p99 x\(ratio($f.latency_ms.p99; $n.latency_ms.p99))"
'

#!/usr/bin/env bash
# Server RSS around batchGets whose answers are large (issue 15 point 3): one 4 MiB value
# asked for 1000 times, three requests at once; and 15 or 20 distinct 4 MiB values (60 MiB,
# under limits.max_reply_bytes' 64 MiB, and 80 MiB, over it), three at once. Every value is
# read into L1 first. Prints each answer's status and size, and VmRSS before and after with
# the peak (VmHWM). Usage: loadtest/batch_memory.sh [BINARY]   (default: a release build)
# Before the answers were streamed, the first case grew the RSS by 8.6 GB: keep RAM free.
set -euo pipefail
cd "$(dirname "$0")/.."
source loadtest/lib.sh
BIN=${1:-}
if [ -z "$BIN" ]; then
    cargo build --release --quiet --bin tiergate
    BIN=target/release/tiergate
fi
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$2/status"; }
head -c $((4 << 20)) /dev/zero | tr '\0' a >"$WORK/value"

# run NAME KEYS...: a fresh gateway and Redis, KEYS put and read into L1, three batchGets.
run() {
    local name=$1 http admin pid i
    shift
    start_redis ""
    http=$(free_port) admin=$(free_port)
    TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_HTTP_LISTEN=127.0.0.1:$http \
    TIERGATE_ADMIN_LISTEN=127.0.0.1:$admin TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) \
    TIERGATE_L1_CAPACITY=2GiB TIERGATE_RUNTIME_WORKER_THREADS=2 TIERGATE_LOG_LEVEL=warn \
        "$BIN" >"$WORK/tiergate-$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$admin"
    for k in $(printf '%s\n' "$@" | sort -u); do
        curl -sf -o /dev/null -X PUT --data-binary @"$WORK/value" "http://127.0.0.1:$http/v1/kv/$k"
        curl -sf -o /dev/null "http://127.0.0.1:$http/v1/kv/$k"
    done
    python3 -c 'import json, sys; print(json.dumps({"keys": sys.argv[1:]}))' "$@" >"$WORK/req"
    local before hwm clients=()
    before=$(kib VmRSS "$pid") hwm=$(kib VmHWM "$pid")
    for i in 1 2 3; do
        curl -s -o /dev/null -w '%{http_code} %{size_download}B; ' -X POST \
            --data-binary @"$WORK/req" "http://127.0.0.1:$http/v1/kv:batchGet" >"$WORK/code$i" &
        clients+=($!)
    done
    wait "${clients[@]}"
    printf '%-32s %s| VmRSS %d -> %d kB, peak %d kB (%d before)\n' "$name" \
        "$(cat "$WORK"/code{1,2,3})" "$before" "$(kib VmRSS "$pid")" "$(kib VmHWM "$pid")" "$hwm"
    kill "$pid" "$RS_PID"
    wait "$pid" "$RS_PID" 2>/dev/null || true
}

run "1000 x one 4 MiB key" $(for _ in $(seq 1000); do echo amp:big; done)
run "15 distinct 4 MiB keys" $(seq -f 'amp:big%g' 1 15)
run "20 distinct 4 MiB keys" $(seq -f 'amp:big%g' 1 20)

#!/usr/bin/env bash
# Overload: loadtest/overload.rs sends CONCURRENCY clients' worth of L1-missing reads at a
# tiergate whose HTTP door admits 64 requests (and queues 64 for up to 50 ms), while Redis is
# kept slow by a loop of DEBUG SLEEP. Prints the latency of refusals (503 overloaded) next to
# served answers, and tiergate's RSS over the run.
# Usage: loadtest/overload.sh [CONCURRENCY] [DURATION_S]   (defaults 512 10)
# tiergate runs on cpu 0, Redis and the load on the other cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CONC=${1:-512}; DURATION=${2:-10}
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install -y redis-server)"; exit 1; }

source loadtest/lib.sh

cargo build --release --quiet --bin tiergate --example overload
OTHER=1-$(( $(nproc) - 1 )); [ "$(nproc)" -gt 1 ] || OTHER=0
start_redis "$OTHER" --enable-debug-command yes
HTTP=$(free_port)
TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_HTTP_LISTEN=127.0.0.1:$HTTP \
TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) \
TIERGATE_LOG_LEVEL=warn TIERGATE_ADMISSION_MAX_INFLIGHT=64 TIERGATE_ADMISSION_MAX_QUEUE=64 \
TIERGATE_ADMISSION_QUEUE_TIMEOUT=50ms \
    taskset -c 0 target/release/tiergate >"$WORK/tiergate.log" 2>&1 &
TG=$!
PIDS+=("$TG")
wait_port "$HTTP"
sleep 1 # L2 health probe and bus subscription

ulimit -n 20000 2>/dev/null || true
taskset -c "$OTHER" target/release/examples/overload --gateway "http://127.0.0.1:$HTTP" \
    --redis-port "$RS" --pid "$TG" --concurrency "$CONC" --duration "$DURATION"

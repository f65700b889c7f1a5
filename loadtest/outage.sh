#!/usr/bin/env bash
# A Redis outage under load. Starts a redis-server and tiergate (release build), then
# loadtest/outage.rs drives HTTP load (60% L1-hit reads, 20% reads that miss L1, 20% writes)
# while it kills redis-server with SIGKILL and starts a new one on the same port. Prints what
# clients saw in each phase (before, outage, after), that no write was acknowledged while
# Redis was dead, and the recovery time after the new redis-server answers.
# Usage: loadtest/outage.sh [KILL_AT_S] [RESTART_AT_S] [DURATION_S] [CONCURRENCY]
#        (defaults 4 8 14 32). tiergate runs on cpu 0, the load and Redis on the other cores.
set -euo pipefail
cd "$(dirname "$0")/.."
KILL_AT=${1:-4}; RESTART_AT=${2:-8}; DURATION=${3:-14}; CONC=${4:-32}
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install -y redis-server)"; exit 1; }

source loadtest/lib.sh

cargo build --release --quiet --bin tiergate --example outage
OTHER=1-$(( $(nproc) - 1 )); [ "$(nproc)" -gt 1 ] || OTHER=0
start_redis "$OTHER"
REDIS_PID=$RS_PID
disown "$REDIS_PID" # its SIGKILL is the point; no "Killed" notice from bash
HTTP=$(free_port)
TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_HTTP_LISTEN=127.0.0.1:$HTTP \
TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) \
TIERGATE_LOG_LEVEL=warn TIERGATE_L1_MAX_TTL=1h \
    taskset -c 0 target/release/tiergate >"$WORK/tiergate.log" 2>&1 &
PIDS+=($!)
wait_port "$HTTP"
sleep 1 # L2 health probe and bus subscription

taskset -c "$OTHER" target/release/examples/outage --gateway "http://127.0.0.1:$HTTP" \
    --redis-port "$RS" --redis-pid "$REDIS_PID" --concurrency "$CONC" \
    --kill-at "$KILL_AT" --restart-at "$RESTART_AT" --duration "$DURATION"
echo "--- tiergate log (warnings) ---"
cat "$WORK/tiergate.log"

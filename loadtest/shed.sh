#!/usr/bin/env bash
# What a refusal costs: wrk drives one door far past its admission limits (64 in flight, 64
# queued for 50 ms) with reads that all miss L1, while Redis is kept asleep by a loop of
# DEBUG SLEEP, so nearly every request is shed (503 overloaded). Then the same wrk run on an
# L1 hit, in the same run, as the reference. Prints both rates, latencies and tiergate's CPU
# per request (from /proc/PID/stat): shedding must cost no more than serving from memory.
# Usage: loadtest/shed.sh [CONNECTIONS] [SECONDS]   (defaults 256 8)
# tiergate (one worker) on cpu 0; wrk and Redis on cpu 1.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${1:-256}; SECS=${2:-8}
for tool in redis-server redis-cli wrk curl; do
    command -v $tool >/dev/null || { echo "$tool missing (apt-get install -y redis-server redis-tools wrk curl)"; exit 1; }
done
source loadtest/lib.sh
cargo build --release --quiet --bin tiergate
OTHER=$(( $(nproc) - 1 ))
start_redis "$OTHER" --enable-debug-command yes
HTTP=$(free_port); ADMIN=$(free_port)
TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_HTTP_LISTEN=127.0.0.1:$HTTP \
TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) TIERGATE_ADMIN_LISTEN=127.0.0.1:$ADMIN \
TIERGATE_RUNTIME_WORKER_THREADS=1 TIERGATE_LOG_LEVEL=warn TIERGATE_L2_TIMEOUT=10s \
TIERGATE_ADMISSION_MAX_INFLIGHT=64 TIERGATE_ADMISSION_MAX_QUEUE=64 TIERGATE_ADMISSION_QUEUE_TIMEOUT=50ms \
    taskset -c 0 target/release/tiergate >"$WORK/tiergate.log" 2>&1 &
TG=$!; PIDS+=("$TG")
wait_port "$HTTP"; sleep 1
curl -s -X PUT --data 0123456789 "http://127.0.0.1:$HTTP/v1/kv/hit" >/dev/null
cat >"$WORK/miss.lua" <<'LUA'
local n = 0
request = function() n = n + 1; return wrk.format("GET", "/v1/kv/miss:" .. n) end
LUA
cpu() { awk '{print $14+$15}' "/proc/$TG/stat"; }
ticks=$(getconf CLK_TCK)
# run NAME URL [SCRIPT]
run() {
    local c0 out
    c0=$(cpu)
    out=$(taskset -c "$OTHER" wrk -t1 -c"$CONNS" -d"${SECS}s" --latency ${3:+-s "$3"} "$2")
    local used=$(( $(cpu) - c0 ))
    local total rate p50 p99
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    printf '| %s | %s | %s | %s | %.1f |\n' "$1" "$rate" "$p50" "$p99" \
        "$(echo "$used * 1000000 / $ticks / $total" | bc -l)"
}
echo "| run ($CONNS connections, ${SECS}s) | req/s | p50 | p99 | tiergate CPU µs/req |"
echo "|---|---|---|---|---|"
( while true; do redis-cli -p "$RS" DEBUG SLEEP 0.05 >/dev/null 2>&1 || break; done ) &
SLEEPER=$!; PIDS+=("$SLEEPER")
run "L1 misses, Redis asleep (shed)" "http://127.0.0.1:$HTTP" "$WORK/miss.lua"
kill "$SLEEPER" 2>/dev/null || true
shed=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -F' ' '/^tiergate_admission_rejected_total\{door="http"/ {s+=$2} END {print s}')
served=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^tiergate_http_requests_total\{route="kv_get",status="404"\}/ {print $2}')
sleep 1
run "L1 hit (reference)" "http://127.0.0.1:$HTTP/v1/kv/hit"
echo "shed run: $shed refused by admission, $served answered after waiting on Redis"

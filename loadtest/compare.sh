#!/usr/bin/env bash
# Measures tiergate against a reference server on this machine, in one run, with the server
# and the load generator pinned to different cores, and prints one table with the ratio.
#
# Rows so far:
#   http-get-l1   tiergate GET /v1/kv/{key} (L1 hit, standalone) vs nginx `return 200` with a
#                 body of the same size, both on one core and one worker; wrk on another core.
#   http-mix-90-10  90% GET / 10% PUT over 10k keys (all written first), standalone.
#   http-batch-16 POST /v1/kv:batchGet of 16 keys per request.
#   http-get-l2   GET answered from L2: a second tiergate with L1 off over its own redis-server,
#                 both on the server core (CPU per request is the two processes' sum).
#   bare-hyper    the stack's floor: hyper + tokio answering a fixed body (loadtest/bare_hyper.rs),
#                 also vs nginx, so the table shows what tiergate's own layers cost.
#   resp-{set,get}-P{1,16}
#                 redis-benchmark SET and GET (random keys out of 100k, VALUE_BYTES values, 50
#                 clients, no pipelining and 16-deep pipelines) against tiergate's RESP door
#                 (standalone, memory tier) vs redis-server (no persistence), both on one core.
#
# Usage: loadtest/compare.sh   (ROWS="http resp" DURATION=10s CONNS=64 VALUE_BYTES=64
#                               RESP_REQUESTS=300000 SERVER_CPU=0 LOAD_CPU=1)
# Needs: wrk, nginx, redis-server, redis-benchmark (apt-get install -y wrk nginx-light
# redis-server redis-tools); installs them when missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-http resp}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
VALUE_BYTES=${VALUE_BYTES:-64}
# Requests per unpipelined redis-benchmark run; pipelined runs send 8 times as many.
RESP_REQUESTS=${RESP_REQUESTS:-300000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
source loadtest/lib.sh

need() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    if ((${#missing[@]})); then
        [ "$(id -u)" -eq 0 ] || { echo "missing: ${missing[*]} (install them)"; exit 1; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
need wrk:wrk nginx:nginx-light redis-server:redis-server redis-benchmark:redis-tools

# utime+stime of processes (PIDs separated by commas), in clock ticks.
cpu_ticks() {
    local total=0 p
    for p in ${1//,/ }; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$total"
}

# run_wrk PIDS URL [LUA]: prints "rps p50 p99 cpu_us_per_req" (CPU summed over PIDS)
run_wrk() {
    local pid=$1 url=$2 script=() out before after
    [ -z "${3:-}" ] || script=(-s "$3")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "${script[@]}" "$url" >/dev/null # warm-up
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${script[@]}" "$url")
    after=$(cpu_ticks "$pid")
    echo "$out" >"$WORK/wrk-$pid.txt"
    local rps p50 p99 reqs errors
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    [ -z "$errors" ] || echo "  wrk reported: $errors" >&2
    local hz; hz=$(getconf CLK_TCK)
    local us; us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
    echo "$rps $p50 $p99 $us"
}

# run_rb PID PORT TEST PIPELINE: prints "rps p50 p99 cpu_us_per_req" (latencies in ms)
run_rb() {
    local pid=$1 port=$2 test=$3 depth=$4 n=$RESP_REQUESTS out before after
    [ "$depth" -eq 1 ] || n=$((RESP_REQUESTS * 8))
    taskset -c "$LOAD_CPU" redis-benchmark -p "$port" -t "$test" -n $((n / 10)) -r 100000 \
        -d "$VALUE_BYTES" -P "$depth" -q >/dev/null # warm-up
    before=$(cpu_ticks "$pid")
    out=$(taskset -c "$LOAD_CPU" redis-benchmark -p "$port" -t "$test" -n "$n" -r 100000 \
        -d "$VALUE_BYTES" -P "$depth" --csv)
    after=$(cpu_ticks "$pid")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    awk -F'"' -v n="$n" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
        'NR == 2 {printf "%s %s %s %.2f\n", $4, $10, $14, t / hz * 1e6 / n}' <<<"$out"
}

row() { # NAME RPS P50 P99 US REF_NAME REF_RPS REF_P50 REF_P99 REF_US
    printf '%-14s %12s %9s %9s %10s | %-22s %12s %9s %9s %10s | %6s\n' "$@" \
        "$(awk -v a="$2" -v b="$7" 'BEGIN {printf "%.2f", a / b}')"
}

echo "==> building release binaries"
cargo build --release --quiet --bin tiergate --example bare_hyper
BODY=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' 'x')

# --- tiergate, standalone, one worker thread on SERVER_CPU
TG_HTTP=$(free_port); TG_ADMIN=$(free_port); TG_RESP=$(free_port)
TIERGATE_HTTP_LISTEN=127.0.0.1:$TG_HTTP TIERGATE_ADMIN_LISTEN=127.0.0.1:$TG_ADMIN TIERGATE_RESP_LISTEN=127.0.0.1:$TG_RESP \
TIERGATE_RUNTIME_WORKER_THREADS=1 TIERGATE_LOG_LEVEL=warn \
    taskset -c "$SERVER_CPU" target/release/tiergate >"$WORK/tiergate.log" 2>&1 &
TG_PID=$!; PIDS+=("$TG_PID")
wait_port "$TG_HTTP"
wait_port "$TG_RESP"
TABLE=()

if [[ " $ROWS " == *" http "* ]]; then
curl -sf -X PUT --data-binary "$BODY" "http://127.0.0.1:$TG_HTTP/v1/kv/bench" >/dev/null

# --- nginx, one worker on SERVER_CPU, same body size, keep-alive unbounded like tiergate's
NG_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $WORK/nginx/error.log warn;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    server {
        listen 127.0.0.1:$NG_PORT;
        location / { default_type application/octet-stream; return 200 "$BODY"; }
    }
}
CONF
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2>"$WORK/nginx/stderr" &
NG_MASTER=$!; PIDS+=("$NG_MASTER")
wait_port "$NG_PORT"
NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1)

# --- bare hyper, one worker thread on SERVER_CPU
BH_PORT=$(free_port)
taskset -c "$SERVER_CPU" target/release/examples/bare_hyper "127.0.0.1:$BH_PORT" "$VALUE_BYTES" &
BH_PID=$!; PIDS+=("$BH_PID")
wait_port "$BH_PORT"

echo "==> measuring HTTP (wrk -t1 -c$CONNS -d$DURATION; servers on cpu $SERVER_CPU, wrk on cpu $LOAD_CPU)"
read -r t_rps t_p50 t_p99 t_us < <(run_wrk "$TG_PID" "http://127.0.0.1:$TG_HTTP/v1/kv/bench")
read -r n_rps n_p50 n_p99 n_us < <(run_wrk "$NG_WORKER" "http://127.0.0.1:$NG_PORT/v1/kv/bench")
read -r b_rps b_p50 b_p99 b_us < <(run_wrk "$BH_PID" "http://127.0.0.1:$BH_PORT/v1/kv/bench")
TABLE+=("$(row http-get-l1 "$t_rps" "$t_p50" "$t_p99" "$t_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us")")
TABLE+=("$(row bare-hyper "$b_rps" "$b_p50" "$b_p99" "$b_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us")")

# 90% GET / 10% PUT over 10k keys (written first), standalone.
cat >"$WORK/mix.lua" <<LUA
local n = 0
request = function()
    n = n + 1
    local path = "/v1/kv/mix:" .. ((n * 7919) % 10000)
    if n % 10 == 0 then return wrk.format("PUT", path, nil, "$BODY") end
    return wrk.format("GET", path)
end
LUA
python3 - "$TG_HTTP" "$BODY" <<'PY'
import json, sys, urllib.request
port, body = sys.argv[1], sys.argv[2]
for start in range(0, 10000, 1000):
    items = [{"key": f"mix:{i}", "value": body} for i in range(start, start + 1000)]
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/kv:batchSet",
        data=json.dumps({"items": items}).encode(), method="POST")).read()
PY
read -r m_rps m_p50 m_p99 m_us < <(run_wrk "$TG_PID" "http://127.0.0.1:$TG_HTTP" "$WORK/mix.lua")
TABLE+=("$(row http-mix-90-10 "$m_rps" "$m_p50" "$m_p99" "$m_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us")")

# batchGet of 16 of those keys per request.
KEYS16=$(python3 -c 'import json; print(json.dumps({"keys": [f"mix:{i}" for i in range(16)]}))')
cat >"$WORK/batch.lua" <<LUA
wrk.method = "POST"
wrk.body = '$KEYS16'
wrk.headers["Content-Type"] = "application/json"
LUA
read -r g_rps g_p50 g_p99 g_us < <(run_wrk "$TG_PID" "http://127.0.0.1:$TG_HTTP/v1/kv:batchGet" "$WORK/batch.lua")
TABLE+=("$(row http-batch-16 "$g_rps" "$g_p50" "$g_p99" "$g_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us")")

# GET answered from L2: a second tiergate with L1 off, over its own redis-server, both on
# SERVER_CPU (one proxy hop in front of Redis); CPU is the two processes' sum.
start_redis "$SERVER_CPU"
L2_PORT=$RS; L2_PID=$RS_PID
T2_HTTP=$(free_port)
TIERGATE_HTTP_LISTEN=127.0.0.1:$T2_HTTP TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) \
TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) TIERGATE_L2_URL=redis://127.0.0.1:$L2_PORT \
TIERGATE_L1_CAPACITY=0 TIERGATE_RUNTIME_WORKER_THREADS=1 TIERGATE_LOG_LEVEL=warn \
    taskset -c "$SERVER_CPU" target/release/tiergate >"$WORK/tiergate-l2.log" 2>&1 &
T2_PID=$!; PIDS+=("$T2_PID")
wait_port "$T2_HTTP"
for _ in $(seq 1 100); do
    curl -sf -X PUT --data-binary "$BODY" "http://127.0.0.1:$T2_HTTP/v1/kv/bench" >/dev/null && break
    sleep 0.1
done
read -r l_rps l_p50 l_p99 l_us < <(run_wrk "$T2_PID,$L2_PID" "http://127.0.0.1:$T2_HTTP/v1/kv/bench")
TABLE+=("$(row http-get-l2 "$l_rps" "$l_p50" "$l_p99" "$l_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us")")
fi

if [[ " $ROWS " == *" resp "* ]]; then
# --- redis-server on SERVER_CPU, no persistence
start_redis "$SERVER_CPU"
RS_PORT=$RS

echo "==> measuring RESP (redis-benchmark -c50 -r100000 -d$VALUE_BYTES; servers on cpu $SERVER_CPU, client on cpu $LOAD_CPU)"
for depth in 1 16; do
    for test in set get; do
        read -r t_rps t_p50 t_p99 t_us < <(run_rb "$TG_PID" "$TG_RESP" "$test" "$depth")
        read -r r_rps r_p50 r_p99 r_us < <(run_rb "$RS_PID" "$RS_PORT" "$test" "$depth")
        TABLE+=("$(row "resp-$test-P$depth" "$t_rps" "${t_p50}ms" "${t_p99}ms" "$t_us" "redis-server" "$r_rps" "${r_p50}ms" "${r_p99}ms" "$r_us")")
    done
done
fi

printf '\n%-14s %12s %9s %9s %10s | %-22s %12s %9s %9s %10s | %6s\n' \
    row "req/s" p50 p99 "cpu us/req" reference "req/s" p50 p99 "cpu us/req" ratio
printf '%s\n' "${TABLE[@]}"

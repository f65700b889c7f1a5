#!/usr/bin/env bash
# Measures tiergate against the servers its users would otherwise deploy, on this machine, in
# one run, each server pinned to SERVER_CPU and each load generator to LOAD_CPU, and prints one
# table with the ratio per row, then each of issue 6's targets, met or missed.
#
# tiergate runs as deployed: over its own L2 redis-server (pinned with it); CPU per request is
# the two processes' sum, as it is for twemproxy and the redis-server behind it.
#
# Rows:
#   http-get-l1   GET /v1/kv/{key}, an L1 hit, vs nginx `return 200` with a body of the same
#                 size, both one worker; wrk.
#   bare-hyper    the stack's floor: hyper + tokio answering a fixed body (loadtest/bare_hyper.rs),
#                 also vs nginx, so the table shows what tiergate's own layers cost.
#   http-mix-90-10  90% GET / 10% PUT over 10k keys (all written first); PUTs write through to
#                 Redis and invalidate L1, so GETs after them are L2 reads.
#   http-batch-16 POST /v1/kv:batchGet of 16 keys per request.
#   http-get-l2   GET answered from L2: a second tiergate with L1 off over the same redis-server.
#   http-rate-half  oha at a fixed rate, half of http-get-l1's req/s, against tiergate and
#                 nginx: latency when not saturated (target p99 <= 1 ms).
#   resp-set-P{1,16}  redis-benchmark SET (random keys out of 100k, VALUE_BYTES values, 50
#                 clients, no pipelining and 16-deep pipelines) through tiergate to its L2 vs
#                 through twemproxy (nutcracker) to a redis-server: one proxy hop each.
#   resp-get-P{1,16}  GET of those keys (all written and read once first: L1 hits) vs
#                 redis-server itself.
#   resp-get-miss-P{1,16}  GET of those keys answered from L2 (a second tiergate with L1 off
#                 over the same redis-server: every GET a miss) vs twemproxy + redis-server.
#   resp-fwd-P{1,16} TEST  issue 16's rows, run only when ROWS names fwd (22 rows, 10-20
#                 minutes): each of redis-benchmark's incr, lpush, rpush, lpop, rpop, sadd,
#                 hset, spop, zadd, lrange_100 and mset in a run of its own (50 clients,
#                 -r 100000, FWD_REQUESTS unpipelined, 8 times as many in 16-deep pipelines; a
#                 quarter as many of lrange_100 and mset, 100 elements or 10 keys each) through
#                 tiergate vs twemproxy + redis-server. tiergate forwards each to Redis raw;
#                 the keys of string writes (INCR, MSET) are also announced on the
#                 invalidation bus (one PUBLISH for the writes a connection sends together).
#                 lrange_100 is `LRANGE mylist 0 99` on a list of 100 VALUE_BYTES elements
#                 (-t lrange_100 would first LPUSH as many, counted in the CPU); spop pops the
#                 set sadd filled, then an empty one, as redis-benchmark -t sadd,spop does.
#   origin-hit    issue 18's rows, run only when ROWS names origin: GET of a proxied route
#                 (`[[origins.routes]]`) the cache holds, vs nginx proxy_cache and vs Varnish
#                 in front of the same origin (an nginx on LOAD_CPU, VALUE_BYTES bodies,
#                 max-age=3600); tiergate over its own redis-server as deployed.
#   origin-hit-P16  the same hits in 16-deep pipelines (PIPE_DEPTH; TechEmpower's plaintext
#                 method): wrk's cost per request shared by 16, so the row shows more of what
#                 each proxy serves on its core (where wrk is still busy, a lower bound).
#   origin-miss   the same through a route whose origin says no-store (every request goes
#                 to the origin) vs nginx proxy_pass: CPU per request is the target.
#
# The last column says how busy the load generator's CPUs were (wrk rows; the origin rows'
# origin shares them): near 100%, a row measures wrk's ceiling as much as the server's. On two cores one wrk thread costs about what
# a server at the floor does (one recv and one send per request, each side), so every such
# server reaches the same req/s; with more cores, give the load generator several
# (LOAD_CPU=2-7: wrk runs a thread per CPU).
#
# Each row with a reference runs ROUNDS times, tiergate and the reference in turn, and reports
# each one's median run: this machine's speed drifts by ±20% over minutes.
#
# Usage: loadtest/compare.sh   (ROWS="http resp" (add fwd for issue 16's rows) DURATION=6s
#                               ROUNDS=3 CONNS=64 PIPE_DEPTH=16 VALUE_BYTES=64 RESP_REQUESTS=300000
#                               FWD_REQUESTS=100000 FWD_TESTS="incr lpush ..."
#                               SERVER_CPU=0 LOAD_CPU=1 (a list: LOAD_CPU=2-7)
#                               BIN=target/release/tiergate: another build to measure)
# Needs: wrk, nginx, redis-server, redis-benchmark, redis-cli, nutcracker, and varnish for the
# origin rows (apt-get install -y
# wrk nginx-light redis-server redis-tools nutcracker varnish) and, for the http rows, oha (cargo
# install oha); installs them when missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-http resp}
DURATION=${DURATION:-6s}
# Runs per server for the rows with a reference (the median is reported).
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
# Requests per write in the origin-hit-P rows.
PIPE_DEPTH=${PIPE_DEPTH:-16}
OHA_CONNS=${OHA_CONNS:-16}
VALUE_BYTES=${VALUE_BYTES:-64}
# Requests per unpipelined redis-benchmark run; pipelined runs send 8 times as many.
RESP_REQUESTS=${RESP_REQUESTS:-300000}
# Requests per unpipelined run of each forwarded command (resp-fwd rows); pipelined, 8 times.
FWD_REQUESTS=${FWD_REQUESTS:-100000}
FWD_TESTS=${FWD_TESTS:-incr lpush rpush lpop rpop sadd hset spop zadd lrange_100 mset}
BIN=${BIN:-target/release/tiergate}
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
need wrk:wrk nginx:nginx-light redis-server:redis-server redis-benchmark:redis-tools \
    redis-cli:redis-tools nutcracker:nutcracker
export PATH="$HOME/.cargo/bin:$PATH"
[[ " $ROWS " != *" http "* ]] || command -v oha >/dev/null || cargo install --quiet --locked oha

# utime+stime of processes (PIDs separated by commas), in clock ticks.
cpu_ticks() {
    local total=0 p
    for p in ${1//,/ }; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$total"
}

# The load generator's CPUs (LOAD_CPU expanded: "1", "2-7" or "1,3"), and wrk's threads: one
# per CPU. On a machine of two cores one wrk thread drives a server near its own cost per
# request; with more cores, give the load generator several (LOAD_CPU=2-7).
[[ $LOAD_CPU =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
    { echo "LOAD_CPU: CPUs and ranges, as 1, 2-7 or 1,3 (not '$LOAD_CPU')" >&2; exit 2; }
LOAD_CPUS=$(python3 -c 'import sys
print(" ".join(str(c) for part in sys.argv[1].split(",")
               for c in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)))' "$LOAD_CPU")
WRK_THREADS=$(wc -w <<<"$LOAD_CPUS")
# Busy and all clock ticks of the load generator's CPUs so far (/proc/stat).
load_ticks() {
    awk -v cpus=" $LOAD_CPUS " '$1 ~ /^cpu[0-9]+$/ && index(cpus, " " substr($1, 4) " ") {
        for (i = 2; i <= 9 && i <= NF; i++) all += $i  # user to steal (guest is in user)
        idle += $5 + $6
    } END {print all - idle, all}' /proc/stat
}

# run_wrk PIDS URL [LUA [ARG]]: prints "rps p50 p99 cpu_us_per_req load_busy_percent" (CPU
# summed over PIDS; the last, how busy the load generator's CPUs were: near 100, the row
# measures wrk's ceiling as much as the server's)
run_wrk() {
    local pid=$1 url=$2 script=() out before after busy0 all0 busy1 all1
    [ -z "${3:-}" ] || script=(-s "$3")
    local arg=()
    [ -z "${4:-}" ] || arg=(-- "$4")
    taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d1s "${script[@]}" "$url" "${arg[@]}" >/dev/null # warm-up
    before=$(cpu_ticks "$pid")
    read -r busy0 all0 < <(load_ticks)
    out=$(taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency "${script[@]}" "$url" "${arg[@]}")
    read -r busy1 all1 < <(load_ticks)
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
    local busy; busy=$(awk -v b=$((busy1 - busy0)) -v a=$((all1 - all0)) 'BEGIN {printf "%.0f", a ? 100 * b / a : 0}')
    echo "$rps $p50 $p99 $us $busy"
}

# run_rb PID PORT TEST PIPELINE [REQUESTS]: prints "rps p50 p99 cpu_us_per_req" (latencies
# in ms). REQUESTS (RESP_REQUESTS if not given) unpipelined, 8 times as many pipelined.
run_rb() {
    local pid=$1 port=$2 test=$3 depth=$4 n=${5:-$RESP_REQUESTS} what out before after
    [ "$depth" -eq 1 ] || n=$((n * 8))
    what=(-t "$test")
    # redis-benchmark's lrange_100 alone, without the LPUSHes it runs before it (fill_list).
    [ "$test" != lrange_100 ] || what=(LRANGE mylist 0 99)
    taskset -c "$LOAD_CPU" redis-benchmark -p "$port" -n $((n / 10)) -r 100000 \
        -d "$VALUE_BYTES" -P "$depth" -q "${what[@]}" >/dev/null 2>&1 # warm-up
    before=$(cpu_ticks "$pid")
    # twemproxy has no CONFIG: redis-benchmark's warning about it says nothing.
    out=$(taskset -c "$LOAD_CPU" redis-benchmark -p "$port" -n "$n" -r 100000 \
        -d "$VALUE_BYTES" -P "$depth" --csv "${what[@]}" \
        2> >(grep -v 'Could not fetch server CONFIG' >&2))
    after=$(cpu_ticks "$pid")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    awk -F'"' -v n="$n" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
        'NR == 2 {printf "%s %s %s %.2f\n", $4, $10, $14, t / hz * 1e6 / n}' <<<"$out"
}

# run_oha PIDS URL RATE: like run_wrk, at a fixed RATE of requests per second (oha -q), over
# OHA_CONNS connections. Without --latency-correction: on one core oha itself is two-thirds
# busy at 30k req/s, and the correction then charges its own scheduling delays to the server
# (p99 5 ms against bare hyper at a fifth of its capacity, 0.7 ms without).
run_oha() {
    local pid=$1 url=$2 rate=$3 before after
    before=$(cpu_ticks "$pid")
    taskset -c "$LOAD_CPU" oha -z "$DURATION" -q "$rate" -c "$OHA_CONNS" \
        --no-tui --output-format json "$url" >"$WORK/oha.json"
    after=$(cpu_ticks "$pid")
    python3 - "$WORK/oha.json" $((after - before)) "$(getconf CLK_TCK)" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
codes = d["statusCodeDistribution"]
n = sum(codes.values())
if set(codes) != {"200"}:
    print(f"  oha reported: {codes}", file=sys.stderr)
p = d["latencyPercentiles"]
print(f'{d["summary"]["requestsPerSec"]:.2f} {p["p50"] * 1e3:.2f}ms {p["p99"] * 1e3:.2f}ms '
      f'{ticks / hz * 1e6 / n:.2f}')
PY
}

# resp_fill PORT SET|GET: every key redis-benchmark -r 100000 may draw ("key:%012d"), SET to
# VALUE_BYTES values or read, in pipelines of 1000.
resp_fill() {
    python3 - "$1" "$2" "$VALUE_BYTES" <<'PY'
import socket, sys
port, cmd, size = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
value = b"x" * size
reply = b"+OK\r\n" if cmd == b"SET" else b"$%d\r\n%s\r\n" % (size, value)
s = socket.create_connection(("127.0.0.1", port))
for start in range(0, 100000, 1000):
    out = []
    for i in range(start, start + 1000):
        args = [cmd, b"key:%012d" % i] + ([value] if cmd == b"SET" else [])
        out.append(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    s.sendall(b"".join(out))
    want, got = reply * 1000, b""
    while len(got) < len(want):
        chunk = s.recv(1 << 16)
        assert chunk, "connection closed"
        got += chunk
    assert got == want, f"unexpected reply on port {port}: {got[:80]!r}"
PY
}

# fill_list PORT: `mylist` (redis-benchmark's list) holds 100 elements of VALUE_BYTES.
fill_list() {
    redis-cli -p "$1" DEL mylist >/dev/null
    # shellcheck disable=SC2046 # one argument per element
    redis-cli -p "$1" RPUSH mylist $(yes "$BODY" | head -100) >/dev/null
}

# rounds CMD ARGS... [-- CMD ARGS...]...: runs the commands in turn, ROUNDS times over, and
# sets MED[i] to command i's median run (by req/s). Interleaved, so a machine that slows down
# for a while slows every server alike; the median drops a run that caught a hiccup.
rounds() {
    local i r
    rm -f "$WORK"/round.*
    for r in $(seq 1 "$ROUNDS"); do
        i=0
        local cmd=()
        for arg in "$@" --; do
            if [ "$arg" = -- ]; then
                "${cmd[@]}" >>"$WORK/round.$i"
                cmd=(); i=$((i + 1))
            else
                cmd+=("$arg")
            fi
        done
    done
    MED=()
    for ((r = 0; r < i; r++)); do
        MED[r]=$(sort -g -k1,1 "$WORK/round.$r" | awk '{a[NR] = $0} END {print a[int((NR + 1) / 2)]}')
    done
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# A latency as wrk or oha print it (850.00us, 1.04ms, 1.20s), in milliseconds.
ms() { awk -v v="$1" 'BEGIN {n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; print n}'; }

# verdict OK?: "met" or "missed"
verdict() { if [ "$1" = 1 ]; then echo met; else echo missed; fi; }

row() { # NAME RPS P50 P99 US REF_NAME REF_RPS REF_P50 REF_P99 REF_US [BUSY REF_BUSY]
    local busy=
    [ -z "${11:-}" ] || busy="${11}% / ${12}%"
    printf '%-23s %12s %9s %9s %10s | %-22s %12s %9s %9s %10s | %6s | %s\n' "${@:1:10}" \
        "$(ratio "$2" "$7")" "$busy"
}

echo "==> building release binaries"
if [[ $BIN == target/release/tiergate ]]; then
    cargo build --release --quiet --bin tiergate --example bare_hyper
elif [[ " $ROWS " == *" http "* ]]; then
    cargo build --release --quiet --example bare_hyper
fi
BODY=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' 'x')

# start_tiergate NAME [VAR=VALUE ...]: a tiergate over the L2 redis-server (L2_PORT), one
# worker thread on SERVER_CPU, with these extra settings, its log in $WORK/NAME.log; returns
# once it is ready (L2 and the invalidation bus answer: L1 is not trusted before). Sets
# TGX_HTTP, TGX_RESP and TGX_PID.
start_tiergate() {
    local name=$1 admin; shift
    TGX_HTTP=$(free_port); TGX_RESP=$(free_port); admin=$(free_port)
    env TIERGATE_HTTP_LISTEN="127.0.0.1:$TGX_HTTP" TIERGATE_ADMIN_LISTEN="127.0.0.1:$admin" \
        TIERGATE_RESP_LISTEN="127.0.0.1:$TGX_RESP" TIERGATE_L2_URL="redis://127.0.0.1:$L2_PORT" \
        TIERGATE_RUNTIME_WORKER_THREADS=1 TIERGATE_LOG_LEVEL=warn "$@" \
        taskset -c "$SERVER_CPU" "$BIN" >"$WORK/$name.log" 2>&1 &
    TGX_PID=$!; PIDS+=("$TGX_PID"); TGX_ADMIN=$admin
    wait_port "$TGX_HTTP"
    wait_port "$TGX_RESP"
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
}

# --- tiergate over its own redis-server, one worker thread, both on SERVER_CPU
start_redis "$SERVER_CPU"
L2_PORT=$RS; L2_PID=$RS_PID
start_tiergate tiergate
TG_HTTP=$TGX_HTTP; TG_RESP=$TGX_RESP; TG_PID=$TGX_PID; TG_ADMIN=$TGX_ADMIN
TG_PIDS=$TG_PID,$L2_PID
TABLE=()
declare -A RATIO P99

# A second tiergate with L1 off, over the same redis-server, both on SERVER_CPU: every GET
# through it is answered from L2 (one proxy hop in front of Redis). Started once, by the first
# row that needs it; sets T2_HTTP, T2_RESP and T2_PID.
start_l1_off() {
    [ -z "${T2_PID:-}" ] || return 0
    start_tiergate tiergate-l2 TIERGATE_L1_CAPACITY=0
    T2_HTTP=$TGX_HTTP; T2_RESP=$TGX_RESP; T2_PID=$TGX_PID
}
# Stops it once its rows are measured: the other rows measure one tiergate, as deployed in
# front of its Redis, and it alone on the invalidation bus again (it is told at its bus
# connection's next PING), so that Redis does not send its announcements back to it.
stop_l1_off() {
    [ -n "${T2_PID:-}" ] || return 0
    kill "$T2_PID"; wait "$T2_PID" 2>/dev/null || true; T2_PID=
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$TG_ADMIN/metrics" | grep -qx 'tiergate_bus_alone 1' && break
        sleep 0.1
    done
}

if [[ " $ROWS " == *" http "* ]]; then
curl -sf -X PUT --data-binary "$BODY" "http://127.0.0.1:$TG_HTTP/v1/kv/bench" >/dev/null

# --- nginx, one worker on SERVER_CPU, same body size
NG_PORT=$(free_port)
start_nginx nginx "$SERVER_CPU" "$NG_PORT" "    server {
        listen 127.0.0.1:$NG_PORT;
        location / { default_type application/octet-stream; return 200 \"$BODY\"; }
    }"
NG_WORKER=$NGX_WORKER

# --- bare hyper, one worker thread on SERVER_CPU
BH_PORT=$(free_port)
taskset -c "$SERVER_CPU" target/release/examples/bare_hyper "127.0.0.1:$BH_PORT" "$VALUE_BYTES" &
BH_PID=$!; PIDS+=("$BH_PID")
wait_port "$BH_PORT"

echo "==> measuring HTTP (wrk -t$WRK_THREADS -c$CONNS -d$DURATION; servers on cpu $SERVER_CPU, wrk on cpu $LOAD_CPU)"
rounds run_wrk "$TG_PIDS" "http://127.0.0.1:$TG_HTTP/v1/kv/bench" \
    -- run_wrk "$NG_WORKER" "http://127.0.0.1:$NG_PORT/v1/kv/bench" \
    -- run_wrk "$BH_PID" "http://127.0.0.1:$BH_PORT/v1/kv/bench"
read -r t_rps t_p50 t_p99 t_us t_busy <<<"${MED[0]}"
read -r n_rps n_p50 n_p99 n_us n_busy <<<"${MED[1]}"
read -r b_rps b_p50 b_p99 b_us b_busy <<<"${MED[2]}"
TABLE+=("$(row http-get-l1 "$t_rps" "$t_p50" "$t_p99" "$t_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$t_busy" "$n_busy")")
RATIO[http]=$(ratio "$t_rps" "$n_rps"); P99[tg]=$t_p99; P99[nginx]=$n_p99

# Latency at a fixed rate, half of tiergate's maximum, for both.
RATE=$(awk -v r="$t_rps" 'BEGIN {printf "%d", r / 2}')
rounds run_oha "$TG_PIDS" "http://127.0.0.1:$TG_HTTP/v1/kv/bench" "$RATE" \
    -- run_oha "$NG_WORKER" "http://127.0.0.1:$NG_PORT/v1/kv/bench" "$RATE"
read -r h_rps h_p50 h_p99 h_us <<<"${MED[0]}"
read -r o_rps o_p50 o_p99 o_us <<<"${MED[1]}"
TABLE+=("$(row http-rate-half "$h_rps" "$h_p50" "$h_p99" "$h_us" "nginx return 200" "$o_rps" "$o_p50" "$o_p99" "$o_us")")
P99[half]=$h_p99
TABLE+=("$(row bare-hyper "$b_rps" "$b_p50" "$b_p99" "$b_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$b_busy" "$n_busy")")

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
read -r m_rps m_p50 m_p99 m_us m_busy < <(run_wrk "$TG_PIDS" "http://127.0.0.1:$TG_HTTP" "$WORK/mix.lua")
TABLE+=("$(row http-mix-90-10 "$m_rps" "$m_p50" "$m_p99" "$m_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$m_busy" "$n_busy")")

# batchGet of 16 of those keys per request.
KEYS16=$(python3 -c 'import json; print(json.dumps({"keys": [f"mix:{i}" for i in range(16)]}))')
cat >"$WORK/batch.lua" <<LUA
wrk.method = "POST"
wrk.body = '$KEYS16'
wrk.headers["Content-Type"] = "application/json"
LUA
read -r g_rps g_p50 g_p99 g_us g_busy < <(run_wrk "$TG_PIDS" "http://127.0.0.1:$TG_HTTP/v1/kv:batchGet" "$WORK/batch.lua")
TABLE+=("$(row http-batch-16 "$g_rps" "$g_p50" "$g_p99" "$g_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$g_busy" "$n_busy")")

# GET answered from L2 (start_l1_off); CPU is the two processes' sum.
start_l1_off
for _ in $(seq 1 100); do
    curl -sf -X PUT --data-binary "$BODY" "http://127.0.0.1:$T2_HTTP/v1/kv/bench" >/dev/null && break
    sleep 0.1
done
read -r l_rps l_p50 l_p99 l_us l_busy < <(run_wrk "$T2_PID,$L2_PID" "http://127.0.0.1:$T2_HTTP/v1/kv/bench")
TABLE+=("$(row http-get-l2 "$l_rps" "$l_p50" "$l_p99" "$l_us" "nginx return 200" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$l_busy" "$n_busy")")
stop_l1_off
fi

if [[ " $ROWS " == *" resp "* || " $ROWS " == *" fwd "* ]]; then
# --- the reference: a redis-server, and twemproxy in front of it, both on SERVER_CPU
start_redis "$SERVER_CPU"
RS_PORT=$RS; REF_PID=$RS_PID
NC_PORT=$(free_port)
cat >"$WORK/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$NC_PORT
  redis: true
  hash: fnv1a_64
  distribution: ketama
  server_connections: 1
  servers:
    - 127.0.0.1:$RS_PORT:1
YML
taskset -c "$SERVER_CPU" nutcracker -c "$WORK/nutcracker.yml" -s "$(free_port)" -a 127.0.0.1 \
    -o "$WORK/nutcracker.log" -p "$WORK/nutcracker.pid" &
NC_PID=$!; PIDS+=("$NC_PID")
wait_port "$NC_PORT"
fi

if [[ " $ROWS " == *" resp "* ]]; then
echo "==> measuring RESP (redis-benchmark -c50 -r100000 -d$VALUE_BYTES; servers on cpu $SERVER_CPU, client on cpu $LOAD_CPU)"
for depth in 1 16; do
    rounds run_rb "$TG_PIDS" "$TG_RESP" set "$depth" -- run_rb "$NC_PID,$REF_PID" "$NC_PORT" set "$depth"
    read -r t_rps t_p50 t_p99 t_us <<<"${MED[0]}"
    read -r r_rps r_p50 r_p99 r_us <<<"${MED[1]}"
    TABLE+=("$(row "resp-set-P$depth" "$t_rps" "${t_p50}ms" "${t_p99}ms" "$t_us" "twemproxy + redis" "$r_rps" "${r_p50}ms" "${r_p99}ms" "$r_us")")
    RATIO[set$depth]=$(ratio "$t_rps" "$r_rps")
done
# Every key the GETs may draw, written to both and read once through tiergate: L1 hits.
resp_fill "$TG_RESP" SET; resp_fill "$RS_PORT" SET; resp_fill "$TG_RESP" GET
for depth in 1 16; do
    rounds run_rb "$TG_PIDS" "$TG_RESP" get "$depth" -- run_rb "$REF_PID" "$RS_PORT" get "$depth"
    read -r t_rps t_p50 t_p99 t_us <<<"${MED[0]}"
    read -r r_rps r_p50 r_p99 r_us <<<"${MED[1]}"
    TABLE+=("$(row "resp-get-P$depth" "$t_rps" "${t_p50}ms" "${t_p99}ms" "$t_us" "redis-server" "$r_rps" "${r_p50}ms" "${r_p99}ms" "$r_us")")
    RATIO[get$depth]=$(ratio "$t_rps" "$r_rps")
done
# The same keys through a tiergate with L1 off (start_l1_off): every GET goes to L2.
start_l1_off
for depth in 1 16; do
    rounds run_rb "$T2_PID,$L2_PID" "$T2_RESP" get "$depth" -- run_rb "$NC_PID,$REF_PID" "$NC_PORT" get "$depth"
    read -r t_rps t_p50 t_p99 t_us <<<"${MED[0]}"
    read -r r_rps r_p50 r_p99 r_us <<<"${MED[1]}"
    TABLE+=("$(row "resp-get-miss-P$depth" "$t_rps" "${t_p50}ms" "${t_p99}ms" "$t_us" "twemproxy + redis" "$r_rps" "${r_p50}ms" "${r_p99}ms" "$r_us")")
    RATIO[miss$depth]=$(ratio "$t_rps" "$r_rps")
done
stop_l1_off
fi

if [[ " $ROWS " == *" fwd "* ]]; then
echo "==> measuring forwarded commands (redis-benchmark -c50 -r100000 -d$VALUE_BYTES -n$FWD_REQUESTS, 8x at -P16, one run per command)"
SLOWER=()
for depth in 1 16; do
    for test in $FWD_TESTS; do
        [ "$test" != lrange_100 ] || { fill_list "$L2_PORT"; fill_list "$RS_PORT"; }
        n=$FWD_REQUESTS
        [[ $test != lrange_100 && $test != mset ]] || n=$((n / 4))
        rounds run_rb "$TG_PIDS" "$TG_RESP" "$test" "$depth" "$n" \
            -- run_rb "$NC_PID,$REF_PID" "$NC_PORT" "$test" "$depth" "$n"
        read -r t_rps t_p50 t_p99 t_us <<<"${MED[0]}"
        read -r r_rps r_p50 r_p99 r_us <<<"${MED[1]}"
        TABLE+=("$(row "resp-fwd-P$depth $test" "$t_rps" "${t_p50}ms" "${t_p99}ms" "$t_us" "twemproxy + redis" "$r_rps" "${r_p50}ms" "${r_p99}ms" "$r_us")")
        r=$(ratio "$t_rps" "$r_rps")
        [ "$(awk -v r="$r" 'BEGIN {print (r >= 1.0) ? 1 : 0}')" = 1 ] || SLOWER+=("$test -P$depth ${r}x")
    done
done
fi

if [[ " $ROWS " == *" origin "* ]]; then
need varnishd:varnish
# --- the origin: an nginx worker on LOAD_CPU (its CPU is nobody's), VALUE_BYTES bodies;
# /api/ cacheable for an hour, /nostore/ never.
OR_PORT=$(free_port)
start_nginx origin "$LOAD_CPU" "$OR_PORT" "    server {
        listen 127.0.0.1:$OR_PORT;
        location /api/ { default_type application/octet-stream; add_header Cache-Control \"max-age=3600\"; return 200 \"$BODY\"; }
        location /nostore/ { default_type application/octet-stream; add_header Cache-Control \"no-store\"; return 200 \"$BODY\"; }
    }"

# --- nginx as the caching proxy (proxy_cache) and plain proxy (proxy_pass), one worker on
# SERVER_CPU, keep-alive to the origin as tiergate's pool has.
NP_PORT=$(free_port)
start_nginx nginx-proxy "$SERVER_CPU" "$NP_PORT" "    proxy_cache_path $WORK/nginx-proxy-cache keys_zone=c:16m;
    upstream origin { server 127.0.0.1:$OR_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NP_PORT;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        location /api/ { proxy_pass http://origin; proxy_cache c; }
        location /nostore/ { proxy_pass http://origin; }
    }"
NP_WORKER=$NGX_WORKER

# --- Varnish (its default VCL honours Cache-Control), on SERVER_CPU; -j none keeps it as
# this user so the scratch directory stays private.
VA_PORT=$(free_port)
taskset -c "$SERVER_CPU" varnishd -F -j none -n "$WORK/varnish" -a "127.0.0.1:$VA_PORT" \
    -b "127.0.0.1:$OR_PORT" -s malloc,256m -p thread_pools=1 >"$WORK/varnish.log" 2>&1 &
VA_MGT=$!; PIDS+=("$VA_MGT")
wait_port "$VA_PORT"
VA_PIDS=$VA_MGT,$(pgrep -P "$VA_MGT" | paste -sd,)

# --- tiergate with the same origin and two routes, over its own redis-server (as deployed).
cat >"$WORK/tiergate-origin.toml" <<CONF
[[origins]]
name = "bench"
upstreams = ["http://127.0.0.1:$OR_PORT"]
  [[origins.routes]]
  prefix = "/api/"
  [[origins.routes]]
  prefix = "/nostore/"
CONF
start_tiergate tiergate-origin TIERGATE_CONFIG="$WORK/tiergate-origin.toml"
TO_HTTP=$TGX_HTTP; TO_PID=$TGX_PID
for url in "http://127.0.0.1:$TO_HTTP" "http://127.0.0.1:$NP_PORT" "http://127.0.0.1:$VA_PORT"; do
    [ "$(curl -sf "$url/api/obj")" = "$BODY" ] || { echo "no cached answer from $url" >&2; exit 1; }
done

echo "==> measuring the origin tier (wrk -t$WRK_THREADS -c$CONNS -d$DURATION; proxies on cpu $SERVER_CPU, wrk and the origin on cpu $LOAD_CPU)"
rounds run_wrk "$TO_PID,$L2_PID" "http://127.0.0.1:$TO_HTTP/api/obj" \
    -- run_wrk "$NP_WORKER" "http://127.0.0.1:$NP_PORT/api/obj" \
    -- run_wrk "$VA_PIDS" "http://127.0.0.1:$VA_PORT/api/obj"
read -r t_rps t_p50 t_p99 t_us t_busy <<<"${MED[0]}"
read -r n_rps n_p50 n_p99 n_us n_busy <<<"${MED[1]}"
read -r v_rps v_p50 v_p99 v_us v_busy <<<"${MED[2]}"
TABLE+=("$(row origin-hit "$t_rps" "$t_p50" "$t_p99" "$t_us" "nginx proxy_cache" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$t_busy" "$n_busy")")
TABLE+=("$(row origin-hit "$t_rps" "$t_p50" "$t_p99" "$t_us" "varnish" "$v_rps" "$v_p50" "$v_p99" "$v_us" "$t_busy" "$v_busy")")
RATIO[hit_nginx]=$(ratio "$t_rps" "$n_rps"); RATIO[hit_varnish]=$(ratio "$t_rps" "$v_rps")
RATIO[hit_nginx_cpu]=$(ratio "$n_us" "$t_us"); RATIO[hit_varnish_cpu]=$(ratio "$v_us" "$t_us")
P99[hit]=$t_p99; P99[hit_nginx]=$n_p99; P99[hit_varnish]=$v_p99; HIT_BUSY=$t_busy
# The same hits in PIPE_DEPTH-deep pipelines (TechEmpower's plaintext method): the load
# generator's syscalls shared by PIPE_DEPTH requests, so that the row shows more of what each
# proxy can serve on its core. Not how most clients talk HTTP/1.1.
cat >"$WORK/pipeline.lua" <<'LUA'
init = function(args)
    local r = {}
    for i = 1, tonumber(args[1]) do r[i] = wrk.format() end
    req = table.concat(r)
end
request = function() return req end
LUA
rounds run_wrk "$TO_PID,$L2_PID" "http://127.0.0.1:$TO_HTTP/api/obj" "$WORK/pipeline.lua" "$PIPE_DEPTH" \
    -- run_wrk "$NP_WORKER" "http://127.0.0.1:$NP_PORT/api/obj" "$WORK/pipeline.lua" "$PIPE_DEPTH" \
    -- run_wrk "$VA_PIDS" "http://127.0.0.1:$VA_PORT/api/obj" "$WORK/pipeline.lua" "$PIPE_DEPTH"
read -r t_rps t_p50 t_p99 t_us t_busy <<<"${MED[0]}"
read -r n_rps n_p50 n_p99 n_us n_busy <<<"${MED[1]}"
read -r v_rps v_p50 v_p99 v_us v_busy <<<"${MED[2]}"
TABLE+=("$(row "origin-hit-P$PIPE_DEPTH" "$t_rps" "$t_p50" "$t_p99" "$t_us" "nginx proxy_cache" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$t_busy" "$n_busy")")
TABLE+=("$(row "origin-hit-P$PIPE_DEPTH" "$t_rps" "$t_p50" "$t_p99" "$t_us" "varnish" "$v_rps" "$v_p50" "$v_p99" "$v_us" "$t_busy" "$v_busy")")
RATIO[hitp_nginx]=$(ratio "$t_rps" "$n_rps"); RATIO[hitp_varnish]=$(ratio "$t_rps" "$v_rps")
P99[hitp]=$t_p99; P99[hitp_nginx]=$n_p99; P99[hitp_varnish]=$v_p99
rounds run_wrk "$TO_PID,$L2_PID" "http://127.0.0.1:$TO_HTTP/nostore/obj" \
    -- run_wrk "$NP_WORKER" "http://127.0.0.1:$NP_PORT/nostore/obj"
read -r t_rps t_p50 t_p99 t_us t_busy <<<"${MED[0]}"
read -r n_rps n_p50 n_p99 n_us n_busy <<<"${MED[1]}"
TABLE+=("$(row origin-miss "$t_rps" "$t_p50" "$t_p99" "$t_us" "nginx proxy_pass" "$n_rps" "$n_p50" "$n_p99" "$n_us" "$t_busy" "$n_busy")")
RATIO[miss_cpu]=$(ratio "$t_us" "$n_us")
fi

printf '\n%-23s %12s %9s %9s %10s | %-22s %12s %9s %9s %10s | %6s | %s\n' \
    row "req/s" p50 p99 "cpu us/req" reference "req/s" p50 p99 "cpu us/req" ratio "load CPUs busy"
printf '%s\n' "${TABLE[@]}"

# Issue 6's targets, from this run.
at_least() { awk -v r="$1" 'BEGIN {print (r >= 1.0) ? 1 : 0}'; }
echo
echo "targets:"
if [ -n "${RATIO[http]:-}" ]; then
    p99_ok=$(awk -v a="$(ms "${P99[tg]}")" -v b="$(ms "${P99[nginx]}")" 'BEGIN {print (a <= b) ? 1 : 0}')
    ok=$(( $(at_least "${RATIO[http]}") && p99_ok ))
    echo "  HTTP GET L1 hit >= 1.0x nginx, p99 no worse: ${RATIO[http]}x, p99 ${P99[tg]} vs ${P99[nginx]}: $(verdict $ok)"
    ok=$(awk -v a="$(ms "${P99[half]}")" 'BEGIN {print (a <= 1.0) ? 1 : 0}')
    echo "  HTTP GET L1 hit p99 <= 1 ms at half the maximum rate ($RATE req/s): ${P99[half]}: $(verdict "$ok")"
fi
if [ -n "${RATIO[get1]:-}" ]; then
    for depth in 1 16; do
        echo "  RESP GET (L1 hit) -P $depth >= 1.0x redis-server: ${RATIO[get$depth]}x: $(verdict "$(at_least "${RATIO[get$depth]}")")"
    done
    for depth in 1 16; do
        echo "  RESP SET (through to L2) -P $depth >= 1.0x twemproxy: ${RATIO[set$depth]}x: $(verdict "$(at_least "${RATIO[set$depth]}")")"
    done
    for depth in 1 16; do
        echo "  RESP GET (L1 off, from L2) -P $depth vs twemproxy: ${RATIO[miss$depth]}x"
    done
fi
if [[ " $ROWS " == *" fwd "* ]]; then
    echo "  issue 16, commands through tiergate below twemproxy's req/s: ${SLOWER[*]:-none}"
fi
if [ -n "${RATIO[hit_nginx]:-}" ]; then
    no_worse() { awk -v a="$(ms "$1")" -v b="$(ms "$2")" 'BEGIN {print (a <= b) ? 1 : 0}'; }
    ok=$(( $(awk -v r="${RATIO[hit_nginx]}" 'BEGIN {print (r >= 2.0) ? 1 : 0}') && $(no_worse "${P99[hit]}" "${P99[hit_nginx]}") ))
    echo "  origin route cache hit >= 2x nginx proxy_cache, p99 no worse: ${RATIO[hit_nginx]}x, p99 ${P99[hit]} vs ${P99[hit_nginx]}: $(verdict $ok) (CPU per hit ${RATIO[hit_nginx_cpu]}x less)"
    ok=$(( $(awk -v r="${RATIO[hit_varnish]}" 'BEGIN {print (r >= 3.0) ? 1 : 0}') && $(no_worse "${P99[hit]}" "${P99[hit_varnish]}") ))
    echo "  origin route cache hit >= 3x Varnish, p99 no worse: ${RATIO[hit_varnish]}x, p99 ${P99[hit]} vs ${P99[hit_varnish]}: $(verdict $ok) (CPU per hit ${RATIO[hit_varnish_cpu]}x less)"
    if [ "$HIT_BUSY" -ge 95 ]; then
        echo "    wrk's CPUs were ${HIT_BUSY}% busy through tiergate's hits: these ratios are bounded by the load generator (give it more CPUs: LOAD_CPU)"
    fi
    for ref in nginx varnish; do
        ok=$(no_worse "${P99[hitp]}" "${P99[hitp_$ref]}")
        echo "  origin route cache hit in $PIPE_DEPTH-deep pipelines vs $ref: ${RATIO[hitp_$ref]}x, p99 ${P99[hitp]} vs ${P99[hitp_$ref]} (p99 no worse: $(verdict "$ok"))"
    done
    ok=$(awk -v r="${RATIO[miss_cpu]}" 'BEGIN {print (r <= 1.15) ? 1 : 0}')
    echo "  origin route miss CPU per request <= 1.15x nginx proxy_pass: ${RATIO[miss_cpu]}x: $(verdict "$ok")"
fi
echo "  (RSS per idle RESP connection: loadtest/idle_memory.sh)"

#!/usr/bin/env bash
# Bytes of server RSS per idle connection: opens N connections (default 10000) that each
# send one PING, and compares the server's RSS before and after, for tiergate (standalone)
# and for redis-server on the same machine; then N HTTP keep-alive connections that each GET
# one key (an L1 hit), for tiergate's HTTP door and for nginx (one worker, `return 200`).
# Usage: loadtest/idle_memory.sh [N]   (BIN=path/to/tiergate: another build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ulimit -n "$(ulimit -Hn)"
need=$((N + 100))
[ "$(ulimit -n)" -ge "$need" ] || { echo "need $need open files, have $(ulimit -n)"; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install -y redis-server)"; exit 1; }

source loadtest/lib.sh
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status"; }

# measure NAME PID PORT [PATH]: opens the connections (HTTP GETs of PATH, when given),
# prints bytes per connection
measure() {
    local name=$1 pid=$2 port=$3 path=(${4:+"$4"}) before after
    sleep 0.5
    before=$(rss "$pid")
    mkfifo "$WORK/hold-$name"
    python3 loadtest/idle_conns.py "$port" "$N" "${path[@]}" <"$WORK/hold-$name" >"$WORK/out-$name" &
    local client=$!
    exec 4>"$WORK/hold-$name"
    for _ in $(seq 1 600); do grep -q ready "$WORK/out-$name" 2>/dev/null && break; sleep 0.1; done
    grep -q "ready $N" "$WORK/out-$name" || { echo "$name: connections did not all answer"; exit 1; }
    sleep 1
    after=$(rss "$pid")
    exec 4>&-
    wait "$client" || true
    printf '%-14s %10d conns  rss before %8.1f MiB  after %8.1f MiB  %8.0f bytes/conn\n' \
        "$name" "$N" "$(echo "$before/1048576" | bc -l)" "$(echo "$after/1048576" | bc -l)" \
        "$(echo "($after-$before)/$N" | bc -l)"
}

BIN=${BIN:-target/release/tiergate}
[[ $BIN != target/release/tiergate ]] || cargo build --release --quiet --bin tiergate
TG=$(free_port); TG_HTTP=$(free_port)
# HTTP/1 connections between requests idle out at header_read_timeout (10 s): longer here,
# so that none closes while the others connect.
TIERGATE_RESP_LISTEN=127.0.0.1:$TG TIERGATE_HTTP_LISTEN=127.0.0.1:$TG_HTTP \
TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) TIERGATE_LOG_LEVEL=warn \
TIERGATE_HTTP_HEADER_READ_TIMEOUT=300s \
    "$BIN" >"$WORK/tiergate.log" 2>&1 &
PIDS+=($!); TG_PID=$!
wait_port "$TG"
RS=$(free_port)
redis-server --port "$RS" --save "" --appendonly no --maxclients $((N + 100)) >"$WORK/redis.log" 2>&1 &
PIDS+=($!); RS_PID=$!
wait_port "$RS"

measure tiergate "$TG_PID" "$TG"
measure redis-server "$RS_PID" "$RS"

# HTTP keep-alive connections, each after one GET of a key L1 holds.
curl -sf -X PUT --data-binary idle "http://127.0.0.1:$TG_HTTP/v1/kv/idle" >/dev/null
measure tiergate-http "$TG_PID" "$TG_HTTP" /v1/kv/idle
NG=$(free_port)
NGX_CONNS=$((N + 100)) start_nginx nginx "" "$NG" "    server {
        listen 127.0.0.1:$NG;
        keepalive_timeout 300s;
        location / { default_type application/octet-stream; return 200 idle; }
    }"
measure nginx "$NGX_WORKER" "$NG" /v1/kv/idle

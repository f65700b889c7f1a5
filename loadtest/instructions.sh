#!/usr/bin/env bash
# User-space instructions tiergate spends per request, counted by callgrind: a figure that,
# unlike req/s on this drifting VM, is the same from run to run, so it shows what one change
# to a hot path costs or saves. Runs the release binary under callgrind (one worker thread)
# over its own redis-server, counts only while the load runs, and prints instructions per
# request for each path:
#   http-get-l1   GET /v1/kv/{key}, an L1 hit (wrk -c16, DURATION)
#   resp-get-P16  GET of 100k keys, all L1 hits (redis-benchmark -P 16)
#   resp-set-P16  SET of random keys through to Redis, 16-deep pipelines
#   resp-set-P1   the same, unpipelined
#   origin-hit    GET of a proxy route's URL the cache holds (wrk -c16; an nginx origin)
#   origin-miss   GET through a route whose origin answers no-store: every request reaches it
#   resp-TEST-P{1,16}  (not by default) any other redis-benchmark -t TEST, as compare.sh's
#                 resp-fwd rows run it: resp-lpush-P16, resp-hset-P1 (forwarded), resp-incr-P16 (served,
#                 written through), resp-lrange_100-P1 (LRANGE mylist 0 99 of 100 elements)
# Usage: loadtest/instructions.sh   (PATHS="..." DURATION=5s REQUESTS=100000 KEEP=dir)
# KEEP=dir keeps each path's callgrind profile there (dir/NAME.cg), for callgrind_annotate.
# Needs valgrind, wrk, redis-server, redis-benchmark and redis-cli (and nginx for origin-*).
set -euo pipefail
cd "$(dirname "$0")/.."
PATHS=${PATHS:-http-get-l1 resp-get-P16 resp-set-P16 resp-set-P1}
DURATION=${DURATION:-5s}
REQUESTS=${REQUESTS:-100000}
source loadtest/lib.sh
for tool in valgrind callgrind_control callgrind_annotate wrk redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "missing: $tool"; exit 1; }
done
cargo build --release --quiet
start_redis ""
# The origin of the origin-* paths: an nginx, 64-byte bodies, /api/ cacheable, /nostore/ not.
CONFIG=()
if [[ " $PATHS " == *" origin-"* ]]; then
    command -v nginx >/dev/null || { echo "missing: nginx"; exit 1; }
    OR_PORT=$(free_port)
    BODY=$(head -c 64 /dev/zero | tr '\0' 'x')
    start_nginx origin "" "$OR_PORT" "    server {
        listen 127.0.0.1:$OR_PORT;
        location /api/ { add_header Cache-Control \"max-age=3600\"; return 200 \"$BODY\"; }
        location /nostore/ { add_header Cache-Control \"no-store\"; return 200 \"$BODY\"; }
    }"
    printf '[[origins]]\nname = "bench"\nupstreams = ["http://127.0.0.1:%s"]\n%s\n' "$OR_PORT" \
        '[[origins.routes]]
prefix = "/api/"
[[origins.routes]]
prefix = "/nostore/"' >"$WORK/origin.toml"
    CONFIG=(TIERGATE_CONFIG="$WORK/origin.toml")
fi
HTTP=$(free_port) RESP=$(free_port) ADMIN=$(free_port)
TIERGATE_L2_URL="redis://127.0.0.1:$RS" TIERGATE_HTTP_LISTEN="127.0.0.1:$HTTP" \
    TIERGATE_RESP_LISTEN="127.0.0.1:$RESP" TIERGATE_ADMIN_LISTEN="127.0.0.1:$ADMIN" \
    TIERGATE_RUNTIME_WORKER_THREADS=1 env "${CONFIG[@]}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.%p" \
    target/release/tiergate >"$WORK/tiergate.log" 2>&1 &
TG=$!
PIDS+=("$TG")
for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { echo "tiergate did not become ready"; exit 1; }

# Every key redis-benchmark -r 100000 may draw, written and read once: GETs are then L1 hits.
fill() {
    python3 - "$RESP" "$1" <<'PY'
import socket, sys
port, cmd = int(sys.argv[1]), sys.argv[2].encode()
s = socket.create_connection(("127.0.0.1", port))
for start in range(0, 100000, 1000):
    out = b"".join(
        b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$2\r\nxx\r\n" % i if cmd == b"SET"
        else b"*2\r\n$3\r\nGET\r\n$16\r\nkey:%012d\r\n" % i
        for i in range(start, start + 1000))
    s.sendall(out)
    want, got = (5 if cmd == b"SET" else 8) * 1000, 0
    while got < want:
        got += len(s.recv(1 << 16))
PY
}

# count NAME REQUESTS COMMAND...: instructions while COMMAND runs, divided by REQUESTS
# (for wrk, REQUESTS is read from its output).
count() {
    local name=$1 n=$2 total
    shift 2
    callgrind_control -z "$TG" >/dev/null 2>&1
    callgrind_control -i on "$TG" >/dev/null 2>&1
    "$@" >"$WORK/load.txt"
    callgrind_control -i off "$TG" >/dev/null 2>&1
    callgrind_control -d "$name" "$TG" >/dev/null 2>&1
    [ "$n" != wrk ] || n=$(awk '/requests in/ {print $1}' "$WORK/load.txt")
    total=$(callgrind_annotate "$(ls -t "$WORK"/cg.* | head -1)" 2>/dev/null |
        awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%-14s %10d requests %8d instructions each\n' "$name" "$n" $((total / n))
    [ -z "${KEEP:-}" ] || cp "$(ls -t "$WORK"/cg.* | head -1)" "$KEEP/$name.cg"
}

for path in $PATHS; do
    case $path in
    http-get-l1)
        curl -sf -X PUT --data-binary "$(printf 'x%.0s' $(seq 64))" \
            "http://127.0.0.1:$HTTP/v1/kv/hot" >/dev/null
        wrk -t1 -c16 -d1s "http://127.0.0.1:$HTTP/v1/kv/hot" >/dev/null
        count "$path" wrk wrk -t1 -c16 -d"$DURATION" "http://127.0.0.1:$HTTP/v1/kv/hot"
        ;;
    origin-hit | origin-miss)
        url="http://127.0.0.1:$HTTP/api/obj"
        [ "$path" = origin-hit ] || url="http://127.0.0.1:$HTTP/nostore/obj"
        wrk -t1 -c16 -d1s "$url" >/dev/null
        count "$path" wrk wrk -t1 -c16 -d"$DURATION" "$url"
        ;;
    resp-get-P16)
        fill SET
        fill GET
        count "$path" "$REQUESTS" redis-benchmark -p "$RESP" -t get -n "$REQUESTS" \
            -r 100000 -P 16 -q
        ;;
    resp-set-P16 | resp-set-P1)
        count "$path" "$REQUESTS" redis-benchmark -p "$RESP" -t set -n "$REQUESTS" \
            -r 100000 -d 64 -P "${path##*-P}" -q
        ;;
    resp-*-P*)
        test=${path#resp-}; test=${test%-P*}
        what=(-t "$test")
        if [ "$test" = lrange_100 ]; then
            what=(LRANGE mylist 0 99)
            redis-cli -p "$RS" DEL mylist >/dev/null
            # shellcheck disable=SC2046 # one argument per element
            redis-cli -p "$RS" RPUSH mylist $(yes "$(printf 'x%.0s' $(seq 64))" | head -100) >/dev/null
        fi
        redis-benchmark -p "$RESP" -n 10000 -r 100000 -d 64 -P "${path##*-P}" -q "${what[@]}" \
            >/dev/null 2>&1
        count "$path" "$REQUESTS" redis-benchmark -p "$RESP" -n "$REQUESTS" -r 100000 -d 64 \
            -P "${path##*-P}" -q "${what[@]}"
        ;;
    *) echo "unknown path $path"; exit 1 ;;
    esac
done

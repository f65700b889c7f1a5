#!/usr/bin/env bash
# Zero-downtime restart of one tiergate on one host.
#
#   scripts/rolling-restart.sh OLD_PID [-- COMMAND...]
#       Starts COMMAND (default: target/release/tiergate, with this shell's environment, so
#       the same TIERGATE_* variables and --config) beside the running instance OLD_PID. Both
#       share the ports through SO_REUSEPORT (http.reuse_port, on by default). Once the new
#       instance says `ready pid=<its pid>` on the admin port, OLD_PID gets SIGTERM: it stops
#       accepting, keeps serving open connections for shutdown.drain_delay with
#       `Connection: close` on every HTTP/1 response (clients reconnect, to the new one),
#       then closes idle connections (h2: GOAWAY), finishes in-flight requests and exits.
#       The new instance's stderr goes to $RESTART_LOG (default ./tiergate.<pid>.log).
#
#   scripts/rolling-restart.sh --demo [SECONDS]
#       Shows it: a redis-server, a tiergate, and wrk sending GET and PUT for SECONDS
#       (default 10) over keep-alive connections while the instance is restarted twice.
#       Prints wrk's totals and the failed requests: socket errors and 5xx answers (404s are
#       keys not written yet).
#
# Linux resets connections still in a closing listener's SYN or accept queue unless
# net.ipv4.tcp_migrate_req = 1 (kernel 5.14+, in sysctl.conf), which hands them to the other
# listener of the port. tiergate takes every queued connection before it closes, so without
# the sysctl only a connection arriving in the microseconds of the close itself can be lost.
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN=${TIERGATE_ADMIN_LISTEN:-127.0.0.1:9090}
ADMIN=${ADMIN/0.0.0.0/127.0.0.1}

# restart OLD_PID COMMAND...: sets NEW_PID. (Not printed for a $(...) to capture: a subshell
# would run the demo's cleanup trap when it ends.)
restart() {
    local old=$1; shift
    kill -0 "$old" 2>/dev/null || { echo "no process $old" >&2; exit 1; }
    local log=${RESTART_LOG:-}
    "$@" 2>"${log:-/dev/null}" &
    local new=$!
    [ -n "$log" ] || echo "note: set RESTART_LOG to keep the new instance's log" >&2
    for _ in $(seq 1 600); do
        kill -0 "$new" 2>/dev/null || { echo "the new instance exited:" >&2; [ -n "$log" ] && tail -5 "$log" >&2; exit 1; }
        # A new connection each time: either instance may answer; only the new one's pid counts.
        if [ "$(curl -s --max-time 1 "http://$ADMIN/readyz" || true)" = "ready pid=$new" ]; then
            kill -TERM "$old"
            while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
            NEW_PID=$new
            return 0
        fi
        sleep 0.05
    done
    echo "the new instance $new did not become ready within 30s; $old keeps serving" >&2
    kill -TERM "$new"
    exit 1
}

if [ "${1:-}" != "--demo" ]; then
    [ $# -ge 1 ] || { sed -n '2,30p' "$0"; exit 64; }
    OLD=$1; shift
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || set -- target/release/tiergate
    restart "$OLD" "$@"
    echo "$OLD drained and exited; $NEW_PID serves"
    exit 0
fi

SECS=${2:-10}
for tool in redis-server wrk curl; do
    command -v $tool >/dev/null || { echo "$tool missing (apt-get install -y redis-server wrk curl)"; exit 1; }
done
source loadtest/lib.sh
cargo build --release --quiet --bin tiergate
start_redis ""
HTTP=$(free_port)
export TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_HTTP_LISTEN=127.0.0.1:$HTTP
export TIERGATE_RESP_LISTEN=127.0.0.1:$(free_port) TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port)
export TIERGATE_LOG_LEVEL=warn TIERGATE_RUNTIME_WORKER_THREADS=1
ADMIN=$TIERGATE_ADMIN_LISTEN
target/release/tiergate 2>"$WORK/first.log" &
PID=$!
for _ in $(seq 1 200); do
    [ "$(curl -s "http://$ADMIN/readyz" || true)" = "ready pid=$PID" ] && break
    sleep 0.05
done
cat >"$WORK/mix.lua" <<'LUA'
-- Every fourth request a PUT, the rest GETs of the same 1000 keys.
local n = 0
request = function()
    n = n + 1
    local path = "/v1/kv/demo:" .. (math.floor(n / 4) % 1000)
    if n % 4 == 0 then return wrk.format("PUT", path, nil, "value-" .. n) end
    return wrk.format("GET", path)
end
-- Answers by kind: 404s are keys not written yet; any 5xx is a failed request.
n404, n5xx = 0, 0
response = function(status)
    if status == 404 then n404 = n404 + 1 elseif status >= 500 then n5xx = n5xx + 1 end
end
local threads = {}
setup = function(t) table.insert(threads, t) end
done = function()
    local a, b = 0, 0
    for _, t in ipairs(threads) do a = a + t:get("n404"); b = b + t:get("n5xx") end
    io.write(string.format("404 answers: %d; 5xx answers: %d\n", a, b))
end
LUA
curl -s -X PUT --data x "http://127.0.0.1:$HTTP/v1/kv/demo:0" >/dev/null
wrk -t1 -c32 -d"${SECS}s" -s "$WORK/mix.lua" "http://127.0.0.1:$HTTP" >"$WORK/wrk.txt" &
WRK=$!
for round in 1 2; do
    sleep "$(echo "$SECS / 3" | bc -l)"
    RESTART_LOG="$WORK/restart$round.log" restart "$PID" target/release/tiergate
    echo "restart $round: pid $PID drained and exited; pid $NEW_PID serves"
    PID=$NEW_PID
done
PIDS+=("$PID")
wait "$WRK"
cat "$WORK/wrk.txt"
# wrk counts 404s (keys not written yet) as non-2xx; those are answers, not failures.
errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$WORK/wrk.txt")
server=$(awk '/5xx answers/ {print $NF}' "$WORK/wrk.txt")
echo "failed requests across 2 restarts: $(( ${errors:-0} + ${server:-0} )) (socket errors ${errors:-0}, 5xx ${server:-0})"

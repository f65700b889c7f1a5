#!/usr/bin/env bash
# Cross-instance invalidation delay: two tiergate processes (A, B) on one redis-server. For
# each round, B caches a key in L1, A writes a new value (RESP SET, acknowledged), and a client
# polls B until it answers the new value. Prints the delay from A's acknowledgement to B's
# first fresh answer (p50, p99, max), and how many reads after the ack were still stale: the
# staleness window the invalidation bus leaves. The delay includes one client round trip to B.
# Usage: loadtest/invalidation_delay.sh [ROUNDS]   (default 2000)
# Tracking mode: TIERGATE_L2_INVALIDATION=tracking loadtest/invalidation_delay.sh (the env reaches both instances).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2000}
command -v redis-server >/dev/null || { echo "redis-server missing (apt-get install -y redis-server)"; exit 1; }

source loadtest/lib.sh

cargo build --release --quiet --bin tiergate
start_redis ""
start() { # NAME RESP_PORT
    TIERGATE_L2_URL=redis://127.0.0.1:$RS TIERGATE_RESP_LISTEN=127.0.0.1:$2 \
    TIERGATE_HTTP_LISTEN=127.0.0.1:$(free_port) TIERGATE_ADMIN_LISTEN=127.0.0.1:$(free_port) \
    TIERGATE_LOG_LEVEL=warn TIERGATE_L1_MAX_TTL=1h target/release/tiergate >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$2"
}
A=$(free_port); B=$(free_port)
start a "$A"; start b "$B"
sleep 1 # both subscribe to the bus

python3 - "$A" "$B" "$ROUNDS" <<'PY'
import socket, sys, time

def conn(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")

def call(c, *args):
    s, f = c
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2]
    return line.rstrip(b"\r\n")

a, b = conn(int(sys.argv[1])), conn(int(sys.argv[2]))
rounds = int(sys.argv[3])
delays, polls, stale = [], 0, 0
for i in range(rounds):
    old, new = b"v%d" % i, b"v%d" % (i + 1)
    call(a, b"SET", b"k", old)
    while call(b, b"GET", b"k") != old:  # wait until B has the old value (bus may lag)
        pass
    call(b, b"GET", b"k")  # now from B's L1
    call(a, b"SET", b"k", new)
    acked = time.perf_counter()
    while True:
        polls += 1
        if call(b, b"GET", b"k") == new:
            delays.append(time.perf_counter() - acked)
            break
        stale += 1
delays.sort()
q = lambda p: delays[min(len(delays) - 1, int(p * len(delays)))] * 1e6
print(f"rounds {rounds}  stale reads after the ack {stale}  "
      f"delay from A's ack to B's fresh read: p50 {q(0.5):.0f} us  p99 {q(0.99):.0f} us  max {delays[-1] * 1e6:.0f} us")
PY

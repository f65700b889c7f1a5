#!/usr/bin/env python3
"""Hostile-client figures for the RESP door (issue 15's note), against a running gateway:

  rss-declared  RSS growth while N connections each declare a 4 MiB value in 40 bytes
  rss-mget      RSS growth while 3 clients each ask for MGET of one 4 MiB key x128 (512 MiB
                replies) and read them slowly
  config-glob   how long CONFIG GET takes for a pattern of K stars and a 'z'

Usage: loadtest/hostile.py PORT PID [rss-declared N | rss-mget | config-glob K]
PID is the gateway's process id (for /proc/PID/status). Standard library only.
"""
import socket
import sys
import time


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_reply_line(s):
    buf = b""
    while not buf.endswith(b"\r\n"):
        d = s.recv(1)
        if not d:
            return buf + b"<closed>"
        buf += d
    return buf


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def rss_declared(port, pid, n):
    before = rss(pid)
    conns = []
    for _ in range(n):
        s = connect(port)
        s.sendall(b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$4194304\r\n")
        conns.append(s)
    time.sleep(2)
    during = rss(pid)
    for s in conns:
        s.close()
    time.sleep(2)
    after = rss(pid)
    print(f"rss-declared n={n}: before {mib(before)}, with them open {mib(during)} "
          f"(+{mib(during - before)}), after they closed {mib(after)}")


def rss_mget(port, pid):
    s = connect(port)
    s.sendall(command("SET", "amp:big", b"x" * (4 << 20)))
    print("SET:", read_reply_line(s))
    # One GET first, so the MGETs are answered from L1 (tiered: the key's first read loads it).
    s.sendall(command("GET", "amp:big"))
    header = read_reply_line(s)
    left = int(header[1:-2]) + 2
    while left:
        left -= len(s.recv(min(left, 1 << 20)))
    before = rss(pid)
    clients = []
    for _ in range(3):
        c = connect(port)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.sendall(command("MGET", *(["amp:big"] * 128)))
        clients.append(c)
    peak = before
    received = [0, 0, 0]
    # Read slowly: 1 MiB per client every 100 ms, for up to 10 s, sampling RSS.
    deadline = time.time() + 10
    while time.time() < deadline:
        for i, c in enumerate(clients):
            c.settimeout(0.05)
            try:
                d = c.recv(1 << 20)
                received[i] += len(d)
            except (socket.timeout, ConnectionError):
                pass
        peak = max(peak, rss(pid))
        time.sleep(0.1)
    firsts = []
    for c in clients:
        c.settimeout(0.5)
        try:
            firsts.append(c.recv(64)[:40])
        except (socket.timeout, ConnectionError):
            firsts.append(b"")
    print(f"rss-mget: before {mib(before)}, peak while 3 clients read slowly {mib(peak)} "
          f"(+{mib(peak - before)}); bytes received per client {received}; "
          f"bytes after 10 s {firsts}")
    for c in clients:
        c.close()


def config_glob(port, k):
    s = connect(port)
    pattern = "*" * k + "z"
    start = time.perf_counter()
    s.sendall(command("CONFIG", "GET", pattern))
    reply = read_reply_line(s)
    took = time.perf_counter() - start
    print(f"config-glob stars={k}: {took * 1e3:.3f} ms, reply {reply!r}")


def main():
    port, pid, what = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if what == "rss-declared":
        rss_declared(port, pid, int(sys.argv[4]) if len(sys.argv) > 4 else 500)
    elif what == "rss-mget":
        rss_mget(port, pid)
    elif what == "config-glob":
        config_glob(port, int(sys.argv[4]) if len(sys.argv) > 4 else 40)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""redis-py used the way applications use it, against tiergate's RESP door.

Run by `redis_py_as_applications_use_it` in tests/clients.rs:

    python3 tests/clients/redis_py.py GATEWAY BUSY_GATEWAY REDIS

GATEWAY and BUSY_GATEWAY are the host:port of two tiergates over the one redis-server at
REDIS (host:port); BUSY_GATEWAY lends at most 2 dedicated connections
(`l2.dedicated_connections`). REDIS is only read, to see clients blocked in it.

Scenarios: a non-transactional pipeline of served and forwarded commands, a transactional one,
WATCH with a retry loop from two threads, pub/sub with a `run_in_thread` listener, BLPOP with
a timeout, and -BUSY from an exhausted pool; each in RESP2 and in RESP3 (`protocol=3`, the
default since redis-py 8). Prints one line per scenario; exits non-zero, with the failures'
tracebacks, if any fails. Nothing asserts a timing: waits are for conditions, bounded by
SETTLE.
"""

import faulthandler
import queue
import sys
import threading
import time
import traceback

try:
    import redis
except ImportError:
    sys.exit("redis-py is not installed: scripts/test.sh installs the version the tests use")

# Bound on every wait for a condition (as tests/support's SETTLE).
SETTLE = 20.0
# How many times each of two threads increments the WATCHed counter.
INCREMENTS = 100
# The scenarios run once per protocol (`main`), RESP2 then RESP3, over keys prefixed apart.
PROTOCOL = 2
P = "py2:"


def hostport(s):
    host, _, port = s.rpartition(":")
    return host, int(port)


def connect(addr, protocol=None):
    """A client of tiergate (in the protocol of the run), or of Redis with `protocol=2`."""
    host, port = addr
    return redis.Redis(
        host=host, port=port, decode_responses=True, protocol=protocol or PROTOCOL
    )


def eventually(what, cond):
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")


def pairs(replies):
    """Pairs as tuples: redis-py gives BLPOP's and ZRANGE WITHSCORES' as lists in RESP3."""
    return [tuple(r) if isinstance(r, list) else r for r in replies]


def eq(got, want, what=""):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


def blocked_clients(direct):
    return direct.info("clients")["blocked_clients"]


def pipeline(gw, direct):
    r = connect(gw)
    # GET, SET, INCRBY, MGET, DEL and EXISTS are served by tiergate; the others forwarded.
    p = r.pipeline(transaction=False)
    p.set(f"{P}p:s", "v")
    p.get(f"{P}p:s")
    p.incr(f"{P}p:n")
    p.incrby(f"{P}p:n", 41)
    p.hset(f"{P}p:h", mapping={"f1": "a", "f2": "b"})
    p.hgetall(f"{P}p:h")
    p.lpush(f"{P}p:l", "x", "y", "z")
    p.lrange(f"{P}p:l", 0, -1)
    p.zadd(f"{P}p:z", {"b": 2, "a": 1})
    p.zrange(f"{P}p:z", 0, -1, withscores=True)
    p.mget(f"{P}p:s", f"{P}p:missing", f"{P}p:n")
    p.delete(f"{P}p:s", f"{P}p:h")
    p.exists(f"{P}p:s")
    got = p.execute()
    got[9] = pairs(got[9])
    eq(
        got,
        [
            True,
            "v",
            1,
            42,
            2,
            {"f1": "a", "f2": "b"},
            3,
            ["z", "y", "x"],
            2,
            [("a", 1.0), ("b", 2.0)],
            ["v", None, "42"],
            2,
            0,
        ],
        "pipeline",
    )
    # A command that fails fails alone, and the pipeline says which.
    p = r.pipeline(transaction=False)
    p.get(f"{P}p:n")
    p.lpush(f"{P}p:n", "x")
    p.get(f"{P}p:n")
    got = p.execute(raise_on_error=False)
    eq((got[0], got[2]), ("42", "42"), "around the failure")
    assert isinstance(got[1], redis.ResponseError) and "WRONGTYPE" in str(got[1]), got[1]
    eq(r.get(f"{P}p:s"), None, "no stale copy after DEL")
    eq(direct.get(f"{P}p:n"), "42", "Redis")
    eq(direct.zcard(f"{P}p:z"), 2, "Redis")


def transaction(gw, direct):
    r = connect(gw)
    r.set(f"{P}t:k", "old")
    eq(r.get(f"{P}t:k"), "old")
    for round in range(1, 4):
        p = r.pipeline(transaction=True)
        p.set(f"{P}t:k", f"new{round}")
        p.get(f"{P}t:k")
        p.incrby(f"{P}t:n", 5)
        p.rpush(f"{P}t:l", "a", "b")
        eq(p.execute(), [True, f"new{round}", 5 * round, 2 * round], "MULTI/EXEC")
        # Applied: tiergate no longer serves what it held before.
        eq(r.get(f"{P}t:k"), f"new{round}", "after EXEC")
    eq(direct.get(f"{P}t:k"), "new3", "Redis")
    # A command Redis refuses while queueing discards the transaction.
    p = r.pipeline(transaction=True)
    p.set(f"{P}t:k", "never")
    p.execute_command("LPUSH", f"{P}t:l")
    try:
        p.execute()
        raise AssertionError("a transaction with a malformed command applied")
    except redis.ResponseError as e:
        assert "wrong number of arguments" in str(e), e
    eq(r.get(f"{P}t:k"), "new3", "nothing applied")


def increment(r, key, on_run=None):
    """WATCH, GET, MULTI, SET, EXEC, again while EXEC aborts; returns how many runs."""
    runs = 0
    with r.pipeline(transaction=True) as p:
        while True:
            runs += 1
            try:
                p.watch(key)
                v = int(p.get(key) or 0)
                if on_run:
                    on_run(runs)
                p.multi()
                p.set(key, v + 1)
                p.execute()
                return runs
            except redis.WatchError:
                continue


def watch(gw, direct):
    r, other = connect(gw), connect(gw)
    # A write between WATCH and EXEC, from another client through tiergate, aborts EXEC.
    r.set(f"{P}w:k", 10)

    def interfere(run):
        if run == 1:
            other.set(f"{P}w:k", 100)

    eq(increment(r, f"{P}w:k", interfere), 2, "runs")
    eq(r.get(f"{P}w:k"), "101")

    # Two threads incrementing one counter: none of the increments is lost.
    runs = []
    failures = []

    def incrementer():
        try:
            mine = connect(gw)
            runs.append(sum(increment(mine, f"{P}w:n") for _ in range(INCREMENTS)))
        except Exception:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=incrementer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SETTLE * 3)
        assert not t.is_alive(), "an incrementer is stuck"
    assert not failures, "".join(failures)
    print(f"    runs for {INCREMENTS} increments in each thread: {runs}")
    eq(r.get(f"{P}w:n"), str(2 * INCREMENTS), "the counter")
    eq(direct.get(f"{P}w:n"), str(2 * INCREMENTS), "Redis")


def pubsub(gw, direct):
    r = connect(gw)
    heard = queue.Queue()
    p = r.pubsub()
    p.subscribe(**{f"{P}news": heard.put})
    p.psubscribe(**{f"{P}ne*": heard.put})
    listener = p.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        # SUBSCRIBE is sent without waiting for its confirmation: wait until Redis counts it.
        eventually(
            "the subscriptions are counted",
            lambda: r.pubsub_numsub(f"{P}news") == [(f"{P}news", 1)]
            and r.pubsub_numpat() == 1,
        )
        for i in range(3):
            eq(r.publish(f"{P}news", f"m{i}"), 2, "receivers: the channel and the pattern")
        plain, by_pattern = [], []
        for _ in range(6):
            m = heard.get(timeout=SETTLE)
            eq(m["channel"], f"{P}news", "channel")
            if m["type"] == "pmessage":
                eq(m["pattern"], f"{P}ne*", "pattern")
                by_pattern.append(m["data"])
            else:
                eq(m["type"], "message", "type")
                plain.append(m["data"])
        eq(plain, ["m0", "m1", "m2"], "messages")
        eq(by_pattern, ["m0", "m1", "m2"], "pattern messages")
        p.unsubscribe(f"{P}news")
        p.punsubscribe(f"{P}ne*")
        eventually(
            "the subscriptions are gone",
            lambda: r.pubsub_numsub(f"{P}news") == [(f"{P}news", 0)]
            and r.pubsub_numpat() == 0,
        )
        eq(r.publish(f"{P}news", "unheard"), 0, "receivers")
    finally:
        listener.stop()
        listener.join(SETTLE)
        p.close()
    assert not listener.is_alive(), "the listener thread stopped"
    assert heard.empty(), f"heard more: {heard.get_nowait()}"


def blpop(gw, direct):
    r = connect(gw)
    eq(r.blpop([f"{P}b:q"], timeout=1), None, "BLPOP that times out")

    got = []
    waiter = threading.Thread(
        target=lambda: got.append(connect(gw).blpop([f"{P}b:q"], timeout=0))
    )
    waiter.start()
    eventually("the BLPOP is blocked in Redis", lambda: blocked_clients(direct) >= 1)
    eq(r.rpush(f"{P}b:q", "x"), 1, "RPUSH")
    waiter.join(SETTLE)
    assert not waiter.is_alive(), "BLPOP was not released"
    eq(pairs(got), [(f"{P}b:q", "x")], "released BLPOP")
    eq(r.llen(f"{P}b:q"), 0, "LLEN")


def assert_busy(what, call):
    try:
        call()
    except redis.ResponseError as e:
        msg = str(e)
        assert msg.startswith("BUSY ") and "l2.dedicated_connections (2)" in msg, (
            f"{what}: {type(e).__name__}: {msg}"
        )
        return
    raise AssertionError(f"{what}: succeeded on an exhausted pool")


def busy(gw, direct):
    got = []
    failures = []

    def blocker():
        try:
            got.append(connect(gw).blpop([f"{P}x:q"], timeout=0))
        except Exception:
            failures.append(traceback.format_exc())

    blockers = [threading.Thread(target=blocker) for _ in range(2)]
    for t in blockers:
        t.start()
    eventually("both BLPOPs are blocked in Redis", lambda: blocked_clients(direct) >= 2)

    # Both dedicated connections are lent: whatever needs a third is refused at once.
    r = connect(gw)
    assert_busy("BLPOP", lambda: r.blpop([f"{P}x:other"], timeout=0))

    def watch():
        with r.pipeline(transaction=True) as p:
            p.watch(f"{P}x:k")

    assert_busy("WATCH", watch)

    def subscribe():
        p = r.pubsub()
        try:
            p.subscribe(f"{P}x:c")
            p.get_message(timeout=SETTLE)
        finally:
            p.close()

    assert_busy("SUBSCRIBE", subscribe)
    # What needs no dedicated connection goes on.
    r.set(f"{P}x:k", "v")
    eq(r.get(f"{P}x:k"), "v")
    eq(r.hset(f"{P}x:h", "f", "v"), 1)

    eq(r.rpush(f"{P}x:q", "a", "b"), 2, "RPUSH")
    for t in blockers:
        t.join(SETTLE)
        assert not t.is_alive(), "a BLPOP was not released"
    assert not failures, "".join(failures)
    eq(sorted(pairs(got)), [(f"{P}x:q", "a"), (f"{P}x:q", "b")], "released BLPOPs")

    # Released, the connections are back: a transaction runs again.
    p = r.pipeline(transaction=True)
    p.set(f"{P}x:k", "w")
    p.get(f"{P}x:k")
    eq(p.execute(), [True, "w"], "MULTI/EXEC")


def main():
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} GATEWAY BUSY_GATEWAY REDIS (each host:port)")
    gw, busy_gw, redis_addr = map(hostport, sys.argv[1:])
    # A hung scenario fails the run, with every thread's stack.
    faulthandler.dump_traceback_later(SETTLE * 10, exit=True)
    print(f"redis-py {redis.__version__}, Python {sys.version.split()[0]}")
    direct = connect(redis_addr, protocol=2)
    global PROTOCOL, P
    failed = []
    for PROTOCOL in (2, 3):
        P = f"py{PROTOCOL}:"
        for name, scenario, addr in [
            ("pipeline", pipeline, gw),
            ("transaction", transaction, gw),
            ("watch", watch, gw),
            ("pubsub", pubsub, gw),
            ("blpop", blpop, gw),
            ("busy", busy, busy_gw),
        ]:
            name = f"{name} (RESP{PROTOCOL})"
            try:
                scenario(addr, direct)
                print(f"ok   {name}")
            except Exception:
                failed.append(name)
                print(f"FAIL {name}\n{traceback.format_exc()}")
    if failed:
        sys.exit(f"redis-py scenarios failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

//! Dedicated L2 connections (`cache::dedicated`, `resp::pinned`) against a real redis-server:
//! a blocked client stalls nobody, an exhausted pool answers -BUSY at once, a client that
//! leaves while blocked frees its connection, and connections come back clean. Over a Redis
//! Cluster: transactions, blocking commands and subscriptions on the right master.

mod support;

use support::{raw, Gateway, Redis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tiergate over its own redis-server lending at most `size` dedicated connections.
async fn gateway(redis: &Redis, size: usize) -> Gateway {
    let mut c = support::config(Some(&redis.url()));
    c.l2.dedicated_connections = size;
    Gateway::start_ready(c).await
}

/// Waits until a client is blocked in Redis: a BLPOP sent through tiergate has reached it
/// over its dedicated connection. (Probing the pool for it instead would race the BLPOP for
/// the only connection.)
async fn wait_blocked(redis: &Redis) {
    support::eventually("a client blocked in Redis", || async {
        redis.blocked_clients() >= 1
    })
    .await;
}

/// Whether WATCH could lend a connection: +OK (then given back by UNWATCH) or -BUSY.
async fn lendable(addr: std::net::SocketAddr) -> bool {
    let got = raw(addr, b"WATCH probe\r\nUNWATCH\r\nQUIT\r\n").await;
    if got.starts_with("-BUSY") {
        assert!(got.contains("l2.dedicated_connections (1)"), "{got}");
        return false;
    }
    assert_eq!(got, "+OK\r\n+OK\r\n+OK\r\n");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_stalls_nobody_and_an_exhausted_pool_answers_busy_at_once() {
    let redis = Redis::start();
    let gw = gateway(&redis, 1).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut blocked = tokio::net::TcpStream::connect(addr).await.unwrap();
    // What it sends behind the blocking command runs once that is answered.
    blocked.write_all(b"BLPOP q 0\r\nPING\r\n").await.unwrap();
    wait_blocked(&redis).await;
    assert!(
        !lendable(addr).await,
        "the blocked client holds the only connection"
    );
    // Everything else goes on meanwhile, over the shared connections.
    let got = raw(
        addr,
        b"HSET h f v\r\nSET k v\r\nGET k\r\nWATCH w\r\nQUIT\r\n",
    )
    .await;
    assert!(got.starts_with(":1\r\n+OK\r\n$1\r\nv\r\n-BUSY "), "{got}");
    // A transaction is refused at EXEC, whole: nothing queued behind MULTI runs.
    let got = raw(addr, b"MULTI\r\nSET k no\r\nEXEC\r\nGET k\r\nQUIT\r\n").await;
    assert!(
        got.starts_with("+OK\r\n+QUEUED\r\n-BUSY the transaction was not run")
            && got.ends_with("\r\n$1\r\nv\r\n+OK\r\n"),
        "{got}"
    );
    // Released by another client, the blocked one gets its reply.
    assert_eq!(raw(addr, b"RPUSH q x\r\nQUIT\r\n").await, ":1\r\n+OK\r\n");
    let want = b"*2\r\n$1\r\nq\r\n$1\r\nx\r\n+PONG\r\n";
    let mut got = Vec::new();
    while got.len() < want.len() {
        let mut chunk = vec![0; 64];
        let n = blocked.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, want);
    support::eventually("the connection is back in the pool", || async {
        lendable(addr).await
    })
    .await;
    let m = gw.metrics().await;
    assert!(support::metric(&m, "tiergate_l2_dedicated_busy_total") >= 2.0);
    assert_eq!(support::metric(&m, "tiergate_l2_dedicated_lent"), 0.0);
    // Back clean: no transaction, no database, no subscription left from its last client.
    let got = raw(
        addr,
        b"SELECT 1\r\nSET in1 v\r\nMULTI\r\nSET q y\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(got, "+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n+OK\r\n");
    let got = raw(addr, b"WATCH w\r\nGET in1\r\nGET q\r\nQUIT\r\n").await;
    assert_eq!(
        got, "+OK\r\n$-1\r\n$-1\r\n+OK\r\n",
        "db 0, and the MULTI discarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_blocked_frees_its_connection() {
    let redis = Redis::start();
    let gw = gateway(&redis, 1).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    // Blocked alone, and blocked with more commands sent behind the blocking one.
    for sent in [&b"BLPOP q 0\r\n"[..], b"BLPOP q 0\r\nPING\r\nGET k\r\n"] {
        let mut blocked = tokio::net::TcpStream::connect(addr).await.unwrap();
        blocked.write_all(sent).await.unwrap();
        wait_blocked(&redis).await;
        assert!(
            !lendable(addr).await,
            "the blocked client holds the only connection"
        );
        drop(blocked);
        support::eventually("the connection of a client gone is free again", || async {
            lendable(addr).await
        })
        .await;
        // Closed, not given back: Redis drops the BLPOP with it.
        support::eventually("Redis saw the connection go", || async {
            redis.blocked_clients() == 0
        })
        .await;
    }
    // Its BLPOP does not take what is pushed next.
    assert_eq!(
        raw(addr, b"RPUSH q x\r\nLLEN q\r\nQUIT\r\n").await,
        ":1\r\n:1\r\n+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_caching_pushes_invalidations_to_a_resp3_client() {
    use support::wire::Wire;
    let redis = Redis::start();
    let gw = gateway(&redis, 1).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut c = Wire::connect(addr).await;
    // RESP2 would need REDIRECT to another client, whose id is tiergate's, not Redis'.
    let refused = c.call(&[b"CLIENT", b"TRACKING", b"on"]).await;
    assert!(refused.starts_with(b"-ERR CLIENT TRACKING is served to RESP3"));
    c.hello3().await;
    assert_eq!(c.call(&[b"SET", b"tk", b"v"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"CLIENT", b"TRACKING", b"on"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"GET", b"tk"]).await, b"$1\r\nv\r\n");
    assert!(!lendable(addr).await, "tracking holds the connection");
    // A write through tiergate by anyone: Redis pushes the invalidation to this client.
    assert_eq!(raw(addr, b"SET tk w\r\nQUIT\r\n").await, "+OK\r\n+OK\r\n");
    assert_eq!(
        c.recv().await,
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\ntk\r\n"
    );
    assert_eq!(c.call(&[b"CLIENT", b"TRACKING", b"off"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"GET", b"tk"]).await, b"$1\r\nw\r\n");
    support::eventually("tracking off gives the connection back", || async {
        lendable(addr).await
    })
    .await;
}

// Over a Redis Cluster: connections are lent from the master of the command's slot (any
// master for SUBSCRIBE), and a transaction's from the master of its first command's slot.

/// A tiergate over `cluster`, ready; its RESP address.
async fn over(cluster: &support::Cluster) -> (Gateway, std::net::SocketAddr) {
    let gw = Gateway::start_ready(cluster.config()).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    (gw, addr)
}

/// Waits until `gw` has `n` dedicated connections lent.
async fn lent(gw: &Gateway, n: f64) {
    support::eventually(&format!("{n} dedicated connections lent"), || async {
        support::metric(&gw.metrics().await, "tiergate_l2_dedicated_lent") == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_on_the_master_of_their_keys_over_a_cluster() {
    use redis::Commands;
    use support::wire::Wire;
    let cluster = support::Cluster::start();
    let (gw, addr) = over(&cluster).await;
    let mut c = Wire::connect(addr).await;
    // WATCH, and a conflicting write by another client through tiergate: EXEC fails.
    assert_eq!(c.call(&[b"SET", b"{t}a", b"1"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"WATCH", b"{t}a"]).await, b"+OK\r\n");
    assert_eq!(raw(addr, b"SET {t}a 5\r\nQUIT\r\n").await, "+OK\r\n+OK\r\n");
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"INCR", b"{t}a"]).await, b"+QUEUED\r\n");
    assert_eq!(c.call(&[b"EXEC"]).await, b"*-1\r\n");
    assert_eq!(c.call(&[b"GET", b"{t}a"]).await, b"$1\r\n5\r\n");
    lent(&gw, 0.0).await;
    // Keys of one hash tag: both writes applied, and L1 (GET cached {t}x) emptied of them.
    assert_eq!(c.call(&[b"SET", b"{t}x", b"0"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"GET", b"{t}x"]).await, b"$1\r\n0\r\n");
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"SET", b"{t}x", b"1"]).await, b"+QUEUED\r\n");
    assert_eq!(c.call(&[b"INCR", b"{t}y"]).await, b"+QUEUED\r\n");
    assert_eq!(c.call(&[b"EXEC"]).await, b"*2\r\n+OK\r\n:1\r\n");
    assert_eq!(c.call(&[b"GET", b"{t}x"]).await, b"$1\r\n1\r\n");
    let mut direct = cluster.conn();
    let (x, y): (String, i64) = (direct.get("{t}x").unwrap(), direct.get("{t}y").unwrap());
    assert_eq!((x.as_str(), y), ("1", 1));
    // Before any command, EXEC and DISCARD are answered as Redis answers them.
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"EXEC"]).await, b"*0\r\n");
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(
        c.call(&[b"MULTI"]).await,
        b"-ERR MULTI calls can not be nested\r\n"
    );
    assert_eq!(c.call(&[b"DISCARD"]).await, b"+OK\r\n");
    // Keys across slots: CROSSSLOT as a cluster answers, in WATCH and in the first command
    // of a transaction (which then aborts); a key of another slot later in the transaction
    // is Redis' to answer: MOVED, and the transaction aborts.
    let cross = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
    assert_eq!(c.call(&[b"WATCH", b"a", b"b"]).await, cross);
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"MSET", b"a", b"1", b"b", b"2"]).await, cross);
    assert!(c
        .call(&[b"EXEC"])
        .await
        .starts_with(b"-EXECABORT Transaction discarded"));
    assert_eq!(c.call(&[b"MULTI"]).await, b"+OK\r\n");
    assert_eq!(c.call(&[b"SET", b"a", b"1"]).await, b"+QUEUED\r\n");
    let moved = c.call(&[b"SET", b"b", b"2"]).await;
    assert!(
        moved.starts_with(b"-MOVED "),
        "{}",
        support::wire::show(&moved)
    );
    assert!(c
        .call(&[b"EXEC"])
        .await
        .starts_with(b"-EXECABORT Transaction discarded"));
    let (a, b): (Option<String>, Option<String>) =
        (direct.get("a").unwrap(), direct.get("b").unwrap());
    assert_eq!(
        (a, b),
        (None, None),
        "nothing of the aborted transactions ran"
    );
    lent(&gw, 0.0).await;
    // Still refused over a cluster: another database, and CLIENT TRACKING (closed on).
    assert_eq!(
        c.call(&[b"SELECT", b"1"]).await,
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    let got = raw(addr, b"HELLO 3\r\nCLIENT TRACKING on\r\nSET a 1\r\n").await;
    assert!(
        got.contains("-ERR CLIENT TRACKING is not served by tiergate"),
        "{got}"
    );
    assert!(!got.ends_with("+OK\r\n"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_and_subscriptions_work_over_a_cluster() {
    use support::wire::Wire;
    let cluster = support::Cluster::start();
    let (gw, addr) = over(&cluster).await;
    // BLPOP, released by an RPUSH through tiergate.
    let mut blocked = Wire::connect(addr).await;
    blocked.send(&[b"BLPOP", b"bl", b"0"]).await;
    lent(&gw, 1.0).await;
    assert_eq!(raw(addr, b"RPUSH bl x\r\nQUIT\r\n").await, ":1\r\n+OK\r\n");
    assert_eq!(blocked.recv().await, b"*2\r\n$2\r\nbl\r\n$1\r\nx\r\n");
    lent(&gw, 0.0).await;
    // XREAD BLOCK, on the master of the stream's slot (from 0-0: an entry added before it
    // reaches Redis is read too).
    blocked
        .send(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"st", b"0-0"])
        .await;
    lent(&gw, 1.0).await;
    assert!(raw(addr, b"XADD st 1-1 f v\r\nQUIT\r\n")
        .await
        .starts_with("$3\r\n1-1\r\n"));
    let got = blocked.recv().await;
    assert!(got.starts_with(b"*1\r\n*2\r\n$2\r\nst\r\n"), "{got:?}");
    lent(&gw, 0.0).await;
    // SUBSCRIBE on any master hears a PUBLISH made through tiergate (to any master: a
    // cluster broadcasts it).
    let mut sub = Wire::connect(addr).await;
    assert_eq!(
        sub.call(&[b"SUBSCRIBE", b"news"]).await,
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    assert!(raw(addr, b"PUBLISH news hello\r\nQUIT\r\n")
        .await
        .ends_with("\r\n+OK\r\n"));
    assert_eq!(
        sub.recv().await,
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        sub.call(&[b"UNSUBSCRIBE"]).await,
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:0\r\n"
    );
    // SSUBSCRIBE on the master of the shard channel's slot hears an SPUBLISH.
    assert_eq!(
        sub.call(&[b"SSUBSCRIBE", b"shard"]).await,
        b"*3\r\n$10\r\nssubscribe\r\n$5\r\nshard\r\n:1\r\n"
    );
    assert_eq!(
        raw(addr, b"SPUBLISH shard hi\r\nQUIT\r\n").await,
        ":1\r\n+OK\r\n"
    );
    assert_eq!(
        sub.recv().await,
        b"*3\r\n$8\r\nsmessage\r\n$5\r\nshard\r\n$2\r\nhi\r\n"
    );
    assert_eq!(
        sub.call(&[b"SUNSUBSCRIBE"]).await,
        b"*3\r\n$12\r\nsunsubscribe\r\n$5\r\nshard\r\n:0\r\n"
    );
    assert_eq!(sub.call(&[b"GET", b"bl"]).await, b"$-1\r\n");
    lent(&gw, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_dedicated_connections_bounds_all_masters_together() {
    let cluster = support::Cluster::start();
    let mut c = cluster.config();
    c.l2.dedicated_connections = 1;
    let gw = Gateway::start_ready(c).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut w = support::wire::Wire::connect(addr).await;
    // `a` and `b` are served by different masters: the second WATCH finds none left.
    assert_eq!(w.call(&[b"WATCH", b"a"]).await, b"+OK\r\n");
    let got = raw(addr, b"WATCH b\r\nQUIT\r\n").await;
    assert!(
        got.starts_with("-BUSY ") && got.contains("l2.dedicated_connections (1)"),
        "{got}"
    );
    assert_eq!(w.call(&[b"UNWATCH"]).await, b"+OK\r\n");
    support::eventually("the connection is back", || async {
        raw(addr, b"WATCH b\r\nQUIT\r\n").await == "+OK\r\n+OK\r\n"
    })
    .await;
}

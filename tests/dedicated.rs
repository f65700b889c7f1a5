//! Dedicated L2 connections (`cache::dedicated`, `resp::pinned`) against a real redis-server:
//! a blocked client stalls nobody, an exhausted pool answers -BUSY at once, a client that
//! leaves while blocked frees its connection, and connections come back clean.

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

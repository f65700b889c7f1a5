//! Real client libraries used the way applications use them, against a tiergate over its own
//! redis-server: the `redis` crate here, redis-py in `tests/clients/redis_py.py` (run by
//! `redis_py_as_applications_use_it`). Pipelines of served and forwarded commands, MULTI/EXEC,
//! WATCH with a retry, pub/sub with a listener, BLPOP, and the -BUSY of an exhausted pool of
//! dedicated connections (`l2.dedicated_connections`).
//!
//! No test asserts how long anything took: waits are for conditions (Redis reporting its
//! blocked clients, a subscription counted), bounded by `support::SETTLE`.

mod support;

use futures_util::StreamExt;
use redis::{aio::MultiplexedConnection, AsyncCommands, Commands};
use std::{collections::HashMap, net::SocketAddr};
use support::{Gateway, Redis, SETTLE};

/// A tiergate over `redis`, lending at most `dedicated` dedicated connections (the default
/// when None).
async fn gateway(redis: &Redis, dedicated: Option<usize>) -> Gateway {
    let mut c = support::config(Some(&redis.url()));
    if let Some(size) = dedicated {
        c.l2.dedicated_connections = size;
    }
    Gateway::start_ready(c).await
}

fn resp_addr(gw: &Gateway) -> SocketAddr {
    gw.running.as_ref().unwrap().resp_addr
}

fn client(addr: SocketAddr) -> redis::Client {
    redis::Client::open(format!("redis://{addr}")).unwrap()
}

/// A multiplexed connection as an application opens one for blocking commands: with a
/// response timeout they outlive (the crate's default, 500 ms, is shorter than a BLPOP's).
async fn conn(addr: SocketAddr) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(SETTLE));
    client(addr)
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// Clients blocked in redis-server itself (INFO clients), asked directly.
/// Waits until `n` clients are blocked in redis-server: blocking commands sent through tiergate
/// have reached it over their dedicated connections.
async fn wait_blocked(redis: &Redis, n: u64) {
    support::eventually(&format!("{n} clients blocked in Redis"), || async {
        redis.blocked_clients() >= n
    })
    .await;
}

/// Whether a WATCH could have a dedicated connection (given back by UNWATCH), or the pool
/// answered -BUSY. Not MULTI: it is answered +OK either way, its transaction refused at EXEC.
async fn multi_opens(c: &mut MultiplexedConnection) -> bool {
    match redis::cmd("WATCH")
        .arg("probe")
        .query_async::<String>(c)
        .await
    {
        Ok(ok) => {
            assert_eq!(ok, "OK");
            redis::cmd("UNWATCH").exec_async(c).await.unwrap();
            true
        }
        Err(e) if e.code() == Some("BUSY") => false,
        Err(e) => panic!("WATCH: {e}"),
    }
}

fn assert_busy(e: &redis::RedisError, size: usize) {
    assert_eq!(e.code(), Some("BUSY"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("l2.dedicated_connections ({size})")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_mixes_served_and_forwarded_commands() {
    let redis = Redis::start();
    let gw = gateway(&redis, None).await;
    let mut c = conn(resp_addr(&gw)).await;
    // GET, SET, INCRBY, MGET and DEL are served by tiergate; the others are forwarded.
    #[allow(clippy::type_complexity)]
    let (set, get, one, answer, (), hash, pushed, list, added, zset, many, deleted): (
        String,
        String,
        i64,
        i64,
        (),
        HashMap<String, String>,
        usize,
        Vec<String>,
        usize,
        Vec<(String, f64)>,
        Vec<Option<String>>,
        usize,
    ) = redis::pipe()
        .set("p:s", "v")
        .get("p:s")
        .incr("p:n", 1)
        .incr("p:n", 41)
        .hset_multiple("p:h", &[("f1", "a"), ("f2", "b")])
        .hgetall("p:h")
        .lpush("p:l", &["x", "y", "z"])
        .lrange("p:l", 0, -1)
        .zadd_multiple("p:z", &[(2, "b"), (1, "a")])
        .zrange_withscores("p:z", 0, -1)
        .mget(&["p:s", "p:missing", "p:n"])
        .del(&["p:s", "p:h"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        (set.as_str(), get.as_str(), one, answer),
        ("OK", "v", 1, 42)
    );
    let want: HashMap<String, String> = [("f1", "a"), ("f2", "b")]
        .map(|(f, v)| (f.to_string(), v.to_string()))
        .into();
    assert_eq!(hash, want);
    assert_eq!(
        (pushed, list),
        (3, vec!["z".into(), "y".into(), "x".into()])
    );
    assert_eq!(
        (added, zset),
        (2, vec![("a".into(), 1.0), ("b".into(), 2.0)])
    );
    assert_eq!(many, [Some("v".into()), None, Some("42".into())]);
    assert_eq!(deleted, 2);

    // A second pipeline sees the first's writes, its DEL included (no stale L1 copy of p:s).
    let (s, n, h, l): (Option<String>, i64, usize, Vec<String>) = redis::pipe()
        .get("p:s")
        .get("p:n")
        .exists("p:h")
        .lrange("p:l", 0, 0)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((s, n, h, l), (None, 42, 0, vec!["z".to_string()]));
    // And so does Redis itself.
    let mut direct = redis.conn();
    let n: i64 = direct.get("p:n").unwrap();
    let z: usize = direct.zcard("p:z").unwrap();
    let s: bool = direct.exists("p:s").unwrap();
    assert_eq!((n, z, s), (42, 2, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_pipeline_is_one_transaction() {
    let redis = Redis::start();
    // One dedicated connection: a transaction that did not give it back would leave the
    // next one -BUSY.
    let gw = gateway(&redis, Some(1)).await;
    let mut c = conn(resp_addr(&gw)).await;
    let () = c.set("t:k", "old").await.unwrap();
    let old: String = c.get("t:k").await.unwrap();
    assert_eq!(old, "old");

    for round in 1..=3_i64 {
        let (k, n, len): (String, i64, usize) = redis::pipe()
            .atomic()
            .set("t:k", format!("new{round}"))
            .ignore()
            .get("t:k")
            .incr("t:n", 5)
            .rpush("t:l", &["a", "b"])
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(k, format!("new{round}"));
        assert_eq!((n, len), (5 * round, 2 * round as usize));
        // Applied: tiergate no longer serves the value it had before the transaction.
        let k: String = c.get("t:k").await.unwrap();
        assert_eq!(k, format!("new{round}"));
    }
    let direct: String = redis.conn().get("t:k").unwrap();
    assert_eq!(direct, "new3");

    // A transaction with a command refused while queueing (arity) is discarded whole.
    let err = redis::pipe()
        .atomic()
        .set("t:k", "never")
        .cmd("LPUSH")
        .arg("t:l")
        .query_async::<((), usize)>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("EXECABORT"), "{err}");
    let k: String = c.get("t:k").await.unwrap();
    assert_eq!(k, "new3");

    // A command failing inside EXEC fails alone; the others are applied.
    let err = redis::pipe()
        .atomic()
        .set("t:k", "after")
        .ignore()
        .incr("t:l", 1)
        .query_async::<(i64,)>(&mut c)
        .await
        .unwrap_err();
    // A pipeline's error names the command that failed, not a code.
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let k: String = c.get("t:k").await.unwrap();
    assert_eq!(k, "after");
    assert!(multi_opens(&mut c).await, "the connection is back");
}

/// How many times each of the two concurrent incrementers adds one.
const INCREMENTS: i64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_transactions_retry_until_they_apply() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(2)).await;
    let addr = resp_addr(&gw);

    // A write between WATCH and EXEC, from another connection through tiergate, aborts the
    // transaction: `redis::transaction` runs it again, and the second run applies.
    let client = client(addr);
    tokio::task::spawn_blocking(move || {
        let mut c = client.get_connection().unwrap();
        let mut other = client.get_connection().unwrap();
        let () = c.set("w:k", 10).unwrap();
        let mut runs = 0;
        let (v,): (i64,) = redis::transaction(&mut c, &["w:k"], |c, pipe| {
            runs += 1;
            let v: i64 = c.get("w:k")?;
            if runs == 1 {
                let () = other.set("w:k", 100)?;
            }
            pipe.set("w:k", v + 1).ignore().get("w:k").query(c)
        })
        .unwrap();
        assert_eq!((runs, v), (2, 101));
    })
    .await
    .unwrap();

    // Two incrementers of one counter, one with the sync API on a thread, one with the async
    // API: WATCH, GET, MULTI, SET, EXEC, again while EXEC aborts. None is lost.
    let client = self::client(addr);
    let sync = tokio::task::spawn_blocking(move || {
        let mut c = client.get_connection().unwrap();
        let mut runs = 0;
        for _ in 0..INCREMENTS {
            let (_,): (i64,) = redis::transaction(&mut c, &["w:n"], |c, pipe| {
                runs += 1;
                let v: Option<i64> = c.get("w:n")?;
                pipe.set("w:n", v.unwrap_or(0) + 1)
                    .ignore()
                    .get("w:n")
                    .query(c)
            })
            .unwrap();
        }
        runs
    });
    let c = conn(addr).await;
    let async_ = tokio::spawn(async move {
        let mut runs = 0;
        for _ in 0..INCREMENTS {
            let (_,): (i64,) =
                redis::aio::transaction_async(c.clone(), &["w:n"], |mut c, mut pipe| {
                    runs += 1;
                    async move {
                        let v: Option<i64> = c.get("w:n").await?;
                        pipe.set("w:n", v.unwrap_or(0) + 1)
                            .ignore()
                            .get("w:n")
                            .query_async(&mut c)
                            .await
                    }
                })
                .await
                .unwrap();
        }
        runs
    });
    let runs = (sync.await.unwrap(), async_.await.unwrap());
    eprintln!("runs for {INCREMENTS} increments each (sync, async): {runs:?}");
    let mut c = conn(addr).await;
    let n: i64 = c.get("w:n").await.unwrap();
    assert_eq!(n, 2 * INCREMENTS);
    let direct: i64 = redis.conn().get("w:n").unwrap();
    assert_eq!(direct, 2 * INCREMENTS);
    assert!(multi_opens(&mut c).await, "the connections are back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_what_another_connection_publishes() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(1)).await;
    let addr = resp_addr(&gw);
    let pubsub = client(addr).get_async_pubsub().await.unwrap();
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe("news").await.unwrap();
    sink.psubscribe("ne*").await.unwrap();
    // The listener: a task of its own, handing on what it hears.
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let listener = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let pattern: Option<String> = msg.get_pattern().unwrap();
            let payload: String = msg.get_payload().unwrap();
            let channel = msg.get_channel_name().to_string();
            if tx.send((pattern, channel, payload)).is_err() {
                break;
            }
        }
    });

    let mut c = conn(addr).await;
    // Confirmed above: Redis counts the subscription already.
    let numsub: (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("news")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(numsub, ("news".to_string(), 1));
    for i in 0..3 {
        let receivers: usize = c.publish("news", format!("m{i}")).await.unwrap();
        assert_eq!(receivers, 2, "the channel and the pattern");
    }
    let (mut plain, mut by_pattern) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let (pattern, channel, payload) = tokio::time::timeout(SETTLE, heard.recv())
            .await
            .expect("a message arrives")
            .expect("the listener runs");
        assert_eq!(channel, "news");
        match pattern {
            None => plain.push(payload),
            Some(p) => {
                assert_eq!(p, "ne*");
                by_pattern.push(payload);
            }
        }
    }
    assert_eq!(plain, ["m0", "m1", "m2"]);
    assert_eq!(by_pattern, ["m0", "m1", "m2"]);

    sink.unsubscribe("news").await.unwrap();
    sink.punsubscribe("ne*").await.unwrap();
    let numsub: (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("news")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(numsub, ("news".to_string(), 0));
    let receivers: usize = c.publish("news", "unheard").await.unwrap();
    assert_eq!(receivers, 0);
    // Unsubscribed, the connection is an ordinary one again.
    let pong: String = sink.ping().await.unwrap();
    assert_eq!(pong, "PONG");
    // A subscriber that leaves gives its dedicated connection back (the only one here).
    drop(sink);
    listener.abort();
    let _ = listener.await;
    support::eventually("the subscriber's connection is back", || async {
        multi_opens(&mut c.clone()).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_times_out_or_is_released_by_a_push() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(1)).await;
    let addr = resp_addr(&gw);
    let mut c = conn(addr).await;
    let none: Option<(String, String)> = c.blpop("b:q", 0.1).await.unwrap();
    assert_eq!(none, None);

    let mut waiter = conn(addr).await;
    let blocked = tokio::spawn(async move {
        waiter
            .blpop::<_, Option<(String, String)>>("b:q", 0.0)
            .await
    });
    wait_blocked(&redis, 1).await;
    let len: usize = c.rpush("b:q", "x").await.unwrap();
    assert_eq!(len, 1);
    let got = blocked.await.unwrap().unwrap();
    assert_eq!(got, Some(("b:q".to_string(), "x".to_string())));
    let len: usize = c.llen("b:q").await.unwrap();
    assert_eq!(len, 0);

    // A timeout that does not expire: released by a push as well.
    let mut waiter = conn(addr).await;
    let blocked = tokio::spawn(async move {
        waiter
            .brpop::<_, Option<(String, String)>>("b:r", 10.0)
            .await
    });
    wait_blocked(&redis, 1).await;
    let () = c.lpush("b:r", "y").await.unwrap();
    let got = blocked.await.unwrap().unwrap();
    assert_eq!(got, Some(("b:r".to_string(), "y".to_string())));
    assert!(multi_opens(&mut c).await, "the connection is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_busy_until_a_connection_is_back() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(2)).await;
    let addr = resp_addr(&gw);
    let mut blocked = Vec::new();
    for _ in 0..2 {
        let mut waiter = conn(addr).await;
        blocked.push(tokio::spawn(async move {
            waiter
                .blpop::<_, Option<(String, String)>>("x:q", 0.0)
                .await
        }));
    }
    wait_blocked(&redis, 2).await;

    // Both connections are lent: whatever needs a third is refused at once.
    let mut c = conn(addr).await;
    let err = c
        .blpop::<_, Option<(String, String)>>("x:other", 0.0)
        .await
        .unwrap_err();
    assert_busy(&err, 2);
    // MULTI itself is answered OK (clients read its reply last): EXEC refuses the transaction.
    let ok = redis::cmd("MULTI")
        .query_async::<String>(&mut c)
        .await
        .unwrap();
    assert_eq!(ok, "OK");
    let err = redis::cmd("EXEC")
        .query_async::<redis::Value>(&mut c)
        .await
        .unwrap_err();
    assert_busy(&err, 2);
    let err = redis::cmd("WATCH")
        .arg("x:k")
        .query_async::<String>(&mut c)
        .await
        .unwrap_err();
    assert_busy(&err, 2);
    let mut pubsub = client(addr).get_async_pubsub().await.unwrap();
    let err = pubsub.subscribe("x:c").await.unwrap_err();
    assert_busy(&err, 2);
    // What needs none goes on.
    let () = c.set("x:k", "v").await.unwrap();
    let () = c.hset("x:h", "f", "v").await.unwrap();

    let len: usize = c.rpush("x:q", &["a", "b"]).await.unwrap();
    assert_eq!(len, 2);
    let mut got = Vec::new();
    for b in blocked {
        let (key, value) = b.await.unwrap().unwrap().unwrap();
        assert_eq!(key, "x:q");
        got.push(value);
    }
    got.sort();
    assert_eq!(got, ["a", "b"]);

    // Released, the connections are back: a transaction opens again.
    let (k,): (String,) = redis::pipe()
        .atomic()
        .set("x:k", "w")
        .ignore()
        .get("x:k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(k, "w");
}

/// redis-py runs the same kinds of scenarios (`tests/clients/redis_py.py`, in RESP2 and RESP3)
/// against a tiergate, and the -BUSY one against a second tiergate lending 2 dedicated
/// connections, both over one redis-server. Fails, never skips, without python3 or redis-py:
/// scripts/test.sh installs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_as_applications_use_it() {
    let redis = Redis::start();
    let gw = gateway(&redis, None).await;
    let busy = gateway(&redis, Some(2)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py.py");
    let args = [
        script.to_string(),
        resp_addr(&gw).to_string(),
        resp_addr(&busy).to_string(),
        format!("127.0.0.1:{}", redis.port),
    ];
    // Off the runtime: the gateways run on it meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .unwrap()
    .expect("python3 runs (scripts/test.sh installs it)");
    let report = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "redis-py scenarios failed ({}):\n{report}",
        out.status
    );
    eprintln!("{report}");
}

// Bugs found by the scenarios above, each reproduced as an application meets it. Ignored
// until fixed in src/: run with `cargo test --test clients -- --ignored`.

/// A connection that subscribed, then unsubscribed from its last channel, is an ordinary
/// connection again: the redis crate's sync `PubSub` sends UNSUBSCRIBE and PUNSUBSCRIBE when
/// dropped, and the application goes on with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_from_its_last_channel_a_client_is_an_ordinary_one_again() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(1)).await;
    let addr = resp_addr(&gw);
    let mut reader = conn(addr).await;
    let () = reader.set("u:k", "old").await.unwrap();
    let old: String = reader.get("u:k").await.unwrap();
    assert_eq!(old, "old", "and tiergate holds it in L1");

    let client = client(addr);
    // Kept open: leaving would give the dedicated connection back anyway.
    let _subscriber = tokio::task::spawn_blocking(move || {
        let mut c = client.get_connection().unwrap();
        let mut pubsub = c.as_pubsub();
        pubsub.subscribe("u:c").unwrap();
        drop(pubsub);
        let () = c.set("u:k", "new").unwrap();
        c
    })
    .await
    .unwrap();

    let direct: String = redis.conn().get("u:k").unwrap();
    assert_eq!(direct, "new");
    let seen: String = reader.get("u:k").await.unwrap();
    assert_eq!(seen, "new", "the write evicted tiergate's copy");
    support::eventually("the subscriber's connection is back", || async {
        multi_opens(&mut reader.clone()).await
    })
    .await;
}

/// A transaction whose MULTI is refused (-BUSY) applies none of its commands. Both client
/// libraries send MULTI, the commands and EXEC in one write, without waiting for MULTI's
/// reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_refused_busy_applies_none_of_its_commands() {
    let redis = Redis::start();
    let gw = gateway(&redis, Some(1)).await;
    let addr = resp_addr(&gw);
    let mut waiter = conn(addr).await;
    let blocked = tokio::spawn(async move {
        waiter
            .blpop::<_, Option<(String, String)>>("r:q", 0.0)
            .await
    });
    wait_blocked(&redis, 1).await;

    let mut c = conn(addr).await;
    let () = c.set("r:k", "before").await.unwrap();
    let err = redis::pipe()
        .atomic()
        .set("r:k", "inside")
        .ignore()
        .incr("r:n", 1)
        .query_async::<(i64,)>(&mut c)
        .await
        .unwrap_err();
    // Read back over a connection of its own: the failed one may be broken.
    let (k, n): (String, Option<i64>) = redis::pipe()
        .get("r:k")
        .get("r:n")
        .query_async(&mut conn(addr).await)
        .await
        .unwrap();
    assert_eq!((k.as_str(), n), ("before", None), "nothing applied ({err})");
    // redis-rs reports an EXEC that failed as an unexpected reply (as it does Redis' own
    // EXECABORT); the reply itself says why.
    let got = support::raw(addr, b"MULTI\r\nSET r:k inside\r\nEXEC\r\nQUIT\r\n").await;
    assert!(
        got.starts_with("+OK\r\n+QUEUED\r\n-BUSY the transaction was not run")
            && got.contains("l2.dedicated_connections (1)"),
        "the client is told why: {got}"
    );
    let () = conn(addr).await.rpush("r:q", "x").await.unwrap();
    blocked.await.unwrap().unwrap();
}

//! L1 coherence across instances: two gateway processes on one redis-server, kept coherent by
//! the invalidation bus (Redis pub/sub, or Redis client-side caching in tracking mode), and
//! what happens when the bus is lost.

mod support;

use redis::AsyncCommands;
use support::{metric, Binary, Redis};

/// Two real tiergate processes on `redis`, each with a fast health/retry period.
fn pair(redis: &Redis) -> (Binary, Binary) {
    pair_with(redis, &[])
}

fn pair_with(redis: &Redis, extra: &[(&str, &str)]) -> (Binary, Binary) {
    let url = redis.url();
    let mut env = vec![
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
        ("TIERGATE_L1_MAX_TTL", "1h"),
    ];
    env.extend_from_slice(extra);
    (Binary::start(&env), Binary::start(&env))
}

/// Ready (Redis reached, its command table read: forwarded commands are served) and
/// subscribed to the bus.
async fn subscribed(b: &Binary) {
    b.wait_ready().await;
    support::eventually("subscribed to the invalidation bus", || async {
        metric(&b.metrics().await, "tiergate_bus_subscribed") == 1.0
    })
    .await;
}

/// Both subscribed, and each past hearing the other: neither alone on the bus (the one
/// that was flushes L1 as it hears the other), so what either writes the other hears.
async fn together(a: &Binary, b: &Binary) {
    for g in [a, b] {
        g.wait_ready().await;
        support::eventually("on the bus with another instance", || async {
            let m = g.metrics().await;
            metric(&m, "tiergate_bus_subscribed") == 1.0 && metric(&m, "tiergate_bus_alone") == 0.0
        })
        .await;
    }
}

/// GET over HTTP: the body (None on 404) and the tier that answered.
async fn get(b: &Binary, key: &str) -> (Option<String>, String) {
    let r = reqwest::get(format!("http://{}/v1/kv/{key}", b.http))
        .await
        .unwrap();
    let tier = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    match r.status().as_u16() {
        200 => (Some(r.text().await.unwrap()), tier),
        404 => (None, tier),
        s => panic!("GET {key}: status {s}"),
    }
}

async fn put(b: &Binary, key: &str, value: &str) {
    let r = reqwest::Client::new()
        .put(format!("http://{}/v1/kv/{key}", b.http))
        .body(value.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "PUT {key}");
}

/// Announcements B has acted on: keys evicted, and its own echoes it had nothing left to do
/// for (each write in them already evicted here, one per message).
async fn heard(b: &Binary) -> f64 {
    let m = b.metrics().await;
    metric(&m, "tiergate_bus_invalidations_total")
        + metric(&m, "tiergate_bus_own_echoes_skipped_total")
}

/// Runs `write` through A, waits until B has heard its invalidation, then checks B's read.
/// No sleeping and no retrying the read: once the invalidation is in, B must not be stale.
async fn after_heard<F, Fut>(b: &Binary, keys: usize, write: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = heard(b).await;
    write().await;
    support::eventually("B heard the invalidation", || async {
        heard(b).await >= before + keys as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_never_served_stale_by_the_other() {
    let redis = Redis::start();
    let (a, b) = pair(&redis);
    together(&a, &b).await;
    let mut ra = redis::Client::open(format!("redis://{}", a.resp))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // Let B hear this write's own announcement first, or it could evict what B reads next.
    after_heard(&b, 1, || put(&a, "k", "v0")).await;
    assert_eq!(get(&b, "k").await.0.as_deref(), Some("v0"));
    assert_eq!(
        get(&b, "k").await,
        (Some("v0".into()), "L1".into()),
        "B now serves k from its L1"
    );

    for i in 1..=10 {
        let v = format!("v{i}");
        after_heard(&b, 1, || put(&a, "k", &v)).await;
        assert_eq!(get(&b, "k").await.0, Some(v.clone()), "HTTP PUT {i}");
        assert_eq!(get(&b, "k").await, (Some(v), "L1".into()), "refilled");
    }

    // Every kind of write over RESP announces its keys too. Heard by B before it reads, as
    // above: heard after, the announcement would evict what B's read stored.
    after_heard(&b, 1, || async {
        let _: () = ra.clone().set("n", 1).await.unwrap();
    })
    .await;
    assert_eq!(get(&b, "n").await.0.as_deref(), Some("1"));
    assert_eq!(get(&b, "n").await.1, "L1");
    after_heard(&b, 1, || async {
        let _: i64 = ra.clone().incr("n", 5).await.unwrap();
    })
    .await;
    assert_eq!(get(&b, "n").await.0.as_deref(), Some("6"), "INCRBY");

    assert_eq!(get(&b, "n").await.1, "L1", "back in B's L1");
    after_heard(&b, 1, || async {
        let _: bool = ra.clone().pexpire("n", 50).await.unwrap();
    })
    .await;
    support::eventually("the shortened TTL reaches B", || async {
        get(&b, "n").await.0.is_none()
    })
    .await;

    let _: () = ra.mset(&[("x", "1"), ("y", "2")]).await.unwrap();
    assert_eq!(get(&b, "x").await.0.as_deref(), Some("1"));
    assert_eq!(get(&b, "y").await.0.as_deref(), Some("2"));
    after_heard(&b, 2, || async {
        let _: u64 = ra.clone().del(&["x", "y"]).await.unwrap();
    })
    .await;
    assert_eq!(get(&b, "x").await.0, None, "DEL");
    assert_eq!(get(&b, "y").await.0, None, "DEL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_flushes_l1_before_it_is_trusted_again() {
    let redis = Redis::start();
    let (a, b) = pair(&redis);
    together(&a, &b).await;
    // B hears its own write's announcement; let it land before B caches the key.
    after_heard(&b, 1, || put(&b, "k", "old")).await;
    assert_eq!(get(&b, "k").await.0.as_deref(), Some("old"));
    assert_eq!(get(&b, "k").await.1, "L1");

    // A write straight to Redis, announced by nobody: pub/sub mode cannot see it, and B keeps
    // serving its L1 copy (bounded by l1.max_ttl; that is this mode's documented limit).
    let mut direct = redis.conn();
    redis::cmd("SET")
        .arg("k")
        .arg("new")
        .exec(&mut direct)
        .unwrap();
    assert_eq!(get(&b, "k").await, (Some("old".into()), "L1".into()));

    // Kill B's subscription (and A's): B must stop trusting L1, come back, flush, and read
    // the current value.
    let flushes = metric(&b.metrics().await, "tiergate_bus_flushes_total");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
    let subscribers: Vec<&str> = list
        .lines()
        // Its channel, and the one our own connections announce many keys to a message on.
        .filter(|l| l.contains(" sub=2 "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(
        subscribers.len(),
        2,
        "one subscription per instance: {list}"
    );
    for id in subscribers {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut direct)
            .unwrap();
    }
    support::eventually("B resubscribed and flushed L1", || async {
        let m = b.metrics().await;
        metric(&m, "tiergate_bus_flushes_total") > flushes
            && metric(&m, "tiergate_bus_subscribed") == 1.0
    })
    .await;
    assert_eq!(get(&b, "k").await.0.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_mode_evicts_writes_that_bypass_the_gateway() {
    let redis = Redis::start();
    let (a, b) = pair_with(
        &redis,
        &[
            ("TIERGATE_L2_INVALIDATION", "tracking"),
            ("TIERGATE_L2_TRACKING_PREFIXES", r#"["user:", "sess:"]"#),
        ],
    );
    together(&a, &b).await;
    let mut direct = redis.conn();
    let mut set_direct = |k: &str, v: &str| {
        redis::cmd("SET").arg(k).arg(v).exec(&mut direct).unwrap();
    };

    // A program writing straight to Redis: B hears it from Redis itself. Heard before B
    // reads: an invalidation arriving after the read would evict what it stored.
    after_heard(&b, 1, || async { set_direct("user:1", "old") }).await;
    assert_eq!(get(&b, "user:1").await, (Some("old".into()), "L2".into()));
    assert_eq!(get(&b, "user:1").await.1, "L1");
    after_heard(&b, 1, || async { set_direct("user:1", "new") }).await;
    assert_eq!(get(&b, "user:1").await, (Some("new".into()), "L2".into()));

    // A write through A: no PUBLISH in this mode, Redis' tracking tells B.
    assert_eq!(get(&b, "sess:9").await.0, None);
    put(&b, "sess:9", "v1").await;
    assert_eq!(get(&b, "sess:9").await, (Some("v1".into()), "L2".into()));
    after_heard(&b, 1, || put(&a, "sess:9", "v2")).await;
    assert_eq!(get(&b, "sess:9").await.0.as_deref(), Some("v2"));
    assert_eq!(
        redis.calls("publish"),
        0,
        "tracking mode announces nothing itself"
    );

    // Outside the prefixes nothing is heard: the documented bound is l1.max_ttl.
    set_direct("other:1", "old");
    assert_eq!(get(&b, "other:1").await.0.as_deref(), Some("old"));
    set_direct("other:1", "new");
    let stale = get(&b, "other:1").await;
    assert_eq!(stale, (Some("old".into()), "L1".into()));

    // FLUSHALL empties B's L1 (Redis pushes a nil invalidation).
    let flushes = metric(&b.metrics().await, "tiergate_bus_flushes_total");
    redis::cmd("FLUSHALL").exec(&mut redis.conn()).unwrap();
    support::eventually("B flushed L1", || async {
        metric(&b.metrics().await, "tiergate_bus_flushes_total") > flushes
    })
    .await;
    assert_eq!(get(&b, "other:1").await.0, None);
}

/// B's reply to GET `key` over RESP, or Redis' own, as comparable text (errors by their code).
async fn resp_get(url: &str, key: &str) -> String {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    match redis::cmd("GET")
        .arg(key)
        .query_async::<redis::Value>(&mut c)
        .await
    {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("error {}", e.code().unwrap_or("?")),
    }
}

/// Evictions B has made on what it heard: one per key, one per whole-L1 flush.
async fn evictions(b: &Binary) -> f64 {
    let m = b.metrics().await;
    metric(&m, "tiergate_bus_invalidations_total") + metric(&m, "tiergate_bus_flushes_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_of_every_kind_reach_the_other_instances_l1() {
    let redis = Redis::start();
    let (a, b) = pair(&redis);
    together(&a, &b).await;
    let direct = redis.url();
    let mut rd = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut ra = redis::Client::open(format!("redis://{}", a.resp))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let b_url = format!("redis://{}", b.resp);
    let run = |c: &mut redis::aio::MultiplexedConnection, args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let mut c = c.clone();
        async move { cmd.query_async::<redis::Value>(&mut c).await }
    };
    let _ = run(&mut rd, &["FUNCTION", "LOAD", "#!lua name=t\nredis.register_function('put', function(k, a) return redis.call('set', k[1], a[1]) end)"]).await.unwrap();
    let dump = {
        let _ = run(&mut rd, &["SET", "dumped", "restored"]).await.unwrap();
        match run(&mut rd, &["DUMP", "dumped"]).await.unwrap() {
            redis::Value::BulkString(b) => b,
            v => panic!("DUMP: {v:?}"),
        }
    };

    // (the key B has cached, a write through A, what B must then hear: keys or flushes)
    let cases: Vec<(&str, Vec<&str>, usize)> = vec![
        ("c:append", vec!["APPEND", "c:append", "+"], 1),
        ("c:setrange", vec!["SETRANGE", "c:setrange", "0", "Z"], 1),
        ("c:float", vec!["INCRBYFLOAT", "c:float", "1.5"], 1),
        ("c:getdel", vec!["GETDEL", "c:getdel"], 1),
        ("c:getex", vec!["GETEX", "c:getex", "EX", "100"], 1),
        ("c:getset", vec!["GETSET", "c:getset", "new"], 1),
        ("c:setex", vec!["SETEX", "c:setex", "100", "new"], 1),
        ("c:psetex", vec!["PSETEX", "c:psetex", "100000", "new"], 1),
        ("c:setbit", vec!["SETBIT", "c:setbit", "0", "0"], 1),
        (
            "c:bitfield",
            vec!["BITFIELD", "c:bitfield", "SET", "u8", "0", "65"],
            1,
        ),
        ("c:bitop", vec!["BITOP", "OR", "c:bitop", "c:other"], 1),
        ("c:renamed", vec!["RENAME", "c:other", "c:renamed"], 2),
        ("c:copy", vec!["COPY", "c:src", "c:copy", "REPLACE"], 1),
        ("c:move", vec!["MOVE", "c:move", "1"], 1),
        (
            "c:restore",
            vec!["RESTORE", "c:restore", "0", "DUMP", "REPLACE"],
            1,
        ),
        ("c:sorted", vec!["SORT", "c:list", "STORE", "c:sorted"], 1),
        ("c:union", vec!["SUNIONSTORE", "c:union", "c:set"], 1),
        (
            "c:zunion",
            vec!["ZUNIONSTORE", "c:zunion", "1", "c:zset"],
            1,
        ),
        ("c:persist", vec!["PEXPIREAT", "c:persist", "1"], 1),
        (
            "c:eval",
            vec![
                "EVAL",
                "return redis.call('set', KEYS[1], 'e')",
                "1",
                "c:eval",
            ],
            1,
        ),
        // A script that declares no keys: every L1 is flushed.
        (
            "c:undeclared",
            vec!["EVAL", "return redis.call('set', 'c:undeclared', 'e')", "0"],
            1,
        ),
        ("c:fcall", vec!["FCALL", "put", "1", "c:fcall", "f"], 1),
        ("c:flushdb", vec!["FLUSHDB"], 1),
        ("c:swapdb", vec!["SWAPDB", "0", "1"], 1),
        ("c:flushall", vec!["FLUSHALL"], 1),
    ];
    for (key, write, heard) in cases {
        for (k, v) in [(key, "1"), ("c:other", "x"), ("c:src", "copied")] {
            let _ = run(&mut rd, &["SET", k, v]).await.unwrap();
        }
        let _ = run(&mut rd, &["RPUSH", "c:list", "3", "1", "2"])
            .await
            .unwrap();
        let _ = run(&mut rd, &["SADD", "c:set", "m"]).await.unwrap();
        let _ = run(&mut rd, &["ZADD", "c:zset", "1", "m"]).await.unwrap();
        // B reads the key twice: the second read is its L1's.
        let _ = get(&b, key).await;
        assert_eq!(get(&b, key).await.1, "L1", "{key} cached in B's L1");
        let write: Vec<&str> = write
            .iter()
            .map(|a| if *a == "DUMP" { "" } else { *a })
            .collect();
        let before = evictions(&b).await;
        let reply = if write[0] == "RESTORE" {
            let mut cmd = redis::cmd("RESTORE");
            cmd.arg(key).arg(0).arg(&dump[..]).arg("REPLACE");
            cmd.query_async::<redis::Value>(&mut ra).await
        } else {
            run(&mut ra, &write).await
        };
        assert!(reply.is_ok(), "{write:?} through A: {reply:?}");
        support::eventually("B heard the write", || async {
            evictions(&b).await >= before + heard as f64
        })
        .await;
        assert_eq!(
            resp_get(&b_url, key).await,
            resp_get(&direct, key).await,
            "B serves {key} as Redis has it after {write:?} through A"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_invalidates_its_keys_once_exec_applies_them_and_watch_sees_every_instance() {
    let redis = Redis::start();
    let (a, b) = pair(&redis);
    together(&a, &b).await;
    let mut rd = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = rd.set("t:k", "v").await.unwrap();
    let _ = get(&b, "t:k").await;
    assert_eq!(get(&b, "t:k").await.1, "L1", "cached in B's L1");

    // A transaction through A: B hears of its write once EXEC has applied it.
    let before = evictions(&b).await;
    let got = support::raw(
        a.resp,
        b"MULTI\r\nAPPEND t:k +\r\nEXPIRE t:other 5\r\nEXEC\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        got,
        "+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:2\r\n:0\r\n+OK\r\n"
    );
    support::eventually("B heard the transaction's write", || async {
        evictions(&b).await > before
    })
    .await;
    assert_eq!(get(&b, "t:k").await.0.as_deref(), Some("v+"), "fresh on B");

    // WATCH through A sees a write made through B.
    let mut watcher = tokio::net::TcpStream::connect(a.resp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    watcher.write_all(b"WATCH t:k\r\n").await.unwrap();
    let mut buf = vec![0; 64];
    let n = watcher.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    assert_eq!(
        support::raw(b.resp, b"SET t:k w\r\nQUIT\r\n").await,
        "+OK\r\n+OK\r\n"
    );
    watcher
        .write_all(b"MULTI\r\nSET t:k mine\r\nEXEC\r\nGET t:k\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"$1\r\nw\r\n") {
        let n = watcher.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        got, b"+OK\r\n+QUEUED\r\n*-1\r\n$1\r\nw\r\n",
        "EXEC aborted by the watched write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_absences_are_cached_a_write_of_another_type_evicts_them_too() {
    let redis = Redis::start();
    let (a, b) = pair_with(&redis, &[("TIERGATE_L1_NEGATIVE_TTL", "1h")]);
    together(&a, &b).await;
    let b_url = format!("redis://{}", b.resp);
    // B caches that the key is absent.
    assert_eq!(resp_get(&b_url, "neg:k").await, "nil");
    assert_eq!(get(&b, "neg:k").await.0, None);
    // LPUSH through A can only create a list: announced because B may hold its absence.
    let before = evictions(&b).await;
    assert_eq!(
        support::raw(a.resp, b"LPUSH neg:k x\r\nQUIT\r\n").await,
        ":1\r\n+OK\r\n"
    );
    support::eventually("B heard the LPUSH", || async {
        evictions(&b).await > before
    })
    .await;
    assert_eq!(resp_get(&b_url, "neg:k").await, "error WRONGTYPE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_together_share_one_announcement_and_every_key_is_heard() {
    let redis = Redis::start();
    let (a, b) = pair(&redis);
    together(&a, &b).await;
    let keys: Vec<String> = (0..20).map(|i| format!("many{i}")).collect();
    let mut direct = redis.conn();
    for k in &keys {
        // Straight to Redis: no announcement that could reach B after it cached the key.
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("old")
            .exec(&mut direct)
            .unwrap();
        assert_eq!(get(&b, k).await, (Some("old".into()), "L2".into()));
        assert_eq!(get(&b, k).await.1, "L1", "{k} cached in B");
    }
    let published = redis.calls("publish");
    // 20 SETs and an INCR-family write in one client write: held and sent together.
    let mut batch = String::new();
    for k in &keys {
        batch.push_str(&format!("SET {k} new\r\n"));
    }
    batch.push_str("APPEND many0 !\r\nQUIT\r\n");
    after_heard(&b, 21, || async {
        let reply = support::raw(a.resp, batch.as_bytes()).await;
        assert_eq!(reply, format!("{}:4\r\n+OK\r\n", "+OK\r\n".repeat(20)));
    })
    .await;
    let publishes = redis.calls("publish") - published;
    assert!(
        (1..21).contains(&publishes),
        "21 writes announced in {publishes} PUBLISHes"
    );
    for k in &keys[1..] {
        assert_eq!(get(&b, k).await.0.as_deref(), Some("new"), "{k}");
    }
    assert_eq!(get(&b, "many0").await.0.as_deref(), Some("new!"));
    // Another program's announcement, one key to a message, is heard as before.
    let _: () = redis::cmd("SET")
        .arg("other")
        .arg("old")
        .exec(&mut direct)
        .unwrap();
    assert_eq!(get(&b, "other").await.1, "L2");
    assert_eq!(get(&b, "other").await.1, "L1");
    let _: () = redis::cmd("SET")
        .arg("other")
        .arg("new")
        .exec(&mut direct)
        .unwrap();
    after_heard(&b, 1, || async {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("tiergate:invalidate")
            .arg("other")
            .query(&mut direct)
            .unwrap();
    })
    .await;
    assert_eq!(get(&b, "other").await.0.as_deref(), Some("new"));
}

/// One instance on `redis` whose HTTP handlers give up after 200 ms while its L2 writes wait
/// up to 10 s for their replies: a write can be applied after its writer is gone.
fn impatient(redis: &Redis) -> Binary {
    let url = redis.url();
    Binary::start(&[
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
        ("TIERGATE_L1_MAX_TTL", "1h"),
        ("TIERGATE_HTTP_REQUEST_TIMEOUT", "200ms"),
        ("TIERGATE_L2_TIMEOUT", "10s"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_write_applied_after_its_writer_gave_up_is_evicted_by_its_echo() {
    let redis = Redis::start();
    let b = impatient(&redis);
    subscribed(&b).await;
    // The old value in B's L1, written straight to Redis (announced by nobody).
    let mut direct = redis.conn();
    redis::cmd("SET")
        .arg("k")
        .arg("old")
        .exec(&mut direct)
        .unwrap();
    assert_eq!(get(&b, "k").await.0.as_deref(), Some("old"));
    assert_eq!(get(&b, "k").await, (Some("old".into()), "L1".into()));
    let m = b.metrics().await;
    let flushes = metric(&m, "tiergate_bus_flushes_total");
    let evicted = metric(&m, "tiergate_bus_invalidations_total");
    let skipped = metric(&m, "tiergate_bus_own_echoes_skipped_total");

    // Redis stopped: the PUT's SET and its announcement wait in Redis' socket, and the
    // handler is dropped at its 200 ms request timeout, before it could evict k here.
    {
        let _held = redis.hold();
        let r = reqwest::Client::new()
            .put(format!("http://{}/v1/kv/k", b.http))
            .body("new")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "the writer gave up");
    }
    // Redis runs again and applies the write; nobody waits for its reply any more. Only the
    // echo can evict k from B's L1 now (max_ttl is an hour): it must not be skipped.
    support::eventually("Redis applied the write", || async {
        let v: Option<String> = redis::cmd("GET").arg("k").query(&mut redis.conn()).unwrap();
        v.as_deref() == Some("new")
    })
    .await;
    support::eventually("B's echo evicted the old value", || async {
        get(&b, "k").await.0.as_deref() == Some("new")
    })
    .await;
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_bus_flushes_total"),
        flushes,
        "evicted by the echo, not by a flush"
    );
    assert!(metric(&m, "tiergate_bus_invalidations_total") > evicted);
    assert_eq!(
        metric(&m, "tiergate_bus_own_echoes_skipped_total"),
        skipped,
        "the echo of a write not evicted here is never skipped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_echoes_of_writes_evicted_here_are_skipped_and_counted() {
    let redis = Redis::start();
    let b = impatient(&redis);
    subscribed(&b).await;
    let mut c = redis::Client::open(format!("redis://{}", b.resp))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let before = heard(&b).await;
    let mut writes = 0.0;
    for i in 0..20 {
        // Read into L1, then written (SET is served, INCR forwarded): the writer's answer
        // means its own eviction is done, whatever becomes of the echo.
        let _: Option<String> = c.get("s").await.unwrap();
        let _: () = c.set("s", i).await.unwrap();
        let v: String = c.get("s").await.unwrap();
        assert_eq!(v, i.to_string(), "read-your-writes after SET");
        let _: Option<String> = c.get("n").await.unwrap();
        let n: i64 = c.incr("n", 1).await.unwrap();
        let v: i64 = c.get("n").await.unwrap();
        assert_eq!(v, n, "read-your-writes after INCR");
        writes += 2.0;
    }
    // One key a message: each echo is either evicted (one key) or skipped (one message).
    support::eventually("B settled every own echo", || async {
        heard(&b).await == before + writes
    })
    .await;
    let skipped = metric(&b.metrics().await, "tiergate_bus_own_echoes_skipped_total");
    assert!(skipped > 0.0, "no own echo was skipped");
}

/// Subscribers of `channel`, as Redis counts them.
fn numsub(redis: &Redis, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut redis.conn())
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_alone_on_the_bus_is_not_sent_its_own_announcements_until_another_joins() {
    let redis = Redis::start();
    let url = redis.url();
    let env = [
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
        ("TIERGATE_L1_MAX_TTL", "1h"),
    ];
    let a = Binary::start(&env);
    subscribed(&a).await;
    // Alone: on the bus's channel, not on the one its batches announce keys on.
    assert_eq!(metric(&a.metrics().await, "tiergate_bus_alone"), 1.0);
    assert_eq!(numsub(&redis, "tiergate:invalidate"), 1);
    assert_eq!(numsub(&redis, "tiergate:invalidate:keys"), 0);
    // Its writes leave its L1 all the same, and their messages, kept rather than heard
    // back, are settled as its echoes are.
    let before = heard(&a).await;
    put(&a, "k", "one").await;
    assert_eq!(get(&a, "k").await.0.as_deref(), Some("one"));
    assert_eq!(get(&a, "k").await, (Some("one".into()), "L1".into()));
    support::eventually("A settled its own write's message", || async {
        heard(&a).await > before
    })
    .await;

    // B joins: A hears its hello, listens to the keys channel, and flushes L1 (it may hold
    // what B wrote before A heard it).
    let flushes = metric(&a.metrics().await, "tiergate_bus_flushes_total");
    let b = Binary::start(&env);
    together(&a, &b).await;
    assert!(metric(&a.metrics().await, "tiergate_bus_flushes_total") > flushes);
    assert_eq!(numsub(&redis, "tiergate:invalidate:keys"), 2);
    // From then on A hears what B writes.
    assert_eq!(get(&a, "k").await.0.as_deref(), Some("one"));
    assert_eq!(get(&a, "k").await, (Some("one".into()), "L1".into()));
    after_heard(&a, 1, || put(&b, "k", "two")).await;
    assert_eq!(get(&a, "k").await.0.as_deref(), Some("two"));

    // B gone, A finds itself alone again at a PING of its subscription, and stops hearing
    // its own announcements; its writes are settled as before.
    drop(b);
    support::eventually("A alone again", || async {
        metric(&a.metrics().await, "tiergate_bus_alone") == 1.0
    })
    .await;
    assert_eq!(numsub(&redis, "tiergate:invalidate:keys"), 0);
    let before = heard(&a).await;
    put(&a, "k", "three").await;
    assert_eq!(get(&a, "k").await.0.as_deref(), Some("three"));
    support::eventually("A settled its own write's message", || async {
        heard(&a).await > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_alone_finds_a_subscriber_that_says_no_hello_and_listens() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Binary::start(&[
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
    ]);
    subscribed(&a).await;
    assert_eq!(metric(&a.metrics().await, "tiergate_bus_alone"), 1.0);
    // An older instance (or any program on the bus's channel) publishes no hello: A asks
    // Redis who listens, at every PING of its subscription.
    let mut watcher = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    watcher.subscribe("tiergate:invalidate").await.unwrap();
    support::eventually("A no longer alone", || async {
        let m = a.metrics().await;
        metric(&m, "tiergate_bus_alone") == 0.0 && metric(&m, "tiergate_bus_subscribed") == 1.0
    })
    .await;
    assert_eq!(numsub(&redis, "tiergate:invalidate:keys"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_that_refuses_asking_who_listens_leaves_the_instance_never_alone() {
    let redis = Redis::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("gw")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-pubsub|numsub")
        .query(&mut redis.conn())
        .unwrap();
    let url = format!("redis://gw:pw@127.0.0.1:{}", redis.port);
    let a = Binary::start(&[
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
        ("TIERGATE_L1_MAX_TTL", "1h"),
    ]);
    subscribed(&a).await;
    // Alone by its hello, then refused PUBSUB NUMSUB at a PING: it listens as every
    // instance did before it could tell, and its subscription stays up.
    support::eventually("A listens to announcements", || async {
        let m = a.metrics().await;
        metric(&m, "tiergate_bus_alone") == 0.0 && metric(&m, "tiergate_bus_subscribed") == 1.0
    })
    .await;
    assert_eq!(numsub(&redis, "tiergate:invalidate:keys"), 1);
    put(&a, "k", "v").await;
    assert_eq!(get(&a, "k").await.0.as_deref(), Some("v"));
    assert_eq!(get(&a, "k").await, (Some("v".into()), "L1".into()));
}

//! The Redis-protocol door with real clients (the `redis` crate, redis-cli, redis-benchmark):
//! every command, pipelines, binary and large values, RESP3, heartbeats, the connection
//! budget, malformed frames, auth, cross-door reads, and a differential run against
//! redis-server itself. L2 is one redis-server, or a three-master cluster with
//! `TIERGATE_TEST_L2=cluster`.

mod support;

use redis::{AsyncCommands, Value};
use std::{process::Command, time::Duration};
use support::{metric, raw, Backend, Gateway, Redis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn resp_url(gw: &Gateway) -> String {
    format!("redis://{}", gw.running.as_ref().unwrap().resp_addr)
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The command script both tiergate and redis-server run in the differential test.
fn script() -> Vec<Vec<&'static [u8]>> {
    let c = |parts: &[&'static str]| parts.iter().map(|p| p.as_bytes()).collect::<Vec<_>>();
    vec![
        c(&["PING"]),
        c(&["PING", "hello"]),
        c(&["ECHO", "echo"]),
        c(&["SELECT", "0"]),
        c(&["SELECT", "16"]),
        c(&["SELECT", "x"]),
        c(&["GET", "k"]),
        c(&["SET", "k", "v1"]),
        c(&["GET", "k"]),
        c(&["SET", "k", "v2", "NX"]),
        c(&["SET", "k", "v2", "XX", "GET"]),
        c(&["SET", "n", "x", "XX"]),
        c(&["SET", "n", "x", "NX", "GET"]),
        c(&["GET", "n"]),
        c(&["SET", "k", "v3", "EX", "100"]),
        c(&["SET", "k", "v4", "KEEPTTL", "GET"]),
        c(&["SET", "k", "v", "EX", "0"]),
        c(&["SET", "k", "v", "EX", "abc"]),
        c(&["SET", "k", "v", "EX", "10000000000000000"]),
        c(&["SET", "k", "v", "EX", "9223372036854775"]),
        c(&["SET", "k", "v", "PX", "9223372036854775807"]),
        c(&["SET", "k", "v", "PX", "-1"]),
        c(&["SET", "k", "v", "EXAT", "0"]),
        c(&["SET", "k", "v", "PXAT", "-5"]),
        c(&["SET", "k", "v", "NX", "XX"]),
        c(&["SET", "k", "v", "EX", "10", "PX", "10"]),
        c(&["SET", "k", "v", "BOGUS"]),
        c(&["SET", "empty", ""]),
        c(&["GET", "empty"]),
        c(&["MSET", "a", "1", "b", "2"]),
        c(&["MSET", "a", "1", "b"]),
        c(&["MGET", "a", "b", "missing", "a"]),
        c(&["EXISTS", "a", "b", "missing", "a"]),
        c(&["DEL", "a", "missing", "a"]),
        c(&["UNLINK", "b"]),
        c(&["EXISTS", "a", "b"]),
        c(&["GET"]),
        c(&["GET", "a", "b"]),
        c(&["NOSUCHCOMMAND", "x"]),
        c(&["CLIENT", "GETNAME"]),
        c(&["CLIENT", "SETNAME", "tester"]),
        c(&["CLIENT", "GETNAME"]),
        c(&["CLIENT", "SETNAME", "has space"]),
        c(&["AUTH", "nopass"]),
        c(&["HELLO", "4"]),
        c(&["INCR", "c"]),
        c(&["INCRBY", "c", "10"]),
        c(&["DECR", "c"]),
        c(&["DECRBY", "c", "3"]),
        c(&["INCRBY", "c", "abc"]),
        c(&["GET", "c"]),
        c(&["INCR", "k"]),
        c(&["SET", "big", "9223372036854775807"]),
        c(&["INCR", "big"]),
        c(&["DECRBY", "big", "-9223372036854775808"]),
        c(&["SET", "padded", " 1"]),
        c(&["INCR", "padded"]),
        c(&["TTL", "c"]),
        c(&["TTL", "missing"]),
        c(&["EXPIRE", "missing", "10"]),
        c(&["EXPIRE", "c", "100"]),
        c(&["TTL", "c"]),
        c(&["EXPIRE", "c", "50", "NX"]),
        c(&["EXPIRE", "c", "200", "GT"]),
        c(&["TTL", "c"]),
        c(&["EXPIRE", "c", "100", "GT"]),
        c(&["EXPIRE", "c", "50", "LT"]),
        c(&["TTL", "c"]),
        c(&["INCR", "c"]),
        c(&["TTL", "c"]),
        c(&["EXPIRE", "empty", "30", "XX"]),
        c(&["EXPIRE", "empty", "30", "LT"]),
        c(&["TTL", "empty"]),
        c(&["EXPIRE", "c", "10", "NX", "XX"]),
        c(&["EXPIRE", "c", "10", "GT", "LT"]),
        c(&["EXPIRE", "c", "10", "SOON"]),
        c(&["EXPIRE", "c", "9223372036854775807"]),
        c(&["PEXPIRE", "c", "0"]),
        c(&["EXISTS", "c"]),
        c(&["SET", "t", "1", "EX", "100"]),
        c(&["SET", "t", "2", "KEEPTTL"]),
        c(&["TTL", "t"]),
        c(&["SET", "t", "3"]),
        c(&["TTL", "t"]),
    ]
}

/// Runs the script on one connection; errors are reduced to their kind (the first word):
/// wording may differ from redis-server, the kind may not.
async fn run_script(url: &str) -> Vec<String> {
    let mut c = conn(url).await;
    let mut out = Vec::new();
    for cmd in script() {
        let mut rc = redis::cmd(std::str::from_utf8(cmd[0]).unwrap());
        for a in &cmd[1..] {
            rc.arg(*a);
        }
        let line = match rc.query_async::<Value>(&mut c).await {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {}", e.code().unwrap_or("?")),
        };
        out.push(format!(
            "{:?} -> {line}",
            cmd.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>()
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_match_redis_server_standalone_tiered_and_over_a_cluster() {
    // tiergate serves one keyspace: the reference is a redis-server with one database.
    let reference = Redis::start_with(&["--databases", "1"]);
    let want = run_script(&reference.url()).await;

    let standalone = Gateway::start(support::config(None)).await;
    let got = run_script(&resp_url(&standalone)).await;
    assert_eq!(got, want, "standalone memory mode");

    let l2 = Backend::start();
    let tiered = Gateway::start_ready(l2.config()).await;
    let got = run_script(&resp_url(&tiered)).await;
    assert_eq!(got, want, "tiered mode");

    // Over a 3-master cluster, multi-key commands (MSET, MGET, EXISTS, DEL) name keys of
    // different slots; tiergate splits them, so clients see one Redis.
    let cluster = support::Cluster::start();
    let clustered = Gateway::start_ready(cluster.config()).await;
    let got = run_script(&resp_url(&clustered)).await;
    assert_eq!(got, want, "tiered over a cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_l2_with_their_ttl_and_reads_fill_l1() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let mut c = conn(&resp_url(&gw)).await;
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("v")
        .arg("EX")
        .arg(100)
        .query_async(&mut c)
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL").arg("t").query(&mut l2.conn()).unwrap();
    assert!(ttl > 90 && ttl <= 100, "{ttl}");
    let _: () = l2.set("direct", "x");
    let v: String = c.get("direct").await.unwrap();
    assert_eq!(v, "x");
    let v: String = c.get("direct").await.unwrap();
    assert_eq!(v, "x");
    assert_eq!(
        (l2.calls("get"), l2.calls("pttl")),
        (1, 1),
        "the second GET was an L1 hit (a miss is a GET and a PTTL, for L1's TTL)"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("t")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 90 && ttl <= 100, "{ttl}");
    // The client sees Redis' own WRONGTYPE for a key of another type, not a miss.
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg("x")
        .exec(&mut l2.conn())
        .unwrap();
    let err = c.get::<_, Option<String>>("list").await.unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
    // A write through RESP invalidates the L1 copy.
    let _: () = c.set("direct", "y").await.unwrap();
    let v: String = c.get("direct").await.unwrap();
    assert_eq!(v, "y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_of_a_thousand_answer_in_order() {
    let gw = Gateway::start(support::config(None)).await;
    let mut c = conn(&resp_url(&gw)).await;
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.set(format!("k{i}"), i).ignore();
    }
    for i in 0..1000 {
        pipe.get(format!("k{i}"));
    }
    let got: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(got, (0..1000).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sets_share_an_l2_round_trip_and_keep_their_order() {
    let l2 = Backend::start();
    let mut cfg = l2.config();
    cfg.limits.max_value_bytes = tiergate::config::ByteSize(16);
    let gw = Gateway::start_ready(cfg).await;
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg("x")
        .exec(&mut l2.conn())
        .unwrap();
    // One write, so one read: the SETs before the GET are held and written together, as
    // are those after it. Each is answered as Redis answers it, in order.
    let mut batch = String::from(
        "SET a 1\r\nSET a 2 NX\r\nSET b 0123456789abcdefXYZ\r\nSET a 3 GET\r\n\
         SET list v GET\r\nSET c 1 XX\r\nGET a\r\nSET d 4 EX 100\r\n",
    );
    let mut want = vec![
        "+OK",
        "$-1", // NX: the SET before it in the same read wrote a
        "-ERR value is larger than limits.max_value_bytes", // refused here, nothing written
        "$1",
        "1", // GET: the old value
        "-WRONGTYPE",
        "$-1", // XX: no c
        "$1",
        "3", // a read after writes sees them
        "+OK",
    ];
    for i in 0..8 {
        batch.push_str(&format!("SET e{i} {i}\r\n"));
        want.push("+OK");
    }
    batch.push_str("QUIT\r\n");
    want.push("+OK");
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let reply = raw(addr, batch.as_bytes()).await;
    let got: Vec<&str> = reply.trim_end().split("\r\n").collect();
    assert_eq!(got.len(), want.len(), "{reply}");
    for (g, w) in got.iter().zip(&want) {
        assert!(g.starts_with(w), "{g:?} is not {w:?} in {reply}");
    }
    let mut direct = l2.conn();
    let a: String = redis::cmd("GET").arg("a").query(&mut direct).unwrap();
    assert_eq!(a, "3");
    let b: Option<String> = redis::cmd("GET").arg("b").query(&mut direct).unwrap();
    assert_eq!(b, None);
    let ttl: i64 = redis::cmd("TTL").arg("d").query(&mut direct).unwrap();
    assert!(ttl > 90 && ttl <= 100, "{ttl}");
    let e7: String = redis::cmd("GET").arg("e7").query(&mut direct).unwrap();
    assert_eq!(e7, "7");
    // 14 SETs reached Redis; over one Redis they took a round trip per held run (MSET in
    // the metrics), not one each. A cluster writes them one by one.
    if let Backend::Single(_) = l2 {
        let text = gw.metrics().await;
        let trips = |op: &str| {
            metric(
                &text,
                &format!("tiergate_l2_command_duration_seconds_count{{op=\"{op}\"}}"),
            )
        };
        assert!(trips("mset") >= 1.0, "{text}");
        assert!(trips("mset") + trips("set") < 14.0, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_get_misses_share_a_round_trip_and_fill_l1() {
    let l2 = Backend::start();
    let mut cfg = l2.config();
    cfg.l1.negative_ttl = tiergate::config::HumanDuration(Duration::from_secs(600));
    let gw = Gateway::start_ready(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    for i in 0..16 {
        l2.set(&format!("m{i}"), &format!("value {i}"));
    }
    let _: () = redis::cmd("RPUSH")
        .arg("list")
        .arg("x")
        .exec(&mut l2.conn())
        .unwrap();
    // 16 keys Redis has, one of another type, one absent: each answered as Redis answers
    // it, in order, and the first two GETs of each key reach Redis together.
    let mut batch = String::new();
    let mut want = String::new();
    for i in 0..16 {
        batch.push_str(&format!("GET m{i}\r\n"));
        want.push_str(&format!("${}\r\nvalue {i}\r\n", format!("value {i}").len()));
    }
    batch.push_str("GET list\r\nGET nothing\r\n");
    want.push_str("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n$-1\r\n");
    let before = forwarded_trips(&gw).await;
    assert_eq!(
        raw(addr, format!("{batch}QUIT\r\n").as_bytes()).await,
        format!("{want}+OK\r\n")
    );
    let trips = forwarded_trips(&gw).await - before;
    assert!(
        (1.0..18.0).contains(&trips),
        "18 misses took {trips} round trips"
    );
    assert_eq!(l2.calls("get"), 18);
    assert_eq!(l2.calls("pttl"), 18, "each miss reads its TTL, for L1's");
    // Again: the values and the absence are L1's now; the other type is asked again.
    assert_eq!(
        raw(addr, format!("{batch}QUIT\r\n").as_bytes()).await,
        format!("{want}+OK\r\n")
    );
    assert_eq!(l2.calls("get"), 19);
    // In RESP3 too, where an absent key is `_`.
    let mut c = conn(&resp_url(&gw)).await;
    let _: redis::Value = redis::cmd("HELLO")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    let got: Option<String> = c.get("m3").await.unwrap();
    assert_eq!(got.as_deref(), Some("value 3"));
    let _: () = redis::cmd("SET")
        .arg("resp3")
        .arg("v")
        .exec(&mut l2.conn())
        .unwrap();
    let got: Option<String> = c.get("resp3").await.unwrap();
    assert_eq!(got.as_deref(), Some("v"), "read from Redis over RESP3");
    assert_eq!(l2.calls("get"), 20);
    let got: Option<String> = c.get("resp3").await.unwrap();
    assert_eq!(got.as_deref(), Some("v"), "then from L1");
    assert_eq!(l2.calls("get"), 20);
}

/// How many runs of forwarded commands reached Redis, from the gateway's metrics.
async fn forwarded_trips(gw: &Gateway) -> f64 {
    let text = gw.metrics().await;
    metric(
        &text,
        "tiergate_l2_command_duration_seconds_count{op=\"forward\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_empty_and_one_mib_values_round_trip() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let mut c = conn(&resp_url(&gw)).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    for (k, v) in [("bin", &binary), ("big", &big), ("empty", &Vec::new())] {
        let _: () = c.set(k, v.as_slice()).await.unwrap();
        let back: Vec<u8> = c.get(k).await.unwrap();
        assert_eq!(&back, v, "{k}");
        let direct: Vec<u8> = redis::cmd("GET").arg(k).query(&mut l2.conn()).unwrap();
        assert_eq!(&direct, v, "{k} in L2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_after_hello_3() {
    let gw = Gateway::start(support::config(None)).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let out = raw(
        addr,
        b"HELLO 3\r\nGET missing\r\nCLIENT GETNAME\r\nHELLO 2\r\nGET missing\r\nQUIT\r\n",
    )
    .await;
    assert!(out.starts_with("%8\r\n$6\r\nserver\r\n"), "{out}");
    assert!(out.contains("$5\r\nproto\r\n:3\r\n"), "{out}");
    assert!(
        out.contains("_\r\n_\r\n*16\r\n"),
        "RESP3 nulls, then HELLO 2 as a flat array: {out}"
    );
    assert!(
        out.ends_with("$-1\r\n+OK\r\n"),
        "a RESP2 null after HELLO 2: {out}"
    );

    let url = format!("{}?protocol=resp3", resp_url(&gw));
    let mut c = conn(&url).await;
    let _: () = c.set("k", "v").await.unwrap();
    let v: Option<String> = c.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    let none: Value = redis::cmd("GET")
        .arg("nope")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(none, Value::Nil);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_and_ping_keeps_them() {
    let mut cfg = support::config(None);
    cfg.resp.idle_timeout = tiergate::config::HumanDuration(Duration::from_millis(400));
    let gw = Gateway::start(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;

    let mut pinger = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pinger.write_all(b"PING\r\n").await.unwrap();
        let mut buf = [0u8; 7];
        pinger.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"+PONG\r\n");
    }

    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(support::SETTLE, silent.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed without a reply");
    let m = gw.metrics().await;
    assert!(metric(&m, "tiergate_tcp_heartbeat_timeouts_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_the_budget_are_refused() {
    let mut cfg = support::config(None);
    cfg.resp.max_connections = 2;
    let gw = Gateway::start(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let url = resp_url(&gw);
    let mut a = conn(&url).await;
    let mut b = conn(&url).await;
    let _: () = a.set("k", "v").await.unwrap();
    assert_eq!(
        raw(addr, b"").await,
        "-ERR max number of clients reached\r\n"
    );
    let v: String = b.get("k").await.unwrap();
    assert_eq!(v, "v", "the admitted clients are unaffected");
    drop(a);
    support::eventually("a freed slot admits a new client", || async {
        raw(addr, b"PING\r\nQUIT\r\n").await == "+PONG\r\n+OK\r\n"
    })
    .await;
    let m = gw.metrics().await;
    assert!(metric(&m, "tiergate_connections_rejected_total{door=\"resp\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_closes_only_its_connection() {
    let mut cfg = support::config(None);
    cfg.resp.enable_debug_command = true;
    cfg.resp.max_connections = 2;
    let gw = Gateway::start(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut a = conn(&resp_url(&gw)).await;
    let _: () = a.set("k", "v").await.unwrap();

    // Pipelined behind the panic: never run, and no reply of any kind.
    assert_eq!(raw(addr, b"DEBUG PANIC\r\nSET k gone\r\n").await, "");
    let v: String = a.get("k").await.unwrap();
    assert_eq!(v, "v", "the other client and the store are untouched");
    // The panicked task gave its budget permit back: with a budget of 2 and `a` open, a new
    // client is admitted (over and over, so a leaked permit would show).
    // (Eventually: the client may see the close a moment before the permit is dropped.)
    for _ in 0..3 {
        support::eventually("a client in the freed slot", || async {
            raw(addr, b"DEBUG PANIC\r\n").await.is_empty()
        })
        .await;
    }
    support::eventually("a client in the freed slot", || async {
        raw(addr, b"PING\r\nQUIT\r\n").await == "+PONG\r\n+OK\r\n"
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "tiergate_connection_panics_total"), 4.0);
    support::eventually("only `a` is open", || async {
        metric(
            &gw.metrics().await,
            "tiergate_open_connections{door=\"resp\"}",
        ) == 1.0
    })
    .await;

    // Off by default, as in redis-server 7.
    let gw = Gateway::start(support::config(None)).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let reply = raw(addr, b"DEBUG PANIC\r\nPING\r\nQUIT\r\n").await;
    assert!(
        reply.starts_with("-ERR DEBUG command not allowed") && reply.ends_with("+PONG\r\n+OK\r\n"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_get_an_error_and_a_close() {
    let mut cfg = support::config(None);
    cfg.limits.max_value_bytes = tiergate::config::ByteSize(1024);
    cfg.resp.max_request_bytes = tiergate::config::ByteSize(2048);
    let gw = Gateway::start(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    // Two 1020-byte values: each within the value bound, together (2086 bytes) over the
    // request bound, which is seen at the second value's header, before its bytes arrive.
    let mut mset = b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1020\r\n".to_vec();
    mset.extend_from_slice(&[b'x'; 1020]);
    mset.extend_from_slice(b"\r\n$1\r\nb\r\n$1020\r\n");
    assert_eq!(
        raw(addr, &mset).await,
        "-ERR Protocol error: request exceeds resp.max_request_bytes\r\n"
    );
    let cases: &[(&[u8], &str)] = &[
        (
            b"*2147483647\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        // Over the bound: the error names the limit and its value.
        (
            b"*1\r\n$999999999999\r\n",
            "-ERR Protocol error: bulk length 999999999999 exceeds limits.max_value_bytes (1024)\r\n",
        ),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n",
            "-ERR Protocol error: bulk length 1025 exceeds limits.max_value_bytes (1024)\r\n",
        ),
        // Not a length at all.
        (
            b"*1\r\n$12x\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"GET \"unterminated\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        // Replies to what came before the bad frame are still sent.
        (
            b"PING\r\n*1\r\n$-7\r\n",
            "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            raw(addr, input).await,
            *want,
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    // An inline request longer than resp.max_inline_bytes without a newline.
    let long = vec![b'a'; 70 * 1024];
    assert_eq!(
        raw(addr, &long).await,
        "-ERR Protocol error: too big inline request\r\n"
    );
    let m = gw.metrics().await;
    assert!(metric(&m, "tiergate_resp_protocol_errors_total") >= 9.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_gates_every_command_but_the_handshake() {
    let mut cfg = support::config(None);
    cfg.resp.requirepass = "s3cret".into();
    let gw = Gateway::start(cfg).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let out = raw(
        addr,
        b"GET k\r\nPING\r\nAUTH wrong\r\nHELLO 3\r\nAUTH s3cret\r\nGET k\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        out.lines()
            .map(|l| l.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        [
            "-NOAUTH",
            "+PONG",
            "-WRONGPASS",
            "-NOAUTH",
            "+OK",
            "$-1",
            "+OK"
        ],
        "{out}"
    );
    let url = format!("redis://:s3cret@{addr}");
    let mut c = conn(&url).await;
    let _: () = c.set("k", "v").await.unwrap();
    let out = raw(addr, b"HELLO 2 AUTH default s3cret\r\nGET k\r\nQUIT\r\n").await;
    assert!(out.ends_with("$1\r\nv\r\n+OK\r\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doors_share_one_engine() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let mut c = conn(&resp_url(&gw)).await;
    assert_eq!(gw.put("from-http", "h").await.status(), 204);
    let v: String = c.get("from-http").await.unwrap();
    assert_eq!(v, "h");
    let _: () = c.set("from-resp", "r").await.unwrap();
    assert_eq!(gw.get("from-resp").await.text().await.unwrap(), "r");
    let _: () = c.set("from-http", "changed").await.unwrap();
    assert_eq!(
        gw.get("from-http").await.text().await.unwrap(),
        "changed",
        "a RESP write invalidates L1 for HTTP too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_commands_already_received() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    l2.set("slow", "answer");
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let sleeper = l2.pause(1.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"GET slow\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.running.as_ref().unwrap().shutdown();
    let mut out = Vec::new();
    tokio::time::timeout(support::SETTLE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "$6\r\nanswer\r\n",
        "answered, then closed"
    );
    sleeper.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_unchanged() {
    let gw = Gateway::start(support::config(None)).await;
    let port = gw.running.as_ref().unwrap().resp_addr.port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(cli(&["GET", "greeting"]), "hello world\n");
    assert_eq!(cli(&["EXISTS", "greeting", "nope"]), "1\n");
    let port2 = port.clone();
    let bench = tokio::task::spawn_blocking(move || {
        Command::new("redis-benchmark")
            .args([
                "-p", &port2, "-t", "get,set", "-n", "5000", "-P", "16", "-q",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout).into_owned()
        + &String::from_utf8_lossy(&bench.stderr);
    assert!(bench.status.success(), "{text}");
    for t in ["SET: ", "GET: "] {
        assert!(
            text.contains(t) && text.contains("requests per second"),
            "{text}"
        );
    }
    assert!(!text.to_lowercase().contains("error"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_atomic_across_gateways_and_in_the_memory_store() {
    let l2 = Backend::start();
    let a = Gateway::start_ready(l2.config()).await;
    let b = Gateway::start_ready(l2.config()).await;
    let standalone = Gateway::start(support::config(None)).await;
    for (urls, what) in [
        (
            vec![resp_url(&a), resp_url(&b)],
            "two gateways on one Redis",
        ),
        (vec![resp_url(&standalone)], "standalone"),
    ] {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let url = urls[i % urls.len()].clone();
                tokio::spawn(async move {
                    let mut c = conn(&url).await;
                    for _ in 0..250 {
                        let _: i64 = c.incr("counter", 1).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut c = conn(&urls[0]).await;
        let n: i64 = c.get("counter").await.unwrap();
        assert_eq!(n, 2000, "{what}: no increment lost");
    }
    let direct: i64 = redis::cmd("GET")
        .arg("counter")
        .query(&mut l2.conn())
        .unwrap();
    assert_eq!(direct, 2000, "the counter lives in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_reaches_l2_and_evicts_the_l1_copy() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let mut c = conn(&resp_url(&gw)).await;
    let _: () = c.set("k", "v").await.unwrap();
    let _: String = c.get("k").await.unwrap(); // now in L1
    let applied: bool = c.pexpire("k", 200).await.unwrap();
    assert!(applied);
    let pttl: i64 = redis::cmd("PTTL").arg("k").query(&mut l2.conn()).unwrap();
    assert!(pttl > 0 && pttl <= 200, "{pttl}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let v: Option<String> = c.get("k").await.unwrap();
    assert_eq!(v, None, "L1 did not outlive the new TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_config_get_report_tiergates_own_figures() {
    let mut cfg = support::config(None);
    cfg.resp.max_connections = 1234;
    let gw = Gateway::start(cfg).await;
    let mut c = conn(&resp_url(&gw)).await;
    let _: () = c.set("a", "1").await.unwrap();
    let _: Option<String> = c.get("a").await.unwrap();
    let _: Option<String> = c.get("missing").await.unwrap();

    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    for header in [
        "# Server\r\n",
        "# Clients\r\n",
        "# Memory\r\n",
        "# Stats\r\n",
        "# Keyspace\r\n",
    ] {
        assert!(info.contains(header), "{header:?} missing from\n{info}");
    }
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in\n{info}"))
            .to_string()
    };
    assert_eq!(field("redis_version"), "7.0.0");
    assert_eq!(
        field("tcp_port"),
        gw.running.as_ref().unwrap().resp_addr.port().to_string()
    );
    assert_eq!(field("connected_clients"), "1");
    assert_eq!(field("maxclients"), "1234");
    assert_eq!(field("keyspace_hits"), "1");
    assert_eq!(field("keyspace_misses"), "1");
    assert!(field("used_memory_rss").parse::<u64>().unwrap() > 0);
    assert_eq!(field("db0"), "keys=1,expires=0,avg_ttl=0");
    assert!(field("total_commands_processed").parse::<u64>().unwrap() >= 4);

    let only: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        only.starts_with("# Clients\r\n") && !only.contains("# Server"),
        "{only}"
    );

    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .arg("max*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(cfg[..2], ["save".to_string(), String::new()]);
    assert!(
        cfg.windows(2)
            .any(|w| w[0] == "maxclients" && w[1] == "1234"),
        "{cfg:?}"
    );
    let err = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ERR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_over_their_own_bounds_are_refused() {
    // The codec bounds each argument by the larger of the two bounds; each command then
    // checks its keys and values against their own.
    let mut cfg = support::config(None);
    cfg.limits.max_key_bytes = 64;
    cfg.limits.max_value_bytes = tiergate::config::ByteSize(16);
    cfg.resp.max_request_bytes = tiergate::config::ByteSize(4096);
    let gw = Gateway::start(cfg).await;
    let mut c = conn(&resp_url(&gw)).await;
    let long_value = "v".repeat(32);
    let set = redis::cmd("SET").arg("k").arg(&long_value).clone();
    let mset = redis::cmd("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg(&long_value)
        .clone();
    for cmd in [set, mset] {
        let err = cmd.query_async::<Value>(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("limits.max_value_bytes"), "{err}");
    }
    let v: Option<String> = c.get("a").await.unwrap();
    assert_eq!(v, None, "a refused MSET writes nothing");

    let mut cfg = support::config(None);
    cfg.limits.max_key_bytes = 8;
    let gw = Gateway::start(cfg).await;
    let mut c = conn(&resp_url(&gw)).await;
    let get = redis::cmd("GET").arg("k".repeat(9)).clone();
    let set = redis::cmd("SET").arg("k".repeat(9)).arg("v").clone();
    for cmd in [get, set] {
        let err = cmd.query_async::<Value>(&mut c).await.unwrap_err();
        assert!(err.to_string().contains("the limit is 8"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_reported_by_info_and_the_admin_port() {
    let mut cfg = support::config(None);
    cfg.admin.hot_keys = 2;
    cfg.admin.hot_keys_sample = 1; // count every read, so the figures are exact
    let gw = Gateway::start(cfg).await;
    let mut c = conn(&resp_url(&gw)).await;
    let _: () = c.set("hot", "1").await.unwrap();
    for _ in 0..50 {
        let _: Option<String> = c.get("hot").await.unwrap();
    }
    for _ in 0..20 {
        let _: Option<String> = c.get("warm\r\n").await.unwrap();
    }
    for i in 0..30 {
        let _: Option<String> = c.get(format!("cold:{i}")).await.unwrap();
    }
    // Batch reads over HTTP count too.
    gw.batch_get(&["hot"]).await;

    let info: String = redis::cmd("INFO")
        .arg("hotkeys")
        .query_async(&mut c)
        .await
        .unwrap();
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(
        lines,
        [
            "# Hotkeys",
            "hotkey_0:key=hot,reads=51",
            "hotkey_1:key=warm\\r\\n,reads=20"
        ],
        "keys are escaped so a line stays a line"
    );

    let v: serde_json::Value = gw.admin_get("/hotkeys").await.json().await.unwrap();
    assert_eq!(v["sampled_one_in"], 1);
    assert_eq!(
        v["keys"],
        serde_json::json!([{"key": "hot", "reads": 51}, {"key": "warm\r\n", "reads": 20}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_make_no_sense_through_a_gateway_are_refused_with_why() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let got = raw(
        addr,
        b"SHUTDOWN NOSAVE\r\nREPLICAOF 127.0.0.1 1\r\nSYNC\r\nMONITOR\r\nCLIENT KILL ID 1\r\nPING\r\nQUIT\r\n",
    )
    .await;
    let lines: Vec<&str> = got.trim_end().split("\r\n").collect();
    for (line, name) in
        lines
            .iter()
            .zip(["SHUTDOWN", "REPLICAOF", "SYNC", "MONITOR", "CLIENT KILL"])
    {
        assert!(
            line.starts_with(&format!("-ERR {name} is refused by tiergate: ")),
            "{got}"
        );
    }
    assert_eq!(&lines[5..], ["+PONG", "+OK"], "the connection stays open");
    // The Redis behind it is still up and no replica.
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut l2.conn()).unwrap();
    assert_eq!(
        role.first(),
        Some(&Value::BulkString(b"master".to_vec())),
        "{role:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_latency_is_recorded_by_class() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let reply = raw(
        addr,
        b"PING\r\nSET k v\r\nGET k\r\nGET k\r\nMGET k nothing\r\nLPUSH l x\r\nHSET h f v\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        reply,
        "+PONG\r\n+OK\r\n$1\r\nv\r\n$1\r\nv\r\n*2\r\n$1\r\nv\r\n$-1\r\n:1\r\n:1\r\n+OK\r\n"
    );
    let text = gw.metrics().await;
    let count = |class: &str| {
        metric(
            &text,
            &format!("tiergate_resp_command_duration_seconds_count{{class=\"{class}\"}}"),
        )
    };
    // Counted once their replies are written: QUIT's batch may not be by now.
    assert_eq!(count("read"), 3.0, "{text}");
    assert_eq!(count("write"), 1.0);
    assert_eq!(count("forwarded"), 2.0);
    assert!((1.0..=2.0).contains(&count("connection")), "{text}");
}

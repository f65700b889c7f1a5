//! The RESP door against hostile or careless clients: forged replies, declared lengths that
//! never arrive, trickled commands, amplified replies, clients that do not read, HTTP requests
//! sent to the RESP port, and commands that open connection state the door does not hold.
//! Each limit named in an error is a config key.

mod support;

use redis::AsyncCommands;
use std::time::Duration;
use support::{metric, raw, Backend, Gateway};
use tiergate::config::{ByteSize, HumanDuration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn resp_addr(gw: &Gateway) -> std::net::SocketAddr {
    gw.running.as_ref().unwrap().resp_addr
}

async fn conn(gw: &Gateway) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", resp_addr(gw)))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_echoed_in_errors_cannot_forge_replies() {
    let gw = Gateway::start(support::config(None)).await;
    let addr = resp_addr(&gw);
    // Inline: the quoted name carries CR LF escapes, which the splitter turns into bytes.
    let got = raw(
        addr,
        b"\"NO\\r\\n$5\\r\\nHACKD\\r\\n-X\" a\r\nPING\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        got,
        "-ERR unknown command 'NO  $5  HACKD  -X': standalone mode serves strings; set l2.url to forward every Redis command\r\n+PONG\r\n+OK\r\n"
    );
    // Multibulk: a command name made of CR LF.
    let got = raw(addr, b"*1\r\n$12\r\nX\r\n+HACKD\r\n-\r\nQUIT\r\n").await;
    assert_eq!(
        got,
        "-ERR unknown command 'X  +HACKD  -': standalone mode serves strings; set l2.url to forward every Redis command\r\n+OK\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_reserve_nothing_before_the_bytes_arrive() {
    let gw = Gateway::start(support::config(None)).await;
    let addr = resp_addr(&gw);
    let before = tiergate::host::rss_bytes().unwrap();
    // Each connection declares a 4 MiB value in 40 bytes and sends nothing more: 200 of them
    // reserved 800 MiB before memory followed the bytes sent.
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$4194304\r\n")
            .await
            .unwrap();
        held.push(s);
    }
    // Every header has been read once a PING behind them is answered.
    support::eventually("the headers are read", || async {
        raw(addr, b"PING\r\nQUIT\r\n").await == "+PONG\r\n+OK\r\n"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grew = tiergate::host::rss_bytes().unwrap().saturating_sub(before);
    assert!(grew < 100 << 20, "RSS grew by {grew} bytes");
    // And a value that does arrive, slowly, completes.
    let s = &mut held[0];
    for chunk in vec![b'v'; 4 << 20].chunks(256 << 10) {
        s.write_all(chunk).await.unwrap();
    }
    s.write_all(b"\r\nGET slow\r\n").await.unwrap();
    let mut got = vec![0u8; b"+OK\r\n$4194304\r\n".len() + (4 << 20) + 2];
    s.read_exact(&mut got).await.unwrap();
    assert!(got.starts_with(b"+OK\r\n$4194304\r\nvvv"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_trickled_past_its_read_timeout_closes_the_connection() {
    let mut cfg = support::config(None);
    cfg.resp.command_read_timeout = HumanDuration(Duration::from_millis(600));
    let gw = Gateway::start(cfg).await;
    let addr = resp_addr(&gw);

    // One byte every 100 ms: each would reset the idle timeout, none completes the command.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\n";
    let trickle = async {
        for &b in command.iter().chain([b'v'; 100].iter()) {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(support::SETTLE, trickle).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(support::SETTLE, s.read_to_end(&mut got)).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: command not complete within resp.command_read_timeout\r\n"
    );

    // A client whose commands each complete in time keeps its connection, however long it
    // stays, even with a command split over several writes.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..8 {
        c.write_all(b"*2\r\n$4\r\nECHO\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        c.write_all(b"$2\r\nhi\r\n").await.unwrap();
        let mut reply = [0u8; 8];
        c.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"$2\r\nhi\r\n");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_resp_closed_total{reason=\"command_timeout\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_max_reply_bytes_closes_the_client() {
    let l2 = Backend::start();
    let mut cfg = l2.config();
    cfg.limits.max_value_bytes = ByteSize(1024);
    cfg.limits.max_reply_bytes = ByteSize(4096);
    let gw = Gateway::start_ready(cfg).await;
    let mut c = conn(&gw).await;
    let _: () = c.set("amp:big", vec![b'x'; 1000]).await.unwrap();
    let sent_by_redis = || {
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query(&mut l2.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    // What asking costs (the INFO reply itself, health probes), to take out below.
    let asking = {
        let a = sent_by_redis();
        sent_by_redis() - a
    };
    let before = sent_by_redis();
    // Three copies fit in 4096 bytes; five do not. The key, not in L1 since the SET, is
    // fetched from Redis once, not three times.
    let three: Vec<Vec<u8>> = c.mget(&["amp:big"; 3]).await.unwrap();
    assert_eq!(three, vec![vec![b'x'; 1000]; 3]);
    let sent = (sent_by_redis() - before).saturating_sub(asking);
    assert!(sent < 2000, "Redis sent {sent} bytes for one 1000-byte key");
    let mut mget = b"*6\r\n$4\r\nMGET\r\n".to_vec();
    for _ in 0..5 {
        mget.extend_from_slice(b"$7\r\namp:big\r\n");
    }
    mget.extend_from_slice(b"PING\r\n");
    assert_eq!(
        raw(resp_addr(&gw), &mget).await,
        "-ERR reply of 5049 bytes exceeds limits.max_reply_bytes (4096); closing the connection\r\n",
        "nothing after the refused reply runs"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_resp_closed_total{reason=\"reply_limit\"}"),
        1.0
    );
    assert_eq!(metric(&m, "tiergate_reply_limit_total{door=\"resp\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_stream_and_a_client_that_does_not_read_stops_its_commands() {
    let l2 = Backend::start();
    let mut cfg = l2.config();
    cfg.resp.reply_buffer_bytes = ByteSize(1024);
    let gw = Gateway::start_ready(cfg).await;
    let mut c = conn(&gw).await;
    let value: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    let _: () = c.set("big", &value).await.unwrap();
    let _: () = c.set("small", "s").await.unwrap();
    // Replies larger than the 1 KiB buffer, streamed, arrive whole and in order, over both
    // protocols.
    let got: Vec<Vec<u8>> = c.mget(&["big", "small", "big"]).await.unwrap();
    assert_eq!(got, vec![value.clone(), b"s".to_vec(), value.clone()]);
    let got: Vec<u8> = c.get("big").await.unwrap();
    assert_eq!(got, value);
    let mut c3 = redis::Client::open(format!("redis://{}/?protocol=resp3", resp_addr(&gw)))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = c3.mget(&["big", "small"]).await.unwrap();
    assert_eq!(got, vec![value.clone(), b"s".to_vec()]);

    // 1000 GETs of 64 KiB pipelined by a client that reads nothing: 64 MiB of replies, of
    // which the sockets take a few. The rest of the commands wait instead of being answered
    // into the gateway's memory.
    let commands_before = metric(&gw.metrics().await, "tiergate_resp_commands_total");
    // A fixed receive buffer: autotuning would let it grow to tcp_rmem's maximum (32 MiB here).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let mut s = socket.connect(resp_addr(&gw)).await.unwrap();
    let n = 1000;
    s.write_all(&b"GET big\r\n".repeat(n)).await.unwrap();
    let mut ran = 0.0;
    // Until the count settles: the gateway has run what the sockets could take.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = metric(&gw.metrics().await, "tiergate_resp_commands_total") - commands_before;
        if now == ran && now > 0.0 {
            break;
        }
        ran = now;
    }
    assert!(
        ran < (n / 2) as f64,
        "{ran} of {n} GETs ran while their client read nothing"
    );
    // Once the client reads, every reply arrives.
    let reply_len = format!("${}\r\n", value.len()).len() + value.len() + 2;
    let mut got = vec![0u8; reply_len * n];
    s.read_exact(&mut got).await.unwrap();
    for reply in got.chunks(reply_len) {
        assert_eq!(
            &reply[reply_len - 2 - value.len()..reply_len - 2],
            &value[..]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_sent_to_the_resp_port_are_closed_without_running_anything() {
    let gw = Gateway::start(support::config(None)).await;
    let addr = resp_addr(&gw);
    let page = b"POST / HTTP/1.1\r\nHost: 127.0.0.1:6380\r\nContent-Type: text/plain\r\n\r\nSET xproto pwned\r\n";
    assert_eq!(
        raw(addr, page).await,
        "",
        "closed with no reply, as by redis-server"
    );
    // A `Host:` line alone is one too, after what came before it is answered.
    assert_eq!(
        raw(addr, b"PING\r\nHost: example.com\r\nSET xproto pwned\r\n").await,
        "+PONG\r\n"
    );
    let mut c = conn(&gw).await;
    let v: Option<String> = c.get("xproto").await.unwrap();
    assert_eq!(v, None, "the SET behind the request never ran");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_resp_closed_total{reason=\"cross_protocol\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_needing_connection_state_close_before_anything_behind_them_runs() {
    // In tiered mode they hold a dedicated L2 connection (tests/forwarding.rs); the memory
    // store of standalone mode holds no such state.
    let gw = Gateway::start(support::config(None)).await;
    let addr = resp_addr(&gw);
    // What redis-py's default pipeline() sends in one write.
    let tx = b"*1\r\n$5\r\nMULTI\r\n*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n*1\r\n$4\r\nEXEC\r\n";
    let got = raw(addr, tx).await;
    assert!(
        got.starts_with("-ERR MULTI is not served by tiergate") && got.ends_with("runs\r\n"),
        "{got}"
    );
    assert_eq!(
        got.matches("\r\n").count(),
        1,
        "one reply, then the close: {got}"
    );
    let mut c = conn(&gw).await;
    let (a, n): (Option<String>, Option<i64>) = redis::pipe()
        .get("a")
        .get("c")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, n), (None, None), "nothing queued behind MULTI ran");

    for (cmd, name) in [
        (&b"WATCH a\r\nSET a 1\r\n"[..], "WATCH"),
        (b"subscribe news\r\nSET a 1\r\n", "SUBSCRIBE"),
        (b"PSUBSCRIBE n*\r\nSET a 1\r\n", "PSUBSCRIBE"),
        (b"SSUBSCRIBE n\r\nSET a 1\r\n", "SSUBSCRIBE"),
        (b"BLPOP q 0\r\nSET a 1\r\n", "BLPOP"),
        (b"BZPOPMIN z 1\r\nSET a 1\r\n", "BZPOPMIN"),
        (b"XREAD BLOCK 0 STREAMS s $\r\nSET a 1\r\n", "XREAD BLOCK"),
        (b"CLIENT TRACKING on\r\nSET a 1\r\n", "CLIENT TRACKING"),
    ] {
        let got = raw(addr, cmd).await;
        assert!(
            got.starts_with(&format!("-ERR {name} is not served by tiergate")),
            "{got}"
        );
        assert_eq!(got.matches("\r\n").count(), 1, "{got}");
    }
    let a: Option<String> = c.get("a").await.unwrap();
    assert_eq!(a, None);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tiergate_resp_closed_total{reason=\"connection_state\"}"
        ),
        9.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_differences_from_redis_server_are_gone() {
    let l2 = Backend::start();
    let gw = Gateway::start_ready(l2.config()).await;
    let addr = resp_addr(&gw);
    // QUIT with an argument still closes, as redis-server does.
    assert_eq!(raw(addr, b"QUIT x\r\nPING\r\n").await, "+OK\r\n");
    // Lengths with leading zeros or a minus zero are refused, as by redis-server.
    for (input, want) in [
        (&b"*01\r\n$4\r\nPING\r\n"[..], "multibulk"),
        (b"*1\r\n$04\r\nPING\r\n", "bulk"),
        (b"*-0\r\nPING\r\n", "multibulk"),
    ] {
        assert_eq!(
            raw(addr, input).await,
            format!("-ERR Protocol error: invalid {want} length\r\n")
        );
    }
    let help = raw(addr, b"CLIENT HELP\r\nQUIT\r\n").await;
    assert!(
        help.starts_with(
            "*13\r\n+CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:\r\n"
        ),
        "{help}"
    );
    let mut c = conn(&gw).await;
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    for field in ["used_cpu_user:", "used_cpu_sys:", "mem_allocator:"] {
        assert!(info.contains(field), "{field} missing from INFO");
    }
    // The keyspace INFO reports in tiered mode is Redis' own, not what L1 holds.
    let mut direct = l2.conn();
    for k in ["d1", "d2", "d3"] {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg("v")
            .query(&mut direct)
            .unwrap();
    }
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keyspace.contains("db0:keys=3,"), "{keyspace}");
}

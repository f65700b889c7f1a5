//! The HTTP/1 wire as a client sees it, byte for byte: pipelined requests answered in order
//! (ours and, from the first request with a body, hyper's), HTTP/1.0 clients, heads that
//! arrive a byte at a time, and bodies of unknown length chunked or close-delimited.
//! Raw sockets, since an HTTP client library hides exactly these things.

mod support;

use std::time::Duration;
use support::{origin::Answer, origin::Origin, Gateway};
use tiergate::config::OriginConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Bound on any one read here, far above what a local answer takes.
const WAIT: Duration = Duration::from_secs(10);

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.running.as_ref().unwrap().http_addr)
        .await
        .unwrap()
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until `text` holds `n` answers' heads and the last one's body (`last_body`).
async fn read_until(s: &mut TcpStream, ends_with: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).ends_with(ends_with) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the answer arrives")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status lines in `text`, in order.
fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.")
        .map(|(i, _)| text[i..].split("\r\n").next().unwrap())
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_hand_over_to_hyper() {
    let gw = Gateway::start(support::config(None)).await;
    assert_eq!(gw.put("a", "hello").await.status(), 204);
    let mut s = connect(&gw).await;
    // GET and HEAD are ours; the PUT has a body and is hyper's, as is all after it.
    s.write_all(
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /v1/kv/none HTTP/1.1\r\nHost: x\r\n\r\n\
          PUT /v1/kv/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz\
          GET /v1/kv/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(
        statuses(&text),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 200 OK"
        ],
        "{text}"
    );
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert!(answers[0].ends_with("\r\n\r\nhello"), "{text}");
    // The HEAD says the GET's length and sends no body: the next answer follows at once.
    assert!(answers[1].contains("content-length: 5\r\n"), "{text}");
    assert!(answers[1].ends_with("\r\n\r\n"), "{text}");
    assert!(answers[2].contains("key_not_found"), "{text}");
    assert!(answers[4].ends_with("\r\n\r\nxyz"), "{text}");
    for a in &answers {
        assert!(a.contains("\r\ndate: "), "every answer is dated: {a}");
    }
}

#[tokio::test]
async fn http10_clients_are_answered_in_http10_and_kept_only_when_they_ask() {
    let gw = Gateway::start(support::config(None)).await;
    assert_eq!(gw.put("a", "hello").await.status(), 204);
    let mut s = connect(&gw).await;
    s.write_all(b"GET /v1/kv/a HTTP/1.0\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("connection: keep-alive"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");

    let mut s = connect(&gw).await;
    for _ in 0..2 {
        s.write_all(b"GET /v1/kv/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let text = read_until(&mut s, "hello").await;
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    }
}

#[tokio::test]
async fn a_head_that_arrives_a_byte_at_a_time_is_served() {
    let gw = Gateway::start(support::config(None)).await;
    assert_eq!(gw.put("a", "hello").await.status(), 204);
    let mut s = connect(&gw).await;
    s.set_nodelay(true).unwrap();
    for b in b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
}

#[tokio::test]
async fn a_proxied_body_of_unknown_length_is_chunked_or_ends_with_the_connection() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/c",
        Answer::ok("first|second|third")
            .header("Cache-Control", "no-store")
            .chunked(3),
    );
    let gw = proxying(&origin).await;

    let mut s = connect(&gw).await;
    s.write_all(b"GET /api/c HTTP/1.1\r\nHost: x\r\n\r\nGET /api/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    assert_eq!(statuses(&text), ["HTTP/1.1 200 OK"; 2], "{text}");
    for answer in text.split("HTTP/1.1 ").skip(1) {
        assert!(answer.contains("transfer-encoding: chunked\r\n"), "{text}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        // Whatever the pieces, the chunks decode to the body and end with the last chunk.
        assert!(body.ends_with("0\r\n\r\n"), "{text}");
        assert_eq!(dechunk(body), "first|second|third", "{text}");
    }

    let mut s = connect(&gw).await;
    s.write_all(b"GET /api/c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_close(&mut s).await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(!text.contains("connection: keep-alive"), "{text}");
    assert!(text.ends_with("\r\n\r\nfirst|second|third"), "{text}");
}

/// A chunked body's data.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a size line");
        let n = usize::from_str_radix(size, 16).expect("hex size");
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").expect("CRLF after a chunk");
    }
}

/// A gateway with one proxy route, `/api/`, to `origin`.
async fn proxying(origin: &Origin) -> Gateway {
    let mut c = support::config(None);
    let text = format!(
        "name = \"web\"\nupstreams = [{:?}]\n[[routes]]\nprefix = \"/api/\"\n",
        origin.url()
    );
    c.origins = vec![toml::from_str::<OriginConfig>(&text).unwrap()];
    Gateway::start(c).await
}

#[tokio::test]
async fn a_stored_answer_is_sent_whole_on_http1_and_h2() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/s",
        Answer::ok("stored body")
            .header("Cache-Control", "max-age=600")
            .header("ETag", "\"v1\"")
            .header("X-Origin", "yes")
            .header("Age", "7"),
    );
    let gw = proxying(&origin).await;
    let mut s = connect(&gw).await;
    // A miss, then two hits (one a HEAD) on one connection.
    s.write_all(
        b"GET /api/s HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /api/s HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /api/s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_to_close(&mut s).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].contains("x-cache: MISS\r\n"), "{text}");
    for hit in &answers[1..] {
        let lower = hit.to_ascii_lowercase();
        assert!(hit.starts_with("200 OK\r\n"), "{text}");
        for line in [
            "x-cache: hit\r\n",
            "x-origin: yes\r\n",
            "etag: \"v1\"\r\n",
            "via: 1.1 tiergate\r\n",
            "content-length: 11\r\n",
            "cache-control: max-age=600\r\n",
        ] {
            assert!(lower.contains(line), "{line:?} in {hit}");
        }
        // One Age (the hit's own, counting the origin's), one Date, no framing twice.
        assert_eq!(lower.matches("\r\nage: ").count(), 1, "{hit}");
        assert!(
            !lower.contains("\r\nage: 0\r\n"),
            "the origin's Age counts: {hit}"
        );
        assert_eq!(lower.matches("\r\ndate: ").count(), 1, "{hit}");
        assert_eq!(lower.matches("content-length").count(), 1, "{hit}");
    }
    assert!(answers[1].ends_with("\r\n\r\nstored body"), "{text}");
    assert!(
        answers[2].ends_with("\r\n\r\n"),
        "a HEAD has no body: {text}"
    );

    // Over h2, hyper writes it: the same headers, from the map.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{}/api/s", gw.base)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let h = r.headers();
    for (name, value) in [
        ("x-cache", "HIT"),
        ("x-origin", "yes"),
        ("etag", "\"v1\""),
        ("via", "1.1 tiergate"),
    ] {
        assert_eq!(h[name], value, "{name}");
    }
    assert_eq!(h.get_all("age").iter().count(), 1);
    assert_eq!(r.text().await.unwrap(), "stored body");
    assert_eq!(origin.requests("/api/s"), 1);
}

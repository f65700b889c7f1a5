//! The origin client (`tiergate::origin`, issue 18 point 1) against real HTTP origins
//! (`tests/support/origin.rs`): balancing spread by weight and away from a slow upstream,
//! ejection and recovery (never more than half out), active probes taking an upstream out and
//! back, a retry going to another upstream, a POST never retried once sent (but retried when
//! its connection could not even be made), the retry budget under a failing origin,
//! timeouts, and a pooled connection closed under a request (sent again only when
//! idempotent). Everything is asserted by counting requests at the origins and in the metrics;
//! no test asserts a timing.

mod support;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use std::{sync::Arc, time::Duration};
use support::{
    eventually,
    origin::{Answer, Origin},
};
use tiergate::{
    config::OriginConfig,
    metrics::Metrics,
    origin::{OriginError, OriginRequest, Origins},
};

/// An origin named "o" over `upstreams`, with `extra` TOML keys.
fn origins(upstreams: &[String], extra: &str) -> (Arc<Origins>, Arc<Metrics>) {
    let list: Vec<String> = upstreams.iter().map(|u| format!("{u:?}")).collect();
    let text = format!("name = \"o\"\nupstreams = [{}]\n{extra}", list.join(", "));
    let config: OriginConfig = toml::from_str(&text).unwrap();
    let mut problems = Vec::new();
    tiergate::config::validate_origins(std::slice::from_ref(&config), &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let metrics = Arc::new(Metrics::new());
    (Arc::new(Origins::new(&[config], &metrics)), metrics)
}

/// Sends a GET for `path` to origin "o": the status and body, or the error.
async fn get(o: &Origins, path: &str) -> Result<(u16, Bytes), OriginError> {
    send(o, Method::GET, path, None).await
}

async fn send(
    o: &Origins,
    method: Method,
    path: &str,
    body: Option<&'static str>,
) -> Result<(u16, Bytes), OriginError> {
    let mut req = OriginRequest::get(method, path.parse().unwrap(), HeaderMap::new());
    if let Some(b) = body {
        req.body = tiergate::origin::OutBody::Bytes(Bytes::from_static(b.as_bytes()));
    }
    let resp = o.get("o").unwrap().send(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body))
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn metric(m: &Metrics, name: &str, labels: &[&str]) -> f64 {
    m.render()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap())
        .sum()
}

/// A URL nothing listens on, held so until the socket drops: a port merely found free could
/// be taken by another test's origin meanwhile.
fn dead_url() -> (String, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (format!("http://127.0.0.1:{port}"), s)
}

#[tokio::test]
async fn idle_upstreams_share_requests_by_weight() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.answer("/x", Answer::ok("x"));
    }
    let text = format!(
        "name = \"o\"\nupstreams = [{:?}, {{ url = {:?}, weight = 3 }}]",
        a.url(),
        b.url()
    );
    let config: OriginConfig = toml::from_str(&text).unwrap();
    let metrics = Metrics::new();
    let o = Origins::new(&[config], &metrics);
    for _ in 0..400 {
        assert_eq!(get(&o, "/x").await.unwrap().0, 200);
    }
    // One at a time, nothing is in flight at a pick: the shares follow the weights, 1:3
    // (100 / 300 expected; the bounds are over 6 standard deviations wide).
    let (na, nb) = (a.requests("/x"), b.requests("/x"));
    assert_eq!(na + nb, 400);
    assert!((50..=150).contains(&na), "a {na}, b {nb}");
}

#[tokio::test]
async fn a_slow_upstream_gets_fewer_of_concurrent_requests() {
    let (fast, slow) = (Origin::start().await, Origin::start().await);
    fast.answer("/x", Answer::ok("fast"));
    slow.answer("/x", Answer::ok("slow").delay(Duration::from_millis(300)));
    let (o, _) = origins(&[fast.url(), slow.url()], "");
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let o = o.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    assert_eq!(get(&o, "/x").await.unwrap().0, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // Requests pile up on the slow one, so the two draws mostly pick the fast one.
    let (nf, ns) = (fast.requests("/x"), slow.requests("/x"));
    assert_eq!(nf + ns, 160);
    assert!(ns < nf, "fast {nf}, slow {ns}");
}

#[tokio::test]
async fn failing_upstream_is_ejected_then_comes_back_and_never_more_than_half_are_out() {
    let (bad, good) = (Origin::start().await, Origin::start().await);
    bad.answer("/x", Answer::status(503));
    good.answer("/x", Answer::ok("good"));
    let (o, m) = origins(
        &[bad.url(), good.url()],
        "eject_after = 3\neject_for = \"200ms\"\nmax_retries = 1",
    );
    let bad_label = format!("upstream=\"{}\"", bad.addr());
    // Every GET is answered 200: a 503 is retried on the other upstream.
    for _ in 0..60 {
        assert_eq!(get(&o, "/x").await.unwrap().0, 200);
    }
    assert!(
        metric(&m, "tiergate_origin_ejections_total", &[&bad_label]) >= 1.0,
        "{}",
        m.render()
    );
    assert!(metric(&m, "tiergate_origin_retries_total", &[]) >= 3.0);
    // The bad upstream saw its streaks and no more: while out it gets nothing.
    let seen_bad = bad.requests("/x");
    assert!(seen_bad < 30, "bad upstream got {seen_bad} of 60");

    // Repaired, it is sent requests again once its ejection ends.
    bad.answer("/x", Answer::ok("bad is good now"));
    let before = bad.requests("/x");
    eventually("the repaired upstream to be picked again", || {
        let o = o.clone();
        let bad = &bad;
        async move {
            assert_eq!(get(&o, "/x").await.unwrap().0, 200);
            bad.requests("/x") > before
        }
    })
    .await;

    // Both failing: one is ejected at most (half of two), so requests still reach an upstream
    // and the origin's own 503 is passed on.
    let (x, y) = (Origin::start().await, Origin::start().await);
    x.answer("/x", Answer::status(503));
    y.answer("/x", Answer::status(503));
    let (o, m) = origins(
        &[x.url(), y.url()],
        "eject_after = 2\neject_for = \"1h\"\neject_max = \"2h\"\nmax_retries = 0",
    );
    for _ in 0..40 {
        assert_eq!(get(&o, "/x").await.unwrap().0, 503);
    }
    assert_eq!(x.requests("/x") + y.requests("/x"), 40);
    let ejected: f64 = [x.addr(), y.addr()]
        .iter()
        .map(|a| {
            metric(
                &m,
                "tiergate_origin_ejections_total",
                &[&format!("upstream=\"{a}\"")],
            )
        })
        .sum();
    assert_eq!(ejected, 1.0, "{}", m.render());
}

#[tokio::test]
async fn active_probes_take_an_upstream_out_and_bring_it_back() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.answer("/x", Answer::ok("x"));
        o.answer("/health", Answer::ok("ok"));
    }
    a.answer("/health", Answer::status(500));
    let (o, m) = origins(
        &[a.url(), b.url()],
        "health_path = \"/health\"\nhealth_interval = \"50ms\"\nunhealthy_after = 2\nhealthy_after = 2",
    );
    let shutdown = tiergate::shutdown::Shutdown::new();
    let probing = tokio::spawn(o.clone().tend(shutdown.clone()));
    let a_label = format!("upstream=\"{}\"", a.addr());
    eventually("a's probes to fail twice", || {
        let m = m.clone();
        let a_label = a_label.clone();
        async move {
            m.render().contains(&format!(
                "tiergate_origin_upstream_healthy{{origin=\"o\",{a_label}}} 0"
            ))
        }
    })
    .await;
    for _ in 0..50 {
        assert_eq!(get(&o, "/x").await.unwrap().0, 200);
    }
    assert_eq!(
        a.requests("/x"),
        0,
        "an unhealthy upstream was sent requests"
    );
    assert_eq!(b.requests("/x"), 50);

    a.answer("/health", Answer::ok("ok"));
    eventually("a to pass its probes again and be picked", || {
        let o = o.clone();
        let a = &a;
        async move {
            assert_eq!(get(&o, "/x").await.unwrap().0, 200);
            a.requests("/x") > 0
        }
    })
    .await;
    assert!(a.requests("/health") >= 4, "probes reached a");
    shutdown.trigger();
    probing.await.unwrap();
}

#[tokio::test]
async fn a_failed_get_is_retried_on_another_upstream() {
    let (closing, good) = (Origin::start().await, Origin::start().await);
    closing.answer("/x", Answer::close());
    good.answer("/x", Answer::ok("good"));
    let (o, m) = origins(
        &[closing.url(), good.url()],
        "max_retries = 1\neject_after = 1000",
    );
    for _ in 0..40 {
        let (status, body) = get(&o, "/x").await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"good"[..]));
    }
    let closed = closing.requests("/x");
    assert!(closed > 0, "the closing upstream was never tried");
    // Each closed attempt was retried once, on the good upstream.
    assert_eq!(good.requests("/x"), 40);
    assert_eq!(
        metric(&m, "tiergate_origin_retries_total", &[]),
        closed as f64
    );

    // Nothing to retry on but the one that failed: the same upstream is tried again, and the
    // error is said as such.
    let only = Origin::start().await;
    only.answer("/x", Answer::close());
    let (o, _) = origins(&[only.url()], "max_retries = 2");
    let e = get(&o, "/x").await.unwrap_err();
    assert!(matches!(e, OriginError::Failed { .. }), "{e}");
    assert_eq!(e.status(), 502);
    assert_eq!(only.requests("/x"), 3);
}

#[tokio::test]
async fn a_post_is_never_retried_once_sent_but_is_when_it_could_not_connect() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.answer("/p", Answer::status(503));
        o.answer("/c", Answer::close());
    }
    let (o, _) = origins(&[a.url(), b.url()], "max_retries = 2\neject_after = 1000");
    for _ in 0..10 {
        let (status, _) = send(&o, Method::POST, "/p", Some("body")).await.unwrap();
        assert_eq!(status, 503);
        assert!(send(&o, Method::POST, "/c", Some("body")).await.is_err());
    }
    assert_eq!(
        a.requests("/p") + b.requests("/p"),
        10,
        "a POST was retried"
    );
    assert_eq!(
        a.requests("/c") + b.requests("/c"),
        10,
        "a POST was retried"
    );
    // The same GETs are retried.
    let _ = get(&o, "/p").await.unwrap();
    assert_eq!(a.requests("/p") + b.requests("/p"), 13);

    // A connection refused carried nothing: the POST goes to the live upstream.
    let live = Origin::start().await;
    live.answer("/p", Answer::ok("taken"));
    let (dead, _held) = dead_url();
    let (o, _) = origins(&[dead, live.url()], "max_retries = 1\neject_after = 1000");
    for _ in 0..20 {
        let (status, _) = send(&o, Method::POST, "/p", Some("body")).await.unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(live.requests("/p"), 20);
}

#[tokio::test]
async fn the_retry_budget_caps_retries_against_a_failing_origin() {
    let (a, b) = (Origin::start().await, Origin::start().await);
    for o in [&a, &b] {
        o.answer("/x", Answer::status(503).delay(Duration::from_millis(500)));
    }
    let (o, m) = origins(
        &[a.url(), b.url()],
        "max_retries = 2\nretry_budget = 0.2\nretry_min_concurrent = 0\neject_after = 1000\nretry_backoff = \"1ms\"\nretry_backoff_max = \"2ms\"",
    );
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let o = o.clone();
            tokio::spawn(async move { get(&o, "/x").await.unwrap().0 })
        })
        .collect();
    for c in clients {
        assert_eq!(
            c.await.unwrap(),
            503,
            "the origin's own answer is passed on"
        );
    }
    // Without a budget, 50 requests × 3 attempts = 150. With it, retries in flight stay
    // under a fifth of the requests in flight: about 50 + 10 + 2.
    let attempts = a.requests("/x") + b.requests("/x");
    assert!(attempts <= 80, "{attempts} attempts for 50 requests");
    assert!(metric(&m, "tiergate_origin_retries_refused_total", &[]) >= 1.0);
    assert_eq!(
        metric(&m, "tiergate_origin_retries_total", &[]) as usize,
        attempts - 50
    );
}

#[tokio::test]
async fn timeouts_move_to_another_upstream_and_end_as_504() {
    let (hung, good) = (Origin::start().await, Origin::start().await);
    hung.answer("/x", Answer::hang());
    good.answer("/x", Answer::ok("good"));
    let (o, m) = origins(
        &[hung.url(), good.url()],
        "attempt_timeout = \"200ms\"\nrequest_timeout = \"10s\"\nmax_retries = 1\neject_after = 1000",
    );
    for _ in 0..20 {
        assert_eq!(get(&o, "/x").await.unwrap().0, 200);
    }
    assert_eq!(good.requests("/x"), 20);
    let timeouts = metric(
        &m,
        "tiergate_origin_requests_total",
        &["status=\"timeout\""],
    );
    assert!(timeouts >= 1.0 && timeouts >= hung.requests("/x") as f64);

    let only = Origin::start().await;
    only.answer("/x", Answer::hang());
    let (o, m) = origins(&[only.url()], "request_timeout = \"300ms\"");
    let e = get(&o, "/x").await.unwrap_err();
    assert!(matches!(e, OriginError::Timeout { .. }), "{e}");
    assert_eq!((e.status(), e.code()), (504, "origin_timeout"));
    // The backoff would end past the deadline: no retry was made.
    assert!(only.requests("/x") <= 1);
    assert_eq!(metric(&m, "tiergate_origin_retries_total", &[]), 0.0);
}

#[tokio::test]
async fn connections_are_pooled_and_counted() {
    let a = Origin::start().await;
    a.answer("/x", Answer::ok("x"));
    let (o, m) = origins(&[a.url()], "");
    // What the server runs: it closes idle connections their upstream has closed.
    let tending = tokio::spawn(o.clone().tend(tiergate::shutdown::Shutdown::new()));
    for _ in 0..20 {
        get(&o, "/x").await.unwrap();
    }
    // One after another, a connection is reused: its answer read to the end hands it back.
    assert_eq!(a.connections(), 1, "connections for 20 requests");
    assert_eq!(metric(&m, "tiergate_origin_connections", &[]), 1.0);
    assert_eq!(
        metric(&m, "tiergate_origin_requests_total", &["status=\"2xx\""]),
        20.0
    );
    drop(a);
    eventually("the closed connections to leave the gauge", || {
        let m = m.clone();
        async move { metric(&m, "tiergate_origin_connections", &[]) == 0.0 }
    })
    .await;
    // The origin gone, nothing answers: 502.
    let e = get(&o, "/x").await.unwrap_err();
    assert_eq!(e.status(), 502, "{e}");
    tending.abort();
}

#[tokio::test]
async fn a_bodiless_answer_hands_its_connection_back_at_once() {
    let a = Origin::start().await;
    a.answer("/x", Answer::ok("x"));
    a.answer("/gone", Answer::status(204));
    let (o, m) = origins(&[a.url()], "");
    // HEAD and 204 have no body to read to its end, and the answer is dropped unread (as a
    // server may drop a HEAD's body): the connection is reused all the same.
    for i in 0..20 {
        let (method, path) = if i % 2 == 0 {
            (Method::HEAD, "/x")
        } else {
            (Method::GET, "/gone")
        };
        let req = OriginRequest::get(method, path.parse().unwrap(), HeaderMap::new());
        let answer = o.get("o").unwrap().send(req).await.unwrap();
        assert!(answer.status().is_success());
    }
    assert_eq!(a.connections(), 1, "connections for 20 bodiless answers");
    assert_eq!(metric(&m, "tiergate_origin_connections", &[]), 1.0);
}

#[tokio::test]
async fn no_more_than_pool_max_idle_connections_stay_open_and_idle_ones_close() {
    let a = Origin::start().await;
    a.answer("/slow", Answer::ok("x").delay(Duration::from_millis(200)));
    let (o, m) = origins(
        &[a.url()],
        "pool_max_idle = 2\npool_idle_timeout = \"1s\"\nmax_concurrent = 100",
    );
    let tending = tokio::spawn(o.clone().tend(tiergate::shutdown::Shutdown::new()));
    // Ten at once: ten connections.
    let all = (0..10).map(|_| get(&o, "/slow"));
    for r in futures_util::future::join_all(all).await {
        assert_eq!(r.unwrap().0, 200);
    }
    // Two of them are kept; the others close.
    eventually("all but pool_max_idle connections to close", || {
        let m = m.clone();
        async move { metric(&m, "tiergate_origin_connections", &[]) == 2.0 }
    })
    .await;
    // The kept ones serve what follows, one after another.
    for _ in 0..5 {
        get(&o, "/slow").await.unwrap();
    }
    assert!(metric(&m, "tiergate_origin_connections", &[]) <= 2.0);
    assert_eq!(a.requests("/slow"), 15);
    // Idle past pool_idle_timeout, with the origin still up: closed.
    eventually("idle connections to close after pool_idle_timeout", || {
        let m = m.clone();
        async move { metric(&m, "tiergate_origin_connections", &[]) == 0.0 }
    })
    .await;
    tending.abort();
}

#[tokio::test]
async fn a_deadline_set_for_an_earlier_request_does_not_end_a_later_one() {
    // A connection keeps one timer, set for the first request's deadline and left there
    // while later ones run: when it fires under a later request still within its own
    // deadline, that request goes on.
    let a = Origin::start().await;
    a.answer("/fast", Answer::ok("fast"));
    a.answer(
        "/slow",
        Answer::ok("slow").delay(Duration::from_millis(1500)),
    );
    let (o, m) = origins(&[a.url()], "attempt_timeout = \"2s\"\nmax_retries = 0");
    assert_eq!(get(&o, "/fast").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Runs past the first request's deadline (2 s after it), within its own.
    assert_eq!(get(&o, "/slow").await.unwrap(), (200, Bytes::from("slow")));
    assert_eq!(a.connections(), 1, "the same connection served both");
    assert_eq!(
        metric(
            &m,
            "tiergate_origin_requests_total",
            &["status=\"timeout\""]
        ),
        0.0
    );
    // A request past its own deadline ends its connection; the next gets a new one.
    a.answer("/slow", Answer::ok("slow").delay(Duration::from_secs(5)));
    let e = get(&o, "/slow").await.unwrap_err();
    assert!(matches!(e, OriginError::Timeout { .. }), "{e}");
    assert_eq!(get(&o, "/fast").await.unwrap().0, 200);
    assert_eq!(a.connections(), 2);
}

/// A raw origin: its first connection answers one request, then reads the next and closes
/// without answering (as an origin does that closes an idle connection just as a request
/// goes on it); every later connection answers every request with "fresh". Counts the
/// connections it accepts.
async fn closing_origin() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use support::origin::read_request_head as read_head;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        counted.fetch_add(1, Ordering::SeqCst);
        read_head(&mut first).await;
        first
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        read_head(&mut first).await;
        drop(first);
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while read_head(&mut s).await {
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_request_on_a_connection_closed_under_it_goes_again_only_when_idempotent() {
    use std::sync::atomic::Ordering;
    // No retries at the origin's level: what goes again here is the pool's doing.
    let (url, accepted) = closing_origin().await;
    let (o, _) = origins(&[url], "max_retries = 0");
    assert_eq!(get(&o, "/a").await.unwrap(), (200, Bytes::from("ok")));
    // The pooled connection closes with the GET on it, before any byte of an answer: the
    // GET goes again on a new connection.
    assert_eq!(get(&o, "/b").await.unwrap(), (200, Bytes::from("fresh")));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // A POST in the same place is not sent twice: the origin may have acted on it.
    let (url, accepted) = closing_origin().await;
    let (o, _) = origins(&[url], "max_retries = 0");
    assert_eq!(get(&o, "/a").await.unwrap(), (200, Bytes::from("ok")));
    let e = send(&o, Method::POST, "/b", Some("x")).await.unwrap_err();
    assert_eq!(e.status(), 502, "{e}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second connection");
}

//! The scriptable test origin in `tests/support/origin.rs` (issue 18 point 5): scripted
//! answers come back as scripted, counts are exact under concurrency, delays and hangs behave,
//! `If-None-Match` gets a 304, `set_down` fails requests until lifted, and dropping the origin
//! closes its port. No test asserts a timing.

mod support;

use std::time::Duration;
use support::origin::{Answer, Origin};

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

#[tokio::test]
async fn scripted_status_headers_and_body_come_back() {
    let origin = Origin::start().await;
    origin.answer(
        "/a",
        Answer::status(203)
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"v1\"")
            .header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header("Age", "7")
            .header("Vary", "Accept")
            .header("Vary", "Accept-Encoding")
            .body("hello"),
    );
    let resp = client()
        .get(format!("{}/a?x=1", origin.url()))
        .header("X-Probe", "p1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 203);
    let h = resp.headers();
    assert_eq!(h["cache-control"], "max-age=60");
    assert_eq!(h["etag"], "\"v1\"");
    assert_eq!(h["last-modified"], "Wed, 21 Oct 2015 07:28:00 GMT");
    assert_eq!(h["age"], "7");
    let vary: Vec<_> = h.get_all("vary").iter().collect();
    assert_eq!(vary, ["Accept", "Accept-Encoding"]);
    assert_eq!(resp.text().await.unwrap(), "hello");

    // Unscripted paths get the default 404.
    let resp = client()
        .get(format!("{}/nothing", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    assert_eq!(origin.requests("/a"), 1);
    assert_eq!(origin.requests("/nothing"), 1);
    assert_eq!(origin.total(), 2);
    assert_eq!(origin.last_headers("/a").unwrap()["x-probe"], "p1");
    assert_eq!(origin.methods("/a"), [http::Method::GET]);
}

#[tokio::test]
async fn methods_are_recorded_in_order() {
    let origin = Origin::start().await;
    origin.answer("/w", Answer::ok("done"));
    let c = client();
    let url = format!("{}/w", origin.url());
    c.post(&url).body("x").send().await.unwrap();
    c.get(&url).send().await.unwrap();
    assert_eq!(
        origin.methods("/w"),
        [http::Method::POST, http::Method::GET]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_under_concurrency() {
    let origin = Origin::start().await;
    origin.answer("/c", Answer::ok("c").delay(Duration::from_millis(20)));
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = c.clone();
        let url = if i % 2 == 0 {
            format!("{}/c", origin.url())
        } else {
            format!("{}/other", origin.url())
        };
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(origin.requests("/c"), 50);
    assert_eq!(origin.requests("/other"), 50);
    assert_eq!(origin.total(), 100);
}

#[tokio::test]
async fn a_delayed_answer_still_completes() {
    let origin = Origin::start().await;
    origin.answer(
        "/slow",
        Answer::ok("late").delay(Duration::from_millis(100)),
    );
    let resp = client()
        .get(format!("{}/slow", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "late");
    assert_eq!(origin.requests("/slow"), 1);
}

#[tokio::test]
async fn a_hanging_path_is_cut_by_the_client_timeout_and_counted_once() {
    let origin = Origin::start().await;
    origin.answer("/hang", Answer::hang());
    // The client's timeout is long enough for any loaded machine to deliver the request
    // first; the test waits for the origin to have it, not for the clock.
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let request = tokio::spawn(c.get(format!("{}/hang", origin.url())).send());
    support::eventually("the origin has the request", || async {
        origin.requests("/hang") == 1
    })
    .await;
    let err = request.await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(origin.requests("/hang"), 1);
    assert_eq!(origin.total(), 1);
}

#[tokio::test]
async fn a_closing_path_fails_the_request() {
    let origin = Origin::start().await;
    origin.answer("/close", Answer::close());
    let err = client()
        .post(format!("{}/close", origin.url()))
        .body("once")
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(origin.methods("/close"), [http::Method::POST]);
}

#[tokio::test]
async fn matching_if_none_match_gets_304_without_a_body() {
    let origin = Origin::start().await;
    origin.answer(
        "/e",
        Answer::ok("full body")
            .header("ETag", "\"abc\"")
            .header("Cache-Control", "max-age=5"),
    );
    let c = client();
    let url = format!("{}/e", origin.url());

    let resp = c
        .get(&url)
        .header("If-None-Match", "\"zzz\", W/\"abc\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], "\"abc\"");
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    assert_eq!(
        origin.last_headers("/e").unwrap()["if-none-match"],
        "\"zzz\", W/\"abc\""
    );

    let resp = c
        .get(&url)
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "full body");
    assert_eq!(origin.requests("/e"), 2);
}

#[tokio::test]
async fn set_down_fails_requests_until_lifted() {
    let origin = Origin::start().await;
    origin.answer("/d", Answer::ok("up"));
    let c = client();
    let url = format!("{}/d", origin.url());
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);

    origin.set_down(true);
    assert!(c.get(&url).send().await.is_err());
    // A fresh connection is accepted and closed too.
    assert!(client().get(&url).send().await.is_err());
    assert_eq!(
        origin.requests("/d"),
        1,
        "requests while down are not counted"
    );

    origin.set_down(false);
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "up");
    assert_eq!(origin.requests("/d"), 2);
}

#[tokio::test]
async fn dropping_the_origin_closes_its_port() {
    let origin = Origin::start().await;
    let addr = origin.addr();
    origin.answer("/x", Answer::ok("x"));
    assert_eq!(
        client()
            .get(format!("{}/x", origin.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(origin);
    support::eventually(
        "the dropped origin's port to refuse connections",
        || async move { tokio::net::TcpStream::connect(addr).await.is_err() },
    )
    .await;
}

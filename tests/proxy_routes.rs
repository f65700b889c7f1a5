//! Caching reverse proxy routes (issue 18 point 3): `[[origins.routes]]` proxies a path
//! prefix of the HTTP data port to a real HTTP origin (`tests/support/origin.rs`), caching
//! GET and HEAD answers per RFC 9111 as a shared cache, with RFC 5861's stale-while-revalidate
//! and stale-if-error. Everything is asserted by counting origin requests and reading the
//! `X-Cache`, `Age` and other headers sent; nothing asserts a timing (expiry uses max-age=1
//! and `eventually` polling).

mod support;

use reqwest::{header::HeaderMap, Method};
use std::time::Duration;
use support::{
    eventually, metric,
    origin::{Answer, Origin},
    Gateway,
};
use tiergate::config::{Config, OriginConfig};

/// A standalone gateway with origin "web" at `origin`, routing `/api/` to it with these
/// extra route keys.
fn config(origin: &Origin, route_extra: &str) -> Config {
    config_at(&origin.url(), route_extra, "")
}

fn config_at(url: &str, route_extra: &str, origin_extra: &str) -> Config {
    let mut c = support::config(None);
    let text = format!(
        "name = \"web\"\nupstreams = [{url:?}]\nmax_retries = 0\n{origin_extra}\n\
         [[routes]]\nprefix = \"/api/\"\n{route_extra}"
    );
    c.origins = vec![toml::from_str::<OriginConfig>(&text).unwrap()];
    c
}

/// One answer as the client saw it.
#[derive(Debug)]
struct Got {
    status: u16,
    cache: String,
    body: String,
    headers: HeaderMap,
}

async fn send(g: &Gateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut r = g.http.request(method, format!("{}{path}", g.base));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cache = headers
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Got {
        status,
        cache,
        body: resp.text().await.unwrap(),
        headers,
    }
}

async fn get(g: &Gateway, path: &str) -> Got {
    send(g, Method::GET, path, &[]).await
}

/// (X-Cache, body) of a GET.
async fn got(g: &Gateway, path: &str) -> (String, String) {
    let r = get(g, path).await;
    (r.cache, r.body)
}

fn pair(cache: &str, body: &str) -> (String, String) {
    (cache.to_string(), body.to_string())
}

#[tokio::test]
async fn a_max_age_answer_is_fetched_once_then_hit() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/a",
        Answer::ok("A")
            .header("Cache-Control", "max-age=60")
            .header("Keep-Alive", "timeout=5")
            .header("Content-Type", "text/plain"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    let first = send(
        &g,
        Method::GET,
        "/api/a?x=1",
        &[
            ("Proxy-Authorization", "Basic eDp5"),
            ("X-Forwarded-For", "10.1.1.1"),
        ],
    )
    .await;
    assert_eq!(
        (first.status, first.cache.as_str(), first.body.as_str()),
        (200, "MISS", "A")
    );
    assert_eq!(first.headers["via"], "1.1 tiergate");
    assert_eq!(first.headers["content-type"], "text/plain");
    assert!(
        !first.headers.contains_key("keep-alive"),
        "{:?}",
        first.headers
    );
    let second = get(&g, "/api/a?x=1").await;
    assert_eq!((second.cache.as_str(), second.body.as_str()), ("HIT", "A"));
    assert_eq!(second.headers["content-type"], "text/plain");
    assert_eq!(origin.requests("/api/a"), 1);
    // Another query is another URL.
    assert_eq!(got(&g, "/api/a?x=2").await, pair("MISS", "A"));
    assert_eq!(origin.requests("/api/a"), 2);
    // What the origin saw: its own Host, the forwarding headers, no hop-by-hop ones.
    let seen = &origin.seen("/api/a")[0].headers;
    assert_eq!(seen["host"], origin.addr().to_string());
    assert_eq!(seen["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["via"], "1.1 tiergate");
    assert!(!seen.contains_key("proxy-authorization"), "{seen:?}");
    // The KV API is still served beside the route.
    assert_eq!(g.put("k", "v").await.status(), 204);
    assert_eq!(g.get("k").await.text().await.unwrap(), "v");
    // Metrics by route and outcome.
    let m = g.metrics().await;
    let series =
        |c: &str| format!("tiergate_proxy_requests_total{{cache=\"{c}\",route=\"/api/\"}}");
    assert_eq!(metric(&m, &series("hit")), 1.0);
    assert_eq!(metric(&m, &series("miss")), 2.0);
    assert_eq!(
        metric(&m, "tiergate_proxy_cache_entries{route=\"/api/\"}"),
        2.0
    );
    assert!(metric(&m, "tiergate_proxy_cache_bytes{route=\"/api/\"}") > 0.0);
    assert_eq!(
        metric(
            &m,
            "tiergate_http_requests_total{route=\"proxy\",status=\"200\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn no_store_and_private_answers_are_not_cached() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/nostore",
        Answer::ok("n").header("Cache-Control", "no-store"),
    );
    origin.answer(
        "/api/private",
        Answer::ok("p").header("Cache-Control", "private, max-age=60"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    for path in ["/api/nostore", "/api/private"] {
        assert_eq!(got(&g, path).await.0, "MISS");
        assert_eq!(got(&g, path).await.0, "MISS");
        assert_eq!(origin.requests(path), 2, "{path}");
    }
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_in_a_shared_cache() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/shared",
        Answer::ok("s").header("Cache-Control", "max-age=0, s-maxage=60"),
    );
    origin.answer(
        "/api/browser",
        Answer::ok("b").header("Cache-Control", "max-age=60, s-maxage=0"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/shared").await, pair("MISS", "s"));
    assert_eq!(got(&g, "/api/shared").await, pair("HIT", "s"));
    assert_eq!(origin.requests("/api/shared"), 1);
    assert_eq!(got(&g, "/api/browser").await, pair("MISS", "b"));
    assert_eq!(got(&g, "/api/browser").await, pair("MISS", "b"));
    assert_eq!(origin.requests("/api/browser"), 2);
}

#[tokio::test]
async fn the_age_an_answer_came_with_is_counted_and_sent() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/aged",
        Answer::ok("old")
            .header("Cache-Control", "max-age=100")
            .header("Age", "90"),
    );
    origin.answer(
        "/api/spent",
        Answer::ok("x")
            .header("Cache-Control", "max-age=100")
            .header("Age", "100"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/aged").await.0, "MISS");
    // Fresh for about 10 s more: a hit, its Age at least the 90 it came with.
    let hit = get(&g, "/api/aged").await;
    assert_eq!(hit.cache, "HIT");
    let age: u64 = hit.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((90..100).contains(&age), "Age {age}");
    assert_eq!(origin.requests("/api/aged"), 1);
    // Arrived with its whole lifetime spent: never fresh here.
    assert_eq!(got(&g, "/api/spent").await.0, "MISS");
    assert_eq!(got(&g, "/api/spent").await.0, "MISS");
    assert_eq!(origin.requests("/api/spent"), 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let origin = Origin::start().await;
    let answer = |body: &str| {
        Answer::ok(body.to_string())
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language")
    };
    let g = Gateway::start_ready(config(&origin, "")).await;
    let en = [("Accept-Language", "en")];
    let fr = [("Accept-Language", "fr")];
    origin.answer("/api/hello", answer("hello"));
    let r = send(&g, Method::GET, "/api/hello", &en).await;
    assert_eq!((r.cache.as_str(), r.body.as_str()), ("MISS", "hello"));
    origin.answer("/api/hello", answer("bonjour"));
    let r = send(&g, Method::GET, "/api/hello", &fr).await;
    assert_eq!((r.cache.as_str(), r.body.as_str()), ("MISS", "bonjour"));
    assert_eq!(origin.requests("/api/hello"), 2);
    for _ in 0..2 {
        let r = send(&g, Method::GET, "/api/hello", &en).await;
        assert_eq!((r.cache.as_str(), r.body.as_str()), ("HIT", "hello"));
        let r = send(&g, Method::GET, "/api/hello", &fr).await;
        assert_eq!((r.cache.as_str(), r.body.as_str()), ("HIT", "bonjour"));
    }
    assert_eq!(origin.requests("/api/hello"), 2);
}

#[tokio::test]
async fn no_cache_revalidates_with_the_etag_and_a_304_serves_the_stored_body() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/doc",
        Answer::ok("version one")
            .header("Cache-Control", "no-cache")
            .header("ETag", "\"v1\""),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/doc").await, pair("MISS", "version one"));
    // The origin no longer sends the body: only a 304 can make this answer.
    origin.answer(
        "/api/doc",
        Answer::ok("")
            .header("Cache-Control", "no-cache")
            .header("ETag", "\"v1\""),
    );
    for _ in 0..2 {
        let r = get(&g, "/api/doc").await;
        assert_eq!(
            (r.status, r.cache.as_str(), r.body.as_str()),
            (200, "REVALIDATED", "version one")
        );
    }
    assert_eq!(origin.requests("/api/doc"), 3);
    let seen = origin.last_headers("/api/doc").unwrap();
    assert_eq!(seen["if-none-match"], "\"v1\"");
    // A new ETag: a full answer, stored in place of the old one.
    origin.answer(
        "/api/doc",
        Answer::ok("version two")
            .header("Cache-Control", "no-cache")
            .header("ETag", "\"v2\""),
    );
    assert_eq!(got(&g, "/api/doc").await, pair("MISS", "version two"));
    assert_eq!(got(&g, "/api/doc").await.1, "version two");
}

#[tokio::test]
async fn a_stale_answer_revalidates_with_if_modified_since() {
    let origin = Origin::start().await;
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
    origin.answer(
        "/api/lm",
        Answer::ok("dated")
            .header("Cache-Control", "max-age=1")
            .header("Last-Modified", lm),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/lm").await, pair("MISS", "dated"));
    origin.answer(
        "/api/lm",
        Answer::ok("")
            .header("Cache-Control", "max-age=60")
            .header("Last-Modified", lm),
    );
    eventually("the stale copy revalidated", || async {
        got(&g, "/api/lm").await == pair("REVALIDATED", "dated")
    })
    .await;
    assert_eq!(
        origin.last_headers("/api/lm").unwrap()["if-modified-since"],
        lm
    );
    // The 304's max-age=60 now applies.
    assert_eq!(got(&g, "/api/lm").await, pair("HIT", "dated"));
    assert_eq!(origin.requests("/api/lm"), 2);
}

#[tokio::test]
async fn stale_while_revalidate_answers_stale_and_refreshes_once_behind() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/swr",
        Answer::ok("old").header("Cache-Control", "max-age=1, stale-while-revalidate=60"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/swr").await, pair("MISS", "old"));
    // The refresh takes a while: every request meanwhile is answered stale, at once.
    origin.answer(
        "/api/swr",
        Answer::ok("new")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(500)),
    );
    eventually("answered stale", || async {
        got(&g, "/api/swr").await == pair("STALE", "old")
    })
    .await;
    for _ in 0..5 {
        let r = got(&g, "/api/swr").await;
        assert!(
            r == pair("STALE", "old") || r == pair("HIT", "new"),
            "{r:?}"
        );
    }
    eventually("refreshed in the background", || async {
        got(&g, "/api/swr").await == pair("HIT", "new")
    })
    .await;
    assert_eq!(origin.requests("/api/swr"), 2, "exactly one refresh");
    let m = g.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tiergate_proxy_background_refreshes_total{route=\"/api/\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn stale_if_error_answers_stale_when_the_origin_fails() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/sie",
        Answer::ok("good").header("Cache-Control", "max-age=1, stale-if-error=60"),
    );
    origin.answer(
        "/api/plain",
        Answer::ok("plain").header("Cache-Control", "max-age=1"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/sie").await, pair("MISS", "good"));
    assert_eq!(got(&g, "/api/plain").await, pair("MISS", "plain"));
    origin.answer("/api/sie", Answer::status(503));
    origin.answer("/api/plain", Answer::status(503));
    eventually("answered stale for a 503", || async {
        let r = get(&g, "/api/sie").await;
        (r.status, r.cache, r.body) == (200, "STALE".into(), "good".into())
    })
    .await;
    // No answer at all: stale too.
    origin.set_down(true);
    let r = get(&g, "/api/sie").await;
    assert_eq!(
        (r.status, r.cache.as_str(), r.body.as_str()),
        (200, "STALE", "good")
    );
    origin.set_down(false);
    // Without stale-if-error the 503 is passed on.
    eventually("the 503 passed on", || async {
        let r = get(&g, "/api/plain").await;
        (r.status, r.cache) == (503, "MISS".into())
    })
    .await;
}

#[tokio::test]
async fn a_post_is_proxied_uncached_and_invalidates_the_url() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/item",
        Answer::ok("item").header("Cache-Control", "max-age=60"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/item").await, pair("MISS", "item"));
    assert_eq!(got(&g, "/api/item").await, pair("HIT", "item"));
    for _ in 0..2 {
        let r = g
            .http
            .post(format!("{}/api/item", g.base))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-cache"], "BYPASS");
    }
    assert_eq!(
        origin.methods("/api/item"),
        [Method::GET, Method::POST, Method::POST]
    );
    // The body streamed through to the origin.
    assert_eq!(origin.seen("/api/item")[1].body, "payload");
    // Invalidated: the next GET goes to the origin.
    assert_eq!(got(&g, "/api/item").await, pair("MISS", "item"));
    assert_eq!(got(&g, "/api/item").await, pair("HIT", "item"));
    // An error answer to a POST invalidates nothing.
    origin.answer("/api/item", Answer::status(500));
    let r = g
        .http
        .post(format!("{}/api/item", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), &r.headers()["x-cache"]),
        (500, &"BYPASS".parse().unwrap())
    );
    assert_eq!(got(&g, "/api/item").await, pair("HIT", "item"));
    assert_eq!(
        origin
            .methods("/api/item")
            .iter()
            .filter(|m| **m == Method::GET)
            .count(),
        2
    );
}

#[tokio::test]
async fn a_body_over_max_object_bytes_streams_through_unstored() {
    let origin = Origin::start().await;
    let big = "x".repeat(4096);
    origin.answer(
        "/api/big",
        Answer::ok(big.clone()).header("Cache-Control", "max-age=60"),
    );
    // No length: found too large only as it streams.
    origin.answer(
        "/api/chunked",
        Answer::ok(big.clone())
            .header("Cache-Control", "max-age=60")
            .chunked(8),
    );
    origin.answer(
        "/api/small",
        Answer::ok("y".repeat(500))
            .header("Cache-Control", "max-age=60")
            .chunked(4),
    );
    let g = Gateway::start_ready(config(&origin, "max_object_bytes = \"1KiB\"")).await;
    for path in ["/api/big", "/api/chunked"] {
        for _ in 0..2 {
            let (cache, body) = got(&g, path).await;
            assert_eq!((cache.as_str(), body.len()), ("MISS", 4096), "{path}");
            assert_eq!(body, big);
        }
        assert_eq!(origin.requests(path), 2, "{path}");
    }
    assert_eq!(got(&g, "/api/small").await.0, "MISS");
    assert_eq!(got(&g, "/api/small").await, pair("HIT", &"y".repeat(500)));
    assert_eq!(origin.requests("/api/small"), 1);
}

#[tokio::test]
async fn purge_removes_a_url_on_the_data_port_and_the_admin_port() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/p",
        Answer::ok("p").header("Cache-Control", "max-age=60"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    let purge = Method::from_bytes(b"PURGE").unwrap();
    assert_eq!(got(&g, "/api/p").await, pair("MISS", "p"));
    assert_eq!(got(&g, "/api/p").await, pair("HIT", "p"));
    let r = send(&g, purge.clone(), "/api/p", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{\"purged\":true}\n"));
    let r = send(&g, purge.clone(), "/api/p", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(got(&g, "/api/p").await, pair("MISS", "p"));
    assert_eq!(got(&g, "/api/p").await, pair("HIT", "p"));
    let r = g
        .http
        .post(format!("{}/purge?url=%2Fapi%2Fp", g.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{\"purged\":true}\n");
    assert_eq!(got(&g, "/api/p").await, pair("MISS", "p"));
    assert_eq!(origin.requests("/api/p"), 3);
    // What the invalidation bus calls for a purge heard from another instance.
    assert!(g.running.as_ref().unwrap().proxy.purge_here("/api/p"));
    assert_eq!(got(&g, "/api/p").await, pair("MISS", "p"));
}

#[tokio::test]
async fn a_head_is_served_from_a_cached_get() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/h",
        Answer::ok("12345").header("Cache-Control", "max-age=60"),
    );
    origin.answer(
        "/api/cold",
        Answer::ok("abc").header("Cache-Control", "max-age=60"),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/h").await, pair("MISS", "12345"));
    let r = send(&g, Method::HEAD, "/api/h", &[]).await;
    assert_eq!(
        (r.status, r.cache.as_str(), r.body.as_str()),
        (200, "HIT", "")
    );
    assert_eq!(r.headers["content-length"], "5");
    assert_eq!(origin.methods("/api/h"), [Method::GET]);
    // A HEAD with nothing stored goes through as a HEAD.
    let r = send(&g, Method::HEAD, "/api/cold", &[]).await;
    assert_eq!((r.status, r.cache.as_str()), (200, "MISS"));
    assert_eq!(r.headers["content-length"], "3");
    assert_eq!(origin.methods("/api/cold"), [Method::HEAD]);
}

#[tokio::test]
async fn origin_failures_are_json_errors_that_name_the_origin() {
    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let g = Gateway::start_ready(config_at(&closed, "", "")).await;
    let r = get(&g, "/api/x").await;
    assert_eq!((r.status, r.cache.as_str()), (502, "MISS"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "origin_unreachable");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("origin web"));
    let r = send(&g, Method::DELETE, "/api/x", &[]).await;
    assert_eq!((r.status, r.cache.as_str()), (502, "BYPASS"));

    let origin = Origin::start().await;
    origin.answer("/api/slow", Answer::hang());
    let g = Gateway::start_ready(config_at(&origin.url(), "", "request_timeout = \"200ms\"")).await;
    let r = get(&g, "/api/slow").await;
    assert_eq!((r.status, r.cache.as_str()), (504, "MISS"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "origin_timeout");
}

#[tokio::test]
async fn min_ttl_and_max_ttl_override_the_headers() {
    let origin = Origin::start().await;
    // No freshness of its own: min_ttl keeps it.
    origin.answer("/api/bare", Answer::ok("bare"));
    // Fresh for an hour by its headers, but the route's ceiling is a second.
    origin.answer(
        "/api/long",
        Answer::ok("long").header("Cache-Control", "max-age=3600"),
    );
    let g = Gateway::start_ready(config(&origin, "min_ttl = \"1h\"\nmax_ttl = \"2h\"")).await;
    assert_eq!(got(&g, "/api/bare").await, pair("MISS", "bare"));
    assert_eq!(got(&g, "/api/bare").await, pair("HIT", "bare"));
    assert_eq!(origin.requests("/api/bare"), 1);
    let g = Gateway::start_ready(config(&origin, "max_ttl = \"1s\"")).await;
    assert_eq!(got(&g, "/api/long").await, pair("MISS", "long"));
    eventually("past the route's ceiling", || async {
        got(&g, "/api/long").await.0 == "MISS"
    })
    .await;
    assert_eq!(origin.requests("/api/long"), 2);
}

#[tokio::test]
async fn set_cookie_answers_are_never_stored_and_client_conditionals_get_304() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/login",
        Answer::ok("hi")
            .header("Cache-Control", "max-age=60")
            .header("Set-Cookie", "session=alice"),
    );
    origin.answer(
        "/api/tagged",
        Answer::ok("tagged")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "W/\"t1\""),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/login").await.0, "MISS");
    assert_eq!(got(&g, "/api/login").await.0, "MISS");
    assert_eq!(origin.requests("/api/login"), 2);
    assert_eq!(got(&g, "/api/tagged").await, pair("MISS", "tagged"));
    // The client has it already: a 304 from the cache, the origin not asked.
    let r = send(
        &g,
        Method::GET,
        "/api/tagged",
        &[("If-None-Match", "\"t1\"")],
    )
    .await;
    assert_eq!(
        (r.status, r.cache.as_str(), r.body.as_str()),
        (304, "HIT", "")
    );
    assert_eq!(r.headers["etag"], "W/\"t1\"");
    let r = send(
        &g,
        Method::GET,
        "/api/tagged",
        &[("If-None-Match", "\"t2\"")],
    )
    .await;
    assert_eq!(
        (r.status, r.cache.as_str(), r.body.as_str()),
        (200, "HIT", "tagged")
    );
    assert_eq!(origin.requests("/api/tagged"), 1);
}

#[tokio::test]
async fn routes_work_the_same_in_tiered_mode() {
    let redis = support::Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/t",
        Answer::ok("t").header("Cache-Control", "max-age=60"),
    );
    let mut c = config(&origin, "");
    c.l2.url = redis.url();
    let g = Gateway::start_ready(c).await;
    assert_eq!(got(&g, "/api/t").await, pair("MISS", "t"));
    assert_eq!(got(&g, "/api/t").await, pair("HIT", "t"));
    assert_eq!(origin.requests("/api/t"), 1);
    // The KV API beside it, through L2.
    assert_eq!(g.put("k", "v").await.status(), 204);
    assert_eq!(g.get("k").await.text().await.unwrap(), "v");
}

#[tokio::test]
async fn a_body_cut_short_reaches_the_client_cut_and_is_not_stored() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/cut",
        Answer::ok("first half|second half")
            .header("Cache-Control", "max-age=60")
            .cut_short(),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    for _ in 0..2 {
        let r = g
            .http
            .get(format!("{}/api/cut", g.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-cache"], "MISS");
        let t = r.text().await;
        assert!(t.is_err(), "the client must see the body fail: {t:?}");
    }
    assert_eq!(origin.requests("/api/cut"), 2);
    let m = g.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_proxy_cache_entries{route=\"/api/\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_body_the_origin_stalls_ends_after_read_timeout_and_frees_its_slot() {
    let origin = Origin::start().await;
    origin.answer(
        "/api/stall",
        Answer::ok("first half|second half")
            .header("Cache-Control", "max-age=60")
            .stall(),
    );
    origin.answer("/api/ok", Answer::ok("ok"));
    // One request at a time: the stalled one must give its slot back for the next.
    let c = config_at(
        &origin.url(),
        "",
        "read_timeout = \"300ms\"\nmax_concurrent = 1",
    );
    let g = Gateway::start_ready(c).await;
    let r = g
        .http
        .get(format!("{}/api/stall", g.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bounded here, below the test client's own 10 s, so that without read_timeout this
    // fails (the body would wait for the client to give up) rather than passing late.
    let t = tokio::time::timeout(Duration::from_secs(5), r.text()).await;
    assert!(
        matches!(t, Ok(Err(_))),
        "the client must see the body fail: {t:?}"
    );
    assert_eq!(got(&g, "/api/ok").await, pair("MISS", "ok"));
    let m = g.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_proxy_cache_entries{route=\"/api/\"}"),
        0.0,
        "the stalled answer is not stored"
    );
}

/// `n` GETs of `path` sent at once: each answer's (X-Cache, body).
async fn concurrent(g: &Gateway, path: &str, n: usize) -> Vec<(String, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (http, url) = (g.http.clone(), format!("{}{path}", g.base));
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
                (cache, r.text().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn concurrent_misses_of_a_url_make_one_origin_request() {
    let origin = Origin::start().await;
    // Slow enough that every request arrives while the first is loading.
    origin.answer(
        "/api/hot",
        Answer::ok("hot")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300)),
    );
    origin.answer(
        "/api/uncacheable",
        Answer::ok("u")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_millis(100)),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    let answers = concurrent(&g, "/api/hot", 50).await;
    assert!(answers.iter().all(|(_, body)| body == "hot"), "{answers:?}");
    assert_eq!(answers.iter().filter(|(c, _)| c == "MISS").count(), 1);
    assert_eq!(origin.requests("/api/hot"), 1);
    // An answer that cannot be stored: every request still answered, each by the origin.
    let answers = concurrent(&g, "/api/uncacheable", 20).await;
    assert!(
        answers.iter().all(|a| *a == pair("MISS", "u")),
        "{answers:?}"
    );
    assert_eq!(origin.requests("/api/uncacheable"), 20);
}

#[tokio::test]
async fn concurrent_revalidations_of_a_url_make_one_origin_request() {
    let origin = Origin::start().await;
    // Arrives with its lifetime spent: stored (it has an ETag), stale at once.
    origin.answer(
        "/api/spent",
        Answer::ok("body")
            .header("Cache-Control", "max-age=100")
            .header("Age", "100")
            .header("ETag", "\"e1\""),
    );
    let g = Gateway::start_ready(config(&origin, "")).await;
    assert_eq!(got(&g, "/api/spent").await, pair("MISS", "body"));
    // The 304 (slow, so the others arrive meanwhile) makes it fresh for a minute.
    origin.answer(
        "/api/spent",
        Answer::ok("")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"e1\"")
            .delay(Duration::from_millis(300)),
    );
    let answers = concurrent(&g, "/api/spent", 30).await;
    assert!(answers.iter().all(|(_, b)| b == "body"), "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(c, _)| c == "REVALIDATED").count(),
        1,
        "{answers:?}"
    );
    assert_eq!(origin.requests("/api/spent"), 2);
    assert_eq!(got(&g, "/api/spent").await, pair("HIT", "body"));
}

#[tokio::test]
async fn with_auth_on_routes_are_the_origins_to_guard_and_purge_needs_a_writer() {
    use tiergate::config::TokenConfig;
    let origin = Origin::start().await;
    origin.answer(
        "/api/g",
        Answer::ok("g").header("Cache-Control", "max-age=60"),
    );
    let mut c = config(&origin, "");
    let token = |name: &str, t: &str, write: &str| TokenConfig {
        name: name.into(),
        token: t.into(),
        read: vec!["*".into()],
        write: vec![write.into()],
    };
    c.auth.tokens = vec![
        token("reader", "r0000000000000000000000000000000", "other:"),
        token("api", "a0000000000000000000000000000000", "/api/"),
    ];
    let g = Gateway::start_ready(c).await;
    // Proxied without tiergate's token: the origin does its own auth.
    assert_eq!(got(&g, "/api/g").await, pair("MISS", "g"));
    assert_eq!(got(&g, "/api/g").await, pair("HIT", "g"));
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let bearer = |t: &'static str| ("Authorization", t);
    let r = send(&g, purge.clone(), "/api/g", &[]).await;
    assert_eq!((r.status, r.cache.as_str()), (401, "BYPASS"));
    let r = send(
        &g,
        purge.clone(),
        "/api/g",
        &[bearer("Bearer r0000000000000000000000000000000")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(got(&g, "/api/g").await, pair("HIT", "g"));
    let r = send(
        &g,
        purge,
        "/api/g",
        &[bearer("Bearer a0000000000000000000000000000000")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(got(&g, "/api/g").await, pair("MISS", "g"));
}

#[tokio::test]
async fn a_purge_and_an_unsafe_method_reach_every_instance_over_the_bus() {
    let redis = support::Redis::start();
    let origin = Origin::start().await;
    for path in ["/api/a", "/api/b"] {
        origin.answer(path, Answer::ok("v").header("Cache-Control", "max-age=600"));
    }
    let tiered = || {
        let mut c = config(&origin, "");
        c.l2.url = redis.url();
        c
    };
    let (one, two) = (
        Gateway::start_ready(tiered()).await,
        Gateway::start_ready(tiered()).await,
    );
    for g in [&one, &two] {
        for path in ["/api/a", "/api/b"] {
            get(g, path).await;
            assert_eq!(get(g, path).await.cache, "HIT", "{path}");
        }
    }
    // The second instance found both in L2.
    assert_eq!(origin.requests("/api/a") + origin.requests("/api/b"), 2);
    // PURGE on one instance: the other drops its copy too.
    let purge = Method::from_bytes(b"PURGE").unwrap();
    assert_eq!(send(&one, purge, "/api/a", &[]).await.status, 200);
    // Gone from L2 before the PURGE was answered: this instance's next miss asks the origin.
    assert_eq!(get(&one, "/api/a").await.cache, "MISS");
    assert_eq!(origin.requests("/api/a"), 2);
    let purge = Method::from_bytes(b"PURGE").unwrap();
    assert_eq!(send(&one, purge, "/api/a", &[]).await.status, 200);
    support::eventually("the purge heard by the other instance", || async {
        get(&two, "/api/a").await.cache == "MISS"
    })
    .await;
    // A POST that succeeds on one instance invalidates the URL on the other.
    origin.answer("/api/b", Answer::ok("posted"));
    assert_eq!(send(&one, Method::POST, "/api/b", &[]).await.status, 200);
    origin.answer(
        "/api/b",
        Answer::ok("v2").header("Cache-Control", "max-age=600"),
    );
    support::eventually("the invalidation heard by the other instance", || async {
        get(&two, "/api/b").await.body == "v2"
    })
    .await;
}

#[tokio::test]
async fn a_purge_sent_once_the_answer_is_had_removes_what_was_kept_in_l2() {
    let redis = support::Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/kept",
        Answer::ok("v").header("Cache-Control", "max-age=600"),
    );
    let (one, two) = two_tiered(&origin, &redis).await;
    // Each round: a miss on one instance, then at once a PURGE of the URL on the other. The
    // answer's copy in L2 is saved before its last byte reaches the client, so the purge
    // comes after it and removes it: the next miss, on either instance, asks the origin.
    // (With the copy saved in the background, a purge could run first and the copy land
    // after it, serving the purged answer for its whole max-age.)
    for round in 0..40 {
        let url = format!("/api/kept?round={round}");
        assert_eq!(got(&one, &url).await, pair("MISS", "v"), "round {round}");
        let purge = Method::from_bytes(b"PURGE").unwrap();
        send(&two, purge, &url, &[]).await;
        assert_eq!(got(&two, &url).await, pair("MISS", "v"), "round {round}");
    }
    assert_eq!(origin.requests("/api/kept"), 80);
}

/// Two tiered instances over one Redis, routing `/api/` to `origin` (lock on by default).
async fn two_tiered(origin: &Origin, redis: &support::Redis) -> (Gateway, Gateway) {
    let tiered = || {
        let mut c = config(origin, "");
        c.l2.url = redis.url();
        c
    };
    (
        Gateway::start_ready(tiered()).await,
        Gateway::start_ready(tiered()).await,
    )
}

#[tokio::test]
async fn misses_of_a_url_on_two_instances_make_one_origin_request_through_l2() {
    let redis = support::Redis::start();
    let origin = Origin::start().await;
    // Slow enough that every request on both instances arrives while the first is loading.
    origin.answer(
        "/api/shared",
        Answer::ok("shared")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"s1\"")
            .delay(Duration::from_millis(300)),
    );
    let (one, two) = two_tiered(&origin, &redis).await;
    let (a, b) = tokio::join!(
        concurrent(&one, "/api/shared", 25),
        concurrent(&two, "/api/shared", 25)
    );
    let answers: Vec<_> = a.into_iter().chain(b).collect();
    assert!(
        answers.iter().all(|(_, body)| body == "shared"),
        "{answers:?}"
    );
    assert_eq!(origin.requests("/api/shared"), 1, "{answers:?}");
    assert_eq!(answers.iter().filter(|(c, _)| c == "MISS").count(), 1);
    // What one instance stored, the other serves from L2 with its headers and Age.
    origin.answer(
        "/api/once",
        Answer::ok("once")
            .header("Cache-Control", "max-age=60")
            .header("Age", "7"),
    );
    assert_eq!(got(&one, "/api/once").await, pair("MISS", "once"));
    let r = get(&two, "/api/once").await;
    assert_eq!((r.cache.as_str(), r.body.as_str()), ("HIT", "once"));
    let age: u64 = r.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age >= 7, "the Age it came with still counts: {age}");
    assert_eq!(origin.requests("/api/once"), 1);
}

#[tokio::test]
async fn answers_that_cannot_be_stored_are_not_held_up_by_the_lock_across_instances() {
    let redis = support::Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/private",
        Answer::ok("p")
            .header("Cache-Control", "private")
            .delay(Duration::from_millis(50)),
    );
    let (one, two) = two_tiered(&origin, &redis).await;
    // The first miss learns the answer cannot be stored and says so in the lock: every other
    // request, on either instance, asks the origin itself and is answered.
    let (a, b) = tokio::join!(
        concurrent(&one, "/api/private", 10),
        concurrent(&two, "/api/private", 10)
    );
    let answers: Vec<_> = a.into_iter().chain(b).collect();
    assert!(
        answers.iter().all(|a| *a == pair("MISS", "p")),
        "{answers:?}"
    );
    assert_eq!(origin.requests("/api/private"), 20);
    // Once the origin allows it, the URL is stored again (after PURGE ends the pass).
    origin.answer(
        "/api/private",
        Answer::ok("public").header("Cache-Control", "max-age=60"),
    );
    let purge = Method::from_bytes(b"PURGE").unwrap();
    send(&one, purge, "/api/private", &[]).await;
    assert_eq!(got(&one, "/api/private").await, pair("MISS", "public"));
    assert_eq!(got(&one, "/api/private").await, pair("HIT", "public"));
}

#[tokio::test]
async fn an_http_1_0_origins_answer_reaches_an_http_1_1_client_as_http_1_1() {
    // An origin that speaks HTTP/1.0 (as python's http.server does): one answer per
    // connection, then close.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let answer =
                    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok";
                let _ = s.write_all(answer).await;
            });
        }
    });
    let g = Gateway::start_ready(config_at(&url, "", "")).await;
    for want in ["MISS", "HIT"] {
        let r = g
            .http
            .get(format!("{}/api/old", g.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11, "{want}");
        assert_eq!(r.headers()["x-cache"], want);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
}

#[tokio::test]
async fn an_origin_that_answers_before_the_body_is_sent_is_heard() {
    use tokio::io::AsyncWriteExt;
    // A raw origin that refuses an upload at its head: it answers 413 and closes without
    // reading the body (as a server with a body limit does).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                if !support::origin::read_request_head(&mut s).await {
                    return;
                }
                let refusal = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n";
                let _ = s.write_all(refusal).await;
            });
        }
    });
    let g = Gateway::start_ready(config_at(&url, "", "")).await;
    // Larger than the sockets' buffers between them: the gateway is still sending when the
    // origin has answered and gone.
    let body = vec![b'x'; 3 << 20];
    let resp = g
        .http
        .post(format!("{}/api/upload", g.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(resp.text().await.unwrap(), "too big\n");
}

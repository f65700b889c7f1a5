//! KV read-through (issue 18 point 2): keys under a loader's prefix that neither L1 nor L2
//! holds are loaded from a real HTTP origin (`tests/support/origin.rs`) over HTTP and RESP
//! alike, kept in L2 (shared by every instance) and L1 for as long as the origin's
//! Cache-Control allows (RFC 9111, shared cache), 404s remembered for `neg_ttl`, errors kept
//! nowhere (503 / -TRYAGAIN) unless a stale copy may answer. Each test runs a real
//! redis-server; everything is asserted by counting origin requests and reading Redis.

mod support;

use redis::AsyncCommands;
use std::time::Duration;
use support::{
    error_code, eventually, metric,
    origin::{Answer, Origin},
    Gateway, Redis,
};
use tiergate::config::{Config, OriginConfig};

/// A gateway over `redis` with origin "users" at `origin`, loading `user:` keys from
/// `/api/users/{id}` with these extra loader keys.
fn config(redis: &Redis, origin: &Origin, loader_extra: &str) -> Config {
    let mut c = support::config(Some(&redis.url()));
    let text = format!(
        "name = \"users\"\nupstreams = [{:?}]\nmax_retries = 0\n\
         [[loaders]]\nprefix = \"user:\"\npath = \"/api/users/{{id}}\"\n{loader_extra}",
        origin.url()
    );
    c.origins = vec![toml::from_str::<OriginConfig>(&text).unwrap()];
    c
}

/// GET over HTTP: status, X-Cache and body.
async fn get(g: &Gateway, key: &str) -> (u16, String, String) {
    let r = g.get(key).await;
    let tier = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), tier, r.text().await.unwrap())
}

async fn pttl(redis: &Redis, key: &str) -> i64 {
    let mut c = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    c.pttl(key).await.unwrap()
}

#[tokio::test]
async fn a_miss_loads_from_the_origin_once_and_is_shared_through_l2() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/users/42",
        Answer::ok("alice").header("Cache-Control", "max-age=60"),
    );
    let g = Gateway::start_ready(config(&redis, &origin, "")).await;
    assert_eq!(
        get(&g, "user:42").await,
        (200, "ORIGIN".into(), "alice".into())
    );
    assert_eq!(get(&g, "user:42").await, (200, "L1".into(), "alice".into()));
    // Kept in Redis for the answer's lifetime.
    let left = pttl(&redis, "user:42").await;
    assert!((1..=60_000).contains(&left), "PTTL {left}");
    // Another instance finds it in L2: the origin is asked once in all.
    let other = Gateway::start_ready(config(&redis, &origin, "")).await;
    assert_eq!(
        get(&other, "user:42").await,
        (200, "L2".into(), "alice".into())
    );
    assert_eq!(origin.requests("/api/users/42"), 1);
    // Keys outside the prefix never reach the origin.
    assert_eq!(get(&g, "account:42").await.0, 404);
    assert_eq!(origin.total(), 1);
    let m = g.metrics().await;
    assert_eq!(
        metric(&m, "tiergate_cache_hits_total{tier=\"origin\"}"),
        1.0
    );
}

#[tokio::test]
async fn resp_get_loads_the_same_way() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer("/api/users/7", Answer::ok("bob"));
    origin.answer("/api/users/500", Answer::status(500));
    let g = Gateway::start_ready(config(&redis, &origin, "")).await;
    let addr = g.running.as_ref().unwrap().resp_addr;
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let v: Option<String> = c.get("user:7").await.unwrap();
    assert_eq!(v.as_deref(), Some("bob"));
    let v: Option<String> = c.get("user:7").await.unwrap();
    assert_eq!(v.as_deref(), Some("bob"));
    assert_eq!(origin.requests("/api/users/7"), 1);
    // Not a loader's key: Redis' own nil, no origin request.
    let v: Option<String> = c.get("other:7").await.unwrap();
    assert_eq!(v, None);
    // An origin error is a TRYAGAIN, on one line.
    let e = c.get::<_, Option<String>>("user:500").await.unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
    assert!(e.to_string().contains("answered 500"), "{e}");
    assert_eq!(origin.total(), 2);
}

#[tokio::test]
async fn cache_control_decides_how_long_a_value_is_kept() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    let cases = [
        ("nostore", "no-store"),
        ("private", "private, max-age=60"),
        ("zero", "max-age=0"),
        ("aged", "max-age=100"),
        ("shared", "s-maxage=30, max-age=600"),
    ];
    for (id, cc) in cases {
        let mut a = Answer::ok(id).header("Cache-Control", cc);
        if id == "aged" {
            a = a.header("Age", "40");
        }
        origin.answer(&format!("/api/users/{id}"), a);
    }
    origin.answer("/api/users/plain", Answer::ok("plain"));
    let g = Gateway::start_ready(config(&redis, &origin, "ttl = \"1h\"")).await;
    for (id, _) in cases {
        for _ in 0..2 {
            let (status, _, body) = get(&g, &format!("user:{id}")).await;
            assert_eq!((status, body.as_str()), (200, id));
        }
    }
    // Not storable by a shared cache, or fresh for no time: asked each time, never kept.
    for id in ["nostore", "private", "zero"] {
        assert_eq!(origin.requests(&format!("/api/users/{id}")), 2, "{id}");
        assert_eq!(pttl(&redis, &format!("user:{id}")).await, -2, "{id}");
        assert_eq!(get(&g, &format!("user:{id}")).await.1, "ORIGIN", "{id}");
    }
    // Kept: asked once, then answered from L1.
    for id in ["aged", "shared"] {
        assert_eq!(origin.requests(&format!("/api/users/{id}")), 1, "{id}");
        assert_eq!(get(&g, &format!("user:{id}")).await.1, "L1", "{id}");
    }
    // Age counts against max-age; s-maxage wins over max-age for a shared cache.
    let aged = pttl(&redis, "user:aged").await;
    assert!((1..=60_000).contains(&aged), "aged PTTL {aged}");
    let shared = pttl(&redis, "user:shared").await;
    assert!((1..=30_000).contains(&shared), "shared PTTL {shared}");
    // Silent on freshness: the loader's ttl.
    assert_eq!(get(&g, "user:plain").await.1, "ORIGIN");
    let plain = pttl(&redis, "user:plain").await;
    assert!(plain > 3_000_000, "plain PTTL {plain}");
}

#[tokio::test]
async fn a_404_is_remembered_and_errors_are_not_kept() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer("/api/users/err", Answer::status(500));
    origin.answer("/api/users/big", Answer::ok(vec![b'x'; 2048]));
    let mut c = config(&redis, &origin, "neg_ttl = \"1h\"");
    c.limits.max_value_bytes = tiergate::config::ByteSize(1024);
    let g = Gateway::start_ready(c).await;
    for _ in 0..3 {
        assert_eq!(get(&g, "user:nobody").await.0, 404);
    }
    assert_eq!(
        origin.requests("/api/users/nobody"),
        1,
        "the 404 was not remembered"
    );
    for _ in 0..2 {
        let r = g.get("user:err").await;
        assert_eq!(r.status(), 503);
        assert_eq!(error_code(r).await, "origin_status");
    }
    assert_eq!(origin.requests("/api/users/err"), 2, "an error was kept");
    let r = g.get("user:big").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "origin_value_too_large");
    assert_eq!(pttl(&redis, "user:big").await, -2);
    // The origin down: 503 too, said as the origin's fault.
    drop(origin);
    let r = g.get("user:gone").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "origin_unreachable");
}

#[tokio::test]
async fn stale_if_error_answers_an_expired_copy_while_the_origin_fails() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/users/1",
        Answer::ok("v1").header("Cache-Control", "max-age=1"),
    );
    let g = Gateway::start_ready(config(&redis, &origin, "stale_if_error = \"1h\"")).await;
    assert_eq!(get(&g, "user:1").await.2, "v1");
    origin.answer("/api/users/1", Answer::status(503));
    // Once the copy has expired (in Redis and L1), the origin is asked, fails, and the
    // expired copy answers.
    eventually("the origin asked again after the copy expired", || async {
        let (status, _, body) = get(&g, "user:1").await;
        assert_eq!((status, body.as_str()), (200, "v1"));
        origin.requests("/api/users/1") > 1
    })
    .await;
    let m = g.metrics().await;
    assert!(metric(&m, "tiergate_l1_stale_served_total") >= 1.0);

    // Without stale_if_error, the same is a 503.
    let plain = Origin::start().await;
    plain.answer(
        "/api/users/1",
        Answer::ok("v1").header("Cache-Control", "max-age=1"),
    );
    let _: () = redis::cmd("DEL")
        .arg("user:1")
        .query(&mut redis.conn())
        .unwrap();
    let g2 = Gateway::start_ready(config(&redis, &plain, "")).await;
    assert_eq!(get(&g2, "user:1").await.2, "v1");
    plain.answer("/api/users/1", Answer::status(503));
    eventually("the expired copy to be refused", || async {
        get(&g2, "user:1").await.0 == 503
    })
    .await;
}

#[tokio::test]
async fn concurrent_misses_make_one_origin_request() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/users/hot",
        Answer::ok("hot").delay(Duration::from_millis(300)),
    );
    let g = Gateway::start_ready(config(&redis, &origin, "")).await;
    let answers = g.concurrent_gets("user:hot", 100).await;
    assert!(answers.iter().all(|(_, body)| body == "hot"), "{answers:?}");
    assert_eq!(origin.requests("/api/users/hot"), 1);
}

/// `n` GETs of `key` on each gateway, all sent at once: every answer's status and body.
async fn gets_on_both(a: &Gateway, b: &Gateway, key: &str, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = [a, b]
        .iter()
        .flat_map(|g| (0..n).map(|_| (g.http.clone(), g.kv(key))))
        .map(|(http, url)| {
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn misses_on_two_instances_make_one_origin_request() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/users/hot",
        Answer::ok("hot").delay(Duration::from_millis(300)),
    );
    origin.answer(
        "/api/users/gone",
        Answer::not_found().delay(Duration::from_millis(300)),
    );
    // A wait far past the origin's answer, so a slow machine cannot turn it into two loads.
    let patient = "lock_wait = \"20s\"\nlock_ttl = \"30s\"";
    let a = Gateway::start_ready(config(&redis, &origin, patient)).await;
    let b = Gateway::start_ready(config(&redis, &origin, patient)).await;
    let answers = gets_on_both(&a, &b, "user:hot", 50).await;
    assert!(
        answers.iter().all(|r| *r == (200, "hot".into())),
        "{answers:?}"
    );
    assert_eq!(origin.requests("/api/users/hot"), 1);
    // A 404 is shared the same way: the lock holder leaves "absent" in the lock.
    let answers = gets_on_both(&a, &b, "user:gone", 50).await;
    assert!(answers.iter().all(|r| r.0 == 404), "{answers:?}");
    assert_eq!(origin.requests("/api/users/gone"), 1);
    let third = Gateway::start_ready(config(&redis, &origin, "")).await;
    assert_eq!(get(&third, "user:gone").await.0, 404);
    assert_eq!(origin.requests("/api/users/gone"), 1);
}

#[tokio::test]
async fn a_waiter_asks_the_origin_itself_once_lock_wait_has_passed() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer("/api/users/9", Answer::ok("nine"));
    // Another instance holds the lock and never finishes.
    let _: () = redis::cmd("SET")
        .arg("tiergate:lock:user:9")
        .arg("0123456789abcdef")
        .arg("PX")
        .arg(600_000)
        .query(&mut redis.conn())
        .unwrap();
    let g = Gateway::start_ready(config(
        &redis,
        &origin,
        "lock_wait = \"200ms\"\nlock_ttl = \"1s\"",
    ))
    .await;
    assert_eq!(
        get(&g, "user:9").await,
        (200, "ORIGIN".into(), "nine".into())
    );
    assert_eq!(origin.requests("/api/users/9"), 1);
    assert!(pttl(&redis, "user:9").await > 0, "the value was kept in L2");
}

#[tokio::test]
async fn a_slow_origin_is_shed_at_the_limits_not_queued() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    for i in 0..60 {
        origin.answer(
            &format!("/api/users/{i}"),
            Answer::ok("slow").delay(Duration::from_millis(300)),
        );
    }
    let mut c = config(&redis, &origin, "");
    // Four at a time to the origin, sixteen requests at a time through the door.
    c.origins[0].max_concurrent = 4;
    c.admission.max_inflight = 16;
    c.admission.max_queue = 0;
    let g = Gateway::start_ready(c).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let (http, url) = (g.http.clone(), g.kv(&format!("user:{i}")));
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let code = if status == 200 {
                    String::new()
                } else {
                    error_code(r).await
                };
                (status, code)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    for (status, code) in &answers {
        assert!(
            *status == 200
                || (*status == 503 && (code == "overloaded" || code == "origin_unavailable")),
            "{answers:?}"
        );
    }
    assert!((1..60).contains(&ok), "{ok} of 60 answered");
    // Only what was answered reached the origin: the rest was refused before it.
    assert_eq!(origin.total(), ok, "{answers:?}");
    // Afterwards the gateway serves at once.
    assert_eq!(get(&g, "user:0").await.0, 200);
}

#[tokio::test]
async fn the_origin_restarted_under_load() {
    let redis = Redis::start();
    let mut origin = Origin::start().await;
    origin.answer(
        "/api/users/live",
        Answer::ok("live").header("Cache-Control", "no-store"),
    );
    let g = Gateway::start_ready(config(&redis, &origin, "")).await;
    // Readers that never stop until told, each answer a 200 or a 503 said as the origin's.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, stop) = (g.http.clone(), g.kv("user:live"), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.get(&url).send().await.unwrap();
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap();
                    seen.push((status, body));
                }
                seen
            })
        })
        .collect();
    eventually("load flowing", || async {
        origin.requests("/api/users/live") > 20
    })
    .await;
    origin.stop().await;
    // Another key: a read of user:live may join a load the readers began before the stop.
    let r = g.get("user:down").await;
    assert_eq!(r.status(), 503);
    let code = error_code(r).await;
    assert!(
        code == "origin_unreachable" || code == "origin_failed",
        "{code}"
    );
    let before = origin.requests("/api/users/live");
    origin.restart().await;
    eventually("requests reaching the restarted origin", || async {
        origin.requests("/api/users/live") > before + 20
    })
    .await;
    assert_eq!(get(&g, "user:live").await.2, "live");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        for (status, body) in r.await.unwrap() {
            assert!(
                (status == 200 && body == "live") || (status == 503 && body.contains("origin")),
                "{status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn batch_reads_load_their_loader_keys_too() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer("/api/users/1", Answer::ok("one"));
    origin.answer("/api/users/2", Answer::ok("two"));
    let _: () = redis::cmd("SET")
        .arg("plain")
        .arg("in-redis")
        .query(&mut redis.conn())
        .unwrap();
    let g = Gateway::start_ready(config(&redis, &origin, "")).await;
    let v = g
        .batch_get(&["user:1", "user:2", "user:404", "plain", "other"])
        .await;
    assert_eq!(v["values"]["user:1"], "one", "{v}");
    assert_eq!(v["values"]["user:2"], "two", "{v}");
    assert!(v["values"]["user:404"].is_null(), "{v}");
    assert_eq!(v["values"]["plain"], "in-redis", "{v}");
    assert!(v["values"]["other"].is_null(), "{v}");
    // RESP MGET: from L1 now, and the 404 remembered.
    let addr = g.running.as_ref().unwrap().resp_addr;
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let got: Vec<Option<String>> = c.mget(&["user:2", "user:404", "user:1"]).await.unwrap();
    assert_eq!(got, [Some("two".into()), None, Some("one".into())]);
    assert_eq!(origin.total(), 3);
    // A failing origin fails the batch, as a failing Redis does.
    origin.answer("/api/users/3", Answer::status(500));
    let r = g
        .http
        .post(format!("{}/v1/kv:batchGet", g.base))
        .json(&serde_json::json!({ "keys": ["user:3", "plain"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "origin_status");
}

#[tokio::test]
async fn a_stalled_body_ends_as_a_timeout_not_a_hang() {
    let redis = Redis::start();
    let origin = Origin::start().await;
    origin.answer(
        "/api/users/slow",
        Answer::ok("first half|second half").stall(),
    );
    let mut c = config(&redis, &origin, "");
    // The headers come at once; the whole load, body included, has this long.
    c.origins[0].request_timeout = tiergate::config::HumanDuration(Duration::from_millis(300));
    let g = Gateway::start_ready(c).await;
    let r = g.get("user:slow").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "origin_timeout");
    assert_eq!(pttl(&redis, "user:slow").await, -2, "nothing kept");
}

//! The request hot path without sockets: an L1 hit through `TieredCache`, and a whole
//! `GET /v1/kv/{key}` through the HTTP handler (routing, key decoding, cache, response,
//! metrics). What these cost per call is what tiergate adds on top of hyper and the kernel.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::Empty;
use std::{hint::black_box, sync::Arc};
use tiergate::{
    auth::{Auth, Rules},
    cache::TieredCache,
    config::Config,
    http,
    metrics::Metrics,
};

/// A standalone engine holding one 64-byte value under "bench".
fn standalone(
    rt: &tokio::runtime::Runtime,
    config: Config,
) -> (Arc<TieredCache>, Arc<Metrics>, Config) {
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(TieredCache::new(&config, 1 << 30, metrics.clone()).unwrap());
    rt.block_on(cache.set(
        Bytes::from_static(b"bench"),
        Bytes::from(vec![b'x'; 64]),
        None,
    ))
    .unwrap();
    (cache, metrics, config)
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cache, metrics, config) = standalone(&rt, Config::default());
    c.bench_function("tiered_cache_get_l1_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get(black_box(b"bench")).await.unwrap()) })
    });

    // The same without hot-key sampling: what `admin.hot_keys` costs a read.
    let mut no_hot_keys = Config::default();
    no_hot_keys.admin.hot_keys = 0;
    let (plain, _, _) = standalone(&rt, no_hot_keys);
    c.bench_function("tiered_cache_get_l1_hit_no_hot_keys", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(plain.get(black_box(b"bench")).await.unwrap()) })
    });

    let auth = Arc::new(Auth::new(Rules::from_config(&config)));
    let state = http::State::new(&config, auth.clone(), cache.clone(), metrics.clone(), None);
    c.bench_function("http_handle_get_l1_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let req = ::http::Request::get("/v1/kv/bench")
                .body(Empty::<Bytes>::new())
                .unwrap();
            black_box(http::handle(&state, req, None).await)
        })
    });

    // The same with the access log on, written to /dev/null by its thread: what logging
    // costs a request at the L1-hit rate (the writer's formatting runs on the same core when
    // the bench is pinned with taskset).
    let mut logged = config.access_log.clone();
    logged.enabled = true;
    logged.path = "/dev/null".into();
    let log = tiergate::access::AccessLog::start(
        &logged,
        metrics.access_log_written.clone(),
        metrics.access_log_dropped.clone(),
    )
    .unwrap();
    let with_log = http::State::new(
        &config,
        auth,
        cache.clone(),
        metrics.clone(),
        Some(log.clone()),
    );
    c.bench_function("http_handle_get_l1_hit_access_log", |b| {
        b.to_async(&rt).iter(|| async {
            let req = ::http::Request::get("/v1/kv/bench")
                .body(Empty::<Bytes>::new())
                .unwrap();
            black_box(http::handle(&with_log, req, None).await)
        })
    });
    log.stop();
    println!(
        "access log: {} records written, {} dropped",
        metrics.access_log_written.get(),
        metrics.access_log_dropped.get()
    );
}

criterion_group!(benches, hot_path);
criterion_main!(benches);

//! L2-hit throughput with auto-pipelining against one command per round trip, in one run, on
//! one real redis-server. 256 concurrent readers each read 100 keys that are in Redis (64-byte
//! values); L1 is not involved.
//!
//! - `auto_pipelined`: `L2::get`, as the gateway reads: 4 connections, each folding whatever
//!   reads are queued (up to `l2.max_batch` = 64) into one MGET + PTTLs per round trip.
//! - `max_batch_1`: the same lanes with folding off: one read per connection per round trip.
//! - `multiplexed_unfolded`: 4 redis-rs multiplexed connections, each read its own GET + PTTL
//!   pipeline with no limit in flight: what the multiplexing alone gives, without MGET folding.
//! - `pool_per_round_trip`: a deadpool-redis pool of 64 connections; each read checks one out
//!   and sends GET + PTTL, the usual shape of a Redis client in a web service.
//!
//! Run pinned, the bench on one core and Redis (pinned here) on the last:
//! `taskset -c 0 cargo bench --bench l2_pipelining`. Compare the rows' throughput as ratios.

#[path = "../tests/support/mod.rs"]
mod support;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::{sync::Arc, time::Duration};
use support::Redis;
use tiergate::{cache::L2, config::L2Config, metrics::Metrics};

const READERS: usize = 256;
const READS_EACH: usize = 100;
const KEYS: usize = 10_000;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("bench:{:05}", i % KEYS))
}

/// Starts Redis pinned to the last core (when `taskset` and a second core exist) and fills it.
fn redis() -> Redis {
    let redis = Redis::start();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let (Some(pid), true) = (redis.pid(), cores > 1) {
        let _ = std::process::Command::new("taskset")
            .args(["-pc", &(cores - 1).to_string(), &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status();
    }
    let mut c = redis.conn();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET")
            .arg(key(i).as_ref())
            .arg(vec![b'x'; 64])
            .ignore();
    }
    pipe.exec(&mut c).unwrap();
    redis
}

fn l2(url: &str, max_batch: usize) -> Arc<L2> {
    let cfg = L2Config {
        url: url.into(),
        max_batch,
        ..Default::default()
    };
    Arc::new(L2::new(&cfg, Arc::new(Metrics::new())).unwrap())
}

/// Every reader's reads, all readers at once; panics on a wrong answer so a broken path
/// cannot look fast.
async fn read_all<F, Fut>(read: F)
where
    F: Fn(Bytes) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Option<Bytes>> + Send,
{
    let tasks: Vec<_> = (0..READERS)
        .map(|r| {
            let read = read.clone();
            tokio::spawn(async move {
                for i in 0..READS_EACH {
                    let v = read(key(r * READS_EACH + i)).await;
                    assert_eq!(v.map(|v| v.len()), Some(64));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// GET + PTTL in one pipeline, as `L2` reads a key outside its batches.
async fn get_ttl(conn: &mut impl redis::aio::ConnectionLike, k: &[u8]) -> Option<Bytes> {
    let (v, _pttl): (Option<Bytes>, i64) = redis::pipe()
        .cmd("GET")
        .arg(k)
        .cmd("PTTL")
        .arg(k)
        .query_async(conn)
        .await
        .unwrap();
    v
}

fn l2_pipelining(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let redis = redis();
    let _guard = rt.enter();
    let batched = l2(&redis.url(), 64);
    let unbatched = l2(&redis.url(), 1);
    let client = redis::Client::open(redis.url()).unwrap();
    let managers: Arc<[redis::aio::ConnectionManager]> = rt
        .block_on(async {
            let mut v = Vec::new();
            for _ in 0..4 {
                v.push(client.get_connection_manager().await.unwrap());
            }
            v
        })
        .into();
    let mut pool_cfg = deadpool_redis::Config::from_url(redis.url());
    pool_cfg.pool = Some(deadpool_redis::PoolConfig::new(64));
    let pool = pool_cfg
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();

    let mut group = c.benchmark_group("l2_hit_reads");
    group
        .throughput(Throughput::Elements((READERS * READS_EACH) as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));

    for (name, l2) in [("auto_pipelined", batched), ("max_batch_1", unbatched)] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let l2 = l2.clone();
                read_all(move |k| {
                    let l2 = l2.clone();
                    async move { l2.get(k).await.unwrap().map(|(v, _)| v) }
                })
            })
        });
    }
    group.bench_function("multiplexed_unfolded", |b| {
        b.to_async(&rt).iter(|| {
            let managers = managers.clone();
            read_all(move |k| {
                let i = k.last().copied().unwrap_or(0) as usize % managers.len();
                let mut conn = managers[i].clone();
                async move { get_ttl(&mut conn, &k).await }
            })
        })
    });
    group.bench_function("pool_per_round_trip", |b| {
        b.to_async(&rt).iter(|| {
            let pool = pool.clone();
            read_all(move |k| {
                let pool = pool.clone();
                async move { get_ttl(&mut pool.get().await.unwrap(), &k).await }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, l2_pipelining);
criterion_main!(benches);

//! What the access log costs the request path: one `AccessLog::push`. "push" is a push into
//! a ring with room while the writer thread drains it to a file; "push_full_ring_drop" is a
//! push into a full ring (the record is dropped and counted), what a request pays when the
//! output cannot keep up.

use criterion::{criterion_group, criterion_main, Criterion};
use prometheus::IntCounter;
use std::{
    fs::OpenOptions,
    hint::black_box,
    path::Path,
    time::{Duration, Instant, SystemTime},
};
use tiergate::{
    access::{AccessLog, Record, Status},
    config::{AccessLogConfig, HumanDuration},
    metrics::{Door, Tier},
};

const RING: usize = 65_536;

fn record() -> Record {
    Record {
        at: SystemTime::now(),
        door: Door::Http,
        op: "GET",
        key_len: 16,
        status: Status::Http(200),
        tier: Some(Tier::L1),
        duration: Duration::from_micros(42),
    }
}

fn start(
    path: &Path,
    ring_records: usize,
    flush_interval: Duration,
) -> (std::sync::Arc<AccessLog>, IntCounter, IntCounter) {
    let written = IntCounter::new("written", "w").unwrap();
    let dropped = IntCounter::new("dropped", "d").unwrap();
    let cfg = AccessLogConfig {
        enabled: true,
        path: path.to_str().unwrap().into(),
        ring_records,
        flush_interval: HumanDuration(flush_interval),
    };
    let log = AccessLog::start(&cfg, written.clone(), dropped.clone()).unwrap();
    (log, written, dropped)
}

fn access_log(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("access_log");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Pushes are timed in chunks of half the ring, and the writer is let drain each chunk
    // (untimed) before the next: a push loop is far faster than any writer, so timing it
    // continuously would measure drops into a full ring, not pushes.
    let path = dir.path().join("push.log");
    let (log, written, dropped) = start(&path, RING, Duration::from_millis(1));
    let r = record();
    let mut pushed = 0u64;
    group.bench_function("push", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(RING as u64 / 2);
                let t = Instant::now();
                for _ in 0..n {
                    log.push(black_box(r));
                }
                timed += t.elapsed();
                left -= n;
                pushed += n;
                while written.get() + dropped.get() < pushed {
                    std::thread::sleep(Duration::from_micros(100));
                }
                // Keeps the file from growing to gigabytes over a run (it is appended to,
                // so the writer carries on at the new end).
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }
            timed
        })
    });
    log.stop();
    assert_eq!(
        dropped.get(),
        0,
        "\"push\" was meant to measure pushes that fit"
    );

    // The writer sleeps for an hour after its first look at the empty ring, so once the
    // ring has filled every push is a drop.
    let path = dir.path().join("full.log");
    let (log, _, dropped) = start(&path, 1024, Duration::from_secs(3600));
    while dropped.get() == 0 {
        log.push(r);
    }
    group.bench_function("push_full_ring_drop", |b| b.iter(|| log.push(black_box(r))));
    log.stop();

    group.finish();
}

criterion_group!(benches, access_log);
criterion_main!(benches);

//! The RESP codec and the buffer pool, without sockets: parsing one small command, a
//! pipeline of 16, and a 1 MiB value; encoding the replies; and a buffer pool lease and
//! return. `taskset -c 0 cargo bench --bench resp_codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prometheus::{IntCounter, IntGauge};
use std::hint::black_box;
use tiergate::{
    buf::{pool::PoolMetrics, BufferPool},
    resp::frame::{self, Frame, Limits, Progress, Protocol},
};

fn limits() -> Limits {
    Limits {
        max_multibulk_len: 1024 * 1024,
        max_bulk_len: 4 << 20,
        max_bulk_len_from: "limits.max_value_bytes",
        max_inline_len: 64 * 1024,
        max_request_len: 64 << 20,
    }
}

/// Parses every command in `buf`; returns how many.
fn parse_all(mut buf: BytesMut, limits: &Limits) -> usize {
    let mut progress = Progress::default();
    let mut n = 0;
    while let Some(args) = frame::parse(&mut buf, limits, &mut progress).unwrap() {
        black_box(args);
        n += 1;
    }
    n
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Times parsing `wire`, not copying it into a read buffer (a socket read did that).
fn bench_parse(g: &mut Group<'_>, name: &str, wire: &[u8], limits: &Limits, commands: usize) {
    g.bench_function(name, |b| {
        b.iter_batched(
            || BytesMut::from(wire),
            |buf| assert_eq!(parse_all(buf, limits), commands),
            BatchSize::SmallInput,
        )
    });
}

fn codec(c: &mut Criterion) {
    let limits = limits();
    let get = b"*2\r\n$3\r\nGET\r\n$10\r\nkey:000042\r\n".to_vec();
    let set = b"*3\r\n$3\r\nSET\r\n$10\r\nkey:000042\r\n$64\r\n"
        .iter()
        .copied()
        .chain([b'x'; 64])
        .chain(*b"\r\n")
        .collect::<Vec<u8>>();
    let pipeline: Vec<u8> = get.iter().copied().cycle().take(get.len() * 16).collect();
    let big_value = vec![b'v'; 1 << 20];
    let mut big = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", big_value.len()).into_bytes();
    big.extend_from_slice(&big_value);
    big.extend_from_slice(b"\r\n");

    let mut g = c.benchmark_group("resp_parse");
    g.throughput(Throughput::Elements(1));
    bench_parse(&mut g, "get", &get, &limits, 1);
    bench_parse(&mut g, "set_64b", &set, &limits, 1);
    g.throughput(Throughput::Elements(16));
    bench_parse(&mut g, "get_pipeline_16", &pipeline, &limits, 16);
    g.throughput(Throughput::Bytes(big.len() as u64));
    bench_parse(&mut g, "set_1mib", &big, &limits, 1);
    g.finish();

    let value = Bytes::from(vec![b'x'; 64]);
    let large = Bytes::from(big_value);
    let mut g = c.benchmark_group("resp_encode");
    let mut out = BytesMut::with_capacity(2 << 20);
    g.bench_function("ok", |b| {
        b.iter(|| {
            out.clear();
            Frame::OK.encode(Protocol::Resp2, &mut out);
        })
    });
    g.bench_function("bulk_64b", |b| {
        b.iter(|| {
            out.clear();
            Frame::Bulk(value.clone()).encode(Protocol::Resp2, &mut out);
        })
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("bulk_64b_pipeline_16", |b| {
        b.iter(|| {
            out.clear();
            for _ in 0..16 {
                Frame::Bulk(value.clone()).encode(Protocol::Resp2, &mut out);
            }
        })
    });
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("bulk_1mib", |b| {
        b.iter(|| {
            out.clear();
            Frame::Bulk(large.clone()).encode(Protocol::Resp2, &mut out);
        })
    });
    g.finish();
}

fn pool(c: &mut Criterion) {
    let metrics = PoolMetrics {
        hits: IntCounter::new("h", "h").unwrap(),
        misses: IntCounter::new("m", "m").unwrap(),
        pooled: IntGauge::new("p", "p").unwrap(),
    };
    let pool = BufferPool::new(64, 16 * 1024, metrics);
    let mut g = c.benchmark_group("buffer_pool");
    g.bench_function("get_put", |b| {
        b.iter(|| {
            let buf = pool.get();
            pool.put(black_box(buf));
        })
    });
    g.bench_function("lease_use_release", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut lease = pool.lease();
                lease.buf().extend_from_slice(b"+PONG\r\n");
                black_box(lease.buf().len());
            },
            BatchSize::SmallInput,
        )
    });
    // The alternative the pool replaces: a fresh 16 KiB buffer per use.
    g.bench_function("fresh_alloc", |b| {
        b.iter(|| black_box(BytesMut::with_capacity(16 * 1024)))
    });
    g.finish();
}

criterion_group!(benches, codec, pool);
criterion_main!(benches);

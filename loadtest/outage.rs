//! A Redis outage under load: drives a running tiergate over HTTP while it kills its
//! redis-server (SIGKILL) and starts a new one on the same port, then reports what clients saw.
//! Run by `loadtest/outage.sh`, which starts the gateway and the first redis-server.
//!
//! The mix, from `--concurrency` clients in a closed loop: 60% reads of keys held in L1, 20%
//! reads of keys that miss L1 (they must ask Redis), 20% writes. Reported per phase (before,
//! outage, after): answers by kind and their latency; writes acknowledged while Redis was dead
//! (must be 0); and the recovery time: from the new redis-server answering PING to the first
//! acknowledged write, and to the last failed request.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

struct Args {
    gateway: String,
    redis_port: u16,
    redis_pid: u32,
    concurrency: usize,
    kill_at: Duration,
    restart_at: Duration,
    duration: Duration,
}

fn args() -> Args {
    let mut a = Args {
        gateway: "http://127.0.0.1:8080".into(),
        redis_port: 6379,
        redis_pid: 0,
        concurrency: 32,
        kill_at: Duration::from_secs(4),
        restart_at: Duration::from_secs(8),
        duration: Duration::from_secs(14),
    };
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let secs = || Duration::from_secs_f64(v.parse().expect("seconds"));
        match k.as_str() {
            "--gateway" => a.gateway = v.clone(),
            "--redis-port" => a.redis_port = v.parse().expect("port"),
            "--redis-pid" => a.redis_pid = v.parse().expect("pid"),
            "--concurrency" => a.concurrency = v.parse().expect("count"),
            "--kill-at" => a.kill_at = secs(),
            "--restart-at" => a.restart_at = secs(),
            "--duration" => a.duration = secs(),
            _ => panic!("unknown flag {k}"),
        }
    }
    assert!(a.redis_pid != 0, "--redis-pid is required");
    a
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    HotRead,
    ColdRead,
    Write,
}

/// One answered (or failed) request.
struct Sample {
    at: Duration,
    op: Op,
    /// HTTP status, or 0 for a transport error.
    status: u16,
    code: String,
    latency: Duration,
}

const HOT_KEYS: usize = 1000;

#[tokio::main]
async fn main() {
    let a = args();
    let http = reqwest::Client::new();
    for i in 0..HOT_KEYS {
        let url = format!("{}/v1/kv/hot:{i}", a.gateway);
        let r = http.put(&url).body("v".repeat(64)).send().await.unwrap();
        assert_eq!(r.status(), 204, "seeding");
        http.get(&url).send().await.unwrap(); // into L1
    }

    let start = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::with_capacity(1 << 20)));
    let clients: Vec<_> = (0..a.concurrency)
        .map(|_| {
            let (http, base, samples) = (http.clone(), a.gateway.clone(), samples.clone());
            let duration = a.duration;
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while start.elapsed() < duration {
                    let roll = fastrand::u8(0..10);
                    let (op, req) = match roll {
                        0..=5 => (
                            Op::HotRead,
                            http.get(format!("{base}/v1/kv/hot:{}", fastrand::usize(..HOT_KEYS))),
                        ),
                        6 | 7 => (
                            Op::ColdRead,
                            http.get(format!("{base}/v1/kv/cold:{}", fastrand::u64(..))),
                        ),
                        _ => (
                            Op::Write,
                            http.put(format!("{base}/v1/kv/w:{}", fastrand::u32(..100_000)))
                                .body("w"),
                        ),
                    };
                    let t0 = Instant::now();
                    let (status, code) = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            let code = serde_json::from_str::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                                .unwrap_or_default();
                            (status, code)
                        }
                        Err(e) => (0, e.to_string()),
                    };
                    mine.push(Sample {
                        at: t0 - start,
                        op,
                        status,
                        code,
                        latency: t0.elapsed(),
                    });
                }
                samples.lock().unwrap().extend(mine);
            })
        })
        .collect();

    tokio::time::sleep_until((start + a.kill_at).into()).await;
    let kill_sent = start.elapsed();
    Command::new("kill")
        .args(["-9", &a.redis_pid.to_string()])
        .status()
        .expect("kill");
    // Only once SIGKILL is delivered: a request sent before this may still be answered.
    let killed = start.elapsed();
    tokio::time::sleep_until((start + a.restart_at).into()).await;
    let mut redis = restart_redis(a.redis_port);
    let back = wait_for_redis(a.redis_port).await - start;

    for c in clients {
        c.await.unwrap();
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let mut samples = std::mem::take(&mut *samples.lock().unwrap());
    samples.sort_by_key(|s| s.at);
    report(&samples, kill_sent, killed, back);
}

fn restart_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

/// When the new redis-server first answered PING.
async fn wait_for_redis(port: u16) -> Instant {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                return Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Phases: before the kill was sent; from then until the new Redis answered; after. Writes
/// count as acknowledged while Redis was dead only between the delivered kill and the restart.
fn report(samples: &[Sample], kill_sent: Duration, killed: Duration, back: Duration) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "redis-server killed at {:.0} ms, new one answering at {:.0} ms ({} requests)",
        ms(killed),
        ms(back),
        samples.len()
    );
    let phases = [
        ("before", Duration::ZERO, kill_sent),
        ("outage", kill_sent, back),
        ("after", back, Duration::MAX),
    ];
    println!(
        "| phase | op | requests | ok | 503 by code | other failures | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, from, to) in phases {
        for op in [Op::HotRead, Op::ColdRead, Op::Write] {
            let mut these: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.op == op && s.at >= from && s.at < to)
                .collect();
            if these.is_empty() {
                continue;
            }
            let ok = these.iter().filter(|s| good(s)).count();
            let mut codes: Vec<(String, usize)> = Vec::new();
            for s in these.iter().filter(|s| s.status == 503) {
                match codes.iter_mut().find(|(c, _)| *c == s.code) {
                    Some((_, n)) => *n += 1,
                    None => codes.push((s.code.clone(), 1)),
                }
            }
            let other = these.iter().filter(|s| !good(s) && s.status != 503).count();
            these.sort_by_key(|s| s.latency);
            let pct = |p: f64| ms(these[((these.len() - 1) as f64 * p) as usize].latency);
            let codes = codes
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "| {name} | {op:?} | {} | {ok} | {} | {other} | {:.2} | {:.2} | {:.2} |",
                these.len(),
                if codes.is_empty() { "-".into() } else { codes },
                pct(0.5),
                pct(0.99),
                pct(1.0)
            );
        }
    }
    let acked_while_dead = samples
        .iter()
        .filter(|s| s.op == Op::Write && s.status == 204 && s.at >= killed && s.at < back)
        .filter(|s| s.at + s.latency < back)
        .count();
    println!("writes acknowledged while Redis was dead: {acked_while_dead}");
    let first_write = samples
        .iter()
        .find(|s| s.op == Op::Write && s.status == 204 && s.at >= back);
    let last_failure = samples.iter().rev().find(|s| !good(s));
    if let Some(w) = first_write {
        println!(
            "recovery: first acknowledged write {:.0} ms after redis-server answered",
            ms(w.at + w.latency - back)
        );
    }
    match last_failure {
        Some(f) if f.at + f.latency >= back => println!(
            "recovery: last failed request ended {:.0} ms after redis-server answered",
            ms(f.at + f.latency - back)
        ),
        _ => println!("recovery: no request failed after redis-server answered"),
    }
    let early = samples
        .iter()
        .filter(|s| s.at + s.latency < kill_sent && !good(s))
        .count();
    println!("failures before the kill: {early}");
}

/// What a healthy gateway answers: 200 for a hit, 404 for a miss, 204 for a write.
fn good(s: &Sample) -> bool {
    matches!(s.status, 200 | 204 | 404)
}

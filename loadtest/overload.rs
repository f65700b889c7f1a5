//! Overload: many more clients than a door admits, every request a read that misses L1, and
//! Redis kept slow (a loop of `DEBUG SLEEP`), so admitted requests hold their slots. Reports
//! how fast the refusals (503 `overloaded`) come back next to the served answers, and the
//! gateway's RSS over the run (it must stay flat: refusals queue nothing).
//! Run by `loadtest/overload.sh`, which starts redis-server and tiergate with small limits.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

fn flag(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Resident memory of `pid`, from /proc.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let gateway = flag("--gateway", "http://127.0.0.1:8080");
    let redis_url = format!("redis://127.0.0.1:{}", flag("--redis-port", "6379"));
    let pid = flag("--pid", "0");
    let clients: usize = flag("--concurrency", "256").parse().unwrap();
    let seconds: f64 = flag("--duration", "10").parse().unwrap();
    let sleep_ms: u64 = flag("--sleep-ms", "50").parse().unwrap();

    let done = Arc::new(AtomicBool::new(false));
    // Redis busy most of the time: each DEBUG SLEEP blocks it whole.
    let slow = {
        let done = done.clone();
        let client = redis::Client::open(redis_url).unwrap();
        tokio::spawn(async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            while !done.load(Ordering::Relaxed) {
                let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(sleep_ms as f64 / 1000.0)
                    .query_async(&mut c)
                    .await;
            }
        })
    };
    let rss_start = rss_kib(&pid);
    let rss_peak = {
        let (done, pid) = (done.clone(), pid.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(&pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };

    let http = reqwest::Client::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, gateway) = (http.clone(), gateway.clone());
            tokio::spawn(async move {
                // (refused at once, refused after queueing, served, failed)
                let mut out = (Vec::new(), Vec::new(), Vec::new(), 0usize);
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    let t0 = Instant::now();
                    let r = http
                        .get(format!("{gateway}/v1/kv/miss:{c}:{n}"))
                        .send()
                        .await;
                    let took = t0.elapsed();
                    match r {
                        Ok(r) if r.status() == 503 => {
                            let body = r.text().await.unwrap_or_default();
                            if !body.contains("\"overloaded\"") {
                                out.3 += 1;
                            } else if body.contains("queue timeout") {
                                out.1.push(took);
                            } else {
                                out.0.push(took);
                            }
                        }
                        Ok(r) if r.status() == 404 => out.2.push(took),
                        _ => out.3 += 1,
                    }
                }
                out
            })
        })
        .collect();
    let (mut full, mut waited, mut served, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (r, w, s, f) = t.await.unwrap();
        full.extend(r);
        waited.extend(w);
        served.extend(s);
        failed += f;
    }
    done.store(true, Ordering::Relaxed);
    let _ = slow.await;
    let peak = rss_peak.await.unwrap_or(0);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| answer | count | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("refused at once (queue full)", &mut full),
        ("refused after queue_timeout", &mut waited),
        ("served (404)", &mut served),
    ] {
        v.sort();
        if v.is_empty() {
            println!("| {name} | 0 | - | - | - |");
            continue;
        }
        let at = |p: f64| ms(v[((v.len() - 1) as f64 * p) as usize]);
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    println!("other answers or transport errors: {failed}");
    println!(
        "tiergate RSS: {} KiB at start, {} KiB peak, {} KiB at the end",
        rss_start,
        peak,
        rss_kib(&pid)
    );
}

//! Zero-downtime restart of the real binary: a second instance starts on the same ports
//! (SO_REUSEPORT), the first gets SIGTERM, and a steady load of clients sees no failed
//! request across the switch.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use support::{eventually, metric, Binary, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let redis = Redis::start();
    let url = redis.url();
    let env = [
        ("TIERGATE_L2_URL", url.as_str()),
        ("TIERGATE_SHUTDOWN_DRAIN_DELAY", "500ms"),
    ];
    let mut old = Binary::start(&env);
    old.wait_ready().await;
    let base = format!("http://{}/v1/kv", old.http);

    // 16 clients in a closed loop, each writing a key and reading it back, over a shared
    // keep-alive pool: the way a backend service talks to the gateway.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (client, base) = (client.clone(), base.clone());
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("{base}/c{c}:{}", n % 64);
                    let value = format!("{c}:{n}");
                    let put = client.put(&key).body(value.clone()).send().await;
                    let outcome = match put {
                        Ok(r) if r.status() == 204 => match client.get(&key).send().await {
                            Ok(r) if r.status() == 200 => match r.text().await {
                                Ok(body) if body == value => Ok(()),
                                Ok(body) => Err(format!("read {body:?}, wrote {value:?}")),
                                Err(e) => Err(format!("GET body: {e}")),
                            },
                            Ok(r) => Err(format!("GET {}", r.status())),
                            Err(e) => Err(format!("GET: {e:?}")),
                        },
                        Ok(r) => Err(format!("PUT {}", r.status())),
                        Err(e) => Err(format!("PUT: {e:?}")),
                    };
                    match outcome {
                        Ok(()) => done.fetch_add(2, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(e);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let past = |n: u64| {
        let done = done.clone();
        async move {
            eventually("requests are answered", || async {
                done.load(Ordering::Relaxed) > n
            })
            .await
        }
    };

    past(500).await;
    let new = Binary::start_on(old.addrs(), &env);
    new.wait_ready().await;
    let before_term = done.load(Ordering::Relaxed);
    old.terminate();
    assert_eq!(
        old.wait_exit(),
        Some(0),
        "the old instance drained and exited"
    );
    let at_exit = done.load(Ordering::Relaxed);
    past(at_exit + 500).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "restart under load: {total} requests answered ({before_term} before SIGTERM, {} during \
         the drain, {} after the old instance exited), {} failed",
        at_exit - before_term,
        total - at_exit,
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let m = new.metrics().await;
    assert!(
        metric(
            &m,
            "tiergate_http_requests_total{route=\"kv_get\",status=\"200\"}"
        ) > 0.0,
        "the new instance took over"
    );
    assert!(
        old.log().contains("Connection: close"),
        "the old instance drained its clients: {}",
        old.log()
    );
}

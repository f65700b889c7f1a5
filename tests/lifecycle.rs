//! The gateway's life: standalone mode, Redis down at start, down or hung during service (the
//! circuit breaker), graceful shutdown of the real binary under load, and config checking.

mod support;

use std::{process::Command, time::Duration};
use support::{error_code, eventually, metric, Binary, Gateway, Redis};
use tiergate::config::HumanDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_binary_serves_the_kv_api_without_redis() {
    let bin = Binary::start(&[]);
    let base = format!("http://{}", bin.http);
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/v1/kv/greeting?ttl=60s"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(format!("{base}/v1/kv/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "L1");
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = http
        .post(format!("{base}/v1/kv:batchGet"))
        .body(r#"{"keys":["greeting","nope"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        r#"{"values":{"greeting":"hello","nope":null}}"#
    );
    assert_eq!(
        http.delete(format!("{base}/v1/kv/greeting"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        http.get(format!("{base}/v1/kv/greeting"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let ready = http
        .get(format!("http://{}/readyz", bin.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let log = bin.log();
    assert_eq!(log.matches("standalone memory mode").count(), 1, "{log}");
    // No Redis by design, which an alert on tiergate_l2_up must be able to tell from a
    // Redis that is down; and the process' own figures under the names every exporter uses.
    let m = bin.metrics().await;
    assert_eq!(support::metric(&m, "tiergate_l2_configured"), 0.0, "{m}");
    assert_eq!(support::metric(&m, "tiergate_l2_up"), 0.0);
    // Whole seconds, as the prometheus crate counts them: 0 this early.
    assert!(support::metric(&m, "process_cpu_seconds_total") >= 0.0);
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(support::metric(&m, series) > 0.0, "{series} in {m}");
    }
    assert!(
        support::metric(&m, "process_open_fds") < support::metric(&m, "process_max_fds"),
        "{m}"
    );
    let build = m
        .lines()
        .find(|l| l.starts_with("tiergate_build_info{"))
        .expect("build info");
    assert!(
        build.contains("version=\"0.") && build.contains("commit=\""),
        "{build}"
    );
    assert!(!build.contains("commit=\"\""), "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_ttl_expires() {
    let gw = Gateway::start(support::config(None)).await;
    let r = gw
        .http
        .put(format!("{}?ttl=300ms", gw.kv("t")))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.put("forever", "v").await.status(), 204);
    assert_eq!(gw.get("t").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.get("t").await.status(), 404);
    assert_eq!(
        gw.http.delete(gw.kv("t")).send().await.unwrap().status(),
        404
    );
    assert_eq!(gw.get("forever").await.status(), 200, "no ttl: kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_up() {
    let mut redis = Redis::stopped();
    let gw = Gateway::start(support::config(Some(&redis.url()))).await;

    assert_eq!(gw.admin_status("/healthz").await, 200, "alive");
    eventually("readyz reports L2 down", || async {
        gw.admin_status("/readyz").await == 503
    })
    .await;
    let r = gw.get("k").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(error_code(r).await.starts_with("l2_"));
    let r = gw.put("k", "v").await;
    assert_eq!(
        r.status(),
        503,
        "a write L2 did not take is not acknowledged"
    );

    redis.start_again();
    gw.wait_ready().await;
    assert_eq!(gw.put("k", "v").await.status(), 204);
    assert_eq!(gw.get("k").await.text().await.unwrap(), "v");
    let m = gw.metrics().await;
    assert_eq!(support::metric(&m, "tiergate_l2_up"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_serves_l1_hits_and_refuses_writes_then_recovers() {
    let mut redis = Redis::start();
    let gw = Gateway::start_ready(support::config(Some(&redis.url()))).await;
    gw.put_heard("cached", "v").await;
    assert_eq!(gw.get("cached").await.headers()["x-cache"], "L2");

    redis.stop();
    eventually("readyz reports L2 down", || async {
        gw.admin_status("/readyz").await == 503
    })
    .await;
    let r = gw.get("cached").await;
    assert_eq!(r.status(), 200, "L1 hits are served while L2 is down");
    assert_eq!(r.headers()["x-cache"], "L1");
    assert_eq!(gw.get("uncached").await.status(), 503);
    assert_eq!(gw.put("cached", "new").await.status(), 503);
    assert_eq!(
        gw.get("cached").await.text().await.unwrap(),
        "v",
        "the refused write left L1 alone"
    );
    assert_eq!(
        gw.http
            .delete(gw.kv("cached"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );

    redis.start_again();
    gw.wait_ready().await;
    assert_eq!(gw.put("after", "ok").await.status(), 204);
    assert_eq!(gw.get("after").await.text().await.unwrap(), "ok");
    let m = gw.metrics().await;
    assert!(support::metric(&m, "tiergate_l2_errors_total{op=\"set\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_hung_redis_time_out_and_the_next_ones_reconnect() {
    let redis = Redis::start();
    let mut cfg = support::config(Some(&redis.url()));
    cfg.l2.timeout = HumanDuration(Duration::from_millis(200));
    cfg.l2.breaker_failures = 100;
    // Larger than loopback's socket buffers can hold (tcp_rmem's maximum is commonly 6 or
    // 32 MiB): sending it waits on Redis reading.
    cfg.limits.max_value_bytes = tiergate::config::ByteSize(96 << 20);
    cfg.resp.max_request_bytes = tiergate::config::ByteSize(100 << 20);
    let gw = Gateway::start_ready(cfg).await;
    let resp_url = format!("redis://{}", gw.running.as_ref().unwrap().resp_addr);
    let mut c = redis::Client::open(resp_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(gw.put("k", "v1").await.status(), 204);

    // Redis hangs for longer than l2.timeout: writes in flight on the write connection, one
    // alone and a pipelined run, fail with a timeout instead of waiting it out; so does one
    // too large for the socket's buffers, whose sending waits on Redis reading.
    let sleeper = redis.pause(3.0);
    let awake = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let awake = awake.clone();
        std::thread::spawn(move || {
            sleeper.join().unwrap();
            awake.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = gw.put("k", "v2").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "l2_timeout");
    let mut pipe = redis::pipe();
    pipe.set("a", 1).set("b", 2);
    let err = pipe.query_async::<()>(&mut c).await.unwrap_err();
    assert!(err.to_string().contains("did not answer in time"), "{err}");
    // Over RESP, which has no deadline of its own above L2's.
    let mut big = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", 96 << 20).into_bytes();
    big.resize(big.len() + (96 << 20), b'x');
    big.extend_from_slice(b"\r\nQUIT\r\n");
    let reply = support::raw(gw.running.as_ref().unwrap().resp_addr, &big).await;
    assert!(
        reply.starts_with("-TRYAGAIN L2 did not answer in time"),
        "{reply}"
    );
    assert!(
        !awake.load(std::sync::atomic::Ordering::SeqCst),
        "refused while Redis still slept, not once it woke and read the value"
    );
    watch.join().unwrap();

    // The late replies went with the connection that timed out: the next writes get their
    // own answers on a new one.
    assert_eq!(gw.put("k", "v3").await.status(), 204);
    let _: () = redis::AsyncCommands::set(&mut c, "a", 3).await.unwrap();
    let got: String = redis::cmd("GET").arg("k").query(&mut redis.conn()).unwrap();
    assert_eq!(got, "v3");
    let a: i64 = redis::cmd("GET").arg("a").query(&mut redis.conn()).unwrap();
    assert_eq!(a, 3);
    let m = gw.metrics().await;
    assert!(metric(&m, "tiergate_l2_errors_total{op=\"set\"}") >= 1.0);
    assert!(metric(&m, "tiergate_l2_errors_total{op=\"mset\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_opens_the_circuit_and_its_return_closes_it() {
    let redis = Redis::start();
    let mut cfg = support::config(Some(&redis.url()));
    cfg.l2.timeout = HumanDuration(Duration::from_millis(200));
    cfg.l2.connect_timeout = HumanDuration(Duration::from_millis(200));
    cfg.l2.breaker_failures = 3;
    // Long enough that only the health probe can close it within the test.
    cfg.l2.breaker_cooldown = HumanDuration(Duration::from_secs(600));
    let gw = Gateway::start_ready(cfg).await;
    gw.put_heard("cached", "v").await;
    assert_eq!(gw.get("cached").await.headers()["x-cache"], "L2");

    // Redis hangs: it accepts connections but answers nothing.
    let sleeper = redis.pause(3.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let misses: Vec<_> = (0..10)
        .map(|i| {
            let (http, url) = (gw.http.clone(), gw.kv(&format!("miss{i}")));
            tokio::spawn(async move { http.get(url).send().await.unwrap() })
        })
        .collect();
    for m in misses {
        let r = m.await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(error_code(r).await, "l2_timeout");
    }
    // Past breaker_failures timeouts in a row, calls are refused without waiting on Redis.
    let r = gw.get("another").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "l2_circuit_open");
    let r = gw.put("cached", "new").await;
    assert_eq!(
        error_code(r).await,
        "l2_circuit_open",
        "writes are refused too"
    );
    let r = gw.get("cached").await;
    assert_eq!(r.status(), 200, "L1 hits are still served");
    assert_eq!(r.text().await.unwrap(), "v");
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "tiergate_l2_circuit_open"), 1.0);
    assert!(metric(&m, "tiergate_l2_circuit_rejected_total") >= 2.0);

    // Redis wakes; the health probe closes the circuit, no trial call needed.
    sleeper.join().unwrap();
    eventually("the circuit closes", || async {
        metric(&gw.metrics().await, "tiergate_l2_circuit_open") == 0.0
    })
    .await;
    assert_eq!(gw.put("after", "ok").await.status(), 204);
    assert_eq!(gw.get("after").await.text().await.unwrap(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    };
    use std::time::Instant;

    let mut redis = Redis::start();
    let gw = Arc::new(Gateway::start_ready(support::config(Some(&redis.url()))).await);
    for i in 0..50 {
        gw.put_heard(&format!("hot:{i}"), "v").await;
        assert_eq!(gw.get(&format!("hot:{i}")).await.status(), 200); // into L1
    }

    // 16 clients in a closed loop: L1-hit reads, reads that miss L1, and writes. Each answer
    // is kept with when its request started and ended.
    struct Answer {
        write: bool,
        hot: bool,
        status: u16,
        code: String,
        sent: Instant,
        done: Instant,
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (gw, stop, answers) = (gw.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (write, hot) = (n.is_multiple_of(4), n % 4 == 1);
                    let sent = Instant::now();
                    let r = if write {
                        gw.put(&format!("w:{c}:{n}"), "x").await
                    } else if hot {
                        gw.get(&format!("hot:{}", n % 50)).await
                    } else {
                        gw.get(&format!("cold:{c}:{n}")).await
                    };
                    let status = r.status().as_u16();
                    let code = if status == 503 {
                        error_code(r).await
                    } else {
                        String::new()
                    };
                    answers.lock().unwrap().push(Answer {
                        write,
                        hot,
                        status,
                        code,
                        sent,
                        done: Instant::now(),
                    });
                }
            })
        })
        .collect();

    // Load first (not a fixed sleep: a busy CI machine may answer slowly).
    support::eventually("there is load", || async {
        answers.lock().unwrap().len() > 100
    })
    .await;
    let killing = Instant::now();
    redis.stop(); // SIGKILL, and reaped
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let restarting = Instant::now();
    redis.start_again();
    let back = Instant::now();
    support::eventually("a write is acknowledged again", || async {
        gw.put("after", "ok").await.status() == 204
    })
    .await;
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let answers = answers.lock().unwrap();
    assert!(
        answers.iter().filter(|a| a.done < killing).count() > 100,
        "there was load"
    );
    for a in answers.iter() {
        assert!(
            matches!(a.status, 200 | 204 | 404 | 503),
            "status {}",
            a.status
        );
        if a.status == 503 {
            assert!(
                ["l2_unavailable", "l2_timeout", "l2_circuit_open"].contains(&a.code.as_str()),
                "{}",
                a.code
            );
        }
        if a.done < killing {
            assert_ne!(a.status, 503, "nothing failed before the kill");
        }
        if a.write && a.status == 204 {
            // A write in flight at the kill may have been applied and answered before Redis
            // died; one sent after the kill and answered before the restart cannot have been.
            assert!(
                !(a.sent > killed && a.done < restarting),
                "a write was acknowledged while Redis was dead"
            );
        }
        if a.hot && a.done < restarting {
            // Until Redis is back (and the bus rejoins and flushes L1), L1 answers them.
            assert_eq!(a.status, 200, "an L1 hit failed during the outage");
        }
    }
    let failed = answers.iter().filter(|a| a.status == 503).count();
    eprintln!(
        "outage under load: {} answers, {failed} refused (503); acknowledged writes again {:?} after redis-server was back",
        answers.len(),
        recovered - back
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_admission_limits_a_door_refuses_at_once() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let redis = Redis::start();
    let mut cfg = support::config(Some(&redis.url()));
    cfg.admission.max_inflight = 4;
    cfg.admission.max_queue = 4;
    cfg.admission.queue_timeout = HumanDuration(Duration::from_secs(30));
    // Longer than the pauses below, so admitted reads wait Redis out rather than time out,
    // and the moments the test looks at (slots and queue full) last seconds.
    cfg.l2.timeout = HumanDuration(Duration::from_secs(10));
    let gw = Arc::new(Gateway::start_ready(cfg).await);
    let resp_url = format!("redis://{}", gw.running.as_ref().unwrap().resp_addr);

    // Redis sleeps (less than l2.timeout): every read that misses L1 holds its slot until it
    // wakes.
    let sleeper = redis.pause(3.0);
    let awake = Arc::new(AtomicBool::new(false));
    let watch = {
        let awake = awake.clone();
        std::thread::spawn(move || {
            sleeper.join().unwrap();
            awake.store(true, Ordering::SeqCst);
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let (gw, awake) = (gw.clone(), awake.clone());
            tokio::spawn(async move {
                let r = gw.get(&format!("miss:{i}")).await;
                let during_sleep = !awake.load(Ordering::SeqCst);
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let code = if status == 503 {
                    error_code(r).await
                } else {
                    String::new()
                };
                (status, code, retry_after, during_sleep)
            })
        })
        .collect();

    // While the slots and the queue are full: the gauges show the bound, and a RESP client
    // (a door with its own limits) is still served or told BUSY, never left waiting.
    support::eventually("4 in flight and 4 queued", || async {
        let m = gw.metrics().await;
        metric(&m, "tiergate_admission_inflight{door=\"http\"}") == 4.0
            && metric(&m, "tiergate_admission_queued{door=\"http\"}") == 4.0
    })
    .await;

    let mut refused = 0;
    let mut served = 0;
    for r in requests {
        let (status, code, retry_after, during_sleep) = r.await.unwrap();
        if code == "overloaded" {
            refused += 1;
            assert!(retry_after);
            assert!(during_sleep, "refused at once, not after Redis woke");
        } else {
            assert_eq!(status, 404, "served once Redis woke");
            served += 1;
        }
    }
    assert_eq!(
        (refused, served),
        (12, 8),
        "4 in flight + 4 queued, the rest refused"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "tiergate_admission_rejected_total{door=\"http\",reason=\"queue_full\"}"
        ),
        12.0
    );
    watch.join().unwrap();

    // The RESP door has its own slots: fill them with clients blocked on a sleeping Redis,
    // and the next command is answered -BUSY at once.
    let client = redis::Client::open(resp_url).unwrap();
    // The client's own default response timeout is shorter than the wait under test.
    let patient =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(20)));
    let mut conns = Vec::new();
    for _ in 0..9 {
        conns.push(
            client
                .get_multiplexed_async_connection_with_config(&patient)
                .await
                .unwrap(),
        );
    }
    let mut c = conns.pop().unwrap();
    let sleeper = redis.pause(3.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let blocked: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                redis::cmd("GET")
                    .arg(format!("resp:{i}"))
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
        })
        .collect();
    support::eventually("RESP slots and queue full", || async {
        let m = gw.metrics().await;
        metric(&m, "tiergate_admission_inflight{door=\"resp\"}") == 4.0
            && metric(&m, "tiergate_admission_queued{door=\"resp\"}") == 4.0
    })
    .await;
    let err = redis::cmd("GET")
        .arg("one-more")
        .query_async::<Option<String>>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BUSY"), "{err}");
    // Connection commands are still served, so a new client can connect (its handshake runs
    // CLIENT SETINFO) and PING while data commands are shed.
    let mut newcomer = client
        .get_multiplexed_async_connection_with_config(&patient)
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut newcomer).await.unwrap();
    assert_eq!(pong, "PONG");
    sleeper.join().unwrap();
    for b in blocked {
        assert_eq!(
            b.await.unwrap().unwrap(),
            None,
            "the admitted ones are answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let redis = Redis::start();
    let mut bin = Binary::start(&[
        ("TIERGATE_L2_URL", &redis.url()),
        ("TIERGATE_L2_TIMEOUT", "20s"),
    ]);
    let base = format!("http://{}", bin.http);
    let admin = format!("http://{}", bin.admin);
    let http = reqwest::Client::new();
    eventually("binary ready", || async {
        matches!(http.get(format!("{admin}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let mut c = redis.conn();
    for i in 0..20 {
        redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .exec(&mut c)
            .unwrap();
    }

    // Redis sleeps, so every read below is in flight (waiting on L2) when SIGTERM lands.
    let sleeper = redis.pause(2.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/v1/kv/k{i}");
            tokio::spawn(async move {
                let r = http
                    .get(url)
                    .send()
                    .await
                    .expect("in-flight request completes");
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    bin.terminate();

    eventually("readyz turns 503 during the drain", || async {
        matches!(http.get(format!("{admin}/readyz")).send().await, Ok(r) if r.status() == 503)
    })
    .await;
    for (i, t) in in_flight.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (200, format!("v{i}")));
    }
    sleeper.join().unwrap();
    assert_eq!(bin.wait_exit(), Some(0), "clean shutdown exits 0");
    assert!(
        std::net::TcpStream::connect(bin.http).is_err(),
        "the listener is closed"
    );
}

#[test]
fn check_config_reports_every_bad_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[http]\nlisten = \"nowhere\"\n[l2]\ntimeout = \"soon\"\nconnections = 0\n",
    )
    .unwrap();
    let out = Command::new(support::bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TIERGATE_LIMITS_MAX_KEY_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "http.listen",
        "l2.timeout",
        "limits.max_key_bytes (from TIERGATE_LIMITS_MAX_KEY_BYTES)",
    ] {
        assert!(err.contains(key), "{key} not reported in:\n{err}");
    }

    // Checks across keys come in the same run, not once the bad keys are fixed.
    std::fs::write(
        &path,
        "[http]\nlisten = \"127.0.0.1:9090\"\n[l2]\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(support::bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in ["l2.timeout: ", "admin.listen: must differ from http.listen"] {
        assert!(err.contains(line), "{line:?} not reported in:\n{err}");
    }

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tiergate.toml");
    let out = Command::new(support::bin())
        .args(["check-config", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(support::bin())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "usage errors exit 64");
}

#[test]
fn bind_failure_exits_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(support::bin())
        .env(
            "TIERGATE_HTTP_LISTEN",
            taken.local_addr().unwrap().to_string(),
        )
        .env("TIERGATE_HTTP_REUSE_PORT", "false")
        .env("TIERGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("TIERGATE_RESP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_log_in_to_redis_and_select_the_database_of_the_url() {
    // Writes go over tiergate's own connections (`cache/pipe.rs`), reads over redis-rs: both
    // must log in with the URL's password and use its database.
    let redis = Redis::start_with(&["--requirepass", "l2-secret"]);
    let url = format!("redis://:l2-secret@127.0.0.1:{}/3", redis.port);
    let gw = Gateway::start_ready(support::config(Some(&url))).await;
    assert_eq!(gw.put("logged-in", "yes").await.status(), 204);
    let r = gw.get("logged-in").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "yes");

    let mut direct = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Option<String> = redis::cmd("GET")
        .arg("logged-in")
        .query(&mut direct)
        .unwrap();
    assert_eq!(stored.as_deref(), Some("yes"), "written to database 3");
    let in_db0: Option<String> = redis::cmd("SELECT")
        .arg(0)
        .exec(&mut direct)
        .and_then(|()| redis::cmd("GET").arg("logged-in").query(&mut direct))
        .unwrap();
    assert_eq!(in_db0, None, "not to database 0");
}

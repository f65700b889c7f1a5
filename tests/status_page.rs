//! The live status page on the admin port: `/status.json` (raw counters and gauges, budgets,
//! mode, uptime, version) moves with load through both doors; `/` is one self-contained HTML
//! page for browsers and the plain text for everyone else; and, in Debian's headless
//! Chromium, the real page renders request rates, hit ratios and latencies (HTTP's, and
//! RESP's overall and per command class) as numbers that change between two looks.
//!
//! `STATUS_SCREENSHOT=/tmp/status.png` makes the browser test also save a screenshot of the
//! page under load.

mod support;

use serde_json::Value;
use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use support::{wire::Wire, Gateway, Redis};

const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

fn resp_addr(gw: &Gateway) -> SocketAddr {
    gw.running.as_ref().unwrap().resp_addr
}

async fn status(gw: &Gateway) -> Value {
    let r = gw.admin_get("/status.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

fn n(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for part in path.split('.') {
        cur = &cur[part];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {cur} in {v:#}"))
}

/// Some reads and writes through each door: `ops` HTTP requests and as many RESP commands,
/// with misses among the reads so neither hit ratio is trivially 100%.
async fn load(gw: &Gateway, ops: usize) {
    let mut resp = Wire::connect(resp_addr(gw)).await;
    for i in 0..ops {
        let key = format!("status:{}", i % 10);
        if i < 10 {
            assert_eq!(gw.put(&key, "v").await.status(), 204);
            let reply = resp.call(&[b"SET", key.as_bytes(), b"v"]).await;
            assert_eq!(reply, b"+OK\r\n");
        } else {
            let missing = format!("status:missing:{i}");
            let k = if i % 3 == 0 { &missing } else { &key };
            gw.get(k).await;
            resp.call(&[b"GET", k.as_bytes()]).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_what_both_doors_served() {
    let redis = Redis::start();
    let mut c = support::config(Some(&redis.url()));
    c.admin.hot_keys_sample = 1;
    c.resp.max_connections = 77;
    c.admission.max_inflight = 33;
    let gw = Gateway::start_ready(c).await;

    let before = status(&gw).await;
    load(&gw, 200).await;
    let after = status(&gw).await;

    for s in [&before, &after] {
        assert_eq!(s["mode"], "tiered");
        assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(s["ready"], true);
        assert_eq!(s["l2"]["configured"], true);
        assert_eq!(s["l2"]["up"], true);
        assert_eq!(s["l2"]["circuit_open"], false);
        assert_eq!(s["bus"]["subscribed"], true);
        assert_eq!(n(s, "resp.max_connections"), 77.0, "the budget from config");
        assert_eq!(n(s, "http.admission.max_in_flight"), 33.0);
        assert_eq!(n(s, "resp.admission.max_in_flight"), 33.0);
        for gauge in [
            "http.admission.in_flight",
            "http.admission.queued",
            "http.admission.shed",
            "resp.admission.queued",
            "resp.admission.shed",
            "background.in_flight",
            "l1.entries",
            "l1.bytes",
            "l2.errors",
            "l2.in_flight",
            "bus.invalidations",
            "bus.flushes",
            "http.connections.open",
            "resp.connections.open",
            "admin.connections.open",
            "process.rss_bytes",
            "process.open_fds",
            "process.max_fds",
        ] {
            n(s, gauge);
        }
        // The latency histogram: cumulative buckets, ending at the count.
        let buckets = s["http"]["latency"]["buckets"].as_array().unwrap();
        assert!(buckets.len() > 10, "{buckets:?}");
        let cums: Vec<f64> = buckets.iter().map(|b| b[1].as_f64().unwrap()).collect();
        assert!(cums.windows(2).all(|w| w[0] <= w[1]), "{cums:?}");
        assert!(*cums.last().unwrap() <= n(s, "http.latency.count"));
        // RESP's, in the same shape: all classes together, then per class.
        let resp = &s["resp"]["latency"];
        let mut class_counts = 0.0;
        for (path, l) in std::iter::once(("resp.latency".to_string(), resp)).chain(
            ["read", "write", "forwarded", "connection"]
                .iter()
                .map(|c| (format!("resp.latency.classes.{c}"), &resp["classes"][c])),
        ) {
            let buckets = l["buckets"]
                .as_array()
                .unwrap_or_else(|| panic!("{path}: {l}"));
            assert!(buckets.len() > 10, "{path}: {buckets:?}");
            let les: Vec<f64> = buckets.iter().map(|b| b[0].as_f64().unwrap()).collect();
            assert!(les.windows(2).all(|w| w[0] < w[1]), "{path}: {les:?}");
            let cums: Vec<f64> = buckets.iter().map(|b| b[1].as_f64().unwrap()).collect();
            assert!(cums.windows(2).all(|w| w[0] <= w[1]), "{path}: {cums:?}");
            assert!(*cums.last().unwrap() <= n(s, &format!("{path}.count")));
            assert!(n(s, &format!("{path}.sum")) >= 0.0);
            if path != "resp.latency" {
                class_counts += n(s, &format!("{path}.count"));
            }
        }
        assert_eq!(
            class_counts,
            n(s, "resp.latency.count"),
            "all = the sum of classes"
        );
    }
    let moved = |path: &str| n(&after, path) - n(&before, path);
    // 200 requests each: 10 writes and 190 reads.
    assert!(
        moved("http.requests") >= 200.0,
        "{}",
        moved("http.requests")
    );
    assert!(moved("http.latency.count") >= 200.0);
    assert!(moved("resp.commands") >= 200.0);
    // RESP latency: 10 SETs (write) and 190 GETs (read), each observed once.
    assert!(moved("resp.latency.count") >= 200.0);
    assert!(moved("resp.latency.sum") > 0.0);
    assert!(moved("resp.latency.classes.write.count") >= 10.0);
    assert!(moved("resp.latency.classes.read.count") >= 190.0);
    assert!(moved("resp.latency.classes.read.sum") > 0.0);
    let last = |path: &str| {
        let b = after[path]["latency"]["buckets"].as_array().unwrap();
        let a = before[path]["latency"]["buckets"].as_array().unwrap();
        b.last().unwrap()[1].as_f64().unwrap() - a.last().unwrap()[1].as_f64().unwrap()
    };
    assert!(last("resp") > 0.0, "the RESP buckets moved");
    assert!(moved("l1.hits") > 0.0 && moved("l1.misses") > 0.0);
    assert!(moved("l2.misses") > 0.0, "reads of absent keys reach L2");
    assert!(moved("uptime_seconds") > 0.0);
    assert!(moved("http.connections.accepted") >= 0.0);
    assert!(n(&after, "resp.connections.accepted") >= 1.0);
    assert_eq!(after["hot_keys"]["shown"], true, "loopback sees key names");
    let hot = after["hot_keys"]["keys"].to_string();
    assert!(hot.contains("status:"), "{hot}");

    // A browser gets the self-contained page; curl (no text/html in Accept) the text.
    let page = gw
        .http
        .get(format!("{}/", gw.admin))
        .header("accept", HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("status.json") && html.contains("<script>"));
    for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere: {external}"
        );
    }
    let text = gw.admin_get("/").await;
    assert_eq!(text.headers()["content-type"], "text/plain; charset=utf-8");
    let text = text.text().await.unwrap();
    assert!(
        text.starts_with("tiergate ") && text.contains("mode: tiered"),
        "{text}"
    );
    let txt = gw.admin_get("/status.txt").await.text().await.unwrap();
    assert!(
        txt.starts_with("tiergate ") && txt.contains("hot keys"),
        "{txt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_in_standalone_mode() {
    let gw = Gateway::start_ready(support::config(None)).await;
    load(&gw, 20).await;
    let s = status(&gw).await;
    assert_eq!(s["mode"], "standalone");
    assert_eq!(s["l2"]["configured"], false);
    assert_eq!(s["l2"]["up"], false);
    assert_eq!(s["bus"]["subscribed"], false);
    assert!(n(&s, "http.requests") >= 20.0);
    assert!(n(&s, "resp.commands") >= 20.0);
}

/// Runs `chromium` headless on `url` and returns the DOM after 10 s of virtual time (every
/// timer and fetch of the page's first ten seconds, run as fast as they can: its rates are
/// then taken over the few real milliseconds those fetches took).
fn dump_dom(chromium: &Path, url: &str, profile: &Path) -> String {
    let out = headless(chromium, profile)
        .args([
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Headless Chromium with its own profile in `profile`, killed if it runs past 90 s.
fn headless(chromium: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("90").arg(chromium).args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Saves a screenshot of the page at `url` after about 8 s of real time (virtual time would
/// fire the page's timers back to back, its rates then taken over milliseconds): the page is
/// framed in one whose load event waits on an image a local listener answers late, and
/// headless Chromium shoots once the load event fired.
fn screenshot(chromium: &Path, url: &str, png: &Path) {
    use std::io::{Read, Write};
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_addr = slow.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in slow.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let _ = conn.read(&mut [0; 4096]);
                std::thread::sleep(Duration::from_secs(8));
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let frame = dir.path().join("frame.html");
    std::fs::write(
        &frame,
        format!(
            "<!DOCTYPE html><html><body style=\"margin:0;background:#0f1419\">\
             <iframe src=\"{url}\" style=\"border:0;width:1280px;height:900px\"></iframe>\
             <img src=\"http://{slow_addr}/late.png\" style=\"display:none\"></body></html>"
        ),
    )
    .unwrap();
    let status = headless(chromium, &dir.path().join("profile"))
        .args(["--hide-scrollbars", "--window-size=1280,900"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", frame.display()))
        .status()
        .unwrap();
    assert!(status.success());
}

/// The element `id`'s raw figure (its data-v attribute), if it shows a number.
fn figure(dom: &str, id: &str) -> Option<f64> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag = &dom[at..at + dom[at..].find('>')?];
    let v = tag.split("data-v=\"").nth(1)?.split('"').next()?;
    v.parse().ok()
}

/// The text of element `id` (up to its first child tag).
fn shown(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let after = &dom[at + dom[at..].find('>').unwrap() + 1..];
    after[..after.find('<').unwrap()].to_string()
}

/// Debian's chromium; None (the test is skipped, saying so) where it is missing, which CI
/// does not allow.
fn chromium() -> Option<std::path::PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: install Debian's chromium (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: no /usr/bin/chromium (scripts/test.sh installs it; CI runs this test)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_renders_live_figures_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let redis = Redis::start();
    let mut c = support::config(Some(&redis.url()));
    c.admin.hot_keys_sample = 1;
    // An origin with a loader: "user:" keys are read through to it (it answers 404 to most).
    let origin = support::origin::Origin::start().await;
    origin.answer("/users/1", support::origin::Answer::ok("one"));
    c.origins = vec![toml::from_str(&format!(
        "name = \"users\"\nupstreams = [{:?}]\n[[loaders]]\nprefix = \"user:\"\npath = \"/users/{{id}}\"\nneg_ttl = \"0s\"",
        origin.url()
    ))
    .unwrap()];
    let gw = Arc::new(Gateway::start_ready(c).await);
    load(&gw, 50).await; // the keys the load reads exist

    // A bounded load through both doors while the browser looks: a request at a time per
    // task, a millisecond apart, at most 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..3 {
        let (gw, stop) = (gw.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut resp = Wire::connect(resp_addr(&gw)).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                let key = if t == 0 && i % 8 == 1 {
                    format!("user:{}", i % 3)
                } else if i.is_multiple_of(4) {
                    format!("status:miss:{t}:{i}")
                } else {
                    format!("status:{}", i % 10)
                };
                if t == 2 {
                    resp.call(&[b"GET", key.as_bytes()]).await;
                } else {
                    gw.get(&key).await;
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    let url = format!("{}/", gw.admin);
    let profile = tempfile::tempdir().unwrap();
    let look = || {
        let (chromium, url, profile) = (chromium.clone(), url.clone(), profile.path().to_owned());
        tokio::task::spawn_blocking(move || dump_dom(&chromium, &url, &profile))
    };
    let first = look().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = look().await.unwrap();
    if let Some(png) = std::env::var_os("STATUS_SCREENSHOT") {
        let png = std::path::PathBuf::from(png);
        let (chromium, url) = (chromium.clone(), url.clone());
        tokio::task::spawn_blocking(move || screenshot(&chromium, &url, &png))
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    for dom in [&first, &second] {
        assert!(
            !dom.contains("<body class=\"stale\""),
            "the page fetched status.json: {}",
            shown(dom, "fetch-error")
        );
        assert!(shown(dom, "live-text").starts_with("live"), "{dom}");
        assert_eq!(shown(dom, "mode"), "tiered");
        assert_eq!(shown(dom, "l2-state"), "UP");
        assert_eq!(shown(dom, "bus-state"), "SUBSCRIBED");
        for id in [
            "http-rps",
            "resp-cps",
            "http-total",
            "resp-total",
            "l1-hit",
            "l2-hit",
            "http-p50",
            "http-p99",
            "resp-p50",
            "resp-p99",
            "resp-read-p50",
            "resp-read-p99",
            "resp-read-cps",
            "conn-resp",
            "conn-resp-max",
            "adm-http-inflight",
            "rss",
        ] {
            let v = figure(dom, id).unwrap_or_else(|| {
                panic!("#{id} shows no number: {:?}", shown(dom, id));
            });
            assert!(v.is_finite() && v >= 0.0, "#{id} = {v}");
        }
        assert!(figure(dom, "l1-hit").unwrap() <= 100.0);
        assert!(figure(dom, "http-p50").unwrap() <= figure(dom, "http-p99").unwrap());
        assert!(figure(dom, "resp-p50").unwrap() <= figure(dom, "resp-p99").unwrap());
        assert!(figure(dom, "resp-read-p50").unwrap() <= figure(dom, "resp-read-p99").unwrap());
        // No forwarded commands in this load: that class is idle, not a number.
        assert_eq!(shown(dom, "resp-forwarded-p50"), "idle");
        assert!(shown(dom, "hot-keys").is_empty() && dom.contains("status:"));
        // The origin's upstream, up, with its figures.
        assert_eq!(shown(dom, "origin-0-0-name"), "users");
        assert_eq!(shown(dom, "origin-0-0-state"), "UP");
        for id in ["origin-0-0-inflight", "origin-0-0-conns"] {
            assert!(
                figure(dom, id).is_some(),
                "#{id} shows no number: {:?}",
                shown(dom, id)
            );
        }
    }
    assert!(
        figure(&second, "origin-0-0-aps").is_some_and(|v| v > 0.0),
        "attempts/s: {:?}",
        shown(&second, "origin-0-0-aps")
    );
    let status: serde_json::Value = gw.admin_get("/status.json").await.json().await.unwrap();
    let upstream = &status["origins"][0]["upstreams"][0];
    assert_eq!(status["origins"][0]["name"], "users");
    assert_eq!(upstream["upstream"], origin.addr().to_string());
    assert!(upstream["attempts"].as_u64().unwrap() > 0, "{status}");
    // Between the two looks the load went on: the totals moved.
    for id in ["http-total", "resp-total"] {
        let (a, b) = (figure(&first, id).unwrap(), figure(&second, id).unwrap());
        assert!(b > a, "#{id}: {a} then {b}");
    }
    assert!(figure(&second, "http-rps").unwrap() > 0.0);
    assert!(figure(&second, "resp-cps").unwrap() > 0.0);

    // The same page where status.json cannot be fetched (a copy opened from a file): it says
    // so plainly, greys the figures and shows no numbers.
    let copy = profile.path().join("copy.html");
    let html = gw
        .http
        .get(format!("{}/", gw.admin))
        .header("accept", HTML)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(&copy, html).unwrap();
    let broken = {
        let (chromium, url, profile) = (
            chromium.clone(),
            format!("file://{}", copy.display()),
            profile.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || dump_dom(&chromium, &url, &profile))
            .await
            .unwrap()
    };
    assert!(broken.contains("<body class=\"stale\""), "{broken}");
    assert_eq!(shown(&broken, "live-text"), "FETCH FAILED");
    assert!(
        shown(&broken, "fetch-error").starts_with("could not fetch status.json"),
        "{}",
        shown(&broken, "fetch-error")
    );
    assert_eq!(figure(&broken, "http-rps"), None);
}

/// With `admin.token` set a browser still gets the page (it holds no figure), and the page
/// asks for the token instead of showing figures, since status.json answers it 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_page_asks_for_it() {
    let Some(chromium) = chromium() else {
        return;
    };
    let mut c = support::config(None);
    c.admin.token = "a0000000000000000000000000000000".into();
    let gw = Gateway::start_ready(c).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/", gw.admin);
    let dom = tokio::task::spawn_blocking(move || dump_dom(&chromium, &url, profile.path()))
        .await
        .unwrap();
    assert!(
        dom.contains("<form id=\"login\">"),
        "the prompt is shown: {dom}"
    );
    assert!(dom.contains("this admin port needs admin.token"), "{dom}");
    assert!(dom.contains("FETCH FAILED"), "{dom}");
}

//! The monitoring kit in deploy/ checked against the real thing: the alert rules pass
//! promtool (syntax, and their unit tests in alerts_test.yml), and a real `prometheus`,
//! scraping a real tiergate binary tiered over a redis-server under a little load through both
//! doors, with the shipped scrape config and rules, answers every target expression of every
//! panel of the Grafana dashboard with something (a panel that would show nothing fails the
//! test, naming it), loads every alert rule without error, and takes two of them to pending
//! when their cause is made real (Redis stopped, tiergate killed).
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`; scripts/test.sh installs
//! it). Without them the tests say so and pass, unless `CI` is set: there they must be present.
mod support;

use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use support::{free_port, metric, Binary, Redis};

/// The scrape job's name, as deploy/prometheus/prometheus.yml names it.
const JOB: &str = "tiergate";

/// What `$__rate_interval` stands for: Grafana makes it at least four scrape intervals.
const RATE_INTERVAL: &str = "30s";

/// Longest wait for Prometheus to come up, scrape, evaluate, or answer every panel.
const PROM_WAIT: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Whether `prometheus` and `promtool` are installed. Outside CI a missing one skips the
/// test with a message; in CI (`CI` set) it fails it.
fn tools_present(test: &str) -> bool {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = ["prometheus", "promtool"]
        .into_iter()
        .filter(|b| !runs(b))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{missing:?} not on PATH, and CI is set: scripts/test.sh installs them (Debian package prometheus)"
    );
    eprintln!(
        "SKIPPED {test}: {missing:?} not on PATH (apt-get install prometheus, or run scripts/test.sh)"
    );
    false
}

/// Runs promtool from the repository root; fails the test with its output if it fails.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The alert names of deploy/prometheus/alerts.yml, in file order.
fn alert_names() -> Vec<String> {
    let names: Vec<String> = read("deploy/prometheus/alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect();
    assert!(!names.is_empty(), "alerts.yml has no alerts");
    names
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_is_tested_both_ways() {
    if !tools_present("alert_rules_pass_promtool_and_each_alert_is_tested_both_ways") {
        return;
    }
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    // Compose's: its token file is where compose mounts it, here the repository's copy.
    let compose = read("deploy/prometheus/prometheus-compose.yml")
        .replace(
            "/etc/prometheus/tiergate-admin-token",
            &repo()
                .join("deploy/secrets/tiergate_admin_token")
                .display()
                .to_string(),
        )
        .replace(
            "- alerts.yml",
            &format!(
                "- {}",
                repo().join("deploy/prometheus/alerts.yml").display()
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus-compose.yml");
    std::fs::write(&path, compose).unwrap();
    promtool(&["check", "config", path.to_str().unwrap()]);

    // Every alert has a case where it fires (a non-empty exp_alerts) and one where it does
    // not (`exp_alerts: []`). Each case starts with `- eval_time:`.
    let tests = read("deploy/prometheus/alerts_test.yml");
    let cases: Vec<(&str, bool)> = tests
        .split("- eval_time:")
        .skip(1)
        .map(|case| {
            let name = case
                .lines()
                .find_map(|l| l.trim().strip_prefix("alertname:"))
                .expect("each case names its alert")
                .trim();
            (name, !case.contains("exp_alerts: []"))
        })
        .collect();
    let runbook = read("docs/RUNBOOK.md");
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    for alert in alert_names() {
        for fires in [true, false] {
            assert!(
                cases.contains(&(alert.as_str(), fires)),
                "alerts_test.yml has no case where {alert} {}",
                if fires { "fires" } else { "does not fire" }
            );
        }
        assert!(
            sections.contains(&alert.to_lowercase()),
            "docs/RUNBOOK.md has no section \"## {alert}\""
        );
    }
}

/// A prometheus server on a free loopback port with a data dir of its own; killed, and its
/// files removed, on drop.
struct Prometheus {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one with `config` (the text of a prometheus.yml) and waits until it is ready.
    async fn start(config: &str) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        promtool(&["check", "config", config_path.to_str().unwrap()]);
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("prometheus starts");
            let mut p = Prometheus {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
            };
            let deadline = Instant::now() + PROM_WAIT;
            while Instant::now() < deadline {
                if p.child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile, or worse: the log says
                }
                let ready = reqwest::get(format!("{}/-/ready", p.url)).await;
                if ready.is_ok_and(|r| r.status() == 200) {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last_log = p.log();
            let _ = p.child.kill();
            let _ = p.child.wait();
            dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
        }
        panic!("prometheus did not start; its log:\n{last_log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET of an API path with query parameters: the `data` of a successful answer.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"].clone())
    }

    /// The samples an instant query returns now.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls until `expr` returns at least one sample; panics with `what` on timeout.
    async fn until_some(&self, what: &str, expr: &str) {
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            match self.query(expr).await {
                Ok(r) if !r.is_empty() => return,
                r if Instant::now() > deadline => {
                    panic!(
                        "timed out waiting for {what} ({expr}: {r:?}); prometheus log:\n{}",
                        self.log()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The alerting rules Prometheus loaded, by name.
    async fn alert_rules(&self) -> Vec<Value> {
        let data = self
            .api("/api/v1/rules", &[("type", "alert")])
            .await
            .expect("/api/v1/rules answers");
        data["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Polls until the alert `name` is in `state` ("pending", "firing", "inactive").
    async fn until_alert_state(&self, name: &str, state: &str) {
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            let rules = self.alert_rules().await;
            let rule = rules
                .iter()
                .find(|r| r["name"] == name)
                .expect("rule loaded");
            if rule["state"] == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {state}: {rule:#}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus/prometheus.yml as shipped, pointed at this test's tiergate and rules, and
/// scraping and evaluating every second.
fn scrape_config(admin: &str) -> String {
    let shipped = read("deploy/prometheus/prometheus.yml");
    let alerts = repo().join("deploy/prometheus/alerts.yml");
    let mut config = shipped.clone();
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".into()),
        ("- 127.0.0.1:9090", format!("- {admin}")),
        ("- alerts.yml", format!("- {}", alerts.display())),
    ] {
        assert!(
            config.contains(from),
            "deploy/prometheus/prometheus.yml no longer has `{from}`; update this test"
        );
        config = config.replace(from, &to);
    }
    config
}

/// Some traffic through both doors: writes, L2 reads, L1 hits, misses, a batch, RESP commands
/// served and forwarded. `round` keeps the keys of two calls apart.
async fn load(bin: &Binary, round: usize) {
    let http = reqwest::Client::new();
    let base = format!("http://{}/v1/kv", bin.http);
    for i in 0..50 {
        let key = format!("{base}/p{round}-{i}");
        let put = http.put(&key).body(format!("v{i}")).send().await.unwrap();
        assert_eq!(put.status(), 204, "PUT {key}");
        for _ in 0..2 {
            let get = http.get(&key).send().await.unwrap();
            assert_eq!(get.status(), 200, "GET {key}");
        }
        let miss = http
            .get(format!("{base}/absent{round}-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(miss.status(), 404);
    }
    let batch = http
        .post(format!("http://{}/v1/kv:batchGet", bin.http))
        .json(&serde_json::json!({ "keys": ["p0-1", "p0-2", "absent"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    // Keys loaded from the origin ("user:" keys): some it has, the rest it answers 404.
    for i in 0..10 {
        let get = http
            .get(format!("{base}/user:{round}-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            get.status(),
            if i < 5 { 200 } else { 404 },
            "GET user:{round}-{i}"
        );
    }

    let client = redis::Client::open(format!("redis://{}", bin.resp)).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    for i in 0..40 {
        let key = format!("r{round}-{i}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
        let got: Option<i64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(got, Some(i));
        let none: Option<String> = redis::cmd("GET")
            .arg(format!("absent-r{round}-{i}"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(none, None);
        // A command tiergate does not serve itself: forwarded to Redis as it came.
        let _: i64 = redis::cmd("HSET")
            .arg(format!("h{round}"))
            .arg(&key)
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let len: i64 = redis::cmd("HLEN")
        .arg(format!("h{round}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(len, 40);
}

/// A dashboard's template variables replaced by what selects this test's tiergate.
fn substitute(expr: &str, instance: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", RATE_INTERVAL),
        ("${job}", JOB),
        ("$job", JOB),
        ("${instance}", instance),
        ("$instance", instance),
    ] {
        out = out.replace(var, value);
    }
    assert!(
        !out.contains('$'),
        "a template variable the test does not know in: {expr}"
    );
    out
}

/// Every (panel title, target expression) of the dashboard, rows' nested panels included.
fn panel_targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("(untitled)");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel \"{title}\" has a target without a PromQL expr")
                });
                out.push((title.to_string(), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_tiergate_and_every_panel_and_alert_works() {
    if !tools_present("prometheus_scrapes_tiergate_and_every_panel_and_alert_works") {
        return;
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/tiergate.json"))
        .expect("deploy/grafana/tiergate.json is JSON");
    let targets = panel_targets(&dashboard);
    assert!(
        targets.len() > 20,
        "the dashboard has {} targets",
        targets.len()
    );

    let mut redis = Redis::start();
    // An origin with a loader, probed, so the origin panels and alerts have series.
    let origin = support::origin::Origin::start().await;
    origin.answer("/health", support::origin::Answer::ok("ok"));
    for round in 0..2 {
        for i in 0..5 {
            origin.answer(
                &format!("/users/{round}-{i}"),
                support::origin::Answer::ok("someone"),
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiergate.toml");
    std::fs::write(
        &file,
        format!(
            "[[origins]]\nname = \"users\"\nupstreams = [{:?}]\nhealth_path = \"/health\"\n\
             health_interval = \"200ms\"\n[[origins.loaders]]\nprefix = \"user:\"\npath = \"/users/{{id}}\"\n",
            origin.url()
        ),
    )
    .unwrap();
    let mut bin = Binary::start(&[
        ("TIERGATE_L2_URL", &redis.url()),
        ("TIERGATE_L2_HEALTH_INTERVAL", "100ms"),
        ("TIERGATE_CONFIG", file.to_str().unwrap()),
    ]);
    bin.wait_ready().await;
    support::eventually("the invalidation bus subscribed", || async {
        metric(&bin.metrics().await, "tiergate_bus_subscribed") == 1.0
    })
    .await;
    load(&bin, 0).await;

    let instance = bin.admin.to_string();
    let prom = Prometheus::start(&scrape_config(&instance)).await;
    let up = format!("up{{job=\"{JOB}\",instance=\"{instance}\"}} == 1");
    prom.until_some("the first scrape", &up).await;
    // More load after the first scrape, so the rates over the scrapes that follow are not 0.
    load(&bin, 1).await;
    prom.until_some(
        "three scrapes",
        &format!("count_over_time(up{{job=\"{JOB}\"}}[5m]) >= 3"),
    )
    .await;
    // The load went through as meant: L1 hits, L2 misses, forwarded commands.
    for proof in [
        "tiergate_cache_hits_total{tier=\"l1\"} > 0",
        "tiergate_cache_misses_total{tier=\"l2\"} > 0",
        "tiergate_l2_command_duration_seconds_count{op=\"forward\"} > 0",
        "tiergate_resp_commands_total > 0",
        "tiergate_http_requests_total{route=\"kv_get\",status=\"404\"} > 0",
        "tiergate_cache_hits_total{tier=\"origin\"} > 0",
    ] {
        prom.until_some("the load to show", proof).await;
    }

    // The template variables offer this tiergate.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap();
        let q = var["query"]["query"].as_str().unwrap();
        let (selector, label) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label): {q}"));
        let selector = substitute(selector, ".*");
        let series = prom
            .api("/api/v1/series", &[("match[]", &selector)])
            .await
            .unwrap_or_else(|e| panic!("variable {name}: {selector}: {e}"));
        let values: BTreeSet<&str> = series
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s[label.trim()].as_str())
            .collect();
        let want = if name == "job" {
            JOB
        } else {
            instance.as_str()
        };
        assert!(
            values.contains(want),
            "variable {name} ({q}) offers {values:?}, not {want}"
        );
    }

    // Every panel's every target returns something. Retried until PROM_WAIT, so that a
    // series one scrape late does not fail the test; the report names every empty one.
    let mut pending: Vec<(String, String, String)> = targets
        .iter()
        .map(|(title, expr)| (title.clone(), expr.clone(), substitute(expr, &instance)))
        .collect();
    let deadline = Instant::now() + PROM_WAIT;
    let mut failures = Vec::new();
    loop {
        failures.clear();
        let mut empty = Vec::new();
        for (title, expr, query) in pending {
            match prom.query(&query).await {
                Ok(r) if !r.is_empty() => continue,
                Ok(_) => failures.push(format!("panel \"{title}\": no data for {expr}")),
                Err(e) => failures.push(format!("panel \"{title}\": {e}, for {expr}")),
            }
            empty.push((title, expr, query));
        }
        pending = empty;
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard targets show nothing:\n{}",
        failures.len(),
        targets.len(),
        failures.join("\n")
    );

    // Every alert of alerts.yml is loaded and evaluates without error, with its annotations.
    let names = alert_names();
    let deadline = Instant::now() + PROM_WAIT;
    loop {
        let rules = prom.alert_rules().await;
        let loaded: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            loaded, names,
            "/api/v1/rules lists other alerts than alerts.yml"
        );
        let unevaluated: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: health {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if unevaluated.is_empty() {
            for r in &rules {
                for key in ["summary", "description", "runbook_url"] {
                    assert!(
                        r["annotations"][key]
                            .as_str()
                            .is_some_and(|s| !s.is_empty()),
                        "{} has no {key}",
                        r["name"]
                    );
                }
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert rules not evaluated without error:\n{}",
            unevaluated.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A healthy tiergate under light load sets off none of the alerts whose state does not
    // depend on timing (the latency one may, on a slow machine).
    for name in names.iter().filter(|n| *n != "TiergateHttpP99High") {
        prom.until_alert_state(name, "inactive").await;
    }

    // The causes made real: the rules match the labels of the real series.
    drop(origin);
    prom.until_alert_state("TiergateOriginDown", "pending")
        .await;
    redis.stop();
    prom.until_alert_state("TiergateL2Down", "pending").await;
    prom.until_alert_state("TiergateBusUnsubscribed", "inactive")
        .await;
    let _ = bin.child.kill();
    let _ = bin.child.wait();
    prom.until_alert_state("TiergateScrapeFailing", "pending")
        .await;
}

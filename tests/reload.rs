//! Config reload on SIGHUP, over the real binary: what can change under load is applied
//! (auth, limits), what needs a restart is named in the log and left alone, and a config
//! that does not validate changes nothing.

mod support;

use support::{eventually, metric, Binary};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_what_it_can_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiergate.toml");
    std::fs::write(&file, "[limits]\nmax_key_bytes = 1024\n").unwrap();
    let gw = Binary::start(&[("TIERGATE_CONFIG", file.to_str().unwrap())]);
    gw.wait_ready().await;
    let http = reqwest::Client::new();
    let kv = |key: &str| format!("http://{}/v1/kv/{key}", gw.http);
    let long_key = "k".repeat(100);
    let put = |key: String, token: Option<&'static str>| {
        let mut r = http.put(kv(&key)).body("v");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    assert_eq!(put(long_key.clone(), None).await.unwrap().status(), 204);

    // Auth and a tighter key bound (reloadable), and a new backlog (not).
    std::fs::write(
        &file,
        format!(
            "[http]\nbacklog = 10\n[limits]\nmax_key_bytes = 16\n\
             [[auth.tokens]]\nname = \"ops\"\ntoken = \"{TOKEN}\"\nread = [\"*\"]\nwrite = [\"*\"]\n"
        ),
    )
    .unwrap();
    gw.signal("HUP");
    eventually("the reload is applied", || async {
        metric(
            &gw.metrics().await,
            "tiergate_config_reloads_total{result=\"applied\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(put("k".into(), None).await.unwrap().status(), 401);
    assert_eq!(put("k".into(), Some(TOKEN)).await.unwrap().status(), 204);
    assert_eq!(
        put(long_key.clone(), Some(TOKEN)).await.unwrap().status(),
        400,
        "the new key bound holds"
    );
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("need a restart"))
        .unwrap_or_else(|| panic!("no restart line in {log}"));
    assert!(line.contains("http.backlog"), "{line}");
    assert!(!log.contains(TOKEN), "the token is never logged");

    // A config that does not validate changes nothing.
    std::fs::write(&file, "[limits]\nmax_key_bytes = 0\n").unwrap();
    gw.signal("HUP");
    eventually("the bad reload is refused", || async {
        metric(
            &gw.metrics().await,
            "tiergate_config_reloads_total{result=\"refused\"}",
        ) == 1.0
    })
    .await;
    assert!(gw.log().contains("config reload refused"), "{}", gw.log());
    assert_eq!(
        put("k".into(), None).await.unwrap().status(),
        401,
        "auth kept"
    );
    assert_eq!(put("k".into(), Some(TOKEN)).await.unwrap().status(), 204);
}

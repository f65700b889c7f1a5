//! The access log over both doors, against a real redis-server: one JSON line per request
//! or command with the door, operation, key length (never the key), status, tier and
//! duration; auth refusals are logged too, and secrets never are.

mod support;

use redis::AsyncCommands;
use support::{raw, Backend, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_command_gets_a_line_without_its_key() {
    let l2 = Backend::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut cfg = l2.config();
    cfg.access_log.enabled = true;
    cfg.access_log.path = path.to_str().unwrap().into();
    let mut gw = Gateway::start_ready(cfg).await;
    let key = "secret-looking-key-name";
    gw.put_heard(key, "v").await;
    assert_eq!(gw.get(key).await.status(), 200); // from L2, and into L1
    assert_eq!(gw.get("absent-key").await.status(), 404);
    let addr = gw.running.as_ref().unwrap().resp_addr;
    let mut c = redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: String = c.get(key).await.unwrap();
    assert_eq!(v, "v");
    let out = raw(addr, b"NOSUCH x\r\nQUIT\r\n").await;
    assert!(out.starts_with("-ERR unknown command"), "{out}");
    drop(c);
    gw.stop().await; // the writer flushes on stop

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(key), "keys are never logged: {text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |door: &str, op: &str| {
        lines
            .iter()
            .filter(|l| l["door"] == door && l["op"] == op)
            .cloned()
            .collect::<Vec<_>>()
    };
    let put = &find("http", "PUT")[0];
    assert_eq!(put["status"], 204);
    assert_eq!(put["key_len"], key.len());
    assert!(put["tier"].is_null());
    let gets = find("http", "GET");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0]["tier"], "L2");
    assert_eq!(gets[1]["status"], 404);
    assert!(gets[1]["tier"].is_null());
    let resp_get = &find("resp", "get")[0];
    assert_eq!(resp_get["status"], "ok");
    assert_eq!(resp_get["tier"], "L1");
    assert_eq!(resp_get["key_len"], key.len());
    assert_eq!(find("resp", "unknown")[0]["status"], "ERR");
    assert_eq!(find("resp", "quit")[0]["status"], "ok");
    for l in &lines {
        assert!(l["duration_us"].as_u64().is_some(), "{l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    }
}

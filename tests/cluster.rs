//! tiergate over a Redis Cluster (three local masters): the KV API with keys on every node,
//! batch calls whose keys span slots, auto-pipelined reads, errors passed on from the owning
//! node, and L1 coherence between two gateways through the bus. The RESP differential script
//! also runs over a cluster (`tests/resp.rs`).

mod support;

use redis::{AsyncCommands, Commands};
use support::{metric, Cluster, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_api_spans_every_node() {
    let cluster = Cluster::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for k in &keys {
        assert_eq!(gw.put(k, format!("v-{k}")).await.status(), 204);
    }
    let mut direct = cluster.conn();
    for k in &keys {
        let v: String = direct.get(k).unwrap();
        assert_eq!(v, format!("v-{k}"));
    }
    for node in &cluster.nodes {
        let n: u64 = redis::cmd("DBSIZE").query(&mut node.conn()).unwrap();
        assert!(n > 0, "every master holds some of the keys");
    }

    // Reads: L2 on the first read (from whichever node owns the key), L1 after.
    let r = gw.get("user:7").await;
    assert_eq!(r.headers()["x-cache"], "L2");
    assert_eq!(r.text().await.unwrap(), "v-user:7");
    assert_eq!(gw.get("user:7").await.headers()["x-cache"], "L1");

    // batchGet and batchSet over keys of many slots, in one call each.
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.push("missing");
    let v = gw.batch_get(&wanted).await;
    for k in &keys {
        assert_eq!(v["values"][k], format!("v-{k}"), "{k}");
    }
    assert!(v["values"]["missing"].is_null());
    let items: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({"key": format!("item:{i}"), "value": format!("{i}"), "ttl": "1h"}))
        .collect();
    let r = gw
        .http
        .post(format!("{}/v1/kv:batchSet", gw.base))
        .json(&serde_json::json!({ "items": items }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for i in 0..30 {
        let v: String = direct.get(format!("item:{i}")).unwrap();
        assert_eq!(v, i.to_string());
        let ttl: i64 = direct.ttl(format!("item:{i}")).unwrap();
        assert!(ttl > 3000, "batchSet TTL reached the owning node: {ttl}");
    }

    let r = gw.http.delete(gw.kv("user:7")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(gw.get("user:7").await.status(), 404);
    let gone: Option<String> = direct.get("user:7").unwrap();
    assert_eq!(gone, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_and_multi_key_commands_are_split_by_slot() {
    let cluster = Cluster::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    let mut direct = cluster.conn();
    for i in 0..100 {
        let _: () = direct.set(format!("k{i}"), i).unwrap();
        let _: () = direct.set(format!("{{tag}}:{i}"), i).unwrap();
    }
    // Concurrent single-key reads share the batch lanes; keys of one slot (a hash tag)
    // may share an MGET, keys of many slots may not. Every answer must be its own.
    let url = format!("redis://{}", gw.running.as_ref().unwrap().resp_addr);
    let client = redis::Client::open(url).unwrap();
    let reads: Vec<_> = (0..100)
        .flat_map(|i| [format!("k{i}"), format!("{{tag}}:{i}")])
        .map(|k| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let v: String = c.get(&k).await.unwrap();
                (k, v)
            })
        })
        .collect();
    for r in reads {
        let (k, v) = r.await.unwrap();
        assert_eq!(k.rsplit(['k', ':']).next().unwrap(), v, "{k}");
    }

    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let n: u64 = redis::cmd("EXISTS")
        .arg(&["k1", "k2", "{tag}:1", "nope", "k1"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 4);
    let n: u64 = redis::cmd("DEL")
        .arg(&["k1", "k2", "{tag}:1", "nope"])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 3);

    // An error comes from the node that owns the key, as Redis words it.
    let _: () = direct.rpush("list", "x").unwrap();
    let err = c.get::<_, Option<String>>("list").await.unwrap_err();
    assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_gateway_evicts_the_other_over_a_cluster() {
    let cluster = Cluster::start();
    let a = Gateway::start_ready(cluster.config()).await;
    let b = Gateway::start_ready(cluster.config()).await;
    for i in 0..10 {
        let key = format!("shared:{i}");
        // B hears this write too; let that land before B caches the key.
        let heard = b.heard().await;
        assert_eq!(a.put(&key, "old").await.status(), 204);
        b.wait_heard_past(heard).await;
        assert_eq!(b.get(&key).await.text().await.unwrap(), "old");
        assert_eq!(b.get(&key).await.headers()["x-cache"], "L1");
        let heard = b.heard().await;
        assert_eq!(a.put(&key, "new").await.status(), 204);
        b.wait_heard_past(heard).await;
        assert_eq!(
            b.get(&key).await.text().await.unwrap(),
            "new",
            "{key}: never stale once the invalidation is in"
        );
    }
    // Sharded pub/sub: each announcement stayed on the node that applied its write.
    assert!(cluster.calls("spublish") >= 20);
    assert_eq!(cluster.calls("publish"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_moves_is_followed() {
    let cluster = Cluster::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    assert_eq!(gw.put("before", "1").await.status(), 204); // the slot map is loaded

    // Move the (empty) slot of "mover" to another master, as a resharding would.
    let ask = |node: &support::Redis, args: &[&str]| -> redis::Value {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut node.conn()).unwrap()
    };
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("mover")
        .query(&mut cluster.nodes[0].conn())
        .unwrap();
    let slot = slot.to_string();
    let ids: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut n.conn())
                .unwrap()
        })
        .collect();
    let owner = cluster
        .nodes
        .iter()
        .position(|n| {
            let r: redis::RedisResult<Option<String>> =
                redis::cmd("GET").arg("mover").query(&mut n.conn());
            r.is_ok()
        })
        .expect("one node owns the slot");
    let target = (owner + 1) % cluster.nodes.len();
    let flushes = metric(&gw.metrics().await, "tiergate_bus_flushes_total");
    for node in &cluster.nodes {
        ask(node, &["CLUSTER", "SETSLOT", &slot, "NODE", &ids[target]]);
    }
    // Redis unsubscribed the bus from the moved slot's channel (its messages now go to the
    // new owner): that is a loss, so L1 is flushed when the bus is joined again.
    support::eventually("the bus rejoined after the slot moved", || async {
        metric(&gw.metrics().await, "tiergate_bus_flushes_total") > flushes
    })
    .await;

    // The gateway still aims at the old owner, is told MOVED, and follows.
    assert_eq!(gw.put("mover", "here").await.status(), 204);
    let v: Option<String> = redis::cmd("GET")
        .arg("mover")
        .query(&mut cluster.nodes[target].conn())
        .unwrap();
    assert_eq!(v.as_deref(), Some("here"), "written on the new owner");
    let r = gw.get("mover").await;
    assert_eq!(r.text().await.unwrap(), "here");
}

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

/// A raw RESP connection to the gateway's RESP door, in RESP3 when `resp3`.
async fn wire(gw: &Gateway, resp3: bool) -> support::wire::Wire {
    let mut w = support::wire::Wire::connect(gw.running.as_ref().unwrap().resp_addr).await;
    if resp3 {
        w.hello3().await;
    }
    w
}

/// A raw RESP connection straight to a redis-server.
async fn direct_wire(r: &support::Redis, resp3: bool) -> support::wire::Wire {
    let mut w = support::wire::Wire::connect(([127, 0, 0, 1], r.port).into()).await;
    if resp3 {
        w.hello3().await;
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_dbsize_keys_and_split_commands_answer_as_one_redis() {
    use support::wire::{bulk, elements, show};
    let cluster = Cluster::start();
    let reference = support::Redis::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    let mut direct = cluster.conn();
    let mut single = reference.conn();
    let keys: Vec<String> = (0..300).map(|i| format!("scan:{i}")).collect();
    for k in &keys {
        let _: () = direct.set(k, k).unwrap();
        let _: () = single.set(k, k).unwrap();
    }
    for c in [&mut direct as &mut dyn redis::ConnectionLike, &mut single] {
        redis::cmd("RPUSH")
            .arg("scan:list")
            .arg("x")
            .exec(c)
            .unwrap();
    }
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).unwrap())
        .collect();
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");

    let mut w = wire(&gw, false).await;
    // SCAN to completion: every key once, across every master.
    let mut found: Vec<String> = Vec::new();
    let mut cursor = b"0".to_vec();
    let mut calls = 0;
    loop {
        let reply = w.call(&[b"SCAN", &cursor, b"COUNT", b"7"]).await;
        let parts = elements(&reply);
        assert_eq!(parts.len(), 2, "{}", show(&reply));
        cursor = bulk(parts[0]).unwrap().to_vec();
        found.extend(
            elements(parts[1])
                .iter()
                .map(|k| String::from_utf8(bulk(k).unwrap().to_vec()).unwrap()),
        );
        calls += 1;
        assert!(calls < 10_000, "the scan never finished");
        if cursor == b"0" {
            break;
        }
    }
    let mut want = keys.clone();
    want.push("scan:list".into());
    want.sort();
    found.sort();
    assert_eq!(found.len(), want.len(), "every key once");
    assert_eq!(found, want);
    // TYPE and MATCH pass through to every master.
    let mut lists = Vec::new();
    let mut cursor = b"0".to_vec();
    loop {
        let reply = w
            .call(&[b"SCAN", &cursor, b"MATCH", b"scan:*", b"TYPE", b"list"])
            .await;
        let parts = elements(&reply);
        cursor = bulk(parts[0]).unwrap().to_vec();
        lists.extend(elements(parts[1]).iter().map(|k| k.to_vec()));
        if cursor == b"0" {
            break;
        }
    }
    assert_eq!(lists, vec![b"$9\r\nscan:list\r\n".to_vec()]);
    assert_eq!(w.call(&[b"SCAN", b"x"]).await, b"-ERR invalid cursor\r\n");
    let beyond = (9u64 << 54).to_string();
    assert_eq!(
        w.call(&[b"SCAN", beyond.as_bytes()]).await,
        b"-ERR invalid cursor\r\n"
    );

    // DBSIZE: the sum over the masters. KEYS: every master's.
    let total: u64 = per_node.iter().sum();
    assert_eq!(total, 301);
    assert_eq!(
        w.call(&[b"DBSIZE"]).await,
        format!(":{total}\r\n").as_bytes()
    );
    let all = w.call(&[b"KEYS", b"scan:*"]).await;
    let mut listed: Vec<&[u8]> = elements(&all);
    listed.sort();
    assert_eq!(listed.len(), 301);
    listed.dedup();
    assert_eq!(listed.len(), 301);

    // Multi-key commands across slots, in both protocols: the bytes one Redis sends.
    for resp3 in [false, true] {
        let mut ours = wire(&gw, resp3).await;
        let mut theirs = direct_wire(&reference, resp3).await;
        let cases: Vec<Vec<&[u8]>> = vec![
            vec![
                b"MGET",
                b"scan:1",
                b"nope",
                b"scan:list",
                b"scan:2",
                b"scan:1",
            ],
            vec![b"MGET", b"scan:3"],
            vec![b"EXISTS", b"scan:1", b"scan:2", b"nope", b"scan:1"],
            vec![b"TOUCH", b"scan:1", b"scan:2", b"nope", b"scan:3"],
            vec![b"TOUCH"],
            vec![b"RENAME", b"scan:1", b"scan:2"],
            vec![b"SELECT", b"0"],
        ];
        for case in cases {
            let got = ours.call(&case).await;
            if case[0] == b"RENAME" {
                // A cluster refuses it, so the reference does not run it.
                assert_eq!(
                    got,
                    b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
                );
                continue;
            }
            let want = theirs.call(&case).await;
            assert_eq!(show(&got), show(&want), "resp3 {resp3}: {case:?}");
        }
    }
    assert_eq!(
        w.call(&[b"SELECT", b"1"]).await,
        b"-ERR SELECT is not allowed in cluster mode\r\n"
    );
    // DEL and UNLINK across slots count what they removed.
    assert_eq!(
        w.call(&[b"DEL", b"scan:1", b"scan:2", b"nope", b"scan:list"])
            .await,
        b":3\r\n"
    );
    assert_eq!(
        w.call(&[b"UNLINK", b"scan:3", b"scan:4", b"scan:3"]).await,
        b":2\r\n"
    );
    // FLUSHALL reaches every master.
    assert_eq!(w.call(&[b"FLUSHALL"]).await, b"+OK\r\n");
    for n in &cluster.nodes {
        let size: u64 = redis::cmd("DBSIZE").query(&mut n.conn()).unwrap();
        assert_eq!(size, 0);
    }
    assert_eq!(w.call(&[b"DBSIZE"]).await, b":0\r\n");
}

/// `CLUSTER` `args` on `node`.
fn cluster_cmd(node: &support::Redis, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd("CLUSTER");
    for a in args {
        cmd.arg(*a);
    }
    cmd.query(&mut node.conn()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_commands_follow_moved_and_ask() {
    use support::wire::show;
    let cluster = Cluster::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    let mut w = wire(&gw, false).await;
    // The gateway reads the slot map now.
    assert_eq!(w.call(&[b"HSET", b"before", b"f", b"v"]).await, b":1\r\n");
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
    let slot_of = |key: &str| -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut cluster.nodes[0].conn())
            .unwrap()
    };
    // The master that owns `slot`, by CLUSTER SLOTS: `[start, end, [host, port, id], ...]`.
    let owner_of = |slot: i64| -> usize {
        let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut cluster.nodes[0].conn())
            .unwrap();
        let int = |v: &redis::Value| redis::from_redis_value::<i64>(v.clone()).unwrap();
        let range = slots
            .iter()
            .find(|r| int(&r[0]) <= slot && slot <= int(&r[1]))
            .expect("the slot is served");
        let master: Vec<redis::Value> = redis::from_redis_value(range[2].clone()).unwrap();
        let port = int(&master[1]) as u16;
        cluster
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a master owns the slot")
    };

    // MOVED: the slot of "mover" (empty) goes to another master behind the gateway's back.
    let slot = slot_of("mover");
    let owner = owner_of(slot);
    let target = (owner + 1) % cluster.nodes.len();
    for node in &cluster.nodes {
        cluster_cmd(node, &["SETSLOT", &slot.to_string(), "NODE", &ids[target]]);
    }
    assert_eq!(
        w.call(&[b"HSET", b"mover", b"f", b"v"]).await,
        b":1\r\n",
        "MOVED was followed"
    );
    let on_target: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut cluster.nodes[target].conn())
        .unwrap();
    assert_eq!(on_target, 1, "written on the new owner");
    assert_eq!(w.call(&[b"HGET", b"mover", b"f"]).await, b"$1\r\nv\r\n");

    // ASK: the slot of "asked" is being migrated; the key is not on the source yet, so the
    // source sends the command on to the target.
    let slot = slot_of("asked");
    let source = owner_of(slot);
    let target = (source + 1) % cluster.nodes.len();
    let s = slot.to_string();
    cluster_cmd(
        &cluster.nodes[target],
        &["SETSLOT", &s, "IMPORTING", &ids[source]],
    );
    cluster_cmd(
        &cluster.nodes[source],
        &["SETSLOT", &s, "MIGRATING", &ids[target]],
    );
    let reply = w.call(&[b"HSET", b"asked", b"f", b"there"]).await;
    assert_eq!(reply, b":1\r\n", "{}", show(&reply));
    let on_target: i64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query(&mut cluster.nodes[target].conn())
        .unwrap();
    assert_eq!(on_target, 1, "written on the importing node");
    assert_eq!(w.call(&[b"HGET", b"asked", b"f"]).await, b"$5\r\nthere\r\n");
    // A split command's parts are redirected each on its own.
    let reply = w
        .call(&[b"TOUCH", b"asked", b"mover", b"before", b"nope"])
        .await;
    assert_eq!(reply, b":3\r\n", "{}", show(&reply));
    for node in &cluster.nodes {
        cluster_cmd(node, &["SETSLOT", &s, "NODE", &ids[target]]);
    }
    assert_eq!(w.call(&[b"HGET", b"asked", b"f"]).await, b"$5\r\nthere\r\n");
}

/// Evictions `g` has made on what it heard: one per key, one per whole-L1 flush.
async fn evictions(g: &Gateway) -> f64 {
    let m = g.metrics().await;
    metric(&m, "tiergate_bus_invalidations_total") + metric(&m, "tiergate_bus_flushes_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_through_one_gateway_evict_the_other_over_a_cluster() {
    let cluster = Cluster::start();
    let a = Gateway::start_ready(cluster.config()).await;
    let b = Gateway::start_ready(cluster.config()).await;
    let mut direct = cluster.conn();
    let url = format!("redis://{}", a.running.as_ref().unwrap().resp_addr);
    let mut ra = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let url = format!("redis://{}", b.running.as_ref().unwrap().resp_addr);
    let mut rb = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // (the key B has cached, a write through A, what B must then hear: keys or flushes).
    // Keys of one command share a hash tag: a cluster refuses them across slots.
    let cases: Vec<(&str, Vec<&str>, usize)> = vec![
        ("{c}append", vec!["APPEND", "{c}append", "+"], 1),
        ("{c}setrange", vec!["SETRANGE", "{c}setrange", "0", "Z"], 1),
        ("{c}float", vec!["INCRBYFLOAT", "{c}float", "1.5"], 1),
        ("{c}getdel", vec!["GETDEL", "{c}getdel"], 1),
        ("{c}getex", vec!["GETEX", "{c}getex", "EX", "100"], 1),
        ("{c}setex", vec!["SETEX", "{c}setex", "100", "new"], 1),
        ("{c}renamed", vec!["RENAME", "{c}other", "{c}renamed"], 2),
        ("{c}copy", vec!["COPY", "{c}src", "{c}copy", "REPLACE"], 1),
        ("{c}union", vec!["SUNIONSTORE", "{c}union", "{c}set"], 1),
        ("{c}bitop", vec!["BITOP", "OR", "{c}bitop", "{c}other"], 1),
        ("{c}persist", vec!["PEXPIREAT", "{c}persist", "1"], 1),
        (
            "{c}eval",
            vec![
                "EVAL",
                "return redis.call('set', KEYS[1], 'e')",
                "1",
                "{c}eval",
            ],
            1,
        ),
        // Keys on other masters than the first cases', and a split write.
        ("spread:7", vec!["APPEND", "spread:7", "+"], 1),
        (
            "spread:8",
            vec!["UNLINK", "spread:8", "spread:9", "{c}other"],
            3,
        ),
        // Every key: FLUSHALL on every master, then "everything" on the bus.
        ("spread:10", vec!["FLUSHALL"], 1),
    ];
    for (key, write, heard) in cases {
        for (k, v) in [
            (key, "1"),
            ("{c}other", "x"),
            ("{c}src", "copied"),
            ("spread:9", "y"),
        ] {
            let _: () = direct.set(k, v).unwrap();
        }
        let _: () = direct.sadd("{c}set", "m").unwrap();
        // B reads the key twice: the second read is its L1's.
        let _ = b.get(key).await;
        assert_eq!(
            b.get(key).await.headers()["x-cache"],
            "L1",
            "{key} in B's L1"
        );
        let before = evictions(&b).await;
        let mut cmd = redis::cmd(write[0]);
        for arg in &write[1..] {
            cmd.arg(*arg);
        }
        let reply = cmd.query_async::<redis::Value>(&mut ra).await;
        assert!(reply.is_ok(), "{write:?} through A: {reply:?}");
        support::eventually("B heard the write", || async {
            evictions(&b).await >= before + heard as f64
        })
        .await;
        // GET over RESP, errors by their code (a set after SUNIONSTORE is WRONGTYPE).
        let shown = |r: redis::RedisResult<redis::Value>| match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {}", e.code().unwrap_or("?")),
        };
        let redis_has = shown(redis::cmd("GET").arg(key).query(&mut direct));
        let b_has = shown(redis::cmd("GET").arg(key).query_async(&mut rb).await);
        assert_eq!(
            b_has, redis_has,
            "B serves {key} as Redis has it after {write:?}"
        );
    }
    // Sharded pub/sub only: each announcement went to its key's master.
    assert_eq!(cluster.calls("publish"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_every_master_is_answered_in_order() {
    use support::wire::show;
    let cluster = Cluster::start();
    let reference = support::Redis::start();
    let gw = Gateway::start_ready(cluster.config()).await;
    let mut commands: Vec<Vec<String>> = Vec::new();
    let c = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    for i in 0..100 {
        let (k, next) = (format!("p:{i}"), format!("p:{}", i + 1));
        commands.push(c(&["HSET", &k, "f", &i.to_string()]));
        commands.push(c(&["HINCRBY", &k, "f", "10"]));
        commands.push(c(&["HGET", &k, "f"]));
        commands.push(c(&["TOUCH", &k, &next, "nope"]));
        if i % 10 == 0 {
            commands.push(c(&["DBSIZE"]));
            commands.push(c(&["ECHO", &k]));
            commands.push(c(&["KEYS", "nomatch:*"]));
        }
    }
    for resp3 in [false, true] {
        let mut ours = wire(&gw, resp3).await;
        let mut theirs = direct_wire(&reference, resp3).await;
        for w in [&mut ours, &mut theirs] {
            for cmd in &commands {
                let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
                w.send(&args).await;
            }
        }
        for cmd in &commands {
            let (got, want) = (ours.recv().await, theirs.recv().await);
            assert_eq!(show(&got), show(&want), "resp3 {resp3}: {cmd:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_replies_are_held_to_max_reply_bytes_together() {
    use support::wire::show;
    let cluster = Cluster::start();
    let mut config = cluster.config();
    config.limits.max_value_bytes = tiergate::config::ByteSize(1024);
    config.limits.max_reply_bytes = tiergate::config::ByteSize(4096);
    let gw = Gateway::start_ready(config).await;
    // A key of about 1.5 KiB on each master (one in each third of the slots, as
    // `redis-cli --cluster create` deals them): each master's KEYS is under the limit, the
    // three together are not.
    let mut direct = cluster.conn();
    let mut thirds = [false; 3];
    for i in 0.. {
        let key = format!("{i}:{}", "k".repeat(1500));
        let slot: usize = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query(&mut cluster.nodes[0].conn())
            .unwrap();
        let third = (slot * 3 / 16384).min(2);
        if !thirds[third] {
            thirds[third] = true;
            let _: () = direct.set(key, 1).unwrap();
        }
        if thirds.iter().all(|t| *t) {
            break;
        }
    }
    let mut w = wire(&gw, false).await;
    for n in &cluster.nodes {
        let size: u64 = redis::cmd("DBSIZE").query(&mut n.conn()).unwrap();
        assert_eq!(size, 1, "one key on each master");
    }
    assert_eq!(w.call(&[b"DBSIZE"]).await, b":3\r\n");
    let reply = w.call(&[b"KEYS", b"*"]).await;
    assert!(
        reply.starts_with(b"-ERR reply of ") && show(&reply).contains("limits.max_reply_bytes"),
        "{}",
        show(&reply)
    );
}

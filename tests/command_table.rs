//! The command table loaded from a live redis-server: the same over RESP2 and RESP3, the same
//! as the unit tests' fixture when the server is 7.0, and the keys it finds are the ones Redis
//! itself names (`COMMAND GETKEYSANDFLAGS`) wherever it says they are complete.

mod support;

use bytes::Bytes;
use redis::Value;
use support::Redis;
use tiergate::cache::table::Table;

const FIXTURE: &[u8] = include_bytes!("../src/cache/testdata/command-redis-7.0.resp");

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn args(line: &str) -> Vec<Bytes> {
    line.split_whitespace()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Redis' own answer: each key with whether it is read and written, by its key-spec flags.
async fn redis_keys(
    c: &mut redis::aio::MultiplexedConnection,
    line: &str,
) -> Vec<(String, bool, bool)> {
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYSANDFLAGS");
    for a in line.split_whitespace() {
        cmd.arg(a);
    }
    let reply: Value = match cmd.query_async(c).await {
        Ok(v) => v,
        Err(e) if e.to_string().contains("no key arguments") => return vec![],
        Err(e) => panic!("{line}: {e}"),
    };
    let Value::Array(keys) = reply else {
        panic!("{line}: {reply:?}")
    };
    keys.iter()
        .map(|k| {
            let Value::Array(kf) = k else {
                panic!("{line}: {k:?}")
            };
            let (Value::Array(flags) | Value::Set(flags)) = &kf[1] else {
                panic!("{line}: {kf:?}")
            };
            let flags: Vec<String> = flags.iter().map(text).collect();
            let has = |names: &[&str]| flags.iter().any(|f| names.contains(&f.as_str()));
            let read = has(&["RO", "RW", "access"]);
            let write = has(&["RW", "OW", "RM", "insert", "update", "delete"]);
            (text(&kf[0]), read, write)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_loads_from_a_live_redis_over_either_protocol() {
    let redis = Redis::start();
    let mut resp2 = connect(&redis.url()).await;
    let mut resp3 = connect(&format!("{}/?protocol=resp3", redis.url())).await;
    let table = Table::load(&mut resp2).await.unwrap();
    assert_eq!(Table::load(&mut resp3).await.unwrap(), table);

    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut resp2)
        .await
        .unwrap();
    let fixture = Table::parse(&redis::parse_redis_value(FIXTURE).unwrap()).unwrap();
    if info.contains("redis_version:7.0.") {
        assert_eq!(table.len(), fixture.len());
        assert_eq!(table, fixture);
    } else {
        eprintln!("not Redis 7.0: the fixture comparison is skipped");
    }

    for line in [
        "GET k",
        "SET k v GET",
        "MSET a 1 b 2",
        "MGET a b c",
        "DEL a b",
        "RENAME a b",
        "COPY a b",
        "SMOVE a b m",
        "LMOVE a b LEFT RIGHT",
        "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
        "ZINTERSTORE d 2 a b",
        "ZUNION 2 a b",
        "EVAL s 2 a b x",
        "EVAL s 0 x",
        "EVALSHA h 1 a",
        "FCALL f 1 a",
        "EVAL_RO s 1 a",
        "XREAD COUNT 2 STREAMS a b 0 0",
        "XREADGROUP GROUP g c STREAMS a b > >",
        "GEORADIUS k 0 0 1 km STORE d",
        "GEORADIUSBYMEMBER k m 1 km STOREDIST d",
        "MIGRATE h 1 k 0 5000",
        "LMPOP 2 a b LEFT",
        "BLMPOP 0 2 a b LEFT",
        "ZMPOP 1 a MIN",
        "BITOP AND d a b",
        "OBJECT ENCODING k",
        "XINFO STREAM s",
        "PFCOUNT a b",
        "SINTERCARD 2 a b",
        "BLPOP a b 0",
        "PUBLISH ch m",
        "SPUBLISH ch m",
        "CONFIG SET maxmemory 1",
        "FLUSHALL ASYNC",
        "KEYS *",
    ] {
        let a = args(line);
        let keys = table.lookup(&a).unwrap().keys(&a);
        assert!(keys.complete, "{line}");
        let ours: Vec<_> = keys
            .found
            .iter()
            .map(|k| String::from_utf8_lossy(&a[k.index]).into_owned())
            .collect();
        let theirs = redis_keys(&mut resp2, line).await;
        let names: Vec<_> = theirs.iter().map(|(k, _, _)| k.clone()).collect();
        assert_eq!(ours, names, "{line}");
        // Ours may say more than Redis (SET's spec is the union of what its options do),
        // never less.
        for (key, (_, read, write)) in keys.found.iter().zip(&theirs) {
            assert!(key.access.read || !read, "{line}: {key:?}");
            assert!(key.access.write || !write, "{line}: {key:?}");
        }
    }
}

//! Test support: real redis-server processes on free ports, tiergate servers in-process or as
//! the real binary, small HTTP helpers, and a raw RESP client (`wire`). Every process started
//! here is killed on drop.
#![allow(dead_code)] // each test binary uses a different subset

pub mod origin;
pub mod wire;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tiergate::config::Config;

/// Bounded wait for something a test started (a process listening, a probe turning ready).
/// Generous because CI machines are slow; tests never assert how long it took.
pub const SETTLE: Duration = Duration::from_secs(20);

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `N` ports that were free a moment ago, all different: held open together while chosen
/// (one at a time, the kernel may hand the same port out twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// Polls `f` until it returns true or `SETTLE` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A redis-server child process on its own port, without persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra redis-server arguments (`["--databases", "1"]`).
    pub fn start_with(extra_args: &[&str]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let extra_args = extra_args.iter().map(|s| s.to_string()).collect();
            let mut r = Redis {
                port,
                child: None,
                extra_args,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start redis-server (is it installed? scripts/test.sh installs it)");
    }

    /// A Redis that is not running yet, on a port reserved for it.
    pub fn stopped() -> Self {
        Redis {
            port: free_port(),
            child: None,
            extra_args: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (benches pin it to a core).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--protected-mode", "no", "--enable-debug-command", "yes"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("redis-server on {} exited at start: {status}", self.port);
                self.child = None;
                return false;
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// Starts it (again) on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Kills it; the port stays reserved for `start_again`.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it answers, even if only to say a password is needed (`--requirepass`).
    fn ping(&self) -> bool {
        match self
            .client()
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        {
            Ok(_) => true,
            Err(e) => e.code() == Some("NOAUTH"),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Clients blocked in this redis-server now (INFO clients).
    pub fn blocked_clients(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut self.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .expect("INFO clients has blocked_clients")
            .trim()
            .parse()
            .unwrap()
    }

    /// A direct connection, bypassing tiergate.
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().unwrap()
    }

    /// Makes redis-server sleep for `secs` (DEBUG SLEEP) on a thread of its own, so every
    /// command sent meanwhile waits; join the handle to know it is awake again.
    pub fn pause(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let client = self.client();
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(secs)
                .exec(&mut c)
                .unwrap();
        })
    }

    /// Stops the process (SIGSTOP) until the guard is dropped (SIGCONT): every command sent
    /// meanwhile waits. Unlike `pause`, it is known to be in effect when this returns (the
    /// kernel reports the process stopped) and lasts until the test ends it, not for a time.
    /// Keep it short on a cluster: a node stopped past `--cluster-node-timeout` (2 s) may be
    /// marked failed by the others once they all run again.
    pub fn hold(&self) -> Held {
        Held::new(self.pid().into_iter().collect())
    }

    /// How many times redis-server has run `command` (lowercase), from INFO commandstats.
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The L2 the KV and RESP suites run against: one redis-server, or a three-master cluster
/// when `TIERGATE_TEST_L2=cluster` (scripts/test.sh runs those suites both ways).
pub enum Backend {
    Single(Redis),
    Cluster(Cluster),
}

impl Backend {
    pub fn start() -> Self {
        match std::env::var("TIERGATE_TEST_L2").as_deref() {
            Ok("cluster") => Backend::Cluster(Cluster::start()),
            _ => Backend::Single(Redis::start()),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Backend::Cluster(_))
    }

    /// Gateway config with this as L2.
    pub fn config(&self) -> Config {
        match self {
            Backend::Single(r) => config(Some(&r.url())),
            Backend::Cluster(c) => c.config(),
        }
    }

    /// A direct connection, bypassing tiergate (routed by key on a cluster).
    pub fn conn(&self) -> Direct {
        match self {
            Backend::Single(r) => Direct::Single(r.conn()),
            Backend::Cluster(c) => Direct::Cluster(c.conn()),
        }
    }

    /// SET straight to Redis, behind tiergate's back.
    pub fn set(&self, key: &str, value: &str) {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .exec(&mut self.conn())
            .unwrap();
    }

    /// How many times `command` ran (summed over the nodes).
    pub fn calls(&self, command: &str) -> u64 {
        match self {
            Backend::Single(r) => r.calls(command),
            Backend::Cluster(c) => c.calls(command),
        }
    }

    /// Holds every node busy for `secs` (DEBUG SLEEP); join the handle to know they woke.
    pub fn pause(&self, secs: f64) -> std::thread::JoinHandle<()> {
        let nodes: Vec<std::thread::JoinHandle<()>> = match self {
            Backend::Single(r) => vec![r.pause(secs)],
            Backend::Cluster(c) => c.nodes.iter().map(|n| n.pause(secs)).collect(),
        };
        std::thread::spawn(move || nodes.into_iter().for_each(|n| n.join().unwrap()))
    }

    /// Stops every node until the guard is dropped (see `Redis::hold`).
    pub fn hold(&self) -> Held {
        match self {
            Backend::Single(r) => r.hold(),
            Backend::Cluster(c) => Held::new(c.nodes.iter().filter_map(Redis::pid).collect()),
        }
    }

    /// Kills every node.
    pub fn stop(&mut self) {
        match self {
            Backend::Single(r) => r.stop(),
            Backend::Cluster(c) => c.nodes.iter_mut().for_each(Redis::stop),
        }
    }

    /// How many distinct hash slots `keys` fall in: the MGETs a batch read of them takes on a
    /// cluster (1 on a single Redis).
    pub fn slots(&self, keys: &[&str]) -> u64 {
        let Backend::Cluster(c) = self else { return 1 };
        let mut conn = c.nodes[0].conn();
        let mut slots: Vec<i64> = keys
            .iter()
            .map(|k| {
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(*k)
                    .query(&mut conn)
                    .unwrap()
            })
            .collect();
        slots.sort_unstable();
        slots.dedup();
        slots.len() as u64
    }
}

/// Redis processes stopped by `hold`; continued on drop.
pub struct Held(Vec<u32>);

impl Held {
    fn new(pids: Vec<u32>) -> Self {
        let held = Held(pids);
        held.signal("STOP");
        for pid in &held.0 {
            // Field 3 of /proc/PID/stat is the state; T: stopped.
            let stopped = || {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                let after_name = &stat[stat.rfind(')').unwrap() + 1..];
                after_name.split_whitespace().next() == Some("T")
            };
            let deadline = Instant::now() + SETTLE;
            while !stopped() {
                assert!(Instant::now() < deadline, "redis-server {pid} did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        held
    }

    fn signal(&self, name: &str) {
        for pid in &self.0 {
            let status = Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -{name} {pid}");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.signal("CONT");
    }
}

/// A direct connection to a `Backend`.
#[allow(clippy::large_enum_variant)] // one per test, short-lived
pub enum Direct {
    Single(redis::Connection),
    Cluster(redis::cluster::ClusterConnection),
}

impl redis::ConnectionLike for Direct {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            Direct::Single(c) => c.req_packed_command(cmd),
            Direct::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            Direct::Single(c) => c.req_packed_commands(cmd, offset, count),
            Direct::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            Direct::Single(c) => c.req_command(cmd),
            Direct::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Direct::Single(c) => c.get_db(),
            Direct::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Direct::Single(c) => c.check_connection(),
            Direct::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Direct::Single(c) => c.is_open(),
            Direct::Cluster(c) => c.is_open(),
        }
    }
}

/// A local Redis Cluster: three masters (no replicas) on free ports, their slots assigned by
/// `redis-cli --cluster create`. Killed, and its node files removed, on drop.
pub struct Cluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Redis> = (0..3).map(|_| Self::node(dir.path())).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is on PATH (scripts/test.sh installs redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Cluster { nodes, _dir: dir };
        let deadline = Instant::now() + SETTLE;
        while !cluster.nodes.iter().all(|n| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut n.conn())
                .is_ok_and(|i| i.contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// A cluster-enabled redis-server whose port and cluster bus port (+10000) are both free.
    fn node(dir: &std::path::Path) -> Redis {
        for _ in 0..20 {
            let port = fastrand::u16(20_000..=50_000);
            let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !free(port) || !free(port + 10_000) {
                continue;
            }
            let conf = dir.join(format!("nodes-{port}.conf"));
            let mut r = Redis {
                port,
                child: None,
                extra_args: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    conf.to_string_lossy().into_owned(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ],
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start a cluster node");
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Gateway config with this cluster as L2.
    pub fn config(&self) -> Config {
        let mut c = config(None);
        c.l2.cluster_nodes = self.urls();
        c
    }

    /// A direct cluster connection, bypassing tiergate.
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// How many times `command` ran, summed over the nodes.
    pub fn calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|n| n.calls(command)).sum()
    }
}

/// Config for a test gateway: loopback ephemeral ports, a small L1, and L2 if given.
pub fn config(l2_url: Option<&str>) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.resp.listen = "127.0.0.1:0".parse().unwrap();
    c.l1.capacity = tiergate::config::Capacity::Bytes(64 << 20);
    c.shutdown.grace = tiergate::config::HumanDuration(Duration::from_secs(10));
    c.l2.health_interval = tiergate::config::HumanDuration(Duration::from_millis(100));
    if let Some(url) = l2_url {
        c.l2.url = url.to_string();
    }
    c
}

/// Sends raw bytes to a RESP port and reads until the server closes (bounded).
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SETTLE, s.read_to_end(&mut out))
        .await
        .expect("server closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// An in-process gateway and an HTTP client for it.
pub struct Gateway {
    pub running: Option<tiergate::server::Running>,
    /// Whether it follows an invalidation bus (tiered, `l2.invalidation = "pubsub"`).
    bus: bool,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
}

impl Gateway {
    pub async fn start(config: Config) -> Self {
        let bus = !config.standalone()
            && config.l2.invalidation == tiergate::config::Invalidation::Pubsub;
        let running = tiergate::server::start(config)
            .await
            .expect("gateway starts");
        let base = format!("http://{}", running.http_addr);
        let admin = format!("http://{}", running.admin_addr);
        Gateway {
            bus,
            running: Some(running),
            base,
            admin,
            http: reqwest::Client::new(),
        }
    }

    /// Starts against `redis` and waits until the gateway reports ready.
    pub async fn start_ready(config: Config) -> Self {
        let g = Self::start(config).await;
        g.wait_ready().await;
        g
    }

    /// Waits for /readyz, and for the invalidation bus when there is one (until then reads
    /// bypass L1, which tests of L1 behaviour must not race with).
    pub async fn wait_ready(&self) {
        eventually("gateway ready", || async {
            self.admin_status("/readyz").await == 200
        })
        .await;
        if self.bus {
            eventually("invalidation bus subscribed", || async {
                metric(&self.metrics().await, "tiergate_bus_subscribed") == 1.0
            })
            .await;
        }
    }

    pub fn kv(&self, key: &str) -> String {
        format!("{}/v1/kv/{key}", self.base)
    }

    pub async fn get(&self, key: &str) -> reqwest::Response {
        self.http.get(self.kv(key)).send().await.unwrap()
    }

    pub async fn put(&self, key: &str, value: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .put(self.kv(key))
            .body(value)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_status(&self, path: &str) -> u16 {
        match self.http.get(format!("{}{path}", self.admin)).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// PUT that returns once this gateway has heard its own announcement of the write on the
    /// bus (when it follows one). Its own announcement evicts the key here too, so a read
    /// made before it lands may be evicted right after; tests that then expect an L1 hit
    /// write with this.
    pub async fn put_heard(&self, key: &str, value: &str) {
        let before = self.heard().await;
        assert_eq!(self.put(key, value.to_string()).await.status(), 204);
        self.wait_heard_past(before).await;
    }

    /// `n` GETs of `key` sent at once: each answer's `X-Cache` tier and body.
    pub async fn concurrent_gets(&self, key: &str, n: usize) -> Vec<(String, String)> {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (http, url) = (self.http.clone(), self.kv(key));
                tokio::spawn(async move {
                    let r = http.get(url).send().await.unwrap();
                    let tier = r.headers()["x-cache"].to_str().unwrap().to_string();
                    (tier, r.text().await.unwrap())
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// Announcements this gateway has acted on: keys evicted, and its own echoes it had
    /// nothing left to do for (`tiergate_bus_own_echoes_skipped_total`).
    pub async fn heard(&self) -> f64 {
        let m = self.metrics().await;
        metric(&m, "tiergate_bus_invalidations_total")
            + metric(&m, "tiergate_bus_own_echoes_skipped_total")
    }

    /// Waits until the gateway has heard more than `before` invalidations (at once when it
    /// follows no bus).
    pub async fn wait_heard_past(&self, before: f64) {
        if self.bus {
            eventually("the gateway heard the write", || async {
                self.heard().await > before
            })
            .await;
        }
    }

    /// GET of an admin-port path.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
    }

    /// POST /v1/kv:batchGet of `keys`; the JSON answer.
    pub async fn batch_get(&self, keys: &[&str]) -> serde_json::Value {
        self.http
            .post(format!("{}/v1/kv:batchGet", self.base))
            .json(&serde_json::json!({ "keys": keys }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Drains and stops the gateway.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.wait().await;
        }
    }
}

/// The value of one sample line in a Prometheus exposition, e.g.
/// `metric(&text, "tiergate_cache_hits_total{tier=\"l1\"}")`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series}"))
        .trim()
        .parse()
        .unwrap()
}

/// The JSON error code of an error response.
pub async fn error_code(resp: reqwest::Response) -> String {
    let v: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    v["error"]["code"]
        .as_str()
        .expect("error.code is a string")
        .to_string()
}

/// The real `tiergate` binary, started with env overrides, killed on drop.
pub struct Binary {
    pub child: Child,
    pub http: SocketAddr,
    pub resp: SocketAddr,
    pub admin: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Binary {
    pub fn start(extra_env: &[(&str, &str)]) -> Self {
        let addrs = free_ports::<3>().map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        Self::start_on(addrs, extra_env)
    }

    /// Starts on the given HTTP, RESP and admin addresses: those of a running instance, to
    /// share its ports (SO_REUSEPORT) as a rolling restart does.
    pub fn start_on(addrs: [SocketAddr; 3], extra_env: &[(&str, &str)]) -> Self {
        let [http, resp, admin] = addrs;
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(bin());
        // The binary reads every TIERGATE_* variable as config and refuses unknown ones, so
        // the harness's own (TIERGATE_TEST_L2) must not reach it; nor may a developer's.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TIERGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("TIERGATE_HTTP_LISTEN", http.to_string())
            .env("TIERGATE_ADMIN_LISTEN", admin.to_string())
            .env("TIERGATE_RESP_LISTEN", resp.to_string())
            .env("TIERGATE_L1_CAPACITY", "64MiB")
            .env("TIERGATE_RUNTIME_WORKER_THREADS", "2")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("tiergate binary starts");
        let b = Binary {
            child,
            http,
            resp,
            admin,
            log,
        };
        let deadline = Instant::now() + SETTLE;
        while std::net::TcpStream::connect(b.admin).is_err() {
            assert!(
                Instant::now() < deadline,
                "tiergate binary did not start listening; its log:\n{}",
                std::fs::read_to_string(b.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// Waits until this very process (not another one sharing the admin port) says ready.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let want = format!("ready pid={}", self.pid());
        // A fresh client each time: a new connection may reach either instance.
        eventually("this instance is ready", || async {
            let Ok(r) = reqwest::Client::new().get(&url).send().await else {
                return false;
            };
            r.text().await.is_ok_and(|t| t.trim() == want)
        })
        .await;
    }

    pub fn addrs(&self) -> [SocketAddr; 3] {
        [self.http, self.resp, self.admin]
    }

    /// Its Prometheus exposition.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// What the binary logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal ("TERM", "HUP", ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit (bounded) and returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + SETTLE * 2;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "tiergate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tiergate"))
}

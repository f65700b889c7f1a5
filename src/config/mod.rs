//! Typed configuration: every section and key with its default, loading from a TOML file
//! plus `TIERGATE_<SECTION>_<KEY>` environment overrides, and validation that reports every
//! bad key (with its path and why) before failing.

mod load;
mod origin;
mod secret;
mod units;

pub use load::{load, ConfigError};
pub use origin::*;
pub use secret::Secret;
pub use units::{ByteSize, Capacity, HumanDuration};

use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, time::Duration};

/// Data port for HTTP; 8080 is the conventional unprivileged HTTP port.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";
/// A client gets this long to send a request's headers, and an idle HTTP/1 keep-alive
/// connection this long to start its next request (hyper runs one timer for both): long
/// enough for any real client, short enough that a slowloris holds a connection for seconds.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must arrive within this; a body trickled slower is answered 408.
pub const DEFAULT_HTTP_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request is answered within this or gets 503 `request_timeout`: L2 calls are bounded far
/// below it, so only a wedged request meets it.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in flight this long is closed (h2: GOAWAY): idle clients
/// hold no socket for ever. HTTP/1 also idles out at `header_read_timeout` (the next head
/// must arrive within it), so it closes at the shorter of the two.
pub const DEFAULT_HTTP_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request headers past this many bytes get 431; real requests to a KV API are far smaller.
pub const DEFAULT_HTTP_MAX_HEADER_BYTES: u64 = 16 << 10;
/// Headers per request past this get 431; hyper's own default (parsed on the stack).
pub const DEFAULT_HTTP_MAX_HEADERS: usize = 100;
/// Concurrent streams per h2 connection: one connection cannot hold more than this much of a
/// door's admission slots.
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Redis-protocol port; 6380 so it does not clash with a local Redis on 6379.
pub const DEFAULT_RESP_LISTEN: &str = "0.0.0.0:6380";
/// 300k long-lived clients on the 8-core / 32 GB reference server (see docs/TUNING.md);
/// the fd limit (LimitNOFILE) must be above it.
pub const DEFAULT_RESP_MAX_CONNECTIONS: usize = 300_000;
/// A client silent this long is closed: twice a typical 30-45s client PING interval.
pub const DEFAULT_RESP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive probes after this much silence find peers that vanished without a FIN.
pub const DEFAULT_RESP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Longest a command may take to arrive once its first byte has: a 64 MiB command at 20 Mbit/s
/// fits, a client trickling a byte at a time to hold its buffer does not (each byte would
/// otherwise reset `idle_timeout`).
pub const DEFAULT_RESP_COMMAND_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies a client may have pending before they are written and its next commands wait:
/// a pipeline of small replies still goes out in one write, and a client that does not read
/// stops having its commands run.
pub const DEFAULT_RESP_REPLY_BUFFER_BYTES: u64 = 512 << 10;
/// Arguments per command; redis-server's own bound for clients that have not authenticated.
pub const DEFAULT_RESP_MAX_MULTIBULK_LEN: usize = 1024 * 1024;
/// Inline command lines and length headers; redis-server's PROTO_INLINE_MAX_SIZE.
pub const DEFAULT_RESP_MAX_INLINE_BYTES: u64 = 64 * 1024;
/// One whole command (MSET of 16 values at the 4MiB value bound fits); redis-server's own
/// query buffer bound is 1GiB, far more than one gateway connection should hold.
pub const DEFAULT_RESP_MAX_REQUEST_BYTES: u64 = 64 << 20;
/// Read buffer a connection borrows while it has bytes to process; a pipeline of small
/// commands fits in one read.
pub const DEFAULT_RESP_READ_BUFFER_BYTES: u64 = 16 * 1024;
/// Buffers kept for reuse across all RESP connections (16KiB each: 64MiB at most); enough
/// for every busy connection of a loaded 8-core server, freed beyond that.
pub const DEFAULT_RESP_BUFFER_POOL_BUFFERS: usize = 4096;
/// Operators' port; loopback only, so metrics and readiness are not exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Off: the probes and metrics of a loopback-only port need no secret. Set it (32+ characters)
/// when `admin.listen` is reachable from other hosts, as in the Docker image.
pub const DEFAULT_ADMIN_TOKEN: &str = "";
/// Hot keys reported on /hotkeys and in INFO: a screenful.
pub const DEFAULT_ADMIN_HOT_KEYS: usize = 10;
/// One read in this many is counted for hot keys: a key read a thousand times a second is
/// still counted 15 times a second, and the hot path pays one random draw for the rest. (At
/// 16 the sampled records, a scan of 80 counters under a mutex, cost 5% of an L1 hit.)
pub const DEFAULT_ADMIN_HOT_KEYS_SAMPLE: u32 = 64;
/// Accept backlog; matches the `net.core.somaxconn` we recommend in sysctl.conf.
pub const DEFAULT_BACKLOG: u32 = 8192;
/// A quarter of RAM leaves room for Redis clients, buffers and the OS page cache.
pub const DEFAULT_L1_CAPACITY: &str = "25%";
/// How long L1 may hold a key that has no TTL in L2 before asking L2 again: bounds staleness
/// for writes that bypass this instance.
pub const DEFAULT_L1_MAX_TTL: Duration = Duration::from_secs(60);
/// Up to 10% off each L1 lifetime, so keys loaded together do not all expire (and reload
/// from L2) in the same instant.
pub const DEFAULT_L1_TTL_JITTER: f64 = 0.1;
/// Off: a key created by a program writing straight to Redis would read as absent for this
/// long. Turn it on where reads of absent keys are hot (writes through any instance evict it).
pub const DEFAULT_L1_NEGATIVE_TTL: Duration = Duration::ZERO;
/// Off: past its TTL a key may be gone from Redis, and a RESP client expects it gone. Turn it
/// on to keep answering expired values for this long while Redis cannot be reached.
pub const DEFAULT_L1_STALE_IF_ERROR: Duration = Duration::ZERO;
/// Off: an answer past its TTL can be one write behind for a round trip. Turn it on to
/// take L2's latency off reads of keys that just expired.
pub const DEFAULT_L1_STALE_WHILE_REVALIDATE: Duration = Duration::ZERO;
/// Keys a second the warm-up reads: a small share of what one Redis serves, so a fleet of
/// restarting instances does not load it more than its traffic does.
pub const DEFAULT_L1_WARM_RATE: u32 = 10_000;
/// Most keys one warm-up loads; L1's byte budget bounds what stays anyway.
pub const DEFAULT_L1_WARM_MAX_KEYS: usize = 1_000_000;
/// Multiplexed connections to L2; each pipelines every concurrent command, so a few suffice.
/// Forwarded runs and writes keep to one per worker thread (`cache::pipe::pick`).
pub const DEFAULT_L2_CONNECTIONS: usize = 4;
/// A Redis command slower than this is failed: a stuck L2 must not pile up requests.
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP connect budget for L2; loopback or LAN connects take well under this.
pub const DEFAULT_L2_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Readiness probe period for L2; also what drives reconnection while Redis is down.
pub const DEFAULT_L2_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Commands queued per L2 connection before callers wait; bounds memory under bursts.
pub const DEFAULT_L2_PIPELINE_BUFFER: usize = 1024;
/// Clients holding a Redis connection of their own at once (MULTI, WATCH, blocking commands,
/// subscriptions, SELECT n): each is a Redis client, and Redis serves 10,000 by default.
pub const DEFAULT_L2_DEDICATED_CONNECTIONS: usize = 512;
/// Most reads one L2 batch folds into an MGET: enough to amortise a round trip under load,
/// small enough that one batch's time in Redis stays in tens of microseconds.
pub const DEFAULT_L2_MAX_BATCH: usize = 64;
/// L2 failures in a row (unreachable or timed out) that open the circuit breaker: a few, so
/// one dropped connection does not trip it but a dead Redis does within milliseconds.
pub const DEFAULT_L2_BREAKER_FAILURES: u32 = 5;
/// How long an open breaker refuses L2 calls before letting one trial through: short, since a
/// trial costs one call, and it bounds how long a restarted Redis goes unused.
pub const DEFAULT_L2_BREAKER_COOLDOWN: Duration = Duration::from_millis(200);
/// Channel every instance publishes written keys on and evicts heard keys from; one name per
/// deployment, shared by every instance over the same Redis.
pub const DEFAULT_L2_INVALIDATION_CHANNEL: &str = "tiergate:invalidate";
/// Heard invalidations waiting to be applied; past this L1 is flushed rather than the queue
/// grown (a burst of that size means the instance is far behind anyway).
pub const DEFAULT_L2_INVALIDATION_QUEUE: usize = 65_536;
/// Keys longer than this are refused; real keys are short and long ones are usually bugs.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Values larger than this are refused before they are buffered.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 4 << 20;
/// Keys per batch call; larger batches hurt tail latency of everyone sharing L2.
pub const DEFAULT_MAX_BATCH_KEYS: usize = 1000;
/// Body size for batch calls, refused before it is buffered past this.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 << 20;
/// Bytes of one reply (an MGET over RESP, a batchGet over HTTP) a client may make the gateway
/// produce: 16 values of the largest size, so no client can make it hold gigabytes for a
/// reply that costs a 2 KB request (as redis-server's `client-output-buffer-limit`).
pub const DEFAULT_MAX_REPLY_BYTES: u64 = 64 << 20;
/// Requests one door runs at once: far above what L1 hits need (they finish in microseconds),
/// so only a slow L2 fills it: 4096 covers 40 ms of L2 latency at 100k requests a second.
pub const DEFAULT_ADMISSION_MAX_INFLIGHT: usize = 4096;
/// Requests one door lets wait for a slot; past it they are refused at once.
pub const DEFAULT_ADMISSION_MAX_QUEUE: usize = 4096;
/// Longest a request waits for a slot: well inside a 200 ms p99 budget, so a refusal still
/// leaves the client time to retry elsewhere.
pub const DEFAULT_ADMISSION_QUEUE_TIMEOUT: Duration = Duration::from_millis(50);
/// One thread: background work is a few loops and short L2 reads, and it must not take cores
/// from requests; it only needs to be off the request threads.
pub const DEFAULT_BACKGROUND_THREADS: usize = 1;
/// Background jobs (stale refreshes) running at once: enough to keep up with a hot working
/// set turning stale, small enough that refreshes never crowd Redis out for clients.
pub const DEFAULT_BACKGROUND_MAX_INFLIGHT: usize = 64;
/// Background jobs waiting; past it a job is skipped (a refresh is tried again on the next
/// stale read).
pub const DEFAULT_BACKGROUND_MAX_QUEUE: usize = 1024;
/// A job that waited this long is skipped: a refresh that late is no longer worth doing.
pub const DEFAULT_BACKGROUND_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Off: at 100k requests a second a line per request is over 10 MB/s of output; turn it on
/// where the lines are shipped somewhere.
pub const DEFAULT_ACCESS_LOG_ENABLED: bool = false;
/// Where the lines go: stdout, for a container runtime or journald to collect.
pub const DEFAULT_ACCESS_LOG_PATH: &str = "stdout";
/// Records the ring holds (about 64 bytes each: 4MiB): a quarter second of a loaded
/// 8-core server's requests, so a slow disk drops records only after that long.
pub const DEFAULT_ACCESS_LOG_RING_RECORDS: usize = 65_536;
/// How long the writer sleeps when the ring is empty: lines reach the output within this,
/// and the request path never wakes the writer.
pub const DEFAULT_ACCESS_LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// After SIGTERM, connections are served this long more, every HTTP/1 response saying
/// `Connection: close`, so busy clients reconnect (to a new instance on the same port)
/// between requests rather than have an idle connection closed under them: a second covers
/// clients that send a request every few hundred milliseconds.
pub const DEFAULT_SHUTDOWN_DRAIN_DELAY: Duration = Duration::from_secs(1);
/// Time in-flight requests get to finish after SIGTERM, as Kubernetes' default grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub resp: RespConfig,
    pub admin: AdminConfig,
    pub l1: L1Config,
    pub l2: L2Config,
    pub limits: LimitsConfig,
    pub admission: AdmissionConfig,
    pub background: BackgroundConfig,
    pub access_log: AccessLogConfig,
    pub auth: AuthConfig,
    pub shutdown: ShutdownConfig,
    /// Backend services (`[[origins]]`): the third tier. File only (no env overrides).
    pub origins: Vec<OriginConfig>,
}

/// Section names, in file order; env overrides are matched against these.
pub const SECTIONS: &[&str] = &[
    "runtime",
    "log",
    "http",
    "resp",
    "admin",
    "l1",
    "l2",
    "limits",
    "admission",
    "background",
    "access_log",
    "auth",
    "shutdown",
];

/// Who may read and write which keys (see `auth`). Both lists empty (the default): the HTTP
/// door is open, and RESP asks only for `resp.requirepass` when that is set; with
/// `protected_mode`, a door left open serves loopback clients only.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A door with no auth configured (HTTP: no tokens; RESP: no users and no requirepass)
    /// refuses clients that are not on loopback.
    pub protected_mode: bool,
    /// Failed AUTH attempts after which a RESP connection is closed.
    pub max_failures_per_connection: u32,
    /// Step of the delay before a failed AUTH is answered (nth failure: n-1 steps).
    pub failure_delay: HumanDuration,
    /// HTTP bearer tokens; when any is set, every data request needs one.
    pub tokens: Vec<TokenConfig>,
    /// RESP users (`AUTH name password`); when any is set, clients must authenticate, and the
    /// "default" user exists only if `resp.requirepass` is set.
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            protected_mode: DEFAULT_AUTH_PROTECTED_MODE,
            max_failures_per_connection: DEFAULT_AUTH_MAX_FAILURES_PER_CONNECTION,
            failure_delay: HumanDuration(DEFAULT_AUTH_FAILURE_DELAY),
            tokens: Vec::new(),
            users: Vec::new(),
        }
    }
}

impl Config {
    /// The data doors that serve loopback clients only (protected mode, no auth on them),
    /// with the keys that would open them: for the start-up log and `check-config`.
    pub fn protected_doors(&self) -> Vec<(&'static str, SocketAddr, &'static str)> {
        let mut doors = Vec::new();
        if !self.auth.protected_mode {
            return doors;
        }
        if self.auth.tokens.is_empty() {
            doors.push(("http", self.http.listen, "auth.tokens"));
        }
        if self.auth.users.is_empty() && self.resp.requirepass.is_empty() {
            doors.push(("resp", self.resp.listen, "auth.users or resp.requirepass"));
        }
        doors
    }
}

/// One bearer token and the keys it grants.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it, for operators (the token itself is never logged).
    pub name: String,
    pub token: Secret,
    /// Key prefixes it may read; "*" is every key.
    #[serde(default)]
    pub read: Vec<String>,
    /// Key prefixes it may write (set, delete); "*" is every key.
    #[serde(default)]
    pub write: Vec<String>,
}

/// One RESP user and the keys it grants.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: Secret,
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

/// On, as redis-server's protected mode: a door with no auth configured listens on every
/// interface by default, and must not hand every key to whoever can reach it.
pub const DEFAULT_AUTH_PROTECTED_MODE: bool = true;
/// Failed AUTH attempts one RESP connection may make before it is closed: a client with a
/// wrong password fails a few times, not ten; past that it is guessing, and each further ten
/// guesses cost it a new connection.
pub const DEFAULT_AUTH_MAX_FAILURES_PER_CONNECTION: u32 = 10;
/// The reply to a connection's nth failed AUTH waits (n-1) times this: the first mistake
/// costs nothing, ten guesses cost 9 seconds instead of the 80 microseconds of a pipeline.
pub const DEFAULT_AUTH_FAILURE_DELAY: Duration = Duration::from_millis(200);

/// Shortest bearer token accepted: 128 bits of hex, so tokens cannot be guessed online.
pub const MIN_TOKEN_LEN: usize = 32;

/// The background executor (see `exec::background`): its own threads, and limits on its jobs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackgroundConfig {
    pub threads: usize,
    pub max_inflight: usize,
    pub max_queue: usize,
    pub queue_timeout: HumanDuration,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            threads: DEFAULT_BACKGROUND_THREADS,
            max_inflight: DEFAULT_BACKGROUND_MAX_INFLIGHT,
            max_queue: DEFAULT_BACKGROUND_MAX_QUEUE,
            queue_timeout: HumanDuration(DEFAULT_BACKGROUND_QUEUE_TIMEOUT),
        }
    }
}

/// Per-request log lines (see `access`): written by a background thread from a bounded ring;
/// when the ring is full records are dropped and counted, and requests never wait.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// "stdout", or a file path (appended to, created if missing).
    pub path: String,
    pub ring_records: usize,
    pub flush_interval: HumanDuration,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: DEFAULT_ACCESS_LOG_ENABLED,
            path: DEFAULT_ACCESS_LOG_PATH.into(),
            ring_records: DEFAULT_ACCESS_LOG_RING_RECORDS,
            flush_interval: HumanDuration(DEFAULT_ACCESS_LOG_FLUSH_INTERVAL),
        }
    }
}

/// Per front door (HTTP and RESP each have their own): see `exec::admission`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    pub max_inflight: usize,
    pub max_queue: usize,
    pub queue_timeout: HumanDuration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_inflight: DEFAULT_ADMISSION_MAX_INFLIGHT,
            max_queue: DEFAULT_ADMISSION_MAX_QUEUE,
            queue_timeout: HumanDuration(DEFAULT_ADMISSION_QUEUE_TIMEOUT),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads; 0 means one per core.
    pub worker_threads: usize,
}

/// Log level when neither `log.level` nor `RUST_LOG` says otherwise: start, stop, reloads
/// and failures, not a line per request.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// The levels `log.level` may name, alone or after `target=`.
pub const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: "info", "tiergate=debug,warn", ...; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub backlog: u32,
    /// SO_REUSEPORT, so a new instance can bind while the old one drains.
    pub reuse_port: bool,
    /// Serve h2c (HTTP/2 with prior knowledge) beside HTTP/1.1 on the same port.
    pub http2: bool,
    pub header_read_timeout: HumanDuration,
    pub body_read_timeout: HumanDuration,
    pub request_timeout: HumanDuration,
    pub keepalive_timeout: HumanDuration,
    pub max_header_bytes: ByteSize,
    pub max_headers: usize,
    pub http2_max_concurrent_streams: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default"),
            backlog: DEFAULT_BACKLOG,
            reuse_port: true,
            http2: true,
            header_read_timeout: HumanDuration(DEFAULT_HTTP_HEADER_READ_TIMEOUT),
            body_read_timeout: HumanDuration(DEFAULT_HTTP_BODY_READ_TIMEOUT),
            request_timeout: HumanDuration(DEFAULT_HTTP_REQUEST_TIMEOUT),
            keepalive_timeout: HumanDuration(DEFAULT_HTTP_KEEPALIVE_TIMEOUT),
            max_header_bytes: ByteSize(DEFAULT_HTTP_MAX_HEADER_BYTES),
            max_headers: DEFAULT_HTTP_MAX_HEADERS,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespConfig {
    pub listen: SocketAddr,
    /// Clients served at once; the next one gets "-ERR max number of clients reached".
    pub max_connections: usize,
    /// Close a client that sends nothing for this long; "0" never closes.
    pub idle_timeout: HumanDuration,
    /// TCP keepalive idle time; "0" turns keepalive off.
    pub keepalive: HumanDuration,
    /// Close a client whose command is not whole this long after its first byte; "0" never.
    pub command_read_timeout: HumanDuration,
    /// Pending reply bytes past which they are written before the next command runs.
    pub reply_buffer_bytes: ByteSize,
    pub max_multibulk_len: usize,
    pub max_inline_bytes: ByteSize,
    /// Bytes in one whole command, refused from its headers before it is buffered.
    pub max_request_bytes: ByteSize,
    pub read_buffer_bytes: ByteSize,
    pub buffer_pool_buffers: usize,
    /// When set, clients must AUTH (or HELLO ... AUTH) before other commands.
    pub requirepass: Secret,
    /// Allows DEBUG (fault injection, e.g. DEBUG PANIC); off as in redis-server 7.
    pub enable_debug_command: bool,
}

impl Default for RespConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_RESP_LISTEN.parse().expect("valid default"),
            max_connections: DEFAULT_RESP_MAX_CONNECTIONS,
            idle_timeout: HumanDuration(DEFAULT_RESP_IDLE_TIMEOUT),
            keepalive: HumanDuration(DEFAULT_RESP_KEEPALIVE),
            command_read_timeout: HumanDuration(DEFAULT_RESP_COMMAND_READ_TIMEOUT),
            reply_buffer_bytes: ByteSize(DEFAULT_RESP_REPLY_BUFFER_BYTES),
            max_multibulk_len: DEFAULT_RESP_MAX_MULTIBULK_LEN,
            max_inline_bytes: ByteSize(DEFAULT_RESP_MAX_INLINE_BYTES),
            max_request_bytes: ByteSize(DEFAULT_RESP_MAX_REQUEST_BYTES),
            read_buffer_bytes: ByteSize(DEFAULT_RESP_READ_BUFFER_BYTES),
            buffer_pool_buffers: DEFAULT_RESP_BUFFER_POOL_BUFFERS,
            requirepass: Secret::default(),
            enable_debug_command: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every path but the probes (/healthz, /readyz) needs
    /// `Authorization: Bearer <token>`.
    pub token: Secret,
    /// How many of the hottest keys are tracked and reported (0: off).
    pub hot_keys: usize,
    pub hot_keys_sample: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.parse().expect("valid default"),
            token: DEFAULT_ADMIN_TOKEN.into(),
            hot_keys: DEFAULT_ADMIN_HOT_KEYS,
            hot_keys_sample: DEFAULT_ADMIN_HOT_KEYS_SAMPLE,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Config {
    /// Byte budget: "25%" of memory, or a size ("8GiB"); "0" disables L1.
    pub capacity: Capacity,
    /// Longest L1 lifetime of a key read from L2 (the key's own L2 TTL caps it further).
    pub max_ttl: HumanDuration,
    /// Fraction of each L1 lifetime taken off at random (0 = none, at most 0.5).
    pub ttl_jitter: f64,
    /// How long L1 remembers that L2 had no such key (0s: not at all).
    pub negative_ttl: HumanDuration,
    /// How long past its TTL an entry may still answer while L2 cannot be reached (0s: never).
    pub stale_if_error: HumanDuration,
    /// How long past its TTL an entry is answered at once while it is read again from L2 in
    /// the background (0s: never).
    pub stale_while_revalidate: HumanDuration,
    /// Key prefixes L1 is filled with at start (empty: no warm-up).
    pub warm_prefixes: Vec<String>,
    /// Keys a second the warm-up reads, at most.
    pub warm_rate: u32,
    pub warm_max_keys: usize,
}

impl Default for L1Config {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_L1_CAPACITY.parse().expect("valid default"),
            max_ttl: HumanDuration(DEFAULT_L1_MAX_TTL),
            ttl_jitter: DEFAULT_L1_TTL_JITTER,
            negative_ttl: HumanDuration(DEFAULT_L1_NEGATIVE_TTL),
            stale_if_error: HumanDuration(DEFAULT_L1_STALE_IF_ERROR),
            stale_while_revalidate: HumanDuration(DEFAULT_L1_STALE_WHILE_REVALIDATE),
            warm_prefixes: Vec::new(),
            warm_rate: DEFAULT_L1_WARM_RATE,
            warm_max_keys: DEFAULT_L1_WARM_MAX_KEYS,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2Config {
    /// `redis://[user:pass@]host:port[/db]`; empty (and no `cluster_nodes`) runs the
    /// standalone memory mode.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port`); used instead of `url`.
    pub cluster_nodes: Vec<String>,
    pub connections: usize,
    /// Longest wait for a Redis reply; a call that must also (re)connect may take up to
    /// `connect_timeout` more.
    pub timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    pub health_interval: HumanDuration,
    pub pipeline_buffer: usize,
    /// Most Redis connections lent to RESP clients at once, each for as long as connection
    /// state lasts (MULTI/WATCH, a blocking command, subscriptions, SELECT n). Past it, such
    /// a client gets `-BUSY` at once.
    pub dedicated_connections: usize,
    /// Most single-key reads folded into one MGET, and most SETs a client pipelined written
    /// in one round trip.
    pub max_batch: usize,
    pub breaker_failures: u32,
    pub breaker_cooldown: HumanDuration,
    /// How L1 stays coherent with writes made through other instances.
    pub invalidation: Invalidation,
    pub invalidation_channel: String,
    pub invalidation_queue: usize,
    /// Key prefixes Redis reports writes of in `tracking` mode (empty: every key).
    pub tracking_prefixes: Vec<String>,
}

/// How an instance hears of writes made elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Invalidation {
    /// Writes publish their keys on `l2.invalidation_channel`; every instance evicts them.
    Pubsub,
    /// Redis client-side caching: every instance asks Redis to push the keys written under
    /// `l2.tracking_prefixes` (CLIENT TRACKING ON BCAST), whoever wrote them, and evicts them.
    Tracking,
    /// Nothing: L1 entries live out their TTL (at most `l1.max_ttl`). One instance only.
    Off,
}

impl Default for L2Config {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster_nodes: Vec::new(),
            connections: DEFAULT_L2_CONNECTIONS,
            timeout: HumanDuration(DEFAULT_L2_TIMEOUT),
            connect_timeout: HumanDuration(DEFAULT_L2_CONNECT_TIMEOUT),
            health_interval: HumanDuration(DEFAULT_L2_HEALTH_INTERVAL),
            pipeline_buffer: DEFAULT_L2_PIPELINE_BUFFER,
            dedicated_connections: DEFAULT_L2_DEDICATED_CONNECTIONS,
            max_batch: DEFAULT_L2_MAX_BATCH,
            breaker_failures: DEFAULT_L2_BREAKER_FAILURES,
            breaker_cooldown: HumanDuration(DEFAULT_L2_BREAKER_COOLDOWN),
            invalidation: Invalidation::Pubsub,
            invalidation_channel: DEFAULT_L2_INVALIDATION_CHANNEL.into(),
            invalidation_queue: DEFAULT_L2_INVALIDATION_QUEUE,
            tracking_prefixes: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: ByteSize,
    pub max_batch_keys: usize,
    pub max_batch_bytes: ByteSize,
    /// Encoded bytes of one reply; a larger one is refused (HTTP) or closes the client (RESP).
    pub max_reply_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: ByteSize(DEFAULT_MAX_VALUE_BYTES),
            max_batch_keys: DEFAULT_MAX_BATCH_KEYS,
            max_batch_bytes: ByteSize(DEFAULT_MAX_BATCH_BYTES),
            max_reply_bytes: ByteSize(DEFAULT_MAX_REPLY_BYTES),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Bounds the whole drain, `drain_delay` included.
    pub grace: HumanDuration,
    pub drain_delay: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: HumanDuration(DEFAULT_SHUTDOWN_GRACE),
            drain_delay: HumanDuration(DEFAULT_SHUTDOWN_DRAIN_DELAY),
        }
    }
}

/// One bad key: where it is (`l2.timeout`, `TIERGATE_L2_TIMEOUT`) and why it is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.why)
    }
}

impl Config {
    /// True when no L2 is configured: the memory tier is the store.
    pub fn standalone(&self) -> bool {
        self.l2.url.trim().is_empty() && self.l2.cluster_nodes.is_empty()
    }

    /// Checks what types alone cannot: ranges and relations between keys. Returns every problem.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |path: &str, why: String| {
            problems.push(Problem {
                path: path.into(),
                why,
            })
        };
        // A bare word that is not a level parses as a target name ("verbose" = every level
        // of a target that does not exist), which logs nothing: refused here by name.
        let not_levels: Vec<&str> = self
            .log
            .level
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.rsplit_once('=').map_or(d, |(_, level)| level).trim())
            .filter(|l| !LOG_LEVELS.iter().any(|ok| ok.eq_ignore_ascii_case(l)))
            .collect();
        if let Some(l) = not_levels.first() {
            bad(
                "log.level",
                format!(
                    "{l:?} is not a log level; levels are {}, alone or per target (\"tiergate=debug,warn\")",
                    LOG_LEVELS.join(", ")
                ),
            );
        } else if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            bad(
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            );
        }
        if self.http.backlog == 0 {
            bad("http.backlog", "must be at least 1".into());
        }
        for (path, d) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.body_read_timeout", self.http.body_read_timeout),
            ("http.request_timeout", self.http.request_timeout),
            ("http.keepalive_timeout", self.http.keepalive_timeout),
        ] {
            if d.0.is_zero() {
                bad(path, "must be above 0s".into());
            }
        }
        // hyper's read buffer, which bounds the head, cannot be smaller than 8KiB.
        if self.http.max_header_bytes.0 < 8 << 10 || self.http.max_header_bytes.0 > 1 << 20 {
            bad(
                "http.max_header_bytes",
                "must be between 8KiB and 1MiB".into(),
            );
        }
        if self.http.max_headers == 0 {
            bad("http.max_headers", "must be at least 1".into());
        }
        if self.http.http2_max_concurrent_streams == 0 {
            bad(
                "http.http2_max_concurrent_streams",
                "must be at least 1".into(),
            );
        }
        // Port 0 (any free port, as tests use) cannot clash.
        let clash = |a: SocketAddr, b: SocketAddr| a.port() != 0 && a == b;
        if clash(self.http.listen, self.admin.listen) {
            bad("admin.listen", "must differ from http.listen".into());
        }
        if clash(self.resp.listen, self.http.listen) || clash(self.resp.listen, self.admin.listen) {
            bad(
                "resp.listen",
                "must differ from http.listen and admin.listen".into(),
            );
        }
        if self.resp.max_connections == 0 {
            bad("resp.max_connections", "must be at least 1".into());
        }
        if self.resp.max_multibulk_len == 0 || self.resp.max_multibulk_len > i32::MAX as usize {
            bad(
                "resp.max_multibulk_len",
                "must be between 1 and 2147483647".into(),
            );
        }
        if self.resp.max_request_bytes.0 < self.limits.max_value_bytes.0 {
            bad(
                "resp.max_request_bytes",
                "must be at least limits.max_value_bytes".into(),
            );
        }
        if self.resp.max_request_bytes.0 > u64::from(u32::MAX) {
            bad("resp.max_request_bytes", "must be below 4GiB".into());
        }
        if !(1024..=16 << 20).contains(&self.resp.read_buffer_bytes.0) {
            bad(
                "resp.read_buffer_bytes",
                "must be between 1KiB and 16MiB".into(),
            );
        }
        if !(1024..=64 << 20).contains(&self.resp.reply_buffer_bytes.0) {
            bad(
                "resp.reply_buffer_bytes",
                "must be between 1KiB and 64MiB".into(),
            );
        }
        if self.resp.max_inline_bytes.0 < 1024 {
            bad("resp.max_inline_bytes", "must be at least 1KiB".into());
        }
        let l1_off = matches!(self.l1.capacity, Capacity::Bytes(0))
            || matches!(self.l1.capacity, Capacity::PercentOfMemory(p) if p == 0.0);
        if self.standalone() && l1_off {
            bad(
                "l1.capacity",
                "must be above 0 in standalone mode, where L1 is the only store".into(),
            );
        }
        if !(0.0..=0.5).contains(&self.l1.ttl_jitter) {
            bad("l1.ttl_jitter", "must be between 0 and 0.5".into());
        }
        if self.admission.max_inflight == 0
            || self.admission.max_inflight > tokio::sync::Semaphore::MAX_PERMITS
        {
            bad(
                "admission.max_inflight",
                "must be at least 1 (and a sane count)".into(),
            );
        }
        if self.l1.warm_rate == 0 {
            bad("l1.warm_rate", "must be at least 1 key a second".into());
        }
        if self.l1.max_ttl.0.is_zero() {
            bad("l1.max_ttl", "must be above 0s".into());
        }
        if self.l2.cluster_nodes.is_empty() {
            if !self.standalone() {
                if let Err(e) = redis::Client::open(self.l2.url.as_str()) {
                    bad("l2.url", format!("not a Redis URL: {e}"));
                }
            }
        } else {
            if !self.l2.url.trim().is_empty() {
                bad(
                    "l2.url",
                    "must be empty when l2.cluster_nodes names a cluster".into(),
                );
            }
            for (i, node) in self.l2.cluster_nodes.iter().enumerate() {
                if let Err(e) = redis::Client::open(node.as_str()) {
                    bad(
                        &format!("l2.cluster_nodes[{i}]"),
                        format!("not a Redis URL: {e}"),
                    );
                }
            }
            if self.l2.invalidation == Invalidation::Tracking {
                bad(
                    "l2.invalidation",
                    "\"tracking\" is not supported on a cluster yet (each node reports only its own keys); use \"pubsub\"".into(),
                );
            }
        }
        if self.l2.connections == 0 || self.l2.connections > 256 {
            bad("l2.connections", "must be between 1 and 256".into());
        }
        for (path, d) in [
            ("l2.timeout", self.l2.timeout),
            ("l2.connect_timeout", self.l2.connect_timeout),
            ("l2.health_interval", self.l2.health_interval),
            ("l2.breaker_cooldown", self.l2.breaker_cooldown),
        ] {
            if d.0.is_zero() {
                bad(path, "must be above 0s".into());
            }
        }
        if self.l2.pipeline_buffer == 0 {
            bad("l2.pipeline_buffer", "must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.l2.dedicated_connections) {
            bad(
                "l2.dedicated_connections",
                "must be between 1 and 100000".into(),
            );
        }
        if !(1..=4096).contains(&self.l2.max_batch) {
            bad("l2.max_batch", "must be between 1 and 4096".into());
        }
        if self.admin.hot_keys > 1000 {
            bad("admin.hot_keys", "must be at most 1000".into());
        }
        if !self.admin.token.is_empty() && self.admin.token.expose().len() < MIN_TOKEN_LEN {
            bad(
                "admin.token",
                format!(
                    "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 16`)"
                ),
            );
        }
        if self.admin.hot_keys_sample == 0 {
            bad("admin.hot_keys_sample", "must be at least 1".into());
        }
        if self.l2.breaker_failures == 0 {
            bad("l2.breaker_failures", "must be at least 1".into());
        }
        if self.l2.invalidation == Invalidation::Pubsub && self.l2.invalidation_channel.is_empty() {
            bad(
                "l2.invalidation_channel",
                "must not be empty when l2.invalidation = \"pubsub\"".into(),
            );
        }
        let prefixes = &self.l2.tracking_prefixes;
        if prefixes.iter().enumerate().any(|(i, a)| {
            prefixes
                .iter()
                .enumerate()
                .any(|(j, b)| i != j && b.starts_with(a.as_str()))
        }) {
            bad(
                "l2.tracking_prefixes",
                "no prefix may start another (Redis refuses overlapping tracking prefixes)".into(),
            );
        }
        if self.l2.invalidation_queue == 0 {
            bad("l2.invalidation_queue", "must be at least 1".into());
        }
        if self.limits.max_key_bytes == 0 || self.limits.max_key_bytes > 512 << 20 {
            bad(
                "limits.max_key_bytes",
                "must be between 1 and 512MiB (Redis' own bound)".into(),
            );
        }
        // L1 weighs entries in u32 bytes and Redis caps strings at 512MiB.
        if self.limits.max_value_bytes.0 == 0 || self.limits.max_value_bytes.0 > 512 << 20 {
            bad(
                "limits.max_value_bytes",
                "must be between 1 and 512MiB".into(),
            );
        }
        if self.limits.max_batch_keys == 0 {
            bad("limits.max_batch_keys", "must be at least 1".into());
        }
        if self.limits.max_batch_bytes.0 == 0 {
            bad("limits.max_batch_bytes", "must be at least 1".into());
        }
        // A reply must fit at least one value of the largest size, with its framing.
        if self.limits.max_reply_bytes.0 < self.limits.max_value_bytes.0 + 64 {
            bad(
                "limits.max_reply_bytes",
                "must be at least limits.max_value_bytes + 64 bytes, so a GET of the largest value fits"
                    .into(),
            );
        }
        self.validate_auth(&mut bad);
        if !(1..=64).contains(&self.background.threads) {
            bad("background.threads", "must be between 1 and 64".into());
        }
        if self.background.max_inflight == 0
            || self.background.max_inflight > tokio::sync::Semaphore::MAX_PERMITS
        {
            bad("background.max_inflight", "must be at least 1".into());
        }
        if self.shutdown.drain_delay > self.shutdown.grace {
            bad(
                "shutdown.drain_delay",
                "must not be longer than shutdown.grace".into(),
            );
        }
        if self.access_log.ring_records == 0 || self.access_log.ring_records > 16 << 20 {
            bad(
                "access_log.ring_records",
                "must be between 1 and 16777216".into(),
            );
        }
        if self.access_log.path.trim().is_empty() {
            bad(
                "access_log.path",
                "must be \"stdout\" or a file path".into(),
            );
        }
        if self.access_log.flush_interval.0.is_zero() {
            bad("access_log.flush_interval", "must be above 0s".into());
        }
        validate_origins(&self.origins, &mut problems);
        problems
    }

    fn validate_auth(&self, bad: &mut impl FnMut(&str, String)) {
        // Counted in one byte of each connection's state (`resp::session`).
        if !(1..=255).contains(&self.auth.max_failures_per_connection) {
            bad(
                "auth.max_failures_per_connection",
                "must be between 1 and 255".into(),
            );
        }
        // The longest wait is before the last failure that is answered without a close.
        let steps = self.auth.max_failures_per_connection.clamp(2, 255) - 2;
        if self.auth.failure_delay.0 * steps > Duration::from_secs(60) {
            bad(
                "auth.failure_delay",
                "times (auth.max_failures_per_connection - 2) must be at most 60s: the nth failed AUTH waits n-1 times it".into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            let at = format!("auth.tokens[{i}]");
            if t.name.trim().is_empty() || !seen.insert(("token", t.name.as_str())) {
                bad(&format!("{at}.name"), "must be set and unique".into());
            }
            if t.token.expose().len() < MIN_TOKEN_LEN {
                bad(
                    &format!("{at}.token"),
                    format!(
                        "must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 16`)"
                    ),
                );
            }
            if self.auth.tokens[..i].iter().any(|o| o.token == t.token) {
                bad(
                    &format!("{at}.token"),
                    "is the same as an earlier token".into(),
                );
            }
            if t.read.is_empty() && t.write.is_empty() {
                bad(&at, "grants nothing: give it read or write prefixes".into());
            }
        }
        for (i, u) in self.auth.users.iter().enumerate() {
            let at = format!("auth.users[{i}]");
            if u.name == "default" {
                bad(
                    &format!("{at}.name"),
                    "\"default\" is the resp.requirepass user".into(),
                );
            } else if u.name.is_empty()
                || u.name.bytes().any(|c| !c.is_ascii_graphic())
                || !seen.insert(("user", u.name.as_str()))
            {
                bad(
                    &format!("{at}.name"),
                    "must be set, unique and without spaces".into(),
                );
            }
            if u.password.is_empty() {
                bad(&format!("{at}.password"), "must be set".into());
            }
            if u.read.is_empty() && u.write.is_empty() {
                bad(&at, "grants nothing: give it read or write prefixes".into());
            }
        }
    }

    /// Worker threads to start: the configured count, or one per core.
    pub fn worker_threads(&self) -> usize {
        match self.runtime.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let c = Config::default();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.resp.listen.to_string(), "0.0.0.0:6380");
        assert!(c.standalone());
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut c = Config::default();
        c.l2.connections = 0;
        c.l2.timeout = HumanDuration(Duration::ZERO);
        c.limits.max_batch_keys = 0;
        c.l2.url = "nonsense://x".into();
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        let mut standalone_without_l1 = Config::default();
        standalone_without_l1.l1.capacity = Capacity::Bytes(0);
        assert_eq!(standalone_without_l1.validate()[0].path, "l1.capacity");
        assert_eq!(
            paths,
            [
                "l2.url",
                "l2.connections",
                "l2.timeout",
                "limits.max_batch_keys"
            ]
        );
    }

    #[test]
    fn bounds_added_for_the_bus_jitter_and_codec_are_checked() {
        let mut c = Config::default();
        c.resp.max_request_bytes = ByteSize(4 << 30);
        c.l1.ttl_jitter = 0.6;
        c.l2.invalidation_channel = String::new();
        c.l2.invalidation_queue = 0;
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "resp.max_request_bytes",
                "l1.ttl_jitter",
                "l2.invalidation_channel",
                "l2.invalidation_queue"
            ]
        );
        c.l1.ttl_jitter = -0.1;
        c.l2.invalidation = Invalidation::Off;
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "resp.max_request_bytes",
                "l1.ttl_jitter",
                "l2.invalidation_queue"
            ],
            "an empty channel is fine with the bus off"
        );
    }

    #[test]
    fn batch_and_breaker_bounds_are_checked() {
        let mut c = Config::default();
        c.l2.max_batch = 0;
        c.l2.breaker_failures = 0;
        c.l2.breaker_cooldown = HumanDuration(Duration::ZERO);
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            ["l2.breaker_cooldown", "l2.max_batch", "l2.breaker_failures"]
        );
        c.l2.max_batch = 4097;
        assert!(c.validate().iter().any(|p| p.path == "l2.max_batch"));
    }

    #[test]
    fn http_admission_warm_up_and_hot_key_bounds_are_checked() {
        let mut c = Config::default();
        c.http.header_read_timeout = HumanDuration(Duration::ZERO);
        c.http.body_read_timeout = HumanDuration(Duration::ZERO);
        c.http.request_timeout = HumanDuration(Duration::ZERO);
        c.http.max_header_bytes = ByteSize(4 << 10);
        c.http.max_headers = 0;
        c.http.http2_max_concurrent_streams = 0;
        c.admission.max_inflight = 0;
        c.l1.warm_rate = 0;
        c.admin.hot_keys = 1001;
        c.admin.hot_keys_sample = 0;
        let mut paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "admin.hot_keys",
                "admin.hot_keys_sample",
                "admission.max_inflight",
                "http.body_read_timeout",
                "http.header_read_timeout",
                "http.http2_max_concurrent_streams",
                "http.max_header_bytes",
                "http.max_headers",
                "http.request_timeout",
                "l1.warm_rate",
            ]
        );
        c.http.max_header_bytes = ByteSize(2 << 20);
        assert!(c
            .validate()
            .iter()
            .any(|p| p.path == "http.max_header_bytes"));
    }

    #[test]
    fn unknown_log_levels_are_refused_with_the_known_ones() {
        let mut c = Config::default();
        for ok in ["warn", "DEBUG", "tiergate=debug,warn", "off", " info "] {
            c.log.level = ok.into();
            assert!(c.validate().is_empty(), "{ok}: {:?}", c.validate());
        }
        for (level, named) in [
            ("verbose", "\"verbose\""),
            ("tiergate=loud", "\"loud\""),
            ("warn,chatty", "\"chatty\""),
        ] {
            c.log.level = level.into();
            let problems = c.validate();
            assert_eq!(problems.len(), 1, "{level}: {problems:?}");
            assert_eq!(problems[0].path, "log.level");
            assert!(
                problems[0]
                    .why
                    .starts_with(&format!("{named} is not a log level"))
                    && problems[0]
                        .why
                        .contains("trace, debug, info, warn, error, off"),
                "{level}: {}",
                problems[0].why
            );
        }
    }

    #[test]
    fn a_short_admin_token_is_refused() {
        let mut c = Config::default();
        c.admin.token = "short".into();
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["admin.token"]);
        c.admin.token = "x".repeat(MIN_TOKEN_LEN).as_str().into();
        assert!(c.validate().is_empty());
    }

    #[test]
    fn auth_failure_bounds_are_checked() {
        let mut c = Config::default();
        c.auth.max_failures_per_connection = 0;
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["auth.max_failures_per_connection"]);
        c.auth.max_failures_per_connection = 256;
        assert!(c
            .validate()
            .iter()
            .any(|p| p.path == "auth.max_failures_per_connection"));
        // The longest wait, before the last failure answered, is 8 × 7.5s.
        c.auth.max_failures_per_connection = 10;
        c.auth.failure_delay = HumanDuration(Duration::from_millis(7500));
        assert!(c.validate().is_empty());
        c.auth.failure_delay = HumanDuration(Duration::from_millis(7501));
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["auth.failure_delay"]);
    }

    #[test]
    fn cluster_nodes_are_checked() {
        let mut c = Config::default();
        c.l2.cluster_nodes = vec!["redis://127.0.0.1:7000".into()];
        assert!(!c.standalone());
        assert!(c.validate().is_empty());
        c.l2.url = "redis://127.0.0.1:6379".into();
        c.l2.cluster_nodes.push("not a url".into());
        c.l2.invalidation = Invalidation::Tracking;
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["l2.url", "l2.cluster_nodes[1]", "l2.invalidation"]);
    }

    #[test]
    fn overlapping_tracking_prefixes_are_refused() {
        let mut c = Config::default();
        c.l2.tracking_prefixes = vec!["user:".into(), "sess:".into()];
        assert!(c.validate().is_empty());
        c.l2.tracking_prefixes.push("user:1".into());
        let paths: Vec<_> = c.validate().into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["l2.tracking_prefixes"]);
    }
}

//! Every metric tiergate exports, defined in one place. Label values are resolved once at
//! start-up into fixed arrays, so recording on the hot path is an index and an atomic add:
//! no label hashing, no `String` formatting, no registry lock.

pub mod admin;
mod origin;
mod proxy;

pub use origin::{OriginMetrics, OriginStatus, UpstreamMetrics};
pub use proxy::{ProxyMetrics, ProxyOutcome};

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::time::Duration;

/// HTTP routes, as the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    KvGet,
    KvPut,
    KvDelete,
    BatchGet,
    BatchSet,
    /// Anything the router does not know; one label value so scanners cannot grow the set.
    Unmatched,
    /// A request proxied to an origin (`[[origins.routes]]`); per route in `proxy_*`.
    Proxy,
}

impl Route {
    const ALL: [Route; 7] = [
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::BatchGet,
        Route::BatchSet,
        Route::Unmatched,
        Route::Proxy,
    ];
    /// The operation, as the access log names it.
    pub fn op(self, head: bool) -> &'static str {
        match self {
            Route::KvGet if head => "HEAD",
            Route::KvGet => "GET",
            Route::KvPut => "PUT",
            Route::KvDelete => "DELETE",
            Route::BatchGet => "batchGet",
            Route::BatchSet => "batchSet",
            Route::Unmatched => "other",
            Route::Proxy => "proxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::KvGet => "kv_get",
            Route::KvPut => "kv_put",
            Route::KvDelete => "kv_delete",
            Route::BatchGet => "batch_get",
            Route::BatchSet => "batch_set",
            Route::Unmatched => "unmatched",
            Route::Proxy => "proxy",
        }
    }
}

/// The statuses tiergate answers with; anything else is counted as "other".
const STATUSES: [u16; 12] = [200, 204, 400, 401, 403, 404, 405, 413, 429, 500, 503, 504];
const STATUS_LABELS: [&str; 13] = [
    "200", "204", "400", "401", "403", "404", "405", "413", "429", "500", "503", "504", "other",
];

/// Where a read was answered from, as the `tier` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    L1 = 0,
    L2 = 1,
    /// Loaded from a backend service (`[[origins.loaders]]`).
    Origin = 2,
}

/// L2 operations, as the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L2Op {
    Get = 0,
    Set = 1,
    Del = 2,
    MGet = 3,
    MSet = 4,
    Ping = 5,
    Exists = 6,
    Incr = 7,
    Expire = 8,
    Ttl = 9,
    /// A run of commands forwarded as they came (the RESP door's commands it does not serve).
    Forward = 10,
}
const L2_OPS: [&str; 11] = [
    "get", "set", "del", "mget", "mset", "ping", "exists", "incr", "expire", "ttl", "forward",
];

/// Front doors, as the `door` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    Http = 0,
    Admin = 1,
    Resp = 2,
}
const DOORS: [&str; 3] = ["http", "admin", "resp"];

/// What kind of RESP command a latency is of, as the `class` label: a bounded set, where
/// every command name would be an unbounded one (forwarded commands are anything Redis knows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespClass {
    /// Served from the cache: GET (an L1 miss goes to Redis with the client's run), MGET,
    /// EXISTS, TTL.
    Read = 0,
    /// Served writes: SET, DEL, EXPIRE (and, in standalone mode, MSET and the counters).
    Write = 1,
    /// Sent to Redis as they came, on our connections or a dedicated one.
    Forwarded = 2,
    /// About the connection itself: PING, AUTH, HELLO, CLIENT, SELECT, QUIT, INFO ...
    Connection = 3,
}
const RESP_CLASSES: [&str; 4] = ["read", "write", "forwarded", "connection"];

impl RespClass {
    /// Every class, in the order of `RESP_CLASSES` (its value is its index).
    pub const ALL: [RespClass; 4] = [
        RespClass::Read,
        RespClass::Write,
        RespClass::Forwarded,
        RespClass::Connection,
    ];
}

/// Why the RESP door closed a client on its own (not the client leaving, nor idling out), as
/// the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespClose {
    /// A command not whole `resp.command_read_timeout` after its first byte.
    CommandTimeout = 0,
    /// A reply over `limits.max_reply_bytes`.
    ReplyLimit = 1,
    /// An HTTP request (`POST`, `Host:`) sent to the RESP port.
    CrossProtocol = 2,
    /// A command that opens connection state the door does not hold (MULTI, SUBSCRIBE ...).
    ConnectionState = 3,
    /// Replies the client did not take for `resp.idle_timeout`.
    WriteTimeout = 4,
}
const RESP_CLOSES: [&str; 5] = [
    "command_timeout",
    "reply_limit",
    "cross_protocol",
    "connection_state",
    "write_timeout",
];

/// Reads per L2 batch: powers of two up to well past any sane `l2.max_batch`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Request latencies from tens of microseconds (L1 hits) to seconds (timeouts).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

/// One door's admission figures (see `exec::admission`).
#[derive(Clone)]
pub struct AdmissionMetrics {
    pub inflight: IntGauge,
    pub queued: IntGauge,
    /// By `exec::Refused` (queue full, queue timeout).
    pub rejected: [IntCounter; 2],
    pub queue_wait: Histogram,
}

pub struct Metrics {
    registry: Registry,
    /// The process' own figures (`process_resident_memory_bytes`, `process_open_fds`,
    /// `process_max_fds`, `process_cpu_seconds_total`, `process_threads`,
    /// `process_start_time_seconds`), under the names every exporter gives them: kept out of
    /// `registry`, whose prefix would rename them.
    process: Registry,
    admission: [AdmissionMetrics; 3],
    /// The background executor's jobs, as `door="background"`.
    pub background: AdmissionMetrics,
    http_requests: Vec<[IntCounter; STATUS_LABELS.len()]>,
    http_duration: Vec<Histogram>,
    resp_duration: [Histogram; RESP_CLASSES.len()],
    cache_hits: [IntCounter; 3],
    cache_misses: [IntCounter; 3],
    pub l1_entries: IntGauge,
    pub l1_bytes: IntGauge,
    pub l1_negative_hits: IntCounter,
    pub l1_stale_served: IntCounter,
    pub l1_refreshes: IntCounter,
    /// `l1.capacity` in bytes: against `l1_bytes`, how full L1 is. (An eviction counter
    /// would need moka's eviction listener, which made every invalidation of a cached key
    /// 5k instructions dearer.)
    pub l1_capacity_bytes: IntGauge,
    /// The hottest key's share of recently sampled reads, and the reported top's
    /// (`admin.hot_keys`) together: how concentrated reads are, no key named.
    pub hot_key_share: Gauge,
    pub hot_keys_share: Gauge,
    pub l1_warming: IntGauge,
    pub l1_warm_keys: IntCounter,
    l2_duration: Vec<Histogram>,
    l2_errors: Vec<IntCounter>,
    pub l2_up: IntGauge,
    /// 1 when an L2 is configured (tiered), 0 in standalone mode: lets an alert on `l2_up`
    /// tell "no Redis by design" from "Redis down".
    pub l2_configured: IntGauge,
    pub l2_batch_size: Histogram,
    l2_in_flight: IntGauge,
    pub l2_circuit_open: IntGauge,
    pub l2_circuit_rejected: IntCounter,
    /// Dedicated L2 connections lent to RESP clients now (MULTI, blocking, subscriptions).
    pub l2_dedicated_lent: IntGauge,
    /// Clients refused a dedicated connection: all `l2.dedicated_connections` were lent.
    pub l2_dedicated_busy: IntCounter,
    open_connections: [IntGauge; 3],
    connections: [IntCounter; 3],
    rejected_connections: [IntCounter; 3],
    /// Most connections a door takes at once (`resp.max_connections`); only doors with one.
    pub resp_connection_budget: IntGauge,
    pub accept_errors: IntCounter,
    pub heartbeat_timeouts: IntCounter,
    pub resp_protocol_errors: IntCounter,
    pub resp_commands: IntCounter,
    pub buffer_pool_hits: IntCounter,
    pub buffer_pool_misses: IntCounter,
    pub buffer_pool_buffers: IntGauge,
    pub connection_panics: IntCounter,
    pub bus_subscribed: IntGauge,
    pub bus_alone: IntGauge,
    pub bus_invalidations: IntCounter,
    pub bus_own_echoes_skipped: IntCounter,
    pub bus_flushes: IntCounter,
    auth_denied: [[IntCounter; 3]; 3],
    resp_closed: [IntCounter; 5],
    protected_refused: [IntCounter; 3],
    auth_failure_closes: [IntCounter; 3],
    /// Config reloads (SIGHUP): [applied, refused].
    config_reloads: [IntCounter; 2],
    pub http_idle_closed: IntCounter,
    /// Replies refused for their size (`limits.max_reply_bytes`): [http, resp].
    reply_limit: [IntCounter; 2],
    pub access_log_written: IntCounter,
    pub access_log_dropped: IntCounter,
    origin: origin::OriginVecs,
    proxy: proxy::ProxyVecs,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("tiergate".into()), None).expect("valid prefix");
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique")
        };

        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let resp_duration = HistogramVec::new(
            HistogramOpts::new(
                "resp_command_duration_seconds",
                "RESP command latency, by class: from when its batch was read to when the batch's replies were written",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["class"],
        )
        .unwrap();
        let hits = IntCounterVec::new(
            Opts::new("cache_hits_total", "Reads answered from a tier"),
            &["tier"],
        )
        .unwrap();
        let misses = IntCounterVec::new(
            Opts::new("cache_misses_total", "Reads a tier could not answer"),
            &["tier"],
        )
        .unwrap();
        let l1_entries = IntGauge::new("l1_entries", "Entries held in L1 (approximate)").unwrap();
        let l1_bytes = IntGauge::new("l1_bytes", "Weighted bytes held in L1").unwrap();
        let l1_negative_hits = IntCounter::new(
            "l1_negative_hits_total",
            "Reads answered 'no such key' from L1's record of an L2 miss (l1.negative_ttl)",
        )
        .unwrap();
        let l1_stale_served = IntCounter::new(
            "l1_stale_served_total",
            "Reads answered from an L1 entry past its TTL because L2 could not be asked (l1.stale_if_error)",
        )
        .unwrap();
        let l1_refreshes = IntCounter::new(
            "l1_refreshes_total",
            "Background refreshes of L1 entries answered stale (l1.stale_while_revalidate) that asked L2",
        )
        .unwrap();
        let l1_warming = IntGauge::new(
            "l1_warming",
            "1 while the start-up warm-up fills L1 (l1.warm_prefixes)",
        )
        .unwrap();
        let l1_warm_keys = IntCounter::new(
            "l1_warm_keys_total",
            "Keys the start-up warm-up found by SCAN and read from L2",
        )
        .unwrap();
        let l2_duration = HistogramVec::new(
            HistogramOpts::new(
                "l2_command_duration_seconds",
                "L2 (Redis) round-trip latency, by op",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["op"],
        )
        .unwrap();
        let l2_errors = IntCounterVec::new(
            Opts::new(
                "l2_errors_total",
                "L2 (Redis) commands that failed or timed out, by op",
            ),
            &["op"],
        )
        .unwrap();
        let hot_key_share = Gauge::new(
            "hot_key_read_share",
            "The hottest key's share of recently sampled reads (0..1; 0 with hot key tracking off); its name is on /hotkeys",
        )
        .unwrap();
        let hot_keys_share = Gauge::new(
            "hot_keys_read_share",
            "The reported top admin.hot_keys keys' share of recently sampled reads (0..1)",
        )
        .unwrap();
        let l1_capacity_bytes = IntGauge::new(
            "l1_capacity_bytes",
            "L1's byte budget (l1.capacity resolved); compare tiergate_l1_bytes",
        )
        .unwrap();
        let l2_up = IntGauge::new("l2_up", "1 while the last L2 health probe succeeded").unwrap();
        let l2_configured = IntGauge::new(
            "l2_configured",
            "1 when an L2 (Redis) is configured, 0 in standalone memory mode",
        )
        .unwrap();
        let l2_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "l2_batch_size",
                "Reads folded into each MGET the L2 read pipeline sent",
            )
            .buckets(BATCH_BUCKETS.to_vec()),
        )
        .unwrap();
        let l2_in_flight = IntGauge::new(
            "l2_in_flight",
            "L2 calls sent or queued and not yet answered (a batched read counts once per key)",
        )
        .unwrap();
        let l2_circuit_open = IntGauge::new(
            "l2_circuit_open",
            "1 while the L2 circuit breaker refuses calls (open or half-open)",
        )
        .unwrap();
        let l2_dedicated_lent = IntGauge::new(
            "l2_dedicated_lent",
            "Dedicated L2 connections lent to RESP clients now (MULTI/WATCH, blocking commands, subscriptions, CLIENT TRACKING, SELECT n)",
        )
        .unwrap();
        let l2_dedicated_busy = IntCounter::new(
            "l2_dedicated_busy_total",
            "RESP clients refused a dedicated L2 connection (-BUSY): all l2.dedicated_connections were lent",
        )
        .unwrap();
        let l2_circuit_rejected = IntCounter::new(
            "l2_circuit_rejected_total",
            "L2 calls refused at once because the circuit breaker was open",
        )
        .unwrap();
        let open = IntGaugeVec::new(
            Opts::new("open_connections", "Client connections open now, by door"),
            &["door"],
        )
        .unwrap();
        let conns = IntCounterVec::new(
            Opts::new("connections_total", "Client connections accepted, by door"),
            &["door"],
        )
        .unwrap();
        let rejected = IntCounterVec::new(
            Opts::new(
                "connections_rejected_total",
                "Client connections refused because the door's connection budget was spent",
            ),
            &["door"],
        )
        .unwrap();
        let budget = IntGaugeVec::new(
            Opts::new(
                "connection_budget",
                "Most client connections the door takes at once (resp.max_connections); doors without a budget have no series",
            ),
            &["door"],
        )
        .unwrap();
        let heartbeat_timeouts = IntCounter::new(
            "tcp_heartbeat_timeouts_total",
            "RESP clients closed after sending nothing for resp.idle_timeout",
        )
        .unwrap();
        let resp_protocol_errors = IntCounter::new(
            "resp_protocol_errors_total",
            "RESP connections closed because their byte stream could not be framed",
        )
        .unwrap();
        let resp_commands = IntCounter::new(
            "resp_commands_total",
            "RESP commands received (run or refused)",
        )
        .unwrap();
        let buffer_pool_hits =
            IntCounter::new("buffer_pool_hits_total", "I/O buffers taken from the pool").unwrap();
        let buffer_pool_misses = IntCounter::new(
            "buffer_pool_misses_total",
            "I/O buffers allocated because the pool was empty",
        )
        .unwrap();
        let buffer_pool_buffers =
            IntGauge::new("buffer_pool_buffers", "I/O buffers held in the pool now").unwrap();
        let connection_panics = IntCounter::new(
            "connection_panics_total",
            "Connection tasks that panicked (each closed that connection only)",
        )
        .unwrap();
        let bus_subscribed = IntGauge::new(
            "bus_subscribed",
            "1 while this instance hears the invalidation bus (L1 is trusted only then)",
        )
        .unwrap();
        let bus_alone = IntGauge::new(
            "bus_alone",
            "1 while this instance is the only one on the invalidation bus, and so does not \
             subscribe to its own announcements",
        )
        .unwrap();
        let bus_invalidations = IntCounter::new(
            "bus_invalidations_total",
            "Keys evicted from L1 because the invalidation bus announced a write",
        )
        .unwrap();
        let bus_own_echoes_skipped = IntCounter::new(
            "bus_own_echoes_skipped_total",
            "This instance's own announcements heard back on the bus and not acted on: every write in them had been evicted here after Redis answered",
        )
        .unwrap();
        let auth_denied = IntCounterVec::new(
            Opts::new(
                "auth_denied_total",
                "Requests refused by auth, by door and reason (missing or invalid credentials, or a key outside their scopes)",
            ),
            &["door", "reason"],
        )
        .unwrap();
        reg(Box::new(auth_denied.clone()));
        let auth_denied = DOORS.map(|door| {
            crate::auth::Denied::ALL.map(|d| auth_denied.with_label_values(&[door, d.label()]))
        });
        let closed = IntCounterVec::new(
            Opts::new(
                "resp_closed_total",
                "RESP clients the gateway closed, by reason: a command too slow to arrive, a reply over limits.max_reply_bytes, an HTTP request on the RESP port, a command needing connection state the door does not hold, replies not taken",
            ),
            &["reason"],
        )
        .unwrap();
        reg(Box::new(closed.clone()));
        let resp_closed = RESP_CLOSES.map(|r| closed.with_label_values(&[r]));
        let protected_refused = IntCounterVec::new(
            Opts::new(
                "protected_mode_refused_total",
                "Connections refused by protected mode (a door without auth serves loopback clients only), by door",
            ),
            &["door"],
        )
        .unwrap();
        reg(Box::new(protected_refused.clone()));
        let protected_refused = DOORS.map(|door| protected_refused.with_label_values(&[door]));
        let failure_closes = IntCounterVec::new(
            Opts::new(
                "auth_failure_closes_total",
                "Connections closed after auth.max_failures_per_connection failed logins, by door (each failure is in auth_denied_total{reason=\"invalid\"})",
            ),
            &["door"],
        )
        .unwrap();
        reg(Box::new(failure_closes.clone()));
        let auth_failure_closes = DOORS.map(|door| failure_closes.with_label_values(&[door]));
        let reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Config reloads on SIGHUP: applied, or refused (the file did not load or validate)",
            ),
            &["result"],
        )
        .unwrap();
        reg(Box::new(reloads.clone()));
        let config_reloads = ["applied", "refused"].map(|r| reloads.with_label_values(&[r]));
        let http_idle_closed = IntCounter::new(
            "http_idle_closed_total",
            "HTTP connections closed after http.keepalive_timeout with no request in flight",
        )
        .unwrap();
        reg(Box::new(http_idle_closed.clone()));
        let reply_limit = IntCounterVec::new(
            Opts::new(
                "reply_limit_total",
                "Replies over limits.max_reply_bytes, by door: refused with 413 reply_too_large (http) or the client closed (resp)",
            ),
            &["door"],
        )
        .unwrap();
        reg(Box::new(reply_limit.clone()));
        let reply_limit =
            [Door::Http, Door::Resp].map(|d| reply_limit.with_label_values(&[DOORS[d as usize]]));
        let access_log_written = IntCounter::new(
            "access_log_records_total",
            "Access-log records written out (access_log.enabled)",
        )
        .unwrap();
        let access_log_dropped = IntCounter::new(
            "access_log_dropped_total",
            "Access-log records dropped because the ring was full (the request was not slowed)",
        )
        .unwrap();
        let bus_flushes = IntCounter::new(
            "bus_flushes_total",
            "Whole-L1 flushes after the invalidation bus was (re)joined or fell behind",
        )
        .unwrap();
        let accept_errors = IntCounter::new(
            "accept_errors_total",
            "Failed accept() calls (fd exhaustion and the like)",
        )
        .unwrap();
        let admission_inflight = IntGaugeVec::new(
            Opts::new(
                "admission_inflight",
                "Requests (RESP: batches of pipelined commands) running now, by door; door=\"background\": background jobs",
            ),
            &["door"],
        )
        .unwrap();
        let admission_queued = IntGaugeVec::new(
            Opts::new(
                "admission_queued",
                "Requests (or background jobs) waiting for a slot now, by door",
            ),
            &["door"],
        )
        .unwrap();
        let admission_rejected = IntCounterVec::new(
            Opts::new(
                "admission_rejected_total",
                "Requests refused by admission (HTTP 503, RESP -BUSY), or background jobs skipped, by door and reason",
            ),
            &["door", "reason"],
        )
        .unwrap();
        let admission_wait = HistogramVec::new(
            HistogramOpts::new(
                "admission_queue_wait_seconds",
                "Time queued requests waited for a slot (admitted or not), by door",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["door"],
        )
        .unwrap();
        let build = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version and git commit as labels",
            ),
            &["version", "commit"],
        )
        .unwrap();
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GIT_COMMIT")])
            .set(1);

        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(resp_duration.clone()),
            Box::new(hits.clone()),
            Box::new(misses.clone()),
            Box::new(l1_entries.clone()),
            Box::new(l1_bytes.clone()),
            Box::new(l1_negative_hits.clone()),
            Box::new(l1_stale_served.clone()),
            Box::new(l1_refreshes.clone()),
            Box::new(l1_capacity_bytes.clone()),
            Box::new(hot_key_share.clone()),
            Box::new(hot_keys_share.clone()),
            Box::new(l1_warming.clone()),
            Box::new(l1_warm_keys.clone()),
            Box::new(l2_duration.clone()),
            Box::new(l2_errors.clone()),
            Box::new(l2_up.clone()),
            Box::new(l2_configured.clone()),
            Box::new(l2_batch_size.clone()),
            Box::new(l2_in_flight.clone()),
            Box::new(l2_circuit_open.clone()),
            Box::new(l2_circuit_rejected.clone()),
            Box::new(l2_dedicated_lent.clone()),
            Box::new(l2_dedicated_busy.clone()),
            Box::new(open.clone()),
            Box::new(conns.clone()),
            Box::new(accept_errors.clone()),
            Box::new(rejected.clone()),
            Box::new(budget.clone()),
            Box::new(heartbeat_timeouts.clone()),
            Box::new(resp_protocol_errors.clone()),
            Box::new(resp_commands.clone()),
            Box::new(buffer_pool_hits.clone()),
            Box::new(buffer_pool_misses.clone()),
            Box::new(buffer_pool_buffers.clone()),
            Box::new(connection_panics.clone()),
            Box::new(bus_subscribed.clone()),
            Box::new(bus_alone.clone()),
            Box::new(bus_invalidations.clone()),
            Box::new(bus_own_echoes_skipped.clone()),
            Box::new(bus_flushes.clone()),
            Box::new(access_log_written.clone()),
            Box::new(access_log_dropped.clone()),
            Box::new(admission_inflight.clone()),
            Box::new(admission_queued.clone()),
            Box::new(admission_rejected.clone()),
            Box::new(admission_wait.clone()),
            Box::new(build),
        ] {
            reg(c);
        }

        let admission_of = |door: &str| AdmissionMetrics {
            inflight: admission_inflight.with_label_values(&[door]),
            queued: admission_queued.with_label_values(&[door]),
            rejected: [
                admission_rejected.with_label_values(&[door, "queue_full"]),
                admission_rejected.with_label_values(&[door, "queue_timeout"]),
            ],
            queue_wait: admission_wait.with_label_values(&[door]),
        };
        Self {
            admission: DOORS.map(admission_of),
            background: admission_of("background"),
            http_requests: Route::ALL
                .iter()
                .map(|r| {
                    std::array::from_fn(|i| {
                        requests.with_label_values(&[r.label(), STATUS_LABELS[i]])
                    })
                })
                .collect(),
            http_duration: Route::ALL
                .iter()
                .map(|r| duration.with_label_values(&[r.label()]))
                .collect(),
            resp_duration: RESP_CLASSES.map(|c| resp_duration.with_label_values(&[c])),
            cache_hits: [
                hits.with_label_values(&["l1"]),
                hits.with_label_values(&["l2"]),
                hits.with_label_values(&["origin"]),
            ],
            cache_misses: [
                misses.with_label_values(&["l1"]),
                misses.with_label_values(&["l2"]),
                misses.with_label_values(&["origin"]),
            ],
            l1_entries,
            l1_bytes,
            l1_negative_hits,
            l1_stale_served,
            l1_refreshes,
            l1_capacity_bytes,
            hot_key_share,
            hot_keys_share,
            l1_warming,
            l1_warm_keys,
            l2_duration: L2_OPS
                .iter()
                .map(|op| l2_duration.with_label_values(&[op]))
                .collect(),
            l2_errors: L2_OPS
                .iter()
                .map(|op| l2_errors.with_label_values(&[op]))
                .collect(),
            l2_up,
            l2_configured,
            l2_batch_size,
            l2_in_flight,
            l2_circuit_open,
            l2_circuit_rejected,
            l2_dedicated_lent,
            l2_dedicated_busy,
            open_connections: std::array::from_fn(|i| open.with_label_values(&[DOORS[i]])),
            connections: std::array::from_fn(|i| conns.with_label_values(&[DOORS[i]])),
            rejected_connections: std::array::from_fn(|i| rejected.with_label_values(&[DOORS[i]])),
            resp_connection_budget: budget.with_label_values(&[DOORS[Door::Resp as usize]]),
            accept_errors,
            heartbeat_timeouts,
            resp_protocol_errors,
            resp_commands,
            buffer_pool_hits,
            buffer_pool_misses,
            buffer_pool_buffers,
            connection_panics,
            bus_subscribed,
            bus_alone,
            bus_invalidations,
            bus_own_echoes_skipped,
            bus_flushes,
            access_log_written,
            http_idle_closed,
            reply_limit,
            auth_denied,
            resp_closed,
            protected_refused,
            auth_failure_closes,
            config_reloads,
            access_log_dropped,
            origin: origin::OriginVecs::new(&registry),
            proxy: proxy::ProxyVecs::new(&registry),
            registry,
            process: process_registry(),
        }
    }

    /// One origin's metrics, and each of its upstreams' (labelled `host:port`).
    pub fn origin(&self, name: &str, upstreams: &[&str]) -> (OriginMetrics, Vec<UpstreamMetrics>) {
        self.origin.resolve(name, upstreams)
    }

    /// One proxy route's metrics (labelled by its prefix).
    pub fn proxy_route(&self, prefix: &str) -> ProxyMetrics {
        self.proxy.resolve(prefix)
    }

    pub fn record_http(&self, route: Route, status: u16, elapsed: Duration) {
        let r = route as usize;
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        self.http_requests[r][s].inc();
        self.http_duration[r].observe(elapsed.as_secs_f64());
    }

    /// Records `n` RESP commands of `class` that took `elapsed` (their batch's time).
    pub fn record_resp(&self, class: RespClass, n: u32, elapsed: Duration) {
        let h = &self.resp_duration[class as usize];
        let secs = elapsed.as_secs_f64();
        for _ in 0..n {
            h.observe(secs);
        }
    }

    pub fn hit(&self, tier: Tier) {
        self.cache_hits[tier as usize].inc();
    }

    pub fn miss(&self, tier: Tier) {
        self.cache_misses[tier as usize].inc();
    }

    pub fn record_l2(&self, op: L2Op, elapsed: Duration, ok: bool) {
        self.l2_duration[op as usize].observe(elapsed.as_secs_f64());
        if !ok {
            self.l2_errors[op as usize].inc();
        }
    }

    /// A door's admission figures.
    pub fn config_reload(&self, applied: bool) {
        self.config_reloads[usize::from(!applied)].inc();
    }

    pub fn auth_denied(&self, door: Door, why: crate::auth::Denied) {
        self.auth_denied[door as usize][why as usize].inc();
    }

    pub fn resp_closed(&self, why: RespClose) {
        self.resp_closed[why as usize].inc();
        if why == RespClose::ReplyLimit {
            self.reply_too_large(Door::Resp);
        }
    }

    /// Counts a connection refused by protected mode.
    pub fn protected_refused(&self, door: Door) {
        self.protected_refused[door as usize].inc();
    }

    /// Counts a connection closed for too many failed logins.
    pub fn auth_failure_close(&self, door: Door) {
        self.auth_failure_closes[door as usize].inc();
    }

    /// A reply over `limits.max_reply_bytes` was refused (HTTP) or its client closed (RESP).
    pub fn reply_too_large(&self, door: Door) {
        match door {
            Door::Http => self.reply_limit[0].inc(),
            Door::Resp => self.reply_limit[1].inc(),
            // The admin port's replies are its own, and small.
            Door::Admin => {}
        }
    }

    pub fn admission(&self, door: Door) -> AdmissionMetrics {
        self.admission[door as usize].clone()
    }

    /// Counts an L2 call as in flight until the returned guard drops.
    pub fn l2_in_flight(&self) -> InFlight<'_> {
        self.l2_in_flight.inc();
        InFlight(&self.l2_in_flight)
    }

    /// Counts a new connection; the returned guard keeps it in `open_connections` until dropped.
    pub fn connection(&self, door: Door) -> ConnectionGuard {
        self.connections[door as usize].inc();
        let gauge = self.open_connections[door as usize].clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// Open, accepted-in-all and refused connections of a door, for INFO.
    pub fn door_counts(&self, door: Door) -> (i64, u64, u64) {
        let d = door as usize;
        (
            self.open_connections[d].get(),
            self.connections[d].get(),
            self.rejected_connections[d].get(),
        )
    }

    /// Hits and misses of a tier, for INFO.
    pub fn tier_counts(&self, tier: Tier) -> (u64, u64) {
        (
            self.cache_hits[tier as usize].get(),
            self.cache_misses[tier as usize].get(),
        )
    }

    /// Counts a connection refused for lack of budget.
    pub fn rejected(&self, door: Door) {
        self.rejected_connections[door as usize].inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding into a String cannot fail");
        prometheus::TextEncoder::new()
            .encode_utf8(&self.process.gather(), &mut out)
            .expect("text encoding into a String cannot fail");
        out
    }
}

/// A registry of the process collector (procfs: Linux only).
fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("one process collector");
    registry
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// RAII membership in the open-connections gauge.
/// Keeps one call in `l2_in_flight` while alive.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Raw figures for the admin status page (`/status.json`), read without the exposition.
impl Metrics {
    /// HTTP requests answered over all routes: (all, 5xx).
    pub fn http_request_counts(&self) -> (u64, u64) {
        let (mut all, mut server_errors) = (0, 0);
        for route in &self.http_requests {
            for (i, c) in route.iter().enumerate() {
                all += c.get();
                if STATUSES.get(i).is_some_and(|&s| s >= 500) {
                    server_errors += c.get();
                }
            }
        }
        (all, server_errors)
    }

    /// HTTP request latency over all routes.
    pub fn http_latency_buckets(&self) -> LatencyBuckets {
        LatencyBuckets::of(&self.http_duration)
    }

    /// L2 commands failed or timed out (all ops), and L2 calls in flight now.
    pub fn l2_error_count(&self) -> (u64, i64) {
        (
            self.l2_errors.iter().map(IntCounter::get).sum(),
            self.l2_in_flight.get(),
        )
    }
}

/// One histogram's figures for the admin status page: (upper bound in seconds, cumulative
/// count) per bucket, the count of all and their sum in seconds.
#[derive(Clone, Debug, Default)]
pub struct LatencyBuckets {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl LatencyBuckets {
    /// The figures of `histograms` together (each with `LATENCY_BUCKETS`).
    fn of<'a>(histograms: impl IntoIterator<Item = &'a Histogram>) -> Self {
        use prometheus::core::Metric;
        let mut all = Self {
            buckets: LATENCY_BUCKETS.iter().map(|&le| (le, 0)).collect(),
            ..Self::default()
        };
        for h in histograms {
            let m = h.metric();
            let h = m.get_histogram();
            all.count += h.get_sample_count();
            all.sum += h.get_sample_sum();
            for (a, b) in all.buckets.iter_mut().zip(h.get_bucket()) {
                a.1 += b.cumulative_count();
            }
        }
        all
    }
}

/// RESP latency for the admin status page (`/status.json`).
impl Metrics {
    /// RESP command latency of every class together, then per class in `RESP_CLASSES` order,
    /// each with its class label.
    pub fn resp_latency_buckets(&self) -> (LatencyBuckets, Vec<(&'static str, LatencyBuckets)>) {
        let classes = RESP_CLASSES
            .iter()
            .zip(&self.resp_duration)
            .map(|(&class, h)| (class, LatencyBuckets::of([h])))
            .collect();
        (LatencyBuckets::of(&self.resp_duration), classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_show_up_in_the_exposition() {
        let m = Metrics::new();
        m.record_http(Route::KvGet, 200, Duration::from_micros(80));
        m.record_http(Route::KvGet, 418, Duration::from_micros(80));
        m.hit(Tier::L1);
        m.record_l2(L2Op::Get, Duration::from_millis(1), false);
        {
            let _c = m.connection(Door::Http);
            assert!(m
                .render()
                .contains("tiergate_open_connections{door=\"http\"} 1"));
        }
        let text = m.render();
        assert!(text.contains("tiergate_http_requests_total{route=\"kv_get\",status=\"200\"} 1"));
        assert!(text.contains("tiergate_http_requests_total{route=\"kv_get\",status=\"other\"} 1"));
        assert!(text.contains("tiergate_cache_hits_total{tier=\"l1\"} 1"));
        assert!(text.contains("tiergate_l2_errors_total{op=\"get\"} 1"));
        assert!(text.contains("tiergate_open_connections{door=\"http\"} 0"));
        assert!(text.contains("tiergate_connections_total{door=\"http\"} 1"));
    }
}

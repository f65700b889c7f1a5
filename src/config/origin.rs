//! The origin tier's configuration: `[[origins]]`, each a named backend service with its
//! upstream URLs, the client's timeouts and pool, balancing weights, passive ejection, active
//! probes and retries; and the checks on them, every problem reported in one pass.

use super::{ByteSize, HumanDuration, Problem};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Connecting to a healthy upstream on a LAN takes a millisecond; a second means it is down
/// or its accept queue is full, and the request is better tried on another.
pub const DEFAULT_ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A whole request, retries and backoff included: below the HTTP door's own
/// `http.request_timeout` (30 s), so a slow origin is reported as the origin's fault.
pub const DEFAULT_ORIGIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt's share of the request: off (0) lets an attempt use what is left; set it so
/// that a hung upstream leaves time to try another.
pub const DEFAULT_ORIGIN_ATTEMPT_TIMEOUT: Duration = Duration::ZERO;
/// Most time between two reads of an answer's body once its head has come (nginx's
/// `proxy_read_timeout`): an origin silent this long mid-answer is stuck, and holds a
/// client and one of its `max_concurrent` slots until then.
pub const DEFAULT_ORIGIN_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections are closed after this: below the 60-75 s most servers
/// (nginx 75 s, Node 5 s aside) keep them, so we close first and never send into a close.
pub const DEFAULT_ORIGIN_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per upstream: enough for bursts at a few thousand requests a
/// second without reconnecting, few enough not to hold an origin's sockets for nothing.
pub const DEFAULT_ORIGIN_POOL_MAX_IDLE: usize = 64;
/// Requests in flight to one upstream; past it the balancer picks another, and with every
/// upstream full the request is refused (503) rather than queued in front of a slow origin.
pub const DEFAULT_ORIGIN_MAX_CONCURRENT: usize = 512;
/// Retries after the first attempt: two reach a third upstream when two have failed.
pub const DEFAULT_ORIGIN_MAX_RETRIES: u32 = 2;
/// Statuses that say this upstream could not serve, so another may: gateway errors and
/// "unavailable". A 500 is the application's own answer and is passed on.
pub const DEFAULT_ORIGIN_RETRY_ON: [u16; 3] = [502, 503, 504];
/// First retry's backoff ceiling; each further one doubles it (full jitter: a random wait
/// below the ceiling, so retries of many clients do not arrive together).
pub const DEFAULT_ORIGIN_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Highest backoff ceiling.
pub const DEFAULT_ORIGIN_RETRY_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Retries in flight as a share of requests in flight (Envoy's retry budget): a failing
/// origin gets at most 20% more load from retries, never a retry storm.
pub const DEFAULT_ORIGIN_RETRY_BUDGET: f64 = 0.2;
/// Retries always allowed in flight, whatever the share: at low traffic 20% of a few
/// requests would forbid every retry.
pub const DEFAULT_ORIGIN_RETRY_MIN_CONCURRENT: usize = 3;
/// Consecutive failures (errors, timeouts, 5xx) that eject an upstream: Envoy's default.
pub const DEFAULT_ORIGIN_EJECT_AFTER: u32 = 5;
/// First ejection's length; each further one without recovery in between adds as much.
pub const DEFAULT_ORIGIN_EJECT_FOR: Duration = Duration::from_secs(10);
/// Longest ejection.
pub const DEFAULT_ORIGIN_EJECT_MAX: Duration = Duration::from_secs(300);
/// Most upstreams ejected at once, as a share: the rest keep serving, and ejecting the last
/// ones would turn a partial failure into a full one.
pub const DEFAULT_ORIGIN_EJECT_MAX_SHARE: f64 = 0.5;
/// Probes are off unless a path is set: not every service has a health endpoint.
pub const DEFAULT_ORIGIN_HEALTH_PATH: &str = "";
/// How often each upstream is probed.
pub const DEFAULT_ORIGIN_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// A probe not answered in this long failed.
pub const DEFAULT_ORIGIN_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Passing probes in a row that bring an unhealthy upstream back.
pub const DEFAULT_ORIGIN_HEALTHY_AFTER: u32 = 2;
/// Failing probes in a row that take an upstream out.
pub const DEFAULT_ORIGIN_UNHEALTHY_AFTER: u32 = 3;
/// Most upstreams per origin: the balancer scans them, and metrics label each.
pub const MAX_ORIGIN_UPSTREAMS: usize = 64;
/// A loaded value's life when the origin's answer says nothing of freshness (no
/// Cache-Control max-age or s-maxage, no Expires): lua-resty-mlcache's default.
pub const DEFAULT_LOADER_TTL: Duration = Duration::from_secs(30);
/// How long a 404 from the origin is remembered (per instance): long enough to absorb a
/// burst of reads of a missing key, short enough that a new one shows up soon.
pub const DEFAULT_LOADER_NEG_TTL: Duration = Duration::from_secs(5);
/// How long past its TTL a loaded value may answer while the origin fails: off, as a stale
/// answer must be asked for.
pub const DEFAULT_LOADER_STALE_IF_ERROR: Duration = Duration::ZERO;
/// How long an instance waits for another's load of the same key (the Redis lock) before
/// asking the origin itself: past a typical origin answer, well short of a client's patience.
/// Zero: no lock, each instance loads on its own.
pub const DEFAULT_LOADER_LOCK_WAIT: Duration = Duration::from_secs(2);
/// The lock's life if its holder dies mid-load: as long as the origin's own request_timeout.
pub const DEFAULT_LOADER_LOCK_TTL: Duration = Duration::from_secs(10);

// --- proxy routes (`[[origins.routes]]`, issue 18 point 3) ---
/// A floor under the answers' own lifetime: off, so the origin's headers decide.
pub const DEFAULT_ROUTE_MIN_TTL: Duration = Duration::ZERO;
/// A ceiling over the answers' own lifetime: a mistaken year-long max-age costs at most a
/// day (a PURGE is the quicker way out).
pub const DEFAULT_ROUTE_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest body a route stores: larger ones stream through unstored, so one object never
/// takes more than an eighth of the default cache.
pub const DEFAULT_ROUTE_MAX_OBJECT_BYTES: u64 = 8 << 20;
/// Bytes one route's cache holds (bodies and headers): its own budget, apart from L1's, so a
/// busy route cannot evict the KV data nor another route.
pub const DEFAULT_ROUTE_CACHE_CAPACITY: u64 = 64 << 20;
/// How long a route's miss waits for another instance's request for the same URL (the
/// Redis lock) before asking the origin itself: as for loaders. Zero: no lock.
pub const DEFAULT_ROUTE_LOCK_WAIT: Duration = DEFAULT_LOADER_LOCK_WAIT;
/// The lock's life if its holder dies mid-answer: as for loaders.
pub const DEFAULT_ROUTE_LOCK_TTL: Duration = DEFAULT_LOADER_LOCK_TTL;
/// Paths a route may not take: the KV API's.
pub const RESERVED_PREFIX: &str = "/v1/";

/// A path prefix on the HTTP data port proxied to this origin (`[[origins.routes]]`), its GET
/// and HEAD answers cached per RFC 9111 as a shared cache. Only `prefix` has no default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// Requests whose path starts with this go to the origin, path and query unchanged.
    pub prefix: String,
    pub min_ttl: HumanDuration,
    pub max_ttl: HumanDuration,
    pub max_object_bytes: ByteSize,
    pub cache_capacity: ByteSize,
    /// In tiered mode, misses of a URL across instances make one origin request (the
    /// others wait at most this long for its answer in L2; see `cache::lock`).
    pub lock_wait: HumanDuration,
    pub lock_ttl: HumanDuration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            min_ttl: HumanDuration(DEFAULT_ROUTE_MIN_TTL),
            max_ttl: HumanDuration(DEFAULT_ROUTE_MAX_TTL),
            max_object_bytes: ByteSize(DEFAULT_ROUTE_MAX_OBJECT_BYTES),
            cache_capacity: ByteSize(DEFAULT_ROUTE_CACHE_CAPACITY),
            lock_wait: HumanDuration(DEFAULT_ROUTE_LOCK_WAIT),
            lock_ttl: HumanDuration(DEFAULT_ROUTE_LOCK_TTL),
        }
    }
}

/// Checks every origin's routes (one pass, every problem named).
fn validate_routes(origins: &[OriginConfig], problems: &mut Vec<Problem>) {
    let mut bad = |path: String, why: String| problems.push(Problem { path, why });
    let mut prefixes = std::collections::HashSet::new();
    for (i, o) in origins.iter().enumerate() {
        for (j, r) in o.routes.iter().enumerate() {
            let at = format!("origins[{i}].routes[{j}]");
            let p = r.prefix.as_str();
            if !p.starts_with('/')
                || p.parse::<http::uri::PathAndQuery>().is_err()
                || p.contains('?')
            {
                bad(
                    format!("{at}.prefix"),
                    "must be a path starting with '/' (no query)".into(),
                );
            } else if p.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(p) {
                bad(
                    format!("{at}.prefix"),
                    format!("{p:?} overlaps {RESERVED_PREFIX}, the KV API's paths"),
                );
            } else if !prefixes.insert(p) {
                bad(format!("{at}.prefix"), format!("{p:?} has a route already"));
            }
            if r.max_ttl.0.is_zero() {
                bad(format!("{at}.max_ttl"), "must be more than 0".into());
            } else if r.max_ttl.0 < r.min_ttl.0 {
                bad(format!("{at}.max_ttl"), "must be at least min_ttl".into());
            }
            if r.max_object_bytes.0 == 0 || r.max_object_bytes.0 > u64::from(u32::MAX) {
                bad(
                    format!("{at}.max_object_bytes"),
                    "must be 1 byte to 4 GiB".into(),
                );
            } else if r.max_object_bytes.0 > r.cache_capacity.0 {
                bad(
                    format!("{at}.max_object_bytes"),
                    "must be at most cache_capacity".into(),
                );
            }
            if r.cache_capacity.0 == 0 {
                bad(format!("{at}.cache_capacity"), "must be more than 0".into());
            }
            if !r.lock_wait.0.is_zero() && r.lock_ttl.0 < r.lock_wait.0 {
                bad(
                    format!("{at}.lock_ttl"),
                    "must be at least lock_wait: a lock must outlive the wait for it".into(),
                );
            }
        }
    }
}
// --- end proxy routes ---

/// One backend service (`[[origins]]`). Only `name` and `upstreams` have no default.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// How loaders and routes name it, and the `origin` label of its metrics.
    pub name: String,
    /// `http://host:port` URLs, each a string or `{ url = "...", weight = 2 }`.
    pub upstreams: Vec<UpstreamConfig>,
    pub connect_timeout: HumanDuration,
    pub request_timeout: HumanDuration,
    pub attempt_timeout: HumanDuration,
    pub read_timeout: HumanDuration,
    pub pool_idle_timeout: HumanDuration,
    pub pool_max_idle: usize,
    pub max_concurrent: usize,
    pub max_retries: u32,
    pub retry_on: Vec<u16>,
    pub retry_backoff: HumanDuration,
    pub retry_backoff_max: HumanDuration,
    pub retry_budget: f64,
    pub retry_min_concurrent: usize,
    pub eject_after: u32,
    pub eject_for: HumanDuration,
    pub eject_max: HumanDuration,
    pub eject_max_share: f64,
    pub health_path: String,
    pub health_interval: HumanDuration,
    pub health_timeout: HumanDuration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Key prefixes read through to this origin (`[[origins.loaders]]`).
    pub loaders: Vec<LoaderConfig>,
    /// Path prefixes proxied to this origin (`[[origins.routes]]`).
    pub routes: Vec<RouteConfig>,
}

/// A key prefix whose misses (in L1 and L2) load from the origin: key `user:42` with
/// `prefix = "user:"` and `path = "/api/users/{id}"` is `GET /api/users/42`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub prefix: String,
    /// The request path: `{id}` is the key after the prefix, `{key}` the whole key, both
    /// percent-encoded.
    pub path: String,
    pub ttl: HumanDuration,
    pub neg_ttl: HumanDuration,
    pub stale_if_error: HumanDuration,
    pub lock_wait: HumanDuration,
    pub lock_ttl: HumanDuration,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            path: String::new(),
            ttl: HumanDuration(DEFAULT_LOADER_TTL),
            neg_ttl: HumanDuration(DEFAULT_LOADER_NEG_TTL),
            stale_if_error: HumanDuration(DEFAULT_LOADER_STALE_IF_ERROR),
            lock_wait: HumanDuration(DEFAULT_LOADER_LOCK_WAIT),
            lock_ttl: HumanDuration(DEFAULT_LOADER_LOCK_TTL),
        }
    }
}

/// A loader's path with `{id}` and `{key}` in it; Err says why it is not one.
pub fn check_loader_path(path: &str) -> Result<(), String> {
    let sample = path.replace("{id}", "42").replace("{key}", "k%3A42");
    if !path.starts_with('/') || sample.contains(['{', '}']) {
        return Err("must start with '/' and use only {id} and {key} as placeholders".into());
    }
    if sample == path {
        return Err("must use {id} (the key after the prefix) or {key}".into());
    }
    sample
        .parse::<http::uri::PathAndQuery>()
        .map(drop)
        .map_err(|e| format!("is not a path: {e}"))
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            upstreams: Vec::new(),
            connect_timeout: HumanDuration(DEFAULT_ORIGIN_CONNECT_TIMEOUT),
            request_timeout: HumanDuration(DEFAULT_ORIGIN_REQUEST_TIMEOUT),
            attempt_timeout: HumanDuration(DEFAULT_ORIGIN_ATTEMPT_TIMEOUT),
            read_timeout: HumanDuration(DEFAULT_ORIGIN_READ_TIMEOUT),
            pool_idle_timeout: HumanDuration(DEFAULT_ORIGIN_POOL_IDLE_TIMEOUT),
            pool_max_idle: DEFAULT_ORIGIN_POOL_MAX_IDLE,
            max_concurrent: DEFAULT_ORIGIN_MAX_CONCURRENT,
            max_retries: DEFAULT_ORIGIN_MAX_RETRIES,
            retry_on: DEFAULT_ORIGIN_RETRY_ON.to_vec(),
            retry_backoff: HumanDuration(DEFAULT_ORIGIN_RETRY_BACKOFF),
            retry_backoff_max: HumanDuration(DEFAULT_ORIGIN_RETRY_BACKOFF_MAX),
            retry_budget: DEFAULT_ORIGIN_RETRY_BUDGET,
            retry_min_concurrent: DEFAULT_ORIGIN_RETRY_MIN_CONCURRENT,
            eject_after: DEFAULT_ORIGIN_EJECT_AFTER,
            eject_for: HumanDuration(DEFAULT_ORIGIN_EJECT_FOR),
            eject_max: HumanDuration(DEFAULT_ORIGIN_EJECT_MAX),
            eject_max_share: DEFAULT_ORIGIN_EJECT_MAX_SHARE,
            health_path: DEFAULT_ORIGIN_HEALTH_PATH.into(),
            health_interval: HumanDuration(DEFAULT_ORIGIN_HEALTH_INTERVAL),
            health_timeout: HumanDuration(DEFAULT_ORIGIN_HEALTH_TIMEOUT),
            healthy_after: DEFAULT_ORIGIN_HEALTHY_AFTER,
            unhealthy_after: DEFAULT_ORIGIN_UNHEALTHY_AFTER,
            loaders: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// One upstream: `"http://10.0.0.7:8080"`, or `{ url = "...", weight = 3 }` to send it three
/// times the share of a weight-1 upstream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(
    untagged,
    expecting = "a URL string or { url = \"http://host:port\", weight = n }"
)]
pub enum UpstreamConfig {
    Url(String),
    Weighted {
        url: String,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

impl UpstreamConfig {
    pub fn url(&self) -> &str {
        match self {
            UpstreamConfig::Url(u) | UpstreamConfig::Weighted { url: u, .. } => u,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            UpstreamConfig::Url(_) => 1,
            UpstreamConfig::Weighted { weight, .. } => *weight,
        }
    }
}

/// An upstream URL taken apart: the scheme and authority requests go to. Paths, queries and
/// credentials are refused: requests bring their own path, and a password in a URL would end
/// up in logs and labels.
pub fn upstream_authority(url: &str) -> Result<http::uri::Authority, String> {
    // Errors quote the URL unless it may hold a password.
    let shown = if url.contains('@') {
        "(a URL with credentials)"
    } else {
        url
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{shown:?}: https upstreams are not supported yet; reach the origin over http (a TLS sidecar can add the TLS)"
            ))
        }
        _ => return Err(format!("{shown:?} must start with http://")),
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{shown:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{:?}: credentials in an upstream URL are refused (they would show in logs and metrics)",
            authority.host()
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(format!(
            "{shown:?} must be only http://host[:port]: requests bring their own path"
        ));
    }
    Ok(authority)
}

/// Checks every origin, reporting each problem under its path (`origins[0].upstreams[1]`).
pub fn validate_origins(origins: &[OriginConfig], problems: &mut Vec<Problem>) {
    validate_routes(origins, problems);
    let mut bad = |path: String, why: String| problems.push(Problem { path, why });
    let mut names = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for (i, o) in origins.iter().enumerate() {
        for (j, l) in o.loaders.iter().enumerate() {
            let at = format!("origins[{i}].loaders[{j}]");
            if l.prefix.is_empty() {
                bad(
                    format!("{at}.prefix"),
                    "must be set: every key would load from the origin".into(),
                );
            } else if !prefixes.insert(l.prefix.as_str()) {
                bad(
                    format!("{at}.prefix"),
                    format!("{:?} has a loader already", l.prefix),
                );
            }
            if let Err(why) = check_loader_path(&l.path) {
                bad(format!("{at}.path"), why);
            }
            if l.ttl.0.is_zero() {
                bad(format!("{at}.ttl"), "must be more than 0".into());
            }
            if !l.lock_wait.0.is_zero() && l.lock_ttl.0 < l.lock_wait.0 {
                bad(
                    format!("{at}.lock_ttl"),
                    "must be at least lock_wait: a lock must outlive the wait for it".into(),
                );
            }
        }
        let at = format!("origins[{i}]");
        let name_ok = !o.name.is_empty()
            && o.name.len() <= 64
            && o.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            bad(
                format!("{at}.name"),
                "must be 1-64 letters, digits, '-', '_' or '.' (it is a metric label)".into(),
            );
        } else if !names.insert(o.name.as_str()) {
            bad(format!("{at}.name"), format!("{:?} is used twice", o.name));
        }
        if o.upstreams.is_empty() || o.upstreams.len() > MAX_ORIGIN_UPSTREAMS {
            bad(
                format!("{at}.upstreams"),
                format!("must list 1 to {MAX_ORIGIN_UPSTREAMS} URLs"),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (j, u) in o.upstreams.iter().enumerate() {
            let path = format!("{at}.upstreams[{j}]");
            match upstream_authority(u.url()) {
                Ok(a) if !seen.insert(a.clone()) => {
                    bad(path.clone(), format!("{a} is listed twice"));
                }
                Ok(_) => {}
                Err(why) => bad(path.clone(), why),
            }
            if !(1..=1000).contains(&u.weight()) {
                bad(format!("{path}.weight"), "must be 1 to 1000".into());
            }
        }
        let positive = [
            ("connect_timeout", o.connect_timeout.0),
            ("request_timeout", o.request_timeout.0),
            ("read_timeout", o.read_timeout.0),
            ("health_interval", o.health_interval.0),
            ("health_timeout", o.health_timeout.0),
            ("eject_for", o.eject_for.0),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                bad(format!("{at}.{key}"), "must be more than 0".into());
            }
        }
        if o.attempt_timeout.0 > o.request_timeout.0 {
            bad(
                format!("{at}.attempt_timeout"),
                "must be at most request_timeout (0: what is left of it)".into(),
            );
        }
        if o.eject_max.0 < o.eject_for.0 {
            bad(
                format!("{at}.eject_max"),
                "must be at least eject_for".into(),
            );
        }
        if o.retry_backoff_max.0 < o.retry_backoff.0 {
            bad(
                format!("{at}.retry_backoff_max"),
                "must be at least retry_backoff".into(),
            );
        }
        if o.max_concurrent == 0 {
            bad(format!("{at}.max_concurrent"), "must be at least 1".into());
        }
        if o.max_retries > 10 {
            bad(format!("{at}.max_retries"), "must be at most 10".into());
        }
        if !(0.0..=1.0).contains(&o.retry_budget) {
            bad(format!("{at}.retry_budget"), "must be 0 to 1".into());
        }
        if !(0.0..=1.0).contains(&o.eject_max_share) {
            bad(format!("{at}.eject_max_share"), "must be 0 to 1".into());
        }
        if let Some(s) = o.retry_on.iter().find(|s| !(500..=599).contains(*s)) {
            bad(
                format!("{at}.retry_on"),
                format!("{s}: only 5xx statuses say another upstream may do better"),
            );
        }
        if o.eject_after == 0 || o.healthy_after == 0 || o.unhealthy_after == 0 {
            bad(
                at.clone(),
                "eject_after, healthy_after and unhealthy_after must be at least 1".into(),
            );
        }
        if !o.health_path.is_empty()
            && (!o.health_path.starts_with('/')
                || o.health_path.parse::<http::uri::PathAndQuery>().is_err())
        {
            bad(
                format!("{at}.health_path"),
                "must be a path starting with '/' (empty: no probes)".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        #[derive(Deserialize)]
        struct File {
            origins: Vec<OriginConfig>,
        }
        let f: File = toml::from_str(toml).unwrap();
        let mut p = Vec::new();
        validate_origins(&f.origins, &mut p);
        p.into_iter()
            .map(|p| format!("{}: {}", p.path, p.why))
            .collect()
    }

    #[test]
    fn a_plain_and_a_weighted_upstream_are_both_read() {
        let f: toml::Table = toml::from_str(
            r#"[[origins]]
name = "users"
upstreams = ["http://127.0.0.1:1", { url = "http://127.0.0.1:2", weight = 3 }]"#,
        )
        .unwrap();
        let o: Vec<OriginConfig> = f["origins"].clone().try_into().unwrap();
        assert_eq!(o[0].upstreams[0].weight(), 1);
        assert_eq!(o[0].upstreams[1].url(), "http://127.0.0.1:2");
        assert_eq!(o[0].upstreams[1].weight(), 3);
        assert_eq!(o[0].max_retries, DEFAULT_ORIGIN_MAX_RETRIES);
    }

    #[test]
    fn every_bad_origin_key_is_named() {
        let p = problems(
            r#"[[origins]]
name = "a b"
upstreams = ["https://x", "http://u:p@h:1", "http://h:2/path", "http://h:3", "http://h:3"]
retry_on = [404]
retry_budget = 2.0
[[origins]]
name = "empty"
upstreams = []
health_path = "health"
attempt_timeout = "1m"
read_timeout = "0s""#,
        );
        let want = [
            "origins[0].name",
            "origins[0].upstreams[0]: \"https://x\": https",
            "origins[0].upstreams[1]: \"h\": credentials",
            "origins[0].upstreams[2]",
            "origins[0].upstreams[4]: h:3 is listed twice",
            "origins[0].retry_on: 404",
            "origins[0].retry_budget",
            "origins[1].upstreams: must list",
            "origins[1].health_path",
            "origins[1].attempt_timeout",
            "origins[1].read_timeout: must be more than 0",
        ];
        for w in want {
            assert!(
                p.iter().any(|p| p.starts_with(w)),
                "{w} missing from {p:#?}"
            );
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }

    #[test]
    fn the_shipped_example_is_valid_and_shows_the_defaults() {
        let shipped = include_str!("../../config/tiergate.toml");
        let from = shipped
            .find("#   [[origins]]")
            .expect("an [[origins]] example");
        let example: String = shipped[from..]
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        #[derive(Deserialize)]
        struct File {
            origins: Vec<OriginConfig>,
        }
        let f: File = toml::from_str(&example).unwrap();
        let mut p = Vec::new();
        validate_origins(&f.origins, &mut p);
        assert!(p.is_empty(), "{p:?}");
        let (o, l) = (&f.origins[0], &f.origins[0].loaders[0]);
        let defaults = OriginConfig {
            name: o.name.clone(),
            upstreams: o.upstreams.clone(),
            loaders: Vec::new(),
            routes: Vec::new(),
            ..OriginConfig::default()
        };
        assert_eq!(
            OriginConfig {
                loaders: Vec::new(),
                routes: Vec::new(),
                ..o.clone()
            },
            defaults
        );
        let r = &o.routes[0];
        let route_defaults = RouteConfig {
            prefix: r.prefix.clone(),
            ..RouteConfig::default()
        };
        assert_eq!(*r, route_defaults);
        let loader_defaults = LoaderConfig {
            prefix: l.prefix.clone(),
            path: l.path.clone(),
            ..LoaderConfig::default()
        };
        assert_eq!(*l, loader_defaults);
    }

    #[test]
    fn every_bad_route_key_is_named() {
        let p = problems(
            r#"[[origins]]
name = "web"
upstreams = ["http://h:1"]
[[origins.routes]]
prefix = "/api/"
[[origins.routes]]
prefix = "/api/"
[[origins.routes]]
prefix = "/v1/kv/x"
[[origins.routes]]
prefix = "/v"
min_ttl = "2h"
max_ttl = "1h"
[[origins.routes]]
prefix = "static/"
max_object_bytes = "2MiB"
cache_capacity = "1MiB"
[[origins.routes]]
prefix = "/locked/"
lock_wait = "5s"
lock_ttl = "1s""#,
        );
        let want = [
            "origins[0].routes[1].prefix: \"/api/\" has a route already",
            "origins[0].routes[2].prefix: \"/v1/kv/x\" overlaps",
            "origins[0].routes[3].prefix: \"/v\" overlaps",
            "origins[0].routes[3].max_ttl: must be at least min_ttl",
            "origins[0].routes[4].prefix: must be a path",
            "origins[0].routes[4].max_object_bytes: must be at most cache_capacity",
            "origins[0].routes[5].lock_ttl: must be at least lock_wait",
        ];
        for w in want {
            assert!(
                p.iter().any(|p| p.starts_with(w)),
                "{w} missing from {p:#?}"
            );
        }
        assert_eq!(p.len(), want.len(), "{p:#?}");
    }
}

//! The admin port: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (it should get traffic: not draining, and L2 reachable when configured),
//! `/hotkeys` (the keys read most lately, JSON), and the status page at `/`: a live HTML page
//! for browsers (`status.html`, which polls `/status.json` every second and shows rates from
//! successive samples) and the plain text of `/status.txt` for anything that does not ask for
//! HTML. Served by its own listener so that scrapes and probes never queue behind data traffic.
//!
//! With `admin.token` set, every path but the probes needs `Authorization: Bearer <token>`
//! (probes come from orchestrators that carry none). Without it, the paths that name keys
//! (`/hotkeys`, the status page) name them to loopback clients only: a key's name can be a
//! secret of its own.

use super::{Door, LatencyBuckets, Metrics, Tier};
use crate::{
    auth::{self, Denied},
    cache::TieredCache,
    config::{Config, Secret},
    net,
    shutdown::Shutdown,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};
use tokio::net::TcpListener;

/// What the admin handlers read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<TieredCache>,
    /// The origin tier, whose gauges read upstream state at scrape time.
    pub origins: Arc<crate::origin::Origins>,
    /// Proxy routes: `POST /purge?url=/path` removes a URL's stored variants.
    pub proxy: Arc<crate::http::proxy::Proxy>,
    /// Tripped at the start of shutdown: readiness turns 503 so balancers stop sending.
    pub draining: Shutdown,
    /// `admin.token` (empty: none); replaced on reload.
    pub token: ArcSwap<Secret>,
    /// The budgets the status page shows figures against; replaced on reload.
    pub budgets: ArcSwap<Budgets>,
    /// When the server started, for the uptime.
    pub started: Instant,
}

/// The configured budgets `/status.json` reports beside the figures they bound.
#[derive(Clone, Debug, Default)]
pub struct Budgets {
    pub resp_max_connections: usize,
    /// Per door (HTTP and RESP each have their own).
    pub admission_max_inflight: usize,
    pub admission_max_queue: usize,
    pub background_max_inflight: usize,
    pub background_max_queue: usize,
}

impl Budgets {
    pub fn from_config(c: &Config) -> Self {
        Self {
            resp_max_connections: c.resp.max_connections,
            admission_max_inflight: c.admission.max_inflight,
            admission_max_queue: c.admission.max_queue,
            background_max_inflight: c.background.max_inflight,
            background_max_queue: c.background.max_queue,
        }
    }
}

/// The browser status page: self-contained (inline CSS and script, no external assets).
const STATUS_HTML: &str = include_str!("status.html");

/// Paths served without the admin token: liveness and readiness probes carry none.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

impl Admin {
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.draining.is_triggered() {
            return Err("draining");
        }
        match self.cache.l2() {
            Some(l2) if !l2.is_up() => Err("l2 unreachable"),
            // Until it is read, commands the RESP door forwards are refused.
            Some(l2) if l2.forwards() && l2.table().is_none() => {
                Err("redis command table not read yet")
            }
            _ => Ok(()),
        }
    }

    /// The 401 for a `req` that may not see what `path` shows; None for the probes, and for
    /// every path with the admin token (when one is set).
    fn refusal<B>(&self, path: &str, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let token = self.token.load();
        if token.is_empty() || PROBES.contains(&path) {
            return None;
        }
        let why = auth::bearer_is(req.headers(), &token).err()?;
        self.metrics.auth_denied(Door::Admin, why);
        let msg = match why {
            Denied::Missing => "this path needs Authorization: Bearer <admin.token>\n",
            _ => "the bearer token is not admin.token\n",
        };
        let mut resp = text(StatusCode::UNAUTHORIZED, msg.into());
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tiergate-admin\""),
        );
        Some(resp)
    }

    /// Whether key names may be shown to `peer`: to anyone who passed the admin token, and
    /// without one only on loopback, as protected mode keeps the data doors.
    fn names_keys(&self, peer: SocketAddr) -> bool {
        !self.token.load().is_empty() || auth::admits(true, peer.ip())
    }

    async fn handle<B>(&self, req: &Request<B>, peer: SocketAddr) -> Response<Full<Bytes>> {
        // --- proxy routes: POST /purge?url=<path and query> ---
        if req.method() == Method::POST && req.uri().path() == "/purge" {
            if let Some(refused) = self.refusal("/purge", req) {
                return refused;
            }
            let url = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("url=")))
                .and_then(|v| percent_encoding::percent_decode_str(v).decode_utf8().ok())
                .map(|v| v.into_owned())
                .unwrap_or_default();
            if !url.starts_with('/') {
                return text(
                    StatusCode::BAD_REQUEST,
                    "POST /purge?url=<path and query, starting with />\n".into(),
                );
            }
            let purged = self.proxy.purge(&url).await;
            return typed(format!("{{\"purged\":{purged}}}\n"), "application/json");
        }
        // --- end proxy routes ---
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let path = req.uri().path();
        // The page itself holds no figure: it fetches /status.json, which is guarded, with the
        // token its visitor types in (a browser cannot send a bearer header on navigation).
        if path == "/" && wants_html(req) {
            return status_html();
        }
        if let Some(refused) = self.refusal(path, req) {
            return refused;
        }
        match path {
            "/metrics" => {
                self.cache.publish_usage().await;
                self.origins.refresh_gauges();
                self.proxy.refresh_gauges();
                typed(
                    self.metrics.render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.ready() {
                // The pid tells which of two instances sharing the port (SO_REUSEPORT, during
                // a rolling restart) answered.
                Ok(()) => text(
                    StatusCode::OK,
                    format!("ready pid={}\n", std::process::id()),
                ),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/hotkeys" if !self.names_keys(peer) => text(StatusCode::FORBIDDEN, KEYS_HIDDEN.into()),
            "/hotkeys" => {
                let hot = self.cache.hot_keys();
                let keys: Vec<_> = hot
                    .report()
                    .iter()
                    .map(|h| serde_json::json!({"key": crate::http::to_json(&h.key), "reads": h.reads}))
                    .collect();
                let body = serde_json::json!({
                    "enabled": hot.enabled(),
                    "sampled_one_in": hot.sample(),
                    "half_life_seconds": crate::cache::hot::HALF_LIFE.as_secs(),
                    "keys": keys,
                });
                typed(format!("{body}\n"), "application/json")
            }
            "/" | "/status.txt" => {
                let mut resp = text(
                    StatusCode::OK,
                    self.status_page(self.names_keys(peer)).await,
                );
                if path == "/" {
                    resp.headers_mut()
                        .insert(header::VARY, HeaderValue::from_static("accept"));
                }
                resp
            }
            "/status.json" => {
                let mut resp = typed(
                    format!("{}\n", self.status_json(self.names_keys(peer)).await),
                    "application/json",
                );
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics, /healthz, /readyz, /hotkeys, /status.json, /status.txt or /\n"
                    .into(),
            ),
        }
    }

    /// What the live status page reads: raw counters and gauges (the page computes rates from
    /// successive samples), the budgets they run against, and hot keys by name only if
    /// `names_keys` (the rule of `/hotkeys`).
    async fn status_json(&self, names_keys: bool) -> serde_json::Value {
        use serde_json::json;
        let m = &self.metrics;
        self.cache.publish_usage().await;
        let budgets = self.budgets.load();
        let (http_requests, http_5xx) = m.http_request_counts();
        let http_latency = m.http_latency_buckets();
        let resp_latency = {
            // Per class, and all classes together in the shape HTTP's latency has.
            let as_json = |l: &LatencyBuckets| {
                json!({
                    "count": l.count,
                    "sum": l.sum,
                    "buckets": l.buckets.iter().map(|(le, n)| json!([le, n])).collect::<Vec<_>>(),
                })
            };
            let (all, classes) = m.resp_latency_buckets();
            let mut by_class = serde_json::Map::new();
            for (class, l) in &classes {
                by_class.insert(class.to_string(), as_json(l));
            }
            let mut latency = as_json(&all);
            latency["classes"] = by_class.into();
            latency
        };
        let (l1_hits, l1_misses) = m.tier_counts(Tier::L1);
        let (l2_hits, l2_misses) = m.tier_counts(Tier::L2);
        let (l2_errors, l2_in_flight) = m.l2_error_count();
        let door = |d: Door| {
            let (open, accepted, rejected) = m.door_counts(d);
            json!({"open": open, "accepted": accepted, "rejected": rejected})
        };
        let admission = |d: Door| {
            let a = m.admission(d);
            json!({
                "in_flight": a.inflight.get(),
                "queued": a.queued.get(),
                "shed": a.rejected.iter().map(|c| c.get()).sum::<u64>(),
                "max_in_flight": budgets.admission_max_inflight,
                "max_queue": budgets.admission_max_queue,
            })
        };
        let bg = &m.background;
        let l2 = self.cache.l2();
        let hot = self.cache.hot_keys();
        let hot_keys = if names_keys {
            let keys: Vec<_> = hot
                .report()
                .iter()
                .map(|h| json!({"key": crate::http::to_json(&h.key), "reads": h.reads}))
                .collect();
            json!({"shown": true, "enabled": hot.enabled(), "keys": keys})
        } else {
            json!({"shown": false, "enabled": hot.enabled(), "why": KEYS_HIDDEN.trim_end()})
        };
        let ready = self.ready();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": env!("GIT_COMMIT"),
            "pid": std::process::id(),
            "mode": if l2.is_some() { "tiered" } else { "standalone" },
            "ready": ready.is_ok(),
            "not_ready_why": ready.err(),
            "draining": self.draining.is_triggered(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "http": {
                "requests": http_requests,
                "server_errors": http_5xx,
                "connections": door(Door::Http),
                "latency": {
                    "count": http_latency.count,
                    "buckets": http_latency.buckets.iter().map(|(le, n)| json!([le, n])).collect::<Vec<_>>(),
                },
                "admission": admission(Door::Http),
            },
            "resp": {
                "commands": m.resp_commands.get(),
                "connections": door(Door::Resp),
                "max_connections": budgets.resp_max_connections,
                "latency": resp_latency,
                "admission": admission(Door::Resp),
            },
            "admin": {"connections": door(Door::Admin)},
            "background": {
                "in_flight": bg.inflight.get(),
                "queued": bg.queued.get(),
                "skipped": bg.rejected.iter().map(|c| c.get()).sum::<u64>(),
                "max_in_flight": budgets.background_max_inflight,
                "max_queue": budgets.background_max_queue,
            },
            "l1": {
                "hits": l1_hits,
                "misses": l1_misses,
                "entries": m.l1_entries.get(),
                "bytes": m.l1_bytes.get(),
                "stale_served": m.l1_stale_served.get(),
                "warming": m.l1_warming.get() != 0,
            },
            "l2": {
                "configured": l2.is_some(),
                "up": l2.is_some_and(|l2| l2.is_up()),
                "circuit_open": m.l2_circuit_open.get() != 0,
                "hits": l2_hits,
                "misses": l2_misses,
                "errors": l2_errors,
                "in_flight": l2_in_flight,
                "circuit_rejected": m.l2_circuit_rejected.get(),
                "dedicated_lent": m.l2_dedicated_lent.get(),
                "dedicated_size": l2.map_or(0, |l2| l2.dedicated_size()),
            },
            "bus": {
                "subscribed": m.bus_subscribed.get() != 0,
                "invalidations": m.bus_invalidations.get(),
                "flushes": m.bus_flushes.get(),
            },
            "process": {
                "rss_bytes": crate::host::rss_bytes(),
                "open_fds": open_fds(),
                "max_fds": max_fds(),
            },
            "hot_keys": hot_keys,
            "origins": self.origins.snapshot().iter().map(|o| json!({
                "name": &*o.name,
                "retries": o.retries,
                "retries_refused": o.retries_refused,
                "upstreams": o.upstreams.iter().map(|u| json!({
                    "upstream": &*u.upstream,
                    "weight": u.weight,
                    "healthy": u.healthy,
                    "ejected": u.ejected,
                    "in_flight": u.in_flight,
                    "connections": u.connections,
                    "attempts": u.attempts,
                    "failures": u.failures,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The plain-text status page; hot keys by name only if `names_keys`.
    async fn status_page(&self, names_keys: bool) -> String {
        let mode = match self.cache.l2() {
            None => "standalone (memory tier only)".to_string(),
            Some(l2) => format!("tiered (L2 {})", if l2.is_up() { "up" } else { "DOWN" }),
        };
        let ready = match self.ready() {
            Ok(()) => "yes".to_string(),
            Err(why) => format!("no ({why})"),
        };
        self.cache.publish_usage().await;
        let mut page = format!(
            "tiergate {}\nmode: {mode}\nready: {ready}\nl1 entries: {}\nl1 bytes: {}\n\
             (a browser gets the live page at /; the figures as JSON: /status.json)\n",
            env!("CARGO_PKG_VERSION"),
            self.metrics.l1_entries.get(),
            self.metrics.l1_bytes.get(),
        );
        if !names_keys {
            page.push_str("hot keys: ");
            page.push_str(KEYS_HIDDEN);
            return page;
        }
        let hot = self.cache.hot_keys().report();
        if !hot.is_empty() {
            page.push_str("hot keys (estimated recent reads):\n");
            for h in hot {
                page.push_str(&format!("  {:>10}  {}\n", h.reads, h.key.escape_ascii()));
            }
        }
        page
    }
}

/// Why key names are not shown: no admin token, and the client is not on loopback.
const KEYS_HIDDEN: &str = "key names are shown only to loopback clients while admin.token is unset; set admin.token and send Authorization: Bearer <admin.token>\n";

/// The live status page, the same for everyone: its figures come from /status.json.
fn status_html() -> Response<Full<Bytes>> {
    let mut resp = typed(STATUS_HTML.into(), "text/html; charset=utf-8");
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// Whether the client asked for HTML (a browser); curl and friends get the plain text.
fn wants_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

/// File descriptors this process holds open (Linux: /proc/self/fd).
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// The soft limit on open files, from /proc/self/limits.
fn max_fds() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = typed(body, "text/plain; charset=utf-8");
    *resp.status_mut() = status;
    resp
}

/// A 200 with `body` of `content_type`.
fn typed(body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves the admin port until `stop`. It outlives the data doors' drain on purpose, so
/// probes keep seeing "not ready" while connections finish.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: Shutdown) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new());
    let http1 = Arc::new(http1);
    let metrics = admin.metrics.clone();
    net::accept_loop(
        listener,
        &stop,
        || metrics.accept_errors.inc(),
        |stream, peer| {
            let admin = admin.clone();
            let http1 = http1.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _open = admin.metrics.connection(Door::Admin);
                let svc = service_fn({
                    let admin = admin.clone();
                    move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(&req, peer).await) }
                    }
                });
                let conn = http1.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.wait() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        },
    )
    .await;
}

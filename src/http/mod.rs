//! The HTTP front door: hyper serving HTTP/1.1 keep-alive and h2c on one port, the KV
//! router, and a graceful drain on shutdown.

mod batch;
pub use batch::to_json;
mod body;
mod conn;
pub mod error;
mod key;
mod kv;

use crate::{
    access::{self, AccessLog},
    auth::{Auth, Denied, Need, Principal},
    cache::TieredCache,
    config::{Config, HttpConfig, LimitsConfig, ShutdownConfig, DEFAULT_HTTP_MAX_HEADERS},
    exec::Admission,
    metrics::{Door, Metrics, Route},
    net,
    shutdown::Shutdown,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use error::ApiError;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::net::TcpListener;

pub use body::RequestBody;
pub use kv::X_CACHE;

/// What every request handler needs.
pub struct State {
    /// Bearer tokens and their scopes; shared with the RESP door, replaced on reload.
    pub auth: Arc<Auth>,
    pub cache: Arc<TieredCache>,
    pub metrics: Arc<Metrics>,
    /// Key, value and batch bounds; replaced on reload.
    pub limits: ArcSwap<LimitsConfig>,
    /// This door's admission: requests past it are refused with 503 at once.
    pub admission: Admission,
    /// How long a request body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// How long a request may take in all (503 `request_timeout` past it).
    pub request_timeout: Duration,
    /// Per-request log lines, when `access_log.enabled`.
    pub access: Option<Arc<AccessLog>>,
    /// Tripped once the listener is closed: HTTP/1 responses then say `Connection: close`.
    /// Not before: a client told to reconnect while the listener is still open may be
    /// queued on it and reset when it closes.
    pub listener_closed: Shutdown,
    /// Tripped at the drain's second step: every connection closes after its in-flight
    /// requests (idle HTTP/1 ones at once, h2 with GOAWAY).
    pub close_connections: Shutdown,
}

impl State {
    pub fn new(
        config: &Config,
        auth: Arc<Auth>,
        cache: Arc<TieredCache>,
        metrics: Arc<Metrics>,
        access: Option<Arc<AccessLog>>,
    ) -> Self {
        Self {
            access,
            listener_closed: Shutdown::new(),
            close_connections: Shutdown::new(),
            auth,
            cache,
            admission: Admission::from_config(Door::Http, &config.admission, &metrics),
            metrics,
            limits: ArcSwap::from_pointee(config.limits.clone()),
            body_read_timeout: config.http.body_read_timeout.0,
            request_timeout: config.http.request_timeout.0,
        }
    }
}

type Reply = Result<Response<Full<Bytes>>, ApiError>;

const KV_PREFIX: &str = "/v1/kv/";
const BATCH_GET: &str = "/v1/kv:batchGet";
const BATCH_SET: &str = "/v1/kv:batchSet";

/// Handles one request: checks its token, admits it, routes it, answers it, records it.
/// Generic over the body so benches and unit tests can call it without sockets.
pub async fn handle<B: RequestBody>(state: &State, req: Request<B>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    // Classified first, so refusals (401, 503) are counted under the route they were for.
    let route = route_of(req.method(), req.uri().path());
    let head = req.method() == Method::HEAD;
    // Keys named: the key's length on single-key routes, the key count of a batch.
    let mut keys = req.uri().path().strip_prefix(KV_PREFIX).map_or(0, str::len) as u32;
    let reply = match state.auth.rules().bearer(req.headers()) {
        Err(why) => {
            state.metrics.auth_denied(Door::Http, why);
            Err(ApiError::unauthorized(why))
        }
        // Before admission: a request without a valid token must not take a slot.
        Ok(user) => match state.admission.admit().await {
            Ok(_admitted) => {
                let work = dispatch(state, route, user.as_deref(), req, &mut keys);
                tokio::time::timeout(state.request_timeout, work)
                    .await
                    .unwrap_or_else(|_| Err(ApiError::request_timeout()))
            }
            Err(why) => Err(ApiError::overloaded(why)),
        },
    };
    let resp = reply.unwrap_or_else(ApiError::into_response);
    let took = start.elapsed();
    state
        .metrics
        .record_http(route, resp.status().as_u16(), took);
    if let Some(log) = &state.access {
        log.push(access::Record {
            at: SystemTime::now() - took,
            door: Door::Http,
            op: route.op(head),
            key_len: keys,
            status: access::Status::Http(resp.status().as_u16()),
            tier: kv::tier_of(&resp),
            duration: took,
        });
    }
    resp
}

/// The route a request is for; `Unmatched` for unknown paths and methods a path does not take.
fn route_of(method: &Method, path: &str) -> Route {
    if path.starts_with(KV_PREFIX) {
        return match *method {
            Method::GET | Method::HEAD => Route::KvGet,
            Method::PUT => Route::KvPut,
            Method::DELETE => Route::KvDelete,
            _ => Route::Unmatched,
        };
    }
    match (path, method) {
        (BATCH_GET, &Method::POST) => Route::BatchGet,
        (BATCH_SET, &Method::POST) => Route::BatchSet,
        _ => Route::Unmatched,
    }
}

async fn dispatch<B: RequestBody>(
    state: &State,
    route: Route,
    user: Option<&Principal>,
    req: Request<B>,
    keys: &mut u32,
) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let raw_key = path.strip_prefix(KV_PREFIX).unwrap_or_default();
    match route {
        Route::KvGet => kv::get(state, user, raw_key).await,
        Route::KvPut => {
            kv::put(
                state,
                user,
                raw_key,
                parts.uri.query(),
                &parts.headers,
                body,
            )
            .await
        }
        Route::KvDelete => kv::delete(state, user, raw_key).await,
        Route::BatchGet => batch::get(state, user, &parts.headers, body, keys).await,
        Route::BatchSet => batch::set(state, user, &parts.headers, body, keys).await,
        Route::Unmatched if path.starts_with(KV_PREFIX) => {
            Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE"))
        }
        Route::Unmatched if path == BATCH_GET || path == BATCH_SET => {
            Err(ApiError::method_not_allowed("POST"))
        }
        Route::Unmatched => Err(ApiError::route_not_found()),
    }
}

impl State {
    /// 403 unless `user` (None: auth is off) may do `need` to `key`.
    fn authorize(&self, user: Option<&Principal>, need: Need, key: &[u8]) -> Result<(), ApiError> {
        match user {
            Some(p) if !p.may(need, key) => {
                self.metrics.auth_denied(Door::Http, Denied::Forbidden);
                Err(ApiError::forbidden(p.name()))
            }
            _ => Ok(()),
        }
    }
}

/// Serves the data port until shutdown, then drains in two steps, within `shutdown.grace`:
/// for `shutdown.drain_delay` every connection is still served, each HTTP/1 response saying
/// `Connection: close`, so busy clients move to a new instance between two requests; then
/// idle HTTP/1 connections are closed, h2 ones get GOAWAY, and in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    cfg: HttpConfig,
    drain: ShutdownConfig,
    shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also the keep-alive idle timeout: hyper starts it whenever it waits for a head.
        .header_read_timeout(cfg.header_read_timeout.0)
        // A head that does not fit the read buffer gets 431 (the body streams past it).
        .max_buf_size(cfg.max_header_bytes.0 as usize);
    if cfg.max_headers != DEFAULT_HTTP_MAX_HEADERS {
        // Only when changed: hyper then parses headers on the heap, about 5% slower.
        builder.http1().max_headers(cfg.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(cfg.max_header_bytes.0 as u32);
    if !cfg.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let keepalive = cfg.keepalive_timeout.0;
    // Each connection task holds a sender; when all are dropped, every connection is done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let metrics = state.metrics.clone();
    net::accept_loop(
        listener,
        &shutdown,
        || metrics.accept_errors.inc(),
        |stream, _peer| {
            let held = (state.metrics.connection(Door::Http), alive.clone());
            let (state, builder) = (state.clone(), builder.clone());
            let panics = state.metrics.connection_panics.clone();
            net::spawn_isolated(panics, async move {
                let _held = held;
                conn::serve(stream, state, builder, keepalive).await;
            });
        },
    )
    .await;
    drop(alive);
    state.listener_closed.trigger();
    let (grace, delay) = (drain.grace.0, drain.drain_delay.0);
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        ?delay,
        "http: stopped accepting; serving open connections with `Connection: close`"
    );
    // Step one ends early once every client has gone.
    let gone = tokio::select! {
        _ = all_done.recv() => true,
        _ = tokio::time::sleep(delay) => false,
    };
    if !gone {
        tracing::info!("http: closing idle connections; waiting for in-flight requests");
        state.close_connections.trigger();
        tokio::select! {
            _ = all_done.recv() => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(grace = ?grace, "http: grace period over; closing the connections left");
                return;
            }
        }
    }
    tracing::info!("http: drained");
}

//! The HTTP front door: HTTP/1.1 keep-alive and h2c on one port (requests without a body on
//! our own HTTP/1 path, `h1`; the rest, and h2c, on hyper), the KV router, and a graceful
//! drain on shutdown.

pub mod batch;
pub use batch::to_json;
mod body;
mod conn;
pub mod error;
pub mod h1;
pub mod key;
mod kv;
mod protected;
mod proto;
pub mod proxy;
mod values;

use crate::{
    access::{self, AccessLog},
    auth::{Auth, Denied, Need, Principal},
    cache::TieredCache,
    config::{Config, HttpConfig, LimitsConfig, ShutdownConfig, DEFAULT_HTTP_MAX_HEADERS},
    exec::{placement, Admission},
    metrics::{Door, Metrics, Route},
    net,
    shutdown::Shutdown,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use error::ApiError;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    task::Poll,
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
    /// Proxy routes (`[[origins.routes]]`), matched before the KV API; none by default.
    pub proxy: Arc<crate::http::proxy::Proxy>,
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
            proxy: Arc::default(),
        }
    }

    /// Serves these proxy routes too.
    pub fn with_proxy(mut self, proxy: Arc<crate::http::proxy::Proxy>) -> Self {
        self.proxy = proxy;
        self
    }
}

type Reply = Result<Response<ReplyBody>, ApiError>;

/// A response body: whole (every answer but one), or a batchGet's values, encoded as the
/// connection takes them (`values`). Boxed there: this is in every response, and the whole
/// kind is all an L1 hit needs.
#[derive(Debug)]
pub enum ReplyBody {
    Whole(Full<Bytes>),
    Values(Box<values::Values>),
    /// An origin's answer streamed through a proxy route (`crate::http::proxy`).
    Proxied(Box<crate::http::proxy::ProxyBody>),
    /// A proxy route's stored answer: the body, and the stored headers, which only the
    /// connection writing the answer spells out (`spell_out` for hyper).
    Kept(Full<Bytes>, crate::http::proxy::Kept),
}

impl ReplyBody {
    /// A stored answer's headers, which go with its body (see `Kept`).
    pub fn kept(&self) -> Option<&crate::http::proxy::Kept> {
        match self {
            ReplyBody::Kept(_, kept) => Some(kept),
            _ => None,
        }
    }

    /// `resp` with every header in its map, for hyper, which writes only the map.
    pub fn spell_out(resp: Response<ReplyBody>) -> Response<ReplyBody> {
        let (mut parts, body) = resp.into_parts();
        let ReplyBody::Kept(full, kept) = body else {
            return Response::from_parts(parts, body);
        };
        // Whatever the answer's own map holds replaces the stored headers of its names.
        let mut headers = kept.map();
        headers.extend(std::mem::take(&mut parts.headers));
        parts.headers = headers;
        Response::from_parts(parts, ReplyBody::Whole(full))
    }
}

impl std::fmt::Debug for crate::http::proxy::ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyBody")
    }
}

impl From<Full<Bytes>> for ReplyBody {
    fn from(b: Full<Bytes>) -> Self {
        ReplyBody::Whole(b)
    }
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    /// Only a proxied body can fail (its origin went away mid-answer).
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReplyBody::Whole(b) | ReplyBody::Kept(b, _) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
            ReplyBody::Proxied(b) => Pin::new(b.as_mut()).poll_frame(cx),
            // Never waits: the values are all in memory; hyper asks for the next piece
            // when the connection has taken the last.
            ReplyBody::Values(v) => {
                Poll::Ready(v.next_frame().map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Whole(b) | ReplyBody::Kept(b, _) => b.is_end_stream(),
            ReplyBody::Values(v) => v.is_end(),
            ReplyBody::Proxied(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ReplyBody::Whole(b) | ReplyBody::Kept(b, _) => b.size_hint(),
            // Exact: hyper sends it as Content-Length.
            ReplyBody::Values(v) => hyper::body::SizeHint::with_exact(v.remaining()),
            ReplyBody::Proxied(b) => b.size_hint(),
        }
    }
}

const KV_PREFIX: &str = "/v1/kv/";
const BATCH_GET: &str = "/v1/kv:batchGet";
const BATCH_SET: &str = "/v1/kv:batchSet";

/// Handles one request: checks its token, admits it, routes it, answers it, records it.
/// Generic over the body so benches and unit tests can call it without sockets. `peer`: who
/// sent it, for the proxy routes' X-Forwarded-For (None when there are no routes).
pub async fn handle<B: RequestBody + 'static>(
    state: &State,
    req: Request<B>,
    peer: Option<Arc<proxy::ClientAddr>>,
) -> Response<ReplyBody> {
    // --- proxy routes: matched first (a route's prefix never overlaps /v1/) ---
    if let Some(route) = state.proxy.find(req.uri().path()) {
        let route = route.clone();
        return placement::boxed(|| proxied(state, route, req, peer)).await;
    }
    // --- end proxy routes ---
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
                // Pinned here, not moved into `within`: a future passed by value is stored
                // twice in the caller's (as the argument and as the pinned local), and this
                // one is 1.5 KB.
                let work = std::pin::pin!(dispatch(state, route, user.as_deref(), req, &mut keys));
                within(state.request_timeout, start, work).await
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

// --- proxy routes ---
/// A request for a proxy route: `PURGE` removes the URL's stored variants (with a token
/// that may write the path as a key, when auth is on); any other method is admitted and
/// proxied (the origin does its own auth: tiergate's bearer token is not asked for, and is
/// forwarded as the client sent it).
async fn proxied<B: RequestBody + 'static>(
    state: &State,
    route: Arc<crate::http::proxy::Route>,
    req: Request<B>,
    peer: Option<Arc<proxy::ClientAddr>>,
) -> Response<ReplyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let reply = if method.as_str() == "PURGE" {
        match state.auth.rules().bearer(req.headers()) {
            Err(why) => {
                state.metrics.auth_denied(Door::Http, why);
                Err(ApiError::unauthorized(why))
            }
            Ok(user) => {
                let url = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                match state.authorize(user.as_deref(), Need::Write, req.uri().path().as_bytes()) {
                    Ok(()) => Ok(route.purge(url).await),
                    Err(e) => Err(e),
                }
            }
        }
    } else {
        match state.admission.admit().await {
            Ok(_admitted) => {
                let max_body = state.limits.load().max_value_bytes.0;
                let peer = peer.as_deref();
                let work = std::pin::pin!(async { Ok(route.serve(req, max_body, peer).await) });
                within(state.request_timeout, start, work).await
            }
            Err(why) => Err(ApiError::overloaded(why)),
        }
    };
    finish_proxied(
        state,
        start,
        reply,
        method == Method::GET || method == Method::HEAD,
    )
}

/// A proxy route's fresh stored answer found from a request's head as read (our HTTP/1
/// path, before any `Request` is built: `Proxy::stored_answer`), admitted and recorded as
/// `proxied` does: None when it may be written, else the refusal to write in its place.
pub(crate) async fn proxied_hit(state: &State, status: StatusCode) -> Option<Response<ReplyBody>> {
    let start = Instant::now();
    match state.admission.admit().await {
        Ok(_admitted) => {
            record_proxied(state, start, status);
            None
        }
        Err(why) => Some(finish_proxied(
            state,
            start,
            Err(ApiError::overloaded(why)),
            true,
        )),
    }
}

/// A proxied request's answer, recorded: X-Cache on refusals made before the route (its
/// own answers say it already), the metrics and the access log.
fn finish_proxied(
    state: &State,
    start: Instant,
    reply: Reply,
    get_or_head: bool,
) -> Response<ReplyBody> {
    let resp = reply.unwrap_or_else(|e| {
        let mut resp = e.into_response();
        let outcome = if get_or_head { "MISS" } else { "BYPASS" };
        resp.headers_mut()
            .insert(X_CACHE, http::HeaderValue::from_static(outcome));
        resp
    });
    record_proxied(state, start, resp.status());
    resp
}

/// The metrics and the access log of a proxied request begun at `start`.
fn record_proxied(state: &State, start: Instant, status: StatusCode) {
    let took = start.elapsed();
    state
        .metrics
        .record_http(Route::Proxy, status.as_u16(), took);
    if let Some(log) = &state.access {
        log.push(access::Record {
            at: SystemTime::now() - took,
            door: Door::Http,
            op: Route::Proxy.op(false),
            key_len: 0,
            status: access::Status::Http(status.as_u16()),
            tier: None,
            duration: took,
        });
    }
}
// --- end proxy routes ---

/// Runs `work` until it is done or `limit` has passed since `start` (503 `request_timeout`).
/// The first poll goes without a timer: an L1 hit is done by then, and arming one costs a
/// clock read, a runtime handle and a timer entry to tear down, on every request.
async fn within<F: Future<Output = Reply>>(
    limit: Duration,
    start: Instant,
    mut work: Pin<&mut F>,
) -> Reply {
    if let Poll::Ready(reply) = poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return reply;
    }
    let deadline = tokio::time::Instant::from_std(start + limit);
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(ApiError::request_timeout()))
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

async fn dispatch<B: RequestBody + 'static>(
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
        // Only GET is inline. The other routes are boxed: this future is built and copied on
        // every request, and inline it is as large as its largest route (a batch, 7 KB with
        // the cache's own); an allocation is nothing beside reading a body or asking L2.
        Route::KvGet => kv::get(state, user, raw_key).await,
        Route::KvPut => {
            let query = parts.uri.query();
            placement::boxed(|| kv::put(state, user, raw_key, query, &parts.headers, body)).await
        }
        Route::KvDelete => placement::boxed(|| kv::delete(state, user, raw_key)).await,
        Route::BatchGet => {
            placement::boxed(|| batch::get(state, user, &parts.headers, body, keys)).await
        }
        Route::BatchSet => {
            placement::boxed(|| batch::set(state, user, &parts.headers, body, keys)).await
        }
        Route::Unmatched if path.starts_with(KV_PREFIX) => {
            Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE"))
        }
        Route::Unmatched if path == BATCH_GET || path == BATCH_SET => {
            Err(ApiError::method_not_allowed("POST"))
        }
        Route::Unmatched | Route::Proxy => Err(ApiError::route_not_found()),
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
    let max_head = cfg.max_header_bytes.0 as usize;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // No timer for HTTP/1: without one hyper arms no header-read timeout, which `conn` keeps
    // instead, at a fraction of the cost (see there).
    h1
        // A head over this gets 431, on every request of a connection: hyper checks it
        // against the parsed head. `max_buf_size` alone is checked only between reads, and
        // one read can take more than it (see `proto`).
        .max_header_size(max_head)
        // The read buffer's bound: the head must fit (the body streams past it).
        .max_buf_size(max_head)
        // Without this, hyper reads the socket while each request is in flight, to notice a
        // client gone mid-request. That read reserves buffer space while the request still
        // holds the head's bytes, so every request reallocated the 8 KB read buffer (a
        // tenth of a bare hyper request). With it a request runs to its end (bounded by
        // `http.request_timeout`) even if its client left: a write is never cut off between
        // Redis and L1's invalidation by a client hanging up.
        .half_close(true);
    if cfg.max_headers != DEFAULT_HTTP_MAX_HEADERS {
        // Only when changed: hyper then parses headers on the heap, about 5% slower.
        h1.max_headers(cfg.max_headers);
    }
    let h2 = cfg.http2.then(|| {
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.http2_max_concurrent_streams)
            // Checked by h2 on each header block as it is decoded: 431 on that stream.
            .max_header_list_size(max_head as u32);
        h2
    });
    let protocols = Arc::new(proto::Protocols { h1, h2 });
    let idle = conn::IdleLimits {
        h1: cfg.header_read_timeout.0.min(cfg.keepalive_timeout.0),
        h2: cfg.keepalive_timeout.0,
        max_head,
        max_headers: cfg.max_headers,
    };
    // Each connection task holds a sender; when all are dropped, every connection is done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let metrics = state.metrics.clone();
    net::accept_loop(
        listener,
        &shutdown,
        || metrics.accept_errors.inc(),
        |stream, peer| {
            if !state.auth.rules().http_admits(peer.ip()) {
                state.metrics.protected_refused(Door::Http);
                let panics = state.metrics.connection_panics.clone();
                net::spawn_isolated(
                    panics,
                    protected::refuse(stream, protocols.clone(), idle.h1),
                );
                return;
            }
            let held = (state.metrics.connection(Door::Http), alive.clone());
            let (state, protocols) = (state.clone(), protocols.clone());
            let panics = state.metrics.connection_panics.clone();
            net::spawn_isolated(panics, async move {
                let _held = held;
                conn::serve(stream, state, protocols, idle).await;
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

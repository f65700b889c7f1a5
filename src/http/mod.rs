//! The HTTP front door: hyper serving HTTP/1.1 keep-alive and h2c on one port, the KV
//! router, and a graceful drain on shutdown.

mod batch;
pub use batch::to_json;
mod body;
pub mod error;
mod key;
mod kv;

use crate::{
    cache::TieredCache,
    config::{HttpConfig, LimitsConfig, DEFAULT_HTTP_MAX_HEADERS},
    exec::Admission,
    metrics::{Door, Metrics, Route},
    net,
    shutdown::Shutdown,
};
use bytes::Bytes;
use error::ApiError;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::{convert::Infallible, sync::Arc, time::Duration, time::Instant};
use tokio::net::TcpListener;

pub use body::RequestBody;
pub use kv::X_CACHE;

/// What every request handler needs.
pub struct State {
    pub cache: Arc<TieredCache>,
    pub metrics: Arc<Metrics>,
    pub limits: LimitsConfig,
    /// This door's admission: requests past it are refused with 503 at once.
    pub admission: Admission,
    /// How long a request body may take to arrive (408 past it).
    pub body_read_timeout: Duration,
    /// How long a request may take in all (503 `request_timeout` past it).
    pub request_timeout: Duration,
}

type Reply = Result<Response<Full<Bytes>>, ApiError>;

const KV_PREFIX: &str = "/v1/kv/";
const BATCH_GET: &str = "/v1/kv:batchGet";
const BATCH_SET: &str = "/v1/kv:batchSet";

/// Handles one request: routes it, answers it, records it. Generic over the body so benches
/// and unit tests can call it without sockets.
pub async fn handle<B: RequestBody>(state: &State, req: Request<B>) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let (route, reply) = match state.admission.admit().await {
        Ok(_admitted) => tokio::time::timeout(state.request_timeout, dispatch(state, req))
            .await
            .unwrap_or_else(|_| (Route::Unmatched, Err(ApiError::request_timeout()))),
        Err(why) => (Route::Unmatched, Err(ApiError::overloaded(why))),
    };
    let resp = reply.unwrap_or_else(ApiError::into_response);
    state
        .metrics
        .record_http(route, resp.status().as_u16(), start.elapsed());
    resp
}

async fn dispatch<B: RequestBody>(state: &State, req: Request<B>) -> (Route, Reply) {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if let Some(raw_key) = path.strip_prefix(KV_PREFIX) {
        return match parts.method {
            Method::GET | Method::HEAD => (Route::KvGet, kv::get(state, raw_key).await),
            Method::PUT => (
                Route::KvPut,
                kv::put(state, raw_key, parts.uri.query(), &parts.headers, body).await,
            ),
            Method::DELETE => (Route::KvDelete, kv::delete(state, raw_key).await),
            _ => (
                Route::Unmatched,
                Err(ApiError::method_not_allowed("GET, HEAD, PUT, DELETE")),
            ),
        };
    }
    let (route, reply) = match path {
        BATCH_GET if parts.method == Method::POST => (
            Route::BatchGet,
            batch::get(state, &parts.headers, body).await,
        ),
        BATCH_SET if parts.method == Method::POST => (
            Route::BatchSet,
            batch::set(state, &parts.headers, body).await,
        ),
        BATCH_GET | BATCH_SET => (Route::Unmatched, Err(ApiError::method_not_allowed("POST"))),
        _ => (Route::Unmatched, Err(ApiError::route_not_found())),
    };
    (route, reply)
}

/// Serves the data port until shutdown, then gives open connections `grace` to finish:
/// HTTP/1 connections close after their in-flight request, h2 connections get GOAWAY.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    cfg: HttpConfig,
    grace: Duration,
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
    let graceful = GracefulShutdown::new();
    let metrics = state.metrics.clone();
    net::accept_loop(
        listener,
        &shutdown,
        || metrics.accept_errors.inc(),
        |stream, _peer| {
            let open = state.metrics.connection(Door::Http);
            let watcher = graceful.watcher();
            let builder = builder.clone();
            let state = state.clone();
            net::spawn_isolated(state.metrics.connection_panics.clone(), async move {
                let _open = open;
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
            });
        },
    )
    .await;
    let open = graceful.count();
    tracing::info!(open, "http: stopped accepting; draining connections");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("http: drained"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace = ?grace, "http: grace period over; closing the connections left")
        }
    }
}

//! The admin port: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (it should get traffic: not draining, and L2 reachable when configured),
//! `/hotkeys` (the keys read most lately, JSON), and a plain-text status page at `/`. Served
//! by its own listener so that scrapes and probes never queue behind data traffic.
//!
//! With `admin.token` set, every path but the probes needs `Authorization: Bearer <token>`
//! (probes come from orchestrators that carry none). Without it, the paths that name keys
//! (`/hotkeys`, the status page) name them to loopback clients only: a key's name can be a
//! secret of its own.

use super::{Door, Metrics};
use crate::{
    auth::{self, Denied},
    cache::TieredCache,
    config::Secret,
    net,
    shutdown::Shutdown,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

/// What the admin handlers read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<TieredCache>,
    /// Tripped at the start of shutdown: readiness turns 503 so balancers stop sending.
    pub draining: Shutdown,
    /// `admin.token` (empty: none); replaced on reload.
    pub token: ArcSwap<Secret>,
}

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
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let path = req.uri().path();
        if let Some(refused) = self.refusal(path, req) {
            return refused;
        }
        match path {
            "/metrics" => {
                self.cache.publish_usage().await;
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
            "/" => text(
                StatusCode::OK,
                self.status_page(self.names_keys(peer)).await,
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "try /metrics, /healthz, /readyz, /hotkeys or /\n".into(),
            ),
        }
    }

    /// The status page; hot keys by name only if `names_keys`.
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
            "tiergate {}\nmode: {mode}\nready: {ready}\nl1 entries: {}\nl1 bytes: {}\n",
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

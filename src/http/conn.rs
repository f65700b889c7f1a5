//! One HTTP connection: hyper drives the protocol; this owns when it ends. A connection with
//! no request in flight for `http.keepalive_timeout` is closed gracefully (HTTP/1: closed
//! between requests; h2: GOAWAY), and so is every connection when the drain reaches its
//! second step. During the drain, HTTP/1 responses say `Connection: close`.
//!
//! hyper has no idle timeout of its own for h2, and times HTTP/1 idleness only through its
//! header-read timer; this is one timer per connection, re-armed only when it fires: a request
//! moves a millisecond stamp, not the timer.

use super::{handle, State};
use http::{header, HeaderValue, Request, Version};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};
use tokio::{net::TcpStream, time::Instant};

/// Requests in flight on one connection and when the last one ended.
struct Idle {
    in_flight: AtomicU32,
    /// Milliseconds since `epoch()` at the end of the last request (or the accept).
    last_ms: AtomicU64,
}

/// The clock idle stamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Marks a request in flight until dropped.
struct Busy(Arc<Idle>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Idle {
    fn busy(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// None: idle for `limit` already. Some(t): check again at `t`.
    fn next_check(&self, limit: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + limit);
        }
        let last = epoch() + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let due = last + limit;
        (due > now).then_some(due)
    }
}

/// Serves one connection until the client leaves, it idles out, or `close` (the drain's
/// second step) ends it after its in-flight requests.
pub async fn serve(
    stream: TcpStream,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    keepalive: Duration,
) {
    let idle = Arc::new(Idle {
        in_flight: AtomicU32::new(0),
        last_ms: AtomicU64::new(now_ms()),
    });
    let svc = {
        let (state, idle) = (state.clone(), idle.clone());
        service_fn(move |req: Request<hyper::body::Incoming>| {
            let (state, busy) = (state.clone(), idle.busy());
            async move {
                let h1 = req.version() < Version::HTTP_2;
                let mut resp = handle(&state, req).await;
                if h1 && state.listener_closed.is_triggered() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let timer = tokio::time::sleep(keepalive);
    tokio::pin!(timer);
    let close = state.close_connections.clone();
    let mut closing = false;
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task nearly every time, and a fixed
            // order spares a random draw per wake.
            biased;
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return;
            }
            _ = close.wait(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = &mut timer, if !closing => match idle.next_check(keepalive) {
                Some(at) => timer.as_mut().reset(at),
                None => {
                    state.metrics.http_idle_closed.inc();
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            },
        }
    }
}

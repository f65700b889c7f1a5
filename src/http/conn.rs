//! One HTTP connection: our own HTTP/1 path (`h1`) drives it until a request needs hyper,
//! then hyper does; this owns when it ends.
//! - A connection with no request in flight for its idle limit is closed gracefully: HTTP/1
//!   at once, h2 with GOAWAY. The limit is `http.keepalive_timeout` for h2, and for HTTP/1
//!   (or a connection that has sent no request yet) `http.header_read_timeout` if shorter:
//!   the next head must be in within that time of the last answer, which bounds both a
//!   keep-alive connection left idle and a head that never finishes arriving (slowloris).
//! - Every connection closes gracefully when the drain reaches its second step. During the
//!   drain, HTTP/1 responses say `Connection: close`. Our own path reads `Idle::closing`
//!   between requests; hyper is told with `graceful_shutdown`.
//! - A connection asked to close that is still open `CLOSE_GRACE` later with nothing in
//!   flight is dropped: a graceful HTTP/1 close waits for a head that is still arriving.
//!
//! hyper has no idle timeout for h2, and its own HTTP/1 header timer allocates, arms and
//! tears down a timer-wheel entry for every request (about 650 instructions, a tenth of a
//! bare hyper request). This is one timer per connection, re-armed only when it fires: a
//! request moves a millisecond stamp, not the timer.

use super::{
    h1, handle,
    proto::{self, Protocols},
    proxy::ClientAddr,
    ReplyBody, State,
};
use crate::shutdown::Shutdown;
use http::{header, HeaderValue, Request, Version};
use hyper::{
    body::{Body, Incoming},
    rt::bounds::Http2ServerConnExec,
    service::{service_fn, HttpService},
};
use hyper_util::rt::TokioExecutor;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::{net::TcpStream, time::Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a connection may go with no request in flight, by protocol.
#[derive(Clone, Copy, Debug)]
pub struct IdleLimits {
    /// HTTP/1, or no request seen yet.
    pub h1: Duration,
    pub h2: Duration,
    /// `http.max_header_bytes` and `http.max_headers`, for our own HTTP/1 path.
    pub max_head: usize,
    pub max_headers: usize,
}

/// How long a connection asked to close gracefully may stay open with nothing in flight
/// before it is dropped: enough for an h2 client to read GOAWAY and answer its PING; an
/// HTTP/1 head still arriving at that point is a slowloris.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Requests in flight on one connection and when the last one ended.
struct Idle {
    in_flight: AtomicU32,
    /// A request arrived over h2 (`proto` chose it by the first bytes).
    h2: AtomicBool,
    /// Milliseconds since `epoch()` at the end of the last request (or the accept).
    last_ms: AtomicU64,
    /// Asked to close (the drain, or idle): our own HTTP/1 path looks at it between requests.
    closing: AtomicBool,
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
    /// Restarts the idle clock (at a graceful close, for the grace that follows).
    fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

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

impl h1::Watch for Arc<Idle> {
    type Busy = Busy;

    fn busy(&self) -> Busy {
        Idle::busy(self)
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

/// A connection's driver: our own HTTP/1 path (`h1`) until a request needs hyper, then
/// hyper's for the rest of it.
#[allow(clippy::large_enum_variant)] // one per connection, never moved once polled
enum Front<'a, S: HttpService<Incoming>, F> {
    Own {
        serving: Pin<Box<F>>,
        svc: Option<S>,
        protocols: &'a Protocols,
    },
    Hyper(proto::Connection<'a, S>),
}

impl<S, B, F> Front<'_, S, F>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// hyper's graceful close; our own path reads `Idle::closing` instead.
    fn graceful_shutdown(&mut self) {
        if let Front::Hyper(c) = self {
            Pin::new(c).graceful_shutdown();
        }
    }
}

impl<S, B, F> Future for Front<'_, S, F>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
    F: Future<Output = std::io::Result<h1::Next>>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Front::Own {
                    serving,
                    svc,
                    protocols,
                } => match ready!(serving.as_mut().poll(cx)) {
                    Ok(h1::Next::Closed) => return Poll::Ready(Ok(())),
                    Err(e) => return Poll::Ready(Err(e.into())),
                    Ok(h1::Next::Hyper(stream, seen)) => {
                        let svc = svc.take().expect("present until handed over");
                        *this = Front::Hyper(protocols.serve_read(stream, seen, svc));
                    }
                },
                Front::Hyper(c) => return Pin::new(c).poll(cx),
            }
        }
    }
}

/// Serves one connection until the client leaves, it idles out, or `close` (the drain's
/// second step) ends it after its in-flight requests.
pub async fn serve(
    stream: TcpStream,
    state: Arc<State>,
    protocols: Arc<Protocols>,
    limits: IdleLimits,
) {
    let idle = Arc::new(Idle {
        in_flight: AtomicU32::new(0),
        h2: AtomicBool::new(false),
        last_ms: AtomicU64::new(now_ms()),
        closing: AtomicBool::new(false),
    });
    // Proxy routes tell the origin who asked (X-Forwarded-For); without routes, nothing.
    // Handed to each request as an `Arc` (a count, where a request extension was an
    // allocation: 530 instructions a proxied request).
    let peer = (!state.proxy.is_empty())
        .then(|| stream.peer_addr().ok())
        .flatten()
        .map(|a| Arc::new(ClientAddr::new(a)));
    let svc = {
        let (state, idle, peer) = (state.clone(), idle.clone(), peer.clone());
        service_fn(move |req: Request<hyper::body::Incoming>| {
            let (state, busy, peer) = (state.clone(), idle.busy(), peer.clone());
            let h1 = req.version() < Version::HTTP_2;
            if !h1 {
                idle.h2.store(true, Ordering::Relaxed);
            }
            async move {
                let mut resp = ReplyBody::spell_out(handle(&state, req, peer).await);
                if h1 && state.listener_closed.is_triggered() {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let h1_limits = h1::Limits {
        max_head: limits.max_head,
        max_headers: limits.max_headers,
        h2: protocols.h2.is_some(),
    };
    let mut conn = Front::Own {
        serving: Box::pin(h1::serve(stream, &state, peer, &idle, h1_limits)),
        svc: Some(svc),
        protocols: &protocols,
    };
    let timer = tokio::time::sleep(limits.h1);
    tokio::pin!(timer);
    let close = state.close_connections.clone();
    let close_wait = close.wait();
    tokio::pin!(close_wait);
    Shutdown::register(close_wait.as_mut()).await;
    let mut closing = false;
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task nearly every time, and a fixed
            // order spares a random draw per wake.
            biased;
            done = &mut conn => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                return;
            }
            // The flag, not the token's wait: that takes two process-wide locks per poll,
            // and this is polled on every wake, request after request.
            _ = close.triggered(), if !closing => {
                closing = true;
                idle.closing.store(true, Ordering::Relaxed);
                conn.graceful_shutdown();
                idle.touch();
                timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
            _ = &mut timer => {
                let limit = if closing {
                    CLOSE_GRACE
                } else if idle.h2.load(Ordering::Relaxed) {
                    limits.h2
                } else {
                    limits.h1
                };
                match idle.next_check(limit) {
                    Some(at) => timer.as_mut().reset(at),
                    // Asked to close, nothing in flight, and still open: a head that never
                    // finished arriving (a graceful shutdown waits for it), or a client
                    // that ignores GOAWAY.
                    None if closing => return,
                    // Idle: HTTP/1 between requests closes at once; h2 gets GOAWAY.
                    None => {
                        state.metrics.http_idle_closed.inc();
                        closing = true;
                        idle.closing.store(true, Ordering::Relaxed);
                        conn.graceful_shutdown();
                        idle.touch();
                        timer.as_mut().reset(Instant::now() + CLOSE_GRACE);
                    }
                }
            }
        }
    }
}

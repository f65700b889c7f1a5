//! An upstream's idle connections, and the sending of one request over one of them.
//!
//! A connection is hyper's HTTP/1 client connection (`hyper::client::conn::http1`), made by
//! `connector`. After an answer's body has ended, its connection goes back on a stack
//! (`Pool::put`, from `OriginBody`), at most `pool_max_idle` deep; a request takes the most
//! recently used one, so under light load the older ones age out and `reap` closes them
//! after `pool_idle_timeout`. A connection that closed while idle is skipped, and a request
//! that hyper hands back unsent (the connection closed under it) goes on another.
//!
//! A request's deadline is kept by its connection (`Watched`): one timer per connection,
//! moved only when it fires, rather than one registered and cancelled per request (1.5k
//! instructions of a proxied miss). A request past its deadline ends its connection, which
//! fails the request, and `send` reports the timeout.
//!
//! Why not hyper-util's pooled `Client`: it keys its pool by scheme and authority (SipHash,
//! under a mutex over a map), boxes a checkout and a connect future per request, and spawns
//! a task per request to wait for the connection to be ready again. That was about 10k
//! instructions of a 50k-instruction proxied miss (callgrind, issue 18). An upstream is one
//! authority, so a stack does.

use super::{
    connector::{self, Counted},
    upstream::millis_since,
    OutBody,
};
use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use prometheus::IntGauge;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// A request's way to its upstream: the connection it went on, handed back with the answer
/// so that whoever reads the body to its end can `put` it back.
pub struct Sender {
    send: SendRequest<OutBody>,
    /// When the request on it must have its answer's head, in milliseconds since the pool's
    /// `base` (0: none in flight). Read by the connection's `Watched`.
    due: Arc<AtomicU64>,
}

pub struct Pool {
    authority: http::uri::Authority,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    open: IntGauge,
    /// The clock deadlines are kept in.
    base: Instant,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Why a request got no answer.
pub enum SendError {
    /// No connection could be made: nothing left, so any request may go elsewhere.
    Connect(String),
    /// The connection failed with the request (possibly) on it.
    Failed(hyper::Error),
    /// No answer by the deadline; the connection was closed.
    Timeout,
}

impl Pool {
    pub fn new(
        authority: http::uri::Authority,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
        open: IntGauge,
    ) -> Self {
        Self {
            authority,
            connect_timeout,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
            open,
            base: Instant::now(),
        }
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection or a new one; the answer
    /// with the connection it came on, or `Timeout` once `deadline` has passed.
    pub async fn send(
        &self,
        mut req: Request<OutBody>,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        loop {
            let (mut sender, reused) = match self.take() {
                Some(s) => (s, true),
                None => (self.connect(deadline).await?, false),
            };
            // Ready at once unless hyper has not yet seen the last body end; an error means
            // the connection closed while idle.
            if sender.send.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect("the connection closed at once".into()));
            }
            let due = self.millis(deadline.into_std()).max(1);
            sender.due.store(due, Ordering::Release);
            let sent = sender.send.try_send_request(req).await;
            sender.due.store(0, Ordering::Release);
            match sent {
                Ok(answer) => return Ok((answer, sender)),
                Err(_) if millis_since(self.base) >= due => return Err(SendError::Timeout),
                Err(mut e) => match e.take_message() {
                    // Never written: the idle connection was closing. Another one.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Keeps a connection whose answer has been read to its end, if there is room.
    pub fn put(&self, sender: Sender) {
        if sender.send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the connections idle longer than `pool_idle_timeout`, or closed by the peer.
    pub fn reap(&self) {
        let now = Instant::now();
        let old = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let before = idle.len();
            idle.retain(|i| {
                now.duration_since(i.since) < self.idle_timeout && !i.sender.send.is_closed()
            });
            before - idle.len()
        };
        if old > 0 {
            tracing::debug!(upstream = %self.authority, closed = old, "idle origin connections closed");
        }
    }

    /// The most recently used idle connection still open.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(i) = idle.pop() {
            if !i.sender.send.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    /// Milliseconds from `base` to `at`, rounded up: a deadline is never early (`now` is
    /// `millis_since`, rounded down).
    fn millis(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.base);
        d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// A new connection, its reading and writing driven by a task of its own (`Watched`)
    /// until it closes; made within `connect_timeout` and by `deadline`.
    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Sender, SendError> {
        let by = deadline.min(tokio::time::Instant::now() + self.connect_timeout);
        let connecting = async {
            let io: Counted = connector::connect(&self.authority, &self.open).await?;
            http1::handshake(io)
                .await
                .map_err(|e| SendError::Connect(e.to_string()))
        };
        let (send, conn) = match tokio::time::timeout_at(by, connecting).await {
            Ok(made) => made?,
            Err(_) if by == deadline => return Err(SendError::Timeout),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                )))
            }
        };
        let due = Arc::new(AtomicU64::new(0));
        tokio::spawn(Watched {
            conn,
            due: due.clone(),
            base: self.base,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: 0,
        });
        Ok(Sender { send, due })
    }
}

/// A connection's task: hyper's connection future, ended early when the request on it is
/// past its deadline. The timer is set when a request is seen with no timer set for it (or
/// one set later than its deadline) and, since deadlines only grow, otherwise left alone: a
/// connection busy with requests moves its timer once per `request_timeout`, not per request.
struct Watched<C> {
    conn: C,
    due: Arc<AtomicU64>,
    base: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// What the timer is set for, in the pool's milliseconds (0: nothing).
    armed: u64,
}

impl<C: Future + Unpin> Future for Watched<C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The connection ended (closed by the peer, or every sender dropped).
        if Pin::new(&mut self.conn).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            let due = self.due.load(Ordering::Acquire);
            if due == 0 {
                return Poll::Pending;
            }
            if self.armed == 0 || due < self.armed {
                let at = self.base + Duration::from_millis(due);
                self.timer.as_mut().reset(at.into());
                self.armed = due;
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Set for an earlier request's deadline, it may fire before this one's.
            self.armed = 0;
            if millis_since(self.base) >= due && self.due.load(Ordering::Acquire) == due {
                // Still the same request, past its deadline: the connection goes with it.
                return Poll::Ready(());
            }
        }
    }
}

//! An upstream's idle connections, and the sending of one request over one of them.
//!
//! A connection is hyper's HTTP/1 client connection (`hyper::client::conn::http1`), made by
//! `connector`. After an answer's body has ended, its connection goes back on a stack
//! (`Pool::put`, from `OriginBody`), at most `pool_max_idle` deep; a request takes the most
//! recently used one, so under light load the older ones age out and `reap` closes them
//! after `pool_idle_timeout`. A connection that closed while idle is skipped, and a request
//! that hyper hands back unsent (the connection closed under it) goes on another.
//!
//! Why not hyper-util's pooled `Client`: it keys its pool by scheme and authority (SipHash,
//! under a mutex over a map), boxes a checkout and a connect future per request, and spawns
//! a task per request to wait for the connection to be ready again. That was about 10k
//! instructions of a 50k-instruction proxied miss (callgrind, issue 18). An upstream is one
//! authority, so a stack does.

use super::{
    connector::{self, Counted},
    OutBody,
};
use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use prometheus::IntGauge;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// A request's way to its upstream: the connection it went on, handed back with the answer
/// so that whoever reads the body to its end can `put` it back.
pub type Sender = SendRequest<OutBody>;

pub struct Pool {
    authority: http::uri::Authority,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    open: IntGauge,
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
        }
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection or a new one; the answer
    /// with the connection it came on.
    pub async fn send(
        &self,
        mut req: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Sender), SendError> {
        loop {
            let (mut sender, reused) = match self.take() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            // Ready at once unless hyper has not yet seen the last body end; an error means
            // the connection closed while idle.
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Connect("the connection closed at once".into()));
            }
            match sender.try_send_request(req).await {
                Ok(answer) => return Ok((answer, sender)),
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
        if sender.is_closed() {
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
                now.duration_since(i.since) < self.idle_timeout && !i.sender.is_closed()
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
            if !i.sender.is_closed() {
                return Some(i.sender);
            }
        }
        None
    }

    /// A new connection, its reading and writing driven by a task of its own until it closes.
    async fn connect(&self) -> Result<Sender, SendError> {
        let io: Counted =
            connector::connect(&self.authority, self.connect_timeout, &self.open).await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            // Its end (the peer closed, or every sender was dropped) is all there is to see.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

//! An upstream's idle connections, and the sending of one request over one of them.
//!
//! A connection is a `http1::Conn`, made by `connector`: the request's own task writes the
//! request and reads the answer on it. After an answer's body has ended, its connection goes
//! back on a stack (`Pool::put`, from `OriginBody`), at most `pool_max_idle` deep; a request
//! takes the most recently used one, so under light load the older ones age out and `reap`
//! closes them after `pool_idle_timeout`. A connection the upstream closed while it was idle
//! is seen (the socket is readable) and skipped without a syscall; one that closes just as a
//! request goes on it fails before any byte of an answer, and an idempotent request with its
//! bytes kept goes again on another (`ExchangeError::Stale`).
//!
//! Why not hyper-util's pooled `Client`: it keys its pool by scheme and authority (SipHash,
//! under a mutex over a map), boxes a checkout and a connect future per request, and spawns
//! a task per request to wait for the connection to be ready again. That was about 10k
//! instructions of a 50k-instruction proxied miss (callgrind, issue 18). An upstream is one
//! authority, so a stack does.

use super::{
    connector,
    http1::{Conn, ExchangeError, Head, Outgoing, Payload},
    retry::is_idempotent,
};
use prometheus::IntGauge;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

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
    conn: Conn,
    since: Instant,
}

/// Why a request got no answer.
pub enum SendError {
    /// No connection could be made: nothing left, so any request may go elsewhere.
    Connect(String),
    /// The connection failed with the request (possibly) on it.
    Failed(String),
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
        }
    }

    /// Sends `out` on an idle connection or a new one; the answer's head with the connection
    /// its body is to be read from, or `Timeout` once `deadline` has passed.
    pub async fn send(
        &self,
        out: &mut Outgoing<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(Head, Conn), SendError> {
        loop {
            let mut conn = match self.take() {
                Some(c) => c,
                None => self.connect(deadline).await?,
            };
            match conn.exchange(out, deadline).await {
                Ok(head) => return Ok((head, conn)),
                // Closed while idle: another connection, as long as the request can go again.
                Err(ExchangeError::Stale(_))
                    if matches!(out.body, Payload::Bytes(_)) && is_idempotent(out.method) => {}
                Err(ExchangeError::Stale(e) | ExchangeError::Failed(e)) => {
                    return Err(SendError::Failed(e))
                }
                Err(ExchangeError::Timeout) => return Err(SendError::Timeout),
            }
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Keeps a connection whose answer has been read to its end and allowed keep-alive
    /// (`Head::reusable`), if there is room and nothing came after that answer.
    pub fn put(&self, mut conn: Conn) {
        if !conn.is_drained() {
            return;
        }
        conn.reused = true;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
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
            idle.retain_mut(|i| {
                now.duration_since(i.since) < self.idle_timeout && i.conn.is_quiet()
            });
            before - idle.len()
        };
        if old > 0 {
            tracing::debug!(upstream = %self.authority, closed = old, "idle origin connections closed");
        }
    }

    /// The most recently used idle connection still open.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut i) = idle.pop() {
            if i.conn.is_quiet() {
                return Some(i.conn);
            }
        }
        None
    }

    /// A new connection, made within `connect_timeout` and by `deadline`.
    async fn connect(&self, deadline: tokio::time::Instant) -> Result<Conn, SendError> {
        let by = deadline.min(tokio::time::Instant::now() + self.connect_timeout);
        match tokio::time::timeout_at(by, connector::connect(&self.authority, &self.open)).await {
            Ok(Ok(io)) => Ok(Conn::new(io)),
            Ok(Err(e)) => Err(SendError::Connect(e.to_string())),
            Err(_) if by == deadline => Err(SendError::Timeout),
            Err(_) => Err(SendError::Connect(format!(
                "connect timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }
}

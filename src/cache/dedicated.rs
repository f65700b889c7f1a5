//! Dedicated L2 connections: a bounded pool of raw connections to one Redis (on a cluster, one
//! pool per master, `Dedicated::shared` bounding them together), each lent to
//! one RESP client for as long as connection state lasts there: a transaction (MULTI, WATCH),
//! a blocking command, subscriptions, a database other than 0. The multiplexed connections
//! every other command shares cannot hold such state: one client's MULTI would queue the
//! others' commands, one BLPOP would stall them all.
//!
//! The pool is deadpool's (the crate deadpool-redis is built on), over our own connections
//! (`pipe::connect`), because replies are copied to the client as the bytes Redis sent, which
//! redis-rs' connections do not give. Exhausted, it refuses at once (the client gets `-BUSY`),
//! never queues. A connection goes back clean, after `RESET` and the handshake again (RESET
//! also logs out and returns to RESP2), or is closed: one dropped while lent (its client left
//! mid-command, a reply timed out) is never reused.

use super::{
    l2::L2Error,
    pipe::{self, Framing, Reply, Target},
};
use bytes::BytesMut;
use deadpool::managed::{self, Manager, Metrics, Object, Pool, RecycleError, RecycleResult};
use std::{sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// A connection the pool holds.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    framing: Framing,
    /// Given back after RESET: nothing of its last client's is left on it.
    clean: bool,
}

/// Makes connections for the pool.
pub struct Connector {
    target: Target,
}

impl Manager for Connector {
    type Type = Conn;
    type Error = L2Error;

    async fn create(&self) -> Result<Conn, L2Error> {
        Ok(Conn {
            stream: pipe::connect(&self.target).await?,
            buf: BytesMut::with_capacity(4 << 10),
            framing: Framing::default(),
            clean: true,
        })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<L2Error> {
        if conn.clean {
            Ok(())
        } else {
            Err(RecycleError::message("not given back clean"))
        }
    }
}

/// The pool.
pub struct Dedicated {
    pool: Pool<Connector>,
    target: Target,
    size: usize,
    /// Over a cluster, one pool per master shares this bound of `size` lent in all.
    shared: Option<Arc<Semaphore>>,
}

/// Why no connection was lent.
#[derive(Debug)]
pub enum LendError {
    /// All `size` are lent.
    Busy(usize),
    L2(L2Error),
}

impl Dedicated {
    /// A pool of at most `size` connections to `target` (RESP2: a RESP3 client's turns it to
    /// RESP3 when lent).
    pub fn new(target: Target, size: usize) -> Self {
        let pool = Pool::builder(Connector {
            target: target.clone(),
        })
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("a runtime is given, so building cannot fail");
        Self {
            pool,
            target,
            size,
            shared: None,
        }
    }

    /// A pool to one master of a cluster: at most `size` connections lent from it and the
    /// other masters' pools sharing `lent` (a semaphore of `size` permits) together.
    pub fn shared(target: Target, size: usize, lent: Arc<Semaphore>) -> Self {
        Self {
            shared: Some(lent),
            ..Self::new(target, size)
        }
    }

    /// Lends a connection at once, speaking RESP3 when `resp3`.
    pub async fn lend(&self, resp3: bool) -> Result<Lent, LendError> {
        let permit = match &self.shared {
            Some(lent) => match lent.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(LendError::Busy(self.size)),
            },
            None => None,
        };
        let timeouts = managed::Timeouts {
            // Zero: refused at once when all are lent, never waited for.
            wait: Some(Duration::ZERO),
            create: Some(self.target.connect_timeout()),
            recycle: Some(self.target.connect_timeout()),
        };
        let obj = match self.pool.timeout_get(&timeouts).await {
            Ok(obj) => obj,
            Err(managed::PoolError::Timeout(managed::TimeoutType::Wait)) => {
                return Err(LendError::Busy(self.size))
            }
            Err(managed::PoolError::Backend(e)) => return Err(LendError::L2(e)),
            Err(e) => return Err(LendError::L2(L2Error::Unavailable(e.to_string()))),
        };
        let mut lent = Lent {
            obj: Some(obj),
            target: self.target.clone(),
            _permit: permit,
        };
        lent.conn().clean = false;
        if resp3 {
            let target = self.target.clone().resp3();
            let conn = lent.conn();
            pipe::handshake(&mut conn.stream, &target, &[])
                .await
                .map_err(LendError::L2)?;
        }
        Ok(lent)
    }

    /// Most connections lent at once (`l2.dedicated_connections`).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Connections lent now.
    pub fn lent(&self) -> usize {
        let status = self.pool.status();
        status.size.saturating_sub(status.available)
    }
}

/// A connection lent to one client. Dropped without `give_back`, it is closed.
pub struct Lent {
    obj: Option<Object<Connector>>,
    target: Target,
    /// Its share of a cluster's bound (`Dedicated::shared`), given back with it.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            if !obj.clean {
                // Out of the pool for good: its socket closes with it.
                drop(Object::take(obj));
            }
        }
    }
}

impl Lent {
    fn conn(&mut self) -> &mut Conn {
        self.obj.as_mut().expect("held until dropped")
    }

    /// Sends a command (or several), encoded.
    pub async fn send(&mut self, commands: &[u8]) -> Result<(), L2Error> {
        self.conn()
            .stream
            .write_all(commands)
            .await
            .map_err(|e| L2Error::Unavailable(e.to_string()))
    }

    /// The next reply or push, as Redis sent it; `Reply::TooLarge` past `limit`, dropped as
    /// it arrived. Cancel-safe: what was read stays for the next call.
    pub async fn next(&mut self, limit: usize) -> Result<Reply, L2Error> {
        let conn = self.conn();
        loop {
            if !conn.buf.is_empty() {
                if let Some(reply) = pipe::raw(&mut conn.buf, &mut conn.framing, limit)? {
                    return Ok(reply);
                }
            }
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => return Err(L2Error::Unavailable("Redis closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(L2Error::Unavailable(e.to_string())),
            }
        }
    }

    /// `send` then `next`, within `timeout`.
    pub async fn call(
        &mut self,
        command: &[u8],
        limit: usize,
        timeout: Duration,
    ) -> Result<Reply, L2Error> {
        let call = async {
            self.send(command).await?;
            self.next(limit).await
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(L2Error::Timeout))
    }

    /// Makes the connection clean (RESET, then the handshake), so that dropping it gives it
    /// back to the pool; if that fails, dropping it closes it.
    pub async fn give_back(&mut self) {
        let target = self.target.clone();
        let conn = self.conn();
        // Replies still on their way (a push after an UNSUBSCRIBE) would be read as RESET's.
        if !conn.buf.is_empty() || conn.framing != Framing::default() {
            return;
        }
        let reset = pipe::handshake(&mut conn.stream, &target, &[b"RESET"]);
        if let Ok(Ok(())) = tokio::time::timeout(target.connect_timeout(), reset).await {
            conn.clean = true;
        }
    }
}

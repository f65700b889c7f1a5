//! The Redis-protocol (RESP2/RESP3) front door: the accept loop with its connection budget,
//! the state every connection shares, and the drain on shutdown.

mod cmd;
mod connection;
pub mod frame;
mod pinned;
mod reply;
mod session;

use crate::{
    access::AccessLog,
    auth::Auth,
    buf::{pool::PoolMetrics, BufferPool},
    cache::TieredCache,
    config::Config,
    exec::Admission,
    metrics::{Door, Metrics},
    net,
    shutdown::Shutdown,
};
use arc_swap::ArcSwap;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::Semaphore};

/// What every connection reads: the engine, the limits, the password.
pub struct Shared {
    pub cache: Arc<TieredCache>,
    pub metrics: Arc<Metrics>,
    /// Codec, key and value bounds; replaced on reload.
    pub limits: ArcSwap<Limits>,
    /// Who may log in and what they may touch; shared with the HTTP door, replaced on reload.
    pub auth: Arc<Auth>,
    pub debug_command: bool,
    /// None: never close an idle client. Also how long a client may leave its replies untaken.
    pub idle_timeout: Option<Duration>,
    /// None: no bound on how long a command takes to arrive once it has started.
    pub command_read_timeout: Option<Duration>,
    /// Pending reply bytes past which replies are written before the next command runs.
    pub reply_buffer: usize,
    /// What INFO and CONFIG GET report.
    pub facts: Facts,
    /// Read and write buffers, borrowed only while a connection has work.
    pub buffers: BufferPool,
    /// Per-command log lines, when `access_log.enabled`.
    pub access: Option<Arc<AccessLog>>,
    /// This door's admission: a batch of commands past it is answered `-BUSY`.
    pub admission: Admission,
    next_id: AtomicU64,
}

/// The bounds every command is held to.
pub struct Limits {
    pub frame: frame::Limits,
    pub max_key_bytes: usize,
    pub max_value_bytes: u64,
    /// Encoded bytes of one reply; past it the client is closed.
    pub max_reply_bytes: u64,
}

impl Limits {
    /// `max_reply_bytes` as a byte count to bound a buffer by.
    pub fn reply_limit(&self) -> usize {
        usize::try_from(self.max_reply_bytes).unwrap_or(usize::MAX)
    }

    pub fn from_config(config: &Config) -> Self {
        let (cfg, limits) = (&config.resp, &config.limits);
        Self {
            frame: frame::Limits {
                max_multibulk_len: cfg.max_multibulk_len,
                // A bulk argument is a key or a value; both bounds apply later, per command.
                max_bulk_len: (limits.max_value_bytes.0 as usize).max(limits.max_key_bytes),
                max_bulk_len_from: if limits.max_value_bytes.0 as usize >= limits.max_key_bytes {
                    "limits.max_value_bytes"
                } else {
                    "limits.max_key_bytes"
                },
                max_inline_len: cfg.max_inline_bytes.0 as usize,
                max_request_len: cfg.max_request_bytes.0 as usize,
            },
            max_key_bytes: limits.max_key_bytes,
            max_value_bytes: limits.max_value_bytes.0,
            max_reply_bytes: limits.max_reply_bytes.0,
        }
    }
}

/// Fixed facts about this server, for INFO and CONFIG GET.
pub struct Facts {
    pub started: Instant,
    pub port: u16,
    pub max_connections: usize,
    pub l1_capacity: u64,
    pub standalone: bool,
}

impl Shared {
    /// `port` is where the door actually listens (config may say 0).
    pub fn new(
        config: &Config,
        auth: Arc<Auth>,
        access: Option<Arc<AccessLog>>,
        port: u16,
        cache: Arc<TieredCache>,
        metrics: Arc<Metrics>,
        memory: u64,
    ) -> Self {
        let cfg = &config.resp;
        let buffers = BufferPool::new(
            cfg.buffer_pool_buffers,
            cfg.read_buffer_bytes.0 as usize,
            PoolMetrics {
                hits: metrics.buffer_pool_hits.clone(),
                misses: metrics.buffer_pool_misses.clone(),
                pooled: metrics.buffer_pool_buffers.clone(),
            },
        );
        Self {
            admission: Admission::from_config(Door::Resp, &config.admission, &metrics),
            cache,
            metrics,
            limits: ArcSwap::from_pointee(Limits::from_config(config)),
            auth,
            access,
            debug_command: cfg.enable_debug_command,
            idle_timeout: (!cfg.idle_timeout.0.is_zero()).then_some(cfg.idle_timeout.0),
            command_read_timeout: (!cfg.command_read_timeout.0.is_zero())
                .then_some(cfg.command_read_timeout.0),
            reply_buffer: cfg.reply_buffer_bytes.0 as usize,
            facts: Facts {
                started: Instant::now(),
                port,
                max_connections: cfg.max_connections,
                l1_capacity: config.l1.capacity.resolve(memory),
                standalone: config.standalone(),
            },
            buffers,
            next_id: AtomicU64::new(1),
        }
    }

    /// Milliseconds since the door started: how a connection stamps its last activity, in
    /// 8 bytes where an `Instant` takes 16.
    fn clock_ms(&self) -> u64 {
        self.facts.started.elapsed().as_millis() as u64
    }

    /// When a connection last active at `clock_ms` time `last` is due to be closed: idle for
    /// `resp.idle_timeout`, or, when `partial` (a command has started to arrive, at `last`),
    /// not whole by `resp.command_read_timeout` if that comes first.
    fn idle_deadline(&self, last: u64, partial: bool) -> tokio::time::Instant {
        let last = self.facts.started + Duration::from_millis(last);
        let far = Duration::from_secs(86_400 * 365);
        let mut wait = self.idle_timeout.unwrap_or(far);
        if partial {
            wait = wait.min(self.command_read_timeout.unwrap_or(far));
        }
        tokio::time::Instant::from_std(last.checked_add(wait).unwrap_or(last + far))
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// redis-server's words for a refused client, written before the socket is closed.
const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// redis-server's kind of reply (`-DENIED`) to a client protected mode refuses: what to
/// configure to be let in. Static, so a refusal costs one non-blocking write and a close.
const PROTECTED_MODE_REPLY: &[u8] = b"-DENIED tiergate is running in protected mode: no \
Redis-protocol authentication is configured (neither auth.users nor resp.requirepass), so \
only clients on the loopback interface are served. To serve this client, either set \
resp.requirepass or add [[auth.users]] (then AUTH first), or, if every host that can reach \
this port may read and write every key, set auth.protected_mode = false \
(TIERGATE_AUTH_PROTECTED_MODE=false). A SIGHUP applies either.\r\n";

/// Serves the RESP port until shutdown; then lets every connection finish the commands it
/// has received, bounded by `grace`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    grace: Duration,
    shutdown: Shutdown,
) {
    let budget = Arc::new(Semaphore::new(max_connections));
    shared
        .metrics
        .resp_connection_budget
        .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    // Each connection task holds a sender; when all are dropped, every connection is done.
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let metrics = shared.metrics.clone();
    net::accept_loop(
        listener,
        &shutdown,
        || metrics.accept_errors.inc(),
        |stream, peer| {
            if !shared.auth.rules().resp_admits(peer.ip()) {
                shared.metrics.protected_refused(Door::Resp);
                let _ = stream.try_write(PROTECTED_MODE_REPLY);
                return;
            }
            // The permit is taken before any per-connection work: a client past the budget
            // costs one non-blocking write and a close.
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                shared.metrics.rejected(Door::Resp);
                let _ = stream.try_write(MAX_CLIENTS_REPLY);
                return;
            };
            let open = shared.metrics.connection(Door::Resp);
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let alive = alive.clone();
            let panics = shared.metrics.connection_panics.clone();
            let held = (permit, open, alive);
            net::spawn_isolated(panics, connection::serve(stream, shared, shutdown, held));
        },
    )
    .await;
    drop(alive);
    tracing::info!(
        open = budget_in_use(&budget, max_connections),
        "resp: stopped accepting; draining connections"
    );
    tokio::select! {
        _ = all_done.recv() => tracing::info!("resp: drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "resp: grace period over; closing the connections left"),
    }
}

fn budget_in_use(budget: &Semaphore, max: usize) -> usize {
    max - budget.available_permits()
}

//! One upstream of an origin: its connections (`pool`), what it has in flight (the balancer's load
//! figure and `max_concurrent`'s count), its passive health (consecutive failures eject it
//! for a growing time) and its active health (what the probes last concluded). All state is
//! atomics: requests on every worker thread read and update it without a lock.

use super::pool::Pool;
use crate::metrics::UpstreamMetrics;
use bytes::Bytes;
use hyper::body::Incoming;
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// What a request to an upstream carries.
pub enum OutBody {
    /// Bytes, which can be sent again.
    Bytes(Bytes),
    /// A client's body, streamed through once.
    Stream(Incoming),
}

/// The per-upstream settings, from `[[origins]]`.
pub struct Limits {
    pub max_concurrent: usize,
    pub eject_after: u32,
    pub eject_for: Duration,
    pub eject_max: Duration,
}

pub struct Upstream {
    /// `host:port`: the `upstream` label.
    pub label: Arc<str>,
    /// The Host header its requests carry (the authority).
    pub host: http::HeaderValue,
    pub weight: u32,
    pub pool: Pool,
    inflight: AtomicUsize,
    consecutive_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    /// Ejections since the upstream last recovered: the next ejection lasts one more
    /// `eject_for`.
    ejections: AtomicU32,
    /// Milliseconds since the origin's `base` until which it is ejected (0: never was).
    ejected_until: AtomicU64,
    /// What the active probes concluded; true while probes are off.
    healthy: AtomicBool,
    pub metrics: UpstreamMetrics,
}

impl Upstream {
    pub fn new(
        authority: http::uri::Authority,
        weight: u32,
        connect_timeout: Duration,
        pool_idle_timeout: Duration,
        pool_max_idle: usize,
        metrics: UpstreamMetrics,
    ) -> Self {
        let pool = Pool::new(
            authority.clone(),
            connect_timeout,
            pool_idle_timeout,
            pool_max_idle,
            metrics.connections.clone(),
        );
        metrics.healthy.set(1);
        Self {
            label: authority.as_str().into(),
            host: http::HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            weight,
            pool,
            inflight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            metrics,
        }
    }

    /// Requests in flight now (until their response body ends).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Takes one of `max` slots, or None when the upstream is full.
    pub fn begin(self: &Arc<Self>, max: usize) -> Option<InFlight> {
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= max {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlight(self.clone()))
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets what the probes concluded; true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.metrics.healthy.set(i64::from(healthy));
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// An answer that was not a failure: the failure streak ends, and enough successes in a
    /// row forget past ejections.
    pub fn succeeded(&self, limits: &Limits) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let streak = self.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= limits.eject_after && self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A failure (no answer, or a 5xx). Returns the ejection's length when this failure ends a
    /// streak of `eject_after` and `may_eject` allows one more upstream out.
    pub fn failed(
        &self,
        limits: &Limits,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        self.consecutive_successes.store(0, Ordering::Relaxed);
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < limits.eject_after || self.is_ejected(now_ms) || !may_eject() {
            return None;
        }
        // One of the requests that see the streak end ejects; the others see it reset.
        self.consecutive_failures
            .compare_exchange(streak, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = limits.eject_for.saturating_mul(n).min(limits.eject_max);
        self.ejected_until
            .store(now_ms + length.as_millis() as u64, Ordering::Relaxed);
        self.metrics.ejections.inc();
        Some(length)
    }
}

/// A request in flight to an upstream: counted from `begin` until dropped (with the response
/// body, so a streamed answer counts as load until it ends).
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    pub fn upstream(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since `base`: the clock ejections are kept in.
pub fn millis_since(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

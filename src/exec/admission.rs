//! Admission for one front door: at most `admission.max_inflight` requests (RESP: batches of
//! pipelined commands) run at once; up to `admission.max_queue` more wait, each for at most
//! `admission.queue_timeout`; anything past that is refused at once (HTTP 503 with
//! Retry-After, RESP `-BUSY`). Overload then costs a fast refusal, not a growing queue and
//! memory: the queue is a count, and a waiter is one future in its own connection's task.
//!
//! The fast path, with a slot free, is one semaphore `try_acquire` and one gauge increment.

use crate::{
    config::AdmissionConfig,
    metrics::{AdmissionMetrics, Door, Metrics},
};
use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Admission {
    slots: Semaphore,
    queued: AtomicUsize,
    /// The three limits, atomics so a reload (`resize`) changes them under load.
    max_inflight: AtomicUsize,
    max_queue: AtomicUsize,
    queue_timeout_ns: AtomicU64,
    /// Slots a shrink could not take back at once (they were in use): the next ones
    /// released are forgotten instead.
    owed: AtomicUsize,
    metrics: AdmissionMetrics,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every slot busy and the queue full.
    QueueFull,
    /// It waited `admission.queue_timeout` without a slot.
    QueueTimeout,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::QueueFull => "too many requests in flight and queued",
            Refused::QueueTimeout => "no capacity within the queue timeout",
        }
    }
}

/// A slot, held until the request is answered.
pub struct Admitted<'a> {
    slot: Option<SemaphorePermit<'a>>,
    admission: &'a Admission,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        a.metrics.inflight.dec();
        if a.owed.load(Ordering::Relaxed) > 0
            && a.owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            if let Some(slot) = self.slot.take() {
                slot.forget();
            }
        }
    }
}

impl Admission {
    pub fn new(
        door: Door,
        max_inflight: usize,
        max_queue: usize,
        queue_timeout: Duration,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self::with_metrics(
            max_inflight,
            max_queue,
            queue_timeout,
            metrics.admission(door),
        )
    }

    /// For what is not a door (the background executor): its own set of figures.
    pub fn with_metrics(
        max_inflight: usize,
        max_queue: usize,
        queue_timeout: Duration,
        metrics: AdmissionMetrics,
    ) -> Self {
        Self {
            slots: Semaphore::new(max_inflight),
            queued: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(max_inflight),
            max_queue: AtomicUsize::new(max_queue),
            queue_timeout_ns: AtomicU64::new(queue_timeout.as_nanos() as u64),
            owed: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Applies new limits (a config reload). A smaller `max_inflight` takes effect as
    /// requests in flight finish; nothing running is interrupted.
    pub fn resize(&self, cfg: &AdmissionConfig) {
        let new = cfg.max_inflight;
        let old = self.max_inflight.swap(new, Ordering::AcqRel);
        if new > old {
            let mut grow = new - old;
            // Slots still owed from an earlier shrink are simply no longer owed.
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                    let paid = owed.min(grow);
                    grow = new - old - paid;
                    Some(owed - paid)
                });
            self.slots.add_permits(grow);
        } else if new < old {
            let taken = self.slots.forget_permits(old - new);
            self.owed.fetch_add(old - new - taken, Ordering::AcqRel);
        }
        self.max_queue.store(cfg.max_queue, Ordering::Relaxed);
        self.queue_timeout_ns
            .store(cfg.queue_timeout.0.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn from_config(door: Door, cfg: &AdmissionConfig, metrics: &Arc<Metrics>) -> Self {
        Self::new(
            door,
            cfg.max_inflight,
            cfg.max_queue,
            cfg.queue_timeout.0,
            metrics,
        )
    }

    /// A slot now, or after a bounded wait in the queue, or a refusal.
    pub async fn admit(&self) -> Result<Admitted<'_>, Refused> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(self.admitted(slot));
        }
        // Boxed: the wait's timer and semaphore futures would otherwise sit in every
        // request's future, copied on each request, for a path taken only under load.
        super::placement::boxed(|| self.admit_queued()).await
    }

    /// `admit` when no slot is free: a place in the queue, or a refusal.
    async fn admit_queued(&self) -> Result<Admitted<'_>, Refused> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue.load(Ordering::Relaxed) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refused::QueueFull));
        }
        let _queued = Queued::new(self);
        let start = Instant::now();
        let timeout = Duration::from_nanos(self.queue_timeout_ns.load(Ordering::Relaxed));
        let waited = tokio::time::timeout(timeout, self.slots.acquire()).await;
        self.metrics
            .queue_wait
            .observe(start.elapsed().as_secs_f64());
        match waited {
            Ok(Ok(slot)) => Ok(self.admitted(slot)),
            // Timed out (the semaphore is never closed).
            _ => Err(self.refuse(Refused::QueueTimeout)),
        }
    }

    fn admitted<'a>(&'a self, slot: SemaphorePermit<'a>) -> Admitted<'a> {
        self.metrics.inflight.inc();
        Admitted {
            slot: Some(slot),
            admission: self,
        }
    }

    /// Counts a refusal made outside `admit` (the background executor refuses before it
    /// spawns).
    pub fn count_refusal(&self, why: Refused) {
        self.metrics.rejected[why as usize].inc();
    }

    fn refuse(&self, why: Refused) -> Refused {
        self.metrics.rejected[why as usize].inc();
        why
    }
}

/// Counts a waiter in the queue (and its gauge) until it leaves, however it leaves.
struct Queued<'a>(&'a Admission);

impl<'a> Queued<'a> {
    fn new(a: &'a Admission) -> Self {
        a.metrics.queued.inc();
        Queued(a)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queued.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn admission(inflight: usize, queue: usize, timeout_ms: u64) -> Admission {
        Admission::new(
            Door::Http,
            inflight,
            queue,
            Duration::from_millis(timeout_ms),
            &Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn past_the_slots_and_the_queue_it_refuses_at_once() {
        let a = admission(2, 1, 60_000);
        let first = a.admit().await.unwrap();
        let _second = a.admit().await.unwrap();
        // The third waits in the queue; a fourth finds the queue full.
        let third = a.admit();
        tokio::pin!(third);
        assert!((&mut third).now_or_never().is_none(), "queued");
        assert_eq!(a.admit().await.err(), Some(Refused::QueueFull));
        // A slot freed goes to the waiter.
        drop(first);
        assert!(third.await.is_ok());
        assert_eq!(a.metrics.rejected[Refused::QueueFull as usize].get(), 1);
        assert_eq!(a.metrics.queued.get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_is_refused_after_the_queue_timeout() {
        let a = admission(1, 8, 10);
        let _held = a.admit().await.unwrap();
        assert_eq!(a.admit().await.err(), Some(Refused::QueueTimeout));
        assert_eq!(
            a.queued.load(Ordering::Acquire),
            0,
            "the waiter left the queue"
        );
        assert_eq!(a.metrics.inflight.get(), 1);
    }

    #[tokio::test]
    async fn resize_shrinks_as_requests_finish_and_grows_at_once() {
        let a = admission(2, 0, 10);
        let (first, second) = (a.admit().await.unwrap(), a.admit().await.unwrap());
        let cfg = |n| AdmissionConfig {
            max_inflight: n,
            max_queue: 0,
            queue_timeout: crate::config::HumanDuration(Duration::from_millis(10)),
        };
        a.resize(&cfg(1));
        drop(first); // owed to the shrink: forgotten, not freed
        assert_eq!(a.admit().await.err(), Some(Refused::QueueFull));
        drop(second);
        let only = a.admit().await.unwrap();
        assert_eq!(a.admit().await.err(), Some(Refused::QueueFull), "limit 1");
        a.resize(&cfg(3));
        let _more = (a.admit().await.unwrap(), a.admit().await.unwrap());
        assert_eq!(a.admit().await.err(), Some(Refused::QueueFull), "limit 3");
        drop(only);
        assert_eq!(a.slots.available_permits(), 1);
    }
}

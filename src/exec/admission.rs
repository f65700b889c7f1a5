//! Admission for one front door: at most `admission.max_inflight` requests (RESP: batches of
//! pipelined commands) run at once; up to `admission.max_queue` more wait, each for at most
//! `admission.queue_timeout`; anything past that is refused at once (HTTP 503 with
//! Retry-After, RESP `-BUSY`). Overload then costs a fast refusal, not a growing queue and
//! memory: the queue is a count, and a waiter is one future in its own connection's task.
//!
//! The fast path, with a slot free and nobody queued, is one compare-and-swap to take the slot
//! and one subtraction to give it back: no lock. A semaphore (tokio's, as this was) takes its
//! waiter list's mutex on every release, one process-wide lock per request on every core.
//! Waiters wait on a `Notify`, woken oldest first, one per slot freed.

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
use tokio::sync::Notify;

pub struct Admission {
    /// Slots in use; may exceed `max_inflight` for a while after a shrink.
    inflight: AtomicUsize,
    /// Waiters in the queue.
    queued: AtomicUsize,
    /// Wakes a waiter when a slot is freed, every waiter when the limit grows.
    freed: Notify,
    /// The three limits, atomics so a reload (`resize`) changes them under load.
    max_inflight: AtomicUsize,
    max_queue: AtomicUsize,
    queue_timeout_ns: AtomicU64,
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
    admission: &'a Admission,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        a.metrics.inflight.dec();
        // SeqCst with the waiter's `queued` increment and its retry: either this sees the
        // waiter and wakes it, or the waiter's retry sees this slot free.
        a.inflight.fetch_sub(1, Ordering::SeqCst);
        if a.queued.load(Ordering::SeqCst) > 0 {
            a.freed.notify_one();
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
            inflight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
            max_inflight: AtomicUsize::new(max_inflight),
            max_queue: AtomicUsize::new(max_queue),
            queue_timeout_ns: AtomicU64::new(queue_timeout.as_nanos() as u64),
            metrics,
        }
    }

    /// Applies new limits (a config reload). A smaller `max_inflight` takes effect as
    /// requests in flight finish; nothing running is interrupted. A larger one lets waiters
    /// in at once.
    pub fn resize(&self, cfg: &AdmissionConfig) {
        let old = self.max_inflight.swap(cfg.max_inflight, Ordering::SeqCst);
        self.max_queue.store(cfg.max_queue, Ordering::Relaxed);
        self.queue_timeout_ns
            .store(cfg.queue_timeout.0.as_nanos() as u64, Ordering::Relaxed);
        if cfg.max_inflight > old {
            self.freed.notify_waiters();
        }
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
        // Nobody queued first: with waiters, a newcomer queues behind them rather than taking
        // the slot just freed for the oldest.
        if self.queued.load(Ordering::SeqCst) == 0 && self.take_slot() {
            return Ok(self.admitted());
        }
        // Boxed: the wait's timer and notify futures would otherwise sit in every request's
        // future, copied on each request, for a path taken only under load.
        super::placement::boxed(|| self.admit_queued()).await
    }

    /// Takes a slot if one is free under the current limit.
    fn take_slot(&self) -> bool {
        let max = self.max_inflight.load(Ordering::SeqCst);
        self.inflight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// `admit` when no slot is free: a place in the queue, or a refusal.
    async fn admit_queued(&self) -> Result<Admitted<'_>, Refused> {
        let ahead = self.queued.fetch_add(1, Ordering::SeqCst);
        if ahead >= self.max_queue.load(Ordering::Relaxed) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(self.refuse(Refused::QueueFull));
        }
        let queued = Queued::new(self);
        let start = Instant::now();
        let timeout = Duration::from_nanos(self.queue_timeout_ns.load(Ordering::Relaxed));
        let waited = tokio::time::timeout(timeout, self.wait_for_slot(ahead == 0)).await;
        drop(queued);
        self.metrics
            .queue_wait
            .observe(start.elapsed().as_secs_f64());
        match waited {
            Ok(()) => Ok(self.admitted()),
            Err(_) => Err(self.refuse(Refused::QueueTimeout)),
        }
    }

    /// Waits until a slot is taken. Interest is registered before each try, so a slot freed
    /// between the try and the wait still wakes it. Behind other waiters it tries only once
    /// woken: a slot freed now is theirs (each release wakes the oldest), and trying would
    /// take it from them. `first`: nobody was waiting when it joined the queue, so a slot
    /// freed just before (its release saw no waiter to wake) is this one's to take.
    async fn wait_for_slot(&self, mut first: bool) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if first && self.take_slot() {
                return;
            }
            freed.await;
            first = true;
        }
    }

    fn admitted(&self) -> Admitted<'_> {
        self.metrics.inflight.inc();
        Admitted { admission: self }
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
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
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
        assert_eq!(a.inflight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_newcomer_queues_behind_a_waiter_rather_than_taking_its_slot() {
        let a = admission(1, 2, 60_000);
        let first = a.admit().await.unwrap();
        let waiter = a.admit();
        tokio::pin!(waiter);
        assert!((&mut waiter).now_or_never().is_none(), "queued");
        drop(first);
        let newcomer = a.admit();
        tokio::pin!(newcomer);
        assert!(
            (&mut newcomer).now_or_never().is_none(),
            "the freed slot is the waiter's"
        );
        let served = waiter.await.unwrap();
        drop(served);
        assert!(newcomer.await.is_ok(), "and the newcomer's after it");
    }

    #[test]
    fn under_contention_no_slot_is_lost_and_none_is_exceeded() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = Arc::new(admission(3, 10_000, 60_000));
            let running = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..400)
                .map(|_| {
                    let (a, running, most) = (a.clone(), running.clone(), most.clone());
                    tokio::spawn(async move {
                        for _ in 0..25 {
                            let slot = a.admit().await.expect("the queue is long enough");
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            running.fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert!(
                most.load(Ordering::SeqCst) <= 3,
                "never more than the slots"
            );
            assert_eq!(most.load(Ordering::SeqCst), 3, "and all of them used");
            assert_eq!(a.inflight.load(Ordering::SeqCst), 0);
            assert_eq!(a.queued.load(Ordering::SeqCst), 0);
        });
    }
}

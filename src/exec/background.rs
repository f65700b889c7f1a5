//! The background executor: a tokio runtime of its own (`background.threads` OS threads) for
//! the work no client waits on: the L2 health probe, the invalidation bus, warm-up, and
//! stale-while-revalidate refreshes. Client work runs on the main runtime's workers and
//! background work here, so a flood of requests cannot delay an invalidation, and a burst of
//! refreshes cannot hold a worker that requests need.
//!
//! Loops are spawned as services (a fixed few). Jobs (one refresh each) are admitted like
//! requests: at most `background.max_inflight` run at once and `background.max_queue` wait,
//! each for at most `background.queue_timeout`; past that a job is skipped and counted
//! (`tiergate_admission_*{door="background"}`). A job is refused before it is spawned, so
//! skipped work costs no task and no memory.

use super::Admission;
use crate::{config::BackgroundConfig, metrics::Metrics};
use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};
use tokio::runtime::{Handle, Runtime};

#[derive(Clone)]
pub struct Background {
    inner: Arc<Inner>,
}

struct Inner {
    handle: Handle,
    /// Taken at shutdown.
    runtime: Mutex<Option<Runtime>>,
    admission: Admission,
    /// Jobs spawned and not finished: running or waiting for a slot.
    pending: AtomicUsize,
    /// Most jobs pending at once: slots plus queue places.
    cap: usize,
}

impl Drop for Inner {
    /// A runtime dropped the plain way blocks, which panics inside async code (a server
    /// dropped without `wait`, as tests do).
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.get_mut().ok().and_then(Option::take) {
            rt.shutdown_background();
        }
    }
}

/// A job was not run: the executor is at its limits.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped;

impl Background {
    pub fn start(cfg: &BackgroundConfig, metrics: &Arc<Metrics>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads)
            .thread_name("tiergate-bg")
            .enable_all()
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                handle: runtime.handle().clone(),
                runtime: Mutex::new(Some(runtime)),
                admission: Admission::with_metrics(
                    cfg.max_inflight,
                    cfg.max_queue,
                    cfg.queue_timeout.0,
                    metrics.background.clone(),
                ),
                pending: AtomicUsize::new(0),
                cap: cfg.max_inflight + cfg.max_queue,
            }),
        })
    }

    /// Runs a long-lived loop on the background threads. Loops end on their own (shutdown).
    pub fn spawn_service<F>(&self, service: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.handle.spawn(service);
    }

    /// Runs `job` when a slot frees up, or refuses it now when the executor is full. A job
    /// admitted to the queue that waits past the queue timeout is dropped unrun; `on_skip`
    /// runs in either case, so the caller can forget what it had scheduled.
    pub fn submit<F>(&self, job: F, on_skip: impl FnOnce() + Send + 'static) -> Result<(), Skipped>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = &self.inner;
        if inner.pending.fetch_add(1, Ordering::AcqRel) >= inner.cap {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            inner.admission.count_refusal(super::Refused::QueueFull);
            on_skip();
            return Err(Skipped);
        }
        let me = self.inner.clone();
        inner.handle.spawn(async move {
            match me.admission.admit().await {
                Ok(_slot) => job.await,
                Err(_) => on_skip(),
            }
            me.pending.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(())
    }

    /// Stops the background threads without waiting for them (callable from async code).
    /// Services have seen shutdown by now; jobs still queued are dropped.
    pub fn stop(&self) {
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn jobs_run_off_the_callers_threads_and_past_the_limits_are_skipped() {
        let metrics = Arc::new(Metrics::new());
        let bg = Background::start(
            &BackgroundConfig {
                threads: 1,
                max_inflight: 1,
                max_queue: 1,
                queue_timeout: HumanDuration(Duration::from_secs(60)),
            },
            &metrics,
        )
        .unwrap();
        let (release, gate) = tokio::sync::watch::channel(false);
        let (ran_tx, mut ran) = tokio::sync::mpsc::channel(4);
        let caller = std::thread::current().id();
        let job = |n: u32| {
            let (mut gate, ran_tx) = (gate.clone(), ran_tx.clone());
            async move {
                let _ = gate.wait_for(|open| *open).await;
                assert_ne!(std::thread::current().id(), caller);
                ran_tx.send(n).await.unwrap();
            }
        };
        let skipped = Arc::new(AtomicUsize::new(0));
        let skip = || {
            let s = skipped.clone();
            move || {
                s.fetch_add(1, Ordering::Relaxed);
            }
        };
        assert_eq!(bg.submit(job(1), skip()), Ok(()));
        assert_eq!(bg.submit(job(2), skip()), Ok(()));
        assert_eq!(
            bg.submit(job(3), skip()),
            Err(Skipped),
            "one running, one queued"
        );
        assert_eq!(skipped.load(Ordering::Relaxed), 1);
        release.send(true).unwrap();
        let mut done = vec![ran.recv().await.unwrap(), ran.recv().await.unwrap()];
        done.sort();
        assert_eq!(done, [1, 2]);
        assert_eq!(metrics.background.rejected[0].get(), 1);
        bg.stop();
    }
}

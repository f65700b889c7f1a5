//! Stale-while-revalidate: a read that finds an L1 entry past its TTL, but within
//! `l1.stale_while_revalidate`, is answered with it at once, and the key is queued here to be
//! read from L2 again in the background. Each key is queued once until its refresh is done,
//! the queue is bounded (a full queue skips the refresh: the next stale read queues it again),
//! and one loop hands each key to the background executor as a job, until shutdown: at most
//! `background.max_inflight` refreshes run at once, and a job the executor skips is
//! forgotten (the next stale read schedules it again).

use super::TieredCache;
use crate::{exec::Background, shutdown::Shutdown};
use bytes::Bytes;
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};
use tokio::sync::mpsc;

/// Keys waiting for a refresh; past this, refreshes are skipped rather than queued.
const QUEUE: usize = 4096;

pub struct Refresher {
    queue: mpsc::Sender<Bytes>,
    /// Taken by `run`.
    receiver: Mutex<Option<mpsc::Receiver<Bytes>>>,
    /// Keys queued or being refreshed: a hot stale key is refreshed once, not once per read.
    pending: Mutex<HashSet<Bytes>>,
}

impl Default for Refresher {
    fn default() -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            pending: Mutex::new(HashSet::new()),
        }
    }
}

impl Refresher {
    /// Queues `key` for a background refresh unless it is already queued.
    pub fn schedule(&self, key: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains(key) {
            return;
        }
        let key = Bytes::copy_from_slice(key);
        if self.queue.try_send(key.clone()).is_ok() {
            pending.insert(key);
        }
    }

    fn done(&self, key: &[u8]) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Hands queued keys to `jobs` until shutdown (each refresh is one L2 read).
pub async fn run(cache: Arc<TieredCache>, jobs: Background, shutdown: Shutdown) {
    let Some(mut keys) = cache
        .refresher
        .receiver
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    loop {
        let key = tokio::select! {
            k = keys.recv() => match k {
                Some(k) => k,
                None => return,
            },
            _ = shutdown.wait() => return,
        };
        let (c, k) = (cache.clone(), key.clone());
        let refresh = async move {
            // Errors are the next reader's to see; the stale entry stays until its grace ends.
            let _ = c.revalidate(&k).await;
            c.metrics.l1_refreshes.inc();
            c.refresher.done(&k);
        };
        let c = cache.clone();
        let _ = jobs.submit(refresh, move || c.refresher.done(&key));
    }
}

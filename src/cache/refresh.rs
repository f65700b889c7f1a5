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

/// One background refresh of `key`, counted only if it asked L2. It may find nothing to do:
/// a reader that read the stale entry just before the last refresh stored the new one may
/// schedule the key again just after that refresh was done.
async fn refresh_one(cache: &TieredCache, key: &[u8]) {
    // Errors are the next reader's to see; the stale entry stays until its grace ends.
    if !matches!(cache.revalidate(key).await, Ok((_, _, false))) {
        cache.metrics.l1_refreshes.inc();
    }
    cache.refresher.done(key);
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
        let refresh = async move { refresh_one(&c, &k).await };
        let c = cache.clone();
        let _ = jobs.submit(refresh, move || c.refresher.done(&key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cache::l1::Entry,
        config::{Config, HumanDuration, L2Config},
        metrics::Metrics,
    };
    use std::time::Duration;

    /// Tiered, with an L2 nobody listens on: what a refresh asks it fails at once.
    fn cache() -> TieredCache {
        let mut cfg = Config {
            l2: L2Config {
                url: "redis://127.0.0.1:1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        cfg.l1.stale_while_revalidate = HumanDuration(Duration::from_secs(600));
        TieredCache::new(&cfg, 1 << 30, Arc::new(Metrics::new())).unwrap()
    }

    #[tokio::test]
    async fn a_refresh_that_finds_the_key_fresh_is_not_counted() {
        let cache = cache();
        let key = Bytes::from_static(b"k");
        let fresh = Entry::new(Bytes::from_static(b"v"), Some(Duration::from_secs(60)));
        cache.l1.insert(key.clone(), fresh).await;
        cache.refresher.schedule(&key);
        refresh_one(&cache, &key).await;
        assert_eq!(cache.metrics.l1_refreshes.get(), 0, "L2 was not asked");
        assert_eq!(cache.l1.get(&key).await.unwrap().value, "v");

        // A stale one asks L2 (which fails here: the stale entry stays) and is counted.
        let stale = Entry::new(Bytes::from_static(b"old"), Some(Duration::ZERO));
        cache.l1.insert(key.clone(), stale).await;
        refresh_one(&cache, &key).await;
        assert_eq!(cache.metrics.l1_refreshes.get(), 1);
        assert_eq!(cache.l1.get(&key).await.unwrap().value, "old");
        // Done either way: the next stale read may schedule it again.
        assert!(cache.refresher.pending.lock().unwrap().is_empty());
    }
}

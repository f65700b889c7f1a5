//! One origin request per key across instances: a short Redis lock beside the key. The
//! instance that takes it asks the origin, keeps the answer in L2 and releases the lock;
//! the others look at L2 (5 ms apart, doubling to 100 ms) until the answer is there, the
//! lock is free to take or says what its holder found, or `wait` has passed. Then a waiter
//! asks the origin itself rather than fail (the bounded wait that falls back: mlcache#99,
//! nginx's `proxy_cache_lock_timeout`). Used by the loaders (`loader`) and the HTTP door's
//! proxy routes.

use super::l2::{Fetched, L2};
use bytes::Bytes;
use std::time::Duration;

/// Lock keys are this followed by the key.
const PREFIX: &[u8] = b"tiergate:lock:";
/// First and longest pause between a waiter's looks at L2.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// How long a waiter waits, and how long a holder may hold (it expires by itself after, so a
/// holder that died frees it).
#[derive(Clone, Copy, Debug)]
pub struct Lock {
    pub wait: Duration,
    pub ttl: Duration,
}

/// Whose turn it is to ask the origin for a key.
pub enum Turn<T> {
    /// Ours: ask the origin, keep the answer in L2, then `Held::release`.
    Lead(Held),
    /// Another instance's answer, now in L2 (as the caller's `usable` made it).
    Found(T),
    /// What a holder left in the lock for its waiters (see `Held::release`).
    Left(Bytes),
    /// No lock to be had in time, or Redis would not say: ask the origin alone.
    Alone,
}

/// A lock this instance holds.
pub struct Held {
    name: Vec<u8>,
    token: String,
}

impl Lock {
    /// Takes the lock of `key` (the L2 key its answer is kept under), or waits for the
    /// holder's answer there. `left`: whether a value found in the lock is something its
    /// holder left for waiters rather than another instance's token. `usable`: what a value
    /// found in L2 answers with, if it does (one kept past its freshness, for serving stale,
    /// does not: the wait goes on for the holder's).
    pub async fn turn<T>(
        &self,
        l2: &L2,
        key: &Bytes,
        left: impl Fn(&[u8]) -> bool,
        mut usable: impl FnMut(Fetched) -> Option<T>,
    ) -> Turn<T> {
        let name = [PREFIX, key].concat();
        let token = format!("{:016x}", fastrand::u64(..));
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut pause = POLL_FIRST;
        loop {
            match l2.try_lock(&name, token.as_bytes(), self.ttl).await {
                Ok(None) => return Self::lead(l2, key, Held { name, token }, usable).await,
                Ok(Some(held)) if left(&held) => return Turn::Left(held),
                Ok(Some(_)) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "no origin lock: asking the origin alone");
                    return Turn::Alone;
                }
            }
            if tokio::time::Instant::now() + pause >= deadline {
                return Turn::Alone;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            match l2.get(key.clone()).await {
                Ok(Some(found)) => {
                    if let Some(found) = usable(found) {
                        return Turn::Found(found);
                    }
                }
                Ok(None) => {}
                Err(_) => return Turn::Alone,
            }
        }
    }

    /// Ours, unless the holder before us kept its answer and let go between the caller's
    /// look at L2 and our taking the lock: then that answer, and the lock goes back.
    async fn lead<T>(
        l2: &L2,
        key: &Bytes,
        held: Held,
        usable: impl FnOnce(Fetched) -> Option<T>,
    ) -> Turn<T> {
        match l2.get(key.clone()).await.ok().flatten().and_then(usable) {
            Some(found) => {
                held.release(l2, None).await;
                Turn::Found(found)
            }
            None => Turn::Lead(held),
        }
    }
}

impl Held {
    /// Releases the lock (if it is still ours), leaving `outcome` in it for that long when
    /// given, for waiters to find instead of asking the origin.
    pub async fn release(self, l2: &L2, outcome: Option<(&[u8], Duration)>) {
        if let Err(e) = l2
            .release_lock(&self.name, self.token.as_bytes(), outcome)
            .await
        {
            tracing::debug!(error = %e, "an origin lock was left to expire");
        }
    }
}

//! L1: the in-process moka cache, weighed in bytes, each entry expiring on its own TTL.

use bytes::Bytes;
use moka::{future::Cache, policy::EvictionPolicy, Expiry};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Bookkeeping moka and we keep per entry beyond key and value bytes (hash slot, deque
/// nodes, the `Bytes` headers); counted so that small values cannot overrun the budget.
const ENTRY_OVERHEAD: usize = 128;

/// A cached value and how long L1 may keep it from the moment it is stored (None: until evicted).
#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Bytes,
    pub ttl: Option<Duration>,
}

struct PerEntryTtl;

impl Expiry<Bytes, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Bytes, v: &Entry, _: Instant) -> Option<Duration> {
        v.ttl
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl
    }
}

/// Why a read-through load produced no entry. The error path is how we keep a result out of
/// moka while still handing it to every coalesced waiter.
#[derive(Debug)]
pub enum LoadMiss<E> {
    Absent,
    Failed(E),
}

/// The L1 tier; `None` inside when configured with a zero budget.
#[derive(Clone)]
pub struct L1 {
    cache: Option<Cache<Bytes, Entry>>,
}

impl L1 {
    /// `capacity` bytes of budget. `as_store` selects LRU admission: when L1 is the only
    /// store (standalone mode) a fresh write must never be refused admission, which
    /// TinyLFU may do for a cold key.
    pub fn new(capacity: u64, as_store: bool) -> Self {
        if capacity == 0 {
            return Self { cache: None };
        }
        let policy = if as_store {
            EvictionPolicy::lru()
        } else {
            EvictionPolicy::tiny_lfu()
        };
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|k: &Bytes, v: &Entry| {
                u32::try_from(k.len() + v.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_policy(policy)
            .build();
        Self { cache: Some(cache) }
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    pub async fn get(&self, key: &[u8]) -> Option<Entry> {
        self.cache.as_ref()?.get(key).await
    }

    pub async fn insert(&self, key: Bytes, entry: Entry) {
        if let Some(c) = &self.cache {
            c.insert(key, entry).await;
        }
    }

    pub async fn invalidate(&self, key: &[u8]) {
        if let Some(c) = &self.cache {
            c.invalidate(key).await;
        }
    }

    /// Removes the key, returning whether a live entry was there. moka's `remove` also
    /// returns entries that expired but were not yet reaped, hence the visibility check;
    /// of two concurrent removers only one gets the entry back.
    pub async fn remove(&self, key: &[u8]) -> bool {
        match &self.cache {
            Some(c) => {
                let live = c.contains_key(key);
                c.remove(key).await.is_some() && live
            }
            None => false,
        }
    }

    /// Read-through: concurrent callers for one missing key share one run of `load`.
    /// With L1 disabled every caller runs its own load.
    pub async fn get_or_load<E, F>(&self, key: Bytes, load: F) -> Result<Entry, Arc<LoadMiss<E>>>
    where
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<Entry, LoadMiss<E>>>,
    {
        match &self.cache {
            Some(c) => c.try_get_with(key, load).await,
            None => load.await.map_err(Arc::new),
        }
    }

    /// Entry count and weighted bytes, for metrics. moka's counters lag until its
    /// housekeeping runs, so run it first: a scrape is rare, a stale gauge misleads.
    pub async fn usage(&self) -> (u64, u64) {
        match &self.cache {
            Some(c) => {
                c.run_pending_tasks().await;
                (c.entry_count(), c.weighted_size())
            }
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_on_their_own_ttl() {
        let l1 = L1::new(1 << 20, true);
        let k = Bytes::from_static(b"k");
        l1.insert(
            k.clone(),
            Entry {
                value: Bytes::from_static(b"v"),
                ttl: Some(Duration::from_millis(30)),
            },
        )
        .await;
        l1.insert(
            Bytes::from_static(b"forever"),
            Entry {
                value: Bytes::from_static(b"v"),
                ttl: None,
            },
        )
        .await;
        assert!(l1.get(b"k").await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(l1.get(b"k").await.is_none());
        assert!(l1.get(b"forever").await.is_some());
        assert!(
            !l1.remove(b"k").await,
            "an expired entry is not reported as removed"
        );
    }

    #[tokio::test]
    async fn zero_budget_disables_l1() {
        let l1 = L1::new(0, false);
        l1.insert(
            Bytes::from_static(b"k"),
            Entry {
                value: Bytes::new(),
                ttl: None,
            },
        )
        .await;
        assert!(!l1.enabled());
        assert!(l1.get(b"k").await.is_none());
    }

    #[tokio::test]
    async fn byte_budget_bounds_the_weight() {
        let l1 = L1::new(64 * 1024, true);
        for i in 0..1000u32 {
            l1.insert(
                Bytes::from(i.to_string()),
                Entry {
                    value: Bytes::from(vec![0u8; 1024]),
                    ttl: None,
                },
            )
            .await;
        }
        let (entries, bytes) = l1.usage().await;
        assert!(
            bytes <= 64 * 1024 && entries > 0,
            "{entries} entries, {bytes} bytes"
        );
    }
}

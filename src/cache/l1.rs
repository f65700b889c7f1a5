//! L1: the in-process moka cache, weighed in bytes, each entry expiring on its own TTL.
//! Entries read from L2 may outlive their TTL by a grace (`l1.stale_if_error`): past its TTL
//! an entry is stale, answered only when L2 cannot be asked. An entry may also record that
//! L2 had no such key (`l1.negative_ttl`).

use bytes::Bytes;
use moka::{future::Cache, ops::compute::Op, policy::EvictionPolicy, Expiry};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Bookkeeping moka and we keep per entry beyond key and value bytes (hash slot, deque
/// nodes, the `Bytes` headers); counted so that small values cannot overrun the budget.
const ENTRY_OVERHEAD: usize = 128;

/// A cached value and when it stops being fresh (None: never, until evicted).
#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Bytes,
    pub expires_at: Option<Instant>,
    /// L2 said the key does not exist (a negative entry; `value` is empty).
    pub absent: bool,
    /// Loaded from an origin (a loader), not read from L2.
    pub origin: bool,
    /// Kept this long past its TTL, stale, to answer while its source fails (a loader's
    /// `stale_if_error`), when longer than L1's own grace.
    pub grace: Duration,
}

impl Entry {
    /// An entry living `ttl` from now (None: until evicted).
    pub fn new(value: Bytes, ttl: Option<Duration>) -> Self {
        Self {
            value,
            expires_at: ttl.map(|t| Instant::now() + t),
            absent: false,
            origin: false,
            grace: Duration::ZERO,
        }
    }

    /// An entry that expires at `expires_at` (None: until evicted).
    pub fn at(value: Bytes, expires_at: Option<Instant>) -> Self {
        Self {
            value,
            expires_at,
            absent: false,
            origin: false,
            grace: Duration::ZERO,
        }
    }

    /// The tier that gave this entry, when it is not L1 answering.
    pub fn tier(&self) -> crate::metrics::Tier {
        if self.origin {
            crate::metrics::Tier::Origin
        } else {
            crate::metrics::Tier::L2
        }
    }

    /// Marks an entry loaded from an origin.
    pub fn from_origin(self) -> Self {
        Self {
            origin: true,
            ..self
        }
    }

    /// Keeps the entry `grace` past its TTL (if longer than L1's own grace).
    pub fn with_grace(self, grace: Duration) -> Self {
        Self { grace, ..self }
    }

    /// A record that L2 has no such key, for `ttl`.
    pub fn absent(ttl: Duration) -> Self {
        Self {
            absent: true,
            ..Self::new(Bytes::new(), Some(ttl))
        }
    }

    /// Time left before expiry, as of `now` (None: no expiry).
    pub fn ttl(&self, now: Instant) -> Option<Duration> {
        self.expires_at.map(|at| at.saturating_duration_since(now))
    }
}

/// moka drops an entry `grace` after its TTL; until then it is kept, stale.
struct PerEntryTtl {
    grace: Duration,
}

impl Expiry<Bytes, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Bytes, v: &Entry, now: Instant) -> Option<Duration> {
        v.ttl(now).map(|t| t + self.grace.max(v.grace))
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        v: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl(now).map(|t| t + self.grace.max(v.grace))
    }
}

/// A copy of `b` in an allocation of its own. Request bytes are slices of a connection's
/// read buffer (RESP arguments, hyper body chunks); stored as they are, a 10-byte key or
/// value would keep that whole buffer alive for as long as the entry lives, outside the
/// byte budget. Everything L1 keeps from a request goes through here.
pub fn own(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// Why a read-through load produced no entry. The error path is how we keep a result out of
/// moka while still handing it to every coalesced waiter.
#[derive(Debug)]
pub enum LoadMiss<E> {
    Absent,
    Failed(E),
    /// A value loaded from an origin that may not be kept (`no-store` and the like): handed to
    /// every waiter, stored nowhere.
    Passed(Bytes),
}

/// The L1 tier; `None` inside when configured with a zero budget.
#[derive(Clone)]
pub struct L1 {
    cache: Option<Cache<Bytes, Entry, ahash::RandomState>>,
    /// How long past its TTL a stale entry is kept.
    grace: Duration,
}

impl L1 {
    /// `capacity` bytes of budget. `as_store` selects LRU admission: when L1 is the only
    /// store (standalone mode) a fresh write must never be refused admission, which
    /// TinyLFU may do for a cold key. `grace`: how long entries are kept stale past their TTL.
    pub fn new(capacity: u64, as_store: bool, grace: Duration) -> Self {
        if capacity == 0 {
            return Self { cache: None, grace };
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
            .expire_after(PerEntryTtl { grace })
            .eviction_policy(policy)
            // aHash, randomly keyed per process: keys come from clients, so the hash must
            // resist collisions chosen by them (which FxHash-style hashes do not), and std's
            // SipHash cost a tenth of an L1 hit.
            .build_with_hasher(ahash::RandomState::new());
        Self {
            cache: Some(cache),
            grace,
        }
    }

    /// Whether `e` is past its TTL by less than `window`.
    pub fn within(&self, e: &Entry, window: Duration) -> bool {
        !window.is_zero() && e.expires_at.is_some_and(|at| Instant::now() < at + window)
    }

    /// Whether `e` is within its TTL. Without a grace (L1's or the entry's) moka only
    /// returns fresh entries, so this reads no clock on the hot path then.
    pub fn is_fresh(&self, e: &Entry) -> bool {
        (self.grace.is_zero() && e.grace.is_zero())
            || e.expires_at.is_none_or(|at| Instant::now() < at)
    }

    pub fn enabled(&self) -> bool {
        self.cache.is_some()
    }

    pub async fn get(&self, key: &[u8]) -> Option<Entry> {
        self.cache.as_ref()?.get(key).await
    }

    pub async fn insert(&self, key: Bytes, entry: Entry) {
        if let Some(c) = &self.cache {
            c.insert(own(&key), entry).await;
        }
    }

    pub async fn invalidate(&self, key: &[u8]) {
        if let Some(c) = &self.cache {
            c.invalidate(key).await;
        }
    }

    /// Drops every entry (moka does it lazily: O(1) now, entries vanish as they are met).
    pub fn invalidate_all(&self) {
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
    }

    /// Removes the key, returning whether a live entry was there.
    pub async fn remove(&self, key: Bytes) -> bool {
        self.compute(key, |cur| (Op::Remove, cur.is_some()))
            .await
            .unwrap_or(false)
    }

    /// Whether a live entry is there.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.cache.as_ref().is_some_and(|c| c.contains_key(key))
    }

    /// Read-modify-write of one key: `f` sees the live entry (expired ones are absent) and
    /// says what to store. Calls for the same key run one at a time, so this is how the
    /// memory store makes SET NX, KEEPTTL and friends atomic. None when L1 is disabled.
    pub async fn compute<R>(
        &self,
        key: Bytes,
        f: impl FnOnce(Option<&Entry>) -> (Op<Entry>, R),
    ) -> Option<R> {
        self.compute_with(key, |cur| std::future::ready(f(cur.as_ref())))
            .await
    }

    /// `compute` with an async `f` (which may ask L2): the entry as it is, stale included,
    /// and what to store. Calls for the same key still run one at a time.
    pub async fn compute_with<R, Fut>(
        &self,
        key: Bytes,
        f: impl FnOnce(Option<Entry>) -> Fut,
    ) -> Option<R>
    where
        Fut: std::future::Future<Output = (Op<Entry>, R)>,
    {
        let c = self.cache.as_ref()?;
        let mut out = None;
        let out_ref = &mut out;
        c.entry(own(&key))
            .and_compute_with(|cur| {
                let fut = f(cur.map(|e| e.into_value()));
                async move {
                    let (op, r) = fut.await;
                    *out_ref = Some(r);
                    op
                }
            })
            .await;
        out
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

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[tokio::test]
    async fn entries_expire_on_their_own_ttl() {
        let l1 = L1::new(1 << 20, true, Duration::ZERO);
        l1.insert(b("k"), Entry::new(b("v"), Some(Duration::from_millis(30))))
            .await;
        l1.insert(b("forever"), Entry::new(b("v"), None)).await;
        assert!(l1.get(b"k").await.is_some());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(l1.get(b"k").await.is_none());
        assert!(!l1.contains(b"k"));
        assert!(l1.get(b"forever").await.is_some());
        assert!(
            !l1.remove(b("k")).await,
            "an expired entry is not reported as removed"
        );
        assert!(l1.remove(b("forever")).await);
        assert!(!l1.remove(b("forever")).await);
    }

    #[tokio::test]
    async fn compute_sees_live_entries_only_and_applies_its_op() {
        let l1 = L1::new(1 << 20, true, Duration::ZERO);
        l1.insert(
            b("gone"),
            Entry::new(b("v"), Some(Duration::from_millis(1))),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = l1.compute(b("gone"), |cur| (Op::Nop, cur.is_some())).await;
        assert_eq!(seen, Some(false));
        let old = l1
            .compute(b("k"), |cur| {
                (
                    Op::Put(Entry::new(b("new"), None)),
                    cur.map(|e| e.value.clone()),
                )
            })
            .await;
        assert_eq!(old, Some(None));
        assert_eq!(l1.get(b"k").await.unwrap().value, b("new"));
    }

    #[tokio::test]
    async fn zero_budget_disables_l1() {
        let l1 = L1::new(0, false, Duration::ZERO);
        l1.insert(b("k"), Entry::new(Bytes::new(), None)).await;
        assert!(!l1.enabled());
        assert!(l1.get(b"k").await.is_none());
        assert_eq!(l1.compute(b("k"), |_| (Op::Nop, ())).await, None);
    }

    #[tokio::test]
    async fn byte_budget_bounds_the_weight() {
        let l1 = L1::new(64 * 1024, true, Duration::ZERO);
        for i in 0..1000u32 {
            l1.insert(
                Bytes::from(i.to_string()),
                Entry::new(Bytes::from(vec![0u8; 1024]), None),
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

//! `TieredCache`: the one engine both front doors read and write through. Reads try L1, then
//! L2 (one coalesced load per missing key); writes go to L2 first — the system of record —
//! and only then invalidate L1, so an acknowledged write is never only in memory. With no L2
//! configured (standalone mode) L1 is the store.

mod batch;
mod breaker;
pub mod bus;
mod cluster;
mod conn;
pub mod dedicated;
mod echo;
mod epoch;
pub mod forward;
pub mod hot;
pub mod l1;
pub mod l2;
pub mod loader;
pub mod lock;
mod merge;
mod pipe;
pub mod refresh;
pub mod reply;
pub mod table;
pub mod warm;

use crate::{
    config::{Config, Invalidation},
    exec::placement,
    metrics::{Metrics, Tier},
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use epoch::Epochs;
use l1::{Entry, LoadMiss, L1};
use l2::ttl_from_pttl;
pub use l2::{L2Error, L2};
use loader::{Loaded, Loader, Loaders, Shared};
use moka::ops::compute::Op;
pub use pipe::{encode_args, Reply};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// How a purge of a proxied URL travels on the invalidation bus: a key made of this and the
/// URL, which every instance's bus hands to the purge hook (`TieredCache::on_purge`) instead
/// of evicting it. An instance without the hook evicts it as a key nothing holds.
pub const PURGE_MARK: &[u8] = b"\0tiergate-purge:";

/// What the bus calls with a purged URL (the proxy routes' `purge_here`).
type PurgeHook = Box<dyn Fn(&str) + Send + Sync>;

/// A value and the tier that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub value: Bytes,
    pub tier: Tier,
}

/// One item of a batch write: key, value, TTL.
pub type Item = (Bytes, Bytes, Option<Duration>);

/// What SET does with the key's TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTtl {
    /// No expiry (a plain SET clears any TTL the key had).
    Clear,
    /// KEEPTTL: the key keeps the TTL it had.
    Keep,
    /// EX / PX: expires this long from now.
    In(Duration),
    /// EXAT / PXAT: expires at this wall-clock time.
    At(SystemTime),
}

/// When SET writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCond {
    Always,
    /// NX
    IfAbsent,
    /// XX
    IfPresent,
}

/// SET with Redis' options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOptions {
    pub ttl: SetTtl,
    pub cond: SetCond,
    /// GET: answer with the old value.
    pub get: bool,
}

impl SetOptions {
    /// A plain SET that expires after `ttl` (None: never).
    pub fn expiring(ttl: Option<Duration>) -> Self {
        Self {
            ttl: ttl.map_or(SetTtl::Clear, SetTtl::In),
            ..Self::default()
        }
    }
}

impl Default for SetOptions {
    fn default() -> Self {
        Self {
            ttl: SetTtl::Clear,
            cond: SetCond::Always,
            get: false,
        }
    }
}

/// What a SET did, as Redis reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    /// NX / XX said no.
    NotWritten,
    /// The GET form: the value before the SET (None: there was none).
    Old(Option<Bytes>),
}

/// When EXPIRE applies (Redis 7's NX / XX / GT / LT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireCond {
    Always,
    /// NX: only when the key has no TTL.
    NoTtl,
    /// XX: only when the key has a TTL.
    HasTtl,
    /// GT: only when the new TTL is longer (no TTL counts as infinite).
    Longer,
    /// LT: only when the new TTL is shorter (no TTL counts as infinite).
    Shorter,
    /// XX LT: only when the key has a TTL and the new one is shorter.
    HasTtlShorter,
}

/// A key's remaining life, as PTTL reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    Missing,
    Persistent,
    Left(Duration),
}

/// The error Redis gives for INCR on a non-integer, and for overflow.
pub const NOT_AN_INTEGER: &str = "value is not an integer or out of range";
pub const INCR_OVERFLOW: &str = "increment or decrement would overflow";

/// How long L1 keeps values read from L2, and absences (`l1.max_ttl`, `l1.ttl_jitter`,
/// `l1.negative_ttl`); and how large a value an origin may hand a loader
/// (`limits.max_value_bytes`). Reloadable keys, all.
pub struct TtlPolicy {
    max_ttl: Duration,
    /// Fraction of each lifetime taken off at random.
    jitter: f64,
    /// How long L1 remembers that L2 had no such key (zero: not at all).
    negative_ttl: Duration,
    max_value_bytes: usize,
}

impl TtlPolicy {
    fn new(config: &Config, tiered: bool) -> Self {
        Self {
            max_ttl: config.l1.max_ttl.0,
            jitter: config.l1.ttl_jitter,
            // In standalone mode an absence is the key's own: nothing to remember.
            negative_ttl: if tiered {
                config.l1.negative_ttl.0
            } else {
                Duration::ZERO
            },
            max_value_bytes: usize::try_from(config.limits.max_value_bytes.0).unwrap_or(usize::MAX),
        }
    }
}

pub struct TieredCache {
    l1: L1,
    l2: Option<Arc<L2>>,
    /// How long L1 keeps what it reads from L2; replaced on reload.
    ttl: ArcSwap<TtlPolicy>,
    /// How long past its TTL an entry is answered at once while it is refreshed.
    stale_while_revalidate: Duration,
    refresher: refresh::Refresher,
    epochs: Epochs,
    /// The invalidation bus, when L2 is shared with other instances.
    bus: Option<Arc<bus::Bus>>,
    hot: hot::HotKeys,
    /// Key prefixes read through to origins (`[[origins.loaders]]`).
    loaders: Loaders,
    /// Where purges heard on the bus go (set once, by the server, when routes exist).
    purge_hook: std::sync::OnceLock<PurgeHook>,
    metrics: Arc<Metrics>,
}

impl TieredCache {
    /// Builds the tiers from config. `memory` is what this process may use, for "NN%" budgets.
    pub fn new(config: &Config, memory: u64, metrics: Arc<Metrics>) -> Result<Self, L2Error> {
        metrics.l2_configured.set(i64::from(!config.standalone()));
        let l2 = if config.standalone() {
            None
        } else {
            Some(Arc::new(L2::new(&config.l2, metrics.clone())?))
        };
        let capacity = config.l1.capacity.resolve(memory);
        metrics
            .l1_capacity_bytes
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        let listen = match config.l2.invalidation {
            // On a cluster, sharded: see `bus`.
            Invalidation::Pubsub if !config.l2.cluster_nodes.is_empty() => {
                Some(bus::Listen::Sharded(config.l2.invalidation_channel.clone()))
            }
            Invalidation::Pubsub => {
                Some(bus::Listen::Channel(config.l2.invalidation_channel.clone()))
            }
            Invalidation::Tracking => {
                Some(bus::Listen::Tracking(config.l2.tracking_prefixes.clone()))
            }
            Invalidation::Off => None,
        };
        let bus = listen
            .filter(|_| l2.is_some())
            .map(|listen| Arc::new(bus::Bus::new(listen, config.l2.invalidation_queue)));
        // The stale and negative-entry policies apply in tiered mode only: in standalone mode
        // L1 is the store, and a TTL or an absence is the key's own.
        let tiered = |d: Duration| if l2.is_some() { d } else { Duration::ZERO };
        let stale_while_revalidate = tiered(config.l1.stale_while_revalidate.0);
        Ok(Self {
            bus,
            hot: hot::HotKeys::new(config.admin.hot_keys, config.admin.hot_keys_sample),
            // Entries are kept past their TTL for whichever use of stale entries is longer.
            l1: L1::new(
                capacity,
                l2.is_none(),
                tiered(config.l1.stale_if_error.0).max(stale_while_revalidate),
            ),
            stale_while_revalidate,
            refresher: refresh::Refresher::default(),
            ttl: ArcSwap::from_pointee(TtlPolicy::new(config, l2.is_some())),
            l2,
            epochs: Epochs::new(),
            loaders: Loaders::default(),
            purge_hook: std::sync::OnceLock::new(),
            metrics,
        })
    }

    /// Hands purges heard on the bus to `hook` (set once; later calls are ignored).
    pub fn on_purge(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        let _ = self.purge_hook.set(Box::new(hook));
    }

    /// Tells every instance, this one included, to purge `url` from its proxy routes: a
    /// one-key announcement on the invalidation bus. Nothing without L2 or a bus (a lost
    /// announcement is logged: other instances keep the URL until it expires).
    pub async fn announce_purge(&self, url: &str) {
        let (Some(l2), Some(_)) = (&self.l2, &self.bus) else {
            return;
        };
        let key = [PURGE_MARK, url.as_bytes()].concat();
        if let Err(e) = l2.announce_key(&key).await {
            tracing::warn!(error = %e, "a purge was not announced to other instances");
        }
    }

    /// A key heard on the bus: a purge for the proxy routes, or a key to evict.
    async fn heard(&self, key: &[u8]) {
        match key.strip_prefix(PURGE_MARK) {
            Some(url) => {
                if let (Some(hook), Ok(url)) = (self.purge_hook.get(), std::str::from_utf8(url)) {
                    hook(url);
                }
            }
            None => self.invalidate(key).await,
        }
    }

    /// Reads keys under these prefixes through to their origins.
    pub fn with_loaders(mut self, loaders: Loaders) -> Self {
        self.loaders = loaders;
        self
    }

    /// Applies the TTL keys of a reloaded config to what L2 reads from now on.
    pub fn set_ttl_policy(&self, config: &Config) {
        self.ttl
            .store(Arc::new(TtlPolicy::new(config, self.l2.is_some())));
    }

    /// The hottest keys read lately (single and batch reads, both doors).
    pub fn hot_keys(&self) -> &hot::HotKeys {
        &self.hot
    }

    pub fn l2(&self) -> Option<&Arc<L2>> {
        self.l2.as_ref()
    }

    /// Whether an L1 entry may be served without asking L2: always, unless the invalidation
    /// bus is configured and not heard right now (writes elsewhere may be missed). While L2
    /// itself is down nobody can write through it, so L1 is served then too (stale-if-error).
    fn l1_trusted(&self) -> bool {
        match (&self.bus, &self.l2) {
            (Some(bus), Some(l2)) => bus.is_subscribed() || !l2.is_up(),
            _ => true,
        }
    }

    /// Empties L1, and makes loads in flight drop what they read (it may predate the flush).
    fn flush_l1(&self) {
        self.epochs.bump_all();
        self.l1.invalidate_all();
        self.metrics.bus_flushes.inc();
    }

    /// Reads a key: L1, then L2 (one coalesced load per key). An absent key is remembered
    /// only with `l1.negative_ttl`; an entry past its TTL is handled by `read_stale`.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Hit>, L2Error> {
        self.read(key, false)
            .await
            .expect("a read not deferred is answered")
    }

    /// `get` for a door that sends L1's misses to Redis itself, with a run of forwarded
    /// commands (`forward::Run::push_read`): None, and nothing read, when L1 holds nothing
    /// for `key` and may be trusted. Those misses are not coalesced with other clients' as
    /// `get`'s are: Redis answers a GET about as cheaply as a coalesced load would cost here.
    pub async fn get_held(&self, key: &[u8]) -> Option<Result<Option<Hit>, L2Error>> {
        self.read(key, true).await
    }

    #[inline(always)]
    async fn read(&self, key: &[u8], defer: bool) -> Option<Result<Option<Hit>, L2Error>> {
        self.hot.read(key);
        let trusted = self.l1_trusted();
        if trusted {
            if let Some(e) = self.l1.get(key).await {
                if self.l1.is_fresh(&e) {
                    return Some(Ok(self.answer(e, Tier::L1)));
                }
                return Some(placement::boxed(|| self.read_stale(key, e)).await);
            }
            // A loader's keys are read here: Redis alone would answer nil.
            if defer && self.l2.is_some() && self.loaders.find(key).is_none() {
                self.metrics.miss(Tier::L1);
                return None;
            }
        }
        // Boxed: every caller's future embeds this one, and the L1 hit above is the only
        // path that must cost nothing; the rest waits on L2 anyway. Inline, the L2 load made
        // this future 5.8 KB, copied into every request's future.
        Some(placement::boxed(|| self.get_past_l1(key, trusted)).await)
    }

    /// `get` once L1 had no fresh entry (or may not be trusted).
    async fn get_past_l1(&self, key: &[u8], trusted: bool) -> Result<Option<Hit>, L2Error> {
        if !trusted {
            let key = Bytes::copy_from_slice(key);
            let mut one = self.get_many_untrusted(std::slice::from_ref(&key)).await?;
            return Ok(one.pop().flatten());
        }
        self.metrics.miss(Tier::L1);
        self.load_one(key).await
    }

    /// A key L1 has no fresh entry for, read through: L2, then its loader's origin; one load
    /// per key however many ask at once.
    async fn load_one(&self, key: &[u8]) -> Result<Option<Hit>, L2Error> {
        let loader = self.loaders.find(key);
        if self.l2.is_none() && loader.is_none() {
            return Ok(None);
        }
        let epoch = self.epochs.read(key);
        let owned = Bytes::copy_from_slice(key);
        let loaded = self
            .l1
            .get_or_load(owned.clone(), self.fetch(owned, loader))
            .await;
        self.drop_if_raced(key, epoch).await;
        match loaded {
            Ok(e) => {
                let tier = e.tier();
                if tier == Tier::Origin && self.l2.is_some() {
                    self.metrics.miss(Tier::L2);
                }
                Ok(self.answer(e, tier))
            }
            Err(miss) => match &*miss {
                LoadMiss::Absent => {
                    if self.l2.is_some() {
                        self.metrics.miss(Tier::L2);
                    }
                    if loader.is_some() {
                        self.metrics.miss(Tier::Origin);
                    }
                    Ok(None)
                }
                LoadMiss::Passed(value) => {
                    if self.l2.is_some() {
                        self.metrics.miss(Tier::L2);
                    }
                    self.metrics.hit(Tier::Origin);
                    Ok(Some(Hit {
                        value: value.clone(),
                        tier: Tier::Origin,
                    }))
                }
                LoadMiss::Failed(e) => Err(e.clone()),
            },
        }
    }

    /// What L2 has for `key`, then, if it has nothing and a loader's prefix starts the key,
    /// what the origin says: the entry to keep in L1, or why there is none. A value loaded
    /// from an origin is kept in L2 too, so every instance shares it.
    async fn fetch(&self, key: Bytes, loader: Option<&Loader>) -> Result<Entry, LoadMiss<L2Error>> {
        if let Some(l2) = &self.l2 {
            match l2.get(key.clone()).await {
                Ok(Some((value, ttl))) => {
                    let e = Entry::new(value, Some(self.l1_ttl(ttl)));
                    // A loader's key read back from L2 may answer stale as if loaded here.
                    let grace = loader.map_or(Duration::ZERO, |l| l.stale_if_error);
                    return Ok(e.with_grace(grace));
                }
                Ok(None) => {}
                Err(e) => return Err(LoadMiss::Failed(e)),
            }
        }
        let Some(loader) = loader else {
            return self.negative_entry().ok_or(LoadMiss::Absent);
        };
        let max = self.ttl.load().max_value_bytes;
        let shared = match &self.l2 {
            Some(l2) => loader.load_shared(l2, &key, max).await,
            None => loader.load(&key, max).await.map(Shared::Loaded),
        };
        let loaded = match shared.map_err(LoadMiss::Failed)? {
            Shared::Found(value, ttl) => {
                let e = Entry::new(value, Some(self.l1_ttl(ttl)));
                return Ok(e.with_grace(loader.stale_if_error));
            }
            Shared::Loaded(loaded) => loaded,
        };
        match loader.entry(&loaded, |ttl| self.l1_ttl(Some(ttl))) {
            Some(e) => Ok(e),
            None => match loaded {
                Loaded::Value(value, None) => Err(LoadMiss::Passed(value)),
                _ => Err(LoadMiss::Absent),
            },
        }
    }

    /// What an entry from `tier` answers, counted: its value, or None for a negative entry.
    fn answer(&self, e: Entry, tier: Tier) -> Option<Hit> {
        if e.absent {
            if tier == Tier::L1 {
                self.metrics.l1_negative_hits.inc();
            } else {
                self.metrics.miss(tier);
            }
            return None;
        }
        self.metrics.hit(tier);
        Some(Hit {
            value: e.value,
            tier,
        })
    }

    /// A negative entry to store for a key L2 does not have, when `l1.negative_ttl` is set.
    fn negative_entry(&self) -> Option<Entry> {
        let negative_ttl = self.ttl.load().negative_ttl;
        (!negative_ttl.is_zero()).then(|| Entry::absent(negative_ttl))
    }

    /// A read that found only a stale L1 entry: answered with it at once when it is within
    /// `l1.stale_while_revalidate` (the key is refreshed in the background), else read again
    /// from L2 now (`revalidate`), the stale entry answering only if L2 cannot.
    async fn read_stale(&self, key: &[u8], stale: Entry) -> Result<Option<Hit>, L2Error> {
        if self.l1.within(&stale, self.stale_while_revalidate) {
            self.refresher.schedule(key);
            return Ok(self.answer(stale, Tier::L1));
        }
        let (e, tier, _) = self.revalidate(key).await?;
        if tier == Tier::L1 && !self.l1.is_fresh(&e) {
            self.metrics.l1_stale_served.inc();
        }
        Ok(self.answer(e, tier))
    }

    /// Reads `key` from L2 and stores what it says in L1; if L2 cannot be reached, the stale
    /// entry (if still held) is the answer. Concurrent callers for the key run one at a time
    /// (moka's compute), and those after the first find the entry fresh again and ask L2
    /// nothing: the third value says whether this call asked L2 (an error always did).
    async fn revalidate(&self, key: &[u8]) -> Result<(Entry, Tier, bool), L2Error> {
        let loader = self.loaders.find(key);
        let epoch = self.epochs.read(key);
        let owned = Bytes::copy_from_slice(key);
        let answer = self
            .l1
            .compute_with(owned.clone(), |cur| async move {
                match cur {
                    Some(e) if self.l1.is_fresh(&e) => (Op::Nop, Ok((e, Tier::L1, false))),
                    cur => match self.fetch(owned, loader).await {
                        Ok(e) => {
                            let tier = e.tier();
                            (Op::Put(e.clone()), Ok((e, tier, true)))
                        }
                        Err(LoadMiss::Absent) => {
                            let absent = Entry::absent(Duration::ZERO);
                            (Op::Remove, Ok((absent, Tier::L2, true)))
                        }
                        Err(LoadMiss::Passed(value)) => {
                            let passed = Entry::new(value, None).from_origin();
                            (Op::Remove, Ok((passed, Tier::Origin, true)))
                        }
                        Err(LoadMiss::Failed(e)) => match cur {
                            Some(stale) if e.is_outage() => (Op::Nop, Ok((stale, Tier::L1, true))),
                            _ => (Op::Nop, Err(e)),
                        },
                    },
                }
            })
            .await
            .expect("an entry was found, so L1 is enabled");
        self.drop_if_raced(key, epoch).await;
        answer
    }

    /// A read while L1 cannot be trusted (the bus is down): L2 answers; when it cannot, L1
    /// answers, and only if it holds every key (an absent key there says nothing about L2).
    /// Nothing is stored in L1: it will be flushed when the bus is back.
    async fn get_many_untrusted(&self, keys: &[Bytes]) -> Result<Vec<Option<Hit>>, L2Error> {
        let l2 = self.l2.as_ref().expect("only tiered mode distrusts L1");
        let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        match l2.get_many(&wanted).await {
            Ok(fetched) => Ok(fetched
                .into_iter()
                .map(|f| match f {
                    Some((value, _)) => {
                        self.metrics.hit(Tier::L2);
                        Some(Hit {
                            value,
                            tier: Tier::L2,
                        })
                    }
                    None => {
                        self.metrics.miss(Tier::L2);
                        None
                    }
                })
                .collect()),
            Err(e) if e.is_outage() => {
                let mut held = Vec::with_capacity(keys.len());
                for k in keys {
                    held.push(self.l1.get(k).await);
                }
                self.answer_stale(held).ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads many keys: L1 for each, then every L1 miss from L2 in one round trip.
    /// The result is in the order of `keys`.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Hit>>, L2Error> {
        for k in keys {
            self.hot.read(k);
        }
        if !self.l1_trusted() {
            return self.get_many_untrusted(keys).await;
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        // Stale entries of the missing keys, answered if L2 cannot be reached.
        let mut stale = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.l1.get(k).await {
                Some(e) if self.l1.is_fresh(&e) => out.push(self.answer(e, Tier::L1)),
                Some(e) if self.l1.within(&e, self.stale_while_revalidate) => {
                    self.refresher.schedule(k);
                    out.push(self.answer(e, Tier::L1));
                }
                held => {
                    self.metrics.miss(Tier::L1);
                    out.push(None);
                    missing.push(i);
                    stale.push(held);
                }
            }
        }
        if !self.loaders.is_empty() {
            self.read_through(keys, &mut missing, &mut stale, &mut out)
                .await?;
        }
        if self.l2.is_none() || missing.is_empty() {
            return Ok(out);
        }
        let wanted: Vec<Bytes> = missing.iter().map(|&i| keys[i].clone()).collect();
        let loaded = match self.load_many(&wanted).await {
            Ok(loaded) => loaded,
            Err(e) if e.is_outage() => {
                let answers = self.answer_stale(stale).ok_or(e)?;
                for (&i, a) in missing.iter().zip(answers) {
                    out[i] = a;
                }
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        for (&i, entry) in missing.iter().zip(loaded) {
            match entry {
                Some(entry) => out[i] = self.answer(entry, Tier::L2),
                None => self.metrics.miss(Tier::L2),
            }
        }
        Ok(out)
    }

    /// The part of a batch read under loaders' prefixes: each such key of `missing` is read
    /// through on its own (`load_one`, all at once), answered into `out` and taken out of
    /// `missing` and `stale`. A key whose origin fails answers its stale entry when L1 holds
    /// one; otherwise the batch fails, as it does when L2 fails.
    async fn read_through(
        &self,
        keys: &[Bytes],
        missing: &mut Vec<usize>,
        stale: &mut Vec<Option<Entry>>,
        out: &mut [Option<Hit>],
    ) -> Result<(), L2Error> {
        let (through, rest): (Vec<_>, Vec<_>) = missing
            .iter()
            .copied()
            .zip(std::mem::take(stale))
            .partition(|(i, _)| self.loaders.find(&keys[*i]).is_some());
        (*missing, *stale) = rest.into_iter().unzip();
        if through.is_empty() {
            return Ok(());
        }
        let loads = through.iter().map(|(i, _)| self.load_one(&keys[*i]));
        let loaded = futures_util::future::join_all(loads).await;
        for ((i, held), result) in through.into_iter().zip(loaded) {
            out[i] = match (result, held) {
                (Ok(hit), _) => hit,
                (Err(e), Some(held)) if e.is_outage() => {
                    self.metrics.l1_stale_served.inc();
                    self.answer(held, Tier::L1)
                }
                (Err(e), _) => return Err(e),
            };
        }
        Ok(())
    }

    /// Reads `keys` from L2 in one round trip (per slot) and stores each in L1 (a negative
    /// entry for an absent key, when configured), with the epoch check of a read-through
    /// load. What was stored, in the order of `keys` (None: absent, nothing stored).
    async fn load_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Entry>>, L2Error> {
        let l2 = self.l2.as_ref().expect("only tiered mode loads from L2");
        let epochs: Vec<u64> = keys.iter().map(|k| self.epochs.read(k)).collect();
        let wanted: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
        let fetched = l2.get_many(&wanted).await?;
        let mut out = Vec::with_capacity(keys.len());
        for ((key, fetched), epoch) in keys.iter().zip(fetched).zip(epochs) {
            let entry = match fetched {
                Some((value, ttl)) => Some(Entry::new(value, Some(self.l1_ttl(ttl)))),
                None => self.negative_entry(),
            };
            if let Some(entry) = &entry {
                self.l1.insert(key.clone(), entry.clone()).await;
                self.drop_if_raced(key, epoch).await;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Loads `keys` into L1 without counting them as reads (no hit or miss counters, no hot
    /// keys): the warm-up. How many were found in L2.
    pub async fn warm(&self, keys: &[Bytes]) -> Result<usize, L2Error> {
        if !self.l1.enabled() || keys.is_empty() {
            return Ok(0);
        }
        let loaded = self.load_many(keys).await?;
        Ok(loaded.iter().flatten().filter(|e| !e.absent).count())
    }

    /// Answers from what L1 holds (stale entries included) for keys L2 could not be asked
    /// about: only if it holds every one of them, since an absent key there says nothing
    /// about L2. None otherwise.
    fn answer_stale(&self, held: Vec<Option<Entry>>) -> Option<Vec<Option<Hit>>> {
        let held: Vec<Entry> = held.into_iter().collect::<Option<_>>()?;
        Some(
            held.into_iter()
                .map(|e| {
                    if !self.l1.is_fresh(&e) {
                        self.metrics.l1_stale_served.inc();
                    }
                    self.answer(e, Tier::L1)
                })
                .collect(),
        )
    }

    /// Writes a key (TTL None: no expiry). L2 must accept it before L1 changes.
    pub async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), L2Error> {
        self.set_with(key, value, SetOptions::expiring(ttl))
            .await
            .map(|_| ())
    }

    /// SET with Redis' options (NX/XX, GET, EX/PX/EXAT/PXAT/KEEPTTL), with Redis' answers.
    pub async fn set_with(
        &self,
        key: Bytes,
        value: Bytes,
        opts: SetOptions,
    ) -> Result<SetOutcome, L2Error> {
        match &self.l2 {
            Some(l2) => {
                let (outcome, batch) = l2.set_with(&key, &value, opts).await?;
                self.invalidate(&key).await;
                l2.evicted(batch);
                Ok(outcome)
            }
            None => {
                let now = Instant::now();
                let value = l1::own(&value);
                let outcome = self.in_store(key, |cur| {
                    let old = cur.map(|e| e.value.clone());
                    let write = match opts.cond {
                        SetCond::Always => true,
                        SetCond::IfAbsent => cur.is_none(),
                        SetCond::IfPresent => cur.is_some(),
                    };
                    let outcome = match (opts.get, write) {
                        (true, _) => SetOutcome::Old(old),
                        (false, true) => SetOutcome::Written,
                        (false, false) => SetOutcome::NotWritten,
                    };
                    if !write {
                        return (Op::Nop, outcome);
                    }
                    let expires_at = match opts.ttl {
                        SetTtl::Clear => None,
                        SetTtl::Keep => cur.and_then(|e| e.expires_at),
                        SetTtl::In(d) => Some(now + d),
                        SetTtl::At(t) => Some(instant_at(now, t)),
                    };
                    (Op::Put(Entry::at(value, expires_at)), outcome)
                });
                Ok(outcome.await)
            }
        }
    }

    /// SETs a client pipelined, each answered as `set_with` would answer it, in order: one L2
    /// round trip for them all where L2 allows it (`L2::set_each`).
    pub async fn set_each(
        &self,
        items: Vec<(Bytes, Bytes, SetOptions)>,
    ) -> Vec<Result<SetOutcome, L2Error>> {
        let Some(l2) = &self.l2 else {
            let mut out = Vec::with_capacity(items.len());
            for (k, v, opts) in items {
                out.push(self.set_with(k, v, opts).await);
            }
            return out;
        };
        match l2.set_each(&items).await {
            Ok((outcomes, batches)) => {
                for ((k, _, _), outcome) in items.iter().zip(&outcomes) {
                    if outcome.is_ok() {
                        self.invalidate(k).await;
                    }
                }
                // A SET whose reply could not be read may still have been written: its echo
                // evicts it (the batches are dropped).
                if outcomes.iter().all(Result::is_ok) {
                    for batch in batches {
                        l2.evicted(batch);
                    }
                }
                outcomes
            }
            Err(e) => vec![Err(e); items.len()],
        }
    }

    /// Writes many keys in one L2 round trip.
    pub async fn set_many(&self, items: Vec<Item>) -> Result<(), L2Error> {
        match &self.l2 {
            None => {
                for (k, v, ttl) in items {
                    self.set(k, v, ttl).await?;
                }
            }
            Some(l2) => {
                l2.set_many(&items).await?;
                for (k, _, _) in &items {
                    self.invalidate(k).await;
                }
            }
        }
        Ok(())
    }

    /// Deletes a key; whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, L2Error> {
        self.delete_many(std::slice::from_ref(&Bytes::copy_from_slice(key)))
            .await
            .map(|n| n > 0)
    }

    /// Deletes keys; how many existed (a key named twice counts once, as in Redis).
    pub async fn delete_many(&self, keys: &[Bytes]) -> Result<u64, L2Error> {
        match &self.l2 {
            None => {
                let mut n = 0;
                for k in keys {
                    n += u64::from(self.l1.remove(k.clone()).await);
                }
                Ok(n)
            }
            Some(l2) => {
                let n = l2.del(keys).await?;
                for k in keys {
                    self.invalidate(k).await;
                }
                Ok(n)
            }
        }
    }

    /// How many of `keys` exist (a key named twice counts twice, as in Redis). Asks L2,
    /// where one is configured: L1 may hold a key L2 has already expired or lost.
    pub async fn exists(&self, keys: &[Bytes]) -> Result<u64, L2Error> {
        match &self.l2 {
            None => Ok(keys.iter().filter(|k| self.l1.contains(k)).count() as u64),
            Some(l2) => l2.exists(keys).await,
        }
    }

    /// INCRBY: adds `delta` to the integer stored at `key` (absent counts as 0) and returns
    /// the result. In Redis when there is one, so counters are atomic across instances;
    /// the key keeps its TTL.
    pub async fn incr_by(&self, key: Bytes, delta: i64) -> Result<i64, L2Error> {
        if let Some(l2) = &self.l2 {
            let (n, batch) = l2.incr_by(&key, delta).await?;
            self.invalidate(&key).await;
            l2.evicted(batch);
            return Ok(n);
        }
        let result = self.in_store(key, |cur| {
            let current = match cur {
                None => 0,
                Some(e) => match parse_counter(&e.value) {
                    Some(n) => n,
                    None => return (Op::Nop, Err(L2Error::store("ERR", NOT_AN_INTEGER))),
                },
            };
            let Some(next) = current.checked_add(delta) else {
                return (Op::Nop, Err(L2Error::store("ERR", INCR_OVERFLOW)));
            };
            let value = Bytes::from(itoa::Buffer::new().format(next).to_owned());
            let expires_at = cur.and_then(|e| e.expires_at);
            (Op::Put(Entry::at(value, expires_at)), Ok(next))
        });
        result.await
    }

    /// PEXPIRE: gives the key a TTL (`ttl_ms` <= 0 deletes it); whether it was applied.
    pub async fn expire(&self, key: Bytes, ttl_ms: i64, cond: ExpireCond) -> Result<bool, L2Error> {
        if let Some(l2) = &self.l2 {
            let (applied, batch) = l2.expire(&key, ttl_ms, cond).await?;
            self.invalidate(&key).await;
            l2.evicted(batch);
            return Ok(applied);
        }
        let now = Instant::now();
        let result = self.in_store(key, |cur| {
            let Some(e) = cur else {
                return (Op::Nop, false);
            };
            let new = Duration::from_millis(ttl_ms.max(0) as u64);
            let old = e.ttl(now);
            let applies = match cond {
                ExpireCond::Always => true,
                ExpireCond::NoTtl => old.is_none(),
                ExpireCond::HasTtl => old.is_some(),
                ExpireCond::Longer => old.is_some_and(|old| new > old),
                ExpireCond::Shorter => old.is_none_or(|old| new < old),
                ExpireCond::HasTtlShorter => old.is_some_and(|old| new < old),
            };
            if !applies {
                (Op::Nop, false)
            } else if ttl_ms <= 0 {
                (Op::Remove, true)
            } else {
                (Op::Put(Entry::at(e.value.clone(), Some(now + new))), true)
            }
        });
        Ok(result.await)
    }

    /// PTTL, from Redis when there is one (L1 only knows its own, shorter, lifetime).
    pub async fn ttl(&self, key: &[u8]) -> Result<Ttl, L2Error> {
        if let Some(l2) = &self.l2 {
            return l2.ttl(key).await;
        }
        Ok(match self.l1.get(key).await {
            None => Ttl::Missing,
            Some(e) => e.ttl(Instant::now()).map_or(Ttl::Persistent, Ttl::Left),
        })
    }

    /// A read-modify-write of one key in the memory store (standalone mode), serialised
    /// with every other write of that key.
    async fn in_store<R>(&self, key: Bytes, f: impl FnOnce(Option<&Entry>) -> (Op<Entry>, R)) -> R {
        self.l1
            .compute(key, f)
            .await
            .expect("standalone mode always has L1")
    }

    /// Forwards a run of commands to L2 (see `forward`, and `cluster` for a cluster), each
    /// reply as Redis sent it, in the client's protocol (`resp3`). What the run writes leaves
    /// L1 once Redis has answered, failed or not: a write may have been applied either way.
    pub async fn forward(
        &self,
        run: &mut forward::Run,
        resp3: bool,
        limit: usize,
    ) -> Result<forward::Replies, L2Error> {
        let Some(l2) = self.l2.as_ref().filter(|l2| l2.forwards()) else {
            return Err(L2Error::store(
                "ERR",
                "forwarding is not available over TLS yet",
            ));
        };
        if !self.ttl.load().negative_ttl.is_zero() {
            run.with_typed();
        }
        for read in &mut run.reads {
            read.epoch = self.epochs.read(&read.key);
        }
        let result = if run.is_void() {
            Ok((Vec::new(), echo::Batch::NONE))
        } else {
            l2.forward(run, resp3, limit).await
        };
        match run.written() {
            Err(()) => self.flush_l1(),
            Ok(keys) => {
                for key in keys {
                    self.invalidate(key).await;
                }
            }
        }
        // Evicted after Redis answered (not so on an error: the write may land later).
        let result = result.map(|(replies, batch)| {
            l2.evicted(batch);
            replies
        });
        match result {
            Ok(replies) if !run.reads.is_empty() => Ok(self.store_reads(run, replies).await),
            result => result,
        }
    }

    /// Stores in L1 what the run's GETs read (`Run::push_read`), for as long as the PTTL
    /// after each says, and takes those PTTL replies out: the client did not ask for them.
    async fn store_reads(&self, run: &forward::Run, replies: forward::Replies) -> forward::Replies {
        let mut out = Vec::with_capacity(replies.len() - run.reads.len());
        let mut reads = run.reads.iter().peekable();
        for (i, answer) in replies.into_iter().enumerate() {
            let Some(read) = reads.next_if(|r| r.at + 1 == i) else {
                out.push(answer);
                continue;
            };
            let (Some(Reply::Raw(got)), Reply::Raw(pttl)) = (out.last(), answer) else {
                continue;
            };
            let entry = match (reply::bulk(got), reply::integer(&pttl)) {
                (Some(Some(value)), Some(pttl)) => {
                    self.metrics.hit(Tier::L2);
                    Entry::new(l1::own(&value), Some(self.l1_ttl(ttl_from_pttl(pttl))))
                }
                (Some(None), _) => {
                    self.metrics.miss(Tier::L2);
                    match self.negative_entry() {
                        Some(absent) => absent,
                        None => continue,
                    }
                }
                // An error (WRONGTYPE), or a PTTL that is not one: nothing to keep.
                _ => continue,
            };
            self.l1.insert(read.key.clone(), entry).await;
            self.drop_if_raced(&read.key, read.epoch).await;
        }
        out
    }

    /// L1 entries and weighted bytes, exact (runs moka's pending housekeeping first).
    pub async fn l1_usage(&self) -> (u64, u64) {
        self.l1.usage().await
    }

    /// Refreshes the L1 gauges; called when metrics are scraped rather than per request.
    pub async fn publish_usage(&self) {
        let (entries, bytes) = self.l1.usage().await;
        self.metrics.l1_entries.set(entries as i64);
        self.metrics.l1_bytes.set(bytes as i64);
        let (top1, top) = self.hot.shares().unwrap_or((0.0, 0.0));
        self.metrics.hot_key_share.set(top1);
        self.metrics.hot_keys_share.set(top);
    }

    /// After an L2 write: mark the key written, then drop it from L1. The order matters;
    /// see `drop_if_raced`.
    async fn invalidate(&self, key: &[u8]) {
        self.epochs.bump(key);
        self.l1.invalidate(key).await;
    }

    /// A load that began before a write may have read the old value and stored it after the
    /// write's invalidation. The write bumps the key's epoch before invalidating, so either
    /// the loader sees the bump here and drops what it stored, or the bump (and therefore the
    /// invalidation) comes after the store and removes it.
    async fn drop_if_raced(&self, key: &[u8], epoch: u64) {
        if self.epochs.read(key) != epoch {
            self.l1.invalidate(key).await;
        }
    }

    /// How long L1 keeps a value read from L2: its L2 TTL capped by `l1.max_ttl`, less the
    /// jitter.
    fn l1_ttl(&self, l2_ttl: Option<Duration>) -> Duration {
        let policy = self.ttl.load();
        let ttl = l2_ttl.map_or(policy.max_ttl, |t| t.min(policy.max_ttl));
        jittered(ttl, policy.jitter, fastrand::f64())
    }
}

/// `ttl` shortened by up to `jitter` of itself (`r` in 0..1 picks how much). Never longer: an
/// L1 copy must not outlive the key in L2.
fn jittered(ttl: Duration, jitter: f64, r: f64) -> Duration {
    ttl.mul_f64(1.0 - jitter * r)
}

/// A value INCR accepts: a decimal i64 as Redis writes one (no spaces, no '+', no leading
/// zeros beyond "0", at most 20 bytes).
fn parse_counter(v: &[u8]) -> Option<i64> {
    pipe::decimal(v)
}

/// The monotonic instant matching wall-clock time `at` (now, when `at` is past).
fn instant_at(now: Instant, at: SystemTime) -> Instant {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jitter_only_shortens_and_spreads() {
        let t = Duration::from_secs(100);
        assert_eq!(jittered(t, 0.1, 0.0), t);
        assert_eq!(jittered(t, 0.1, 1.0), Duration::from_secs(90));
        assert_eq!(jittered(t, 0.0, 0.7), t);
        let cfg = Config {
            l2: crate::config::L2Config {
                url: "redis://127.0.0.1:1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let cache = TieredCache::new(&cfg, 1 << 30, Arc::new(Metrics::new())).unwrap();
        let l2_ttl = Duration::from_secs(30); // under l1.max_ttl (60s)
        let ttls: Vec<Duration> = (0..100).map(|_| cache.l1_ttl(Some(l2_ttl))).collect();
        assert!(ttls
            .iter()
            .all(|d| *d <= l2_ttl && *d >= Duration::from_secs(27)));
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(
            distinct.len() > 50,
            "lifetimes are spread: {}",
            distinct.len()
        );
    }

    #[tokio::test]
    async fn stored_values_do_not_pin_the_request_buffer() {
        let cache =
            TieredCache::new(&Config::default(), 1 << 30, Arc::new(Metrics::new())).unwrap();
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let (key, value) = (buffer.slice(0..8), buffer.slice(8..18));
        cache.set(key.clone(), value, None).await.unwrap();
        let stored = cache.get(&key).await.unwrap().unwrap().value;
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&stored.as_ptr()),
            "the value was copied out of the 64KiB buffer"
        );
        assert_eq!(stored.len(), 10);
    }

    #[test]
    fn counters_parse_as_redis_reads_them() {
        assert_eq!(parse_counter(b"42"), Some(42));
        assert_eq!(parse_counter(b"-7"), Some(-7));
        assert_eq!(parse_counter(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1.5",
            b"abc",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_counter(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

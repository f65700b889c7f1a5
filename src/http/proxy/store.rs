//! A route's cache: stored answers by URL, each URL holding a few variants (one per set of
//! request headers its `Vary` names), in a moka cache of the route's own weighed in bytes.
//!
//! The key is the path and query only. The Host the client sent is not part of it: a route
//! sends every request to one origin with the upstream's own Host, so the answer cannot
//! depend on the client's Host (a `Vary: Host` answer still keys by it, through Vary).
//!
//! What is stored is plain data (status, headers, body bytes, wall-clock times and the
//! `CachePolicy`, which serialises with http-cache-semantics' `serde` feature), so the same
//! form can later be written to L2 for instances to share.

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_cache_semantics::{BeforeRequest, CachePolicy};
use std::{
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant, SystemTime},
};

/// Variants kept per URL: enough for a few languages or encodings; past it the oldest goes.
/// A `Vary` on a header with many values (User-Agent) would otherwise fill the cache with
/// copies of one URL.
pub const MAX_VARIANTS: usize = 8;

/// One stored answer.
#[derive(Debug)]
pub struct Stored {
    /// What RFC 9111 says of it: Vary matching, Age, revalidation (`after_response`).
    pub policy: CachePolicy,
    pub status: StatusCode,
    /// The origin's headers, hop-by-hop ones removed; Age is set when it is served.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Fresh until then: the policy's lifetime, less the Age it came with, within the
    /// route's `min_ttl` and `max_ttl`.
    pub fresh_until: SystemTime,
    /// `min_ttl` made it fresh longer than its headers did: fresh until `fresh_until` even
    /// though the policy calls it stale.
    pub floored: bool,
    /// RFC 5861: how long past `fresh_until` it may answer while one refresh runs...
    pub stale_while_revalidate: Duration,
    /// ...and while the origin fails.
    pub stale_if_error: Duration,
    /// Kept until then: stale but still useful (for a 304, or the two windows above).
    pub keep_until: SystemTime,
    /// A background refresh of it is running (stale-while-revalidate starts one only).
    pub refreshing: AtomicBool,
}

impl Stored {
    /// Bytes it takes, roughly: body, headers, and a fixed share for the rest.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers * 2 + 512) as u64
    }

    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }
}

/// Every variant of one URL.
#[derive(Debug, Default)]
pub struct Variants {
    pub all: Vec<Arc<Stored>>,
}

impl Variants {
    fn weight(&self, key: &str) -> u32 {
        let w: u64 = self.all.iter().map(|s| s.weight()).sum::<u64>() + key.len() as u64;
        w.min(u64::from(u32::MAX)) as u32
    }

    fn keep_until(&self) -> SystemTime {
        self.all
            .iter()
            .map(|s| s.keep_until)
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Drops a URL once none of its variants is of use any more.
struct KeepUntil;

impl moka::Expiry<String, Arc<Variants>> for KeepUntil {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Variants>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(
            value
                .keep_until()
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        )
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Arc<Variants>,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, now)
    }
}

/// What the cache holds for a request.
pub enum Lookup {
    /// A fresh variant: answer it.
    Fresh(Arc<Stored>),
    /// A matching variant past its freshness (or one that must be revalidated).
    Stale(Arc<Stored>),
    Miss,
}

pub struct Store {
    cache: moka::sync::Cache<String, Arc<Variants>>,
}

impl Store {
    pub fn new(capacity: u64) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|k: &String, v: &Arc<Variants>| v.weight(k))
                .expire_after(KeepUntil)
                .build(),
        }
    }

    /// The fresh answer for `key` when neither side asks for more than its lifetime: the
    /// client sent no Cache-Control or Pragma and the stored answer has no Vary. Then
    /// `lookup` (http-cache-semantics' `before_request`, a third of a hit's cost: it parses
    /// the request's directives and matches Vary) would say Fresh exactly when the lifetime
    /// computed at store time has not run out, since that lifetime never ends after the
    /// policy's own unless `min_ttl` floored it, and a floor is honoured there too. None: ask
    /// `lookup`.
    pub fn fresh(&self, key: &str, client: &HeaderMap) -> Option<Arc<Stored>> {
        if client.contains_key(header::CACHE_CONTROL) || client.contains_key(header::PRAGMA) {
            return None;
        }
        let variants = self.cache.get(key)?;
        let v = variants.all.first()?;
        (!v.headers.contains_key(header::VARY) && SystemTime::now() < v.fresh_until)
            .then(|| v.clone())
    }

    /// The variant of `key` that `request` (as the cache sees it: a GET, Host removed)
    /// selects, and whether it is fresh. `no_cache`: the client asked for revalidation.
    pub fn lookup(&self, key: &str, request: &http::Request<()>, no_cache: bool) -> Lookup {
        let Some(variants) = self.cache.get(key) else {
            return Lookup::Miss;
        };
        let now = SystemTime::now();
        for v in &variants.all {
            let policy_fresh = match v.policy.before_request(request, now) {
                BeforeRequest::Fresh(_) => true,
                BeforeRequest::Stale { matches: true, .. } => false,
                BeforeRequest::Stale { matches: false, .. } => continue,
            };
            // The route's ceiling can make a fresh answer stale, its floor a stale one
            // fresh (never against a client's no-cache).
            let fresh = now < v.fresh_until && (policy_fresh || v.floored && !no_cache);
            return if fresh {
                Lookup::Fresh(v.clone())
            } else {
                Lookup::Stale(v.clone())
            };
        }
        Lookup::Miss
    }

    /// Stores `stored` for `key`, replacing the variants the same request would select.
    /// `request` is the one it answered (as the cache sees it).
    pub fn insert(&self, key: &str, request: &http::Request<()>, stored: Stored) -> Arc<Stored> {
        let stored = Arc::new(stored);
        let now = SystemTime::now();
        let mut all: Vec<Arc<Stored>> = self
            .cache
            .get(key)
            .map(|v| {
                v.all
                    .iter()
                    .filter(|old| {
                        !matches!(
                            old.policy.before_request(request, now),
                            BeforeRequest::Fresh(_) | BeforeRequest::Stale { matches: true, .. }
                        )
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        all.insert(0, stored.clone());
        all.truncate(MAX_VARIANTS);
        self.cache
            .insert(key.to_owned(), Arc::new(Variants { all }));
        stored
    }

    /// Removes every variant of `key`; whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// (bytes, URLs) held, after pending evictions have run.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

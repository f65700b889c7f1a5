//! Read-through to origins (`[[origins.loaders]]`): a key under a loader's prefix that
//! neither L1 nor L2 holds is fetched from the loader's origin with `GET path`, and what the
//! origin says decides what is kept:
//!
//! - 200: the body is the value, kept as long as the answer is fresh by RFC 9111 for a
//!   shared cache (`s-maxage`, then `max-age`, less `Age`; or `Expires`), or for the loader's
//!   `ttl` when the answer says nothing of freshness. An answer a shared cache may not store
//!   (`no-store`, `private`, `no-cache`, a zero lifetime) is answered and not kept;
//! - 404: the key is remembered as absent for `neg_ttl`;
//! - anything else, or no answer: an error, kept nowhere.
//!
//! Bodies are read under `limits.max_value_bytes`, counted as they arrive.

use super::{
    l1::Entry,
    l2::L2,
    lock::{Lock, Turn},
    L2Error,
};
use crate::{
    config::OriginConfig,
    origin::{Origin, OriginRequest, Origins},
};
use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use http_cache_semantics::{CacheOptions, CachePolicy};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

/// Bytes of a key left as they are in a path segment: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Every loader, longest prefix first (the most specific wins).
#[derive(Default)]
pub struct Loaders {
    all: Vec<Loader>,
}

pub struct Loader {
    prefix: Bytes,
    origin: Arc<Origin>,
    path: String,
    ttl: Duration,
    neg_ttl: Duration,
    /// How long past its TTL a loaded value is kept, to answer while the origin fails.
    pub stale_if_error: Duration,
    /// The Redis lock that makes one instance load a key for all (None: each loads alone).
    lock: Option<Lock>,
}

/// What a holder leaves in a lock when the origin said 404: waiters (and later readers, for
/// `neg_ttl`) learn the key is absent without asking the origin.
const LOCK_ABSENT: &[u8] = b"absent";

/// What loading through L2 came to.
pub enum Shared {
    /// Another instance loaded it and L2 has it now: the value and its TTL there.
    Found(Bytes, Option<Duration>),
    /// This instance asked the origin.
    Loaded(Loaded),
}

/// What the origin said about a key.
pub enum Loaded {
    /// The value, and how long it may be kept (None: answer it, keep it nowhere).
    Value(Bytes, Option<Duration>),
    /// 404: absent, remembered for this long (zero: not remembered).
    Absent(Duration),
}

impl Loaders {
    /// The loaders of every origin; `origins` was built from the same config.
    pub fn new(configs: &[OriginConfig], origins: &Origins) -> Self {
        let mut all: Vec<Loader> = configs
            .iter()
            .flat_map(|c| {
                let origin = origins.of(c);
                c.loaders.iter().map(move |l| Loader {
                    prefix: Bytes::copy_from_slice(l.prefix.as_bytes()),
                    origin: origin.clone(),
                    path: l.path.clone(),
                    ttl: l.ttl.0,
                    neg_ttl: l.neg_ttl.0,
                    stale_if_error: l.stale_if_error.0,
                    lock: (!l.lock_wait.0.is_zero()).then_some(Lock {
                        wait: l.lock_wait.0,
                        ttl: l.lock_ttl.0,
                    }),
                })
            })
            .collect();
        all.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        Self { all }
    }

    /// The loader for `key`, if one's prefix starts it.
    #[inline]
    pub fn find(&self, key: &[u8]) -> Option<&Loader> {
        if self.all.is_empty() {
            return None;
        }
        self.all.iter().find(|l| key.starts_with(&l.prefix))
    }

    /// Whether any key loads from an origin.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

impl Loader {
    /// The request path for `key`.
    fn path_of(&self, key: &[u8]) -> String {
        let id = &key[self.prefix.len()..];
        self.path
            .replace("{id}", &encode(id))
            .replace("{key}", &encode(key))
    }

    /// Loads `key` once for every instance sharing `l2`: the instance that takes the key's
    /// lock asks the origin, keeps the value in L2 and releases the lock (leaving "absent"
    /// in it for `neg_ttl` after a 404); the others look at L2 (5 ms apart, doubling to
    /// 100 ms) until the value is there, the lock says absent or is free to take, or
    /// `lock_wait` has passed, after which they ask the origin themselves rather than fail.
    /// Without a lock (or when Redis cannot be asked for one), this instance loads alone.
    pub async fn load_shared(&self, l2: &L2, key: &[u8], max: usize) -> Result<Shared, L2Error> {
        let Some(lock) = &self.lock else {
            return self.load_kept(l2, key, max).await.map(Shared::Loaded);
        };
        let l2_key = Bytes::copy_from_slice(key);
        match lock
            .turn(l2, &l2_key, |held| held == LOCK_ABSENT, Some)
            .await
        {
            Turn::Lead(held) => {
                let loaded = self.load(key, max).await;
                let outcome = match &loaded {
                    Ok(Loaded::Value(value, Some(ttl))) => {
                        keep(l2, key, value, *ttl).await;
                        None
                    }
                    Ok(Loaded::Absent(neg)) if !neg.is_zero() => Some((LOCK_ABSENT, *neg)),
                    _ => None,
                };
                held.release(l2, outcome).await;
                loaded.map(Shared::Loaded)
            }
            Turn::Found((value, ttl)) => Ok(Shared::Found(value, ttl)),
            Turn::Left(_) => Ok(Shared::Loaded(Loaded::Absent(self.neg_ttl))),
            Turn::Alone => self.load_kept(l2, key, max).await.map(Shared::Loaded),
        }
    }

    /// `load`, keeping a value in L2 as it is loaded.
    async fn load_kept(&self, l2: &L2, key: &[u8], max: usize) -> Result<Loaded, L2Error> {
        let loaded = self.load(key, max).await?;
        if let Loaded::Value(value, Some(ttl)) = &loaded {
            keep(l2, key, value, *ttl).await;
        }
        Ok(loaded)
    }

    /// Asks the origin for `key`; `max_bytes` bounds the body, and the origin's
    /// `request_timeout` the whole of it, body included (`Origin::send` bounds the wait for
    /// the headers only; an origin that trickles a body must not hold the load for ever).
    pub async fn load(&self, key: &[u8], max_bytes: usize) -> Result<Loaded, L2Error> {
        let limit = self.origin.request_timeout();
        tokio::time::timeout(limit, self.load_untimed(key, max_bytes))
            .await
            .unwrap_or_else(|_| {
                Err(L2Error::Origin {
                    code: "origin_timeout",
                    detail: format!(
                        "origin {}: no whole answer within request_timeout ({})",
                        self.origin.name(),
                        humantime::format_duration(limit)
                    ),
                })
            })
    }

    async fn load_untimed(&self, key: &[u8], max_bytes: usize) -> Result<Loaded, L2Error> {
        let path = self.path_of(key);
        let failed = |code: &'static str, detail: String| L2Error::Origin { code, detail };
        let pq: http::uri::PathAndQuery = path.parse().map_err(|e| {
            failed(
                "origin_path",
                format!("origin {}: bad path: {e}", self.origin.name()),
            )
        })?;
        let request = OriginRequest::get(Method::GET, pq.clone(), HeaderMap::new());
        let response = self
            .origin
            .send(request)
            .await
            .map_err(|e| failed(e.code(), e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(Loaded::Absent(self.neg_ttl));
        }
        if status != StatusCode::OK {
            return Err(failed(
                "origin_status",
                format!("origin {} answered {}", self.origin.name(), status.as_u16()),
            ));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_bytes).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                failed(
                    "origin_value_too_large",
                    format!(
                        "origin {}: the value is over limits.max_value_bytes ({max_bytes} bytes)",
                        self.origin.name()
                    ),
                )
            } else {
                failed(
                    "origin_failed",
                    format!(
                        "origin {}: reading the answer failed: {e}",
                        self.origin.name()
                    ),
                )
            }
        })?;
        let keep = self.freshness(pq, &parts);
        // One copy of its own, however many chunks came: a value kept in L1 must not hold the
        // connection's read buffer (which a chunk is a slice of) for as long as it stays.
        let mut chunks = body.aggregate();
        let mut value = Vec::with_capacity(chunks.remaining());
        value.put(&mut chunks);
        Ok(Loaded::Value(Bytes::from(value), keep))
    }

    /// How long an answer may be kept: RFC 9111 for a shared cache when the answer speaks of
    /// freshness, the loader's `ttl` when it does not.
    fn freshness(
        &self,
        path: http::uri::PathAndQuery,
        response: &http::response::Parts,
    ) -> Option<Duration> {
        let speaks = response.headers.contains_key(http::header::CACHE_CONTROL)
            || response.headers.contains_key(http::header::EXPIRES);
        let request = Request::get(path).body(()).expect("valid request");
        let policy = CachePolicy::new_options(
            &request,
            response,
            SystemTime::now(),
            CacheOptions {
                shared: true,
                // No guessing from Last-Modified: without explicit freshness the loader's
                // ttl applies.
                cache_heuristic: 0.0,
                ..CacheOptions::default()
            },
        );
        if !policy.is_storable() {
            return None;
        }
        if !speaks {
            return Some(self.ttl);
        }
        let ttl = policy.time_to_live(SystemTime::now());
        (!ttl.is_zero()).then_some(ttl)
    }

    /// The entry to keep in L1 for what was loaded (None: keep nothing). `l1_ttl` turns a
    /// lifetime into L1's (capped by `l1.max_ttl`, jittered).
    pub fn entry(
        &self,
        loaded: &Loaded,
        l1_ttl: impl FnOnce(Duration) -> Duration,
    ) -> Option<Entry> {
        match loaded {
            Loaded::Value(value, Some(ttl)) => Some(
                Entry::new(value.clone(), Some(l1_ttl(*ttl)))
                    .from_origin()
                    .with_grace(self.stale_if_error),
            ),
            Loaded::Value(_, None) => None,
            Loaded::Absent(ttl) if !ttl.is_zero() => Some(Entry::absent(*ttl).from_origin()),
            Loaded::Absent(_) => None,
        }
    }
}

/// Keeps a loaded value in L2 for every instance; it is good whether or not L2 keeps it.
async fn keep(l2: &L2, key: &[u8], value: &Bytes, ttl: Duration) {
    if let Err(e) = l2.store_loaded(key, value, ttl).await {
        tracing::debug!(error = %e, "a loaded value was not kept in L2");
    }
}

fn encode(b: &[u8]) -> String {
    // Keys are bytes; not-UTF-8 ones are encoded byte by byte all the same.
    percent_encoding::percent_encode(b, SEGMENT).to_string()
}

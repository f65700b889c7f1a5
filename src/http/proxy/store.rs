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

use crate::http::X_CACHE;
use bytes::Bytes;
use http::{header, uri::PathAndQuery, HeaderMap, HeaderValue, Request, StatusCode};
use http_cache_semantics::{BeforeRequest, CachePolicy};
use std::{
    sync::{atomic::AtomicBool, Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

/// The request as the cache sees it (for `CachePolicy` and Vary): a GET of the path and
/// query with the client's headers less hop-by-hop ones and Host (`headers::for_cache`).
/// Built when first asked for: a miss whose answer is not kept (no-store) never needs it.
pub struct CacheRequest<'a> {
    pq: &'a PathAndQuery,
    client: &'a HeaderMap,
    built: Option<Request<()>>,
}

impl<'a> CacheRequest<'a> {
    pub fn new(pq: &'a PathAndQuery, client: &'a HeaderMap) -> Self {
        Self {
            pq,
            client,
            built: None,
        }
    }

    pub fn get(&mut self) -> &Request<()> {
        self.built.get_or_insert_with(|| {
            let mut r = Request::get(self.pq.as_str())
                .body(())
                .expect("a valid request");
            *r.headers_mut() = super::headers::for_cache(self.client);
            r
        })
    }

    pub fn into_request(mut self) -> Request<()> {
        self.get();
        self.built.take().expect("just built")
    }
}

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
    /// `headers` as a hit sends them (`Stored::reply_head`), made at the first lookup.
    pub reply: OnceLock<ReplyHead>,
}

/// A stored answer's headers as every hit sends them (Via added; Age and X-Cache, which
/// each hit sets, left out), as a map for hyper and as HTTP/1 header lines for our own
/// path, which writes them as they are (`http::h1`).
#[derive(Debug)]
pub struct ReplyHead {
    pub map: HeaderMap,
    /// The map's lines but its framing (Content-Length, Transfer-Encoding, Trailer,
    /// Connection: the connection's own).
    pub wire: Bytes,
    /// `wire` says Date (the origin's), so the connection adds none.
    pub dated: bool,
    /// It says Vary: requests select among variants.
    pub varies: bool,
    /// Its Age then (`Stored::age`).
    pub aged: (SystemTime, Duration),
}

impl Stored {
    /// Bytes it takes, roughly: body, headers (here, in the policy, and as replied: a map
    /// and its lines), and a fixed share for the rest.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + headers * 4 + 512) as u64
    }

    /// The headers every hit is answered with, made at the first: the stored ones with Via,
    /// and their HTTP/1 lines (a hit then copies one slice, where a map clone and its
    /// encoding were 1.5k instructions).
    pub fn reply_head(&self) -> &ReplyHead {
        self.reply.get_or_init(|| {
            let mut map = self.headers.clone();
            map.remove(header::AGE);
            map.remove(X_CACHE);
            map.append(header::VIA, HeaderValue::from_static("1.1 tiergate"));
            let (mut wire, mut dated) = (Vec::new(), false);
            for (name, value) in &map {
                if [
                    header::CONTENT_LENGTH,
                    header::TRANSFER_ENCODING,
                    header::TRAILER,
                    header::CONNECTION,
                ]
                .contains(name)
                {
                    continue;
                }
                dated |= name == header::DATE;
                for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
                    wire.extend_from_slice(part);
                }
            }
            let now = SystemTime::now();
            ReplyHead {
                aged: (now, self.policy.age(now)),
                varies: map.contains_key(header::VARY),
                map,
                wire: wire.into(),
                dated,
            }
        })
    }

    /// A 200 of `body` with `headers`, as a shared cache stores it when received at
    /// `received`, fresh (and kept) for `fresh`: for the tests of what serves one.
    #[cfg(test)]
    pub fn sample(
        headers: &[(&str, &str)],
        body: Bytes,
        received: SystemTime,
        fresh: Duration,
    ) -> Self {
        let request = Request::get("/api/x").body(()).expect("a request");
        let mut answer = http::Response::builder();
        for &(name, value) in headers {
            answer = answer.header(name, value);
        }
        let answer = answer.body(()).expect("an answer");
        let options = http_cache_semantics::CacheOptions {
            shared: true,
            ..Default::default()
        };
        Self {
            policy: CachePolicy::new_options(&request, &answer, received, options),
            status: StatusCode::OK,
            headers: answer.headers().clone(),
            body,
            fresh_until: received + fresh,
            floored: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            keep_until: received + fresh,
            refreshing: AtomicBool::new(false),
            reply: OnceLock::new(),
        }
    }

    /// Its Age at `now`, in seconds: the policy's (the Age it came with, plus the time
    /// since it was received) as of the first lookup, plus the time since (never less:
    /// a clock stepped back does not make it younger). The policy reads
    /// and parses its Age header each time it is asked (0.3k instructions a hit).
    pub fn age(&self, now: SystemTime) -> u64 {
        let (then, age) = self.reply_head().aged;
        (age + now.duration_since(then).unwrap_or_default()).as_secs()
    }

    /// Whether it answers `request` fresh at `now` (Some(true)) or only stale, to be
    /// revalidated (Some(false)); None when the request does not select it (Vary).
    /// `no_cache`: the client asked for revalidation.
    pub fn freshness(
        &self,
        request: &Request<()>,
        now: SystemTime,
        no_cache: bool,
    ) -> Option<bool> {
        let policy_fresh = match self.policy.before_request(request, now) {
            BeforeRequest::Fresh(_) => true,
            BeforeRequest::Stale { matches: true, .. } => false,
            BeforeRequest::Stale { matches: false, .. } => return None,
        };
        // The route's ceiling can make a fresh answer stale, its floor a stale one fresh
        // (never against a client's no-cache).
        Some(now < self.fresh_until && (policy_fresh || self.floored && !no_cache))
    }

    pub fn has_validators(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }
}

/// How a stored answer travels through L2 (`encode`, `decode`): this, the length of the
/// JSON head (4 bytes, big-endian), the head, then the body as it is.
const L2_FORM: &[u8; 4] = b"tgr1";

/// A stored answer's head in L2: everything but the body and the refresh flag.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    policy: CachePolicy,
    status: u16,
    #[serde(with = "http_serde::header_map")]
    headers: HeaderMap,
    fresh_until: SystemTime,
    floored: bool,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    keep_until: SystemTime,
}

impl Stored {
    /// Its L2 form, for the other instances (`decode`).
    pub fn encode(&self) -> Vec<u8> {
        let head = Head {
            policy: self.policy.clone(),
            status: self.status.as_u16(),
            headers: self.headers.clone(),
            fresh_until: self.fresh_until,
            floored: self.floored,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            keep_until: self.keep_until,
        };
        let json = serde_json::to_vec(&head).expect("a stored answer's head serialises");
        let mut out = Vec::with_capacity(8 + json.len() + self.body.len());
        out.extend_from_slice(L2_FORM);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.body);
        out
    }

    /// A stored answer from its L2 form; None for anything else (another version's form, a
    /// value some client wrote there).
    pub fn decode(blob: &Bytes) -> Option<Stored> {
        let rest = blob.strip_prefix(L2_FORM)?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let json = rest.get(..len)?;
        let head: Head = serde_json::from_slice(json).ok()?;
        let body_at = L2_FORM.len() + 4 + len;
        Some(Stored {
            policy: head.policy,
            status: StatusCode::from_u16(head.status).ok()?,
            headers: head.headers,
            body: blob.slice(body_at..),
            fresh_until: head.fresh_until,
            floored: head.floored,
            stale_while_revalidate: head.stale_while_revalidate,
            stale_if_error: head.stale_if_error,
            keep_until: head.keep_until,
            refreshing: AtomicBool::new(false),
            reply: OnceLock::new(),
        })
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

/// How long a URL whose answer could not be stored (no-store, private, Set-Cookie) goes
/// straight to the origin: its misses are not made to wait for each other, here or across
/// instances, since none of them could be answered from another's (Varnish's hit-for-miss,
/// 120 s there). Short, so an origin that starts allowing it is cached soon.
pub const PASS_FOR: Duration = Duration::from_secs(10);
/// URLs remembered so at most; past it the least used are forgotten (and coalesce again).
const PASS_CAPACITY: u64 = 65_536;

pub struct Store {
    /// URLs whose last answer could not be stored (`PASS_FOR`).
    passes: moka::sync::Cache<String, (), ahash::RandomState>,
    /// aHash, not moka's default SipHash: a lookup per request, and aHash is keyed at random
    /// too (no chosen-URL collisions).
    cache: moka::sync::Cache<String, Arc<Variants>, ahash::RandomState>,
}

impl Store {
    pub fn new(capacity: u64) -> Self {
        Self {
            passes: moka::sync::Cache::builder()
                .max_capacity(PASS_CAPACITY)
                .time_to_live(PASS_FOR)
                .build_with_hasher(ahash::RandomState::new()),
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|k: &String, v: &Arc<Variants>| v.weight(k))
                .expire_after(KeepUntil)
                .build_with_hasher(ahash::RandomState::new()),
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
        // One pass over the few headers a client sends, where two lookups hashed both
        // names (0.2k instructions a hit).
        if client
            .keys()
            .any(|k| k == header::CACHE_CONTROL || k == header::PRAGMA)
        {
            return None;
        }
        self.fresh_plain(key, SystemTime::now())
    }

    /// `fresh` at `now`, for a request already known to say neither Cache-Control nor Pragma.
    pub fn fresh_plain(&self, key: &str, now: SystemTime) -> Option<Arc<Stored>> {
        let variants = self.cache.get(key)?;
        let v = variants.all.first()?;
        (!v.reply_head().varies && now < v.fresh_until).then(|| v.clone())
    }

    /// The variant of `key` that `request` (as the cache sees it: a GET, Host removed)
    /// selects, and whether it is fresh. `no_cache`: the client asked for revalidation.
    pub fn lookup(&self, key: &str, request: &mut CacheRequest<'_>, no_cache: bool) -> Lookup {
        let Some(variants) = self.cache.get(key) else {
            return Lookup::Miss;
        };
        let now = SystemTime::now();
        let request = request.get();
        for v in &variants.all {
            match v.freshness(request, now, no_cache) {
                Some(true) => return Lookup::Fresh(v.clone()),
                Some(false) => return Lookup::Stale(v.clone()),
                None => {}
            }
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
        self.passes.invalidate(key);
        self.cache
            .insert(key.to_owned(), Arc::new(Variants { all }));
        stored
    }

    /// Remembers that `key`'s answer could not be stored (`PASS_FOR`).
    pub fn pass(&self, key: &str) {
        // Once per PASS_FOR, not per request: a pass's misses all come through here, and a
        // moka insert is a write scheduled for its maintenance.
        if !self.passes.contains_key(key) {
            self.passes.insert(key.to_owned(), ());
        }
    }

    /// Whether `key`'s misses go straight to the origin (`pass`).
    pub fn passes(&self, key: &str) -> bool {
        self.passes.contains_key(key)
    }

    /// Removes every variant of `key` (and forgets a pass); whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        self.passes.invalidate(key);
        self.cache.remove(key).is_some()
    }

    /// (bytes, URLs) held, after pending evictions have run.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_cache_semantics::CacheOptions;

    #[test]
    fn age_is_the_one_it_came_with_plus_the_time_held() {
        for held in [0, 30] {
            let received = SystemTime::now() - Duration::from_secs(held);
            let stored = aged_90(received);
            let now = SystemTime::now();
            assert_eq!(stored.age(now), 90 + held);
            assert_eq!(stored.age(now + Duration::from_secs(5)), 95 + held);
            let later = now + Duration::from_secs(70);
            assert_eq!(stored.age(later), 160 + held);
            assert_eq!(
                stored.age(later),
                stored.policy.age(later).as_secs(),
                "as the policy says"
            );
        }
    }

    /// A stored answer that came with `Age: 90`, received at `received`.
    fn aged_90(received: SystemTime) -> Stored {
        let headers = [("cache-control", "max-age=600"), ("age", "90")];
        Stored::sample(&headers, Bytes::new(), received, Duration::from_secs(510))
    }

    #[test]
    fn a_stored_answer_travels_through_l2_whole_and_junk_is_refused() {
        let request = Request::get("/api/x").body(()).unwrap();
        let mut answer = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=60")
            .header("etag", "\"e1\"")
            .body(())
            .unwrap();
        answer
            .headers_mut()
            .append("x-two", HeaderValue::from_static("a"));
        answer
            .headers_mut()
            .append("x-two", HeaderValue::from_static("b"));
        let now = SystemTime::now();
        let options = CacheOptions {
            shared: true,
            ..CacheOptions::default()
        };
        let policy = CachePolicy::new_options(&request, &answer, now, options);
        let stored = Stored {
            policy,
            status: StatusCode::OK,
            headers: answer.headers().clone(),
            body: Bytes::from_static(b"\r\n\0body"),
            fresh_until: now + Duration::from_secs(60),
            floored: true,
            stale_while_revalidate: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(7),
            keep_until: now + Duration::from_secs(90),
            refreshing: AtomicBool::new(true),
            reply: OnceLock::new(),
        };
        let back = Stored::decode(&Bytes::from(stored.encode())).unwrap();
        assert_eq!(back.status, stored.status);
        assert_eq!(back.headers, stored.headers);
        assert_eq!(back.body, stored.body);
        assert_eq!(back.fresh_until, stored.fresh_until);
        assert_eq!(back.keep_until, stored.keep_until);
        assert!(back.floored);
        assert_eq!(back.stale_while_revalidate, Duration::from_secs(5));
        assert_eq!(back.stale_if_error, Duration::from_secs(7));
        assert!(!back.refreshing.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(
            back.policy.time_to_live(now),
            stored.policy.time_to_live(now)
        );
        for junk in [
            &b""[..],
            b"tgr1",
            b"tgr1\0\0\0\x09{}",
            b"tgr1\0\0\0\x02{}",
            b"value",
        ] {
            assert!(
                Stored::decode(&Bytes::copy_from_slice(junk)).is_none(),
                "{junk:?}"
            );
        }
    }
}

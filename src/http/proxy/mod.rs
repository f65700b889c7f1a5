//! Caching reverse proxy routes (`[[origins.routes]]`, issue 18 point 3): a path prefix on
//! the HTTP data port proxied to an origin, its GET and HEAD answers cached per RFC 9111 as a
//! shared cache (http-cache-semantics, `shared: true`):
//!
//! - stored only when a shared cache may (`no-store`, `private`, Authorization without
//!   `public` or `s-maxage`, uncacheable statuses are not), fresh for `s-maxage`, else
//!   `max-age`, else `Expires`, less the `Age` the answer came with, within the route's
//!   `min_ttl` and `max_ttl`; served with its Age brought up to date;
//! - `Vary`: up to `store::MAX_VARIANTS` variants per URL, the one the request selects served;
//! - stale (or `no-cache`) answers are revalidated with If-None-Match / If-Modified-Since;
//!   a 304 refreshes the stored answer (`REVALIDATED`);
//! - RFC 5861: within `stale-while-revalidate` a stale answer is served at once and one
//!   background refresh runs (at most `MAX_REFRESHES` per route at a time); within
//!   `stale-if-error` it answers when the origin fails or says 5xx;
//! - bodies stream both ways; an answer larger than `max_object_bytes` is passed through and
//!   not stored (`body`);
//! - concurrent misses and revalidations of a URL make one origin request (`Loading`): the
//!   others wait for its answer to be stored, at most `COALESCE_WAIT`, then look again;
//! - other methods are proxied uncached (`BYPASS`), and a non-error answer to an unsafe one
//!   invalidates the URL (RFC 9111 section 4.4); `PURGE <path>` (and the admin port's
//!   `POST /purge?url=<path>`) removes a URL's variants: `Proxy::purge`, which the
//!   invalidation bus can call for purges from other instances.
//!
//! Every answer says `X-Cache: HIT | MISS | STALE | REVALIDATED | BYPASS`.

mod body;
mod headers;
pub mod store;

pub use body::ProxyBody;

use crate::cache::{
    l2::{Fetched, L2},
    lock::{Held, Lock, Turn},
};
use crate::{
    config::OriginConfig,
    http::{error::ApiError, ReplyBody, RequestBody, X_CACHE},
    metrics::{Metrics, ProxyMetrics, ProxyOutcome},
    origin::{Origin, OriginError, OriginRequest, OriginResponse, Origins, OutBody},
};
use body::Keeping;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};
use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};
use store::{CacheRequest, Lookup, Store, Stored};

/// Background refreshes (stale-while-revalidate) running at once per route: past it a stale
/// answer is still served and the next request tries again, so a burst of stale URLs cannot
/// turn into a burst on the origin.
pub const MAX_REFRESHES: usize = 32;

/// How long a GET miss waits for another request's load of the same URL (on this instance)
/// before asking the origin itself: past a typical origin answer, well short of a client's
/// patience (the loaders' `lock_wait` default too). A wait never fails a request.
pub const COALESCE_WAIT: Duration = Duration::from_secs(2);

/// The client's address as X-Forwarded-For names it, made by the connection when routes are
/// configured and handed to each of its requests: written once per connection, not per
/// request.
#[derive(Clone, Debug)]
pub struct ClientAddr(pub HeaderValue);

impl ClientAddr {
    pub fn new(peer: SocketAddr) -> Self {
        Self(
            HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
        )
    }
}

/// Every route, longest prefix first (the most specific wins).
#[derive(Default)]
pub struct Proxy {
    routes: Vec<Arc<Route>>,
}

/// One `[[origins.routes]]`.
pub struct Route {
    prefix: String,
    origin: Arc<Origin>,
    min_ttl: Duration,
    max_ttl: Duration,
    max_object_bytes: u64,
    store: Store,
    refreshes: Arc<tokio::sync::Semaphore>,
    /// URLs a GET miss is loading now: later misses wait for it (`Loading`) instead of
    /// each asking the origin.
    loading: std::sync::Mutex<std::collections::HashMap<String, Waiting, ahash::RandomState>>,
    metrics: ProxyMetrics,
    /// Tells the other instances to purge a URL (the invalidation bus), when there are any.
    announce: Option<Announce>,
    /// In tiered mode: answers shared with the other instances through L2.
    sharing: Option<Sharing>,
}

/// How a route shares what it stores with the other instances: each stored answer is kept in
/// L2 too (`l2_key`), a miss looks there before it asks the origin, and with a lock, misses
/// of a URL on several instances make one origin request (`cache::lock`).
struct Sharing {
    l2: Arc<L2>,
    lock: Option<Lock>,
}

/// Where a URL's stored answer is kept in L2: its own key space, which no KV key a client
/// may be given (`tiergate:` keys are the gateway's) should use.
const L2_PREFIX: &[u8] = b"tiergate:route:";

/// What a lock's holder leaves for the other instances when the origin's answer could not be
/// stored: they ask the origin without waiting (`Store::pass`).
const PASS_MARK: &[u8] = b"pass";

fn l2_key(key: &str) -> Bytes {
    Bytes::from([L2_PREFIX, key.as_bytes()].concat())
}

/// The L2 half of storing an answer (the copy for the other instances, then the lock's
/// release). A proxied body awaits it before the client's last byte, so a client that has
/// its answer, and then purges the URL on any instance, purges what was kept (not a copy
/// still on its way to L2); elsewhere it runs in the background (`spawn_here`).
pub(super) type Saving = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Sharing {
    /// Keeps `stored` in L2 for as long as it is worth keeping, then releases `held` (in that
    /// order, so a waiter that finds the lock gone finds the answer).
    fn keep(&self, key: &str, stored: &Stored, held: Option<Held>) -> Saving {
        let ttl = stored
            .keep_until
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let blob = (!ttl.is_zero()).then(|| stored.encode());
        let (l2, key) = (self.l2.clone(), l2_key(key));
        Box::pin(async move {
            if let Some(blob) = blob {
                if let Err(e) = l2.store_answer(&key, &blob, ttl).await {
                    tracing::debug!(error = %e, "a proxied answer was not kept in L2");
                }
            }
            if let Some(held) = held {
                // Waiters look at L2 once the lock is gone; nobody need wait for this.
                spawn_here(async move { held.release(&l2, None).await });
            }
        })
    }
}

/// Releases `held`, leaving `outcome` in it (see `Held::release`), in the background.
fn release(l2: &Arc<L2>, held: Held, outcome: Option<(&'static [u8], Duration)>) {
    let l2 = l2.clone();
    spawn_here(async move { held.release(&l2, outcome).await });
}

/// Spawns on the runtime this runs on (none when dropped outside one: a test's teardown;
/// the lock then expires by itself).
pub(super) fn spawn_here(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

/// How a route tells every instance to purge a URL: the server hands in one that announces
/// on the invalidation bus (`TieredCache::announce_purge`).
pub type Announce = Arc<dyn Fn(&str) + Send + Sync>;

/// A load of a URL in progress, as those who wait for it see it.
#[derive(Clone)]
struct Waiting {
    id: u64,
    done: tokio::sync::watch::Receiver<()>,
}

/// The load of a URL a GET miss leads: dropped (its answer stored, found not storable or
/// too large, or cut short), it wakes every request waiting for it.
pub struct Loading {
    route: Arc<Route>,
    key: String,
    id: u64,
    _done: tokio::sync::watch::Sender<()>,
    /// The URL's lock across instances, when this load took it (`Route::shared_turn`).
    held: Option<Held>,
}

impl Drop for Loading {
    fn drop(&mut self) {
        // Given up without storing anything: the other instances may go on.
        if let (Some(held), Some(s)) = (self.held.take(), &self.route.sharing) {
            release(&s.l2, held, None);
        }
        let mut loading = self.route.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.get(&self.key).is_some_and(|w| w.id == self.id) {
            loading.remove(&self.key);
        }
    }
}

/// Whether a miss loads a URL itself or waits for another's load.
enum Miss {
    Lead(Loading),
    Wait(tokio::sync::watch::Receiver<()>),
}

impl Proxy {
    /// The routes of every origin; `origins` was built from the same config. `announce`
    /// carries purges (PURGE, the admin port's, unsafe methods' invalidations) to the other
    /// instances.
    pub fn new(
        configs: &[OriginConfig],
        origins: &Origins,
        metrics: &Metrics,
        announce: Option<Announce>,
        l2: Option<&Arc<L2>>,
    ) -> Self {
        let mut routes: Vec<Arc<Route>> = configs
            .iter()
            .flat_map(|c| {
                let origin = origins.of(c);
                let announce = announce.clone();
                c.routes.iter().map(move |r| {
                    Arc::new(Route {
                        prefix: r.prefix.clone(),
                        origin: origin.clone(),
                        min_ttl: r.min_ttl.0,
                        max_ttl: r.max_ttl.0,
                        max_object_bytes: r.max_object_bytes.0,
                        store: Store::new(r.cache_capacity.0),
                        refreshes: Arc::new(tokio::sync::Semaphore::new(MAX_REFRESHES)),
                        loading: Default::default(),
                        metrics: metrics.proxy_route(&r.prefix),
                        announce: announce.clone(),
                        sharing: l2.map(|l2| Sharing {
                            l2: l2.clone(),
                            lock: (!r.lock_wait.0.is_zero()).then_some(Lock {
                                wait: r.lock_wait.0,
                                ttl: r.lock_ttl.0,
                            }),
                        }),
                    })
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for `path`, if one's prefix starts it.
    #[inline]
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if self.routes.is_empty() {
            return None;
        }
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }

    /// The fresh stored answer to a plain GET or HEAD of `target` (a path and query as the
    /// client sent it), from the request's head as read: the client sent no Cache-Control,
    /// Pragma or conditional, so only the URL selects it. None: the request goes the whole
    /// way (`Route::serve`). A target `http` would refuse is never a stored URL.
    pub fn stored_answer(&self, target: &str) -> Option<Kept> {
        let path = match target.bytes().position(|b| b == b'?') {
            Some(at) => &target[..at],
            None => target,
        };
        let route = self.find(path)?;
        let now = SystemTime::now();
        let stored = route.store.fresh_plain(target, now)?;
        route.metrics.count(ProxyOutcome::Hit);
        Some(Kept::new(stored, now, ProxyOutcome::Hit))
    }

    /// Removes every stored variant of `url` (a path and query) here and, through the bus,
    /// on every other instance; whether one was stored here.
    pub async fn purge(&self, url: &str) -> bool {
        let path = url.split('?').next().unwrap_or_default();
        match self.find(path) {
            Some(r) => r.purge_everywhere(url).await,
            None => false,
        }
    }

    /// `purge` on this instance only: what the bus calls for a purge it heard.
    pub fn purge_here(&self, url: &str) -> bool {
        let path = url.split('?').next().unwrap_or_default();
        self.find(path).is_some_and(|r| r.store.remove(url))
    }

    /// Sets the byte and entry gauges: at scrape time.
    pub fn refresh_gauges(&self) {
        for r in &self.routes {
            let (bytes, entries) = r.store.usage();
            r.metrics.bytes.set(bytes as i64);
            r.metrics.entries.set(entries as i64);
        }
    }
}

/// What RFC 9111 lets a shared cache do with `answer` to `request`, received at `now`.
fn shared_policy(
    request: &Request<()>,
    answer: &http::response::Parts,
    now: SystemTime,
) -> CachePolicy {
    let shared = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    CachePolicy::new_options(request, answer, now, shared)
}

/// How long a stored answer stays fresh, and whether the floor made it longer than its
/// headers: `policy`'s lifetime (less Age) within `min_ttl` and `max_ttl`. The floor never
/// applies to an answer that must be revalidated every time (`no-cache`).
fn lifetime(
    route: &Route,
    policy: &CachePolicy,
    no_cache: bool,
    now: SystemTime,
) -> (Duration, bool) {
    let own = policy.time_to_live(now);
    let floored = !no_cache && route.min_ttl > own;
    let ttl = if floored { route.min_ttl } else { own };
    (ttl.min(route.max_ttl), floored)
}

/// A Cache-Control directive's seconds (`stale-while-revalidate=30`).
fn directive(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').parse().ok())
                .flatten()
                .map(Duration::from_secs)
        })
}

/// Whether an answer's headers alone say a shared cache may not keep it (RFC 9111 section
/// 3: Cache-Control no-store or private; and a Set-Cookie, see `Route::stored`): then no
/// `CachePolicy` is built for it, a third of what such a miss costs here.
fn never_shared(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SET_COOKIE)
        || headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                let name = d.split('=').next().unwrap_or_default().trim();
                name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("private")
            })
}

/// Whether Cache-Control (or Pragma) says `no-cache`.
fn says_no_cache(headers: &HeaderMap) -> bool {
    let cc = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache")
                || d.len() > 8 && d[..9].eq_ignore_ascii_case("no-cache=")
        });
    cc || headers
        .get(header::PRAGMA)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("no-cache"))
}

/// The JSON error for an origin that gave no answer: the origin's fault, said as such.
fn origin_error(e: &OriginError) -> ApiError {
    ApiError {
        status: StatusCode::from_u16(e.status()).expect("a valid status"),
        code: e.code(),
        message: e.to_string().into(),
        allow: None,
        challenge: false,
    }
}

fn with_cache_header(mut resp: Response<ReplyBody>, outcome: ProxyOutcome) -> Response<ReplyBody> {
    if let ReplyBody::Kept(_, kept) = resp.body_mut() {
        kept.outcome = outcome.header();
        return resp;
    }
    resp.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.header()));
    resp
}

impl Route {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Stores an answer here (the body has passed, or was read by a refresh), and returns
    /// with it the saving of its copy in L2 for the other instances (which then releases
    /// `held`, the URL's lock across instances, when this load took it).
    fn store(
        &self,
        key: &str,
        request: &Request<()>,
        stored: Stored,
        held: Option<Held>,
    ) -> (Arc<Stored>, Option<Saving>) {
        self.metrics.stored.inc();
        let stored = self.store.insert(key, request, stored);
        let saving = self.sharing.as_ref().map(|s| s.keep(key, &stored, held));
        (stored, saving)
    }

    /// Before a miss this instance leads asks the origin: another instance's fresh answer in
    /// L2 (stored here too, and returned), else the URL's lock across instances (kept in
    /// `loading` until the answer is stored), or word that the URL's answers cannot be
    /// stored (then it goes straight to the origin, `Store::pass`). With no lock to be had
    /// in time, the miss asks the origin alone.
    async fn shared_turn(
        &self,
        key: &str,
        cache_req: &mut CacheRequest<'_>,
        no_cache: bool,
        loading: &mut Loading,
    ) -> Option<Arc<Stored>> {
        let sharing = self.sharing.as_ref()?;
        let l2_key = l2_key(key);
        if !no_cache {
            if let Ok(Some((blob, _))) = sharing.l2.get(l2_key.clone()).await {
                if let Some(found) = self.adopt(key, cache_req, &blob) {
                    return Some(found);
                }
            }
        }
        let lock = sharing.lock?;
        // A request that asked for no cached answer finds none usable: it waits for a
        // holder and then asks the origin itself.
        let usable = |(blob, _): Fetched| (!no_cache).then(|| self.adopt(key, cache_req, &blob))?;
        match lock
            .turn(&sharing.l2, &l2_key, |v| v == PASS_MARK, usable)
            .await
        {
            Turn::Lead(held) => {
                loading.held = Some(held);
                None
            }
            Turn::Found(found) => Some(found),
            Turn::Left(_) => {
                self.store.pass(key);
                None
            }
            Turn::Alone => None,
        }
    }

    /// An answer another instance kept in L2, stored here when it is fresh and this request
    /// selects it (Vary); None otherwise (the miss asks the origin).
    fn adopt(
        &self,
        key: &str,
        cache_req: &mut CacheRequest<'_>,
        blob: &Bytes,
    ) -> Option<Arc<Stored>> {
        let stored = Stored::decode(blob)?;
        let request = cache_req.get();
        (stored.freshness(request, SystemTime::now(), false) == Some(true))
            .then(|| self.store.insert(key, request, stored))
    }

    /// Removes the URL's variants here and announces it to the other instances; whether
    /// one was stored here.
    async fn purge_everywhere(&self, url: &str) -> bool {
        // The shared copy goes first, so neither this instance nor one that hears the purge
        // finds the old answer in L2 on its next miss.
        if let Some(s) = &self.sharing {
            if let Err(e) = s.l2.del(&[l2_key(url)]).await {
                tracing::debug!(error = %e, "a purged answer's L2 copy stays until it expires");
            }
        }
        if let Some(announce) = &self.announce {
            announce(url);
        }
        self.store.remove(url)
    }

    /// `PURGE`: removes the URL's variants here and, through the bus, everywhere.
    pub async fn purge(&self, url: &str) -> Response<ReplyBody> {
        let purged = self.purge_everywhere(url).await;
        let body = format!("{{\"purged\":{purged}}}\n");
        let mut resp = Response::new(Full::new(Bytes::from(body)).into());
        *resp.status_mut() = if purged {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        with_cache_header(resp, ProxyOutcome::Bypass)
    }

    /// Proxies one request (the router found this route for its path). Every answer, an
    /// error too, says X-Cache.
    pub async fn serve<B: RequestBody + 'static>(
        self: &Arc<Self>,
        req: Request<B>,
        max_body_bytes: u64,
        peer: Option<&ClientAddr>,
    ) -> Response<ReplyBody> {
        let cached = matches!(*req.method(), Method::GET | Method::HEAD);
        let (resp, outcome) = match self.proxy(req, max_body_bytes, peer).await {
            Ok(answered) => answered,
            Err(e) => {
                let outcome = if cached {
                    ProxyOutcome::Miss
                } else {
                    ProxyOutcome::Bypass
                };
                (e.into_response(), outcome)
            }
        };
        self.metrics.count(outcome);
        with_cache_header(resp, outcome)
    }

    async fn proxy<B: RequestBody + 'static>(
        self: &Arc<Self>,
        req: Request<B>,
        max_body_bytes: u64,
        peer: Option<&ClientAddr>,
    ) -> Result<(Response<ReplyBody>, ProxyOutcome), ApiError> {
        let (parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // A fresh stored answer to a plain GET or HEAD: sent before anything is built for the
        // origin (`Store::fresh`; everything else takes the whole path below).
        if matches!(parts.method, Method::GET | Method::HEAD) {
            if let Some(s) = self.store.fresh(pq.as_str(), &parts.headers) {
                return Ok((serve_stored(&s, &parts.headers), ProxyOutcome::Hit));
            }
        }
        let peer = peer.map(|a| &a.0);
        let to_origin = headers::to_origin(&parts.headers, parts.version, peer);
        match parts.method {
            Method::GET => self.get(pq, &parts.headers, to_origin).await,
            Method::HEAD => {
                // A fresh stored GET answers a HEAD; otherwise the HEAD goes through as is.
                let mut cache_req = CacheRequest::new(&pq, &parts.headers);
                if let Lookup::Fresh(s) =
                    self.store
                        .lookup(pq.as_str(), &mut cache_req, says_no_cache(&parts.headers))
                {
                    return Ok((serve_stored(&s, &parts.headers), ProxyOutcome::Hit));
                }
                let answer = self
                    .origin
                    .send(OriginRequest::get(Method::HEAD, pq, to_origin))
                    .await
                    .map_err(|e| origin_error(&e))?;
                Ok((pass(answer, None), ProxyOutcome::Miss))
            }
            method => {
                let unsafe_method = !matches!(method, Method::OPTIONS | Method::TRACE);
                let out = outbound_body(body, max_body_bytes).await?;
                let request = OriginRequest {
                    method,
                    path: pq.clone(),
                    headers: to_origin,
                    body: out,
                };
                let answer = self
                    .origin
                    .send(request)
                    .await
                    .map_err(|e| origin_error(&e))?;
                // RFC 9111 section 4.4: a non-error answer to an unsafe method invalidates
                // the URL.
                let status = answer.status();
                if unsafe_method && (status.is_success() || status.is_redirection()) {
                    self.purge_everywhere(pq.as_str()).await;
                }
                Ok((pass(answer, None), ProxyOutcome::Bypass))
            }
        }
    }

    /// Whether this request loads `key` (Some: it leads the load) or waited for another's:
    /// then the answer when that load left a fresh one (Err), else None (ask the origin
    /// without leading).
    async fn lead_or_wait(
        self: &Arc<Self>,
        key: &str,
        cache_req: &mut CacheRequest<'_>,
        no_cache: bool,
        client: &HeaderMap,
    ) -> Result<Option<Loading>, Response<ReplyBody>> {
        match self.miss(key) {
            Miss::Lead(loading) => Ok(Some(loading)),
            Miss::Wait(mut done) => {
                let _ = tokio::time::timeout(COALESCE_WAIT, done.changed()).await;
                match self.store.lookup(key, cache_req, no_cache) {
                    Lookup::Fresh(s) => Err(serve_stored(&s, client)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// GET: from the cache when it may, else from the origin (stored as it passes).
    async fn get(
        self: &Arc<Self>,
        pq: http::uri::PathAndQuery,
        client: &HeaderMap,
        to_origin: HeaderMap,
    ) -> Result<(Response<ReplyBody>, ProxyOutcome), ApiError> {
        let key = pq.as_str();
        let mut cache_req = CacheRequest::new(&pq, client);
        let no_cache = says_no_cache(client);
        let stale = match self.store.lookup(key, &mut cache_req, no_cache) {
            Lookup::Fresh(s) => return Ok((serve_stored(&s, client), ProxyOutcome::Hit)),
            Lookup::Stale(s) => s,
            Lookup::Miss => {
                // One origin request for concurrent misses of a URL: the first loads, the
                // others wait for its answer to be stored, then look again. One that finds
                // nothing (not storable, another variant, too slow) asks the origin itself.
                // Across instances the same, through L2 and a lock (`shared_turn`). A URL
                // whose answers cannot be stored (a pass) goes straight to the origin.
                let mut loading = None;
                if !self.store.passes(key) {
                    loading = match self
                        .lead_or_wait(key, &mut cache_req, no_cache, client)
                        .await
                    {
                        Ok(loading) => loading,
                        Err(hit) => return Ok((hit, ProxyOutcome::Hit)),
                    };
                }
                if let Some(lead) = loading.as_mut() {
                    if let Some(found) = self.shared_turn(key, &mut cache_req, no_cache, lead).await
                    {
                        return Ok((serve_stored(&found, client), ProxyOutcome::Hit));
                    }
                }
                let answer = self
                    .origin
                    .send(OriginRequest::get(Method::GET, pq.clone(), to_origin))
                    .await
                    .map_err(|e| origin_error(&e))?;
                return Ok((
                    self.answer(key, cache_req, answer, loading),
                    ProxyOutcome::Miss,
                ));
            }
        };
        let now = SystemTime::now();
        // RFC 5861 stale-while-revalidate: answer now, refresh once behind it.
        if !no_cache && now < stale.fresh_until + stale.stale_while_revalidate {
            self.refresh_behind(&stale, key, cache_req.into_request(), to_origin.clone());
            return Ok((serve_stored(&stale, client), ProxyOutcome::Stale));
        }
        // Concurrent revalidations of a URL coalesce as misses do.
        let loading = match self
            .lead_or_wait(key, &mut cache_req, no_cache, client)
            .await
        {
            Ok(loading) => loading,
            Err(hit) => return Ok((hit, ProxyOutcome::Hit)),
        };
        let sent = self
            .origin
            .send(OriginRequest::get(
                Method::GET,
                pq.clone(),
                conditional(to_origin.clone(), &stale),
            ))
            .await;
        let may_serve_stale = now < stale.fresh_until + stale.stale_if_error;
        match sent {
            Ok(answer) if answer.status() == StatusCode::NOT_MODIFIED => {
                match self.revalidated(key, cache_req.get(), &stale, &answer) {
                    Some(fresh) => Ok((serve_stored(&fresh, client), ProxyOutcome::Revalidated)),
                    // A 304 for something else than what is stored: ask again, plainly.
                    None => {
                        drop(answer);
                        let answer = self
                            .origin
                            .send(OriginRequest::get(Method::GET, pq.clone(), to_origin))
                            .await
                            .map_err(|e| origin_error(&e))?;
                        Ok((
                            self.answer(key, cache_req, answer, loading),
                            ProxyOutcome::Miss,
                        ))
                    }
                }
            }
            // RFC 5861 stale-if-error: a 5xx or no answer, and a stale copy may stand in.
            Ok(answer) if answer.status().is_server_error() && may_serve_stale => {
                drop(answer);
                Ok((serve_stored(&stale, client), ProxyOutcome::Stale))
            }
            Err(_) if may_serve_stale => Ok((serve_stored(&stale, client), ProxyOutcome::Stale)),
            Err(e) => Err(origin_error(&e)),
            Ok(answer) => Ok((
                self.answer(key, cache_req, answer, loading),
                ProxyOutcome::Miss,
            )),
        }
    }

    /// Updates `stale` from a 304; the refreshed answer, or None if the 304 was not for it.
    fn revalidated(
        &self,
        key: &str,
        cache_req: &Request<()>,
        stale: &Stored,
        answer: &OriginResponse,
    ) -> Option<Arc<Stored>> {
        let now = SystemTime::now();
        let mut head = http::Response::new(());
        *head.status_mut() = answer.status();
        *head.headers_mut() = answer.headers().clone();
        headers::strip_hop_by_hop(head.headers_mut());
        // The 304 is a new answer: without an Age of its own it is 0 old. (The merge keeps
        // every stored header the 304 does not send, the old Age with them.)
        if !head.headers().contains_key(header::AGE) {
            head.headers_mut()
                .insert(header::AGE, HeaderValue::from_static("0"));
        }
        match stale.policy.after_response(cache_req, &head, now) {
            AfterResponse::NotModified(policy, parts) => {
                let mut headers = parts.headers;
                headers.remove(header::AGE);
                let stored = self.stored(policy, stale.status, headers, now)?;
                let (stored, saving) = self.store(
                    key,
                    cache_req,
                    Stored {
                        body: stale.body.clone(),
                        ..stored
                    },
                    None,
                );
                if let Some(saving) = saving {
                    spawn_here(saving);
                }
                Some(stored)
            }
            AfterResponse::Modified(..) => None,
        }
    }

    /// A stored answer's metadata (an empty body), or None when it is not worth storing:
    /// a shared cache may not store it, or it is never fresh and cannot be revalidated.
    fn stored(
        &self,
        policy: CachePolicy,
        status: StatusCode,
        headers: HeaderMap,
        now: SystemTime,
    ) -> Option<Stored> {
        // A Set-Cookie is one client's: never handed to the next (nginx's default too).
        if !policy.is_storable() || headers.contains_key(header::SET_COOKIE) {
            return None;
        }
        let no_cache = says_no_cache(&headers);
        let (ttl, floored) = lifetime(self, &policy, no_cache, now);
        let swr = directive(&headers, "stale-while-revalidate").unwrap_or_default();
        let sie = directive(&headers, "stale-if-error").unwrap_or_default();
        let validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        if ttl.is_zero() && !validators && swr.is_zero() && sie.is_zero() {
            return None;
        }
        let fresh_until = now + ttl;
        // A copy with validators is worth keeping past its freshness (a 304 brings it
        // back); one without only for its RFC 5861 windows.
        let keep = if validators {
            self.max_ttl
        } else {
            Duration::ZERO
        };
        Some(Stored {
            policy,
            status,
            headers,
            body: Bytes::new(),
            fresh_until,
            floored,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            keep_until: fresh_until + keep.max(swr).max(sie),
            refreshing: Default::default(),
            reply: Default::default(),
        })
    }

    /// Leads the load of `key`, or joins the one in progress.
    fn miss(self: &Arc<Self>, key: &str) -> Miss {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = loading.get(key) {
            return Miss::Wait(w.done.clone());
        }
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::watch::channel(());
        loading.insert(key.to_owned(), Waiting { id, done: rx });
        Miss::Lead(Loading {
            route: self.clone(),
            key: key.to_owned(),
            id,
            _done: tx,
            held: None,
        })
    }

    /// Passes an origin's answer to a GET on, storing it as it passes when it may be;
    /// `loading` (the load others wait for) ends when it is stored or found not to be.
    fn answer(
        self: &Arc<Self>,
        key: &str,
        cache_req: CacheRequest<'_>,
        answer: OriginResponse,
        mut loading: Option<Loading>,
    ) -> Response<ReplyBody> {
        let now = SystemTime::now();
        let (mut parts, body) = answer.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let fits = declared.is_none_or(|n| n <= self.max_object_bytes)
            && parts.status != StatusCode::PARTIAL_CONTENT;
        let shareable = !never_shared(&parts.headers);
        if !shareable {
            // The origin says it never may be (not a failure, which may pass): its next
            // misses, here and on the other instances, go straight to it.
            self.store.pass(key);
            let held = loading.as_mut().and_then(|l| l.held.take());
            if let (Some(held), Some(s)) = (held, &self.sharing) {
                release(&s.l2, held, Some((PASS_MARK, store::PASS_FOR)));
            }
        }
        let keep = if fits && shareable {
            let cache_req = cache_req.into_request();
            let policy = shared_policy(&cache_req, &parts, now);
            self.stored(policy, parts.status, parts.headers.clone(), now)
                .map(|head| Keeping {
                    route: self.clone(),
                    key: key.to_owned(),
                    request: cache_req,
                    head,
                    chunks: Vec::new(),
                    len: 0,
                    _loading: loading,
                })
        } else {
            None
        };
        pass(Response::from_parts(parts, body), keep)
    }

    /// Starts one background refresh of `stale` unless one is running or too many are.
    fn refresh_behind(
        self: &Arc<Self>,
        stale: &Arc<Stored>,
        key: &str,
        cache_req: Request<()>,
        to_origin: HeaderMap,
    ) {
        if stale.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(permit) = self.refreshes.clone().try_acquire_owned() else {
            stale.refreshing.store(false, Ordering::Release);
            return;
        };
        self.metrics.refreshes.inc();
        let (route, stale, key) = (self.clone(), stale.clone(), key.to_owned());
        tokio::spawn(async move {
            let _permit = permit;
            let refreshed = route.refresh(&stale, &key, cache_req, to_origin).await;
            if !refreshed {
                // Let a later request try again.
                stale.refreshing.store(false, Ordering::Release);
            }
        });
    }

    /// Asks the origin for `key` again (conditionally) and stores what it says; whether
    /// something was stored.
    async fn refresh(
        &self,
        stale: &Stored,
        key: &str,
        cache_req: Request<()>,
        to_origin: HeaderMap,
    ) -> bool {
        let Ok(path) = key.parse::<http::uri::PathAndQuery>() else {
            return false;
        };
        let Ok(answer) = self
            .origin
            .send(OriginRequest::get(
                Method::GET,
                path,
                conditional(to_origin, stale),
            ))
            .await
        else {
            return false;
        };
        if answer.status() == StatusCode::NOT_MODIFIED {
            return self.revalidated(key, &cache_req, stale, &answer).is_some();
        }
        let now = SystemTime::now();
        let (mut parts, body) = answer.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let policy = shared_policy(&cache_req, &parts, now);
        if parts.status.is_server_error() {
            // Kept: it may answer while the origin fails; a later request tries again.
            return false;
        }
        // The origin has a newer answer: if it cannot be stored, the old one must go.
        let Some(head) = self.stored(policy, parts.status, parts.headers, now) else {
            self.store.remove(key);
            return true;
        };
        let Ok(body) = Limited::new(body, self.max_object_bytes as usize)
            .collect()
            .await
        else {
            self.store.remove(key);
            return true;
        };
        let (_, saving) = self.store(
            key,
            &cache_req,
            Stored {
                body: body.to_bytes(),
                ..head
            },
            None,
        );
        if let Some(saving) = saving {
            saving.await;
        }
        true
    }
}

/// The headers of a revalidation: the client's, with the stored answer's validators.
fn conditional(mut headers: HeaderMap, stored: &Stored) -> HeaderMap {
    for h in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ] {
        headers.remove(h);
    }
    if let Some(etag) = stored.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    headers
}

/// A stored answer as a response: its headers, Age brought up to date, Via; the body (the
/// connection leaves it out for a HEAD, keeping its Content-Length). A 304 without the body when the
/// client's own If-None-Match (or, without one, If-Modified-Since) says it has it already.
fn serve_stored(s: &Arc<Stored>, client: &HeaderMap) -> Response<ReplyBody> {
    let now = SystemTime::now();
    if s.status == StatusCode::OK && client_has_it(s, client) {
        let mut h = s.reply_head().map.clone();
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::AGE, HeaderValue::from(s.age(now)));
        h.insert(X_CACHE, HeaderValue::from_static("HIT"));
        let mut resp = Response::new(Full::new(Bytes::new()).into());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        *resp.headers_mut() = h;
        return resp;
    }
    // Its headers go with the body, the answer's own map left empty (`Kept`).
    let kept = Kept::new(s.clone(), now, ProxyOutcome::Hit);
    let mut resp = Response::new(ReplyBody::Kept(Full::new(s.body.clone()), kept));
    *resp.status_mut() = s.status;
    resp
}

/// A stored answer's headers, with the hit's Age and X-Cache, sent with its body: our
/// HTTP/1 path writes them from the lines made at the first lookup (`h1::write_kept`,
/// `h1::write`), hyper gets them in the answer's map (`ReplyBody::spell_out`). Building,
/// filling and dropping a map per hit was a tenth of one.
pub struct Kept {
    stored: Arc<Stored>,
    age: u64,
    outcome: &'static str,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kept")
    }
}

impl Kept {
    /// `stored`'s headers as served at `now`, X-Cache saying `outcome`.
    pub fn new(stored: Arc<Stored>, now: SystemTime, outcome: ProxyOutcome) -> Self {
        Self {
            age: stored.age(now),
            outcome: outcome.header(),
            stored,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.stored.status
    }

    pub fn body(&self) -> &Bytes {
        &self.stored.body
    }

    /// A fresh stored 200 of `body`, for the tests of what writes one.
    #[cfg(test)]
    pub fn sample(body: &'static [u8]) -> Self {
        let now = SystemTime::now();
        let headers = [("cache-control", "max-age=60")];
        let body = Bytes::from_static(body);
        let stored = Stored::sample(&headers, body, now, Duration::from_secs(60));
        Self::new(Arc::new(stored), now, ProxyOutcome::Hit)
    }

    /// Writes the headers as HTTP/1 lines; whether they say Date.
    pub fn write(&self, out: &mut Vec<u8>) -> bool {
        let head = self.stored.reply_head();
        for part in [
            &b"age: "[..],
            itoa::Buffer::new().format(self.age).as_bytes(),
            b"\r\nx-cache: ",
            self.outcome.as_bytes(),
            b"\r\n",
            &head.wire,
        ] {
            out.extend_from_slice(part);
        }
        head.dated
    }

    /// The headers as a map.
    pub fn map(&self) -> HeaderMap {
        let mut map = self.stored.reply_head().map.clone();
        map.insert(header::AGE, HeaderValue::from(self.age));
        map.insert(X_CACHE, HeaderValue::from_static(self.outcome));
        map
    }
}

/// Whether the client's conditional request matches the stored answer (RFC 9110 section
/// 13.1): an If-None-Match tag equal under weak comparison (or `*`); without one, an
/// If-Modified-Since equal to its Last-Modified (the date the client was given).
fn client_has_it(s: &Stored, client: &HeaderMap) -> bool {
    // Most requests are not conditional: one pass over their few headers says so, where the
    // two lookups below hash both names (0.2k instructions a hit).
    if !client
        .keys()
        .any(|k| k == header::IF_NONE_MATCH || k == header::IF_MODIFIED_SINCE)
    {
        return false;
    }
    let text = |h: &HeaderMap, n: header::HeaderName| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if let Some(inm) = text(client, header::IF_NONE_MATCH) {
        let Some(etag) = text(&s.headers, header::ETAG) else {
            return false;
        };
        return inm
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == weak(&etag));
    }
    match (
        text(client, header::IF_MODIFIED_SINCE),
        text(&s.headers, header::LAST_MODIFIED),
    ) {
        (Some(ims), Some(lm)) => ims == lm,
        _ => false,
    }
}

/// An origin's answer on its way to the client: hop-by-hop headers out, Via in, the body
/// streamed (and kept, with `keep`).
fn pass(answer: OriginResponse, keep: Option<Keeping>) -> Response<ReplyBody> {
    let (mut parts, body) = answer.into_parts();
    headers::from_origin(&mut parts.headers);
    // The version is the hop's, not the message's: an HTTP/1.0 origin's answer goes to an
    // HTTP/1.1 client as HTTP/1.1 (hyper would otherwise write the origin's status line).
    parts.version = http::Version::default();
    Response::from_parts(
        parts,
        ReplyBody::Proxied(Box::new(ProxyBody::new(body, keep))),
    )
}

/// A client's request body for the origin: hyper's, streamed through as it arrives; any
/// other (benches, unit tests) read whole, under `limit`.
async fn outbound_body<B: RequestBody + 'static>(body: B, limit: u64) -> Result<OutBody, ApiError> {
    let mut slot = Some(body);
    if let Some(incoming) =
        (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<hyper::body::Incoming>>()
    {
        return Ok(OutBody::Stream(incoming.take().expect("just put there")));
    }
    let body = slot.take().expect("not taken");
    let bytes = Limited::new(body, limit as usize)
        .collect()
        .await
        .map_err(|e| {
            ApiError::bad_request("body_read_failed", format!("reading the body failed: {e}"))
        })?;
    Ok(OutBody::Bytes(bytes.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn rfc_5861_directives_and_no_cache_are_read_from_any_cache_control_line() {
        let h = headers(&[
            ("cache-control", "max-age=1"),
            (
                "cache-control",
                "Stale-While-Revalidate=30, stale-if-error=\"600\"",
            ),
        ]);
        assert_eq!(
            directive(&h, "stale-while-revalidate"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            directive(&h, "stale-if-error"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(directive(&h, "s-maxage"), None);
        assert!(!says_no_cache(&h));
        assert!(says_no_cache(&headers(&[(
            "cache-control",
            "max-age=5, no-cache"
        )])));
        assert!(says_no_cache(&headers(&[(
            "cache-control",
            "no-cache=\"set-cookie\""
        )])));
        assert!(says_no_cache(&headers(&[("pragma", "no-cache")])));
        assert!(!says_no_cache(&headers(&[("cache-control", "no-store")])));
    }

    #[test]
    fn a_client_conditional_matches_by_weak_etag_or_the_exact_last_modified() {
        let req = Request::get("/a").body(()).unwrap();
        let mut resp = Response::new(());
        *resp.headers_mut() = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        let stored = Stored {
            policy: CachePolicy::new(&req, &resp),
            status: StatusCode::OK,
            headers: resp.headers().clone(),
            body: Bytes::new(),
            fresh_until: SystemTime::now(),
            floored: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            keep_until: SystemTime::now(),
            refreshing: Default::default(),
            reply: Default::default(),
        };
        let has = |pairs: &[(&'static str, &'static str)]| client_has_it(&stored, &headers(pairs));
        assert!(has(&[("if-none-match", "\"v0\", \"v1\"")]));
        assert!(has(&[("if-none-match", "*")]));
        assert!(!has(&[("if-none-match", "\"v2\"")]));
        // If-None-Match decides when it is there.
        assert!(!has(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
        ]));
        assert!(has(&[(
            "if-modified-since",
            "Wed, 21 Oct 2015 07:28:00 GMT"
        )]));
        assert!(!has(&[(
            "if-modified-since",
            "Thu, 22 Oct 2015 07:28:00 GMT"
        )]));
        assert!(!has(&[]));
    }
}

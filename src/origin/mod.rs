//! The origin tier: backend services reached over HTTP when neither L1 nor L2 holds what a
//! client asked for. `Origins` holds every `[[origins]]` by name; `Origin::send` sends one
//! request to one of an origin's upstreams and stands behind it:
//!
//! - **balancing** (`balance`): least-request with the power of two choices, weighted;
//! - **passive health** (`upstream`): `eject_after` failures in a row (no answer, or a 5xx)
//!   take an upstream out for `eject_for`, longer each time, never more than
//!   `eject_max_share` of them at once;
//! - **active health** (`probe`): with `health_path` set, each upstream is probed every
//!   `health_interval`; `unhealthy_after` failed probes take it out, `healthy_after` passes
//!   bring it back. With no upstream left, every one is tried again rather than none;
//! - **retries** (`retry`): on another upstream, for idempotent requests with a body that can
//!   be sent again (any request whose connection could not even be made), after a
//!   full-jitter backoff, within `request_timeout`, capped by the retry budget;
//! - **limits**: `max_concurrent` requests per upstream; connections pooled per upstream
//!   (`pool`: `pool_max_idle`, `pool_idle_timeout`), each counted while open (`connector`).
//!
//! The tier sits below L2 in the data flow: it imports nothing from the cache or the doors.

mod balance;
mod connector;
mod error;
pub mod http1;
mod pool;
mod probe;
mod retry;
mod upstream;

pub use error::OriginError;
pub use retry::is_idempotent;
pub use upstream::OutBody;

use crate::{
    config::{upstream_authority, OriginConfig},
    metrics::{Metrics, OriginMetrics, OriginStatus},
    shutdown::Shutdown,
};
use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use hyper::body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use upstream::{millis_since, InFlight, Limits, Upstream};

/// Least time between two looks for idle connections past their time: a tiny
/// `pool_idle_timeout` must not make the looks a busy loop.
const REAP_EVERY_AT_LEAST: Duration = Duration::from_millis(100);
/// Most time between two looks: an idle connection the upstream closed holds a socket (in
/// CLOSE_WAIT) until looked at, and a look costs no syscall for a connection still quiet.
const REAP_EVERY_AT_MOST: Duration = Duration::from_secs(1);

/// Every configured origin.
#[derive(Default)]
pub struct Origins {
    all: Vec<Arc<Origin>>,
}

impl Origins {
    /// Builds each origin's clients; nothing connects until the first request or probe.
    /// The config has been validated (`config::origin::validate`).
    pub fn new(configs: &[OriginConfig], metrics: &Metrics) -> Self {
        Self {
            all: configs
                .iter()
                .map(|c| Arc::new(Origin::new(c, metrics)))
                .collect(),
        }
    }

    /// The origin `config` describes; it was built from the same config.
    pub fn of(&self, config: &OriginConfig) -> Arc<Origin> {
        self.get(&config.name)
            .expect("origins are built from the config their users read")
            .clone()
    }

    /// The origin named `name`, as loaders and routes refer to it.
    pub fn get(&self, name: &str) -> Option<&Arc<Origin>> {
        self.all.iter().find(|o| &*o.name == name)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Probes every origin that has a `health_path`, and closes the connections idle past
    /// their `pool_idle_timeout` or closed by their upstream, until shutdown.
    pub async fn tend(self: Arc<Self>, shutdown: Shutdown) {
        let probing = self
            .all
            .iter()
            .filter(|o| o.probe.is_some())
            .map(|o| probe::run(o.clone(), shutdown.clone()));
        tokio::join!(
            futures_util::future::join_all(probing),
            self.reap(&shutdown)
        );
    }

    /// Closes idle connections past their time or closed by their upstream, looking twice
    /// per shortest idle timeout, and at least once a second.
    async fn reap(&self, shutdown: &Shutdown) {
        let upstreams = self.all.iter().flat_map(|o| o.upstreams.iter());
        let Some(shortest) = upstreams.clone().map(|u| u.pool.idle_timeout()).min() else {
            return;
        };
        let mut tick =
            tokio::time::interval((shortest / 2).clamp(REAP_EVERY_AT_LEAST, REAP_EVERY_AT_MOST));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => upstreams.clone().for_each(|u| u.pool.reap()),
            }
        }
    }

    /// Each origin's state now, for the status page.
    pub fn snapshot(&self) -> Vec<OriginSnapshot> {
        self.all
            .iter()
            .map(|o| {
                let now = millis_since(o.base);
                OriginSnapshot {
                    name: o.name.clone(),
                    retries: o.metrics.retries.get(),
                    retries_refused: o.metrics.retries_refused.get(),
                    upstreams: o
                        .upstreams
                        .iter()
                        .map(|u| {
                            let (attempts, failures) = u.metrics.attempts();
                            UpstreamSnapshot {
                                upstream: u.label.clone(),
                                weight: u.weight,
                                healthy: u.is_healthy(),
                                ejected: u.is_ejected(now),
                                in_flight: u.inflight(),
                                connections: u.metrics.connections.get().max(0) as u64,
                                attempts,
                                failures,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Refreshes the gauges read off upstream state (ejected, in flight): at scrape time.
    pub fn refresh_gauges(&self) {
        for o in &self.all {
            let now = millis_since(o.base);
            for u in o.upstreams.iter() {
                u.metrics.ejected.set(i64::from(u.is_ejected(now)));
                u.metrics.inflight.set(u.inflight() as i64);
            }
        }
    }
}

/// One origin as the status page shows it.
pub struct OriginSnapshot {
    pub name: Arc<str>,
    pub retries: u64,
    pub retries_refused: u64,
    pub upstreams: Vec<UpstreamSnapshot>,
}

/// One upstream as the status page shows it: counts are totals since start.
pub struct UpstreamSnapshot {
    pub upstream: Arc<str>,
    pub weight: u32,
    pub healthy: bool,
    pub ejected: bool,
    pub in_flight: usize,
    pub connections: u64,
    pub attempts: u64,
    pub failures: u64,
}

/// What `probe` needs from `[[origins]]`.
struct ProbeSettings {
    path: http::uri::PathAndQuery,
    interval: Duration,
    timeout: Duration,
    healthy_after: u32,
    unhealthy_after: u32,
}

/// One backend service and its upstreams.
pub struct Origin {
    name: Arc<str>,
    upstreams: Box<[Arc<Upstream>]>,
    limits: Limits,
    request_timeout: Duration,
    attempt_timeout: Option<Duration>,
    read_timeout: Duration,
    max_retries: u32,
    retry_on: Vec<u16>,
    backoff: Duration,
    backoff_max: Duration,
    eject_max_share: f64,
    budget: retry::Budget,
    probe: Option<ProbeSettings>,
    /// The clock ejections are kept in.
    base: Instant,
    metrics: OriginMetrics,
}

/// A request to an origin: the path it names on whichever upstream is picked.
pub struct OriginRequest {
    pub method: Method,
    pub path: http::uri::PathAndQuery,
    pub headers: HeaderMap,
    /// Bytes can be sent again; a client's body streams once, so is never retried after it
    /// may have left.
    pub body: OutBody,
}

impl OriginRequest {
    /// A GET (or HEAD) with no body.
    pub fn get(method: Method, path: http::uri::PathAndQuery, headers: HeaderMap) -> Self {
        Self {
            method,
            path,
            headers,
            body: OutBody::Bytes(Bytes::new()),
        }
    }
}

/// A response from an upstream; its body keeps the request counted in flight there until it
/// has been read or dropped.
pub type OriginResponse = Response<OriginBody>;

impl Origin {
    fn new(c: &OriginConfig, metrics: &Metrics) -> Self {
        let name: Arc<str> = c.name.as_str().into();
        let authorities: Vec<_> = c
            .upstreams
            .iter()
            .map(|u| upstream_authority(u.url()).expect("validated"))
            .collect();
        let labels: Vec<&str> = authorities.iter().map(|a| a.as_str()).collect();
        let (metrics, per_upstream) = metrics.origin(&name, &labels);
        let upstreams = authorities
            .into_iter()
            .zip(&c.upstreams)
            .zip(per_upstream)
            .map(|((authority, u), m)| {
                Arc::new(Upstream::new(
                    authority,
                    u.weight(),
                    c.connect_timeout.0,
                    c.pool_idle_timeout.0,
                    c.pool_max_idle,
                    m,
                ))
            })
            .collect();
        let probe = (!c.health_path.is_empty()).then(|| ProbeSettings {
            path: c.health_path.parse().expect("validated"),
            interval: c.health_interval.0,
            timeout: c.health_timeout.0,
            healthy_after: c.healthy_after,
            unhealthy_after: c.unhealthy_after,
        });
        Self {
            name,
            upstreams,
            limits: Limits {
                max_concurrent: c.max_concurrent,
                eject_after: c.eject_after,
                eject_for: c.eject_for.0,
                eject_max: c.eject_max.0,
            },
            request_timeout: c.request_timeout.0,
            attempt_timeout: (!c.attempt_timeout.0.is_zero()).then_some(c.attempt_timeout.0),
            read_timeout: c.read_timeout.0,
            max_retries: c.max_retries,
            retry_on: c.retry_on.clone(),
            backoff: c.retry_backoff.0,
            backoff_max: c.retry_backoff_max.0,
            eject_max_share: c.eject_max_share,
            budget: retry::Budget::new(c.retry_budget, c.retry_min_concurrent),
            probe,
            base: Instant::now(),
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `request_timeout`: how long a whole request may take, retries included.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `req` to an upstream, retrying on another as the module doc says. Returns the
    /// first answer that is not a retryable failure, or the last one when retries run out
    /// (a 503 from the origin is passed on as it came); an error only when no upstream
    /// answered at all.
    pub async fn send(&self, req: OriginRequest) -> Result<OriginResponse, OriginError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let _counted = self.budget.request();
        let OriginRequest {
            method,
            path,
            headers,
            body,
        } = req;
        // Bytes are kept for another attempt; a stream goes once.
        let (bytes, mut stream) = match body {
            OutBody::Bytes(b) => (b, None),
            OutBody::Stream(s) => (Bytes::new(), Some(s)),
        };
        let may_retry = stream.is_none() && is_idempotent(&method);
        let mut tried: balance::Set = 0;
        let mut retry_guard = None;
        let mut retries = 0;
        loop {
            let (upstream, slot) = self.choose(&mut tried)?;
            // Origin-form, with the upstream's Host unless the caller set one.
            let mut out = http1::Outgoing {
                method: &method,
                target: path.as_str(),
                headers: &headers,
                host: &upstream.host,
                body: match &mut stream {
                    Some(s) => http1::Payload::Stream(s),
                    None => http1::Payload::Bytes(&bytes),
                },
            };
            let started = Instant::now();
            let now = tokio::time::Instant::now();
            let attempt_deadline = match self.attempt_timeout {
                Some(t) => deadline.min(now + t),
                None => deadline,
            };
            let outcome = upstream.pool.send(&mut out, attempt_deadline).await;
            upstream
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            drop(retry_guard.take());
            let (error, connect) = match outcome {
                Ok((head, conn)) => {
                    let status = head.status.as_u16();
                    upstream.metrics.count(OriginStatus::of(status));
                    if status >= 500 {
                        self.failed(&upstream);
                    } else {
                        upstream.succeeded(&self.limits);
                    }
                    if may_retry && self.retry_on.contains(&status) {
                        if let Some((guard, wait)) = self.next_retry(retries, deadline) {
                            drop((head, conn, slot));
                            retries += 1;
                            tokio::time::sleep(wait).await;
                            retry_guard = Some(guard);
                            continue;
                        }
                    }
                    let http1::Head {
                        status,
                        version,
                        headers,
                        framing,
                        reusable,
                    } = head;
                    let body = OriginBody::new(framing, reusable, conn, slot, self.read_timeout);
                    let mut response = Response::new(body);
                    *response.status_mut() = status;
                    *response.version_mut() = version;
                    *response.headers_mut() = headers;
                    return Ok(response);
                }
                Err(e) => {
                    self.failed(&upstream);
                    let (origin, label) = (self.name.clone(), upstream.label.clone());
                    let (status, error, connect) = match e {
                        pool::SendError::Timeout => (
                            OriginStatus::Timeout,
                            OriginError::Timeout {
                                origin,
                                upstream: label,
                                after: attempt_deadline.saturating_duration_since(now),
                            },
                            false,
                        ),
                        pool::SendError::Connect(detail) => (
                            OriginStatus::Error,
                            OriginError::Connect {
                                origin,
                                upstream: label,
                                detail,
                            },
                            true,
                        ),
                        pool::SendError::Failed(detail) => (
                            OriginStatus::Error,
                            OriginError::Failed {
                                origin,
                                upstream: label,
                                detail,
                            },
                            false,
                        ),
                    };
                    upstream.metrics.count(status);
                    (error, connect)
                }
            };
            drop(slot);
            // A connection never made carried nothing: any request with its bytes kept may go
            // elsewhere.
            let retryable = may_retry || connect && stream.is_none();
            match retryable
                .then(|| self.next_retry(retries, deadline))
                .flatten()
            {
                Some((guard, wait)) => {
                    retries += 1;
                    tokio::time::sleep(wait).await;
                    retry_guard = Some(guard);
                }
                None => return Err(error),
            }
        }
    }

    /// Whether another attempt may follow attempt `retries + 1`: `max_retries`, the budget
    /// and the deadline (the backoff must end before it) all allow it. Then the retry,
    /// counted in flight, and how long to wait before it.
    fn next_retry(
        &self,
        retries: u32,
        deadline: tokio::time::Instant,
    ) -> Option<(retry::Counted<'_>, Duration)> {
        if retries >= self.max_retries {
            return None;
        }
        let wait = retry::backoff(retries + 1, self.backoff, self.backoff_max, |n| {
            fastrand::u64(..n)
        });
        if tokio::time::Instant::now() + wait >= deadline {
            return None;
        }
        let Some(guard) = self.budget.retry() else {
            self.metrics.retries_refused.inc();
            return None;
        };
        self.metrics.retries.inc();
        Some((guard, wait))
    }

    /// An upstream for the next attempt, with a slot taken on it: one not yet tried if any
    /// can take it. Those ejected or failing probes are left out, unless that leaves none.
    fn choose(&self, tried: &mut balance::Set) -> Result<(Arc<Upstream>, InFlight), OriginError> {
        let now = millis_since(self.base);
        let all: balance::Set = if self.upstreams.len() == 64 {
            u64::MAX
        } else {
            (1 << self.upstreams.len()) - 1
        };
        let mut full: balance::Set = 0;
        loop {
            let open = all & !full;
            let up = balance::members(open)
                .filter(|&i| {
                    let u = &self.upstreams[i];
                    u.is_healthy() && !u.is_ejected(now)
                })
                .fold(0, |set, i| set | 1 << i);
            // Nothing up: every upstream again, rather than no answer at all.
            let pool = if up != 0 { up } else { open };
            let fresh = pool & !*tried;
            let candidates = if fresh != 0 { fresh } else { pool };
            let Some(i) = balance::pick(
                candidates,
                |i| self.upstreams[i].weight,
                |i| self.upstreams[i].inflight(),
                |n| fastrand::u64(..n),
            ) else {
                return Err(OriginError::Saturated {
                    origin: self.name.clone(),
                });
            };
            let u = &self.upstreams[i];
            match u.begin(self.limits.max_concurrent) {
                Some(slot) => {
                    *tried |= 1 << i;
                    return Ok((u.clone(), slot));
                }
                None => full |= 1 << i,
            }
        }
    }

    /// Records a failure on `u`, ejecting it if its streak is long enough and no more than
    /// `eject_max_share` of the upstreams would then be out.
    fn failed(&self, u: &Upstream) {
        let now = millis_since(self.base);
        let ejected = u.failed(&self.limits, now, || {
            let out = self.upstreams.iter().filter(|u| u.is_ejected(now)).count();
            (out + 1) as f64 <= self.upstreams.len() as f64 * self.eject_max_share
        });
        if let Some(length) = ejected {
            tracing::warn!(
                origin = %self.name,
                upstream = %u.label,
                for_ = %humantime::format_duration(length),
                "upstream ejected after {} failures in a row",
                self.limits.eject_after
            );
        }
    }
}

/// An upstream's response body, holding the request's slot on that upstream until it ends,
/// and then handing its connection back to the upstream's pool: only a body read to its end
/// leaves the connection ready for another request. A body that has been silent for
/// `read_timeout` ends in an error, and its connection is closed.
pub struct OriginBody {
    /// The connection it is read from, until it ends.
    conn: Option<http1::Conn>,
    framing: http1::Framing,
    /// Whether the connection may carry another request after it.
    reusable: bool,
    slot: InFlight,
    read_timeout: Duration,
    /// Set when the body is first waited for: one that came with its head never needs it.
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer counts from the last frame: reset at the first wait after one.
    waiting: bool,
}

/// Why an origin's body did not end well.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Origin(#[from] std::io::Error),
    #[error("the origin sent nothing for {0:?} (read_timeout) in the middle of its answer")]
    Silent(Duration),
}

impl OriginBody {
    fn new(
        framing: http1::Framing,
        reusable: bool,
        conn: http1::Conn,
        slot: InFlight,
        read_timeout: Duration,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            framing,
            reusable,
            slot,
            read_timeout,
            silence: None,
            waiting: false,
        };
        // No body at all (HEAD, 204, 304): nothing will poll for its end.
        if body.is_end_stream() {
            body.ended();
        }
        body
    }

    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable {
                self.slot.upstream().pool.put(conn);
            }
        }
    }

    /// Pending while the origin has been silent less than `read_timeout`.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        use std::future::Future;
        let timeout = self.read_timeout;
        let timer = self
            .silence
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if !self.waiting {
            timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            self.waiting = true;
        }
        timer.as_mut().poll(cx)
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match conn.poll_body(&mut this.framing, cx) {
            Poll::Pending => {
                if this.poll_silence(cx).is_pending() {
                    return Poll::Pending;
                }
                // The connection goes: the rest of this answer may still be on its way.
                this.conn = None;
                Poll::Ready(Some(Err(BodyError::Silent(this.read_timeout))))
            }
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(data))) => {
                this.waiting = false;
                if this.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, http1::Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            http1::Framing::Done => SizeHint::with_exact(0),
            http1::Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

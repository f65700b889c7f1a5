//! The proxy routes' metrics (`[[origins.routes]]`), labelled by route prefix: routes come
//! from the config, so the label set is bounded and each child is resolved once, when the
//! route is built.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// How the route cache answered a proxied request, as the `cache` label and `X-Cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyOutcome {
    /// A fresh stored answer.
    Hit = 0,
    /// Asked the origin: nothing stored matched (what it answered may now be stored).
    Miss = 1,
    /// A stored answer past its freshness, under stale-while-revalidate or stale-if-error.
    Stale = 2,
    /// A stored answer the origin confirmed with 304.
    Revalidated = 3,
    /// Not for the cache: other methods, and PURGE.
    Bypass = 4,
}

impl ProxyOutcome {
    pub const ALL: [ProxyOutcome; 5] = [
        ProxyOutcome::Hit,
        ProxyOutcome::Miss,
        ProxyOutcome::Stale,
        ProxyOutcome::Revalidated,
        ProxyOutcome::Bypass,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProxyOutcome::Hit => "hit",
            ProxyOutcome::Miss => "miss",
            ProxyOutcome::Stale => "stale",
            ProxyOutcome::Revalidated => "revalidated",
            ProxyOutcome::Bypass => "bypass",
        }
    }

    /// The `X-Cache` value.
    pub fn header(self) -> &'static str {
        match self {
            ProxyOutcome::Hit => "HIT",
            ProxyOutcome::Miss => "MISS",
            ProxyOutcome::Stale => "STALE",
            ProxyOutcome::Revalidated => "REVALIDATED",
            ProxyOutcome::Bypass => "BYPASS",
        }
    }
}

pub struct ProxyVecs {
    requests: IntCounterVec,
    stored: IntCounterVec,
    bytes: IntGaugeVec,
    entries: IntGaugeVec,
    refreshes: IntCounterVec,
}

/// One route's figures.
pub struct ProxyMetrics {
    requests: [IntCounter; ProxyOutcome::ALL.len()],
    /// Answers stored (a new variant or a replaced one).
    pub stored: IntCounter,
    /// Bytes the route's cache holds (bodies and headers); set at scrape time.
    pub bytes: IntGauge,
    /// URLs the route's cache holds; set at scrape time.
    pub entries: IntGauge,
    /// Background refreshes started by stale-while-revalidate.
    pub refreshes: IntCounter,
}

impl ProxyMetrics {
    pub fn count(&self, outcome: ProxyOutcome) {
        self.requests[outcome as usize].inc();
    }
}

impl ProxyVecs {
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["route"]).unwrap();
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        Self {
            requests: counter(
                "proxy_requests_total",
                "Requests proxied on a route, by how the route cache answered (hit, miss, stale, revalidated, bypass)",
                &["route", "cache"],
            ),
            stored: counter(
                "proxy_stored_total",
                "Origin answers stored in a route's cache",
                &["route"],
            ),
            bytes: gauge(
                "proxy_cache_bytes",
                "Bytes held in a route's cache (bodies and headers)",
            ),
            entries: gauge("proxy_cache_entries", "URLs held in a route's cache"),
            refreshes: counter(
                "proxy_background_refreshes_total",
                "Background refreshes started for answers served stale (stale-while-revalidate)",
                &["route"],
            ),
        }
    }

    pub fn resolve(&self, route: &str) -> ProxyMetrics {
        ProxyMetrics {
            requests: ProxyOutcome::ALL
                .map(|o| self.requests.with_label_values(&[route, o.label()])),
            stored: self.stored.with_label_values(&[route]),
            bytes: self.bytes.with_label_values(&[route]),
            entries: self.entries.with_label_values(&[route]),
            refreshes: self.refreshes.with_label_values(&[route]),
        }
    }
}

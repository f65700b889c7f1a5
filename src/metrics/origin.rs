//! The origin tier's metrics, per origin and per upstream. Origins and upstreams come from
//! the config, so every labelled child is resolved once when an origin is built
//! (`Metrics::origin`); recording is an index and an atomic add, as everywhere else.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// How an attempt ended, as the `status` label: the answer's class, or no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginStatus {
    Informational = 0,
    Success = 1,
    Redirect = 2,
    ClientError = 3,
    ServerError = 4,
    /// No answer within the attempt's time.
    Timeout = 5,
    /// No answer: the connection could not be made, or failed.
    Error = 6,
}
const ORIGIN_STATUSES: [&str; 7] = ["1xx", "2xx", "3xx", "4xx", "5xx", "timeout", "error"];

impl OriginStatus {
    pub fn of(status: u16) -> Self {
        match status {
            ..200 => OriginStatus::Informational,
            200..300 => OriginStatus::Success,
            300..400 => OriginStatus::Redirect,
            400..500 => OriginStatus::ClientError,
            _ => OriginStatus::ServerError,
        }
    }
}

/// Origin latencies: a LAN service answers in a millisecond or two, a slow one in seconds.
const ORIGIN_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
];

/// The labelled families, registered at start-up.
pub struct OriginVecs {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    retries_refused: IntCounterVec,
    ejections: IntCounterVec,
    ejected: IntGaugeVec,
    healthy: IntGaugeVec,
    connections: IntGaugeVec,
    inflight: IntGaugeVec,
}

/// One origin's figures.
#[derive(Clone)]
pub struct OriginMetrics {
    /// Retries made (each a further attempt on an upstream).
    pub retries: IntCounter,
    /// Retries not made because the retry budget was spent.
    pub retries_refused: IntCounter,
}

/// One upstream's figures.
pub struct UpstreamMetrics {
    requests: [IntCounter; ORIGIN_STATUSES.len()],
    pub duration: Histogram,
    pub ejections: IntCounter,
    /// Set at scrape time.
    pub ejected: IntGauge,
    /// What the active probes concluded (1 while probes are off).
    pub healthy: IntGauge,
    /// Connections open (pooled and busy).
    pub connections: IntGauge,
    /// Set at scrape time.
    pub inflight: IntGauge,
}

impl UpstreamMetrics {
    pub fn count(&self, status: OriginStatus) {
        self.requests[status as usize].inc();
    }

    /// Attempts made, and those that failed (5xx, timeout, error): for the status page.
    pub fn attempts(&self) -> (u64, u64) {
        let n = |s: OriginStatus| self.requests[s as usize].get();
        let failed =
            n(OriginStatus::ServerError) + n(OriginStatus::Timeout) + n(OriginStatus::Error);
        (self.requests.iter().map(|c| c.get()).sum(), failed)
    }
}

impl OriginVecs {
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["origin", "upstream"]).unwrap();
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "origin_request_duration_seconds",
                "Time from sending an attempt to an upstream to its response headers (or failure)",
            )
            .buckets(ORIGIN_BUCKETS.to_vec()),
            &["origin", "upstream"],
        )
        .unwrap();
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        Self {
            requests: counter(
                "origin_requests_total",
                "Attempts sent to upstreams, by how they ended (status class, timeout, error)",
                &["origin", "upstream", "status"],
            ),
            duration,
            retries: counter(
                "origin_retries_total",
                "Retries made: further attempts after a failure, on another upstream where one is left",
                &["origin"],
            ),
            retries_refused: counter(
                "origin_retries_refused_total",
                "Retries not made because retries in flight had reached the retry budget",
                &["origin"],
            ),
            ejections: counter(
                "origin_ejections_total",
                "Upstreams ejected after eject_after failures in a row",
                &["origin", "upstream"],
            ),
            ejected: gauge(
                "origin_upstream_ejected",
                "1 while the upstream is ejected (passive health)",
            ),
            healthy: gauge(
                "origin_upstream_healthy",
                "1 while the upstream passes its health probes (always 1 with probes off)",
            ),
            connections: gauge(
                "origin_connections",
                "Connections open to the upstream, idle in the pool or busy",
            ),
            inflight: gauge(
                "origin_in_flight",
                "Requests in flight to the upstream, until their response body ends",
            ),
        }
    }

    /// Resolves the children for one origin and its upstreams (by `host:port`).
    pub fn resolve(
        &self,
        origin: &str,
        upstreams: &[&str],
    ) -> (OriginMetrics, Vec<UpstreamMetrics>) {
        let per_upstream = upstreams
            .iter()
            .map(|u| {
                let labels = [origin, u];
                UpstreamMetrics {
                    requests: ORIGIN_STATUSES
                        .map(|s| self.requests.with_label_values(&[origin, u, s])),
                    duration: self.duration.with_label_values(&labels),
                    ejections: self.ejections.with_label_values(&labels),
                    ejected: self.ejected.with_label_values(&labels),
                    healthy: self.healthy.with_label_values(&labels),
                    connections: self.connections.with_label_values(&labels),
                    inflight: self.inflight.with_label_values(&labels),
                }
            })
            .collect();
        let origin = OriginMetrics {
            retries: self.retries.with_label_values(&[origin]),
            retries_refused: self.retries_refused.with_label_values(&[origin]),
        };
        (origin, per_upstream)
    }
}

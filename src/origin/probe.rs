//! Active health checks: every `health_interval`, a `GET health_path` to each upstream of an
//! origin, answered 2xx within `health_timeout` or failed. `unhealthy_after` failures in a row
//! take the upstream out of balancing; `healthy_after` passes in a row bring it back. Probes go
//! over the upstream's own pool, so they also keep a connection warm. Upstreams start
//! healthy: an origin is usable from the first request, as nginx's are.

use super::{
    http1::{Outgoing, Payload},
    upstream::Upstream,
    Origin, ProbeSettings,
};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method};
use std::{future::poll_fn, sync::Arc};

/// Probes `origin`'s upstreams until shutdown.
pub async fn run(origin: Arc<Origin>, shutdown: Shutdown) {
    let Some(settings) = &origin.probe else {
        return;
    };
    let mut streaks = vec![Streak::default(); origin.upstreams.len()];
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let probes = origin.upstreams.iter().map(|u| probe(u, settings));
        let results = futures_util::future::join_all(probes).await;
        for ((u, streak), passed) in origin.upstreams.iter().zip(&mut streaks).zip(results) {
            let Some(healthy) = streak.record(passed, settings) else {
                continue;
            };
            if u.set_healthy(healthy) {
                if healthy {
                    tracing::info!(origin = origin.name(), upstream = %u.label, "upstream passes its health probes again");
                } else {
                    tracing::warn!(
                        origin = origin.name(),
                        upstream = %u.label,
                        path = %settings.path,
                        "upstream failed {} health probes in a row: out of balancing",
                        settings.unhealthy_after
                    );
                }
            }
        }
    }
}

/// Passes or failures in a row.
#[derive(Clone, Copy, Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one probe; the new verdict when a streak reaches its threshold.
    fn record(&mut self, passed: bool, s: &ProbeSettings) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (self.passes >= s.healthy_after).then_some(true)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures >= s.unhealthy_after).then_some(false)
        }
    }
}

/// One probe: true when answered 2xx in time. The body is read so the connection can be
/// pooled again.
async fn probe(u: &Upstream, s: &ProbeSettings) -> bool {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("tiergate-health-probe"),
    );
    let bytes = Bytes::new();
    let mut out = Outgoing {
        method: &Method::GET,
        target: s.path.as_str(),
        headers: &headers,
        host: &u.host,
        body: Payload::Bytes(&bytes),
    };
    let answered = async {
        let by = tokio::time::Instant::now() + s.timeout;
        let (mut head, mut conn) = u.pool.send(&mut out, by).await.ok()?;
        while let Some(piece) = poll_fn(|cx| conn.poll_body(&mut head.framing, cx)).await {
            piece.ok()?;
        }
        if head.reusable {
            u.pool.put(conn);
        }
        Some(head.status.is_success())
    };
    matches!(
        tokio::time::timeout(s.timeout, answered).await,
        Ok(Some(true))
    )
}

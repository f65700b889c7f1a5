//! `OriginError`: why an origin request got no answer, and the status a door answers with.
//! Each is the origin's state, not the request's fault: a client may try again later.

use std::{sync::Arc, time::Duration};

#[derive(Clone, Debug, thiserror::Error)]
pub enum OriginError {
    /// Every upstream was ejected, failing its probes, or at `max_concurrent`.
    #[error("origin {origin}: no upstream can take the request (each is ejected, unhealthy or at max_concurrent)")]
    Saturated { origin: Arc<str> },
    /// The TCP connection could not be made: the request never left.
    #[error("origin {origin}: cannot connect to {upstream}: {detail}")]
    Connect {
        origin: Arc<str>,
        upstream: Arc<str>,
        detail: String,
    },
    /// No answer within the attempt's time (`attempt_timeout`, or what was left of
    /// `request_timeout`).
    #[error("origin {origin}: {upstream} did not answer within {}", humantime::format_duration(*.after))]
    Timeout {
        origin: Arc<str>,
        upstream: Arc<str>,
        after: Duration,
    },
    /// The connection failed after the request was sent (reset, closed, bad HTTP).
    #[error("origin {origin}: {upstream} failed: {detail}")]
    Failed {
        origin: Arc<str>,
        upstream: Arc<str>,
        detail: String,
    },
}

impl OriginError {
    /// The status a door answers with: 504 when the origin was too slow, 503 when nothing
    /// could take the request, 502 when an upstream failed.
    pub fn status(&self) -> u16 {
        match self {
            OriginError::Timeout { .. } => 504,
            OriginError::Saturated { .. } => 503,
            OriginError::Connect { .. } | OriginError::Failed { .. } => 502,
        }
    }

    /// A stable code for the JSON error body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            OriginError::Timeout { .. } => "origin_timeout",
            OriginError::Saturated { .. } => "origin_unavailable",
            OriginError::Connect { .. } => "origin_unreachable",
            OriginError::Failed { .. } => "origin_failed",
        }
    }
}

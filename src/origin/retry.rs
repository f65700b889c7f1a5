//! Retries: when one may be made, how long to wait before it, and the budget that caps them.
//!
//! The budget is Envoy's: retries in flight may be at most `retry_budget` of the requests in
//! flight (or `retry_min_concurrent`, whichever is more). A failing origin then sees at most
//! that much extra load from retries, where per-request retry counts alone would multiply its
//! load by 1 + `max_retries` just when it is least able to take it. Two atomics; written by
//! hand because tower's `TpsBudget` budgets retries per second over a window, not against
//! what is in flight.

use http::Method;
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Methods RFC 9110 (section 9.2.2) calls idempotent: sending one twice has the effect of
/// sending it once, so a failed attempt may be made again. POST and PATCH never are.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a random wait below
/// `base · 2^(retry-1)`, capped at `max`. `retry` counts from 1.
pub fn backoff(
    retry: u32,
    base: Duration,
    max: Duration,
    draw: impl FnOnce(u64) -> u64,
) -> Duration {
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(max);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { draw(nanos) })
}

/// Requests and retries in flight for one origin.
pub struct Budget {
    share: f64,
    min: usize,
    requests: AtomicUsize,
    retries: AtomicUsize,
}

impl Budget {
    pub fn new(share: f64, min: usize) -> Self {
        Self {
            share,
            min,
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn request(&self) -> Counted<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Counted(&self.requests)
    }

    /// A retry in flight until the guard drops, or None when the budget is spent.
    pub fn retry(&self) -> Option<Counted<'_>> {
        let requests = self.requests.load(Ordering::Relaxed);
        let allowed = ((requests as f64 * self.share) as usize).max(self.min);
        if self.retries.fetch_add(1, Ordering::Relaxed) >= allowed {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Counted(&self.retries))
    }
}

/// One request or retry counted in flight.
pub struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceilings_double_up_to_the_max() {
        let ms = Duration::from_millis;
        let top = |retry| backoff(retry, ms(25), ms(250), |n| n - 1);
        assert!(top(1) < ms(25) && top(1) > ms(24));
        assert!(top(2) < ms(50) && top(2) > ms(49));
        assert!(top(4) < ms(200));
        assert!(top(5) < ms(250) && top(5) > ms(249));
        assert!(top(40) < ms(250));
        assert_eq!(backoff(1, ms(25), ms(250), |_| 0), Duration::ZERO);
    }

    #[test]
    fn retries_in_flight_are_capped_by_a_share_of_requests() {
        let b = Budget::new(0.2, 3);
        let requests: Vec<_> = (0..50).map(|_| b.request()).collect();
        let retries: Vec<_> = std::iter::from_fn(|| b.retry()).take(100).collect();
        assert_eq!(retries.len(), 10);
        drop(retries);
        drop(requests);
        // With nothing in flight, the floor still allows a few.
        let few: Vec<_> = std::iter::from_fn(|| b.retry()).take(100).collect();
        assert_eq!(few.len(), 3);
    }

    #[test]
    fn post_and_patch_are_not_idempotent() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}

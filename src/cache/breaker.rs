//! The circuit breaker around L2. After `l2.breaker_failures` calls in a row fail to reach
//! Redis (refused, dropped or timed out), L2 calls are refused at once for
//! `l2.breaker_cooldown` instead of each waiting out `l2.timeout`: a hung Redis must not pile
//! up waiting requests. Then one call at a time is let through as a trial (half-open); its
//! success closes the circuit, its failure opens it for another cooldown. A successful health
//! probe also closes it, so recovery does not wait for traffic.
//!
//! Lock-free: the state is three atomics read on every L2 call.

use super::L2Error;
use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Closed: `open_until` is this.
const CLOSED: u64 = 0;

pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    /// Failures in a row since the last success.
    failures: AtomicU32,
    /// Milliseconds since `base` until which calls are refused; `CLOSED` when closed. Past
    /// that instant the circuit is half-open.
    open_until: AtomicU64,
    /// Whether a half-open trial call is out.
    trial: AtomicBool,
    base: Instant,
}

/// Leave to make a call, and what kind of call it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Normal,
    /// The one call let through while half-open: its outcome decides the state.
    Trial,
}

/// Leave for one call. Its outcome is recorded with `record`; dropped unrecorded (the caller
/// was cancelled), a half-open trial is handed back so the circuit cannot stick open.
pub struct Ticket<'a> {
    breaker: &'a Breaker,
    pass: Pass,
}

impl Ticket<'_> {
    #[cfg(test)]
    fn pass(&self) -> Pass {
        self.pass
    }

    pub fn record(self, outcome: &Result<impl Sized, L2Error>) -> Option<Change> {
        let this = std::mem::ManuallyDrop::new(self);
        this.breaker.record(this.pass, outcome)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.breaker.abandon(self.pass);
    }
}

/// A state change the caller logs and counts (kept out of here so this stays pure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown_ms: (cooldown.as_millis() as u64).max(1),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(CLOSED),
            trial: AtomicBool::new(false),
            base: Instant::now(),
        }
    }

    /// Failures in a row that open the circuit.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// How long the circuit stays open before a trial.
    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms)
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "now" is never CLOSED.
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Whether the circuit is open or half-open (calls are being refused).
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != CLOSED
    }

    /// Leave for one call, or None while the circuit is open (or half-open with its trial
    /// already out).
    pub fn admit(&self) -> Option<Ticket<'_>> {
        let until = self.open_until.load(Ordering::Acquire);
        let pass = if until == CLOSED {
            Pass::Normal
        } else if self.now_ms() < until {
            return None;
        } else {
            self.trial
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .ok()?;
            Pass::Trial
        };
        Some(Ticket {
            breaker: self,
            pass,
        })
    }

    /// Records a call's outcome. Only failures to reach Redis count: an error Redis answered
    /// with (WRONGTYPE, say) is a working Redis.
    fn record(&self, pass: Pass, outcome: &Result<impl Sized, L2Error>) -> Option<Change> {
        let reached = !matches!(outcome, Err(e) if e.is_outage());
        if reached {
            self.failures.store(0, Ordering::Relaxed);
            return self.close();
        }
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        match pass {
            Pass::Trial => {
                self.open_until
                    .store(self.now_ms() + self.cooldown_ms, Ordering::Release);
                self.trial.store(false, Ordering::Release);
                None
            }
            Pass::Normal if n >= self.threshold => {
                let until = self.now_ms() + self.cooldown_ms;
                self.open_until
                    .compare_exchange(CLOSED, until, Ordering::AcqRel, Ordering::Acquire)
                    .ok()
                    .map(|_| Change::Opened)
            }
            Pass::Normal => None,
        }
    }

    /// A health probe reached Redis: close now rather than wait for a trial call.
    pub fn probe_succeeded(&self) -> Option<Change> {
        self.failures.store(0, Ordering::Relaxed);
        self.close()
    }

    /// A trial call that ended without an outcome (its caller went away): let another try.
    fn abandon(&self, pass: Pass) {
        if pass == Pass::Trial {
            self.trial.store(false, Ordering::Release);
        }
    }

    fn close(&self) -> Option<Change> {
        if self.open_until.load(Ordering::Acquire) == CLOSED {
            return None;
        }
        self.trial.store(false, Ordering::Release);
        (self.open_until.swap(CLOSED, Ordering::AcqRel) != CLOSED).then_some(Change::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Result<(), L2Error> = Err(L2Error::Timeout);
    const OK: Result<(), L2Error> = Ok(());

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(b.record(Pass::Normal, &FAIL), None);
        }
        assert_eq!(
            b.record(Pass::Normal, &OK),
            None,
            "a success resets the run"
        );
        for _ in 0..2 {
            assert_eq!(b.record(Pass::Normal, &FAIL), None);
        }
        assert_eq!(b.admit().unwrap().record(&FAIL), Some(Change::Opened));
        assert!(b.admit().is_none(), "open: refused at once");
        assert!(b.is_open());
        assert_eq!(b.record(Pass::Normal, &FAIL), None, "opens once");
    }

    #[test]
    fn an_answered_error_is_not_a_failure() {
        let b = Breaker::new(1, Duration::from_secs(60));
        let refused: Result<(), L2Error> = Err(L2Error::store("WRONGTYPE", "wrong kind"));
        assert_eq!(b.record(Pass::Normal, &refused), None);
        assert_eq!(b.admit().map(|t| t.pass()), Some(Pass::Normal));
    }

    #[test]
    fn half_open_lets_one_trial_through_and_it_decides() {
        let b = Breaker::new(1, Duration::from_millis(1));
        assert_eq!(b.record(Pass::Normal, &FAIL), Some(Change::Opened));
        std::thread::sleep(Duration::from_millis(5));
        let trial = b.admit().unwrap();
        assert_eq!(trial.pass(), Pass::Trial);
        assert!(b.admit().is_none(), "one trial at a time");
        assert_eq!(trial.record(&FAIL), None, "a failed trial reopens");
        assert!(b.is_open());
        std::thread::sleep(Duration::from_millis(5));
        let trial = b.admit().unwrap();
        assert_eq!(trial.pass(), Pass::Trial);
        assert_eq!(trial.record(&OK), Some(Change::Closed));
        assert_eq!(b.admit().map(|t| t.pass()), Some(Pass::Normal));
        assert!(!b.is_open());
    }

    #[test]
    fn an_abandoned_trial_is_handed_back() {
        let b = Breaker::new(1, Duration::from_millis(1));
        b.record(Pass::Normal, &FAIL);
        std::thread::sleep(Duration::from_millis(5));
        drop(b.admit().unwrap());
        assert_eq!(b.admit().map(|t| t.pass()), Some(Pass::Trial));
    }

    #[test]
    fn a_good_probe_closes_it() {
        let b = Breaker::new(1, Duration::from_secs(60));
        assert_eq!(b.record(Pass::Normal, &FAIL), Some(Change::Opened));
        assert_eq!(b.probe_succeeded(), Some(Change::Closed));
        assert_eq!(b.probe_succeeded(), None);
        assert_eq!(b.admit().map(|t| t.pass()), Some(Pass::Normal));
    }
}

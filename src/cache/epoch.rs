//! Write epochs: striped counters that a write bumps after L2 has accepted it, so that a
//! read-through load which raced with the write can tell its value may be stale and drop it
//! from L1. moka does not serialise `invalidate` with an in-flight loader for the same key,
//! so without this a load that read the old value before a write could land in L1 after it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Power of two; a collision only costs a needless L1 invalidation.
const STRIPES: usize = 4096;

pub struct Epochs {
    stripes: Box<[AtomicU64]>,
    /// Randomly keyed, like L1's: clients choose keys, and must not be able to pile them
    /// into one stripe. SipHash cost every write a few hundred instructions.
    hasher: ahash::RandomState,
}

impl Epochs {
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn stripe(&self, key: &[u8]) -> &AtomicU64 {
        let h = self.hasher.hash_one(key);
        &self.stripes[h as usize & (STRIPES - 1)]
    }

    pub fn read(&self, key: &[u8]) -> u64 {
        self.stripe(key).load(Ordering::Acquire)
    }

    pub fn bump(&self, key: &[u8]) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Bumps every key's epoch: for an L1 flush, so that loads in flight drop what they read.
    pub fn bump_all(&self) {
        for s in self.stripes.iter() {
            s.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Default for Epochs {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_is_seen_by_its_key() {
        let e = Epochs::new();
        let before = e.read(b"a");
        e.bump(b"a");
        assert_ne!(before, e.read(b"a"));
    }
}

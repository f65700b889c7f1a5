//! Hot keys: an approximate top-N of the keys read most, in bounded memory. One read in
//! `hot_keys.sample` is recorded (a per-thread random draw, so the hot path pays one branch
//! for the rest) into a Space-Saving summary of `8 × hot_keys.top` counters (Metwally et al.):
//! a key read more often than one sampled read in that many is sure to be held, and its count
//! overestimates by at most the smallest counter. Counts are halved every `HALF_LIFE`, so the
//! list follows what is hot now, not since start: a key's figure is about its reads in the
//! last two half-lives.
//!
//! The summary sits behind a mutex taken only for sampled reads and for reports; nothing is
//! awaited while it is held.

use bytes::Bytes;
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Counters per key reported: enough that the reported top-N is rarely displaced by noise.
const SLOTS_PER_TOP: usize = 8;
/// How often counts halve: short enough to show a shift in traffic within a minute.
pub const HALF_LIFE: Duration = Duration::from_secs(10);

pub struct HotKeys {
    top: usize,
    sample: u32,
    half_life: Duration,
    /// Each counter keeps its key's hash: a sampled read compares hashes, not keys, against
    /// every counter. Measured under the mutex: 3.4k -> 1.3k instructions per sampled read
    /// of a key not held (80 counters).
    hasher: ahash::RandomState,
    summary: Mutex<Summary>,
}

struct Summary {
    slots: Vec<Slot>,
    decayed_at: Instant,
}

#[derive(Clone)]
struct Slot {
    hash: u64,
    key: Bytes,
    reads: u64,
}

/// One reported key and its estimated reads (sampled count × the sampling rate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotKey {
    pub key: Bytes,
    pub reads: u64,
}

impl HotKeys {
    /// `top` keys reported (0: tracking off), one read in `sample` recorded.
    pub fn new(top: usize, sample: u32) -> Self {
        Self::with_half_life(top, sample, HALF_LIFE)
    }

    fn with_half_life(top: usize, sample: u32, half_life: Duration) -> Self {
        Self {
            top,
            sample: sample.max(1),
            half_life,
            hasher: ahash::RandomState::new(),
            summary: Mutex::new(Summary {
                slots: Vec::with_capacity(top * SLOTS_PER_TOP),
                decayed_at: Instant::now(),
            }),
        }
    }

    /// One read in this many is recorded.
    pub fn sample(&self) -> u32 {
        self.sample
    }

    pub fn enabled(&self) -> bool {
        self.top > 0
    }

    /// Counts a read of `key`, if this one is sampled.
    #[inline]
    pub fn read(&self, key: &[u8]) {
        if self.top == 0 || (self.sample > 1 && fastrand::u32(..self.sample) != 0) {
            return;
        }
        self.record(key);
    }

    fn record(&self, key: &[u8]) {
        let capacity = self.top * SLOTS_PER_TOP;
        let hash = self.hasher.hash_one(key);
        let now = Instant::now();
        let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(s.decayed_at) >= self.half_life {
            s.decayed_at = now;
            for slot in s.slots.iter_mut() {
                slot.reads /= 2;
            }
            s.slots.retain(|slot| slot.reads > 0);
        }
        let held = s
            .slots
            .iter_mut()
            .find(|slot| slot.hash == hash && slot.key == key);
        if let Some(slot) = held {
            slot.reads += 1;
        } else if s.slots.len() < capacity {
            s.slots.push(Slot {
                hash,
                key: Bytes::copy_from_slice(key),
                reads: 1,
            });
        } else if let Some(min) = s.slots.iter_mut().min_by_key(|slot| slot.reads) {
            // Space-Saving: the newcomer takes the smallest counter's place and count.
            *min = Slot {
                hash,
                key: Bytes::copy_from_slice(key),
                reads: min.reads + 1,
            };
        }
    }

    /// The `top` hottest keys, hottest first, with estimated recent reads.
    pub fn report(&self) -> Vec<HotKey> {
        self.report_where(|_| true)
    }

    /// The `top` hottest keys among those `shown` lets through (a user's read prefixes):
    /// the others are left out before the top is taken, so a list never hints at them.
    pub fn report_where(&self, shown: impl Fn(&[u8]) -> bool) -> Vec<HotKey> {
        let mut slots = self
            .summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .clone();
        slots.retain(|slot| shown(&slot.key));
        slots.sort_by(|a, b| b.reads.cmp(&a.reads).then_with(|| a.key.cmp(&b.key)));
        slots
            .into_iter()
            .take(self.top)
            .map(|slot| HotKey {
                key: slot.key,
                reads: slot.reads * u64::from(self.sample),
            })
            .collect()
    }

    /// How concentrated recent reads are, without naming a key: the hottest key's share of
    /// the reads sampled lately, and the reported top's share together (None before any).
    /// Space-Saving's counters always add up to the reads recorded, so their sum is the total.
    pub fn shares(&self) -> Option<(f64, f64)> {
        let s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        let total: u64 = s.slots.iter().map(|slot| slot.reads).sum();
        if total == 0 {
            return None;
        }
        let mut reads: Vec<u64> = s.slots.iter().map(|slot| slot.reads).collect();
        drop(s);
        reads.sort_unstable_by(|a, b| b.cmp(a));
        let top: u64 = reads.iter().take(self.top).sum();
        Some((reads[0] as f64 / total as f64, top as f64 / total as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_say_how_concentrated_reads_are() {
        let hot = HotKeys::with_half_life(2, 1, Duration::from_secs(3600));
        assert_eq!(hot.shares(), None);
        for _ in 0..6 {
            hot.read(b"a");
        }
        for _ in 0..3 {
            hot.read(b"b");
        }
        hot.read(b"c");
        assert_eq!(hot.shares(), Some((0.6, 0.9)));
    }

    #[test]
    fn the_hottest_keys_surface_among_many_cold_ones() {
        let hot = HotKeys::with_half_life(3, 1, Duration::from_secs(3600));
        for round in 0..2000u32 {
            hot.read(b"a");
            if round % 2 == 0 {
                hot.read(b"b");
            }
            if round % 4 == 0 {
                hot.read(b"c");
            }
            // A stream of keys read once each: more distinct keys than there are counters.
            hot.read(format!("cold:{round}").as_bytes());
        }
        let keys: Vec<_> = hot.report().into_iter().map(|h| h.key).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"c"]);
        assert!(hot.summary.lock().unwrap().slots.len() <= 3 * SLOTS_PER_TOP);
    }

    #[test]
    fn a_filtered_report_is_the_top_of_what_it_shows() {
        let hot = HotKeys::with_half_life(2, 1, Duration::from_secs(3600));
        for (key, reads) in [("secret:1", 9), ("secret:2", 8), ("app:1", 3), ("app:2", 2)] {
            for _ in 0..reads {
                hot.read(key.as_bytes());
            }
        }
        let keys: Vec<_> = hot
            .report_where(|k| k.starts_with(b"app:"))
            .into_iter()
            .map(|h| h.key)
            .collect();
        assert_eq!(keys, [&b"app:1"[..], b"app:2"]);
    }

    #[test]
    fn counts_decay_so_the_list_follows_the_present() {
        let hot = HotKeys::with_half_life(1, 1, Duration::from_millis(1));
        for _ in 0..2000 {
            hot.read(b"old");
        }
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..1500 {
            hot.read(b"new");
        }
        assert_eq!(hot.report()[0].key, Bytes::from_static(b"new"));
    }

    #[test]
    fn sampled_counts_are_scaled_back_up_and_off_means_off() {
        let hot = HotKeys::with_half_life(1, 4, Duration::from_secs(3600));
        for _ in 0..40_000 {
            hot.read(b"k");
        }
        let reads = hot.report()[0].reads;
        assert!((30_000..=50_000).contains(&reads), "{reads}");
        let off = HotKeys::new(0, 1);
        off.read(b"k");
        assert!(off.report().is_empty());
    }
}

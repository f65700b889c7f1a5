//! `TieredCache`: the one engine both front doors read and write through. Reads try L1, then
//! L2 (one coalesced load per missing key); writes go to L2 first — the system of record —
//! and only then invalidate L1, so an acknowledged write is never only in memory. With no L2
//! configured (standalone mode) L1 is the store.

mod epoch;
pub mod l1;
pub mod l2;

use crate::{
    config::Config,
    metrics::{Metrics, Tier},
};
use bytes::Bytes;
use epoch::Epochs;
use l1::{Entry, LoadMiss, L1};
pub use l2::{L2Error, L2};
use std::{sync::Arc, time::Duration};

/// A value and the tier that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub value: Bytes,
    pub tier: Tier,
}

/// One item of a batch write: key, value, TTL.
pub type Item = (Bytes, Bytes, Option<Duration>);

pub struct TieredCache {
    l1: L1,
    l2: Option<Arc<L2>>,
    /// Longest L1 lifetime of a value read from L2.
    max_ttl: Duration,
    epochs: Epochs,
    metrics: Arc<Metrics>,
}

impl TieredCache {
    /// Builds the tiers from config. `memory` is what this process may use, for "NN%" budgets.
    pub fn new(config: &Config, memory: u64, metrics: Arc<Metrics>) -> Result<Self, L2Error> {
        let l2 = if config.standalone() {
            None
        } else {
            Some(Arc::new(L2::new(&config.l2, metrics.clone())?))
        };
        let capacity = config.l1.capacity.resolve(memory);
        Ok(Self {
            l1: L1::new(capacity, l2.is_none()),
            l2,
            max_ttl: config.l1.max_ttl.0,
            epochs: Epochs::new(),
            metrics,
        })
    }

    pub fn l2(&self) -> Option<&Arc<L2>> {
        self.l2.as_ref()
    }

    /// Reads a key: L1, then L2. Absent keys are not cached.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Hit>, L2Error> {
        if let Some(e) = self.l1.get(key).await {
            self.metrics.hit(Tier::L1);
            return Ok(Some(Hit {
                value: e.value,
                tier: Tier::L1,
            }));
        }
        self.metrics.miss(Tier::L1);
        let Some(l2) = &self.l2 else { return Ok(None) };
        let epoch = self.epochs.read(key);
        let loaded = self
            .l1
            .get_or_load(Bytes::copy_from_slice(key), async {
                match l2.get(key).await {
                    Ok(Some((value, ttl))) => Ok(Entry {
                        value,
                        ttl: Some(self.l1_ttl(ttl)),
                    }),
                    Ok(None) => Err(LoadMiss::Absent),
                    Err(e) => Err(LoadMiss::Failed(e)),
                }
            })
            .await;
        self.drop_if_raced(key, epoch).await;
        match loaded {
            Ok(e) => {
                self.metrics.hit(Tier::L2);
                Ok(Some(Hit {
                    value: e.value,
                    tier: Tier::L2,
                }))
            }
            Err(miss) => match &*miss {
                LoadMiss::Absent => {
                    self.metrics.miss(Tier::L2);
                    Ok(None)
                }
                LoadMiss::Failed(e) => Err(e.clone()),
            },
        }
    }

    /// Reads many keys: L1 for each, then every L1 miss from L2 in one round trip.
    /// The result is in the order of `keys`.
    pub async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Option<Hit>>, L2Error> {
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.l1.get(k).await {
                Some(e) => {
                    self.metrics.hit(Tier::L1);
                    out.push(Some(Hit {
                        value: e.value,
                        tier: Tier::L1,
                    }));
                }
                None => {
                    self.metrics.miss(Tier::L1);
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        let Some(l2) = &self.l2 else { return Ok(out) };
        if missing.is_empty() {
            return Ok(out);
        }
        let epochs: Vec<u64> = missing
            .iter()
            .map(|&i| self.epochs.read(&keys[i]))
            .collect();
        let wanted: Vec<&[u8]> = missing.iter().map(|&i| keys[i].as_ref()).collect();
        let fetched = l2.get_many(&wanted).await?;
        for ((&i, fetched), epoch) in missing.iter().zip(fetched).zip(epochs) {
            let Some((value, ttl)) = fetched else {
                self.metrics.miss(Tier::L2);
                continue;
            };
            self.metrics.hit(Tier::L2);
            self.l1
                .insert(
                    keys[i].clone(),
                    Entry {
                        value: value.clone(),
                        ttl: Some(self.l1_ttl(ttl)),
                    },
                )
                .await;
            self.drop_if_raced(&keys[i], epoch).await;
            out[i] = Some(Hit {
                value,
                tier: Tier::L2,
            });
        }
        Ok(out)
    }

    /// Writes a key (TTL None: no expiry). L2 must accept it before L1 changes.
    pub async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), L2Error> {
        match &self.l2 {
            None => self.l1.insert(key, Entry { value, ttl }).await,
            Some(l2) => {
                l2.set(&key, &value, ttl).await?;
                self.invalidate(&key).await;
            }
        }
        Ok(())
    }

    /// Writes many keys in one L2 round trip.
    pub async fn set_many(&self, items: Vec<Item>) -> Result<(), L2Error> {
        match &self.l2 {
            None => {
                for (k, value, ttl) in items {
                    self.l1.insert(k, Entry { value, ttl }).await;
                }
            }
            Some(l2) => {
                l2.set_many(&items).await?;
                for (k, _, _) in &items {
                    self.invalidate(k).await;
                }
            }
        }
        Ok(())
    }

    /// Deletes a key; whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, L2Error> {
        match &self.l2 {
            None => Ok(self.l1.remove(key).await),
            Some(l2) => {
                let existed = l2.del(key).await?;
                self.invalidate(key).await;
                Ok(existed)
            }
        }
    }

    /// Refreshes the L1 gauges; called when metrics are scraped rather than per request.
    pub async fn publish_usage(&self) {
        let (entries, bytes) = self.l1.usage().await;
        self.metrics.l1_entries.set(entries as i64);
        self.metrics.l1_bytes.set(bytes as i64);
    }

    /// After an L2 write: mark the key written, then drop it from L1. The order matters;
    /// see `drop_if_raced`.
    async fn invalidate(&self, key: &[u8]) {
        self.epochs.bump(key);
        self.l1.invalidate(key).await;
    }

    /// A load that began before a write may have read the old value and stored it after the
    /// write's invalidation. The write bumps the key's epoch before invalidating, so either
    /// the loader sees the bump here and drops what it stored, or the bump (and therefore the
    /// invalidation) comes after the store and removes it.
    async fn drop_if_raced(&self, key: &[u8], epoch: u64) {
        if self.epochs.read(key) != epoch {
            self.l1.invalidate(key).await;
        }
    }

    fn l1_ttl(&self, l2_ttl: Option<Duration>) -> Duration {
        l2_ttl.map_or(self.max_ttl, |t| t.min(self.max_ttl))
    }
}

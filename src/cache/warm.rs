//! Warm-up: at start, L1 is filled with the keys under `l1.warm_prefixes`, found by SCAN on
//! every L2 node and read in MGET batches, at most `l1.warm_rate` keys a second and
//! `l1.warm_max_keys` in all, so that a restarted instance does not meet its first traffic
//! with an empty L1 and stampede Redis, nor stampede it warming up. It starts once L1 is
//! trusted (L2 up, and the invalidation bus joined: the join flushes L1), and stops at
//! shutdown. Progress: `tiergate_l1_warm_keys_total`, `tiergate_l1_warming`, and a log line
//! every few seconds and at the end.

use super::TieredCache;
use crate::{config::L1Config, shutdown::Shutdown};
use bytes::Bytes;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// Keys asked of each SCAN call, and read per MGET.
const BATCH: usize = 500;
/// How often progress is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// How often readiness is checked before the warm-up starts.
const WAIT_STEP: Duration = Duration::from_millis(100);

/// Runs the warm-up once, if prefixes are configured.
pub async fn run(cache: Arc<TieredCache>, cfg: L1Config, shutdown: Shutdown) {
    let Some(l2) = cache.l2.clone() else { return };
    if cfg.warm_prefixes.is_empty() || cfg.warm_max_keys == 0 {
        return;
    }
    // With L2 up, L1 is trusted only once the bus (if any) is joined, and the join flushes L1.
    while !(l2.is_up() && cache.l1_trusted()) {
        tokio::select! {
            _ = tokio::time::sleep(WAIT_STEP) => {}
            _ = shutdown.wait() => return,
        }
    }
    cache.metrics.l1_warming.set(1);
    let start = Instant::now();
    let mut warm = Warm {
        cache: &cache,
        rate: f64::from(cfg.warm_rate),
        max: cfg.warm_max_keys,
        scanned: 0,
        found: 0,
        start,
        logged: start,
    };
    tracing::info!(prefixes = ?cfg.warm_prefixes, rate = cfg.warm_rate, "L1 warm-up: starting");
    let outcome = 'all: {
        for node in l2.nodes() {
            for prefix in &cfg.warm_prefixes {
                match warm.scan(node, prefix, &shutdown).await {
                    Ok(true) => {}
                    Ok(false) => break 'all "stopped",
                    Err(e) => {
                        tracing::warn!(error = %e, prefix, "L1 warm-up: SCAN failed; going on");
                    }
                }
            }
        }
        "done"
    };
    cache.metrics.l1_warming.set(0);
    tracing::info!(
        outcome,
        scanned = warm.scanned,
        loaded = warm.found,
        seconds = start.elapsed().as_secs_f64(),
        "L1 warm-up: finished"
    );
}

struct Warm<'a> {
    cache: &'a TieredCache,
    rate: f64,
    max: usize,
    scanned: usize,
    found: usize,
    start: Instant,
    logged: Instant,
}

impl Warm<'_> {
    /// SCANs one node for one prefix, loading what it finds. Ok(false): stop everything
    /// (shutdown, or `warm_max_keys` reached).
    async fn scan(
        &mut self,
        node: &redis::Client,
        prefix: &str,
        shutdown: &Shutdown,
    ) -> redis::RedisResult<bool> {
        let mut conn = node.get_multiplexed_async_connection().await?;
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Bytes>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await?;
            let room = self.max - self.scanned;
            let keys = &keys[..keys.len().min(room)];
            if !keys.is_empty() {
                // Paced before the read: at most `rate` keys a second on average.
                let due = self.start + Duration::from_secs_f64(self.scanned as f64 / self.rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = shutdown.wait() => return Ok(false),
                }
                match self.cache.warm(keys).await {
                    Ok(n) => self.found += n,
                    Err(e) => tracing::warn!(error = %e, "L1 warm-up: a batch failed; going on"),
                }
                self.scanned += keys.len();
                self.cache.metrics.l1_warm_keys.inc_by(keys.len() as u64);
                if self.logged.elapsed() >= LOG_EVERY {
                    self.logged = Instant::now();
                    tracing::info!(
                        scanned = self.scanned,
                        loaded = self.found,
                        "L1 warm-up: in progress"
                    );
                }
            }
            if self.scanned >= self.max {
                return Ok(false);
            }
            if next == 0 {
                return Ok(true);
            }
            cursor = next;
        }
    }
}

/// `prefix` with SCAN MATCH's glob characters escaped, so it matches only itself.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_only_themselves() {
        assert_eq!(glob_escape("user:"), "user:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}

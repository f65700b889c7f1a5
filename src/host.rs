//! What the host gives this process: the memory it may use (the cgroup v2 limit when one is
//! set, otherwise physical RAM), for percentage budgets such as `l1.capacity = "25%"`, and
//! the memory it uses now (RSS), for INFO.

use std::fs;

/// Used when neither /proc nor cgroup files can be read (non-Linux, sandboxes): 1 GiB keeps a
/// "25%" budget modest rather than unbounded.
const FALLBACK_MEMORY: u64 = 1 << 30;

pub fn memory_limit() -> u64 {
    let physical = physical_memory().unwrap_or(FALLBACK_MEMORY);
    match cgroup_limit() {
        Some(limit) if limit < physical => limit,
        _ => physical,
    }
}

/// This process' resident set size, from /proc/self/status.
pub fn rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn physical_memory() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cgroup_limit() -> Option<u64> {
    // "max" (no limit) fails to parse and yields None.
    fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_limit_is_plausible() {
        let m = super::memory_limit();
        assert!(m >= 64 << 20, "{m}");
        assert!(super::rss_bytes().unwrap() > 0);
    }
}

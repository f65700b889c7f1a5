//! What the host gives this process: the memory it may use (the cgroup v2 limit when one is
//! set, otherwise physical RAM), for percentage budgets such as `l1.capacity = "25%"`, and
//! the memory and CPU time it uses now, for INFO.

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

/// CPU seconds this process has spent, (user, system), from /proc/self/stat. Its figures are
/// in clock ticks, 100 a second on every Linux tiergate targets (`USER_HZ`).
pub fn cpu_seconds() -> Option<(f64, f64)> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user / TICKS_PER_SECOND, system / TICKS_PER_SECOND))
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
        // Spin until a tick of user time shows.
        let start = std::time::Instant::now();
        while super::cpu_seconds().unwrap().0 == 0.0 {
            assert!(start.elapsed().as_secs() < 30, "no CPU time ever counted");
        }
    }
}

//! The open-file limit (RLIMIT_NOFILE). Every client connection is a file descriptor; a
//! soft limit below what the config lets in is otherwise found only as accept errors
//! (EMFILE) and clients that hang in the accept queue. At start the soft limit is raised to
//! the hard one (as nginx's `worker_rlimit_nofile` does), and if it is still short of what
//! the config may use, one warning says by how much and which keys are involved.

use crate::config::Config;

/// Descriptors beyond connections: the three listeners, stdio, the runtime's epoll and
/// eventfds, the signal pipes, the config file, the access log, the background threads.
pub const MARGIN: u64 = 64;

/// Connections to each L2 node besides `l2.connections`: the invalidation bus subscription
/// and the health probe.
const L2_EXTRA_PER_NODE: u64 = 2;

/// Sets of `l2.connections` to each L2 node: redis-rs' multiplexed ones, and our own RESP2
/// and RESP3 ones (`cache::pipe`).
const L2_SETS_PER_NODE: u64 = 3;

/// What a config may hold open at once, by where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// `resp.max_connections`: a hard cap.
    pub resp: u64,
    /// `admission.max_inflight` + `admission.max_queue`: HTTP connections have no cap of
    /// their own, so this counts those that can have a request running or waiting; idle
    /// keep-alive connections come on top.
    pub http: u64,
    /// Redis: (`l2.connections` three times: redis-rs', and our own RESP2 and RESP3 ones
    /// for writes and forwarded commands; + bus + probe) per node (1, or each of
    /// `l2.cluster_nodes`) + `l2.dedicated_connections`; 0 in standalone mode.
    pub l2: u64,
    pub margin: u64,
}

impl Need {
    pub fn of(config: &Config) -> Self {
        let n = |v: usize| v as u64;
        let l2 = if config.standalone() {
            0
        } else {
            let nodes = n(config.l2.cluster_nodes.len().max(1));
            nodes * (L2_SETS_PER_NODE * n(config.l2.connections) + L2_EXTRA_PER_NODE)
                + n(config.l2.dedicated_connections)
        };
        Self {
            resp: n(config.resp.max_connections),
            http: n(config.admission.max_inflight) + n(config.admission.max_queue),
            l2,
            margin: MARGIN,
        }
    }

    pub fn total(&self) -> u64 {
        self.resp + self.http + self.l2 + self.margin
    }
}

/// The soft and hard limits before and after `raise`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// The soft limit to ask for: the hard one. An unlimited hard limit (not seen on Linux,
/// where nofile is bounded by fs.nr_open) leaves the soft limit as it is.
fn target(soft: u64, hard: u64) -> Option<u64> {
    (hard != libc::RLIM_INFINITY && soft < hard).then_some(hard)
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rl)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (process-wide). On failure the limit
/// stays as it was and the error is returned with it.
pub fn raise() -> Result<Limits, (std::io::Error, Option<Limits>)> {
    let rl = get().map_err(|e| (e, None))?;
    let (soft, hard) = (rl.rlim_cur, rl.rlim_max);
    let unchanged = Limits {
        soft_before: soft,
        soft,
        hard,
    };
    let Some(to) = target(soft, hard) else {
        return Ok(unchanged);
    };
    let new = libc::rlimit {
        rlim_cur: to,
        rlim_max: hard,
    };
    // SAFETY: `new` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err((std::io::Error::last_os_error(), Some(unchanged)));
    }
    Ok(Limits {
        soft: to,
        ..unchanged
    })
}

/// Raises the limit and logs it: one info line when it covers what `config` needs, one
/// warning with the numbers and the keys involved when it does not.
pub fn raise_and_check(config: &Config) {
    let need = Need::of(config);
    // The error of a failed raise goes into the one line below.
    let (limits, raise_error) = match raise() {
        Ok(l) => (l, None),
        Err((e, Some(l))) => (l, Some(e)),
        Err((e, None)) => {
            tracing::warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
            return;
        }
    };
    let raise_error = raise_error.map(|e| e.to_string());
    if limits.soft >= need.total() {
        tracing::info!(
            soft_before = limits.soft_before,
            soft = limits.soft,
            hard = limits.hard,
            needed = need.total(),
            raise_error = raise_error.as_deref(),
            "open-file limit (RLIMIT_NOFILE)"
        );
        return;
    }
    tracing::warn!(
        soft = limits.soft,
        hard = limits.hard,
        needed = need.total(),
        resp = need.resp,
        http = need.http,
        l2 = need.l2,
        margin = need.margin,
        raise_error = raise_error.as_deref(),
        "open-file limit (RLIMIT_NOFILE, raised to the hard limit unless raise_error says otherwise) is below what the config may hold open: \
         resp.max_connections + HTTP (admission.max_inflight + admission.max_queue; idle keep-alive \
         connections come on top) + L2 (l2.connections + 2 per node, + l2.dedicated_connections) + margin; \
         past it accepts fail (tiergate_accept_errors_total) and clients hang. Raise the hard limit \
         (LimitNOFILE in the systemd unit, docker --ulimit nofile=N:N, the container runtime's default \
         under Kubernetes) or lower resp.max_connections"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_fds_of_the_defaults() {
        // Standalone: no Redis connections.
        let c = Config::default();
        let need = Need::of(&c);
        assert_eq!(need.resp, 300_000);
        assert_eq!(need.http, 4096 + 4096);
        assert_eq!(need.l2, 0);
        assert_eq!(need.total(), 300_000 + 8192 + MARGIN);
        // The systemd unit's LimitNOFILE covers the defaults.
        assert!(need.total() < 1_048_576);
    }

    #[test]
    fn needed_fds_count_redis_per_node_and_dedicated() {
        let mut c = Config::default();
        c.l2.url = "redis://127.0.0.1:6379".into();
        c.l2.connections = 4;
        c.l2.dedicated_connections = 512;
        // Three sets of 4 (redis-rs', ours in RESP2 and RESP3), the bus and the probe.
        assert_eq!(Need::of(&c).l2, (3 * 4 + 2) + 512);

        c.l2.url.clear();
        c.l2.cluster_nodes = vec![
            "redis://10.0.0.1:6379".into(),
            "redis://10.0.0.2:6379".into(),
            "redis://10.0.0.3:6379".into(),
        ];
        assert_eq!(Need::of(&c).l2, 3 * (3 * 4 + 2) + 512);

        c.resp.max_connections = 1000;
        c.admission.max_inflight = 10;
        c.admission.max_queue = 5;
        assert_eq!(Need::of(&c).total(), 1000 + 15 + 3 * 14 + 512 + MARGIN);
    }

    #[test]
    fn soft_limit_goes_to_the_hard_one() {
        assert_eq!(target(1024, 524_288), Some(524_288));
        assert_eq!(target(524_288, 524_288), None);
        assert_eq!(target(1024, libc::RLIM_INFINITY), None);
    }

    #[test]
    fn raise_leaves_soft_at_hard() {
        let l = raise().map_err(|(e, _)| e).expect("getrlimit/setrlimit");
        assert!(l.soft >= l.soft_before);
        assert!(l.soft <= l.hard);
        let now = get().expect("getrlimit");
        assert_eq!(now.rlim_cur, l.soft);
    }
}

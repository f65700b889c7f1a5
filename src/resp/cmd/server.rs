//! Server commands: COMMAND (enough for redis-cli and client libraries), INFO, CONFIG GET.

use super::{connection::REDIS_COMPAT_VERSION, is, Ctx, Parse};
use crate::{
    auth::Need,
    metrics::{Door, Tier},
    resp::frame::Frame,
};
use bytes::Bytes;

/// Every command tiergate knows: name, arity (negative: at least), first key, last key, step,
/// as redis-server reports them. `Command` dispatches on these names and COMMAND lists them.
pub(super) const TABLE: &[(&str, i64, i64, i64, i64)] = &[
    ("ping", -1, 0, 0, 0),
    ("echo", 2, 0, 0, 0),
    ("quit", -1, 0, 0, 0),
    ("select", 2, 0, 0, 0),
    ("auth", -2, 0, 0, 0),
    ("hello", -1, 0, 0, 0),
    ("client", -2, 0, 0, 0),
    ("command", -1, 0, 0, 0),
    ("get", 2, 1, 1, 1),
    ("set", -3, 1, 1, 1),
    ("mget", -2, 1, -1, 1),
    ("mset", -3, 1, -1, 2),
    ("del", -2, 1, -1, 1),
    ("unlink", -2, 1, -1, 1),
    ("exists", -2, 1, -1, 1),
    ("incr", 2, 1, 1, 1),
    ("decr", 2, 1, 1, 1),
    ("incrby", 3, 1, 1, 1),
    ("decrby", 3, 1, 1, 1),
    ("expire", -3, 1, 1, 1),
    ("pexpire", -3, 1, 1, 1),
    ("ttl", 2, 1, 1, 1),
    ("pttl", 2, 1, 1, 1),
    ("info", -1, 0, 0, 0),
    ("config", -2, 0, 0, 0),
    ("debug", -2, 0, 0, 0),
];

pub enum CommandInfo {
    All,
    Count,
    Info(Vec<Bytes>),
    Docs,
}

impl CommandInfo {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let Some(sub) = p.next_opt() else {
            return Ok(CommandInfo::All);
        };
        if is(&sub, "count") {
            Ok(CommandInfo::Count)
        } else if is(&sub, "info") {
            Ok(CommandInfo::Info(p.rest()))
        } else if is(&sub, "docs") {
            p.rest();
            Ok(CommandInfo::Docs)
        } else {
            Err(Frame::Error(
                format!(
                    "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                    String::from_utf8_lossy(&sub)
                )
                .into(),
            ))
        }
    }

    pub fn apply(self, _: &mut Ctx<'_>) -> Frame {
        match self {
            CommandInfo::All => Frame::Array(TABLE.iter().map(entry).collect()),
            CommandInfo::Count => Frame::Integer(TABLE.len() as i64),
            CommandInfo::Info(names) => Frame::Array(
                names
                    .iter()
                    .map(|n| {
                        TABLE
                            .iter()
                            .find(|t| t.0.as_bytes().eq_ignore_ascii_case(n))
                            .map_or(Frame::Null, entry)
                    })
                    .collect(),
            ),
            CommandInfo::Docs => Frame::Map(Vec::new()),
        }
    }
}

fn entry(&(name, arity, first, last, step): &(&'static str, i64, i64, i64, i64)) -> Frame {
    Frame::Array(vec![
        Frame::bulk_static(name),
        Frame::Integer(arity),
        Frame::Array(Vec::new()),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
    ])
}

/// INFO [section ...]: redis-server's layout (`# Section` headers, `field:value` lines) with
/// tiergate's own figures. Sections: server, clients, memory, stats, cpu, keyspace (in tiered
/// mode Redis' own key count, from DBSIZE: L1 holds a copy of some of them), and tiergate's
/// hotkeys (`hotkey_<rank>:key=<escaped key>,reads=<estimated recent reads>`, of the keys
/// the user may read);
/// "all", "everything" and "default" mean all of them.
pub struct Info {
    sections: Vec<Bytes>,
}

const SECTIONS: [&str; 7] = [
    "server", "clients", "memory", "stats", "cpu", "keyspace", "hotkeys",
];

impl Info {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self { sections: p.rest() })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        use std::fmt::Write;
        let all = self.sections.is_empty()
            || self
                .sections
                .iter()
                .any(|s| is(s, "all") || is(s, "everything") || is(s, "default"));
        let wanted = |name: &str| all || self.sections.iter().any(|s| is(s, name));
        let shared = ctx.shared;
        let facts = &shared.facts;
        let (entries, l1_bytes) = shared.cache.l1_usage().await;
        // In tiered mode the keyspace is Redis'; a failed DBSIZE leaves db0 out.
        let keys = match shared.cache.l2() {
            Some(l2) if wanted("keyspace") => l2.dbsize().await.unwrap_or(0),
            Some(_) => 0,
            None => entries,
        };
        let mut out = String::with_capacity(1024);
        for section in SECTIONS.iter().filter(|s| wanted(s)) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            let _ = write!(
                out,
                "# {}{}\r\n",
                section[..1].to_uppercase(),
                &section[1..]
            );
            let mut field = |k: &str, v: &dyn std::fmt::Display| {
                let _ = write!(out, "{k}:{v}\r\n");
            };
            match *section {
                "server" => {
                    let up = facts.started.elapsed().as_secs();
                    field("redis_version", &REDIS_COMPAT_VERSION);
                    field("tiergate_version", &env!("CARGO_PKG_VERSION"));
                    field("redis_mode", &"standalone");
                    field(
                        "tiergate_mode",
                        &if facts.standalone { "memory" } else { "tiered" },
                    );
                    field("os", &std::env::consts::OS);
                    field("arch_bits", &(usize::BITS));
                    field("process_id", &std::process::id());
                    field("tcp_port", &facts.port);
                    field("uptime_in_seconds", &up);
                    field("uptime_in_days", &(up / 86_400));
                }
                "clients" => {
                    let (open, _, _) = shared.metrics.door_counts(Door::Resp);
                    field("connected_clients", &open);
                    field("maxclients", &facts.max_connections);
                    field("blocked_clients", &0);
                }
                "memory" => {
                    field("used_memory", &l1_bytes);
                    field("used_memory_rss", &crate::host::rss_bytes().unwrap_or(0));
                    field("mem_allocator", &"mimalloc");
                    field("maxmemory", &facts.l1_capacity);
                    field(
                        "maxmemory_policy",
                        &if facts.standalone {
                            "allkeys-lru"
                        } else {
                            "allkeys-lfu"
                        },
                    );
                }
                "stats" => {
                    let (_, total, rejected) = shared.metrics.door_counts(Door::Resp);
                    let (l1_hits, l1_misses) = shared.metrics.tier_counts(Tier::L1);
                    let (l2_hits, l2_misses) = shared.metrics.tier_counts(Tier::L2);
                    let misses = if facts.standalone {
                        l1_misses
                    } else {
                        l2_misses
                    };
                    field("total_connections_received", &total);
                    field(
                        "total_commands_processed",
                        &shared.metrics.resp_commands.get(),
                    );
                    field("rejected_connections", &rejected);
                    field("keyspace_hits", &(l1_hits + l2_hits));
                    field("keyspace_misses", &misses);
                    field("tiergate_l1_hits", &l1_hits);
                    field("tiergate_l2_hits", &l2_hits);
                }
                "hotkeys" => {
                    // Only keys the user may read: a key's name can be a secret of its own.
                    let user = ctx.session.user.as_deref();
                    let readable = |k: &[u8]| user.is_some_and(|u| u.may(Need::Read, k));
                    let hot = shared.cache.hot_keys().report_where(readable);
                    for (rank, h) in hot.iter().enumerate() {
                        field(
                            &format!("hotkey_{rank}"),
                            &format_args!("key={},reads={}", h.key.escape_ascii(), h.reads),
                        );
                    }
                }
                "cpu" => {
                    let (user, sys) = crate::host::cpu_seconds().unwrap_or_default();
                    field("used_cpu_sys", &format_args!("{sys:.6}"));
                    field("used_cpu_user", &format_args!("{user:.6}"));
                }
                _ => {
                    if keys > 0 {
                        field("db0", &format_args!("keys={keys},expires=0,avg_ttl=0"));
                    }
                }
            }
        }
        Frame::Bulk(Bytes::from(out))
    }
}

/// CONFIG GET pattern [pattern ...]: the parameters clients and redis-benchmark ask about,
/// answered with tiergate's values. CONFIG SET and the rest are refused.
pub struct Config {
    patterns: Vec<Bytes>,
}

impl Config {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let sub = p.next_bytes()?;
        if !is(&sub, "get") {
            return Err(Frame::Error(
                format!(
                    "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                    String::from_utf8_lossy(&sub)
                )
                .into(),
            ));
        }
        let patterns = p.rest();
        if patterns.is_empty() {
            return Err(Frame::error(
                "ERR wrong number of arguments for 'config|get' command",
            ));
        }
        Ok(Self { patterns })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        let facts = &ctx.shared.facts;
        let timeout = ctx.shared.idle_timeout.map_or(0, |d| d.as_secs());
        let params: [(&str, String); 7] = [
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("databases", "1".into()),
            ("maxclients", facts.max_connections.to_string()),
            ("maxmemory", facts.l1_capacity.to_string()),
            ("timeout", timeout.to_string()),
            ("port", facts.port.to_string()),
        ];
        let pairs = params
            .into_iter()
            .filter(|(name, _)| {
                self.patterns
                    .iter()
                    .any(|p| glob(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .map(|(name, v)| (Frame::bulk_static(name), Frame::Bulk(Bytes::from(v))))
            .collect();
        Frame::Map(pairs)
    }
}

/// Glob match with `*` and `?`, as CONFIG GET patterns use, in O(pattern × name) steps
/// whatever the pattern: on a mismatch only the last `*` is retried one byte further on,
/// since an earlier `*` can never do better. The recursive matcher this replaced took
/// exponential time (1.7 s of a request thread for `"*" × 22 + "z"`), and any client can
/// send CONFIG GET.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The last `*` seen, and the name offset it currently stands for up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    star = Some((sp, sn + 1));
                    p = sp + 1;
                    n = sn + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// DEBUG PANIC: panics the task serving this connection, to prove (in tests, or on a staging
/// box) that a panic closes that connection only. redis-server's DEBUG PANIC takes the whole
/// server down; ours cannot. Refused unless `resp.enable_debug_command` is set.
pub struct Debug {
    sub: Bytes,
}

impl Debug {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self {
            sub: p.next_bytes()?,
        })
    }

    pub fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if !ctx.shared.debug_command {
            return Frame::error(
                "ERR DEBUG command not allowed: set resp.enable_debug_command = true to allow it",
            );
        }
        if is(&self.sub, "panic") {
            panic!("DEBUG PANIC from client {}", ctx.session.id);
        }
        Frame::error("ERR unknown DEBUG subcommand; only PANIC is supported")
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_like_config_get() {
        assert!(glob(b"save", b"save"));
        assert!(glob(b"*", b"maxclients"));
        assert!(glob(b"max*", b"maxmemory"));
        assert!(glob(b"ma?clients", b"maxclients"));
        assert!(!glob(b"max", b"maxmemory"));
        assert!(!glob(b"*x", b"save"));
        assert!(glob(b"", b""));
        assert!(!glob(b"", b"save"));
        assert!(glob(b"**", b""));
        assert!(glob(b"*a*e", b"save"));
        assert!(glob(b"m*m*y", b"maxmemory"));
        assert!(!glob(b"m*m*z", b"maxmemory"));
        assert!(glob(b"?*?", b"ab"));
        assert!(!glob(b"?*??", b"ab"));
    }

    #[test]
    fn a_pattern_of_many_stars_is_answered_in_linear_steps() {
        // 40 stars and a byte that never matches: the recursive matcher's worst case (its
        // 22-star version took 1.7 s). Counted in steps by a matcher that cannot be slow, so
        // the test asserts no timing: it would not finish if the match were exponential.
        let mut pattern = vec![b'*'; 40];
        pattern.push(b'z');
        assert!(!glob(&pattern, b"maxmemory-policy-and-some-more"));
        let long = vec![b'*'; 1 << 20];
        assert!(glob(&long, b"maxclients"));
    }
}

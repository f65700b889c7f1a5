//! Config reload (SIGHUP): which keys a running server can take on, and what the server then
//! runs with. A reload re-reads the file and the environment; keys it can apply under load are
//! applied (log level, auth, the admin token, limits, admission, L1 TTL policy), and every other changed key is
//! named in one log line as needing a restart and left as it was. A config that does not load
//! or validate changes nothing.

use crate::config::Config;

/// Keys (or `section.` prefixes) a reload applies.
pub const RELOADABLE: &[&str] = &[
    "log.level",
    "admin.token",
    "auth.",
    "resp.requirepass",
    "resp.max_multibulk_len",
    "resp.max_inline_bytes",
    "resp.max_request_bytes",
    "limits.",
    "admission.",
    "l1.max_ttl",
    "l1.ttl_jitter",
    "l1.negative_ttl",
];

/// Whether a change of `path` can be applied by a reload.
pub fn reloadable(path: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|r| path == *r || (r.ends_with('.') && path.starts_with(r)))
}

/// The keys whose values differ, as `section.key` paths. Secrets compare as `"***"`, so a
/// changed token shows as no change: auth is re-applied on every reload anyway.
pub fn changed(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (flatten(old), flatten(new));
    new.iter()
        .filter(|(path, v)| old.get(*path) != Some(v))
        .map(|(path, _)| path.clone())
        .collect()
}

fn flatten(c: &Config) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(sections)) = serde_json::to_value(c) {
        for (section, keys) in sections {
            match keys {
                serde_json::Value::Object(keys) => {
                    for (key, v) in keys {
                        out.insert(format!("{section}.{key}"), v);
                    }
                }
                v => {
                    out.insert(section, v);
                }
            }
        }
    }
    out
}

/// `current` with every reloadable key taken from `new`: what the server runs with after the
/// reload. Keys outside `RELOADABLE` keep their current values.
pub fn merge(current: &Config, new: &Config) -> Config {
    let mut next = current.clone();
    next.log.level = new.log.level.clone();
    next.admin.token = new.admin.token.clone();
    next.auth = new.auth.clone();
    next.resp.requirepass = new.resp.requirepass.clone();
    next.resp.max_multibulk_len = new.resp.max_multibulk_len;
    next.resp.max_inline_bytes = new.resp.max_inline_bytes;
    next.resp.max_request_bytes = new.resp.max_request_bytes;
    next.limits = new.limits.clone();
    next.admission = new.admission.clone();
    next.l1.max_ttl = new.l1.max_ttl;
    next.l1.ttl_jitter = new.l1.ttl_jitter;
    next.l1.negative_ttl = new.l1.negative_ttl;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, HumanDuration, TokenConfig};
    use std::time::Duration;

    /// A config with every reloadable key changed, and two keys that need a restart.
    fn edited() -> Config {
        let mut c = Config::default();
        c.log.level = "debug".into();
        c.admin.token = "a".repeat(32).as_str().into();
        c.auth.protected_mode = false;
        c.auth.tokens.push(TokenConfig {
            name: "t".into(),
            token: "x".repeat(32).as_str().into(),
            read: vec!["*".into()],
            write: vec![],
        });
        c.resp.requirepass = "pw".into();
        c.resp.max_multibulk_len = 10;
        c.resp.max_inline_bytes = ByteSize(2048);
        c.resp.max_request_bytes = ByteSize(32 << 20);
        c.limits.max_key_bytes = 64;
        c.admission.max_inflight = 8;
        c.l1.max_ttl = HumanDuration(Duration::from_secs(5));
        c.l1.ttl_jitter = 0.2;
        c.l1.negative_ttl = HumanDuration(Duration::from_secs(1));
        c.l2.url = "redis://127.0.0.1:7777".into();
        c.http.backlog = 10;
        c
    }

    #[test]
    fn a_merge_takes_exactly_the_reloadable_keys() {
        let (current, new) = (Config::default(), edited());
        let all = changed(&current, &new);
        let refused: Vec<_> = all.iter().filter(|p| !reloadable(p)).collect();
        assert_eq!(refused, ["http.backlog", "l2.url"]);
        let next = merge(&current, &new);
        // Whatever is left to differ is what was refused: every reloadable change was taken,
        // and nothing else was.
        assert_eq!(changed(&next, &new), ["http.backlog", "l2.url"]);
        assert_eq!(next.auth.tokens.len(), 1);
        assert_eq!(next.resp.requirepass.expose(), "pw");
        for path in &all {
            assert_eq!(
                reloadable(path),
                !changed(&next, &new).contains(path),
                "{path}: RELOADABLE and merge disagree"
            );
        }
    }

    #[test]
    fn unchanged_configs_differ_in_nothing() {
        assert!(changed(&edited(), &edited()).is_empty());
    }
}

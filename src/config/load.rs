//! Reading configuration: the TOML file, then `TIERGATE_<SECTION>_<KEY>` overrides, then
//! typed deserialisation one key at a time so that every bad key is reported, not just the first,
//! together with the checks across keys (`Config::validate`) in the same run.

use super::{Config, Problem, SECTIONS};
use std::{collections::HashMap, path::Path};

const ENV_PREFIX: &str = "TIERGATE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Loads the config file at `path` (none: defaults only), applies the `TIERGATE_*` variables
/// found in `env`, and validates the result.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut table = match path {
        None => toml::Table::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.display().to_string(),
                source,
            })?;
            match text.parse::<toml::Table>() {
                Ok(t) => t,
                Err(e) => {
                    let why = e.to_string().trim().replace('\n', " ");
                    return Err(ConfigError::Invalid(vec![Problem {
                        path: p.display().to_string(),
                        why,
                    }]));
                }
            }
        }
    };
    // Where each overridden key came from, so errors name the variable the operator set.
    let mut origins: HashMap<(String, String), String> = HashMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|r| r.strip_prefix('_'))
                .map(|k| (*s, k))
        }) else {
            problems.push(Problem {
                path: name,
                why: if rest.starts_with(ORIGINS) {
                    "origins are configured in the file ([[origins]]), not the environment".into()
                } else {
                    format!("no such section; sections are {}", SECTIONS.join(", "))
                },
            });
            continue;
        };
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = entry {
            t.insert(key.to_string(), env_value(&value));
        }
        origins.insert((section.to_string(), key.to_string()), name);
    }

    // Deserialise each key alone over the defaults: serde stops at the first error, and
    // operators want the whole list in one go. The keys that pass make up `good`, which the
    // cross-key checks then run over (a bad key counting as its default), so one run reports
    // both kinds instead of the second only once the first are fixed.
    let mut good = toml::Table::new();
    for (section, value) in &table {
        if section == ORIGINS {
            good.insert(section.clone(), probe_origins(value, &mut problems));
            continue;
        }
        let toml::Value::Table(keys) = value else {
            problems.push(Problem {
                path: section.clone(),
                why: "must be a [section] table".into(),
            });
            continue;
        };
        if !SECTIONS.contains(&section.as_str()) {
            problems.push(Problem {
                path: section.clone(),
                why: format!(
                    "unknown section; sections are {}, and [[{ORIGINS}]]",
                    SECTIONS.join(", ")
                ),
            });
            continue;
        }
        let named = |key: &str| {
            let path = format!("{section}.{key}");
            match origins.get(&(section.clone(), key.to_string())) {
                Some(var) => format!("{path} (from {var})"),
                None => path,
            }
        };
        let wrap = |t: toml::Table| {
            let mut probe = toml::Table::new();
            probe.insert(section.clone(), toml::Value::Table(t));
            probe
        };
        let kept = probe_keys(keys, &named, &wrap, &mut problems);
        good.insert(section.clone(), toml::Value::Table(kept));
    }
    let config = match toml::Value::Table(good).try_into::<Config>() {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem {
                path: "config".into(),
                why: e.message().into(),
            });
            return Err(ConfigError::Invalid(problems));
        }
    };
    // A key already reported as unreadable is checked here at its default: a complaint
    // about that default would only confuse.
    let unreadable: Vec<String> = problems
        .iter()
        .map(|p| p.path.split(' ').next().unwrap_or_default().to_string())
        .collect();
    problems.extend(
        config
            .validate()
            .into_iter()
            .filter(|p| !unreadable.contains(&p.path)),
    );
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// The one array of tables at the top level: `[[origins]]`.
const ORIGINS: &str = "origins";
/// Arrays of tables inside an origin: `[[origins.loaders]]`, `[[origins.routes]]`.
const NESTED: &[&str] = &["loaders", "routes"];

/// Keys of one table deserialised alone over the defaults (`wrap` puts a one-key table where
/// it sits in a whole config); those that pass are kept, each that fails is a problem under
/// `named(key)`.
fn probe_keys(
    keys: &toml::Table,
    named: &dyn Fn(&str) -> String,
    wrap: &dyn Fn(toml::Table) -> toml::Table,
    problems: &mut Vec<Problem>,
) -> toml::Table {
    let mut kept = toml::Table::new();
    for (key, v) in keys {
        // An array of tables inside (an origin's loaders): each of their keys alone too.
        if NESTED.contains(&key.as_str()) {
            if let Some(items) = v.as_array().filter(|a| a.iter().all(toml::Value::is_table)) {
                let items = items.iter().enumerate().map(|(j, item)| {
                    let inner = item.as_table().expect("checked above");
                    let named = |k: &str| format!("{}[{j}].{k}", named(key));
                    let wrap = |t: toml::Table| {
                        let mut one = toml::Table::new();
                        one.insert(key.clone(), toml::Value::Array(vec![toml::Value::Table(t)]));
                        wrap(one)
                    };
                    toml::Value::Table(probe_keys(inner, &named, &wrap, problems))
                });
                kept.insert(key.clone(), toml::Value::Array(items.collect()));
                continue;
            }
        }
        let mut one = toml::Table::new();
        one.insert(key.clone(), v.clone());
        match toml::Value::Table(wrap(one)).try_into::<Config>() {
            Ok(_) => {
                kept.insert(key.clone(), v.clone());
            }
            Err(e) => problems.push(Problem {
                path: named(key),
                why: e.message().trim().to_string(),
            }),
        }
    }
    kept
}

/// `[[origins]]`: each origin's keys probed alone, as a section's are.
fn probe_origins(value: &toml::Value, problems: &mut Vec<Problem>) -> toml::Value {
    let items = match value {
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => items,
        _ => {
            problems.push(Problem {
                path: ORIGINS.into(),
                why: "must be an array of tables: [[origins]]".into(),
            });
            return toml::Value::Array(Vec::new());
        }
    };
    let kept = items.iter().enumerate().map(|(i, item)| {
        let keys = item.as_table().expect("checked above");
        let named = |key: &str| format!("{ORIGINS}[{i}].{key}");
        let wrap = |t: toml::Table| {
            let mut probe = toml::Table::new();
            probe.insert(
                ORIGINS.into(),
                toml::Value::Array(vec![toml::Value::Table(t)]),
            );
            probe
        };
        toml::Value::Table(probe_keys(keys, &named, &wrap, problems))
    });
    toml::Value::Array(kept.collect())
}

/// An env value is read as a TOML value when it is one (`8`, `true`, `["a","b"]`) and as a
/// plain string otherwise, so `TIERGATE_HTTP_LISTEN=127.0.0.1:8080` needs no quoting.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_needs_no_quoting() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[http]\nlisten = \"127.0.0.1:1111\"\n[l2]\nconnections = 2"
        )
        .unwrap();
        let c = load(
            Some(f.path()),
            env(&[
                ("TIERGATE_HTTP_LISTEN", "127.0.0.1:28080"),
                ("TIERGATE_L2_URL", "redis://127.0.0.1:6379"),
                ("TIERGATE_L2_TIMEOUT", "250ms"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:28080");
        assert_eq!(c.l2.url, "redis://127.0.0.1:6379");
        assert_eq!(c.l2.connections, 2);
        assert_eq!(c.l2.timeout.0, std::time::Duration::from_millis(250));
    }

    #[test]
    fn every_bad_key_is_reported_with_its_path() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[http]\nlisten = \"nowhere\"\nbogus = 1\n[l2]\ntimeout = \"fast\"\n[nosuch]\nx = 1"
        )
        .unwrap();
        let err = load(
            Some(f.path()),
            env(&[("TIERGATE_L1_MAX_TTL", "forever"), ("TIERGATE_XX_Y", "1")]),
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "TIERGATE_XX_Y",
            "http.listen",
            "http.bogus",
            "l2.timeout",
            "nosuch",
            "l1.max_ttl (from TIERGATE_L1_MAX_TTL)",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert!(
            problems.iter().any(|p| p.why.contains("unknown field")),
            "{problems:?}"
        );
    }

    #[test]
    fn every_bad_origin_key_is_reported_with_its_path() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[[origins]]\nname = \"users\"\nupstreams = [\"http://127.0.0.1:1\"]\n\
             request_timeout = \"soon\"\nbogus = 1\n\
             [[origins.loaders]]\nprefix = \"u:\"\npath = \"/u/{{id}}\"\nttl = \"long\"\n\
             [[origins]]\nname = \"users\"\nupstreams = [{{ weight = 2 }}]"
        )
        .unwrap();
        let err = load(Some(f.path()), env(&[("TIERGATE_ORIGINS_X", "1")])).unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "TIERGATE_ORIGINS_X",
            "origins[0].request_timeout",
            "origins[0].bogus",
            "origins[0].loaders[0].ttl",
            "origins[1].upstreams",
            "origins[1].name",
        ] {
            assert!(paths.contains(&want), "{want} missing from {problems:?}");
        }
        // A good origin loads with its defaults.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[[origins]]\nname = \"users\"\nupstreams = [\"http://127.0.0.1:1\"]"
        )
        .unwrap();
        let c = load(Some(f.path()), env(&[])).unwrap();
        assert_eq!(c.origins[0].name, "users");
        assert_eq!(
            c.origins[0].request_timeout.0,
            super::super::DEFAULT_ORIGIN_REQUEST_TIMEOUT
        );
    }

    #[test]
    fn per_key_and_cross_key_problems_come_in_one_run() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[http]\nlisten = \"127.0.0.1:9999\"\n[admin]\nlisten = \"127.0.0.1:9999\"\n\
             [l2]\ntimeout = \"fast\"\nconnections = 0\n[limits]\nmax_value_bytes = \"lots\""
        )
        .unwrap();
        let err = load(Some(f.path()), env(&[])).unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "l2.timeout",
                "limits.max_value_bytes",
                "admin.listen",
                "l2.connections"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[http\nlisten=").unwrap();
        let err = load(Some(f.path()), env(&[])).unwrap_err();
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn semantic_checks_run_after_types() {
        let err = load(None, env(&[("TIERGATE_L2_CONNECTIONS", "0")])).unwrap_err();
        assert!(err.to_string().contains("l2.connections"), "{err}");
    }
}

//! Config loading: `config::load`, the TOML file then the `TIERGATE_*` overrides then
//! per-key deserialisation and `validate()`.
//!
//! Input: the file's text, then optionally a NUL byte and `NAME=value` lines, the
//! environment. Asserted, beyond not panicking (errors are the normal outcome):
//! - a config that loads has no problems left for `validate()`;
//! - it serialises the way a reload compares configs, and shows no change against itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::{io::Write, path::PathBuf, sync::OnceLock};
use tiergate::{config, reload};

/// One file per fuzzing process, rewritten for each input: `load` reads a path.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("tiergate-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    std::fs::File::create(file())
        .and_then(|mut f| f.write_all(toml.as_bytes()))
        .expect("temp file");
    if let Ok(config) = config::load(Some(file()), env) {
        assert!(config.validate().is_empty());
        serde_json::to_value(&config).expect("a config serialises");
        assert!(reload::changed(&config, &config).is_empty());
    }
});

//! Human-readable units in config files: durations ("30s", "250ms") and byte sizes
//! ("64MiB", "4096"), plus the L1 capacity that may also be a share of RAM ("25%"). A value
//! of the wrong type is refused with an example of the right one.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::{fmt, str::FromStr, time::Duration};

/// A duration written as a string: "30s", "250ms", "1m 30s". "0" / "0s" means zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. \"30s\" or \"250ms\""))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Named in the error for a duration of the wrong type (`timeout = 5`): serde's own
/// "expected a string" does not say that a unit is what is missing.
const DURATION_EXPECTED: &str = "a duration string such as \"5s\" or \"250ms\"";

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A byte size written as a string ("64MiB", "1.5GB") or a plain integer of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?} ({e}); write e.g. \"64MiB\" or \"4096\""))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// Named in the error for a size of the wrong type (`-1`, `1.5`, `true`), where serde's
/// untagged enum said only "did not match any variant".
const SIZE_EXPECTED: &str = "a byte size such as \"16KiB\" or 4096";

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(StrOrInt(SIZE_EXPECTED))? {
            StrOrIntValue::Int(n) => Ok(Self(n)),
            StrOrIntValue::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// The L1 byte budget: an absolute size, or a percentage of the memory this process may use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    Bytes(u64),
    PercentOfMemory(f64),
}

impl Capacity {
    /// Resolves the budget against `memory` bytes (the host's or the cgroup's limit).
    pub fn resolve(self, memory: u64) -> u64 {
        match self {
            Capacity::Bytes(n) => n,
            Capacity::PercentOfMemory(p) => (memory as f64 * p / 100.0) as u64,
        }
    }
}

impl FromStr for Capacity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {s:?}"))?;
            if !(0.0..=90.0).contains(&p) {
                return Err(format!("{s:?} is outside 0%..=90% of memory"));
            }
            return Ok(Capacity::PercentOfMemory(p));
        }
        s.parse::<ByteSize>().map(|b| Capacity::Bytes(b.0))
    }
}

/// As `SIZE_EXPECTED`, with the share of memory L1 may also be given as.
const CAPACITY_EXPECTED: &str =
    "a byte size such as \"8GiB\" or 4096, or a share of memory such as \"25%\"";

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(StrOrInt(CAPACITY_EXPECTED))? {
            StrOrIntValue::Int(n) => Ok(Capacity::Bytes(n)),
            StrOrIntValue::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capacity::Bytes(n) => ByteSize(*n).fmt(f),
            Capacity::PercentOfMemory(p) => write!(f, "{p}%"),
        }
    }
}

/// Written as they are read (config diffs on reload compare these forms).
macro_rules! serialize_as_display {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serialize_as_display!(HumanDuration, ByteSize, Capacity);

/// Reads a string or a non-negative integer; anything else is refused with `.0`, what the key
/// expects, as the example.
struct StrOrInt(&'static str);

enum StrOrIntValue {
    Int(u64),
    Str(String),
}

impl de::Visitor<'_> for StrOrInt {
    type Value = StrOrIntValue;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<StrOrIntValue, E> {
        Ok(StrOrIntValue::Int(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<StrOrIntValue, E> {
        u64::try_from(n)
            .map(StrOrIntValue::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<StrOrIntValue, E> {
        Ok(StrOrIntValue::Str(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("0".parse::<HumanDuration>().unwrap().0, Duration::ZERO);
        assert!("30".parse::<HumanDuration>().is_err());
        assert!("soon".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn sizes_parse_and_reject() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[derive(Debug, Deserialize)]
    struct Keys {
        d: Option<HumanDuration>,
        b: Option<ByteSize>,
        c: Option<Capacity>,
    }

    fn refusal(toml: &str) -> String {
        toml::from_str::<Keys>(toml)
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn a_value_of_the_wrong_type_is_shown_an_example() {
        for d in ["d = 5", "d = 1.5", "d = true"] {
            let why = refusal(d);
            assert!(
                why.contains(r#"expected a duration string such as "5s" or "250ms""#),
                "{d}: {why}"
            );
        }
        for b in ["b = -1", "b = 1.5", "b = true"] {
            let why = refusal(b);
            assert!(
                why.contains(r#"expected a byte size such as "16KiB" or 4096"#),
                "{b}: {why}"
            );
        }
        let why = refusal("c = 0.25");
        assert!(why.contains(r#"a share of memory such as "25%""#), "{why}");
        let ok: Keys = toml::from_str("d = \"5s\"\nb = 4096\nc = \"16KiB\"").unwrap();
        assert_eq!(ok.d.unwrap().0, Duration::from_secs(5));
        assert_eq!(ok.b.unwrap().0, 4096);
        assert_eq!(ok.c.unwrap(), Capacity::Bytes(16 << 10));
    }

    #[test]
    fn capacity_is_bytes_or_share_of_memory() {
        assert_eq!("25%".parse::<Capacity>().unwrap().resolve(1000), 250);
        assert_eq!("1KiB".parse::<Capacity>().unwrap().resolve(1), 1024);
        assert!("95%".parse::<Capacity>().is_err());
    }
}

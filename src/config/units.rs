//! Human-readable units in config files: durations ("30s", "250ms") and byte sizes
//! ("64MiB", "4096"), plus the L1 capacity that may also be a share of RAM ("25%").

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

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
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

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d)? {
            StrOrInt::Int(n) => Ok(Self(n)),
            StrOrInt::Str(s) => s.parse().map_err(de::Error::custom),
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

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match StrOrInt::deserialize(d)? {
            StrOrInt::Int(n) => Ok(Capacity::Bytes(n)),
            StrOrInt::Str(s) => s.parse().map_err(de::Error::custom),
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

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrInt {
    Int(u64),
    Str(String),
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

    #[test]
    fn capacity_is_bytes_or_share_of_memory() {
        assert_eq!("25%".parse::<Capacity>().unwrap().resolve(1000), 250);
        assert_eq!("1KiB".parse::<Capacity>().unwrap().resolve(1), 1024);
        assert!("95%".parse::<Capacity>().is_err());
    }
}

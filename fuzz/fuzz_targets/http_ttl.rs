//! HTTP TTLs: `http::key::parse_ttl` (a batchSet item's `ttl`) and `ttl_from_query` (the
//! `?ttl=` of a PUT).
//!
//! Input: the TTL text. Asserted, beyond not panicking:
//! - an accepted TTL is at least 1ms, and one the cache can apply: its deadline is an
//!   `Instant` (the memory store) and its milliseconds fit the `PX` of a Redis SET;
//! - the text percent-encoded into `?ttl=` gives what `parse_ttl` gives for it;
//! - any query text is refused or gives a TTL that holds to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::time::{Duration, Instant};
use tiergate::http::key;

fn usable(ttl: Duration) {
    assert!(ttl >= Duration::from_millis(1));
    assert!(
        Instant::now().checked_add(ttl).is_some(),
        "{ttl:?} from now"
    );
    assert!(i64::try_from(ttl.as_millis()).is_ok(), "{ttl:?} in ms");
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let direct = key::parse_ttl(raw);
    if let Ok(ttl) = direct {
        usable(ttl);
    }
    let query = format!("ttl={}", utf8_percent_encode(raw, NON_ALPHANUMERIC));
    match (&direct, key::ttl_from_query(Some(&query))) {
        (Ok(a), Ok(Some(b))) => assert_eq!(*a, b),
        (Err(a), Err(b)) => assert_eq!(a.code, b.code),
        (a, b) => panic!("{raw:?}: parse_ttl {a:?}, ?{query} {b:?}"),
    }
    if let Ok(Some(ttl)) = key::ttl_from_query(Some(raw)) {
        usable(ttl);
    }
});

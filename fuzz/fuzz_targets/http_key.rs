//! HTTP keys: `http::key::decode`, the percent-decoding of the key in `/v1/kv/<key>`.
//!
//! Input: 1 byte of key bound, then the raw path segment. Asserted, beyond not panicking:
//! - a key is accepted exactly when its decoded length is from 1 to the bound;
//! - a key with no `%` in it is borrowed from the path (the L1-hit path does not allocate);
//! - an accepted key, percent-encoded again, decodes to itself, and `owned` keeps its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::{percent_decode_str, percent_encode, NON_ALPHANUMERIC};
use std::borrow::Cow;
use tiergate::http::key;

fuzz_target!(|data: &[u8]| {
    let Some((&max, raw)) = data.split_first() else {
        return;
    };
    let max = usize::from(max);
    let Ok(raw) = std::str::from_utf8(raw) else {
        return; // hyper hands the router a &str
    };
    let decoded: Vec<u8> = percent_decode_str(raw).collect();
    match key::decode(raw, max) {
        Ok(k) => {
            assert!((1..=max).contains(&k.len()));
            assert_eq!(k, decoded);
            if !raw.contains('%') {
                assert!(matches!(k, Cow::Borrowed(_)), "{raw:?} was copied");
            }
            let encoded = percent_encode(&k, NON_ALPHANUMERIC).to_string();
            assert_eq!(key::decode(&encoded, max).unwrap(), k);
            assert_eq!(key::owned(k.clone()), k.as_ref());
        }
        Err(e) => {
            let want = if decoded.is_empty() {
                "empty_key"
            } else {
                "key_too_long"
            };
            assert_eq!(e.code, want);
            assert!(decoded.is_empty() || decoded.len() > max);
        }
    }
});

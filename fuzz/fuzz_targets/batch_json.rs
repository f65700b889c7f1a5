//! Batch bodies: the JSON of `POST /v1/kv:batchGet` and `POST /v1/kv:batchSet`, and the value
//! encoding both use (a UTF-8 string, or `{"base64": ...}`).
//!
//! Input: the request body. Asserted, beyond not panicking:
//! - whatever a batchSet value decodes to, encoded again in either form (and by `to_json`),
//!   decodes to the same bytes, and a UTF-8 one travels as a string unless base64 is asked;
//! - the keys and TTLs of a body that decodes go through their checks without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tiergate::http::{
    batch::{BatchGet, BatchSet, Encoding, WireValue},
    key, to_json,
};

fn round_trip(value: &Bytes) {
    for encoding in [Encoding::Utf8, Encoding::Base64] {
        let wire = WireValue::encode(value, encoding);
        if encoding == Encoding::Utf8 && std::str::from_utf8(value).is_ok() {
            assert!(matches!(wire, WireValue::Text(_)));
        } else {
            assert!(matches!(wire, WireValue::Encoded { .. }));
        }
        let json = serde_json::to_vec(&wire).unwrap();
        let back: WireValue = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.decode().as_ref(), Ok(value));
    }
    let back: WireValue = serde_json::from_value(to_json(value)).unwrap();
    assert_eq!(back.decode().as_ref(), Ok(value));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(get) = serde_json::from_slice::<BatchGet>(data) {
        for k in &get.keys {
            let _ = key::check(k.as_bytes(), 1024);
        }
    }
    if let Ok(set) = serde_json::from_slice::<BatchSet>(data) {
        for item in set.items {
            let _ = key::check(item.key.as_bytes(), 1024);
            if let Some(ttl) = &item.ttl {
                let _ = key::parse_ttl(ttl);
            }
            if let Ok(value) = item.value.decode() {
                round_trip(&value);
            }
        }
    }
    if let Ok(value) = serde_json::from_slice::<WireValue>(data) {
        if let Ok(value) = value.decode() {
            round_trip(&value);
        }
    }
    // Any bytes as a value, not only those a JSON body can carry.
    round_trip(&Bytes::copy_from_slice(data));
});

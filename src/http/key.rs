//! Keys and TTLs as they arrive over HTTP: percent-decoded path segments (binary-safe) and
//! `ttl` query parameters.

use super::error::ApiError;
use bytes::Bytes;
use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Decodes a raw path key. A key without '%' escapes is borrowed from the path, so the
/// L1-hit read path does not allocate for it.
pub fn decode(raw: &str, max_key_bytes: usize) -> Result<Cow<'_, [u8]>, ApiError> {
    let key: Cow<'_, [u8]> = percent_encoding::percent_decode_str(raw).into();
    check(&key, max_key_bytes)?;
    Ok(key)
}

/// An owned key for the cache to store.
pub fn owned(key: Cow<'_, [u8]>) -> Bytes {
    match key {
        Cow::Borrowed(b) => Bytes::copy_from_slice(b),
        Cow::Owned(v) => Bytes::from(v),
    }
}

/// Checks a decoded key against the key bounds.
pub fn check(key: &[u8], max_key_bytes: usize) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("empty_key", "the key is empty"));
    }
    if key.len() > max_key_bytes {
        return Err(ApiError::bad_request(
            "key_too_long",
            format!(
                "the key is {} bytes; the limit is {max_key_bytes}",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Parses a TTL such as "30s" or "1500ms"; zero is refused (use DELETE), and so is one whose
/// deadline in Unix milliseconds does not fit an i64, as Redis refuses it ("invalid expire
/// time"; the RESP door's EXPIRE has the same bound). Unbounded, a TTL of 2^64 seconds made
/// the memory store's deadline overflow `Instant` (a panic), and one past 2^64 ms reached
/// Redis as a `PX` cut to its low 64 bits.
pub fn parse_ttl(raw: &str) -> Result<Duration, ApiError> {
    let ttl = humantime::parse_duration(raw).map_err(|_| {
        ApiError::bad_request(
            "bad_ttl",
            format!("ttl {raw:?} is not a duration such as \"30s\" or \"250ms\""),
        )
    })?;
    if ttl < Duration::from_millis(1) {
        return Err(ApiError::bad_request("bad_ttl", "ttl must be at least 1ms"));
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    if ttl.as_millis() + now_ms > i64::MAX as u128 {
        return Err(ApiError::bad_request(
            "bad_ttl",
            format!("ttl {raw:?} is past what Redis can keep"),
        ));
    }
    Ok(ttl)
}

/// Reads the query of a PUT: only `ttl` is known, and unknown parameters are refused so that
/// a typo (`?tll=30s`) does not silently store a key without expiry.
pub fn ttl_from_query(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let mut ttl = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "ttl" => {
                let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
                ttl = Some(parse_ttl(&value)?);
            }
            other => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    format!("unknown query parameter {other:?}; PUT accepts only ttl"),
                ))
            }
        }
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded_and_bounded() {
        assert_eq!(&decode("user%2F42", 64).unwrap()[..], b"user/42");
        assert_eq!(&decode("%00%FF", 64).unwrap()[..], &[0u8, 255]);
        assert_eq!(decode("", 64).unwrap_err().code, "empty_key");
        assert_eq!(decode("abcdef", 5).unwrap_err().code, "key_too_long");
        assert_eq!(
            decode("%41%42", 2).unwrap().len(),
            2,
            "the bound applies after decoding"
        );
    }

    #[test]
    fn ttl_query_is_strict() {
        assert_eq!(ttl_from_query(None).unwrap(), None);
        assert_eq!(
            ttl_from_query(Some("ttl=30s")).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            ttl_from_query(Some("ttl=1m%2030s")).unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            ttl_from_query(Some("tll=30s")).unwrap_err().code,
            "unknown_parameter"
        );
        assert_eq!(ttl_from_query(Some("ttl=0s")).unwrap_err().code, "bad_ttl");
        assert_eq!(
            ttl_from_query(Some("ttl=soon")).unwrap_err().code,
            "bad_ttl"
        );
    }

    /// Found by fuzz/fuzz_targets/http_ttl.rs (fuzz/seeds/http_ttl/past_i64_ms): a TTL must be
    /// one the memory store can add to `Instant::now()` and Redis can take as `PX`.
    #[test]
    fn ttl_past_what_redis_keeps_is_refused() {
        for raw in [
            "1m3 30 24444444550 30 m",
            "18446744073709551615s",
            "9223372036854775807ms",
        ] {
            assert_eq!(parse_ttl(raw).unwrap_err().code, "bad_ttl", "{raw}");
        }
        assert_eq!(
            ttl_from_query(Some("ttl=18446744073709551615s"))
                .unwrap_err()
                .code,
            "bad_ttl"
        );
        // A million years is far, but Redis keeps it.
        assert!(parse_ttl("1000000years").is_ok());
    }
}

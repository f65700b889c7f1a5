//! Batch handlers: `POST /v1/kv:batchGet` and `POST /v1/kv:batchSet`.
//!
//! Encoding of values in JSON: a value that is valid UTF-8 travels as a JSON string; any other
//! value travels as `{"base64": "<standard base64>"}`. A batchGet request may ask for
//! `"encoding": "base64"` to receive every value in that object form. batchSet accepts either
//! form for each value. Keys are JSON strings (UTF-8); binary keys use the single-key API.

use super::{
    body::{self, RequestBody},
    error::ApiError,
    key,
    kv::no_content,
    values::Values,
    Reply, ReplyBody, State,
};
use crate::auth::{Need, Principal};
use crate::cache::Item;
use crate::metrics::Door;
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use serde::{Deserialize, Serialize};

/// The body of a batchGet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGet {
    pub keys: Vec<String>,
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 values as strings, others as `{"base64": ...}`.
    #[default]
    Utf8,
    /// Every value as `{"base64": ...}`.
    Base64,
}

/// The body of a batchSet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSet {
    pub items: Vec<SetItem>,
}

/// One write of a batchSet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetItem {
    pub key: String,
    pub value: WireValue,
    #[serde(default)]
    pub ttl: Option<String>,
}

/// A value on the wire: a UTF-8 string, or base64 for anything else.
#[derive(Deserialize, Serialize)]
#[serde(untagged)]
pub enum WireValue {
    Text(String),
    Encoded { base64: String },
}

/// A key or value as JSON the way batch calls carry it: a string when UTF-8, else
/// `{"base64": ...}` (the admin port's /hotkeys uses it too).
pub fn to_json(value: &Bytes) -> serde_json::Value {
    serde_json::to_value(WireValue::encode(value, Encoding::Utf8)).unwrap_or_default()
}

impl WireValue {
    pub fn encode(value: &Bytes, encoding: Encoding) -> Self {
        match (encoding, std::str::from_utf8(value)) {
            (Encoding::Utf8, Ok(s)) => WireValue::Text(s.to_owned()),
            _ => WireValue::Encoded {
                base64: B64.encode(value),
            },
        }
    }

    pub fn decode(self) -> Result<Bytes, String> {
        match self {
            WireValue::Text(s) => Ok(Bytes::from(s)),
            WireValue::Encoded { base64 } => B64
                .decode(base64)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Reads a batch body (bounded by `limits.max_batch_bytes`) and parses it as JSON.
async fn read_json<T, B>(state: &State, headers: &HeaderMap, b: B) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    B: RequestBody,
{
    let limit = state.limits.load().max_batch_bytes.0;
    let raw = body::read(
        headers,
        b,
        limit,
        "batch_too_large",
        state.body_read_timeout,
    )
    .await?;
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid request body: {e}")))
}

fn check_count(n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::too_large(
            "batch_too_large",
            format!("the batch has {n} keys; the limit is {max}"),
        ));
    }
    Ok(())
}

pub async fn get<B: RequestBody>(
    state: &State,
    user: Option<&Principal>,
    headers: &HeaderMap,
    b: B,
    keys: &mut u32,
) -> Reply {
    let req: BatchGet = read_json(state, headers, b).await?;
    *keys = req.keys.len() as u32;
    // One read of the limits per request; not held across the L2 call below.
    let (max_keys, max_key, max_reply) = {
        let limits = state.limits.load();
        (
            limits.max_batch_keys,
            limits.max_key_bytes,
            limits.max_reply_bytes.0,
        )
    };
    check_count(req.keys.len(), max_keys)?;
    // The answer is a map in key order, each key once: a key asked for twice is read once.
    let mut wanted = req.keys;
    wanted.sort_unstable();
    wanted.dedup();
    for k in &wanted {
        key::check(k.as_bytes(), max_key)?;
        // One key out of scope refuses the whole batch: a partial answer would hide it.
        state.authorize(user, Need::Read, k.as_bytes())?;
    }
    let wanted: Vec<Bytes> = wanted.into_iter().map(Bytes::from).collect();
    let hits = state.cache.get_many(&wanted).await?;
    let found = hits.into_iter().map(|h| h.map(|h| h.value)).collect();
    let answer = Values::new(wanted, found, req.encoding == Encoding::Base64);
    if answer.remaining() > max_reply {
        state.metrics.reply_too_large(Door::Http);
        return Err(ApiError::too_large(
            "reply_too_large",
            format!(
                "the answer would be {} bytes; the limit is {max_reply} \
                 (limits.max_reply_bytes): ask for fewer keys at a time",
                answer.remaining()
            ),
        ));
    }
    let mut resp = Response::new(ReplyBody::Values(Box::new(answer)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

pub async fn set<B: RequestBody>(
    state: &State,
    user: Option<&Principal>,
    headers: &HeaderMap,
    b: B,
    keys: &mut u32,
) -> Reply {
    let req: BatchSet = read_json(state, headers, b).await?;
    *keys = req.items.len() as u32;
    let (max_keys, max_key, max_value) = {
        let limits = state.limits.load();
        (
            limits.max_batch_keys,
            limits.max_key_bytes,
            limits.max_value_bytes.0,
        )
    };
    check_count(req.items.len(), max_keys)?;
    for it in &req.items {
        // All or nothing: no item is written when one is out of scope.
        state.authorize(user, Need::Write, it.key.as_bytes())?;
    }
    let mut items: Vec<Item> = Vec::with_capacity(req.items.len());
    for (i, it) in req.items.into_iter().enumerate() {
        key::check(it.key.as_bytes(), max_key).map_err(|e| ApiError {
            message: format!("items[{i}]: {}", e.message).into(),
            ..e
        })?;
        let value = it
            .value
            .decode()
            .map_err(|e| ApiError::bad_request("bad_base64", format!("items[{i}].value: {e}")))?;
        if value.len() as u64 > max_value {
            return Err(ApiError::too_large(
                "value_too_large",
                format!(
                    "items[{i}].value is {} bytes; the limit is {max_value}",
                    value.len()
                ),
            ));
        }
        let ttl = it
            .ttl
            .as_deref()
            .map(key::parse_ttl)
            .transpose()
            .map_err(|e| ApiError {
                message: format!("items[{i}].ttl: {}", e.message).into(),
                ..e
            })?;
        items.push((Bytes::from(it.key), value, ttl));
    }
    if !items.is_empty() {
        state.cache.set_many(items).await?;
    }
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_both_forms() {
        let text = Bytes::from_static(b"hello");
        let binary = Bytes::from_static(&[0xff, 0x00]);
        let j = serde_json::to_string(&WireValue::encode(&text, Encoding::Utf8)).unwrap();
        assert_eq!(j, "\"hello\"");
        let j = serde_json::to_string(&WireValue::encode(&binary, Encoding::Utf8)).unwrap();
        assert_eq!(j, "{\"base64\":\"/wA=\"}");
        let j = serde_json::to_string(&WireValue::encode(&text, Encoding::Base64)).unwrap();
        assert_eq!(j, "{\"base64\":\"aGVsbG8=\"}");
        let back: WireValue = serde_json::from_str("{\"base64\":\"/wA=\"}").unwrap();
        assert_eq!(back.decode().unwrap(), binary);
        let bad: WireValue = serde_json::from_str("{\"base64\":\"!!\"}").unwrap();
        assert!(bad.decode().is_err());
    }
}

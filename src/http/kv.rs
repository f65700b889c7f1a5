//! Single-key handlers: `GET`, `PUT` and `DELETE /v1/kv/{key}`.

use super::{
    body::{self, RequestBody},
    error::ApiError,
    key, Reply, ReplyBody, State,
};
use crate::auth::{Need, Principal};
use crate::metrics::Tier;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Which tier answered. A `HeaderName` constant: a custom name given as `&str` is copied
/// into a fresh allocation on every insert.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

pub async fn get(state: &State, user: Option<&Principal>, raw_key: &str) -> Reply {
    let key = key::decode(raw_key, state.limits.load().max_key_bytes)?;
    state.authorize(user, Need::Read, &key)?;
    match state.cache.get(&key).await? {
        Some(hit) => {
            // Sized up front: grown from empty, the first insert goes through the map's
            // growth path.
            let mut h = HeaderMap::with_capacity(2);
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(X_CACHE, tier_header(hit.tier));
            let mut resp = Response::new(Full::new(hit.value).into());
            *resp.headers_mut() = h;
            Ok(resp)
        }
        None => {
            let mut resp = ApiError::key_not_found().into_response();
            resp.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static("MISS"));
            Ok(resp)
        }
    }
}

pub async fn put<B: RequestBody>(
    state: &State,
    user: Option<&Principal>,
    raw_key: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    b: B,
) -> Reply {
    let (max_key, max_value) = {
        let limits = state.limits.load();
        (limits.max_key_bytes, limits.max_value_bytes.0)
    };
    let key = key::decode(raw_key, max_key)?;
    // Before the body is read: a forbidden write costs no upload.
    state.authorize(user, Need::Write, &key)?;
    let ttl = key::ttl_from_query(query)?;
    let value = body::read(
        headers,
        b,
        max_value,
        "value_too_large",
        state.body_read_timeout,
    )
    .await?;
    state.cache.set(key::owned(key), value, ttl).await?;
    Ok(no_content())
}

pub async fn delete(state: &State, user: Option<&Principal>, raw_key: &str) -> Reply {
    let key = key::decode(raw_key, state.limits.load().max_key_bytes)?;
    state.authorize(user, Need::Write, &key)?;
    if state.cache.delete(&key).await? {
        Ok(no_content())
    } else {
        Err(ApiError::key_not_found())
    }
}

pub fn no_content() -> Response<ReplyBody> {
    let mut resp = Response::new(Full::new(Bytes::new()).into());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// The tier a response says it was answered from (its X-Cache header), for the access log.
pub fn tier_of(resp: &Response<ReplyBody>) -> Option<Tier> {
    match resp.headers().get(&X_CACHE)?.as_bytes() {
        b"L1" => Some(Tier::L1),
        b"L2" => Some(Tier::L2),
        b"ORIGIN" => Some(Tier::Origin),
        _ => None,
    }
}

fn tier_header(tier: Tier) -> HeaderValue {
    HeaderValue::from_static(match tier {
        Tier::L1 => "L1",
        Tier::L2 => "L2",
        Tier::Origin => "ORIGIN",
    })
}

//! Request bodies read under a byte limit: a declared Content-Length over the limit is refused
//! before a byte is read, and a body that streams past it is cut off at the limit.

use super::error::ApiError;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;

/// A request body the handlers can read: hyper's `Incoming` when serving, `Full` or `Empty`
/// in benches and unit tests.
pub trait RequestBody:
    Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
{
}

impl<B> RequestBody for B
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// Reads the whole body if it is at most `limit` bytes (otherwise 413 with `code`) and arrives
/// within `deadline` (otherwise 408).
pub async fn read<B: RequestBody>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    code: &'static str,
    deadline: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::too_large(code, format!("the body exceeds the limit of {limit} bytes"));
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                ApiError::bad_request("bad_content_length", "Content-Length is not a number")
            })?;
        if len > limit {
            return Err(too_large());
        }
    }
    let collected = tokio::time::timeout(deadline, Limited::new(body, limit as usize).collect())
        .await
        .map_err(|_| ApiError::body_timeout())?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(
            "body_read_failed",
            format!("reading the body failed: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::time::Duration;

    #[tokio::test]
    async fn declared_length_over_limit_is_refused_unread() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "100".parse().unwrap());
        let err = read(
            &h,
            Full::new(Bytes::from_static(b"x")),
            10,
            "value_too_large",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status, 413);
    }

    #[tokio::test]
    async fn streamed_body_past_limit_is_refused() {
        let err = read(
            &HeaderMap::new(),
            Full::new(Bytes::from(vec![0u8; 11])),
            10,
            "value_too_large",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "value_too_large"));
        let ok = read(
            &HeaderMap::new(),
            Full::new(Bytes::from(vec![0u8; 10])),
            10,
            "value_too_large",
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(ok.unwrap().len(), 10);
    }
}

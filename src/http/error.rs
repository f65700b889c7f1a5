//! API errors: one type carrying status, a stable machine-readable code and a message,
//! rendered as `{"error":{"code","message"}}`.

use crate::{auth::Denied, cache::L2Error};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::borrow::Cow;

/// Seconds a client should wait before retrying a 503: long enough not to hammer a Redis
/// that is restarting, short enough to come back soon after the default 1s health probe
/// sees it return.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// For 405: the methods the route accepts.
    pub allow: Option<&'static str>,
    /// For 401: send the `WWW-Authenticate: Bearer` challenge.
    pub challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
            challenge: false,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn key_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "key_not_found",
            "no value is stored under this key",
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no such endpoint; see /v1/kv/{key}",
        )
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this endpoint accepts {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    pub fn too_large(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    pub fn into_response(self) -> Response<super::ReplyBody> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        })
        .expect("serialising two strings cannot fail");
        let mut resp = Response::new(Full::new(Bytes::from(body)).into());
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tiergate\""),
            );
        }
        if let Some(allow) = self.allow {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        resp
    }

    /// No valid bearer token. 401 with `WWW-Authenticate`.
    pub fn unauthorized(why: Denied) -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            match why {
                Denied::Missing => "this endpoint needs an Authorization: Bearer token",
                _ => "the bearer token is not valid",
            },
        );
        e.challenge = true;
        e
    }

    /// The token is valid but does not grant this key. The message names the token's holder,
    /// never the token.
    pub fn forbidden(holder: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token of {holder:?} does not grant this operation on this key"),
        )
    }

    /// Protected mode: no `auth.tokens`, and the client is not on loopback.
    pub fn protected_mode() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "protected_mode",
            "tiergate is running in protected mode: no HTTP bearer tokens are configured \
             (auth.tokens), so only clients on the loopback interface are served. To serve this \
             client, add [[auth.tokens]] (then send Authorization: Bearer <token>), or, if every \
             host that can reach this port may read and write every key, set \
             auth.protected_mode = false (TIERGATE_AUTH_PROTECTED_MODE=false). A SIGHUP applies \
             either.",
        )
    }

    /// The body did not arrive within `http.body_read_timeout`.
    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive within http.body_read_timeout",
        )
    }

    /// The request took longer than `http.request_timeout`. 503 with Retry-After.
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "the request was not answered within http.request_timeout",
        )
    }

    /// Admission refused the request: the door is at its limits. 503 with Retry-After.
    pub fn overloaded(why: crate::exec::Refused) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", why.reason())
    }
}

impl From<L2Error> for ApiError {
    fn from(e: L2Error) -> Self {
        let code = match e {
            L2Error::Unavailable(_) => "l2_unavailable",
            L2Error::Timeout => "l2_timeout",
            L2Error::CircuitOpen => "l2_circuit_open",
            L2Error::Refused { .. } => "l2_refused",
            L2Error::Origin { code, .. } => code,
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_render_as_json_with_their_headers() {
        let resp = ApiError::from(L2Error::Timeout).into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "l2_timeout");
        assert!(v["error"]["message"].as_str().unwrap().contains("in time"));

        let resp = ApiError::method_not_allowed("GET, PUT, DELETE").into_response();
        assert_eq!(resp.headers()["allow"], "GET, PUT, DELETE");
    }
}

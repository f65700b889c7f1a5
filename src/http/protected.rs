//! Protected mode on the HTTP door: a client the door does not serve (no `auth.tokens`, and
//! it is not on loopback) gets one answer, 403 `protected_mode` saying what to configure, and
//! the connection is closed. It never reaches the router, admission or the connection limits
//! of a served client; `http.header_read_timeout` bounds how long it is held.

use super::{error::ApiError, proto::Protocols};
use http::{header, HeaderValue, Request, Response};
use hyper::service::service_fn;
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::{net::TcpStream, sync::Notify};

/// Answers every request on `stream` with 403 `protected_mode` and closes it after the first
/// (HTTP/1: `Connection: close`; h2: GOAWAY), or after `within` in any case.
pub async fn refuse(stream: TcpStream, protocols: Arc<Protocols>, within: Duration) {
    let answered = Arc::new(Notify::new());
    let svc = service_fn({
        let answered = answered.clone();
        move |req: Request<hyper::body::Incoming>| {
            answered.notify_one();
            let mut resp = ApiError::protected_mode().into_response();
            if req.version() < http::Version::HTTP_2 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            async move { Ok::<Response<_>, Infallible>(resp) }
        }
    });
    let conn = protocols.serve(stream, svc);
    tokio::pin!(conn);
    let _ = tokio::time::timeout(within, async {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = answered.notified() => {}
        }
        // The answer in flight is still written; nothing after it is read.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    })
    .await;
}

//! The stack's own floor for `loadtest/compare.sh`: a bare hyper HTTP/1.1 server on one
//! tokio worker that answers every request with a fixed body. What tiergate costs above this
//! is what its own layers (routing, L1, metrics, h2c detection, graceful drain) cost.
//!
//! Usage: bare_hyper ADDR BODY_BYTES

use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().expect("ADDR").parse().expect("ADDR is ip:port");
    let size: usize = args
        .next()
        .map_or(64, |s| s.parse().expect("BODY_BYTES is a number"));
    let body = Bytes::from(vec![b'x'; size]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

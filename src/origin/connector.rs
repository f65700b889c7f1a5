//! The origin client's connector: hyper-util's `HttpConnector` (connect timeout, TCP_NODELAY)
//! with each connection counted in its upstream's `tiergate_origin_connections` gauge while it
//! is open. hyper-util's pool reports nothing about itself; this is where a connection is born
//! and, on drop, where it ends.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use prometheus::IntGauge;
use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// Connects like `HttpConnector` and counts the connections it made that are still open.
#[derive(Clone)]
pub struct Counting {
    inner: HttpConnector,
    open: IntGauge,
}

impl Counting {
    pub fn new(connect_timeout: Duration, open: IntGauge) -> Self {
        let mut inner = HttpConnector::new();
        inner.set_connect_timeout(Some(connect_timeout));
        // Requests are small and answered at once: Nagle would hold the second segment.
        inner.set_nodelay(true);
        Self { inner, open }
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Uri> for Counting {
    type Response = Counted<<HttpConnector as tower_service::Service<http::Uri>>::Response>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    // Boxed once per new connection, not per request: the pool reuses connections.
    type Future = Boxed<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let open = self.open.clone();
        Box::pin(async move {
            let io = connecting.await?;
            open.inc();
            Ok(Counted { io, open })
        })
    }
}

/// A connection that leaves its gauge when dropped.
pub struct Counted<T> {
    io: T,
    open: IntGauge,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

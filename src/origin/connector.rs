//! How a connection to an upstream is made: TCP (the pool bounds how long), TCP_NODELAY, and
//! counted in its upstream's `tiergate_origin_connections` gauge while it is open.

use super::pool::SendError;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::net::TcpStream;

/// A connection to an upstream, as hyper reads and writes it.
pub type Counted = Gauged<TokioIo<TcpStream>>;

/// Connects to `authority` (port 80 when it names none), trying each address its host
/// resolves to until one answers.
pub async fn connect(
    authority: &http::uri::Authority,
    open: &IntGauge,
) -> Result<Counted, SendError> {
    // An IPv6 host comes bracketed ("[::1]"), which a resolver does not take.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let target = (host, authority.port_u16().unwrap_or(80));
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| SendError::Connect(e.to_string()))?;
    // Requests are small and answered at once: Nagle would hold the second segment.
    stream
        .set_nodelay(true)
        .map_err(|e| SendError::Connect(e.to_string()))?;
    open.inc();
    Ok(Gauged {
        io: TokioIo::new(stream),
        open: open.clone(),
    })
}

/// A connection that leaves its gauge when dropped.
pub struct Gauged<T> {
    io: T,
    open: IntGauge,
}

impl<T> Drop for Gauged<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<T: Read + Unpin> Read for Gauged<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Gauged<T> {
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

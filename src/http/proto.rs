//! HTTP/1.1 and h2c (prior knowledge) on one port: the first bytes say which, as in
//! hyper-util's `auto` builder, which this replaces because it cannot set hyper's HTTP/1
//! `max_header_size`. Without that, `http.max_header_bytes` reached HTTP/1 only as hyper's
//! `max_buf_size`, which hyper checks between reads of an incomplete head: one read fills
//! whatever spare capacity the read buffer has, and on a reused connection the buffer had
//! grown past the limit (the consumed head before it made the next reserve double it), so a
//! second request's head of up to about twice the limit was served (issue 15, point 9).
//! `max_header_size` is checked against the parsed head's length, on every request.
//!
//! Data connections start on our own HTTP/1 path (`h1`), which reads the first bytes itself
//! and hands hyper what it read (`Protocols::serve_read`: h2 when they are the preface).
//! Protected mode's refusals start here: like `auto`, the first up-to-24 bytes are read into
//! the connection's state, compared with the h2 preface as they arrive, and handed to hyper
//! ahead of the socket.

use bytes::Bytes;
use hyper::{
    body::{Body, Incoming},
    rt::{bounds::Http2ServerConnExec, Read, ReadBufCursor, Write},
    server::conn::{http1, http2},
    service::HttpService,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    error::Error as StdError,
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};
use tokio::{io::AsyncRead, net::TcpStream};

type BoxError = Box<dyn StdError + Send + Sync>;

/// What an h2 client with prior knowledge sends first (RFC 9113, 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's builders for both protocols.
pub struct Protocols {
    pub h1: http1::Builder,
    /// None: HTTP/1 only (`http.http2 = false`); the first bytes are then not looked at.
    pub h2: Option<http2::Builder<TokioExecutor>>,
}

impl Protocols {
    /// Serves `svc` on `stream` with the protocol its first bytes ask for.
    pub fn serve<S, B>(&self, stream: TcpStream, svc: S) -> Connection<'_, S>
    where
        S: HttpService<Incoming, ResBody = B> + Unpin,
        S::Error: Into<BoxError>,
        B: Body + 'static,
        B::Error: Into<BoxError>,
        TokioExecutor: Http2ServerConnExec<S::Future, B>,
    {
        if self.h2.is_none() {
            let io = Primed::new(stream, Bytes::new());
            return Connection::H1(self.h1.serve_connection(io, svc));
        }
        Connection::Sniff {
            io: Some(stream),
            seen: [0; 24],
            filled: 0,
            svc: Some(svc),
            protocols: self,
        }
    }
}

impl Protocols {
    /// Serves the rest of a connection our own HTTP/1 path has read `seen` of: h2 when
    /// those bytes are its preface (and h2c is served), else HTTP/1.
    pub fn serve_read<S, B>(&self, stream: TcpStream, seen: Bytes, svc: S) -> Connection<'_, S>
    where
        S: HttpService<Incoming, ResBody = B> + Unpin,
        S::Error: Into<BoxError>,
        B: Body + 'static,
        B::Error: Into<BoxError>,
        TokioExecutor: Http2ServerConnExec<S::Future, B>,
    {
        let h2 = self.h2.as_ref().filter(|_| seen.starts_with(PREFACE));
        let io = Primed::new(stream, seen);
        match h2 {
            Some(h2) => Connection::H2(h2.serve_connection(io, svc)),
            None => Connection::H1(self.h1.serve_connection(io, svc)),
        }
    }
}

/// One connection's protocol driver; a future that ends with the connection.
#[allow(clippy::large_enum_variant)] // one per connection, never moved once polled
pub enum Connection<'a, S: HttpService<Incoming>> {
    /// Reading the first bytes.
    Sniff {
        io: Option<TcpStream>,
        seen: [u8; 24],
        filled: usize,
        svc: Option<S>,
        protocols: &'a Protocols,
    },
    H1(http1::Connection<Primed, S>),
    H2(http2::Connection<Primed, S, TokioExecutor>),
    /// Closed while the first bytes were still arriving.
    Closed,
}

impl<S, B> Connection<'_, S>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    /// Starts a graceful close: HTTP/1 after the request in flight, h2 with GOAWAY; a
    /// connection still sending its first bytes ends at once.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match this {
            Connection::Sniff { .. } => *this = Connection::Closed,
            Connection::H1(c) => Pin::new(c).graceful_shutdown(),
            Connection::H2(c) => Pin::new(c).graceful_shutdown(),
            Connection::Closed => {}
        }
    }
}

impl<S, B> Future for Connection<'_, S>
where
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match this {
                Connection::Sniff {
                    io,
                    seen,
                    filled,
                    svc,
                    protocols,
                } => {
                    // h2 while every byte so far matches the preface; HTTP/1 at the first
                    // that does not, or at EOF.
                    let h2 = loop {
                        if *filled == PREFACE.len() {
                            break true;
                        }
                        let stream = io.as_mut().expect("present until sniffed");
                        let mut buf = tokio::io::ReadBuf::new(&mut seen[*filled..]);
                        ready!(Pin::new(stream).poll_read(cx, &mut buf))?;
                        let (from, n) = (*filled, buf.filled().len());
                        *filled += n;
                        if n == 0 || seen[from..*filled] != PREFACE[from..*filled] {
                            break false;
                        }
                    };
                    let seen = Bytes::copy_from_slice(&seen[..*filled]);
                    let primed = Primed::new(io.take().expect("present"), seen);
                    let svc = svc.take().expect("present until sniffed");
                    let protocols: &Protocols = protocols;
                    *this = match (h2, &protocols.h2) {
                        (true, Some(h2)) => Connection::H2(h2.serve_connection(primed, svc)),
                        _ => Connection::H1(protocols.h1.serve_connection(primed, svc)),
                    };
                }
                Connection::H1(c) => return Pin::new(c).poll(cx).map_err(Into::into),
                Connection::H2(c) => return Pin::new(c).poll(cx).map_err(Into::into),
                Connection::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// The socket, with the bytes read before hyper took it (to choose the protocol, or by our
/// own HTTP/1 path) served first.
pub struct Primed {
    seen: Bytes,
    io: TokioIo<TcpStream>,
}

impl Primed {
    fn new(stream: TcpStream, seen: Bytes) -> Self {
        Self {
            seen,
            io: TokioIo::new(stream),
        }
    }
}

impl Read for Primed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.seen.is_empty() {
            let n = buf.remaining().min(this.seen.len());
            buf.put_slice(&this.seen.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl Write for Primed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

//! A read that tells tokio when it has drained the socket. tokio learns that a socket is
//! drained only from a read that fails with WouldBlock, so a connection that reads what
//! arrived, answers it and waits again first makes one more read, which fails: a second
//! syscall per request for a client that sends one request at a time (measured with `perf
//! stat`: 2.00 `recvfrom` per unpipelined GET, against redis-server's 1.00 `read`). A read that
//! returns less than it asked for has drained the socket, since the kernel hands over all it
//! holds, so it is reported to tokio as WouldBlock as well, as nginx does (`rev->ready = 0` on
//! a short read). Data that arrives after it raises a new edge, and tokio's readiness tick
//! keeps that newer readiness from being cleared.
//!
//! hyper's connections (the HTTP door) need none of this: tokio's own `AsyncRead` for
//! `TcpStream` clears readiness on a short read already; only `try_read` and `try_io`, which
//! the RESP door and the origin client (`origin/http1.rs`) read with, do not (strace: 1.00
//! recvfrom per HTTP GET, 2.00 per proxied miss, the client's and the origin's).

use bytes::BytesMut;
use std::io;
use tokio::{io::Interest, net::TcpStream};

/// Reads what `stream` holds into `buf`'s spare capacity, which must not be empty: Ok(0) is
/// the end of the stream, and WouldBlock that nothing was there.
pub fn try_read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    debug_assert!(buf.capacity() > buf.len(), "room to read into");
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        let spare = buf.spare_capacity_mut();
        let asked = spare.len();
        let n = socket2::SockRef::from(stream).recv(spare)?;
        // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + n) };
        got = n;
        if n > 0 && n < asked {
            // Drained: tokio clears the socket's readiness on this error.
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        read => read,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{future::poll_fn, task::Poll};
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    /// Whether tokio takes `s` for readable right now (without waiting for it).
    async fn looks_readable(s: &TcpStream) -> bool {
        poll_fn(|cx| Poll::Ready(s.poll_read_ready(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_socket_waiting_for_the_next_bytes() {
        let (mut client, server) = pair().await;
        client.write_all(b"PING\r\n").await.unwrap();
        server.readable().await.unwrap();
        let mut buf = BytesMut::with_capacity(1024);
        assert_eq!(try_read(&server, &mut buf).unwrap(), 6);
        assert_eq!(&buf[..], b"PING\r\n");
        assert!(
            !looks_readable(&server).await,
            "drained, without a second read that fails"
        );
        client.write_all(b"PING\r\n").await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(try_read(&server, &mut buf).unwrap(), 6);
        drop(client);
        server.readable().await.unwrap();
        buf.reserve(16);
        assert_eq!(
            try_read(&server, &mut buf).unwrap(),
            0,
            "the end of the stream"
        );
    }

    #[tokio::test]
    async fn a_read_that_fills_the_buffer_leaves_the_socket_readable() {
        let (mut client, server) = pair().await;
        client.write_all(&[7u8; 3000]).await.unwrap();
        let mut buf = BytesMut::with_capacity(1000);
        let mut total = 0;
        while total < 3000 {
            server.readable().await.unwrap();
            buf.clear();
            match try_read(&server, &mut buf) {
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
            if buf.len() == buf.capacity() && total < 3000 {
                assert!(looks_readable(&server).await, "more may be waiting");
            }
        }
        assert_eq!(total, 3000);
    }
}

//! Writing replies to a client, and what bounds them. A batch's replies are encoded into one
//! borrowed buffer and written with one write, except:
//! - past `resp.reply_buffer_bytes` pending, the batch stops running commands until the
//!   socket has taken them, so a client that does not read stops having its commands run
//!   (backpressure) instead of making the gateway hold its replies;
//! - a reply at least that large (a large value, a long MGET) is not copied into the buffer:
//!   it is written piece by piece, each large value from its own (shared) buffer;
//! - a reply over `limits.max_reply_bytes` is not written at all: the client gets an error
//!   naming the limit and is closed, as by redis-server's `client-output-buffer-limit`;
//! - a client that takes none of its replies for `resp.idle_timeout` is closed.

use super::frame::{Frame, Protocol};
use bytes::{BufMut, BytesMut};
use std::{io, time::Duration};
use tokio::{net::TcpStream, time::Instant};

/// Where a reply goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    /// Encoded into the batch's buffer.
    Buffered,
    /// Written on its own, after the buffer before it, without being copied whole.
    Streamed,
    /// Over `limits.max_reply_bytes`: this many bytes.
    TooLarge(usize),
}

/// How `reply` fits: `buffer` is `resp.reply_buffer_bytes`, `max` `limits.max_reply_bytes`.
/// Only values, arrays and maps are counted: every other reply is a short line.
#[inline]
pub fn fit(reply: &Frame, proto: Protocol, buffer: usize, max: u64) -> Fit {
    let len = match reply {
        Frame::Bulk(b) | Frame::Raw(b) if b.len() < buffer => return Fit::Buffered,
        Frame::Bulk(_) | Frame::Raw(_) | Frame::Array(_) | Frame::Map(_) => {
            reply.encoded_len(proto)
        }
        _ => return Fit::Buffered,
    };
    if len as u64 > max {
        Fit::TooLarge(len)
    } else if len >= buffer {
        Fit::Streamed
    } else {
        Fit::Buffered
    }
}

/// The error a client gets before it is closed for a reply over the limit.
pub fn too_large(len: usize, max: u64) -> Frame {
    Frame::Error(
        format!(
            "ERR reply of {len} bytes exceeds limits.max_reply_bytes ({max}); closing the connection"
        )
        .into(),
    )
}

/// Writes all of `bytes`. The write is tried first with no timer: a socket that takes it (all
/// but always) costs none. When the socket is full, the client has until `timeout` from then
/// (None: no bound) to take all of it, or the write fails with `TimedOut`.
pub async fn send(
    stream: &TcpStream,
    mut bytes: &[u8],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut deadline = None;
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let Some(timeout) = timeout else {
                    stream.writable().await?;
                    continue;
                };
                let at = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                tokio::time::timeout_at(at, stream.writable())
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes what `wbuf` holds, then `reply`, without copying the reply whole: headers and
/// small items are encoded into `wbuf` after what it held, written whenever it passes
/// `buffer` bytes, and every value of at least `buffer` bytes is written from its own buffer.
/// `wbuf` is empty on return. So a
/// 512 MiB MGET of one 4 MiB value costs the socket's pace and `buffer` bytes, not 512 MiB.
pub async fn stream(
    stream: &TcpStream,
    wbuf: &mut BytesMut,
    reply: &Frame,
    proto: Protocol,
    buffer: usize,
    timeout: Option<Duration>,
) -> io::Result<()> {
    // The aggregates being written, innermost last: an explicit stack, since an async fn
    // cannot recurse without a box per level.
    let mut stack = vec![Items::One(Some(reply))];
    while let Some(items) = stack.last_mut() {
        let Some(frame) = items.next() else {
            stack.pop();
            continue;
        };
        match frame {
            Frame::Array(items) => {
                frame.encode_head(proto, wbuf);
                stack.push(Items::Seq(items.iter()));
            }
            Frame::Map(pairs) => {
                frame.encode_head(proto, wbuf);
                stack.push(Items::Pairs(pairs.iter(), None));
            }
            Frame::Bulk(value) if value.len() >= buffer => {
                frame.encode_head(proto, wbuf);
                send(stream, wbuf, timeout).await?;
                wbuf.clear();
                send(stream, value, timeout).await?;
                wbuf.put_slice(b"\r\n");
            }
            Frame::Raw(bytes) if bytes.len() >= buffer => {
                send(stream, wbuf, timeout).await?;
                wbuf.clear();
                send(stream, bytes, timeout).await?;
            }
            small => small.encode(proto, wbuf),
        }
        if wbuf.len() >= buffer {
            send(stream, wbuf, timeout).await?;
            wbuf.clear();
        }
    }
    send(stream, wbuf, timeout).await?;
    wbuf.clear();
    Ok(())
}

/// The frames of one level of a reply, in the order they are written.
enum Items<'a> {
    One(Option<&'a Frame>),
    Seq(std::slice::Iter<'a, Frame>),
    /// A map's pairs; the value of the pair whose key was just given.
    Pairs(std::slice::Iter<'a, (Frame, Frame)>, Option<&'a Frame>),
}

impl<'a> Iterator for Items<'a> {
    type Item = &'a Frame;

    fn next(&mut self) -> Option<&'a Frame> {
        match self {
            Items::One(f) => f.take(),
            Items::Seq(it) => it.next(),
            Items::Pairs(it, value) => value.take().or_else(|| {
                let (k, v) = it.next()?;
                *value = Some(v);
                Some(k)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    fn nested() -> Frame {
        let big = Bytes::from(vec![b'v'; 3000]);
        Frame::Array(vec![
            Frame::Bulk(big.clone()),
            Frame::Map(vec![
                (Frame::bulk_static("k"), Frame::Bulk(big.clone())),
                (Frame::bulk_static("n"), Frame::Null),
            ]),
            Frame::Array(Vec::new()),
            Frame::Integer(7),
            Frame::bulk_static("small"),
            Frame::Bulk(big),
        ])
    }

    #[tokio::test]
    async fn a_streamed_reply_is_byte_for_byte_its_encoding() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for proto in [Protocol::Resp2, Protocol::Resp3] {
            let reply = nested();
            let mut want = BytesMut::new();
            reply.encode(proto, &mut want);
            let client = tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                got
            });
            let (server, _) = listener.accept().await.unwrap();
            // Replies buffered before it go first.
            let mut wbuf = BytesMut::from(&b"+OK\r\n"[..]);
            // A buffer of 1 KiB: the 3000-byte values go out from their own buffers.
            stream(&server, &mut wbuf, &reply, proto, 1024, None)
                .await
                .unwrap();
            assert!(wbuf.is_empty());
            drop(server);
            let mut expected = b"+OK\r\n".to_vec();
            expected.extend_from_slice(&want);
            assert_eq!(client.await.unwrap(), expected, "{proto:?}");
        }
    }

    #[test]
    fn replies_are_placed_by_their_encoded_size() {
        let p = Protocol::Resp2;
        assert_eq!(fit(&Frame::OK, p, 1024, 4096), Fit::Buffered);
        assert_eq!(fit(&Frame::bulk_static("x"), p, 1024, 4096), Fit::Buffered);
        assert_eq!(fit(&nested(), p, 1024, 1 << 20), Fit::Streamed);
        let len = nested().encoded_len(p);
        assert_eq!(fit(&nested(), p, 1024, len as u64), Fit::Streamed);
        assert_eq!(fit(&nested(), p, 1024, len as u64 - 1), Fit::TooLarge(len));
        assert_eq!(fit(&nested(), p, 1 << 20, 1 << 20), Fit::Buffered);
    }
}

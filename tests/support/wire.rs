//! A raw RESP client for byte-exact tests: it sends multibulk commands and hands back each
//! reply as the exact bytes the server wrote, whatever their RESP2 or RESP3 type, so two
//! servers' answers can be compared byte for byte. Nothing is decoded beyond finding where one
//! reply ends.

use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long `recv` waits for one whole reply before failing the test.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

/// One connection to a RESP server.
pub struct Wire {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read but not yet handed out: the start of the next reply(s).
    buf: Vec<u8>,
}

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        let stream = tokio::time::timeout(REPLY_WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        Wire {
            addr,
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one command as a multibulk; does not read its reply.
    pub async fn send(&mut self, args: &[&[u8]]) {
        let addr = self.addr;
        self.stream
            .write_all(&encode(args))
            .await
            .unwrap_or_else(|e| panic!("writing to {addr}: {e}"));
    }

    /// Reads exactly one whole reply (or push) and returns its bytes; what follows it stays
    /// buffered for the next call. Fails the test if none is whole within `REPLY_WAIT`.
    pub async fn recv(&mut self) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + REPLY_WAIT;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reply_len(&self.buf) {
                Ok(Some(n)) => return self.buf.drain(..n).collect(),
                Ok(None) => {}
                Err(e) => panic!("{}: malformed reply ({e}): {}", self.addr, show(&self.buf)),
            }
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "{}: no whole reply within {REPLY_WAIT:?}; read so far: {:?}",
                    self.addr,
                    show(&self.buf)
                ),
                Ok(Err(e)) => panic!("{}: read failed: {e}", self.addr),
                Ok(Ok(0)) => panic!(
                    "{}: connection closed before a whole reply; read so far: {:?}",
                    self.addr,
                    show(&self.buf)
                ),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one command and reads one reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(args).await;
        self.recv().await
    }

    /// Switches the connection to RESP3; returns the HELLO reply.
    pub async fn hello3(&mut self) -> Vec<u8> {
        self.call(&[b"HELLO", b"3"]).await
    }
}

/// A command as a RESP multibulk.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the first whole reply in `buf`: `Ok(None)` while it is incomplete, `Err`
/// when the bytes are not RESP2/RESP3 (or are a streamed type, which is not supported).
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    value_end(buf, 0)
}

/// Where the value starting at `pos` ends (one past its last byte).
fn value_end(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(cr) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let head = &buf[pos + 1..pos + cr];
    let after = pos + cr + 2;
    match kind {
        // Simple string, error, integer, null, double, boolean, big number: one line.
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(after)),
        // Bulk string, bulk error, verbatim string: a length, then that many bytes and CRLF.
        b'$' | b'!' | b'=' => {
            let n = length(kind, head)?;
            if n < 0 {
                return Ok(Some(after)); // RESP2 null bulk
            }
            let end = after + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(format!(
                    "the {} byte payload at {pos} is not followed by CRLF",
                    n
                ));
            }
            Ok(Some(end))
        }
        // Array, set, push; map and attribute hold pairs. An attribute is followed by the
        // reply it annotates, which is part of the same reply.
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = length(kind, head)?;
            if n < 0 {
                return Ok(Some(after)); // RESP2 null array
            }
            let count = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut p = after;
            for _ in 0..count {
                match value_end(buf, p)? {
                    Some(q) => p = q,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                return value_end(buf, p);
            }
            Ok(Some(p))
        }
        other => Err(format!(
            "unknown reply type byte {:?} at {pos}",
            other as char
        )),
    }
}

fn length(kind: u8, head: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(head).map_err(|_| "a length that is not ASCII".to_string())?;
    if text.starts_with('?') {
        return Err(format!(
            "streamed {:?} replies are not supported",
            kind as char
        ));
    }
    text.parse()
        .map_err(|_| format!("bad length {text:?} after {:?}", kind as char))
}

/// The top-level elements of an aggregate reply (a map's keys and values in turn), each as
/// its own bytes. Panics if `reply` is not one whole aggregate.
pub fn elements(reply: &[u8]) -> Vec<&[u8]> {
    let mut pos = 0;
    if reply.first() == Some(&b'|') {
        // Skip the attribute; the elements are those of the reply it annotates.
        let attr_end = skip_header_and(reply, 0);
        pos = attr_end;
    }
    let kind = reply[pos];
    assert!(
        matches!(kind, b'*' | b'~' | b'>' | b'%'),
        "not an aggregate: {}",
        show(reply)
    );
    let cr = reply[pos..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a whole reply");
    let n = length(kind, &reply[pos + 1..pos + cr]).unwrap();
    let count = if kind == b'%' { 2 * n } else { n.max(0) };
    let mut p = pos + cr + 2;
    let mut out = Vec::new();
    for _ in 0..count {
        let q = value_end(reply, p).unwrap().expect("a whole reply");
        out.push(&reply[p..q]);
        p = q;
    }
    out
}

/// The end of the aggregate header at `pos` and all its elements (an attribute's pairs).
fn skip_header_and(reply: &[u8], pos: usize) -> usize {
    let cr = reply[pos..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a whole reply");
    let n = length(reply[pos], &reply[pos + 1..pos + cr]).unwrap();
    let mut p = pos + cr + 2;
    for _ in 0..2 * n {
        p = value_end(reply, p).unwrap().expect("a whole reply");
    }
    p
}

/// The payload of a bulk string reply (`$`), or None for anything else (null included).
pub fn bulk(reply: &[u8]) -> Option<&[u8]> {
    if reply.first() != Some(&b'$') {
        return None;
    }
    let cr = reply.windows(2).position(|w| w == b"\r\n")?;
    let n: usize = std::str::from_utf8(&reply[1..cr]).ok()?.parse().ok()?;
    reply.get(cr + 2..cr + 2 + n)
}

/// Renders reply bytes readably: CR and LF escaped, other control and non-ASCII bytes as
/// `\xNN`, so a reply fits on one line of an assertion message.
pub fn show(reply: &[u8]) -> String {
    let mut out = String::with_capacity(reply.len());
    for &b in reply {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

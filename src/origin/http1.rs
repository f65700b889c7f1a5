//! One HTTP/1.1 exchange with an upstream, in the task that asked for it: the request is
//! written, the answer's head read and parsed (`httparse`), and its body read by its framing
//! (RFC 9112 section 6.3) as the caller polls it. A connection (`Conn`) is owned by one
//! exchange at a time and goes back to its pool once its answer has been read to the end.
//!
//! Why by hand rather than hyper's client connection: hyper drives each connection from a
//! task of its own, reached through a channel for the request, a oneshot for the answer and
//! a channel per body, about 13k of a proxied miss's 39k instructions (callgrind, issue 18).
//! Here the request's task writes and reads the socket itself, and a body that came with its
//! head is handed on as one slice of the read buffer.
//!
//! What an origin may send is bounded: a head of at most `MAX_HEAD_BYTES` and
//! `MAX_HEADERS` headers, chunk-size lines of at most `MAX_LINE_BYTES`, trailers of at most
//! `MAX_TRAILER_BYTES` (read and dropped). An answer that breaks them, or its framing (two
//! different Content-Lengths, a bad chunk), fails, and its connection is closed.

use super::connector::Counted;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use std::{
    future::{poll_fn, Future},
    io,
    mem::MaybeUninit,
    pin::{pin, Pin},
    task::{ready, Context, Poll},
};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

/// Most headers an answer's head may have (hyper's limit too).
pub const MAX_HEADERS: usize = 100;
/// Largest answer head, status line and headers (hyper's default buffer is larger, 400 KiB,
/// but no origin needs a head that big).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line, extensions included.
pub const MAX_LINE_BYTES: usize = 4 * 1024;
/// Most trailer bytes after a chunked body's last chunk (they are not passed on).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// What a read asks for at least: most answers come whole in one.
const READ_AT_LEAST: usize = 16 * 1024;
/// A request body this small is written with its head, in one write.
const WRITE_WITH_HEAD: usize = 16 * 1024;

/// A connection to an upstream, with what has been read from it and not yet used.
pub struct Conn {
    io: Counted,
    buf: BytesMut,
    /// The request's deadline, kept by one timer per connection (see `Clock`).
    clock: Clock,
    /// Whether the connection has carried an answer before (a failure on it before any byte
    /// of the next answer is then a connection the upstream closed while it was idle).
    pub reused: bool,
}

/// Why an exchange gave no answer.
#[derive(Debug)]
pub enum ExchangeError {
    /// The deadline passed; the connection is closed.
    Timeout,
    /// A connection that had served before failed before any byte of an answer: closed by
    /// the upstream while idle. The request may go again on another if it can be.
    Stale(String),
    /// Anything else: the request may have been acted on.
    Failed(String),
}

/// How an answer's body is delimited, and how much of it is left.
#[derive(Debug)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, Content-Length 0), or all of it read.
    Done,
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this part of a chunk.
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
}

#[derive(Clone, Copy, Debug)]
pub enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers until an empty line, with the bytes read so far.
    Trailers(usize),
}

/// An answer's head, and how to read the rest.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body has ended.
    pub reusable: bool,
}

/// What a request carries: bytes, or a client's body streamed through once.
pub enum Payload<'a> {
    Bytes(&'a Bytes),
    Stream(&'a mut hyper::body::Incoming),
}

/// One request: origin-form target, headers as given, Host when the headers have none.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub host: &'a HeaderValue,
    pub body: Payload<'a>,
}

impl Conn {
    pub fn new(io: Counted) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            clock: Clock::new(),
            reused: false,
        }
    }

    /// Whether the connection is still open and quiet, as it must be between answers:
    /// anything readable now is the upstream closing it (or bytes nobody asked for). No
    /// syscall unless tokio last saw the socket readable.
    pub fn is_quiet(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.io.stream.poll_read_ready(&mut cx).is_pending() {
            return true;
        }
        // Readiness may be left over from a read that filled the buffer exactly: look.
        let mut probe = [0u8; 1];
        matches!(self.io.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `out` and reads the answer's head, both by `deadline`.
    pub async fn exchange(
        &mut self,
        out: &mut Outgoing<'_>,
        deadline: Instant,
    ) -> Result<Head, ExchangeError> {
        let head_request = out.method == Method::HEAD;
        let reused = self.reused;
        let Self { io, buf, clock, .. } = self;
        if matches!(out.body, Payload::Stream(_)) {
            return Self::stream(&mut io.stream, buf, clock, out, deadline).await;
        }
        let sent = clock
            .within(deadline, write_request(&mut io.stream, out))
            .await;
        match sent {
            None => return Err(ExchangeError::Timeout),
            Some(Err(e)) if reused => return Err(ExchangeError::Stale(e.to_string())),
            Some(Err(e)) => return Err(ExchangeError::Failed(e.to_string())),
            Some(Ok(())) => {}
        }
        match clock
            .within(deadline, read_head(&io.stream, buf, head_request))
            .await
        {
            None => Err(ExchangeError::Timeout),
            Some(Err(HeadError::Nothing(e))) if reused => Err(ExchangeError::Stale(e)),
            Some(Err(HeadError::Nothing(e) | HeadError::Bad(e))) => Err(ExchangeError::Failed(e)),
            Some(Ok(head)) => Ok(head),
        }
    }

    /// `exchange` for a client's body streamed through: the origin may answer before all of
    /// it has been sent (a 413, an early 401) and then stop reading or close, so its answer
    /// is read while the body goes, and one that comes first ends the sending. Such an
    /// answer, or one read after a failed write, leaves the connection unusable (the rest of
    /// the request never went). Never `Stale`: the stream cannot be sent again.
    async fn stream(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        clock: &mut Clock,
        out: &mut Outgoing<'_>,
        deadline: Instant,
    ) -> Result<Head, ExchangeError> {
        let early = {
            let (read, mut write) = stream.split();
            let read: &TcpStream = read.as_ref();
            let racing = async {
                tokio::select! {
                    sent = write_request(&mut write, out) => Err(sent),
                    head = read_head(read, buf, false) => Ok(head),
                }
            };
            clock.within(deadline, racing).await
        };
        let failed = match early {
            None => return Err(ExchangeError::Timeout),
            Some(Ok(Ok(head))) => {
                return Ok(Head {
                    reusable: false,
                    ..head
                })
            }
            Some(Ok(Err(HeadError::Nothing(e) | HeadError::Bad(e)))) => {
                return Err(ExchangeError::Failed(e))
            }
            Some(Err(Ok(()))) => None,
            Some(Err(Err(e))) => Some(e),
        };
        match clock.within(deadline, read_head(stream, buf, false)).await {
            None => Err(ExchangeError::Timeout),
            Some(Ok(head)) if failed.is_some() => Ok(Head {
                reusable: false,
                ..head
            }),
            Some(Ok(head)) => Ok(head),
            // The write's failure says more than the read's that followed it.
            Some(Err(HeadError::Nothing(e) | HeadError::Bad(e))) => {
                Err(ExchangeError::Failed(failed.map_or(e, |f| f.to_string())))
            }
        }
    }

    /// The next piece of a body framed by `framing`; None at its end. The connection is to
    /// be kept only if the body ended and nothing follows it.
    pub fn poll_body(
        &mut self,
        framing: &mut Framing,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match decode(&mut self.buf, framing) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if matches!(framing, Framing::Done) => return Poll::Ready(None),
                Ok(None) => {}
            }
            match ready!(poll_fill(&self.io.stream, &mut self.buf, cx)) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(0) if matches!(framing, Framing::Close) => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the origin closed the connection before the answer's end",
                    ))))
                }
                Ok(_) => {}
            }
        }
    }

    /// Whether nothing was read past the answer: then the connection may carry another.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Writes the request: its head, then its body (with the head when small).
async fn write_request(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &mut Outgoing<'_>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(256 + out.headers.len() * 32);
    head.extend_from_slice(out.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(out.target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !out.headers.contains_key(header::HOST) {
        line(&mut head, header::HOST.as_str(), out.host.as_bytes());
    }
    for (name, value) in out.headers {
        // The framing is this request's own, from its body.
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            line(&mut head, name.as_str(), value.as_bytes());
        }
    }
    match &mut out.body {
        Payload::Bytes(bytes) => {
            if !bytes.is_empty() || expects_body(out.method) {
                let mut n = itoa::Buffer::new();
                line(
                    &mut head,
                    "content-length",
                    n.format(bytes.len()).as_bytes(),
                );
            }
            head.extend_from_slice(b"\r\n");
            if bytes.len() <= WRITE_WITH_HEAD {
                head.extend_from_slice(bytes);
                stream.write_all(&head).await
            } else {
                stream.write_all(&head).await?;
                stream.write_all(bytes).await
            }
        }
        Payload::Stream(body) => {
            use hyper::body::Body;
            let length = body.size_hint().exact();
            match length {
                Some(n) => {
                    let mut b = itoa::Buffer::new();
                    line(&mut head, "content-length", b.format(n).as_bytes());
                }
                None => line(&mut head, "transfer-encoding", b"chunked"),
            }
            head.extend_from_slice(b"\r\n");
            stream.write_all(&head).await?;
            let mut body = Pin::new(&mut **body);
            while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                let frame = frame.map_err(io::Error::other)?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers are not passed on
                };
                if data.is_empty() {
                    continue;
                }
                if length.is_some() {
                    stream.write_all(&data).await?;
                } else {
                    let size = format!("{:x}\r\n", data.len());
                    stream.write_all(size.as_bytes()).await?;
                    stream.write_all(&data).await?;
                    stream.write_all(b"\r\n").await?;
                }
            }
            if length.is_none() {
                stream.write_all(b"0\r\n\r\n").await?;
            }
            Ok(())
        }
    }
}

fn line(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// Methods whose requests say their (empty) body's length, as hyper's client does.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

enum HeadError {
    /// Not a byte of an answer came.
    Nothing(String),
    /// Something came, not an answer's head.
    Bad(String),
}

/// Reads until a whole head is in `buf`, skipping 1xx answers, and takes it out of `buf`.
async fn read_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Head, HeadError> {
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf, head_request).map_err(HeadError::Bad)? {
                return Ok(head);
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(HeadError::Bad(format!(
                    "the origin's answer head is over {MAX_HEAD_BYTES} bytes (MAX_HEAD_BYTES)"
                )));
            }
        }
        let read = poll_fn(|cx| poll_fill(stream, buf, cx)).await;
        let why = match read {
            Ok(0) => "the origin closed the connection before answering".to_string(),
            Ok(_) => {
                got_any = true;
                continue;
            }
            Err(e) => e.to_string(),
        };
        return Err(if got_any {
            HeadError::Bad(why)
        } else {
            HeadError::Nothing(why)
        });
    }
}

/// Parses a head from the front of `buf` and takes it out: None while incomplete. A 1xx
/// (other than 101) is dropped and the next head looked for.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, String> {
    loop {
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(format!(
                    "the origin's answer has over {MAX_HEADERS} headers (MAX_HEADERS)"
                ))
            }
            Err(e) => return Err(format!("the origin's answer head is malformed: {e}")),
        };
        let code = parsed.code.unwrap_or_default();
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            continue;
        }
        // Where each header's name and value are, to slice them from the head's own copy
        // (parsing the copy again was 1.6k instructions a miss).
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        for (slot, h) in at.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (h.name.as_bytes(), h.value);
            *slot = (
                offset(name) as u32,
                name.len() as u32,
                offset(value) as u32,
                value.len() as u32,
            );
        }
        let (count, http10) = (parsed.headers.len(), parsed.version == Some(0));
        // The head's bytes, which the header values share: copied out of the read buffer,
        // so headers kept with a stored answer hold these bytes only, and the buffer, unshared
        // once the body has passed, is read into again rather than replaced.
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        buf.advance(len);
        return head_of(&bytes, code, http10, &at[..count], head_request).map(Some);
    }
}

/// Builds a head from `bytes`, a whole head as `parse_head` found it: its status `code`,
/// version, and where each header's name and value are in it.
fn head_of(
    bytes: &Bytes,
    code: u16,
    http10: bool,
    at: &[(u32, u32, u32, u32)],
    head_request: bool,
) -> Result<Head, String> {
    let status = StatusCode::from_u16(code)
        .map_err(|_| format!("the origin answered with status {code}, which is not one"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the origin switched protocols, which a proxied request cannot".into());
    }
    let version = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for what a proxy adds (Via, X-Cache, Age): a full map grows before it inserts
    // (1k instructions a proxied miss).
    let mut headers = HeaderMap::with_capacity(at.len() + 3);
    // Framing as RFC 9112 section 6.3 says.
    let (mut length, mut chunked, mut encoded) = (None::<u64>, false, false);
    let mut keep_alive = version == Version::HTTP_11;
    for &(name_at, name_len, value_at, value_len) in at {
        let name = &bytes[name_at as usize..][..name_len as usize];
        let range = value_at as usize..(value_at + value_len) as usize;
        let name = HeaderName::from_bytes(name).map_err(|_| {
            format!(
                "the origin sent a header named {:?}",
                String::from_utf8_lossy(name)
            )
        })?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(range.clone()))
            .map_err(|_| format!("the origin's {name} header holds a byte no header may"))?;
        let h_value = &bytes[range];
        if name == header::CONTENT_LENGTH {
            for n in h_value.split(|&b| b == b',') {
                let n = n.trim_ascii();
                let n = (!n.is_empty() && n.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                    .flatten();
                match (n, length) {
                    (Some(n), None) => length = Some(n),
                    (Some(n), Some(l)) if n == l => {}
                    _ => return Err("the origin's Content-Length is not one number".into()),
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            encoded = true;
            // Chunked only when it is the last coding applied.
            chunked = h_value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in h_value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        }
        headers.append(name, value);
    }
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if encoded {
        // A Content-Length beside a Transfer-Encoding is ignored, and the connection goes.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let reusable = keep_alive && !matches!(framing, Framing::Close);
    Ok(Head {
        status,
        version,
        headers,
        framing,
        reusable,
    })
}

/// Takes the next piece of body out of `buf`: None when `buf` holds none (more must be read,
/// or the body has ended: `framing` is then `Done`).
pub fn decode(buf: &mut BytesMut, framing: &mut Framing) -> io::Result<Option<Bytes>> {
    loop {
        match framing {
            Framing::Done => return Ok(None),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Some(buf.split_to(n).freeze()));
            }
            Framing::Close => {
                return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
            }
            Framing::Chunked(chunk) => match *chunk {
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    // A line is bounded whether or not it came whole: CRLF included, and a
                    // partial one needs at least one more byte.
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_LINE_BYTES => {
                        return Err(long_line())
                    }
                    Ok(httparse::Status::Partial) if buf.len() >= MAX_LINE_BYTES => {
                        return Err(long_line())
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *chunk = if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(bad("the origin's answer has a malformed chunk size")),
                },
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    *chunk = if left == n as u64 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("a chunk of the origin's answer does not end in CRLF"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers(read) => {
                    // Bounded as a chunk-size line is, over all the trailers.
                    let end = buf.windows(2).position(|w| w == b"\r\n");
                    let total = read + end.map_or(buf.len() + 1, |e| e + 2);
                    if total > MAX_TRAILER_BYTES {
                        return Err(bad(format!(
                            "the origin's trailers are over {MAX_TRAILER_BYTES} bytes (MAX_TRAILER_BYTES)"
                        )));
                    }
                    let Some(end) = end else {
                        return Ok(None);
                    };
                    buf.advance(end + 2);
                    *chunk = Chunk::Trailers(read + end + 2);
                    if end == 0 {
                        *framing = Framing::Done;
                    }
                }
            },
        }
    }
}

fn long_line() -> io::Error {
    bad(format!(
        "a chunk-size line of the origin's answer is over {MAX_LINE_BYTES} bytes (MAX_LINE_BYTES)"
    ))
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Reads what the socket holds onto the end of `buf`; Ok(0) at its end.
fn poll_fill(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_AT_LEAST / 4 {
        buf.reserve(READ_AT_LEAST);
    }
    loop {
        match crate::net::read::try_read(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_read_ready(cx))?;
            }
            read => return Poll::Ready(read),
        }
    }
}

/// A connection's deadline timer: one `Sleep`, made with the connection and moved only when
/// it must be: set for a request with nothing set or something later set, and otherwise left
/// alone, since deadlines only grow. A timer that fires for an earlier request's deadline
/// under a later one is moved to it. (One timer registered and cancelled per request was
/// 1.5k instructions of a proxied miss.)
struct Clock {
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Clock {
    fn new() -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// `work`'s output, or None if `deadline` passes first.
    async fn within<T>(&mut self, deadline: Instant, work: impl Future<Output = T>) -> Option<T> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            loop {
                if self.armed.is_none_or(|at| at > deadline) {
                    self.timer.as_mut().reset(deadline);
                    self.armed = Some(deadline);
                }
                ready!(self.timer.as_mut().poll(cx));
                self.armed = None;
                if Instant::now() >= deadline {
                    return Poll::Ready(None);
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, String> {
        parse_head(&mut BytesMut::from(text), false)
    }

    /// The body `framing` reads from `wire`, fed `step` bytes at a time; and what was left.
    fn body(mut framing: Framing, wire: &[u8], step: usize) -> io::Result<(Vec<u8>, usize)> {
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = decode(&mut buf, &mut framing)? {
                out.extend_from_slice(&data);
            }
            if matches!(framing, Framing::Done) {
                break;
            }
        }
        assert!(matches!(framing, Framing::Done), "ended: {framing:?}");
        Ok((out, buf.len()))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(5)) && h.reusable);
        // Transfer-Encoding wins over Content-Length, and the connection is not kept.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(Chunk::Size)) && !h.reusable);
        // Chunked only when applied last; otherwise the body runs to the close.
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.reusable);
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.reusable);
        for bodiless in ["204 No Content", "304 Not Modified"] {
            let h = head(&format!("HTTP/1.1 {bodiless}\r\nContent-Length: 9\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert!(
                matches!(h.framing, Framing::Done) && h.reusable,
                "{bodiless}"
            );
        }
        let h = parse_head(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
            true,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Done), "an answer to HEAD");
        // Equal repeated lengths are one; different ones are no answer at all.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(h.unwrap().unwrap().framing, Framing::Length(3)));
        for bad in ["3, 4", "-1", "+3", "", "0x10", "99999999999999999999999"] {
            let e = head(&format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n"));
            assert!(e.is_err(), "{bad:?}");
        }
        // Keep-alive: HTTP/1.1 unless `close`; HTTP/1.0 only when asked.
        let reusable = |t: &str| head(t).unwrap().unwrap().reusable;
        assert!(!reusable(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn heads_are_bounded_and_informational_ones_skipped() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none(),
            "partial"
        );
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buf[..], b"ok", "the body stays to be read");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let e = head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"))
            .err()
            .unwrap();
        assert!(e.contains("MAX_HEADERS"), "{e}");
        assert!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n").is_err());
        assert!(head("SMTP ready\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_are_read_whatever_the_reads_cut() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (got, left) = body(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(got, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            // What follows the body is left (the connection then is not reused).
            assert!(left <= 4, "step {step}");
        }
        let (got, _) = body(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!(got, b"hello");
        for bad in [
            &b"5\r\nhelloX\r\n0\r\n\r\n"[..],
            b"zz\r\n",
            b"11111111111111111\r\n",
        ] {
            let mut framing = Framing::Chunked(Chunk::Size);
            let mut buf = BytesMut::from(bad);
            let e = std::iter::from_fn(|| decode(&mut buf, &mut framing).transpose())
                .find_map(Result::err);
            assert!(e.is_some(), "{bad:?}");
        }
        // Too long whether it came whole or not (so cut anywhere, it reads the same).
        for long in [
            format!("5;{}", "e".repeat(MAX_LINE_BYTES)),
            format!("5;{}\r\nhello\r\n", "e".repeat(MAX_LINE_BYTES)),
        ] {
            let mut framing = Framing::Chunked(Chunk::Size);
            let e = decode(&mut BytesMut::from(long.as_str()), &mut framing);
            assert!(e.unwrap_err().to_string().contains("MAX_LINE_BYTES"));
        }
        let whole = format!("0\r\nX: {}\r\n\r\n", "t".repeat(MAX_TRAILER_BYTES));
        let e = body(Framing::Chunked(Chunk::Size), whole.as_bytes(), whole.len());
        assert!(e.unwrap_err().to_string().contains("MAX_TRAILER_BYTES"));
        let trailers = format!("0\r\nX: {}", "t".repeat(MAX_TRAILER_BYTES));
        let e = body(Framing::Chunked(Chunk::Size), trailers.as_bytes(), 4096);
        assert!(e.unwrap_err().to_string().contains("MAX_TRAILER_BYTES"));
    }
}

//! Our own HTTP/1.1 server for requests without a body: the GETs and HEADs of KV keys and
//! proxy routes that are nearly all of a read-mostly gateway's traffic (and any other request
//! that carries no body). Heads are parsed with `httparse`, answered by `handle` as hyper's
//! are, and the answers written here, several in one write for a client that pipelines.
//!
//! A plain GET or HEAD (no Cache-Control, Pragma or conditional) of a proxy route's fresh
//! stored URL is answered from its head as read, before any `Request` is built: the target
//! selects the stored answer, whose header lines were made at its first hit (`proxied_hit`
//! admits and records it as `handle` would), and they and its body are written as they are
//! (`write_kept`), no `Response` built.
//!
//! The first request that is not plain (a body, `Transfer-Encoding`, `Expect`, `Upgrade`, a
//! target that is not a path, a head `httparse` or `http` refuse or that is over
//! `http.max_header_bytes` / `http.max_headers`, the h2 preface) is handed to hyper with every
//! byte read so far, and hyper serves the rest of the connection: its answers to malformed
//! heads (400, 414, 431) are the door's, here as before.
//!
//! Why by hand: hyper's server was half of an L1 hit's instructions (5.5k of 10.5k under
//! callgrind: its dispatcher, buffered IO and encoder), and proxy routes are asked to beat
//! nginx by 2x on a cache hit. What this keeps of hyper's HTTP/1 behaviour: keep-alive by
//! version and `Connection`; an HTTP/1.0 client answered in HTTP/1.0 (`Connection:
//! keep-alive` when it asked for it); `Content-Length` from the body's exact size, else
//! chunked (close-delimited for HTTP/1.0); no body for HEAD, 1xx, 204 and 304 (a HEAD keeps
//! the length its GET would have); a `Date` header, formatted once a second; a body that
//! fails or ends short of its length ends the connection.

use super::{
    handle,
    proto::PREFACE,
    proxied_hit,
    proxy::{ClientAddr, Kept},
    ReplyBody, State,
};
use crate::net::read::try_read;
use bytes::{Buf, Bytes, BytesMut};
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::Empty;
use hyper::body::Body;
use std::{
    cell::Cell,
    future::poll_fn,
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// The read buffer's size when a connection has bytes to read, as hyper's: many heads of
/// curl's or a browser's. Between requests a connection holds none (`serve`).
const READ_BUF: usize = 8 << 10;
/// The least spare room a read is given.
const READ_AT_LEAST: usize = 4 << 10;
/// Answers a pipelining client has not taken yet are written once they reach this much
/// (and the connection then waits for the client to read them).
const WRITE_AT: usize = 64 << 10;
/// A body piece up to this long is copied behind its head, for one write; a longer one is
/// written from where it is.
const COPY_AT_MOST: usize = 16 << 10;
/// A write buffer that grew past this (a pipelining burst) is let go once it is written,
/// so an idle connection holds no more than a few answers' worth.
const KEEP_WRITE_BUF: usize = 16 << 10;
/// httparse's header slots: hyper's default `max_headers` (a head with more goes to hyper,
/// which serves `http.max_headers` when it is set higher).
const SLOTS: usize = crate::config::DEFAULT_HTTP_MAX_HEADERS;

/// The bounds this path serves within (anything past them goes to hyper).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `http.max_header_bytes`.
    pub max_head: usize,
    /// `http.max_headers`.
    pub max_headers: usize,
    /// h2c is served: the preface goes to hyper's h2.
    pub h2: bool,
}

/// What the connection around this one keeps: requests in flight (for its idle limit) and
/// whether it has been asked to close.
pub trait Watch {
    type Busy;
    /// Marks a request in flight until the guard is dropped.
    fn busy(&self) -> Self::Busy;
    /// Close after the answer in flight (or now, between requests).
    fn closing(&self) -> bool;
}

/// How the connection goes on.
pub enum Next {
    /// It is over (the client left, or one of us closed it).
    Closed,
    /// hyper serves the rest of it; these bytes were read and not yet served.
    Hyper(TcpStream, Bytes),
}

/// Serves `stream` until it closes or a request needs hyper.
pub async fn serve<W: Watch>(
    mut stream: TcpStream,
    state: &State,
    peer: Option<Arc<ClientAddr>>,
    watch: &W,
    limits: Limits,
) -> io::Result<Next> {
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        if first && limits.h2 && is_preface_start(&buf) {
            if buf.len() >= PREFACE.len() {
                return Ok(Next::Hyper(stream, buf.freeze()));
            }
        } else {
            let answered = match take(&mut buf, &limits, |t| state.proxy.stored_answer(t)) {
                Taken::Request(asked) => {
                    Some(answer(&mut stream, &mut out, state, &peer, watch, asked).await?)
                }
                Taken::Stored(hit) => {
                    let busy = watch.busy();
                    let refused = proxied_hit(state, hit.kept.status()).await;
                    drop(busy);
                    let (head_req, keep_alive, http10) = (hit.head_req, hit.keep_alive, hit.http10);
                    let (stream, out) = (&mut stream, &mut out);
                    Some(match refused {
                        None => {
                            let close = closing(state, watch, keep_alive);
                            write_kept(stream, out, &hit.kept, head_req, http10, close).await?
                        }
                        Some(resp) => {
                            write(
                                stream, out, state, watch, resp, head_req, keep_alive, http10,
                            )
                            .await?
                        }
                    })
                }
                Taken::Other => {
                    flush(&mut stream, &mut out, &[]).await?;
                    return Ok(Next::Hyper(stream, buf.freeze()));
                }
                Taken::Partial if buf.len() >= limits.max_head => {
                    // hyper answers 431 to a head that does not end within the bound.
                    flush(&mut stream, &mut out, &[]).await?;
                    return Ok(Next::Hyper(stream, buf.freeze()));
                }
                Taken::Partial => None,
            };
            if let Some(keep) = answered {
                first = false;
                if !keep {
                    flush(&mut stream, &mut out, &[]).await?;
                    let _ = stream.shutdown().await;
                    return Ok(Next::Closed);
                }
                if out.len() >= WRITE_AT {
                    flush(&mut stream, &mut out, &[]).await?;
                }
                continue;
            }
        }
        // Everything buffered is answered: the answers go in one write before waiting.
        if !out.is_empty() {
            flush(&mut stream, &mut out, &[]).await?;
        }
        if out.capacity() > KEEP_WRITE_BUF {
            out = Vec::new();
        }
        // Between requests the read buffer is this thread's spare (`Spare`): a keep-alive
        // client waiting for its next request holds none.
        if buf.is_empty() && buf.capacity() > 0 {
            Spare::put(std::mem::take(&mut buf));
        }
        loop {
            // Asked to close with no head begun: now. A head that has begun is waited for
            // (the connection's close grace bounds that), as hyper does.
            let ready = poll_fn(|cx| {
                if buf.is_empty() && watch.closing() {
                    return Poll::Ready(Ok(false));
                }
                stream.poll_read_ready(cx).map_ok(|()| true)
            })
            .await?;
            if !ready {
                return Ok(Next::Closed);
            }
            if buf.capacity() == 0 {
                buf = Spare::take();
            }
            if buf.capacity() - buf.len() < READ_AT_LEAST {
                buf.reserve(READ_AT_LEAST);
            }
            match try_read(&stream, &mut buf) {
                Ok(0) => return Ok(Next::Closed),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One read buffer per thread, between the connections that read on it: a connection puts
/// its empty buffer here when it waits for a request and takes this one when it has bytes
/// to read, so connections waiting hold no buffer (nginx frees its own between requests;
/// 14.6 KB -> 7.6 KB a keep-alive connection, `loadtest/idle_memory.sh`) and a thread
/// serving one request after another allocates none (freeing and allocating 8 KiB per
/// request was 0.4k of a route hit's 4.6k instructions).
struct Spare;

impl Spare {
    thread_local! {
        static BUF: Cell<Option<BytesMut>> = const { Cell::new(None) };
    }

    /// Keeps `buf` as the thread's spare (unless it grew past what a head needs), in place
    /// of the one there.
    fn put(buf: BytesMut) {
        if buf.capacity() <= 2 * READ_BUF {
            Self::BUF.set(Some(buf));
        }
    }

    /// The thread's spare, or a new buffer.
    fn take() -> BytesMut {
        Self::BUF
            .take()
            .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF))
    }
}

fn is_preface_start(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    n > 0 && buf[..n] == PREFACE[..n]
}

/// A request taken off the buffer, with what its answer depends on.
struct Asked {
    req: Request<Empty<Bytes>>,
    /// The client keeps the connection after this answer.
    keep_alive: bool,
    http10: bool,
}

#[allow(clippy::large_enum_variant)] // returned once per request, never stored
enum Taken {
    Request(Asked),
    /// A proxy route's fresh stored answer, found from the head as read (no `Request` built).
    Stored(Stored),
    /// More bytes are needed.
    Partial,
    /// Not one for this path: hyper serves it (and the rest of the connection).
    Other,
}

/// Why `take_for_fuzz` took nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Partial,
    Other,
}

/// `take`, for the `http_request` fuzz target: what a taken request is (method, target,
/// headers), or why none was.
#[doc(hidden)]
pub fn take_for_fuzz(buf: &mut BytesMut, limits: &Limits) -> Result<String, Stop> {
    match take(buf, limits, |_| None) {
        Taken::Request(a) => Ok(format!(
            "{} {} {:?} {:?} {}",
            a.req.method(),
            a.req.uri(),
            a.req.version(),
            a.req.headers(),
            a.keep_alive
        )),
        Taken::Partial => Err(Stop::Partial),
        Taken::Other => Err(Stop::Other),
        Taken::Stored(_) => unreachable!("nothing is stored here"),
    }
}

/// A stored answer taken for a plain GET or HEAD, with what its writing depends on.
struct Stored {
    kept: Kept,
    head_req: bool,
    keep_alive: bool,
    http10: bool,
}

/// Where a head's header name and value sit in it.
type Span = (u32, u32, u32, u32);

/// Takes the next request off `buf` when it is whole and plain; `buf` is left as it was
/// otherwise. A plain GET or HEAD that says nothing of caching (no Cache-Control, Pragma or
/// conditional) is first offered to `stored` by its target: a proxy route's fresh stored
/// answer is then taken without building a `Request` (1.5k of a hit's 8.2k instructions).
fn take(buf: &mut BytesMut, limits: &Limits, stored: impl FnOnce(&str) -> Option<Kept>) -> Taken {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; SLOTS];
    let mut spans = [const { MaybeUninit::<Span>::uninit() }; SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Taken::Partial,
        Err(_) => return Taken::Other,
    };
    if len > limits.max_head || parsed.headers.len() > limits.max_headers {
        return Taken::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Taken::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Taken::Other;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Taken::Other;
    }
    let http10 = minor == 0;
    let (mut close, mut keep) = (false, false);
    let mut says_caching = false;
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return Taken::Other;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Taken::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else {
            says_caching |= [
                &b"cache-control"[..],
                b"pragma",
                b"if-none-match",
                b"if-modified-since",
            ]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n));
        }
        span.write((
            at(name),
            name.len() as u32,
            at(h.value),
            h.value.len() as u32,
        ));
    }
    let count = parsed.headers.len();
    let keep_alive = !close && (!http10 || keep);
    let head_req = method == Method::HEAD;
    if (head_req || method == Method::GET) && !says_caching {
        if let Some(kept) = stored(path) {
            buf.advance(len);
            return Taken::Stored(Stored {
                kept,
                head_req,
                keep_alive,
                http10,
            });
        }
    }
    let path = (at(path.as_bytes()) as usize, path.len());
    // From here the head is taken: what fails now puts it back.
    let head = buf.split_to(len).freeze();
    // SAFETY: the loop above wrote the first `count` spans, one per header.
    let spans = unsafe { std::slice::from_raw_parts(spans.as_ptr().cast::<Span>(), count) };
    match build(&head, method, path, http10, spans) {
        Some(req) => Taken::Request(Asked {
            req,
            keep_alive,
            http10,
        }),
        None => {
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Taken::Other
        }
    }
}

/// The request of a head `take` found plain; None where `http` refuses a part of it.
fn build(
    head: &Bytes,
    method: Method,
    (path_at, path_len): (usize, usize),
    http10: bool,
    spans: &[Span],
) -> Option<Request<Empty<Bytes>>> {
    let uri = Uri::from_maybe_shared(head.slice(path_at..path_at + path_len)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &(name_at, name_len, value_at, value_len) in spans {
        let name = HeaderName::from_bytes(&head[name_at as usize..][..name_len as usize]).ok()?;
        let value = head.slice(value_at as usize..(value_at + value_len) as usize);
        headers.append(name, HeaderValue::from_maybe_shared(value).ok()?);
    }
    let mut req = Request::new(Empty::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Some(req)
}

/// Answers one request into `out` (writing when a body piece is long). Whether the
/// connection goes on.
async fn answer<W: Watch>(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    state: &State,
    peer: &Option<Arc<ClientAddr>>,
    watch: &W,
    asked: Asked,
) -> io::Result<bool> {
    let Asked {
        req,
        keep_alive,
        http10,
    } = asked;
    let head_req = req.method() == Method::HEAD;
    let busy = watch.busy();
    let resp = handle(state, req, peer.clone()).await;
    drop(busy);
    write(
        stream, out, state, watch, resp, head_req, keep_alive, http10,
    )
    .await
}

/// Writes `resp` into `out` (and the socket, for a long body piece). Whether the connection
/// goes on.
#[allow(clippy::too_many_arguments)] // one call per kind of request, all of them here
async fn write<W: Watch>(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    state: &State,
    watch: &W,
    resp: Response<ReplyBody>,
    head_req: bool,
    keep_alive: bool,
    http10: bool,
) -> io::Result<bool> {
    let close = closing(state, watch, keep_alive);
    let (parts, mut body) = resp.into_parts();
    let hint = body.size_hint().exact();
    let head = (parts.status, Some(&parts.headers));
    let (send, keep) = write_head(out, head, body.kept(), hint, head_req, http10, close);
    if matches!(send, Send::Nothing) {
        return Ok(keep);
    }
    let chunked = matches!(send, Send::Chunked);
    let mut sent = 0u64;
    let mut body = Pin::new(&mut body);
    while !body.is_end_stream() {
        // A body that is not ready has what it gave so far written first: it streams.
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if out.is_empty() => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let frame = match next {
            None => {
                flush(stream, out, &[]).await?;
                continue;
            }
            Some(None) => break,
            Some(Some(Ok(frame))) => frame,
            Some(Some(Err(e))) => {
                // The client sees the body end short, with the connection.
                flush(stream, out, &[]).await?;
                return Err(io::Error::other(e));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not sent
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Send::Length(n) = send {
            if sent > n {
                return Err(io::Error::other("a body longer than its Content-Length"));
            }
        }
        if chunked {
            chunk_size(out, data.len());
        }
        if data.len() <= COPY_AT_MOST {
            out.extend_from_slice(&data);
        } else {
            flush(stream, out, &data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_AT {
            flush(stream, out, &[]).await?;
        }
    }
    match send {
        Send::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Send::Length(n) if sent != n => {
            // The client would wait for bytes that will not come.
            flush(stream, out, &[]).await?;
            return Err(io::Error::other("a body shorter than its Content-Length"));
        }
        _ => {}
    }
    Ok(keep)
}

/// Writes a stored answer `proxied_hit` admitted from its kept lines and body, with no
/// `Response` between (a tenth of a hit's instructions went to building, moving and
/// dropping one). Whether the connection goes on.
async fn write_kept(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    kept: &Kept,
    head_req: bool,
    http10: bool,
    close: bool,
) -> io::Result<bool> {
    let body = kept.body();
    let head = (kept.status(), None);
    let len = Some(body.len() as u64);
    let (send, keep) = write_head(out, head, Some(kept), len, head_req, http10, close);
    if matches!(send, Send::Length(_)) {
        if body.len() <= COPY_AT_MOST {
            out.extend_from_slice(body);
        } else {
            flush(stream, out, body).await?;
        }
    }
    Ok(keep)
}

/// Whether the connection closes after this answer: the client's wish, ours (the
/// connection's idle limit or shutdown), or the listener's.
fn closing<W: Watch>(state: &State, watch: &W, keep_alive: bool) -> bool {
    !keep_alive || watch.closing() || state.listener_closed.is_triggered()
}

/// How an answer's body goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Send {
    Nothing,
    Length(u64),
    Chunked,
    /// To the end of the connection (an HTTP/1.0 client, no length known).
    Close,
}

/// Writes the status line and headers into `out` (the map's, then a stored answer's);
/// how the body goes, and whether the connection goes on after it.
fn write_head(
    out: &mut Vec<u8>,
    (status, headers): (StatusCode, Option<&HeaderMap>),
    kept: Option<&Kept>,
    hint: Option<u64>,
    head_req: bool,
    http10: bool,
    close: bool,
) -> (Send, bool) {
    if status == StatusCode::OK && !http10 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut keep = !close;
    let (mut length, mut said_close, mut dated) = (None::<u64>, false, false);
    for (name, value) in headers.into_iter().flatten() {
        if name == header::CONTENT_LENGTH {
            // Written below, once, from the length the body is sent with.
            if length.is_none() {
                length = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
            }
            continue;
        }
        if name == header::TRANSFER_ENCODING || name == header::TRAILER {
            continue; // the framing is this connection's
        }
        if name == header::CONNECTION {
            if value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                keep = false;
                said_close = true;
            }
        } else if name == header::DATE {
            dated = true;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(kept) = kept {
        dated |= kept.write(out);
    }
    // A HEAD's length is what its headers say (an origin's HEAD answer has no body to
    // measure); otherwise the body's own size, as it is framed with.
    let length = if head_req {
        length.or(hint)
    } else {
        hint.or(length)
    };
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let send = if bodiless {
        Send::Nothing
    } else if head_req {
        // The length a GET would have been sent with, when the body says it.
        if let Some(n) = length.filter(|&n| n > 0) {
            line(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
        }
        Send::Nothing
    } else if let Some(n) = length {
        line(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
        Send::Length(n)
    } else if http10 {
        keep = false;
        Send::Close
    } else {
        line(out, b"transfer-encoding", b"chunked");
        Send::Chunked
    };
    if !keep && !http10 && !said_close {
        line(out, b"connection", b"close");
    } else if keep && http10 {
        line(out, b"connection", b"keep-alive");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        now(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (send, keep)
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header's value for now, formatted once a second per thread.
fn now(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (at, text) = DATE.get();
    if at == secs {
        out.extend_from_slice(&text);
        return;
    }
    let mut text = [0u8; 29];
    let formatted = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
    text.copy_from_slice(&formatted.as_bytes()[..29]);
    DATE.set((secs, text));
    out.extend_from_slice(&text);
}

/// Writes `out` and then `more`, in one write when they fit.
async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, more: &[u8]) -> io::Result<()> {
    if more.is_empty() {
        stream.write_all(out).await?;
        out.clear();
        return Ok(());
    }
    let (mut a, mut b) = (0, 0);
    while a < out.len() || b < more.len() {
        let n = stream
            .write_vectored(&[IoSlice::new(&out[a..]), IoSlice::new(&more[b..])])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_out = n.min(out.len() - a);
        a += from_out;
        b += n - from_out;
    }
    out.clear();
    Ok(())
}

/// A chunk's size line.
fn chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 16 << 10,
        max_headers: 100,
        h2: true,
    };

    fn take_text(text: &str) -> (Taken, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (take(&mut buf, &LIMITS, |_| None), buf)
    }

    #[test]
    fn plain_heads_are_taken_and_the_rest_left_for_hyper() {
        let (taken, rest) =
            take_text("GET /v1/kv/a?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\nGET /next");
        let Taken::Request(asked) = taken else {
            panic!("a plain GET is ours")
        };
        assert_eq!(asked.req.uri().path(), "/v1/kv/a");
        assert_eq!(asked.req.uri().query(), Some("x=1"));
        assert_eq!(asked.req.headers()["x-a"], "1");
        assert!(asked.keep_alive && !asked.http10);
        assert_eq!(&rest[..], b"GET /next", "the next request stays buffered");

        assert!(matches!(
            take_text("GET /a HTTP/1.1\r\nHost:").0,
            Taken::Partial
        ));
        let (taken, _) = take_text("GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(taken, Taken::Request(_)), "an empty body is none");
        for other in [
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET http://h/a HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\n\r\n",
            "GET /a HTTP/2.0\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            let (taken, rest) = take_text(other);
            assert!(matches!(taken, Taken::Other), "{other:?} is hyper's");
            assert_eq!(&rest[..], other.as_bytes(), "left as it was");
        }
    }

    #[test]
    fn a_thread_keeps_one_spare_read_buffer() {
        let first = Spare::take();
        assert!(first.capacity() >= READ_BUF && first.is_empty());
        let at = first.as_ptr();
        Spare::put(first);
        let again = Spare::take();
        assert_eq!(again.as_ptr(), at, "the one put back");
        assert_ne!(Spare::take().as_ptr(), at, "taken: a new one");
        Spare::put(BytesMut::with_capacity(4 * READ_BUF));
        assert!(
            Spare::take().capacity() < 4 * READ_BUF,
            "one grown past a head's need is let go"
        );
    }

    #[tokio::test]
    async fn a_kept_answer_is_written_from_its_lines_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let kept = Kept::sample(b"body");
        let written = |out: Vec<u8>| String::from_utf8(out).unwrap();

        let mut out = Vec::new();
        let keep = write_kept(&mut stream, &mut out, &kept, false, false, false).await;
        let text = written(out);
        assert!(keep.unwrap());
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nage: 0\r\nx-cache: HIT\r\n"),
            "{text}"
        );
        for line in [
            "cache-control: max-age=60",
            "via: 1.1 tiergate",
            "content-length: 4",
        ] {
            assert!(text.contains(&format!("{line}\r\n")), "{line}: {text}");
        }
        assert!(
            text.contains("date: ") && text.ends_with("\r\n\r\nbody"),
            "{text}"
        );

        let mut out = Vec::new();
        let keep = write_kept(&mut stream, &mut out, &kept, true, true, true).await;
        let text = written(out);
        assert!(!keep.unwrap(), "asked to close");
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(
            text.contains("content-length: 4\r\n") && text.ends_with("\r\n\r\n"),
            "a HEAD has its GET's length and no body: {text}"
        );

        static BIG: [u8; COPY_AT_MOST + 1] = [b'x'; COPY_AT_MOST + 1];
        let mut out = Vec::new();
        let big = Kept::sample(&BIG);
        let keep = write_kept(&mut stream, &mut out, &big, false, false, false).await;
        assert!(
            keep.unwrap() && out.is_empty(),
            "a long body is written from where it is"
        );
        drop(stream);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut got)
            .await
            .unwrap();
        let got = written(got);
        assert!(
            got.contains(&format!("content-length: {}\r\n", BIG.len())),
            "{got}"
        );
        assert!(got.ends_with(&format!("\r\n\r\n{}", "x".repeat(BIG.len()))));
    }

    #[test]
    fn a_plain_get_or_head_is_offered_to_the_store_by_its_target() {
        let offered = |text: &str| {
            let mut buf = BytesMut::from(text.as_bytes());
            let mut asked = None;
            let taken = take(&mut buf, &LIMITS, |target| {
                asked = Some(target.to_owned());
                Some(Kept::sample(b"x"))
            });
            let answered = matches!(taken, Taken::Stored(_));
            (asked, answered, buf.len())
        };
        let (asked, answered, left) = offered("GET /api/a?b=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /n");
        assert_eq!(asked.as_deref(), Some("/api/a?b=1"));
        assert!(answered);
        assert_eq!(left, 6, "the head is taken, the next request left");
        assert!(offered("HEAD /a HTTP/1.0\r\n\r\n").1);
        for not_plain in [
            "GET /a HTTP/1.1\r\nCache-Control: no-cache\r\n\r\n",
            "GET /a HTTP/1.1\r\npragma: no-cache\r\n\r\n",
            "GET /a HTTP/1.1\r\nIf-None-Match: \"v\"\r\n\r\n",
            "GET /a HTTP/1.1\r\nIf-Modified-Since: x\r\n\r\n",
            "DELETE /a HTTP/1.1\r\n\r\n",
        ] {
            let (asked, answered, _) = offered(not_plain);
            assert!(
                asked.is_none() && !answered,
                "{not_plain:?} goes the whole way"
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let keeps = |text: &str| match take_text(text).0 {
            Taken::Request(a) => a.keep_alive,
            _ => panic!("{text:?} is ours"),
        };
        assert!(keeps("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(keeps("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn heads_past_the_bounds_are_hyper_s_to_refuse() {
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let (taken, _) = take_text(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert!(matches!(taken, Taken::Other), "more headers than the slots");
        let few: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\n{few}\r\n").as_bytes());
        let limits = Limits {
            max_headers: 10,
            ..LIMITS
        };
        assert!(
            matches!(take(&mut buf, &limits, |_| None), Taken::Other),
            "http.max_headers"
        );
        let long = "x".repeat(9000);
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {long}\r\n\r\n").as_bytes());
        let limits = Limits {
            max_head: 8 << 10,
            ..LIMITS
        };
        assert!(
            matches!(take(&mut buf, &limits, |_| None), Taken::Other),
            "http.max_header_bytes"
        );
        // A target `http` refuses though httparse took it (`<` is not a URI byte) is put back
        // whole, with what follows it.
        let text = b"GET /a<b> HTTP/1.1\r\nY: 1\r\n\r\nGET /next".to_vec();
        let mut buf = BytesMut::from(&text[..]);
        assert!(matches!(take(&mut buf, &LIMITS, |_| None), Taken::Other));
        assert_eq!(&buf[..], &text[..]);
    }

    fn head_of(
        resp: Response<()>,
        hint: Option<u64>,
        head_req: bool,
        http10: bool,
    ) -> (String, Send, bool) {
        let (parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let (send, keep) = write_head(
            &mut out,
            (parts.status, Some(&parts.headers)),
            None,
            hint,
            head_req,
            http10,
            false,
        );
        (String::from_utf8(out).unwrap(), send, keep)
    }

    fn with(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn answers_are_framed_as_hyper_frames_them() {
        let (text, send, keep) = head_of(with(200, &[("x-a", "1")]), Some(5), false, false);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\n") && text.len() == 17 + 8 + 19 + 37 + 2);
        assert_eq!((send, keep), (Send::Length(5), true));
        // No length known: chunked for HTTP/1.1, to the close for HTTP/1.0.
        let (text, send, _) = head_of(with(200, &[]), None, false, false);
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(send, Send::Chunked);
        let (text, send, keep) = head_of(with(200, &[]), None, false, true);
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n") && !text.contains("transfer-encoding"));
        assert_eq!((send, keep), (Send::Close, false));
        // A HEAD keeps its headers' length (an origin's HEAD answer has no body to measure).
        let (text, send, _) = head_of(with(200, &[("content-length", "3")]), Some(0), true, false);
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert_eq!(send, Send::Nothing);
        let (text, _, _) = head_of(with(200, &[]), Some(5), true, false);
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        for status in [204, 304] {
            let (text, send, _) = head_of(with(status, &[]), Some(0), false, false);
            assert!(!text.contains("content-length"), "{text}");
            assert_eq!(send, Send::Nothing);
        }
        // The handler's framing headers are replaced by the connection's own.
        let (text, send, _) = head_of(
            with(
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "9")],
            ),
            Some(2),
            false,
            false,
        );
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("content-length: 2\r\n") && !text.contains("transfer-encoding"));
        assert_eq!(send, Send::Length(2));
        // An answer that says close closes; a 1.0 client that keeps alive is told so.
        let (text, _, keep) = head_of(with(200, &[("connection", "close")]), Some(0), false, false);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        assert!(!keep);
        let (parts, ()) = with(404, &[]).into_parts();
        let mut out = Vec::new();
        let (_, keep) = write_head(
            &mut out,
            (parts.status, Some(&parts.headers)),
            None,
            Some(0),
            false,
            false,
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n") && !keep, "{text}");
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for (n, text) in [(1, "1"), (15, "f"), (16, "10"), (0x1a2b, "1a2b"), (0, "0")] {
            let mut out = Vec::new();
            chunk_size(&mut out, n);
            assert_eq!(out, format!("{text}\r\n").as_bytes());
        }
    }
}

//! A scriptable HTTP origin for tests: a real hyper 1 server on a free 127.0.0.1 port, run in
//! a tokio task and stopped on drop. It exists because issue 18 point 5 asks that test origins
//! be real HTTP servers the tests start, not mocks of the client, so the origin tier is tested
//! over real sockets, real keep-alive and real failures.
//!
//! It owns: the answer for each path (status, headers, body, a delay, or a failure: close the
//! connection without answering, or hang until dropped), a default 404 for unscripted paths,
//! 304 on a matching `If-None-Match` (or, without one, an `If-Modified-Since` equal to the
//! answer's `Last-Modified`), bodies sent whole or in chunks of unknown length, a switch
//! that takes the whole origin down, and a record
//! of what arrived (count, method and headers per path, counted on arrival before any delay).
//! State sits behind a std `Mutex` that is never held across an await.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet};

/// What the origin does when a request for a path arrives.
#[derive(Clone, Debug)]
pub struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Option<Duration>,
    fail: Option<Fail>,
    /// Sent in this many chunks, with no Content-Length (chunked encoding).
    chunks: Option<usize>,
    /// The connection fails after the first chunk: the body never ends.
    cut_short: bool,
    /// After the first chunk, nothing more, and no end: a body that trickles to a halt.
    stall: bool,
}

/// The ways an answer can fail instead of answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// Close the connection without writing a response.
    Close,
    /// Never answer; the request is only freed when the client gives up or the origin drops.
    Hang,
}

impl Answer {
    /// An answer with this status, no headers and an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("valid status"),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            delay: None,
            fail: None,
            chunks: None,
            cut_short: false,
            stall: false,
        }
    }

    /// 200 with this body.
    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::status(200).body(body)
    }

    /// The default for unscripted paths.
    pub fn not_found() -> Self {
        Self::status(404)
    }

    /// Closes the connection without answering (after the delay, if one is set).
    pub fn close() -> Self {
        Self {
            fail: Some(Fail::Close),
            ..Self::status(502)
        }
    }

    /// Never answers: for client timeouts.
    pub fn hang() -> Self {
        Self {
            fail: Some(Fail::Hang),
            ..Self::status(504)
        }
    }

    /// Adds a header (repeatable: `Vary` twice gives two values).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body in `n` chunks with no Content-Length: a length known only at the end.
    pub fn chunked(mut self, n: usize) -> Self {
        self.chunks = Some(n.max(1));
        self
    }

    /// Sends the first of the body's chunks, then nothing, never ending: a stalled body.
    pub fn stall(mut self) -> Self {
        self.chunks = Some(self.chunks.unwrap_or(2));
        self.stall = true;
        self
    }

    /// Sends the first of the body's chunks, then fails the connection: a body cut short.
    pub fn cut_short(mut self) -> Self {
        self.chunks = Some(self.chunks.unwrap_or(2));
        self.cut_short = true;
        self
    }

    /// Waits this long (after the request is counted) before answering or failing.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub headers: HeaderMap,
    /// The request body, once it has been read (after any delay, before answering).
    pub body: Bytes,
}

#[derive(Default)]
struct Script {
    answers: HashMap<String, Answer>,
    seen: HashMap<String, Vec<Seen>>,
    total: usize,
    connections: usize,
}

struct Shared {
    script: Mutex<Script>,
    down: AtomicBool,
}

/// A running test origin; dropping it stops the listener and every open connection.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            down: AtomicBool::new(false),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Self { addr, shared, task }
    }

    /// Stops serving (the port refuses connections, open ones are cut) and starts again on
    /// the same port with the same script and counts: a restarted origin.
    pub async fn restart(&mut self) {
        self.stop().await;
        // The old listener is closed once its task has dropped it: bind until that is so.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        self.task = tokio::spawn(serve(listener, self.shared.clone()));
    }

    /// Stops serving: the port refuses connections and open ones are cut, until `restart`.
    /// Returns once the server task is gone (an abort alone lands at its next poll).
    pub async fn stop(&mut self) {
        self.task.abort();
        // Awaited once only: a second await of a finished handle panics.
        if !self.task.is_finished() {
            let _ = (&mut self.task).await;
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Scripts the answer for `path` (the request path, without the query).
    pub fn answer(&self, path: &str, answer: Answer) {
        self.lock().answers.insert(path.to_owned(), answer);
    }

    /// `true`: every request and new connection is closed without an answer (and not
    /// counted). `false`: serves again.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Requests that arrived for `path`.
    pub fn requests(&self, path: &str) -> usize {
        self.lock().seen.get(path).map_or(0, Vec::len)
    }

    /// Connections accepted and served (not those refused while down).
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Requests that arrived for any path.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// The headers of the last request for `path`.
    pub fn last_headers(&self, path: &str) -> Option<HeaderMap> {
        self.lock()
            .seen
            .get(path)
            .and_then(|s| s.last())
            .map(|s| s.headers.clone())
    }

    /// The method of each request for `path`, in arrival order.
    pub fn methods(&self, path: &str) -> Vec<Method> {
        self.seen(path).into_iter().map(|s| s.method).collect()
    }

    /// Every request for `path`, in arrival order.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.lock().seen.get(path).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().unwrap()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // Dropping the accept task drops the listener and the JoinSet holding every
        // connection, so the port stops answering and hanging requests are cut.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if shared.down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                shared.script.lock().unwrap().connections += 1;
                let shared = shared.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(req, shared.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// The error a service returns to make hyper close the connection without answering.
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("origin closed the connection as scripted")
    }
}

impl std::error::Error for Closed {}

type OutBody = BoxBody<Bytes, Closed>;

fn whole(b: Bytes) -> OutBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<OutBody>, Closed> {
    if shared.down.load(Ordering::SeqCst) {
        return Err(Closed);
    }
    let path = req.uri().path().to_owned();
    let (answer, nth) = {
        let mut script = shared.script.lock().unwrap();
        script.total += 1;
        let seen = script.seen.entry(path.clone()).or_default();
        seen.push(Seen {
            method: req.method().clone(),
            headers: req.headers().clone(),
            body: Bytes::new(),
        });
        let nth = seen.len() - 1;
        let answer = script
            .answers
            .get(&path)
            .cloned()
            .unwrap_or_else(Answer::not_found);
        (answer, nth)
    };
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    match answer.fail {
        Some(Fail::Close) => return Err(Closed),
        Some(Fail::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(seen) = shared.script.lock().unwrap().seen.get_mut(&path) {
        seen[nth].body = body;
    }
    let req = Request::from_parts(parts, ());
    if let (Some(etag), Some(inm)) = (
        answer.headers.get(http::header::ETAG),
        req.headers().get(http::header::IF_NONE_MATCH),
    ) {
        if if_none_match_matches(inm, etag) {
            return Ok(not_modified(&answer));
        }
    } else if let (Some(lm), Some(ims)) = (
        answer.headers.get(http::header::LAST_MODIFIED),
        req.headers().get(http::header::IF_MODIFIED_SINCE),
    ) {
        if lm == ims {
            return Ok(not_modified(&answer));
        }
    }
    let body = match answer.chunks {
        None => whole(answer.body),
        Some(n) => {
            let size = answer.body.len().div_ceil(n).max(1);
            let mut parts: Vec<Result<hyper::body::Frame<Bytes>, Closed>> = answer
                .body
                .chunks(size)
                .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            if answer.cut_short {
                parts.truncate(1);
                parts.push(Err(Closed));
            }
            if answer.stall {
                parts.truncate(1);
                let stalled = futures_util::StreamExt::chain(
                    futures_util::stream::iter(parts),
                    futures_util::stream::pending(),
                );
                return Ok(respond(
                    answer.status,
                    answer.headers,
                    StreamBody::new(stalled).boxed(),
                ));
            }
            // Before failing, a pause: what was sent so far is flushed to the client first.
            let paced =
                futures_util::StreamExt::then(futures_util::stream::iter(parts), |p| async {
                    if p.is_err() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    p
                });
            StreamBody::new(paced).boxed()
        }
    };
    Ok(respond(answer.status, answer.headers, body))
}

fn respond(
    status: StatusCode,
    headers: HeaderMap,
    body: BoxBody<Bytes, Closed>,
) -> Response<BoxBody<Bytes, Closed>> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// 304 with the answer's headers (but its length and type).
fn not_modified(answer: &Answer) -> Response<OutBody> {
    let mut resp = Response::new(whole(Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    for (name, value) in &answer.headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_TYPE {
            resp.headers_mut().append(name, value.clone());
        }
    }
    resp
}

/// `*`, or any listed tag equal to `etag` under weak comparison (a `W/` prefix is ignored).
fn if_none_match_matches(inm: &HeaderValue, etag: &HeaderValue) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let Ok(inm) = inm.to_str() else { return false };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let etag = strip(etag);
    inm.split(',').any(|t| t.trim() == "*" || strip(t) == etag)
}

/// For raw origins a test scripts byte by byte (what a hyper server would not do, such as
/// closing with a request unanswered): reads one request head from `s`, byte by byte so
/// nothing after it is taken; false if the connection ended first.
pub async fn read_request_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => return false,
        }
    }
    true
}

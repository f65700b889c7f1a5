//! A Redis connection of our own, for single-key writes to one Redis and for forwarded
//! commands (to one Redis, or to each master of a cluster: `cluster`): a write is its
//! commands, already encoded, and how many replies they get back. One task per connection
//! writes whatever is queued in one syscall and hands each reply to its writer, in order.
//! The keys those writes announce go after them in one PUBLISH (`Pipe::start`).
//!
//! Why not redis-rs here: under callgrind a pipelined SET (with its PUBLISH) cost 21k
//! instructions in tiergate, 13k of them in redis-rs: its combinator reply parser alone was
//! 6.5k per round trip, its pipeline bookkeeping and per-call timer most of the rest. That
//! is the whole gap to twemproxy, which forwards the same write. This connection parses the
//! five RESP2 reply types by hand, keeps one FIFO of waiting writers, and leaves timeouts to
//! `L2::guard`'s deadline. Everything else (reads, batches, clusters, the health probe) stays
//! on redis-rs.
//!
//! Failure: an I/O error or a closed connection fails every write waiting on it
//! (`L2Error::Unavailable`), and the next write connects again; the breaker above counts them.
//! Bounded: at most `queue` writes wait in the channel and `queue` on the connection, so a
//! Redis that stops answering backs writers up into `L2::guard`'s deadline, not into memory.

use super::{
    echo::{Batch, Echoes},
    l2::L2Error,
    reply::Framer,
};
use bytes::{Buf, Bytes, BytesMut};
use redis::{ConnectionAddr, Value};
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::Instant,
};

/// What a connection keeps for encoding writes: room for a pipeline of ordinary SETs.
const OUT_BYTES: usize = 16 << 10;

/// One reply: a value, or Redis' error (its code and the rest of its text).
#[derive(Debug, PartialEq)]
pub enum Reply {
    Value(Value),
    Error {
        code: String,
        detail: String,
    },
    /// A reply to a raw write: the bytes Redis sent, unparsed (see `reply`).
    Raw(Bytes),
    /// A reply to a raw write that passed its bound: dropped as it arrived; how long it was.
    TooLarge(usize),
}

/// How a write's replies come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Decoded,
    /// As bytes, each at most `limit` long.
    Raw {
        limit: usize,
    },
}

type Replies = Result<Vec<Reply>, L2Error>;

/// Replies, and the write's share of the tagged batch it went in (`echo`).
pub type Answered = Result<(Vec<Reply>, Batch), L2Error>;

struct Write {
    commands: Vec<u8>,
    /// The bytes at the end of `commands` that are keys to announce (`pack_key`), not
    /// commands: the connection sends the keys of every write it sends together in one
    /// PUBLISH after them (see `Pipe::start`).
    keys: usize,
    replies: usize,
    mode: Mode,
    done: oneshot::Sender<Answered>,
}

/// Where and how to connect: a `redis://` URL's host, port, login and database.
#[derive(Clone, Debug)]
pub struct Target {
    addr: (String, u16),
    username: Option<String>,
    password: Option<String>,
    db: i64,
    connect_timeout: Duration,
    /// How long a write may wait for its reply once sent.
    response_timeout: Duration,
    /// Speak RESP3 (HELLO 3 on connect): for forwarding a RESP3 client's commands, whose
    /// replies must come back as maps, sets, doubles and pushes.
    resp3: bool,
}

impl Target {
    /// None for what this connection does not speak (TLS, Unix sockets): redis-rs keeps those.
    pub fn of(
        client: &redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Self> {
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        Some(Self {
            addr: (host.clone(), *port),
            username: redis.username().map(str::to_owned),
            password: redis.password().map(str::to_owned),
            db: redis.db(),
            connect_timeout,
            response_timeout,
            resp3: false,
        })
    }

    /// The same Redis, spoken to in RESP3.
    pub fn resp3(mut self) -> Self {
        self.resp3 = true;
        self
    }

    /// How long connecting and logging in may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Where it connects: host and port.
    pub fn addr(&self) -> (&str, u16) {
        (&self.addr.0, self.addr.1)
    }

    /// Another node of the same cluster: this login and these timeouts, at `host:port`, in
    /// database 0 (the only one a cluster has).
    pub fn at(&self, host: &str, port: u16) -> Self {
        Self {
            addr: (host.to_owned(), port),
            db: 0,
            ..self.clone()
        }
    }
}

/// Where writes' keys are announced as many to a message: `channel` with this suffix. A
/// message there is its keys one after another, each a RESP bulk string (`pack_key`); the
/// channel itself keeps one key per message, for programs that announce writes of their own.
pub fn keys_channel(channel: &str) -> String {
    format!("{channel}:keys")
}

/// Appends `key` to the keys a write announces: as a RESP bulk string, the form a message on
/// `keys_channel` holds them in. An empty key announces every key (FLUSHALL and the like).
pub fn pack_key(out: &mut Vec<u8>, key: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(key.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// The keys of a message on `keys_channel`, in order; Err if it is not a run of bulk strings.
#[cfg(test)]
pub fn unpack_keys(mut message: &[u8], mut each: impl FnMut(&[u8])) -> Result<(), L2Error> {
    while let Some(key) = next_key(&mut message)? {
        each(key);
    }
    Ok(())
}

/// The next key of a message on `keys_channel`, taken off its front; None at its end, Err if
/// it does not start with a bulk string.
pub fn next_key<'m>(message: &mut &'m [u8]) -> Result<Option<&'m [u8]>, L2Error> {
    if message.is_empty() {
        return Ok(None);
    }
    let (key, rest) = super::reply::split_bulk(message).ok_or_else(|| bad("announced key"))?;
    *message = rest;
    Ok(Some(key))
}

/// The sending side of one connection's queue.
pub struct Pipe {
    tx: mpsc::Sender<Write>,
    /// Longest wait for room in a full queue.
    queue_wait: Duration,
}

impl Pipe {
    /// Starts the connection's task (it connects on the first write). `queue` bounds the
    /// writes waiting to be sent and those waiting for replies. `announce`: the invalidation
    /// channel, where the keys writes announce go (`keys_channel`), one PUBLISH for all the
    /// writes sent together, after them: Redis applies them first, so an instance hears a
    /// key only once it is written. One message for many writes is one command for Redis
    /// and one message for each instance to read, where a PUBLISH per key cost a command and
    /// a message per write.
    ///
    /// With `echoes`, the PUBLISH starts with the batch's tag (`Echoes::open`), and each
    /// write's replies come back with its share of the batch, so that this instance may skip
    /// its own echo once every writer has evicted its keys.
    pub fn start(
        target: Target,
        queue: usize,
        announce: Option<&str>,
        echoes: Option<Arc<Echoes>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        let queue_wait = target.connect_timeout + target.response_timeout;
        let publish = announce.map(|channel| {
            let mut out = Vec::new();
            let channel = keys_channel(channel);
            encode(&mut out, &[b"PUBLISH", channel.as_bytes(), b""]);
            // Up to the message's length, written per PUBLISH.
            out.truncate(out.len() - b"0\r\n\r\n".len());
            out
        });
        let publish = publish.map(|prefix| Publish { prefix, echoes });
        tokio::spawn(drive(target, rx, queue, publish));
        Self { tx, queue_wait }
    }

    /// Sends `commands` (RESP-encoded, `replies` of them) and waits for their replies. Bounded
    /// in time without a timer per call: the connection times out the replies it waits for
    /// (`response_timeout`, one timer per connection), connecting has `connect_timeout`, and
    /// only a full queue is waited on with a timer of its own.
    pub async fn call(&self, commands: Vec<u8>, replies: usize) -> Replies {
        let (replies, _none) = self.send(commands, 0, replies, Mode::Decoded).await?;
        Ok(replies)
    }

    /// `call`, with the last `keys` bytes of `commands` keys to announce (`pack_key`) rather
    /// than commands: they are announced after the commands, in the same round trip. With
    /// the replies, the write's `Batch`: for `Echoes::evicted` once its keys are out of L1.
    pub async fn call_announcing(
        &self,
        commands: Vec<u8>,
        keys: usize,
        replies: usize,
    ) -> Answered {
        self.send(commands, keys, replies, Mode::Decoded).await
    }

    /// `call`, with each reply handed back as the bytes Redis sent (`Reply::Raw`). `limit`
    /// bounds the replies' bytes together, since they are all held until the last arrives:
    /// the reply that passes it, and every one after it, is dropped as it arrives and comes
    /// back as `Reply::TooLarge`.
    /// The last `keys` bytes of `commands` are keys to announce, as in `call_announcing`.
    pub async fn call_raw(
        &self,
        commands: Vec<u8>,
        keys: usize,
        replies: usize,
        limit: usize,
    ) -> Answered {
        self.send(commands, keys, replies, Mode::Raw { limit })
            .await
    }

    async fn send(&self, commands: Vec<u8>, keys: usize, replies: usize, mode: Mode) -> Answered {
        let (done, answer) = oneshot::channel();
        let write = Write {
            commands,
            keys,
            replies,
            mode,
            done,
        };
        let gone = || L2Error::Unavailable("the write connection stopped".into());
        match self.tx.try_send(write) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone()),
            Err(mpsc::error::TrySendError::Full(write)) => {
                tokio::time::timeout(self.queue_wait, self.tx.send(write))
                    .await
                    .map_err(|_| L2Error::Timeout)?
                    .map_err(|_| gone())?;
            }
        }
        answer.await.map_err(|_| gone())?
    }
}

/// The connection of `pipes` this thread writes on: each worker thread keeps to one, so the
/// writes its clients make together leave in one syscall and reach Redis in one read, where
/// spread round-robin over four connections they took up to four of each, on both sides
/// (Redis did twice the syscalls per forwarded LPUSH than behind twemproxy's one server
/// connection, and tiergate's CPU per request was 1.1-1.4x; docs/PERFORMANCE.md). Threads
/// share connections when there are more threads than connections.
pub fn pick(pipes: &[Pipe]) -> &Pipe {
    static THREADS: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = THREADS.fetch_add(1, Ordering::Relaxed);
    }
    &pipes[LANE.with(|lane| *lane) % pipes.len()]
}

/// A write sent and waiting for its replies.
struct Waiting {
    /// When it was sent (the syscall's time, shared by the writes it carried).
    sent: Instant,
    mode: Mode,
    /// Bytes of raw replies held so far.
    held: usize,
    want: usize,
    got: Vec<Reply>,
    /// None for the PUBLISH of the keys the writes sent with it announce: its reply (how
    /// many instances heard) is nobody's.
    done: Option<oneshot::Sender<Answered>>,
    /// The tagged batch it went in, if it announced keys in one (`echo`).
    batch: Option<u64>,
    /// For the PUBLISH: its message, kept for the bus once Redis has applied it if this
    /// instance is then alone on the bus (`Echoes::keep`): Redis will not send it back.
    kept: Option<Bytes>,
}

/// How a connection announces: the PUBLISH on the keys channel, up to its message's length,
/// and the tags of this instance's batches, when it tags them.
struct Publish {
    prefix: Vec<u8>,
    echoes: Option<Arc<Echoes>>,
}

async fn drive(
    target: Target,
    mut rx: mpsc::Receiver<Write>,
    queue: usize,
    publish: Option<Publish>,
) {
    let mut batch = Vec::with_capacity(queue);
    loop {
        // Connect on demand, like redis-rs' manager: a Redis that is down costs nothing
        // until someone writes, and each write after a failure tries again.
        if batch.is_empty() && rx.recv_many(&mut batch, queue).await == 0 {
            return;
        }
        let err = match connect(&target).await {
            Ok(stream) => {
                let timeout = target.response_timeout;
                serve(
                    stream,
                    &mut rx,
                    &mut batch,
                    queue,
                    timeout,
                    publish.as_ref(),
                )
                .await
            }
            Err(e) => Some(e),
        };
        let Some(err) = err else { return };
        for w in batch.drain(..) {
            let _ = w.done.send(Err(err.clone()));
        }
    }
}

pub(super) async fn connect(t: &Target) -> Result<TcpStream, L2Error> {
    let down = |e: std::io::Error| L2Error::Unavailable(e.to_string());
    let attempt = async {
        let mut s = TcpStream::connect((t.addr.0.as_str(), t.addr.1))
            .await
            .map_err(down)?;
        s.set_nodelay(true).map_err(down)?;
        handshake(&mut s, t, &[]).await?;
        Ok(s)
    };
    tokio::time::timeout(t.connect_timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(L2Error::Unavailable("connect timed out".into())))
}

/// Logs in, picks the protocol and the database, as `t` says, after `first` (commands whose
/// replies must each be a success too: RESET, for a connection given back).
pub(super) async fn handshake(
    s: &mut TcpStream,
    t: &Target,
    first: &[&[u8]],
) -> Result<(), L2Error> {
    let down = |e: std::io::Error| L2Error::Unavailable(e.to_string());
    {
        let mut hello = Vec::new();
        let mut expected = 0;
        for command in first {
            encode(&mut hello, &[command]);
        }
        if t.resp3 {
            let mut args = vec![&b"HELLO"[..], b"3"];
            if let Some(pass) = &t.password {
                args.extend([
                    &b"AUTH"[..],
                    t.username.as_deref().unwrap_or("default").as_bytes(),
                ]);
                args.push(pass.as_bytes());
            }
            encode(&mut hello, &args);
            expected += 1;
        } else if let Some(pass) = &t.password {
            let mut args = vec![&b"AUTH"[..]];
            args.extend(t.username.as_deref().map(str::as_bytes));
            args.push(pass.as_bytes());
            encode(&mut hello, &args);
            expected += 1;
        }
        if t.db != 0 {
            encode(&mut hello, &[b"SELECT", t.db.to_string().as_bytes()]);
            expected += 1;
        }
        if !hello.is_empty() {
            s.write_all(&hello).await.map_err(down)?;
            let mut buf = BytesMut::with_capacity(256);
            // Each of `first` answers with a status: anything else (a push still on its way
            // to a connection given back) means the connection is not what it seems.
            for _ in first {
                let reply = next_raw(s, &mut buf).await?;
                if reply.first() != Some(&b'+') {
                    return Err(L2Error::Unavailable(format!(
                        "a handshake answered {}",
                        text(reply.trim_ascii_end())
                    )));
                }
            }
            for _ in 0..expected {
                // Framed, not parsed: HELLO 3 answers with a RESP3 map.
                let reply = next_raw(s, &mut buf).await?;
                if reply.first().is_some_and(|&b| b == b'-' || b == b'!') {
                    return Err(L2Error::Unavailable(text(reply.trim_ascii_end())));
                }
            }
        }
        Ok(())
    }
}

/// The next reply on `s`, reading into `buf` until one is complete (handshakes only: the
/// connection's own loop reads and parses in `serve`).
async fn next_reply(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Reply, L2Error> {
    loop {
        if let Some(reply) = parse(buf)? {
            return Ok(reply);
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err(L2Error::Unavailable("Redis closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(L2Error::Unavailable(e.to_string())),
        }
    }
}

/// The next reply on `s` as bytes (handshakes only).
async fn next_raw(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Bytes, L2Error> {
    let mut framer = Framer::default();
    loop {
        match framer.scan(buf) {
            Ok(Some(len)) => return Ok(buf.split_to(len).freeze()),
            Ok(None) => {}
            Err(e) => return Err(L2Error::Unavailable(e.to_string())),
        }
        match s.read_buf(buf).await {
            Ok(0) => return Err(L2Error::Unavailable("Redis closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(L2Error::Unavailable(e.to_string())),
        }
    }
}

/// Runs one connection until it fails (Some: the error every waiting write gets) or every
/// sender is gone (None). A write unanswered for `timeout` fails the connection: Redis
/// answers in order, so everything behind it waits too, and a reply that comes later would
/// answer the wrong write.
async fn serve(
    stream: TcpStream,
    rx: &mut mpsc::Receiver<Write>,
    batch: &mut Vec<Write>,
    queue: usize,
    timeout: Duration,
    publish: Option<&Publish>,
) -> Option<L2Error> {
    let (mut rd, mut wr) = stream.into_split();
    // Room for the announcements' PUBLISHes too.
    let mut waiting: VecDeque<Waiting> = VecDeque::with_capacity(queue * 2);
    let mut out = Vec::with_capacity(OUT_BYTES);
    // The keys the writes being sent announce, for their one PUBLISH, after its tag.
    let mut keys = Vec::new();
    let mut tag = Vec::new();
    let mut inbuf = BytesMut::with_capacity(16 << 10);
    let mut framing = Framing::default();
    // Every sender is gone: no more writes, but the ones sent still get their replies.
    let mut closed = false;
    // One timer for the connection, on the oldest write's deadline, moved only when it fires
    // (like an idle timer): a timer per write cost a timer-wheel insert and removal each.
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    let mut armed = false;
    let echoes = publish.and_then(|p| p.echoes.as_deref());
    let fail = |waiting: &mut VecDeque<Waiting>, e: &L2Error| {
        for w in waiting.drain(..) {
            if let Some(done) = w.done {
                let _ = done.send(Err(e.clone()));
            }
            // Redis may have applied it: its keys are settled as if heard.
            if let (Some(kept), Some(echoes)) = (w.kept, echoes.filter(|e| e.is_alone())) {
                echoes.keep(kept);
            }
        }
    };
    loop {
        if closed && waiting.is_empty() {
            return None;
        }
        if !batch.is_empty() {
            // Let the tasks already woken run first: on a busy runtime they are about to
            // queue writes too, and this folds them into the same syscall. Without it this
            // task, cheaper than redis-rs, woke for every few writes: 1.4 syscalls per
            // pipelined SET instead of 0.8.
            tokio::task::yield_now().await;
            while waiting.len() + batch.len() < queue {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let sent = Instant::now();
            if !armed {
                timer.as_mut().reset(sent + timeout);
                armed = true;
            }
            // The batch's tag, when its writes announce keys: each writer that announces
            // reports its eviction against it (`Echoes::evicted`).
            let seq = match publish {
                Some(publish) if batch.iter().any(|w| w.keys > 0) => {
                    let writers = batch.iter().filter(|w| w.keys > 0).count();
                    tag.clear();
                    let seq = publish
                        .echoes
                        .as_ref()
                        .and_then(|echoes| echoes.open(writers, &mut tag));
                    if seq.is_none() {
                        Echoes::untagged(&mut tag);
                    }
                    seq
                }
                // Nothing announced, so no PUBLISH.
                _ => None,
            };
            for w in batch.drain(..) {
                let (commands, announced) = w.commands.split_at(w.commands.len() - w.keys);
                out.extend_from_slice(commands);
                keys.extend_from_slice(announced);
                waiting.push_back(Waiting {
                    sent,
                    mode: w.mode,
                    held: 0,
                    want: w.replies,
                    got: Vec::with_capacity(w.replies),
                    done: Some(w.done),
                    batch: seq.filter(|_| w.keys > 0),
                    kept: None,
                });
            }
            if let (false, Some(publish)) = (keys.is_empty(), publish) {
                out.extend_from_slice(&publish.prefix);
                out.extend_from_slice(
                    itoa::Buffer::new()
                        .format(tag.len() + keys.len())
                        .as_bytes(),
                );
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&tag);
                out.extend_from_slice(&keys);
                out.extend_from_slice(b"\r\n");
                // Kept if, when Redis answers, this instance is alone on the bus: told then,
                // not now, so that a batch in flight as it becomes alone is not lost.
                let kept = echoes.map(|_| Bytes::from([&tag[..], &keys[..]].concat()));
                waiting.push_back(Waiting {
                    sent,
                    mode: Mode::Decoded,
                    held: 0,
                    want: 1,
                    got: Vec::new(),
                    done: None,
                    batch: None,
                    kept,
                });
            }
            keys.clear();
            let deadline = waiting.front().map_or(sent, |w| w.sent) + timeout;
            if let Err(e) = send(&mut wr, &out, deadline).await {
                fail(&mut waiting, &e);
                return Some(e);
            }
            out.clear();
            // A large value's write leaves the buffer that large; give it back.
            out.shrink_to(OUT_BYTES);
        }
        tokio::select! {
            n = rx.recv_many(batch, queue.saturating_sub(waiting.len())),
                if !closed && waiting.len() < queue =>
            {
                closed = n == 0;
            }
            read = rd.read_buf(&mut inbuf) => {
                let e = match read {
                    Ok(0) => L2Error::Unavailable("Redis closed the connection".into()),
                    Err(e) => L2Error::Unavailable(e.to_string()),
                    Ok(_) => match deliver(&mut inbuf, &mut waiting, &mut framing, echoes) {
                        Ok(()) => continue,
                        Err(e) => e,
                    },
                };
                fail(&mut waiting, &e);
                return Some(e);
            }
            () = timer.as_mut(), if armed => {
                match waiting.front() {
                    None => armed = false,
                    Some(w) if Instant::now() < w.sent + timeout => {
                        timer.as_mut().reset(w.sent + timeout);
                    }
                    Some(_) => {
                        fail(&mut waiting, &L2Error::Timeout);
                        return Some(L2Error::Timeout);
                    }
                }
            }
        }
    }
}

/// Writes all of `out`. A Redis that stops reading fills the socket and holds the rest: that
/// wait is bounded by `deadline` (the oldest waiting write's), with a timer only when the
/// socket could not take everything at once.
async fn send(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    out: &[u8],
    deadline: Instant,
) -> Result<(), L2Error> {
    let down = |e: std::io::Error| L2Error::Unavailable(e.to_string());
    let done = match wr.try_write(out) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(down(e)),
    };
    if done == out.len() {
        return Ok(());
    }
    match tokio::time::timeout_at(deadline, wr.write_all(&out[done..])).await {
        Ok(written) => written.map_err(down),
        Err(_) => Err(L2Error::Timeout),
    }
}

/// Where a connection is in the raw reply under way.
#[derive(Default, PartialEq)]
pub(super) struct Framing {
    framer: Framer,
    /// Bytes of it already dropped (it passed its bound).
    dropped: usize,
}

/// Hands every complete reply in `buf` to the write it answers.
fn deliver(
    buf: &mut BytesMut,
    waiting: &mut VecDeque<Waiting>,
    framing: &mut Framing,
    echoes: Option<&Echoes>,
) -> Result<(), L2Error> {
    loop {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(w) = waiting.front_mut() else {
            return Err(L2Error::Unavailable(
                "Redis sent a reply nobody asked for".into(),
            ));
        };
        let reply = match w.mode {
            Mode::Decoded => match parse(buf)? {
                Some(reply) => reply,
                None => return Ok(()),
            },
            Mode::Raw { limit } => match raw(buf, framing, limit.saturating_sub(w.held))? {
                Some(reply) => {
                    w.held = match &reply {
                        Reply::Raw(r) => w.held + r.len(),
                        // What follows a reply over the bound is dropped too: the client is
                        // closed after the error it gets for it.
                        _ => limit,
                    };
                    reply
                }
                None => return Ok(()),
            },
        };
        w.got.push(reply);
        if w.got.len() == w.want {
            let w = waiting.pop_front().expect("front exists");
            // The writer may have given up (its deadline passed): the reply is dropped.
            if let Some(done) = w.done {
                let _ = done.send(Ok((w.got, Echoes::batch(w.batch))));
            }
            if let (Some(kept), Some(echoes)) = (w.kept, echoes.filter(|e| e.is_alone())) {
                echoes.keep(kept);
            }
        }
    }
}

/// Takes one raw reply off the front of `buf` (None: not whole yet). Past `limit` what has
/// arrived is dropped, and the rest as it comes, so a reply of any size holds at most about
/// `limit` here; the framer still finds its end, and the connection stays in step.
pub(super) fn raw(
    buf: &mut BytesMut,
    framing: &mut Framing,
    limit: usize,
) -> Result<Option<Reply>, L2Error> {
    let scanned = framing
        .framer
        .scan(buf)
        .map_err(|e| L2Error::Unavailable(e.to_string()))?;
    match scanned {
        Some(len) if framing.dropped == 0 && len <= limit => {
            Ok(Some(Reply::Raw(buf.split_to(len).freeze())))
        }
        Some(len) => {
            buf.advance(len);
            let total = std::mem::take(&mut framing.dropped) + len;
            Ok(Some(Reply::TooLarge(total)))
        }
        None => {
            let held = framing.framer.scanned();
            if framing.dropped > 0 || held > limit {
                buf.advance(held);
                framing.dropped += held;
                framing.framer.dropped_scanned();
            }
            Ok(None)
        }
    }
}

/// What a subscription hears.
pub enum Pushed {
    /// A message on the channel: the key it names.
    Key(Bytes),
    /// A message on the keys channel: its body, a tag perhaps and keys (`echo::split`).
    Keys(Bytes),
    /// The connection failed or closed: messages may have been missed.
    Lost,
}

/// A SUBSCRIBE of our own, for the invalidation bus on one Redis. Every write is announced
/// there, this instance's own included, so this connection parses a message per write:
/// through redis-rs that was 7k instructions of a 18k-instruction SET.
pub struct Subscription {
    writer: tokio::net::tcp::OwnedWriteHalf,
    pongs: std::sync::Arc<(std::sync::atomic::AtomicU64, tokio::sync::Notify)>,
    reader: tokio::task::JoinHandle<()>,
    target: Target,
    channel: String,
    /// A connection of its own that asks Redis who else listens (`join`, `others`): a
    /// subscribed RESP2 connection can run no other command.
    probe: Option<(TcpStream, BytesMut)>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Subscription {
    /// Connects, subscribes to `channel`, and once Redis has confirmed it, hands every key
    /// announced (and a loss) to `heard`, from a task of its own. Its `keys_channel` is
    /// listened to once `join` finds another instance on the bus.
    pub async fn start(
        t: &Target,
        channel: &str,
        mut heard: impl FnMut(Pushed) + Send + 'static,
    ) -> Result<Self, L2Error> {
        let down = |e: std::io::Error| L2Error::Unavailable(e.to_string());
        let mut stream = connect(t).await?;
        let many = keys_channel(channel);
        let mut cmd = Vec::new();
        encode(&mut cmd, &[b"SUBSCRIBE", channel.as_bytes()]);
        stream.write_all(&cmd).await.map_err(down)?;
        let mut buf = BytesMut::with_capacity(16 << 10);
        match next_reply(&mut stream, &mut buf).await? {
            Reply::Value(Value::Array(a)) if is(&a, b"subscribe") => {}
            other => {
                return Err(L2Error::Unavailable(format!(
                    "SUBSCRIBE answered {other:?}"
                )))
            }
        }
        let (mut rd, writer) = stream.into_split();
        let pongs = std::sync::Arc::new((
            std::sync::atomic::AtomicU64::new(0),
            tokio::sync::Notify::new(),
        ));
        let seen = pongs.clone();
        let message = message_prefix(channel);
        let batch = message_prefix(&many);
        let reader = tokio::spawn(async move {
            loop {
                loop {
                    match message_key(&mut buf, &message) {
                        Ok(Some(key)) => {
                            heard(Pushed::Key(key));
                            continue;
                        }
                        Ok(None) => {}
                        Err(_) => return heard(Pushed::Lost),
                    }
                    let batched = match message_body(&mut buf, &batch) {
                        Ok(Some(body)) => {
                            heard(Pushed::Keys(Bytes::copy_from_slice(&body)));
                            Ok(())
                        }
                        Ok(None) => match parse(&mut buf) {
                            Ok(None) => break,
                            Ok(Some(Reply::Value(Value::Array(a)))) => {
                                match (is(&a, b"message"), &a[..]) {
                                    (true, [_, Value::BulkString(c), Value::BulkString(body)]) => {
                                        let body = Bytes::copy_from_slice(body);
                                        heard(if c.as_slice() == many.as_bytes() {
                                            Pushed::Keys(body)
                                        } else {
                                            Pushed::Key(body)
                                        });
                                        Ok(())
                                    }
                                    _ if is(&a, b"pong") => {
                                        seen.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                                        seen.1.notify_waiters();
                                        Ok(())
                                    }
                                    _ => Ok(()),
                                }
                            }
                            Ok(Some(_)) => Ok(()),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if batched.is_err() {
                        return heard(Pushed::Lost);
                    }
                }
                match rd.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return heard(Pushed::Lost),
                }
            }
        });
        Ok(Self {
            writer,
            pongs,
            reader,
            target: t.clone(),
            channel: channel.to_owned(),
            probe: None,
        })
    }

    /// Says `hello` on the channel, which tells Redis how many listen there: with another
    /// (an instance, or any subscriber), listens to the keys channel too (`listen_keys`) and
    /// returns false; alone, true. Every instance publishes its hello after subscribing, so
    /// of two that start together the second to publish counts the first, and the first
    /// hears its hello.
    pub async fn join(&mut self, hello: &[u8]) -> Result<bool, L2Error> {
        let probe = self
            .probe
            .insert((connect(&self.target).await?, BytesMut::new()));
        let heard = query(probe, &[b"PUBLISH", self.channel.as_bytes(), hello]).await?;
        let alone = match heard {
            Reply::Value(Value::Int(n)) => n <= 1,
            // Refused (an ACL): as before hellos, never alone.
            Reply::Error { .. } => false,
            other => return Err(L2Error::Unavailable(format!("PUBLISH answered {other:?}"))),
        };
        if !alone {
            self.listen_keys().await?;
        }
        Ok(alone)
    }

    /// Whether anyone else listens on the channel now (`PUBSUB NUMSUB`): asked at every PING,
    /// so that an instance that says no hello (an older version) is found, and one left
    /// alone stops hearing its own announcements.
    pub async fn others(&mut self) -> Result<bool, L2Error> {
        let Some(probe) = self.probe.as_mut() else {
            return Ok(true);
        };
        let numsub = query(probe, &[b"PUBSUB", b"NUMSUB", self.channel.as_bytes()]).await?;
        match &numsub {
            Reply::Value(Value::Array(a)) => match a.as_slice() {
                [_, Value::Int(n)] => Ok(*n > 1),
                _ => Err(bad("PUBSUB NUMSUB reply")),
            },
            // Refused (an ACL without `pubsub|numsub`): others, perhaps. Never alone is
            // what every instance was before it could tell.
            Reply::Error { .. } => Ok(true),
            _ => Err(bad("PUBSUB NUMSUB reply")),
        }
    }

    /// Subscribes to the keys channel as well, and returns once Redis has confirmed it (a
    /// PING sent after it is answered after it): from then on every batch announced is heard.
    pub async fn listen_keys(&mut self) -> Result<(), L2Error> {
        self.keys(b"SUBSCRIBE").await
    }

    /// Unsubscribes from the keys channel, and returns once Redis has confirmed it.
    pub async fn ignore_keys(&mut self) -> Result<(), L2Error> {
        self.keys(b"UNSUBSCRIBE").await
    }

    async fn keys(&mut self, verb: &[u8]) -> Result<(), L2Error> {
        let mut cmd = Vec::new();
        encode(&mut cmd, &[verb, keys_channel(&self.channel).as_bytes()]);
        self.writer
            .write_all(&cmd)
            .await
            .map_err(|e| L2Error::Unavailable(e.to_string()))?;
        self.ping().await
    }

    /// PINGs Redis and waits for its answer on the subscription.
    pub async fn ping(&mut self) -> Result<(), L2Error> {
        let (count, notify) = &*self.pongs;
        let before = count.load(std::sync::atomic::Ordering::Acquire);
        let answered = notify.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        self.writer
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .map_err(|e| L2Error::Unavailable(e.to_string()))?;
        while count.load(std::sync::atomic::Ordering::Acquire) == before {
            answered.as_mut().await;
            answered.set(notify.notified());
            answered.as_mut().enable();
        }
        Ok(())
    }
}

/// Sends one command on `conn` and reads its reply.
async fn query(conn: &mut (TcpStream, BytesMut), args: &[&[u8]]) -> Result<Reply, L2Error> {
    let mut cmd = Vec::new();
    encode(&mut cmd, args);
    conn.0
        .write_all(&cmd)
        .await
        .map_err(|e| L2Error::Unavailable(e.to_string()))?;
    next_reply(&mut conn.0, &mut conn.1).await
}

/// How every message on `channel` starts, up to its key's length.
fn message_prefix(channel: &str) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n$",
        channel.len()
    )
    .into_bytes()
}

/// Takes a whole message on the channel (`prefix` from `message_prefix`) off the front of
/// `buf`: its key. None when `buf` starts with something else, or with a message not yet
/// complete; `parse` then reads it the general way. The bus hears a message per write made
/// anywhere, and the general way costs four allocations each (an array of three strings).
fn message_key(buf: &mut BytesMut, prefix: &[u8]) -> Result<Option<Bytes>, L2Error> {
    Ok(message_body(buf, prefix)?.map(|body| Bytes::copy_from_slice(&body)))
}

/// `message_key`, the message's body left in the read buffer's allocation: for a message of
/// many keys, each copied out as it is unpacked.
fn message_body(buf: &mut BytesMut, prefix: &[u8]) -> Result<Option<BytesMut>, L2Error> {
    let Some(rest) = buf.strip_prefix(prefix) else {
        return Ok(None);
    };
    let Some(end) = rest.iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    let len = usize::try_from(decimal(&rest[..end]).ok_or_else(|| bad("message length"))?)
        .map_err(|_| bad("message length"))?;
    let start = prefix.len() + end + 2;
    if buf.len() < start + len + 2 {
        return Ok(None);
    }
    buf.advance(start);
    let body = buf.split_to(len);
    buf.advance(2);
    Ok(Some(body))
}

/// Whether a pushed array is of `kind` (its first element, "message", "subscribe", ...).
fn is(a: &[Value], kind: &[u8]) -> bool {
    matches!(a.first(), Some(Value::BulkString(k)) if k.as_slice() == kind)
}

/// RESP2 encoding of one command.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    encode_args(out, args)
}

/// `encode`, for arguments of any kind of byte string (a forwarded command's `Bytes`).
pub fn encode_args<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    // Room for the whole command up front, so the appends below never grow the buffer one
    // by one; a buffer sized with `encoded_len` already has it.
    out.reserve(encoded_len(args));
    let mut n = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// At least the bytes `encode_args` writes for `args`: a length line is at most 24 bytes.
pub fn encoded_len<A: AsRef<[u8]>>(args: &[A]) -> usize {
    24 + args.iter().map(|a| a.as_ref().len() + 24).sum::<usize>()
}

/// Takes one complete reply off the front of `buf`; None until one has fully arrived.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, L2Error> {
    match scan(buf, 0)? {
        None => Ok(None),
        Some((reply, used)) => {
            buf.advance(used);
            Ok(Some(reply))
        }
    }
}

fn bad(what: &str) -> L2Error {
    L2Error::Unavailable(format!("Redis sent a malformed reply ({what})"))
}

/// The line starting at `at` (without its CRLF) and the offset after it.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = at + memchr::memchr(b'\n', buf.get(at..)?)?;
    (end > at && buf[end - 1] == b'\r').then(|| (&buf[at..end - 1], end + 1))
}

fn int(text: &[u8]) -> Result<i64, L2Error> {
    decimal(text).ok_or_else(|| bad("a number"))
}

/// A decimal i64 as Redis writes one: an optional '-', then digits, no leading zeros beyond
/// "0" ("-0" is not one), no '+'. Accumulated with its sign, so i64::MIN parses too.
pub fn decimal(v: &[u8]) -> Option<i64> {
    let (neg, digits) = match v {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, v),
    };
    if digits.is_empty() || digits.len() > 19 || (digits[0] == b'0' && (neg || digits.len() > 1)) {
        return None;
    }
    digits.iter().try_fold(0i64, |n, &d| {
        let d = i64::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
        let n = n.checked_mul(10)?;
        if neg {
            n.checked_sub(d)
        } else {
            n.checked_add(d)
        }
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The reply starting at `at`, and the offset after it.
fn scan(buf: &[u8], at: usize) -> Result<Option<(Reply, usize)>, L2Error> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    let value = |v| Ok(Some((Reply::Value(v), next)));
    match kind {
        b'+' if head == b"OK" => value(Value::Okay),
        b'+' => value(Value::SimpleString(text(head))),
        b'-' => {
            let msg = text(head);
            let (code, detail) = msg.split_once(' ').unwrap_or((&msg, ""));
            Ok(Some((
                Reply::Error {
                    code: code.to_owned(),
                    detail: detail.to_owned(),
                },
                next,
            )))
        }
        b':' => value(Value::Int(int(head)?)),
        b'$' => {
            let len = int(head)?;
            if len < 0 {
                return value(Value::Nil);
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(bad("a bulk string's end"));
            }
            Ok(Some((
                Reply::Value(Value::BulkString(buf[next..end].to_vec())),
                end + 2,
            )))
        }
        b'*' => {
            let len = int(head)?;
            if len < 0 {
                return value(Value::Nil);
            }
            let mut items = Vec::with_capacity((len as usize).min(1024));
            let mut pos = next;
            for _ in 0..len {
                match scan(buf, pos)? {
                    None => return Ok(None),
                    Some((Reply::Value(v), after)) => {
                        items.push(v);
                        pos = after;
                    }
                    // The writes sent here never get an error inside an array (that is
                    // EXEC's); refuse rather than guess.
                    Some((_, _)) => return Err(bad("an error in an array")),
                }
            }
            Ok(Some((Reply::Value(Value::Array(items)), pos)))
        }
        other => Err(bad(&format!("type byte {other:#04x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_on_the_channel_are_read_without_the_general_parser() {
        let prefix = message_prefix("inv");
        let one = b"*3\r\n$7\r\nmessage\r\n$3\r\ninv\r\n$5\r\nk\r\nx1\r\n";
        let mut buf = BytesMut::from(&one[..]);
        buf.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$3\r\ninv\r\n$0\r\n\r\n");
        buf.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(
            message_key(&mut buf, &prefix).unwrap().unwrap(),
            &b"k\r\nx1"[..]
        );
        assert_eq!(message_key(&mut buf, &prefix).unwrap().unwrap(), &b""[..]);
        // Not a message: left for `parse`.
        assert_eq!(message_key(&mut buf, &prefix).unwrap(), None);
        assert!(matches!(
            parse(&mut buf),
            Ok(Some(Reply::Value(Value::Array(_))))
        ));
        assert!(buf.is_empty());
        // Every cut of a message waits for the rest.
        for cut in 0..one.len() {
            let mut part = BytesMut::from(&one[..cut]);
            assert_eq!(message_key(&mut part, &prefix).unwrap(), None, "{cut}");
            assert_eq!(part.len(), cut);
        }
        let mut bad = BytesMut::from(&b"*3\r\n$7\r\nmessage\r\n$3\r\ninv\r\n$x\r\n"[..]);
        assert!(message_key(&mut bad, &prefix).is_err());
    }

    #[test]
    fn announced_keys_pack_into_one_message_and_unpack_in_order() {
        let keys: [&[u8]; 4] = [b"a", b"", b"k\r\nx", b"$3\r\nabc"];
        let mut packed = Vec::new();
        for k in keys {
            pack_key(&mut packed, k);
        }
        let mut heard = Vec::new();
        unpack_keys(&packed, |k| heard.push(Bytes::copy_from_slice(k))).unwrap();
        assert_eq!(heard, keys.map(Bytes::copy_from_slice));
        for bad in [
            &b"a"[..],
            b"$1\r\na",
            b"$2\r\na\r\n",
            b"$-1\r\n",
            b"$1\r\nab\r\n",
        ] {
            assert!(unpack_keys(bad, |_| {}).is_err(), "{bad:?}");
        }
        // A message of many keys, as the subscription reads it.
        let channel = keys_channel("inv");
        let mut buf = BytesMut::from(&b"*3\r\n$7\r\nmessage\r\n$8\r\ninv:keys\r\n$"[..]);
        buf.extend_from_slice(format!("{}\r\n", packed.len()).as_bytes());
        buf.extend_from_slice(&packed);
        buf.extend_from_slice(b"\r\n");
        let body = message_body(&mut buf, &message_prefix(&channel))
            .unwrap()
            .unwrap();
        assert_eq!(&body[..], &packed[..]);
        assert!(buf.is_empty());
    }

    fn all(bytes: &[u8]) -> Vec<Reply> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(r) = parse(&mut buf).unwrap() {
            out.push(r);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn parses_each_reply_type() {
        assert_eq!(
            all(b":9223372036854775807\r\n:-9223372036854775808\r\n"),
            [
                Reply::Value(Value::Int(i64::MAX)),
                Reply::Value(Value::Int(i64::MIN))
            ]
        );
        let replies = all(
            b"+OK\r\n+PONG\r\n-WRONGTYPE Operation against a key\r\n:-12\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$0\r\n\r\n*-1\r\n",
        );
        assert_eq!(
            replies,
            [
                Reply::Value(Value::Okay),
                Reply::Value(Value::SimpleString("PONG".into())),
                Reply::Error {
                    code: "WRONGTYPE".into(),
                    detail: "Operation against a key".into()
                },
                Reply::Value(Value::Int(-12)),
                Reply::Value(Value::BulkString(b"abc".to_vec())),
                Reply::Value(Value::Nil),
                Reply::Value(Value::Array(vec![
                    Value::Int(1),
                    Value::BulkString(Vec::new())
                ])),
                Reply::Value(Value::Nil),
            ]
        );
    }

    #[test]
    fn a_reply_split_anywhere_waits_for_the_rest() {
        let whole = b"$5\r\nhello\r\n*2\r\n+OK\r\n:7\r\n";
        for cut in 1..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut got = Vec::new();
            while let Some(r) = parse(&mut buf).unwrap() {
                got.push(r);
            }
            buf.extend_from_slice(&whole[cut..]);
            while let Some(r) = parse(&mut buf).unwrap() {
                got.push(r);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_guesses() {
        for bytes in [
            &b"?x\r\n"[..],
            b":12x\r\n",
            b":\r\n",
            b":-\r\n",
            b":99999999999999999999\r\n",
            b"$3\r\nabcd\r\n",
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(parse(&mut buf).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}

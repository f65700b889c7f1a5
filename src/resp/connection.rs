//! One client connection: wait until bytes arrive, borrow a buffer and read them, run every
//! complete command in order, write all their replies with one write, and give the buffers
//! back unless a command is still partly read. An idle connection therefore holds no buffer.
//! A client silent for `resp.idle_timeout`, or whose command is not whole
//! `resp.command_read_timeout` after its first byte, is closed; on shutdown the commands
//! already received are answered before the connection closes. What bounds the replies a
//! client can make the gateway hold is in `reply`.

use super::{
    cmd::{self, forward::Answer, Command, Ctx, Forward, Looked, Set, Unserved},
    frame::{self, Frame, Protocol},
    pinned::{self, Pinned, Step},
    reply::{self, Fit},
    session::Session,
    Limits, Shared,
};
use crate::{
    access,
    auth::Denied,
    buf::pool::Lease,
    cache::forward::Run,
    exec::{placement, Refused},
    metrics::{Door, RespClass, RespClose, Tier},
    net,
    shutdown::Shutdown,
};
use std::time::{Duration, Instant as StdInstant, SystemTime};
use std::{
    future::{poll_fn, Future},
    io,
    sync::Arc,
    task::Poll,
};
use tokio::{net::TcpStream, time::Instant};

/// Serves one client until it leaves, idles out or shutdown ends it. Takes its handles by
/// value, and `held` (the permit and guards of the connection) too, so that the task is this one
/// future and nothing is stored twice in it: every byte of an idle connection's task counts.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn moves its arguments into locals: 48 more bytes in every idle connection"
)]
pub fn serve<H: Send>(
    stream: TcpStream,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    held: H,
) -> impl Future<Output = ()> + Send {
    async move {
        // Captured (so released when the connection ends) but bound to nothing: a local
        // would store it a second time.
        let _ = &held;
        // Registered first, while little else is alive across the await: a later one would
        // grow this future.
        let stop = shutdown.wait();
        tokio::pin!(stop);
        Shutdown::register(stop.as_mut()).await;
        let mut session = Session::new(shared.next_id(), shared.auth.rules().resp_anonymous());
        let mut rbuf = shared.buffers.lease();
        // A dedicated L2 connection, while the client holds state there (`pinned`).
        let mut pinned: Option<Box<Pinned>> = None;
        // One timer for the connection's life, re-armed only when it fires: activity just moves
        // `last_active`, so a busy connection does not touch the timer wheel per command.
        // Settings are read from `shared` where used, not copied into locals: this future is
        // what every idle connection costs.
        let mut last_active = shared.clock_ms();
        let idle_timer = tokio::time::sleep_until(shared.idle_deadline(last_active, false));
        tokio::pin!(idle_timer);

        loop {
            // One hand-written poll instead of `select!`: it keeps three borrows where the
            // macro keeps a tuple of futures and its bookkeeping, in every idle connection.
            // Readiness by poll puts the waker in the socket's own registration, where
            // `readable()` would put a 150-byte waiter node here.
            let wake = poll_fn(|cx| {
                if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                    return Poll::Ready(if ready.is_ok() {
                        Wake::Readable
                    } else {
                        Wake::Gone
                    });
                }
                if shutdown.is_triggered() {
                    return Poll::Ready(Wake::Stop);
                }
                idle_timer.as_mut().poll(cx).map(|()| Wake::Timer)
            })
            .await;
            let stopping = match wake {
                Wake::Readable => false,
                // Answer what has already arrived, then close.
                Wake::Stop => true,
                Wake::Gone => return,
                Wake::Timer => {
                    let partial = !rbuf.is_empty();
                    let due = shared.idle_deadline(last_active, partial);
                    if Instant::now() >= due {
                        if partial {
                            shared.metrics.resp_closed(RespClose::CommandTimeout);
                            let _ = stream.try_write(COMMAND_TIMEOUT_REPLY);
                        } else {
                            shared.metrics.heartbeat_timeouts.inc();
                        }
                        return;
                    }
                    idle_timer.as_mut().reset(due);
                    continue;
                }
            };
            let buf = rbuf.buf();
            // A command under way keeps its first byte's time in `last_active`: its deadline
            // runs from there, not from each byte that trickles in.
            let resumed = !buf.is_empty();
            // Free space a read asks the kernel to fill, at least. Growth doubles what is
            // held: a large value is copied O(log n) times, and the buffer is never more than
            // twice what the client has actually sent.
            let chunk = shared.buffers.buf_size();
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk.max(buf.len()));
            }
            match net::read::try_read(&stream, buf) {
                Ok(0) => return,
                Ok(_) if !resumed => last_active = shared.clock_ms(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !stopping => {
                    if rbuf.is_empty() {
                        rbuf.release();
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            loop {
                // Boxed: the command futures (L2 pipelines, moka computes) are kilobytes, and
                // inline they would make every idle connection's task that large. Allocated
                // once per batch of commands read, not per command.
                let batch = placement::boxed(|| {
                    answer(&stream, &mut rbuf, &mut session, &shared, &mut pinned)
                });
                let Ok(mut outcome) = batch.await else {
                    return;
                };
                if outcome.ran {
                    last_active = shared.clock_ms();
                }
                if outcome.close {
                    return;
                }
                // A blocking command or a subscription: waited for outside admission, after
                // the replies before it; the commands after it then run as usual.
                if let Some(f) = outcome.hold.take() {
                    let held = placement::boxed(|| {
                        pinned::hold(
                            f,
                            &mut pinned,
                            &stream,
                            &mut rbuf,
                            &mut session,
                            &shared,
                            &shutdown,
                        )
                    });
                    if !matches!(held.await, Ok(false)) {
                        return;
                    }
                    last_active = shared.clock_ms();
                    continue;
                }
                // Stopped for its replies to be written: the commands left run now, without
                // waiting for the client to send more.
                if !outcome.more {
                    break;
                }
            }
            if rbuf.is_empty() {
                rbuf.release();
            } else {
                // A command is under way: its deadline may come before the idle one.
                let due = shared.idle_deadline(last_active, true);
                if due < idle_timer.deadline() {
                    idle_timer.as_mut().reset(due);
                }
            }
            // The stop future has completed: it must not be polled again.
            if stopping || shutdown.is_triggered() {
                return;
            }
        }
    }
}

/// Written before closing a client whose command did not arrive in time.
const COMMAND_TIMEOUT_REPLY: &[u8] =
    b"-ERR Protocol error: command not complete within resp.command_read_timeout\r\n";

/// What ended an idle connection's wait.
enum Wake {
    Readable,
    /// The socket failed.
    Gone,
    Stop,
    Timer,
}

/// How a batch of commands ended.
#[derive(Default)]
struct Outcome {
    /// Close the connection once the replies are written (QUIT, framing lost, a limit).
    close: bool,
    /// At least one command was whole: the connection made progress.
    ran: bool,
    /// Stopped with `resp.reply_buffer_bytes` of replies pending, or a large reply: commands
    /// may be left in the read buffer, to run once these are written.
    more: bool,
    /// A reply too large to copy, written after the buffered ones.
    large: Option<Frame>,
    /// Set by a failed AUTH (`auth.failure_delay`): how long to wait before writing.
    pause: Duration,
    /// A blocking command or a SUBSCRIBE, to run once the replies are written (`pinned`).
    hold: Option<Forward>,
    /// Commands run, by latency class (`RespClass`), for the histogram once the replies are
    /// written. Refusals (NOPERM, NOAUTH, syntax) and waits (a blocking command) are not
    /// counted.
    classes: [u32; RespClass::ALL.len()],
}

impl Outcome {
    fn ran_one(&mut self, class: RespClass) {
        self.classes[class as usize] += 1;
    }
}

/// Runs the complete commands in `rbuf` and writes their replies with one write, from a
/// write buffer borrowed for the occasion; a large reply is then streamed. The admission
/// slot is given back before writing, so a client slow to read holds none. Err when the
/// client is gone or took none of its replies for `resp.idle_timeout`.
async fn answer(
    stream: &TcpStream,
    rbuf: &mut Lease<'_>,
    session: &mut Session,
    shared: &Shared,
    pinned: &mut Option<Box<Pinned>>,
) -> io::Result<Outcome> {
    // Latency runs from here, the batch read, to its replies written: admission's queue and
    // Redis' round trips included, as a client sees them.
    let start = StdInstant::now();
    let mut wbuf = shared.buffers.lease();
    // One admission slot for the batch: its commands run one after another anyway.
    let admitted = shared.admission.admit().await;
    let refused = admitted.as_ref().err();
    let outcome = run_buffered(rbuf, &mut wbuf, session, shared, refused, pinned).await;
    drop(admitted);
    // A failed AUTH stopped the batch: its reply waits, in this connection only and with no
    // admission slot held, and the commands after it run once it is written.
    if !outcome.pause.is_zero() && !outcome.close {
        tokio::time::sleep(outcome.pause).await;
    }
    let timeout = shared.idle_timeout;
    let sent = match &outcome.large {
        // The buffered replies go out ahead of it, in its first write.
        Some(large) => {
            let size = shared.reply_buffer;
            reply::stream(stream, wbuf.buf(), large, session.proto, size, timeout).await
        }
        None if wbuf.is_empty() => Ok(()),
        None => reply::send(stream, wbuf.buf(), timeout).await,
    };
    match sent {
        Ok(()) => {
            if outcome.classes.iter().any(|&n| n > 0) {
                let took = start.elapsed();
                for (class, &n) in RespClass::ALL.iter().zip(&outcome.classes) {
                    if n > 0 {
                        shared.metrics.record_resp(*class, n, took);
                    }
                }
            }
            Ok(outcome)
        }
        Err(e) => {
            if e.kind() == io::ErrorKind::TimedOut {
                shared.metrics.resp_closed(RespClose::WriteTimeout);
            }
            Err(e)
        }
    }
}

/// Runs the complete commands in `rbuf`, encoding replies into `wbuf`, until none is left,
/// the connection must close, or replies pile up (see `Outcome`); when admission `refused`
/// the batch, each command other than connection commands is answered `-BUSY` instead.
async fn run_buffered(
    rbuf: &mut Lease<'_>,
    wbuf: &mut Lease<'_>,
    session: &mut Session,
    shared: &Shared,
    refused: Option<&Refused>,
    pinned: &mut Option<Box<Pinned>>,
) -> Outcome {
    // One load per batch: a reload takes effect from the next batch.
    let limits = shared.limits.load();
    // What becomes of commands not served here, read once per batch.
    let table = shared.cache.l2().and_then(|l2| l2.table());
    let unserved = match (shared.cache.l2(), &table) {
        (None, _) => Unserved::Standalone,
        (Some(l2), _) if !l2.forwards() => {
            Unserved::Unavailable("ERR tiergate does not forward commands over TLS yet")
        }
        (Some(l2), Some(table)) => Unserved::Forward {
            table,
            clustered: l2.clustered(),
        },
        (Some(_), None) => {
            Unserved::Unavailable("TRYAGAIN Redis' command table is not read yet; retry later")
        }
    };
    let forwarding = matches!(unserved, Unserved::Forward { .. });
    let dedicated = shared.cache.l2().is_some_and(|l2| l2.lends());
    let clustered = shared.cache.l2().is_some_and(|l2| l2.clustered());
    let mut held = Held::default();
    let mut outcome = Outcome::default();
    // Sends what is held, and ends the batch if the client must then be closed (forwarded
    // replies past `limits.max_reply_bytes`).
    macro_rules! flush {
        () => {
            if held.write(shared, &limits, session.proto, wbuf).await {
                outcome.close = true;
                return outcome;
            }
        };
    }
    loop {
        if wbuf.len() >= shared.reply_buffer {
            // Backpressure: the commands left wait until these replies are written.
            outcome.close = held.write(shared, &limits, session.proto, wbuf).await;
            outcome.more = !outcome.close;
            return outcome;
        }
        let args = match frame::parse(rbuf.buf(), &limits.frame, &mut session.progress) {
            Ok(Some(args)) if args.is_empty() => continue,
            Ok(Some(args)) => args,
            Ok(None) => {
                outcome.close = held.write(shared, &limits, session.proto, wbuf).await;
                return outcome;
            }
            Err(e) => {
                flush!();
                shared.metrics.resp_protocol_errors.inc();
                Frame::Error(format!("ERR {e}").into()).encode(session.proto, wbuf.buf());
                outcome.close = true;
                return outcome;
            }
        };
        outcome.ran = true;
        shared.metrics.resp_commands.inc();
        session.follow_reload(&shared.auth);
        // Only with the access log on: the clock read and the name lookup cost a little.
        let logged = shared.access.as_ref().map(|_| Logged {
            start: StdInstant::now(),
            op: cmd::name_of(&args[0]).unwrap_or("unknown"),
        });
        if cmd::is(&args[0], "reset") && args.len() == 1 {
            flush!();
            pinned::reset(pinned, session, shared).await;
            let reply = Frame::Simple("RESET".into());
            log(shared, logged, 0, &reply, None);
            reply.encode(session.proto, wbuf.buf());
            continue;
        }
        // Only where connections can be lent (one Redis or a cluster, over TCP): elsewhere
        // these commands are closed on (`cmd::unservable`), so a transaction is never
        // half-applied.
        if let (Unserved::Forward { table, .. }, true) = (unserved, dedicated) {
            let held_state = pinned.is_some()
                || session.refused_tx
                || session.deferred != super::session::Deferred::None;
            if session.user.is_some() && pinned::wants(&args, held_state, clustered) {
                flush!();
                let refused = refused.map(|r| r.reason());
                let step =
                    pinned::step(args, table, refused, pinned, session, shared, &limits).await;
                let reply = match step {
                    Step::Hold(f) => {
                        outcome.hold = Some(f);
                        return outcome;
                    }
                    Step::Close(reply) => {
                        outcome.close = true;
                        reply
                    }
                    Step::Reply(reply) => reply,
                };
                outcome.ran_one(RespClass::Forwarded);
                if reply.code() == "NOPERM" {
                    shared.metrics.auth_denied(Door::Resp, Denied::Forbidden);
                }
                log(shared, logged, 0, &reply, None);
                reply.encode(session.proto, wbuf.buf());
                if outcome.close {
                    return outcome;
                }
                continue;
            }
        }
        let (mut key_len, mut tier, mut close) = (0, None, false);
        let (cmd, allowed) = match Command::from_args(args, session, unserved) {
            Ok(Command::Unservable(unservable)) => {
                // Nothing sent after it runs: the commands before it are run, then the close.
                flush!();
                let reply = unservable.reply();
                shared.metrics.resp_closed(match reply {
                    None => RespClose::CrossProtocol,
                    Some(_) => RespClose::ConnectionState,
                });
                if let Some(reply) = reply {
                    reply.encode(session.proto, wbuf.buf());
                    log(shared, logged, 0, &reply, None);
                }
                outcome.close = true;
                return outcome;
            }
            Ok(cmd) if !cmd.permitted(session) => (Ok(cmd), false),
            // Not a SET ... GET: its reply is a value, which must pass `reply::fit` like
            // any other (held, hundreds of 4 MiB old values would be encoded at once).
            Ok(Command::Set(set)) if refused.is_none() && !set.returns_old() => {
                if !held.forwards.is_empty() {
                    flush!();
                }
                outcome.ran_one(RespClass::Write);
                held.sets.push((set, logged));
                continue;
            }
            Ok(Command::Forward(forward)) if refused.is_none() => {
                if !held.sets.is_empty() {
                    held.write(shared, &limits, session.proto, wbuf).await;
                }
                outcome.ran_one(RespClass::Forwarded);
                held.push_forward(forward, logged);
                if held.is_full(shared) {
                    flush!();
                }
                continue;
            }
            cmd => (cmd, true),
        };
        // A GET is answered from L1, and where L1 holds nothing it goes with the forwarded
        // run: a client's pipelined misses share one round trip to Redis. Writes held before
        // it are sent first, or L1 could answer with what they replace.
        let cmd = match cmd {
            Ok(Command::Get(get)) if allowed && refused.is_none() && forwarding => {
                if !held.sets.is_empty() || held.forwards.writes() {
                    flush!();
                }
                key_len = get.key_len();
                outcome.ran_one(RespClass::Read);
                match get.look(&shared.cache, &limits).await {
                    Looked::Missing(key) => {
                        held.push_read(key, logged);
                        if held.is_full(shared) {
                            flush!();
                        }
                        continue;
                    }
                    Looked::Answered(reply, from) => {
                        tier = from;
                        Err(reply)
                    }
                }
            }
            cmd => cmd,
        };
        // Anything else runs after the commands held before it, as the client ordered them.
        // Checked here: an empty `write` still costs its future, per command.
        if !held.is_empty() {
            flush!();
        }
        let reply = match cmd {
            Err(reply) => {
                // A forwarded command's keys are checked as it is parsed.
                if reply.code() == "NOPERM" {
                    shared.metrics.auth_denied(Door::Resp, Denied::Forbidden);
                }
                reply
            }
            Ok(cmd) if !allowed => {
                key_len = cmd.first_key_len();
                shared.metrics.auth_denied(Door::Resp, Denied::Forbidden);
                Frame::error(
                    "NOPERM this user has no permissions to access one of the keys used as arguments",
                )
            }
            Ok(cmd) if refused.is_some() && !cmd.is_connection() => {
                key_len = cmd.first_key_len();
                let why = refused.map_or("", |r| r.reason());
                cmd::busy(why)
            }
            Ok(cmd) => {
                key_len = cmd.first_key_len();
                outcome.ran_one(cmd.class());
                let mut ctx = Ctx {
                    shared,
                    limits: &limits,
                    session,
                    close: false,
                    tier: None,
                    pause: Duration::ZERO,
                };
                let reply = cmd.apply(&mut ctx).await;
                (close, tier, outcome.pause) = (ctx.close, ctx.tier, ctx.pause);
                reply
            }
        };
        log(shared, logged, key_len, &reply, tier);
        outcome.close = close;
        match reply::fit(
            &reply,
            session.proto,
            shared.reply_buffer,
            limits.max_reply_bytes,
        ) {
            Fit::Buffered => reply.encode(session.proto, wbuf.buf()),
            Fit::Streamed => {
                outcome.large = Some(reply);
                outcome.more = true;
                return outcome;
            }
            Fit::TooLarge(len) => {
                shared.metrics.resp_closed(RespClose::ReplyLimit);
                reply::too_large(len, limits.max_reply_bytes).encode(session.proto, wbuf.buf());
                outcome.close = true;
            }
        }
        if outcome.close {
            return outcome;
        }
        if !outcome.pause.is_zero() {
            outcome.more = true;
            return outcome;
        }
    }
}

/// When a command was read, and its name: what the access log needs beyond its reply.
struct Logged {
    start: StdInstant,
    op: &'static str,
}

/// Writes a command's access log line, when the log is on (`logged` is then Some).
/// Inline: with the log off, the call cost more than its body.
#[inline]
fn log(shared: &Shared, logged: Option<Logged>, key_len: u32, reply: &Frame, tier: Option<Tier>) {
    if let (Some(log), Some(Logged { start, op })) = (&shared.access, logged) {
        let took = start.elapsed();
        log.push(access::Record {
            at: SystemTime::now() - took,
            door: Door::Resp,
            op,
            key_len,
            status: access::Status::Resp(reply.code()),
            tier,
            duration: took,
        });
    }
}

/// Most forwarded commands held for one round trip.
const MAX_RUN: usize = 256;

/// SETs, or forwarded commands, read one after another and held back to be sent together: a
/// client's pipeline then costs one L2 round trip (`TieredCache::set_each`,
/// `TieredCache::forward`) instead of one per command, as through a proxy that forwards the
/// pipeline. Any other command, the end of what was read and a protocol error each send them
/// first, so writes and replies keep the client's order; so does a SET after forwarded
/// commands and the other way round. Only commands the client may make and admission let in
/// are held, and not SET ... GET.
#[derive(Default)]
struct Held {
    sets: Vec<(Set, Option<Logged>)>,
    forwards: Run,
    forwarded: Vec<Option<Logged>>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.sets.is_empty() && self.forwards.is_empty()
    }

    fn push_forward(&mut self, forward: Forward, logged: Option<Logged>) {
        self.forwards.push(forward.args, &forward.writes);
        self.forwarded.push(logged);
    }

    /// A GET of a key L1 does not hold, read from Redis with the run.
    fn push_read(&mut self, key: bytes::Bytes, logged: Option<Logged>) {
        self.forwards.push_read(key);
        self.forwarded.push(logged);
    }

    /// Whether the run is as long as one round trip takes: it is sent before more is held.
    fn is_full(&self, shared: &Shared) -> bool {
        self.forwards.len() >= MAX_RUN || self.forwards.bytes() >= shared.reply_buffer
    }

    /// Sends what is held and encodes the replies, in order; whether the client must be
    /// closed (forwarded replies passed `limits.max_reply_bytes`).
    async fn write(
        &mut self,
        shared: &Shared,
        limits: &Limits,
        proto: Protocol,
        wbuf: &mut Lease<'_>,
    ) -> bool {
        if !self.forwards.is_empty() {
            return self.write_forwards(shared, limits, proto, wbuf).await;
        }
        self.write_sets(shared, limits, proto, wbuf).await;
        false
    }

    /// Sends the held forwarded commands; see `write`.
    async fn write_forwards(
        &mut self,
        shared: &Shared,
        limits: &Limits,
        proto: Protocol,
        wbuf: &mut Lease<'_>,
    ) -> bool {
        let mut run = std::mem::take(&mut self.forwards);
        let logged = std::mem::take(&mut self.forwarded);
        let mut answers = cmd::forward::send(shared, &mut run, proto, limits).await;
        for logged in logged {
            let answer = match &mut answers {
                Ok(answers) => answers.next(),
                Err(every) => Some(Answer::Reply(every.clone())),
            };
            match answer {
                Some(Answer::Reply(reply)) => {
                    log(shared, logged, 0, &reply, None);
                    reply.encode(proto, wbuf.buf());
                }
                Some(Answer::TooLarge(len)) => {
                    shared.metrics.resp_closed(RespClose::ReplyLimit);
                    let reply = reply::too_large(len, limits.max_reply_bytes);
                    log(shared, logged, 0, &reply, None);
                    reply.encode(proto, wbuf.buf());
                    return true;
                }
                None => {
                    Frame::error("ERR Redis sent no reply").encode(proto, wbuf.buf());
                    return true;
                }
            }
        }
        false
    }

    /// Writes the held SETs and encodes their replies, in order.
    async fn write_sets(
        &mut self,
        shared: &Shared,
        limits: &Limits,
        proto: Protocol,
        wbuf: &mut Lease<'_>,
    ) {
        if self.sets.len() == 1 {
            // Alone: written as `Set::apply` would, without the vectors of a run.
            let (set, logged) = self.sets.pop().expect("one held");
            let key_len = set.key_len();
            let reply = set.write(&shared.cache, limits).await;
            reply.encode(proto, wbuf.buf());
            log(shared, logged, key_len, &reply, None);
            return;
        }
        if self.sets.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.sets);
        // Each held SET's refusal, or None where it is written; in the client's order.
        let mut refusals = Vec::with_capacity(held.len());
        let mut writes = Vec::with_capacity(held.len());
        for (set, logged) in held {
            let key_len = set.key_len();
            match set.check(limits) {
                Err(refusal) => refusals.push((Some(refusal), key_len, logged)),
                Ok(()) => {
                    writes.push(set.into_write());
                    refusals.push((None, key_len, logged));
                }
            }
        }
        let mut outcomes = shared.cache.set_each(writes).await.into_iter();
        for (refusal, key_len, logged) in refusals {
            let reply = refusal
                .unwrap_or_else(|| Set::into_frame(outcomes.next().expect("an outcome per write")));
            reply.encode(proto, wbuf.buf());
            log(shared, logged, key_len, &reply, None);
        }
    }
}

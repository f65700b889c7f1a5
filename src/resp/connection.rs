//! One client connection: wait until bytes arrive, borrow a buffer and read them, run every
//! complete command in order, write all their replies with one write, and give the buffers
//! back unless a command is still partly read. An idle connection therefore holds no buffer.
//! A client silent for `resp.idle_timeout` is closed; on shutdown the commands already
//! received are answered before the connection closes.

use super::{
    cmd::{self, Command, Ctx, Set},
    frame::{self, Frame, Protocol},
    session::Session,
    Limits, Shared,
};
use crate::{
    access,
    auth::Denied,
    buf::pool::Lease,
    exec::{placement, Refused},
    metrics::{Door, Tier},
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
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

/// Serves one client until it leaves, idles out or shutdown ends it. Takes its handles by
/// value, and `held` (the permit and guards of the connection) too, so that the task is this one
/// future and nothing is stored twice in it: every byte of an idle connection's task counts.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn moves its arguments into locals: 48 more bytes in every idle connection"
)]
pub fn serve<H: Send>(
    mut stream: TcpStream,
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
        // One timer for the connection's life, re-armed only when it fires: activity just moves
        // `last_active`, so a busy connection does not touch the timer wheel per command.
        // Settings are read from `shared` where used, not copied into locals: this future is
        // what every idle connection costs.
        let mut last_active = shared.clock_ms();
        let idle_timer = tokio::time::sleep_until(shared.idle_deadline(last_active));
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
                    let due = shared.idle_deadline(last_active);
                    if Instant::now() >= due {
                        shared.metrics.heartbeat_timeouts.inc();
                        return;
                    }
                    idle_timer.as_mut().reset(due);
                    continue;
                }
            };
            let buf = rbuf.buf();
            // Free space a read asks the kernel to fill, at least.
            let chunk = shared.buffers.buf_size();
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            match net::read::try_read(&stream, buf) {
                Ok(0) => return,
                Ok(_) => last_active = shared.clock_ms(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !stopping => {
                    if rbuf.is_empty() {
                        rbuf.release();
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            // Boxed: the command futures (L2 pipelines, moka computes) are kilobytes, and inline
            // they would make every idle connection's task that large. Allocated once per batch
            // of commands read, not per command.
            let batch = placement::boxed(|| answer(&mut stream, &mut rbuf, &mut session, &shared));
            let Ok(close) = batch.await else {
                return;
            };
            if rbuf.is_empty() {
                rbuf.release();
            }
            // The stop future has completed: it must not be polled again.
            if close || stopping || shutdown.is_triggered() {
                return;
            }
        }
    }
}

/// What ended an idle connection's wait.
enum Wake {
    Readable,
    /// The socket failed.
    Gone,
    Stop,
    Timer,
}

/// Runs every complete command in `rbuf` and writes all their replies with one write, from a
/// write buffer borrowed for the occasion. Ok(true) when the connection must close now
/// (QUIT, or framing lost); Err when the client is gone.
async fn answer(
    stream: &mut TcpStream,
    rbuf: &mut Lease<'_>,
    session: &mut Session,
    shared: &Shared,
) -> io::Result<bool> {
    let mut wbuf = shared.buffers.lease();
    loop {
        let mut pause = Duration::ZERO;
        // One admission slot for the batch: its commands run one after another anyway.
        let admitted = shared.admission.admit().await;
        let refused = admitted.as_ref().err();
        let close = run_buffered(rbuf, &mut wbuf, session, shared, refused, &mut pause).await;
        drop(admitted);
        // A failed AUTH stopped the batch: its reply waits, in this connection only and with
        // no admission slot held, and the commands after it run once it is written.
        if !pause.is_zero() && !close {
            tokio::time::sleep(pause).await;
        }
        if !wbuf.is_empty() {
            stream.write_all(wbuf.buf()).await?;
        }
        if pause.is_zero() || close {
            return Ok(close);
        }
        wbuf.buf().clear();
    }
}

/// Runs every complete command in `rbuf`, encoding replies into `wbuf`; when admission
/// `refused` the batch, each command other than connection commands is answered `-BUSY`
/// instead. True when the connection must close after the replies are written (QUIT, or
/// framing lost). Stops after a failed AUTH that sets `pause`, leaving the rest in `rbuf`.
async fn run_buffered(
    rbuf: &mut Lease<'_>,
    wbuf: &mut Lease<'_>,
    session: &mut Session,
    shared: &Shared,
    refused: Option<&Refused>,
    pause: &mut Duration,
) -> bool {
    // One load per batch: a reload takes effect from the next batch.
    let limits = shared.limits.load();
    let mut held = HeldSets::default();
    loop {
        let args = match frame::parse(rbuf.buf(), &limits.frame, &mut session.progress) {
            Ok(Some(args)) if args.is_empty() => continue,
            Ok(Some(args)) => args,
            Ok(None) => {
                held.write(shared, &limits, session.proto, wbuf).await;
                return false;
            }
            Err(e) => {
                held.write(shared, &limits, session.proto, wbuf).await;
                shared.metrics.resp_protocol_errors.inc();
                Frame::Error(format!("ERR {e}").into()).encode(session.proto, wbuf.buf());
                return true;
            }
        };
        shared.metrics.resp_commands.inc();
        session.follow_reload(&shared.auth);
        // Only with the access log on: the clock read and the name lookup cost a little.
        let logged = shared.access.as_ref().map(|_| Logged {
            start: StdInstant::now(),
            op: cmd::name_of(&args[0]).unwrap_or("unknown"),
        });
        let (mut key_len, mut tier, mut close) = (0, None, false);
        let (cmd, allowed) = match Command::from_args(args, session) {
            Ok(cmd) if !cmd.permitted(session) => (Ok(cmd), false),
            Ok(Command::Set(set)) if refused.is_none() => {
                held.push(set, logged);
                continue;
            }
            cmd => (cmd, true),
        };
        // Anything else runs after the SETs before it, as the client ordered them. Checked
        // here: an empty `write` still costs its future, per command.
        if !held.0.is_empty() {
            held.write(shared, &limits, session.proto, wbuf).await;
        }
        let reply = match cmd {
            Err(reply) => reply,
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
                Frame::Error(format!("BUSY tiergate is at its limits ({why}); retry later").into())
            }
            Ok(cmd) => {
                key_len = cmd.first_key_len();
                let mut ctx = Ctx {
                    shared,
                    limits: &limits,
                    session,
                    close: false,
                    tier: None,
                    pause: Duration::ZERO,
                };
                let reply = cmd.apply(&mut ctx).await;
                (close, tier, *pause) = (ctx.close, ctx.tier, ctx.pause);
                reply
            }
        };
        reply.encode(session.proto, wbuf.buf());
        log(shared, logged, key_len, &reply, tier);
        if close {
            return true;
        }
        if !pause.is_zero() {
            return false;
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

/// SETs read one after another, held back to be written together: a client's pipelined
/// SETs then cost one L2 round trip (`TieredCache::set_each`) instead of one each, as they
/// would through a proxy that forwards the pipeline. Any other command, the end of what was
/// read and a protocol error each write them first, so writes and replies keep the client's
/// order. Only SETs the client may make and admission let in are held.
#[derive(Default)]
struct HeldSets(Vec<(Set, Option<Logged>)>);

impl HeldSets {
    fn push(&mut self, set: Set, logged: Option<Logged>) {
        self.0.push((set, logged));
    }

    /// Writes the held SETs and encodes their replies, in order.
    async fn write(
        &mut self,
        shared: &Shared,
        limits: &Limits,
        proto: Protocol,
        wbuf: &mut Lease<'_>,
    ) {
        if self.0.len() == 1 {
            // Alone: written as `Set::apply` would, without the vectors of a run.
            let (set, logged) = self.0.pop().expect("one held");
            let key_len = set.key_len();
            let reply = set.write(&shared.cache, limits).await;
            reply.encode(proto, wbuf.buf());
            log(shared, logged, key_len, &reply, None);
            return;
        }
        if self.0.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.0);
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

//! One client connection: wait until bytes arrive, borrow a buffer and read them, run every
//! complete command in order, write all their replies with one write, and give the buffers
//! back unless a command is still partly read. An idle connection therefore holds no buffer.
//! A client silent for `resp.idle_timeout` is closed; on shutdown the commands already
//! received are answered before the connection closes.

use super::{
    cmd::{Command, Ctx},
    frame::{self, Frame},
    session::Session,
    Shared,
};
use crate::{buf::pool::Lease, shutdown::Shutdown};
use std::{io, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};

pub async fn serve(mut stream: TcpStream, shared: &Shared, shutdown: &Shutdown) {
    let mut session = Session::new(shared.next_id(), shared.requirepass.is_some());
    let mut rbuf = shared.buffers.lease();
    // Free space a read asks the kernel to fill, at least.
    let chunk = shared.buffers.buf_size();
    // One timer for the connection's life, re-armed only when it fires: activity just moves
    // `last_active`, so a busy connection does not touch the timer wheel per command.
    let idle = shared.idle_timeout.unwrap_or(Duration::MAX);
    let mut last_active = Instant::now();
    let idle_timer = tokio::time::sleep_until(deadline(last_active, idle));
    tokio::pin!(idle_timer);
    let stop = shutdown.wait();
    tokio::pin!(stop);

    loop {
        let stopping = tokio::select! {
            ready = stream.readable() => {
                if ready.is_err() {
                    return;
                }
                false
            }
            _ = &mut idle_timer => {
                if last_active.elapsed() >= idle {
                    shared.metrics.heartbeat_timeouts.inc();
                    return;
                }
                idle_timer.as_mut().reset(deadline(last_active, idle));
                continue;
            }
            // Answer what has already arrived, then close.
            _ = &mut stop => true,
        };
        let buf = rbuf.buf();
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        match stream.try_read_buf(buf) {
            Ok(0) => return,
            Ok(_) => last_active = Instant::now(),
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
        let Ok(close) = Box::pin(answer(&mut stream, &mut rbuf, &mut session, shared)).await else {
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

fn deadline(from: Instant, idle: Duration) -> Instant {
    from.checked_add(idle)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365))
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
    let close = run_buffered(rbuf, &mut wbuf, session, shared).await;
    if !wbuf.is_empty() {
        stream.write_all(wbuf.buf()).await?;
    }
    Ok(close)
}

/// Runs every complete command in `rbuf`, encoding replies into `wbuf`. True when the
/// connection must close after the replies are written (QUIT, or framing lost).
async fn run_buffered(
    rbuf: &mut Lease<'_>,
    wbuf: &mut Lease<'_>,
    session: &mut Session,
    shared: &Shared,
) -> bool {
    loop {
        let args = match frame::parse(rbuf.buf(), &shared.limits, &mut session.progress) {
            Ok(Some(args)) if args.is_empty() => continue,
            Ok(Some(args)) => args,
            Ok(None) => return false,
            Err(e) => {
                shared.metrics.resp_protocol_errors.inc();
                Frame::Error(format!("ERR {e}").into()).encode(session.proto, wbuf.buf());
                return true;
            }
        };
        shared.metrics.resp_commands.inc();
        let reply = match Command::from_args(args, session) {
            Err(reply) => reply,
            Ok(cmd) => {
                let mut ctx = Ctx {
                    shared,
                    session,
                    close: false,
                };
                let reply = cmd.apply(&mut ctx).await;
                if ctx.close {
                    reply.encode(session.proto, wbuf.buf());
                    return true;
                }
                reply
            }
        };
        reply.encode(session.proto, wbuf.buf());
    }
}

//! One client connection: read what has arrived, run every complete command in it in order,
//! write all their replies with one write, and wait for more. A client silent for
//! `resp.idle_timeout` is closed; on shutdown the commands already received are answered
//! before the connection closes.

use super::{
    cmd::{Command, Ctx},
    frame::{self, Frame},
    session::Session,
    Shared,
};
use crate::shutdown::Shutdown;
use bytes::BytesMut;
use std::time::Duration;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

/// Bytes a read asks the kernel for at least; a pipeline of small commands fits in one.
const READ_CHUNK: usize = 16 * 1024;

pub async fn serve(mut stream: TcpStream, shared: &Shared, shutdown: &Shutdown) {
    let mut session = Session::new(shared.next_id(), shared.requirepass.is_some());
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    // One timer for the connection's life, re-armed only when it fires: activity just moves
    // `last_active`, so a busy connection does not touch the timer wheel per command.
    let idle = shared.idle_timeout.unwrap_or(Duration::MAX);
    let mut last_active = Instant::now();
    let idle_timer = tokio::time::sleep_until(deadline(last_active, idle));
    tokio::pin!(idle_timer);
    let stop = shutdown.wait();
    tokio::pin!(stop);

    loop {
        let close = run_buffered(&mut rbuf, &mut wbuf, &mut session, shared).await;
        if !wbuf.is_empty() {
            if stream.write_all(&wbuf).await.is_err() {
                return;
            }
            wbuf.clear();
        }
        if close || shutdown.is_triggered() {
            return;
        }
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = stream.read_buf(&mut rbuf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => last_active = Instant::now(),
            },
            _ = &mut idle_timer => {
                if last_active.elapsed() >= idle {
                    shared.metrics.heartbeat_timeouts.inc();
                    return;
                }
                idle_timer.as_mut().reset(deadline(last_active, idle));
            }
            _ = &mut stop => {
                // Answer what has already arrived, then close.
                let _ = stream.try_read_buf(&mut rbuf);
            }
        }
    }
}

fn deadline(from: Instant, idle: Duration) -> Instant {
    from.checked_add(idle)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365))
}

/// Runs every complete command in `rbuf`, encoding replies into `wbuf`. True when the
/// connection must close after the replies are written (QUIT, or framing lost).
async fn run_buffered(
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    session: &mut Session,
    shared: &Shared,
) -> bool {
    loop {
        let args = match frame::parse(rbuf, &shared.limits) {
            Ok(Some(args)) if args.is_empty() => continue,
            Ok(Some(args)) => args,
            Ok(None) => return false,
            Err(e) => {
                shared.metrics.resp_protocol_errors.inc();
                Frame::Error(format!("ERR {e}").into()).encode(session.proto, wbuf);
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
                    reply.encode(session.proto, wbuf);
                    return true;
                }
                reply
            }
        };
        reply.encode(session.proto, wbuf);
    }
}

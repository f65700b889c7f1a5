//! Commands the door refuses by closing the connection, because running what the client sent
//! after them would do harm:
//! - an HTTP request sent to the RESP port (`POST`, `Host:`): a web page can make a browser
//!   send one, with Redis commands in its body (cross-protocol scripting). redis-server logs
//!   "possible security attack" and closes without a reply; so does tiergate.
//! - a command that opens connection state where this door cannot hold it: MULTI and WATCH
//!   (a transaction), SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE (pushes), blocking pops and
//!   `XREAD ... BLOCK`, CLIENT TRACKING in standalone mode and over TLS, and CLIENT TRACKING
//!   over a Redis Cluster (one Redis, or a cluster's masters, over TCP lend each such client a
//!   connection of its own: `resp::pinned`). Answered "unknown", the commands queued behind a
//!   MULTI would run one by one
//!   and a retry would apply them twice (redis-py's `pipeline()` sends MULTI, ..., EXEC in one
//!   write). The client gets an error naming the command, and the connection closes before
//!   any command behind it runs, as twemproxy does.

use super::is;
use crate::resp::frame::Frame;
use bytes::Bytes;
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Commands that open a transaction.
pub const TRANSACTIONAL: &[&str] = &["MULTI", "WATCH"];

/// Commands that subscribe: pushes follow.
pub const SUBSCRIBING: &[&str] = &["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"];

/// Commands that block their connection until something happens (and XREAD or XREADGROUP
/// with BLOCK: see `blocking`).
const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
];

/// The canonical name of a command that blocks its connection, if `args` is one.
pub fn blocking(args: &[Bytes]) -> Option<&'static str> {
    let name = &args[0];
    if let Some(&n) = BLOCKING.iter().find(|n| is(name, n)) {
        return Some(n);
    }
    // XREAD and XREADGROUP block only with a BLOCK option before STREAMS (after it come
    // keys, which may be named anything).
    let blocks = || {
        args.iter()
            .skip(1)
            .take_while(|a| !is(a, "streams"))
            .any(|a| is(a, "block"))
    };
    if is(name, "xread") && blocks() {
        return Some("XREAD BLOCK");
    }
    if is(name, "xreadgroup") && blocks() {
        return Some("XREADGROUP BLOCK");
    }
    None
}

pub enum Unservable {
    /// The first word of an HTTP request.
    CrossProtocol,
    /// A command that needs connection state; its canonical name.
    ConnectionState(&'static str),
}

impl Unservable {
    /// Whether `args` (a command this door does not serve) is one to close on. Asked only of
    /// commands no other lookup knows, so served commands pay nothing for it.
    pub fn recognise(args: &[Bytes]) -> Option<Self> {
        let name = &args[0];
        if is(name, "post") || is(name, "host:") {
            return Some(Unservable::CrossProtocol);
        }
        let stateful = TRANSACTIONAL
            .iter()
            .chain(SUBSCRIBING)
            .find(|n| is(name, n));
        if let Some(&n) = stateful {
            return Some(Unservable::ConnectionState(n));
        }
        blocking(args).map(Unservable::ConnectionState)
    }

    /// The reply before the close: none to an HTTP request, as from redis-server.
    pub fn reply(&self) -> Option<Frame> {
        match self {
            Unservable::CrossProtocol => {
                warn_cross_protocol();
                None
            }
            Unservable::ConnectionState(name) => Some(Frame::Error(
                format!(
                    "ERR {name} is not served by tiergate: it opens connection state \
                     (transactions, WATCH, subscriptions, blocking commands, CLIENT TRACKING) \
                     that this endpoint does not hold; the connection is closed so that no \
                     command sent after it runs"
                )
                .into(),
            )),
        }
    }
}

/// Logs a cross-protocol request at most once a minute, as redis-server does: each one is
/// worth knowing about, but a page that sends thousands must not flood the log.
fn warn_cross_protocol() {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "possible security attack: a client sent an HTTP request (POST or Host:) to the \
             RESP port, as a web page can make a browser do; connection closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::*;

    #[test]
    fn http_requests_and_stateful_commands_are_recognised() {
        assert!(matches!(
            Unservable::recognise(&args(&["POST", "/", "HTTP/1.1"])),
            Some(Unservable::CrossProtocol)
        ));
        assert!(matches!(
            Unservable::recognise(&args(&["Host:", "example.com"])),
            Some(Unservable::CrossProtocol)
        ));
        assert!(matches!(
            Unservable::recognise(&args(&["multi"])),
            Some(Unservable::ConnectionState("MULTI"))
        ));
        assert!(matches!(
            Unservable::recognise(&args(&[
                "XREAD", "COUNT", "1", "block", "0", "STREAMS", "s", "$"
            ])),
            Some(Unservable::ConnectionState("XREAD BLOCK"))
        ));
        assert!(Unservable::recognise(&args(&["XREAD", "STREAMS", "s", "0"])).is_none());
        assert!(Unservable::recognise(&args(&["XREAD", "STREAMS", "block", "0"])).is_none());
        assert!(Unservable::recognise(&args(&["HSET", "h", "f", "v"])).is_none());
        assert!(Unservable::recognise(&args(&["GET", "/"])).is_none());
    }
}

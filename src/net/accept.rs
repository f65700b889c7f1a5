//! The accept loop shared by the front doors: accepts until shutdown, backs off when the
//! process runs out of file descriptors instead of spinning, and hands each connection to
//! the door's handler.

use crate::shutdown::Shutdown;
use futures_util::FutureExt;
use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::net::{TcpListener, TcpStream};

/// Pause after an accept error caused by resource exhaustion (EMFILE, ENFILE, ENOMEM):
/// retrying at once would burn a core while nothing can succeed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most one "accept failed" warning this often per listener: out of fds, the loop fails
/// 20 times a second, and the log must say so once, not bury everything else.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(1);

/// One warning per `every` at most; the ones left out are counted into the next.
#[derive(Debug)]
struct WarnLimiter {
    every: Duration,
    /// No warning before this.
    next: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn new(every: Duration) -> Self {
        Self {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// Counts an event at `now`: Some(events left out since the last warning) when this
    /// one is to be logged.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// After the events stopped: Some(events left out and not yet reported) when there are
    /// some and a line may be logged at `now` (counted as one, so a flapping source still
    /// gets one line per `every`).
    fn flush(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || self.next.is_some_and(|next| now < next) {
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Accepts connections until `shutdown`, calling `on_conn` for each; returns after the
/// listener is closed so that no new connection can arrive during the drain. Connections
/// already in the accept queue at shutdown are taken too: closing a listener resets what is
/// queued on it, and under SO_REUSEPORT those are clients that chose this instance before it
/// began to drain.
pub async fn accept_loop<F>(
    listener: TcpListener,
    shutdown: &Shutdown,
    on_error: impl Fn(),
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr),
{
    let listen = listener
        .local_addr()
        .map_or_else(|_| String::new(), |a| a.to_string());
    let mut warn = WarnLimiter::new(ACCEPT_WARN_EVERY);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                if warn.suppressed > 0 {
                    if let Some(suppressed) = warn.flush(Instant::now()) {
                        tracing::info!(
                            %listen,
                            suppressed,
                            "accepting again; `suppressed` accept failures were not logged since the last warning"
                        );
                    }
                }
                on_conn(stream, peer)
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                on_error();
                if let Some(suppressed) = warn.due(Instant::now()) {
                    tracing::warn!(
                        %listen,
                        error = %e,
                        suppressed,
                        "accept failed; backing off 50ms each time (on EMFILE, too many open files: see the RLIMIT_NOFILE line logged at start). At most one such line a second per listener; `suppressed` counts those left out since the last, tiergate_accept_errors_total counts all"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    _ = shutdown.wait() => break,
                }
            }
        }
    }
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        on_conn(stream, peer);
    }
    drop(listener);
}

/// Errors that concern one connection (it was reset before we took it), not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_warnings_are_one_per_interval_with_a_count_of_the_rest() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = WarnLimiter::new(Duration::from_secs(1));
        assert_eq!(w.due(ms(0)), Some(0));
        // The backoff is 50ms: 19 more failures inside the second are left out.
        for i in 1..20 {
            assert_eq!(w.due(ms(i * 50)), None);
        }
        assert_eq!(w.due(ms(1000)), Some(19));
        assert_eq!(w.due(ms(1001)), None);
        // Once accepts succeed again, what was left out is reported, one line a second at
        // most however often failure and success alternate.
        assert_eq!(w.flush(ms(1500)), None);
        assert_eq!(w.due(ms(1600)), None);
        assert_eq!(w.flush(ms(2000)), Some(2));
        assert_eq!(w.flush(ms(2100)), None);
        assert_eq!(w.due(ms(2200)), None);
        assert_eq!(w.due(ms(5000)), Some(1));
        assert_eq!(w.flush(ms(7000)), None);
    }
}

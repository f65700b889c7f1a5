//! The accept loop shared by the front doors: accepts until shutdown, backs off when the
//! process runs out of file descriptors instead of spinning, and hands each connection to
//! the door's handler.

use crate::shutdown::Shutdown;
use futures_util::FutureExt;
use std::{io, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpStream};

/// Pause after an accept error caused by resource exhaustion (EMFILE, ENFILE, ENOMEM):
/// retrying at once would burn a core while nothing can succeed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => on_conn(stream, peer),
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                on_error();
                tracing::warn!(error = %e, "accept failed; backing off");
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

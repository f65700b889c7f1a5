//! How a connection to an upstream is made: TCP (the pool bounds how long), TCP_NODELAY, and
//! counted in its upstream's `tiergate_origin_connections` gauge while it is open.

use prometheus::IntGauge;
use std::io;
use tokio::net::TcpStream;

/// Connects to `authority` (port 80 when it names none), trying each address its host
/// resolves to until one answers.
pub async fn connect(authority: &http::uri::Authority, open: &IntGauge) -> io::Result<Counted> {
    // An IPv6 host comes bracketed ("[::1]"), which a resolver does not take.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let target = (host, authority.port_u16().unwrap_or(80));
    let stream = TcpStream::connect(target).await?;
    // Requests are small and answered at once: Nagle would hold the second segment.
    stream.set_nodelay(true)?;
    open.inc();
    Ok(Counted {
        stream,
        open: open.clone(),
    })
}

/// A connection that leaves its gauge when dropped.
pub struct Counted {
    pub stream: TcpStream,
    open: IntGauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

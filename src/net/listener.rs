//! Listening sockets with the options tokio's `TcpListener::bind` does not expose:
//! SO_REUSEPORT (a new instance binds while the old one drains), an explicit backlog,
//! and TCP_NODELAY inherited by every accepted socket.

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use std::{io, net::SocketAddr, time::Duration};
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
pub struct ListenOptions {
    pub backlog: u32,
    pub reuse_port: bool,
    /// TCP keepalive idle time for accepted sockets (None: off).
    pub keepalive: Option<Duration>,
}

/// Binds `addr` and starts listening. Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr, opts: ListenOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if opts.reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Linux copies TCP_NODELAY from the listener to accepted sockets: one syscall, not one per
    // connection. Replies are written whole, so Nagle would only add latency.
    socket.set_tcp_nodelay(true)?;
    // Keepalive settings are inherited the same way. Probes every sixth of the idle time (at
    // least 1s), three of them: a vanished peer is found within 1.5x the idle time.
    if let Some(idle) = opts.keepalive {
        let every = (idle / 6).max(Duration::from_secs(1));
        let ka = TcpKeepalive::new()
            .with_time(idle)
            .with_interval(every)
            .with_retries(3);
        socket.set_tcp_keepalive(&ka)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(opts.backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuse_port_lets_two_listeners_share_a_port_and_options_are_inherited() {
        let opts = ListenOptions {
            backlog: 16,
            reuse_port: true,
            keepalive: Some(Duration::from_secs(42)),
        };
        let a = bind("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        let b = bind(a.local_addr().unwrap(), opts).unwrap();
        assert_eq!(a.local_addr().unwrap(), b.local_addr().unwrap());
        let client = tokio::net::TcpStream::connect(a.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) =
            tokio::select! { r = a.accept() => r.unwrap(), r = b.accept() => r.unwrap() };
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY is inherited from the listener"
        );
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap(), "SO_KEEPALIVE is inherited");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        drop(client);
    }

    #[tokio::test]
    async fn without_reuse_port_a_second_bind_fails() {
        let opts = ListenOptions {
            backlog: 16,
            reuse_port: false,
            keepalive: None,
        };
        let a = bind("127.0.0.1:0".parse().unwrap(), opts).unwrap();
        assert!(bind(a.local_addr().unwrap(), opts).is_err());
    }
}

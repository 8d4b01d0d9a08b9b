//! Socket options of connections, accepted and made: `TCP_NODELAY`, TCP keepalive and buffer
//! sizes, as a listener or an upstream configures them (socket2 sets them; it covers every
//! option here).

use std::io;

use portico_config::SocketOptions;

/// Applies `TCP_NODELAY`, keepalive and buffer sizes to a socket. On a listening socket they
/// are inherited by every accepted connection (Linux copies them at accept), so accepting
/// costs no extra system call; on an upstream socket they apply to that connection.
pub fn apply(socket: &socket2::SockRef<'_>, o: &SocketOptions) -> io::Result<()> {
    socket.set_tcp_nodelay(o.nodelay)?;
    match &o.keepalive {
        Some(ka) => {
            let params = socket2::TcpKeepalive::new()
                .with_time(ka.idle)
                .with_interval(ka.interval)
                .with_retries(ka.count);
            socket.set_tcp_keepalive(&params)?;
            socket.set_keepalive(true)?;
        }
        None => socket.set_keepalive(false)?,
    }
    if let Some(n) = o.send_buffer {
        socket.set_send_buffer_size(n)?;
    }
    if let Some(n) = o.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    Ok(())
}

/// The same options for pingora's connector (HTTP/2 upstreams), which sets them itself.
pub fn for_peer(o: &SocketOptions, peer: &mut pingora_core::upstreams::peer::PeerOptions) {
    peer.tcp_keepalive = o
        .keepalive
        .map(|ka| pingora_core::protocols::l4::ext::TcpKeepalive {
            idle: ka.idle,
            interval: ka.interval,
            count: ka.count as usize,
            #[cfg(target_os = "linux")]
            user_timeout: std::time::Duration::ZERO,
        });
    peer.tcp_recv_buf = o.recv_buffer;
}

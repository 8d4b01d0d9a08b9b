//! Listening sockets: binding with the configured socket options (or adopting sockets handed
//! over by a previous process), and the accept loop with its connection limit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use portico_config::Listener;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{watch, Semaphore};

use super::conn::{serve, ListenerCtx};

/// `TCP_DEFER_ACCEPT` (seconds). Neither socket2 nor nix wraps it, hence the one raw call.
fn set_defer_accept(socket: &Socket, secs: u64) -> io::Result<()> {
    let v: libc::c_int = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, and a pointer to an int with its exact size, as
    // setsockopt(2) documents for TCP_DEFER_ACCEPT.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a listening socket for `l` with its socket options.
pub fn bind(l: &Listener) -> io::Result<std::net::TcpListener> {
    let addr = l.address;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if l.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // `[::]` takes IPv4 too unless configured otherwise; be explicit, whatever the
        // system default (net.ipv6.bindv6only) says.
        socket.set_only_v6(l.ipv6_only)?;
    }
    if l.freebind {
        if addr.is_ipv6() {
            socket.set_freebind_v6(true)?;
        } else {
            socket.set_freebind_v4(true)?;
        }
    }
    if let Some(n) = l.tcp_fastopen {
        pingora_core::protocols::l4::ext::set_tcp_fastopen_backlog(socket.as_raw_fd(), n)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    if let Some(t) = l.tcp_defer_accept {
        set_defer_accept(&socket, t.as_secs())?;
    }
    crate::sockopt::apply(&socket2::SockRef::from(&socket), &l.socket)?;
    socket.bind(&addr.into())?;
    socket.listen(l.backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Adopts a listening socket inherited from a previous process (graceful upgrade).
pub fn adopt(fd: RawFd, l: &Listener) -> io::Result<std::net::TcpListener> {
    // The fd was received over SCM_RIGHTS and belongs to this process from now on.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = Socket::from(owned);
    socket.set_nonblocking(true)?;
    // Re-applies the backlog and the connection options, as the configuration may have
    // changed them.
    crate::sockopt::apply(&socket2::SockRef::from(&socket), &l.socket)?;
    socket.listen(l.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Accepts connections until shutdown, never holding more than `limit`'s permits at once:
/// past the limit, new connections wait in the kernel's backlog instead of being refused.
///
/// Every worker thread runs one accept loop on (a duplicate of) the listening socket and
/// serves what it accepts itself: a connection's socket and its task then share one
/// runtime, so no readiness event ever has to wake another thread (handing accepted sockets
/// to a random runtime cost an eventfd write and a cross-thread wake-up per request). The
/// kernel gives each new connection to one of the waiting threads, the idlest first.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    local: SocketAddr,
    lctx: Arc<ListenerCtx>,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %lctx.name, error = %e, "cannot register the listening socket");
            return;
        }
    };
    let accepted = lctx
        .shared
        .metrics
        .listeners
        .connections_accepted
        .with_label_values(&[&lctx.name]);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accept = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        match accept {
            Ok((tcp, peer)) => {
                accepted.inc();
                let lctx = lctx.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(serve(tcp, peer, local, lctx, shutdown, permit));
            }
            Err(e) => {
                // Out of file descriptors: back off instead of spinning on accept().
                let exhausted = matches!(e.raw_os_error(), Some(libc_emfile) if libc_emfile == 24 || libc_emfile == 23);
                if exhausted {
                    tracing::warn!(listener = %lctx.name, error = %e, "accept failed: out of file descriptors");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!(listener = %lctx.name, error = %e, "accept failed");
                }
            }
        }
    }
    tracing::info!(listener = %lctx.name, "stopped accepting");
}

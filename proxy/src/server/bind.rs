//! Binding every socket before anything starts, so a taken port fails fast and clearly: the
//! listeners and the admin listener, taken over from a running Portico on a graceful upgrade
//! (by address) or bound anew, with a copy of each kept for the next handover.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::time::Duration;

use portico_config::Config;

use super::{listener, upgrade};

/// The sockets of a start.
pub(super) struct Bound {
    /// Each listener's socket and the address it got (port 0 resolved), in config order.
    pub listeners: Vec<(TcpListener, SocketAddr)>,
    /// The admin listener's socket.
    pub admin: Option<TcpListener>,
    /// Copies of every listening socket, keyed for the successor of an upgrade.
    pub handover: Vec<(String, OwnedFd)>,
}

/// Binds (or takes over, when `inherit`: `portico run --upgrade`) every socket the config
/// names. Sockets the old process sent that this config no longer names are closed.
pub(super) fn bind_all(config: &Config, inherit: bool) -> anyhow::Result<Bound> {
    // A graceful upgrade takes the running process's sockets before binding anything.
    let mut inherited = if inherit {
        upgrade::receive(&upgrade::socket_path(), Duration::from_secs(60)).map_err(|e| {
            eprintln!("portico: upgrade failed: {e:#}");
            super::Reported(1)
        })?
    } else {
        upgrade::Inherited::default()
    };
    let mut handover = Vec::new();
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = upgrade::key("listener", &l.address.to_string());
        let sock = match inherited.take(&key) {
            Some(fd) => listener::adopt(fd, l),
            None => listener::bind(l),
        }
        .map_err(|e| {
            anyhow::anyhow!(
                "listeners[{i}] ({}): cannot listen on {}: {e}",
                l.name,
                l.address
            )
        })?;
        handover.push((key, sock.try_clone()?.into()));
        let local: SocketAddr = sock.local_addr()?;
        tracing::info!(listener = %l.name, address = %local, tls = l.tls.is_some(), "listening");
        listeners.push((sock, local));
    }
    let admin = match &config.admin {
        Some(a) => {
            let l = admin_listener(a.address);
            let key = upgrade::key("admin", &a.address.to_string());
            let sock = match inherited.take(&key) {
                Some(fd) => listener::adopt(fd, &l),
                None => listener::bind(&l),
            }
            .map_err(|e| anyhow::anyhow!("admin: cannot listen on {}: {e}", a.address))?;
            handover.push((key, sock.try_clone()?.into()));
            let local = sock.local_addr()?;
            tracing::info!(address = %local, "admin listening");
            Some(sock)
        }
        None => None,
    };
    inherited.close_rest();
    Ok(Bound {
        listeners,
        admin,
        handover,
    })
}

/// The socket settings of the admin listener: plain, small, no PROXY protocol.
fn admin_listener(address: SocketAddr) -> portico_config::Listener {
    portico_config::Listener {
        name: "admin".into(),
        address,
        tls: None,
        force_https: false,
        https_port: None,
        redirect_status: None,
        h2c: false,
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        min_body_rate: None,
        max_header_size: 8192,
        max_requests_per_connection: None,
        reuse_port: false,
        backlog: 128,
        tcp_fastopen: None,
        socket: portico_config::SocketOptions::default(),
        tcp_defer_accept: None,
        ipv6_only: false,
        freebind: false,
        ip_rules: portico_config::IpRules::default(),
        max_connections_per_ip: None,
        proxy_protocol_from: Vec::new(),
    }
}

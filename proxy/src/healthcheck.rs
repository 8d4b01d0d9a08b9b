//! `portico healthcheck`: a probe of a running Portico for container `HEALTHCHECK`s and
//! scripts, so images need no curl. It asks the admin listener's `/healthz` (open even when the
//! admin has a token) and expects `200`; without an admin listener it checks that the first
//! proxy listener accepts a TCP connection. Written with std's blocking sockets: one request,
//! no runtime to start.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::load::ConfigChoice;

/// Where to send the probe: a wildcard bind address is probed on loopback.
fn probe_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// GETs `/healthz` on `addr`; `Ok` when the answer is `200`.
pub fn healthz(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    // Host names the admin by address literal, which the admin's rebinding check accepts.
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("{addr}: /healthz answered {code}")),
        None => Err(format!("{addr}: no HTTP answer")),
    }
}

/// Runs the probe; returns the exit code (0 healthy, 1 not).
pub fn main(choice: ConfigChoice, address: Option<&str>, timeout: Duration) -> i32 {
    let result = match address {
        Some(a) => match a.to_socket_addrs().map(|mut it| it.next()) {
            Ok(Some(addr)) => healthz(addr, timeout).map(|()| format!("{addr}: healthy")),
            Ok(None) | Err(_) => Err(format!("--address {a}: not a host:port")),
        },
        None => match crate::load::load_config(choice.path.as_deref()) {
            Err(e) => Err(format!("the config ({}) is invalid:\n{e}", choice.from)),
            Ok(loaded) => {
                let c = &loaded.config;
                if let Some(admin) = &c.admin {
                    let addr = probe_address(admin.address);
                    healthz(addr, timeout).map(|()| format!("admin {addr}: healthy"))
                } else if let Some(l) = c.listeners.first() {
                    let addr = probe_address(l.address);
                    TcpStream::connect_timeout(&addr, timeout)
                        .map(|_| format!("listener {} {addr}: accepting", l.name))
                        .map_err(|e| format!("listener {} {addr}: {e}", l.name))
                } else {
                    Err("the config has no listener to probe".into())
                }
            }
        },
    };
    match result {
        Ok(m) => {
            println!("{m}");
            0
        }
        Err(e) => {
            eprintln!("portico healthcheck: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_probed_on_loopback() {
        let a: SocketAddr = "0.0.0.0:9901".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(probe_address(a).to_string(), "127.0.0.1:9901");
        let a: SocketAddr = "[::]:80".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(probe_address(a).to_string(), "[::1]:80");
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(probe_address(a), a);
    }
}

//! What the network answers: name servers reachable, backends accepting connections.

use std::net::SocketAddr;
use std::time::Duration;

use portico_config::{BackendAddr, Config};

use super::*;

/// DNS discovery names answer, and every backend accepts a TCP connection.
pub async fn network(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut targets: Vec<(String, SocketAddr)> = Vec::new();
    let wants_dns = cfg.upstreams.iter().any(|u| {
        !u.discovery.is_empty()
            || u.backends
                .iter()
                .any(|b| matches!(b.address, BackendAddr::Name { .. }))
    });
    let dns = if wants_dns {
        match crate::discovery::resolve::Dns::new(&cfg.dns) {
            Ok(d) => Some(d),
            Err(e) => {
                out.push(
                    Finding::new("dns", Status::Fix, e)
                        .fix("check /etc/resolv.conf or [dns] servers"),
                );
                None
            }
        }
    } else {
        None
    };
    let servers = if cfg.dns.servers.is_empty() {
        "the system resolver".to_string()
    } else {
        cfg.dns
            .servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for u in &cfg.upstreams {
        for b in &u.backends {
            match &b.address {
                BackendAddr::Ip(a) => targets.push((format!("upstream {}", u.name), *a)),
                BackendAddr::Name { host, port } => {
                    let Some(dns) = &dns else { continue };
                    let check = format!("dns {host}");
                    match dns.ips(host).await {
                        Ok(a) => {
                            out.push(Finding::new(
                                check,
                                Status::Ok,
                                format!("{} address(es) from {servers}", a.values.len()),
                            ));
                            targets.extend(a.values.into_iter().map(|ip| {
                                (format!("upstream {}", u.name), SocketAddr::new(ip, *port))
                            }));
                        }
                        Err(e) => out.push(
                            Finding::new(check, Status::Fix, format!("{e} (asked {servers})"))
                                .fix("check the name and the DNS servers ([dns] servers)"),
                        ),
                    }
                }
            }
        }
        for d in &u.discovery {
            let Some(dns) = &dns else { continue };
            let check = format!("dns {d}");
            match crate::discovery::resolve_once(dns, d).await {
                Ok(addrs) => {
                    out.push(Finding::new(
                        check,
                        Status::Ok,
                        format!("{} backend(s) from {servers}", addrs.len()),
                    ));
                    targets.extend(
                        addrs
                            .into_iter()
                            .map(|a| (format!("upstream {}", u.name), a)),
                    );
                }
                Err(e) => out.push(
                    Finding::new(check, Status::Fix, format!("{e} (asked {servers})"))
                        .fix("check the name and the DNS servers ([dns] servers)"),
                ),
            }
        }
    }
    // Connect to every backend at once, each within its upstream's connect timeout.
    let timeout = Duration::from_secs(3);
    let probes = targets.into_iter().map(|(name, addr)| async move {
        let r = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
        (name, addr, r)
    });
    for (name, addr, r) in futures::future::join_all(probes).await {
        let check = format!("{name} {addr}");
        match r {
            Ok(Ok(_)) => out.push(Finding::new(check, Status::Ok, "accepts connections")),
            Ok(Err(e)) => out.push(
                Finding::new(check, Status::Fix, format!("cannot connect: {e}"))
                    .fix("start the backend, or fix its address in the config"),
            ),
            Err(_) => out.push(
                Finding::new(check, Status::Fix, format!("no answer within {timeout:?}"))
                    .fix("check firewalls and routes between this host and the backend"),
            ),
        }
    }
    out
}

//! Whether the process may bind the ports the config names (privileged ports need root or
//! `CAP_NET_BIND_SERVICE`).

use std::net::SocketAddr;

use portico_config::Config;

use super::*;

/// What this process may bind.
#[derive(Debug, Clone, Copy)]
pub struct Privileges {
    /// Running as root.
    pub root: bool,
    /// `CAP_NET_BIND_SERVICE` is in the effective set.
    pub net_bind_service: bool,
    /// `net.ipv4.ip_unprivileged_port_start` (1024 by default).
    pub unprivileged_port_start: u16,
}

impl Privileges {
    /// This process's privileges.
    pub fn current(sys: &Sysctl) -> Self {
        // CapEff is a hex mask; CAP_NET_BIND_SERVICE is bit 10.
        let cap_eff = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
            })
            .unwrap_or(false);
        Self {
            root: uid,
            net_bind_service: cap_eff & (1 << 10) != 0,
            unprivileged_port_start: sys
                .number("net.ipv4.ip_unprivileged_port_start")
                .and_then(|v| u16::try_from(v).ok())
                .unwrap_or(1024),
        }
    }
}

/// Ports below `ip_unprivileged_port_start` need root or `CAP_NET_BIND_SERVICE`.
pub fn ports(cfg: &Config, p: Privileges) -> Vec<Finding> {
    let mut addrs: Vec<(String, SocketAddr)> = cfg
        .listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.address))
        .collect();
    if let Some(a) = &cfg.admin {
        addrs.push(("admin".into(), a.address));
    }
    addrs
        .into_iter()
        .filter(|(_, a)| a.port() != 0 && a.port() < p.unprivileged_port_start)
        .map(|(name, a)| {
            if p.root || p.net_bind_service {
                Finding::new(
                    name,
                    Status::Ok,
                    format!("port {} is privileged; this user may bind it", a.port()),
                )
            } else {
                Finding::new(
                    name,
                    Status::Fix,
                    format!(
                        "port {} is below {} and this user has neither root nor CAP_NET_BIND_SERVICE",
                        a.port(),
                        p.unprivileged_port_start
                    ),
                )
                .fix(
                    "run as the systemd unit (AmbientCapabilities=CAP_NET_BIND_SERVICE), or \
                     `setcap cap_net_bind_service=+ep $(command -v portico)`, or \
                     `sysctl -w net.ipv4.ip_unprivileged_port_start=80`",
                )
            }
        })
        .collect()
}

//! Kernel and process limits: open files, accept queues, local ports, and the `sysctl`
//! lines that fix them. Read from a [`Sysctl`] root so tests use fake trees.

use std::path::PathBuf;

use portico_config::{BackendAddr, Config};

use super::*;

/// Reads kernel settings under a `/proc/sys` root.
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Sysctl {
    /// Kernel settings under `root` (`/proc/sys` on a real host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace('.', "/"))
    }

    /// The value of `key` (`net.core.somaxconn`), trimmed; `None` when absent or unreadable.
    pub fn get(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path(key))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub(super) fn number(&self, key: &str) -> Option<u64> {
        self.get(key)?.split_whitespace().next()?.parse().ok()
    }
}

/// What the config asks of the host.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// Client connections the listeners may hold at once (`max_connections` summed).
    pub connections: u64,
    /// Descriptors for those: two per proxied connection (client and upstream) plus room for
    /// listeners, the admin, logs, DNS and idle upstream connections.
    pub descriptors: u64,
    /// The deepest listen backlog configured.
    pub backlog: u64,
}

/// Room for everything that is not a proxied connection.
const SPARE_DESCRIPTORS: u64 = 256;

impl Needs {
    /// What `cfg` needs.
    pub fn of(cfg: &Config) -> Self {
        let connections: u64 = cfg.listeners.iter().map(|l| l.max_connections as u64).sum();
        Self {
            connections,
            descriptors: connections * 2 + SPARE_DESCRIPTORS,
            backlog: cfg
                .listeners
                .iter()
                .map(|l| u64::from(l.backlog))
                .max()
                .unwrap_or(0),
        }
    }
}

fn sysctl_fix(key: &str, value: impl std::fmt::Display) -> String {
    format!(
        "sysctl -w {key}={value}  (to keep it across reboots: \
         echo '{key} = {value}' >> /etc/sysctl.d/99-portico.conf)"
    )
}

/// The open-files limit: Portico raises its soft limit to the hard limit (or
/// `max_open_files`) at start, so the hard limit is what counts.
pub fn open_files(soft: u64, hard: u64, max_open_files: Option<u64>, needs: Needs) -> Finding {
    let reachable = max_open_files.unwrap_or(hard).min(hard);
    let detail = format!(
        "soft {soft}, hard {hard}; Portico will run with {reachable}; the config needs {} ({} connections x 2 + {SPARE_DESCRIPTORS})",
        needs.descriptors, needs.connections
    );
    if reachable >= needs.descriptors {
        return Finding::new("open files", Status::Ok, detail);
    }
    let fix = if max_open_files.is_some_and(|m| m < needs.descriptors && m <= hard) {
        format!(
            "raise [server] max_open_files to at least {}",
            needs.descriptors
        )
    } else {
        format!(
            "raise the hard limit to at least {n}: LimitNOFILE={n} in the systemd unit, \
             `ulimit -Hn {n}` before starting from a shell, or ulimits: nofile in compose",
            n = needs.descriptors
        )
    };
    Finding::new("open files", Status::Fix, detail).fix(fix)
}

/// A numeric setting that must be at least `want` (raised to `set_to` by the fix); `None`
/// when this kernel does not have it.
fn at_least(
    sys: &Sysctl,
    key: &str,
    want: u64,
    set_to: u64,
    why: impl FnOnce(u64) -> String,
) -> Option<Finding> {
    let v = sys.number(key)?;
    Some(if v >= want {
        Finding::new(key, Status::Ok, v.to_string())
    } else {
        Finding::new(key, Status::Fix, why(v)).fix(sysctl_fix(key, set_to))
    })
}

/// The kernel settings a busy proxy depends on.
pub fn kernel(sys: &Sysctl, cfg: &Config, needs: Needs) -> Vec<Finding> {
    let mut out = Vec::new();
    // Whole-system descriptors: every process shares fs.file-max.
    out.extend(at_least(
        sys,
        "fs.file-max",
        needs.descriptors,
        needs.descriptors.max(1_048_576),
        |v| {
            format!(
                "{v}, below the {} descriptors the config needs",
                needs.descriptors
            )
        },
    ));
    // No per-process limit can be raised above fs.nr_open.
    out.extend(at_least(
        sys,
        "fs.nr_open",
        needs.descriptors,
        needs.descriptors.max(1_048_576),
        |v| {
            format!(
                "{v}: no process can hold the {} descriptors the config needs",
                needs.descriptors
            )
        },
    ));
    // listen(2) silently caps the backlog at somaxconn.
    out.extend(at_least(sys, "net.core.somaxconn", needs.backlog, needs.backlog, |v| {
        format!(
            "{v}: the kernel caps the configured listen backlog ({}) at this; bursts beyond it are dropped",
            needs.backlog
        )
    }));
    // Half-open connections waiting for the handshake; 4096 covers bursts of a few thousand
    // new connections (SYN cookies take over past it, losing TCP options).
    let syn = needs.backlog.min(4096);
    out.extend(at_least(
        sys,
        "net.ipv4.tcp_max_syn_backlog",
        syn,
        syn,
        |v| format!("{v}: connection bursts above it fall back to SYN cookies"),
    ));
    // Every upstream connection takes a local port per backend address; the range bounds
    // the connections to one backend.
    if let Some(v) = sys.get("net.ipv4.ip_local_port_range") {
        let key = "net.ipv4.ip_local_port_range";
        let mut it = v.split_whitespace().filter_map(|n| n.parse::<u64>().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            let size = hi.saturating_sub(lo) + 1;
            let want = needs.connections.min(28_232);
            if size >= want {
                out.push(Finding::new(
                    key,
                    Status::Ok,
                    format!("{lo}-{hi} ({size} ports per backend address)"),
                ));
            } else {
                out.push(
                    Finding::new(
                        key,
                        Status::Fix,
                        format!(
                            "{lo}-{hi}: {size} ports, fewer than the {want} upstream connections one backend may need"
                        ),
                    )
                    .fix(sysctl_fix(key, "\"1024 65535\"")),
                );
            }
        }
    }
    // Closed upstream connections sit in TIME_WAIT holding their port for 60 s; reuse lets new
    // outgoing connections take them (safe with timestamps, the default).
    if let Some(v) = sys.number("net.ipv4.tcp_tw_reuse") {
        let key = "net.ipv4.tcp_tw_reuse";
        let upstreams_off_loopback = cfg.upstreams.iter().any(|u| {
            !u.discovery.is_empty()
                || u.backends.iter().any(|b| match &b.address {
                    BackendAddr::Ip(a) => !a.ip().is_loopback(),
                    BackendAddr::Name { .. } => true,
                })
        });
        match v {
            1 => out.push(Finding::new(key, Status::Ok, "1")),
            2 if !upstreams_off_loopback => out.push(Finding::new(
                key,
                Status::Ok,
                "2 (loopback only; every configured backend is on loopback)",
            )),
            _ => out.push(
                Finding::new(
                    key,
                    Status::Fix,
                    format!(
                        "{v}: upstream connections closed by Portico hold their local port in TIME_WAIT for 60 s{}",
                        if v == 2 { " (2 allows reuse on loopback only)" } else { "" }
                    ),
                )
                .fix(sysctl_fix(key, 1)),
            ),
        }
    }
    // TCP Fast Open on a listener needs the server bit (2) of the sysctl.
    let tfo: Vec<&str> = cfg
        .listeners
        .iter()
        .filter(|l| l.tcp_fastopen.is_some())
        .map(|l| l.name.as_str())
        .collect();
    if let Some(v) = sys.number("net.ipv4.tcp_fastopen") {
        let key = "net.ipv4.tcp_fastopen";
        if tfo.is_empty() {
            out.push(Finding::new(
                key,
                Status::Info,
                format!("{v}; no listener sets tcp_fastopen"),
            ));
        } else if v & 2 != 0 {
            out.push(Finding::new(
                key,
                Status::Ok,
                format!("{v} (server side on)"),
            ));
        } else {
            out.push(
                Finding::new(
                    key,
                    Status::Fix,
                    format!(
                        "{v}: listeners {} set tcp_fastopen but the kernel's server side is off",
                        tfo.join(", ")
                    ),
                )
                .fix(sysctl_fix(key, v | 3)),
            );
        }
    }
    // Connection tracking (when loaded) keeps an entry per connection, both sides.
    let tracked = needs.connections * 2;
    out.extend(at_least(sys, "net.netfilter.nf_conntrack_max", tracked, tracked.max(262_144), |v| {
        format!("{v}: below the {tracked} tracked connections (client + upstream) the config allows; new connections are dropped when the table is full")
    }));
    out
}

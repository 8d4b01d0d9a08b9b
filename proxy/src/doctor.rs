//! `portico doctor`: checks the host and the config for what limits a proxy, and prints each
//! finding with its fix and the exact command.
//!
//! A proxy needs two descriptors per proxied connection (client and upstream), an accept queue
//! as deep as its bursts, local ports for upstream connections, and the rights to bind its
//! ports. Linux defaults (1,024 descriptors, small queues) cap it near a thousand connections
//! whatever the hardware. Each check reads the running kernel (`/proc/sys`, rlimits,
//! capabilities) or the network (DNS servers, backends) and compares it with what the config
//! asks for; the thresholds and why are next to each check.
//!
//! Exit status: 0 when nothing needs fixing, 1 when something does, 2 for an invalid config.
//! The kernel-facing checks take a [`Sysctl`] root so tests run them against fake trees.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use portico_config::{BackendAddr, Config};
use serde::Serialize;

use crate::load::ConfigChoice;

/// How a finding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Something to fix (the exit status becomes 1).
    Fix,
    /// Could not be checked, or only worth knowing.
    Info,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (a sysctl name, "open files", "listener web", ...).
    pub check: String,
    /// How it stands.
    pub status: Status,
    /// What was found, with the numbers.
    pub detail: String,
    /// What to do, with the exact command; `None` when nothing is to be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

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

    fn number(&self, key: &str) -> Option<u64> {
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

/// Certificates that are expired or expire within `soon`.
pub fn certificates(cfg: &Config, now: SystemTime, soon: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        for paths in &t.certificates {
            let check = format!("certificate {}", paths.cert.display());
            match crate::tls::load_pair(paths) {
                Err(e) => out.push(Finding::new(check, Status::Fix, e.message)),
                Ok(c) => match c.not_after {
                    None => out.push(Finding::new(check, Status::Info, "expiry unreadable")),
                    Some(end) => {
                        let names = c.names.join(", ");
                        match end.duration_since(now) {
                            Err(_) => out.push(
                                Finding::new(
                                    check,
                                    Status::Fix,
                                    format!("expired {} ({names})", httpdate::fmt_http_date(end)),
                                )
                                .fix("replace the certificate; `portico` reloads it on SIGHUP"),
                            ),
                            Ok(left) if left < soon => out.push(
                                Finding::new(
                                    check,
                                    Status::Fix,
                                    format!(
                                        "expires in {} day(s), {} ({names})",
                                        left.as_secs() / 86_400,
                                        httpdate::fmt_http_date(end)
                                    ),
                                )
                                .fix("renew the certificate; `portico` reloads it on SIGHUP"),
                            ),
                            Ok(left) => out.push(Finding::new(
                                check,
                                Status::Ok,
                                format!(
                                    "valid for {} more day(s) ({names})",
                                    left.as_secs() / 86_400
                                ),
                            )),
                        }
                    }
                },
            }
        }
    }
    out
}

/// ACME hosts: the stored certificate missing (obtained at start), unusable, expired or
/// a third of the way through its renewal window without a renewal (renewal is failing), and
/// a storage directory Portico cannot write.
pub fn acme_certificates(cfg: &Config, now: SystemTime) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            continue;
        };
        if let Err(why) = writable(&a.storage) {
            out.push(
                Finding::new(
                    format!("acme storage {}", a.storage.display()),
                    Status::Fix,
                    why,
                )
                .fix("give the user Portico runs as write access to it (the systemd unit's StateDirectory does), or set tls.acme.storage"),
            );
        }
        for host in &a.hosts {
            let check = format!("acme certificate {host}");
            let f = match crate::acme::stored(a, host) {
                Ok(None) => Finding::new(
                    check,
                    Status::Info,
                    format!(
                        "none stored yet: obtained from {} at start ({})",
                        a.directory,
                        a.challenge.as_str()
                    ),
                ),
                Err(e) => Finding::new(check, Status::Fix, e)
                    .fix("remove the file; Portico orders a new certificate at start"),
                Ok(Some(h)) => {
                    let window = h.not_after.duration_since(h.renew_at()).unwrap_or_default();
                    let failing = now > h.renew_at() + window / 3;
                    match h.not_after.duration_since(now) {
                    Err(_) => Finding::new(
                        check,
                        Status::Fix,
                        format!("expired {}", httpdate::fmt_http_date(h.not_after)),
                    )
                    .fix("Portico orders a new one while running: see `acme` in the admin /status for the last error"),
                    Ok(left) if failing => Finding::new(
                        check,
                        Status::Fix,
                        format!(
                            "expires in {} day(s), {}: renewal is not succeeding",
                            left.as_secs() / 86_400,
                            httpdate::fmt_http_date(h.not_after)
                        ),
                    )
                    .fix("see `acme` in the admin /status for the last error (DNS of the host, port 80/443 reachable from the CA, CA rate limits)"),
                    Ok(left) => Finding::new(
                        check,
                        Status::Ok,
                        format!("valid for {} more day(s)", left.as_secs() / 86_400),
                    ),
                    }
                }
            };
            out.push(f);
        }
    }
    out
}

/// Whether `dir` can be written (or created) by this process.
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    nix::unistd::access(
        probe,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        if probe == dir {
            format!("not writable by this user: {e}")
        } else {
            format!(
                "missing, and {} is not writable by this user: {e}",
                probe.display()
            )
        }
    })
}

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

/// Every check against this host.
pub fn run_all(cfg: &Config) -> Vec<Finding> {
    let sys = Sysctl::new("/proc/sys");
    let needs = Needs::of(cfg);
    let mut out = Vec::new();
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => out.push(open_files(soft, hard, cfg.server.max_open_files, needs)),
        Err(e) => out.push(Finding::new(
            "open files",
            Status::Info,
            format!("unreadable: {e}"),
        )),
    }
    out.extend(kernel(&sys, cfg, needs));
    out.extend(ports(cfg, Privileges::current(&sys)));
    out.extend(certificates(
        cfg,
        SystemTime::now(),
        Duration::from_secs(30 * 86_400),
    ));
    out.extend(acme_certificates(cfg, SystemTime::now()));
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => out.extend(rt.block_on(network(cfg))),
        Err(e) => out.push(Finding::new(
            "network",
            Status::Info,
            format!("not checked: {e}"),
        )),
    }
    out
}

fn print_text(source: &str, from: &str, findings: &[Finding]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "portico doctor: {source} (config from {from})");
    for f in findings {
        let tag = match f.status {
            Status::Ok => "ok  ",
            Status::Fix => "FIX ",
            Status::Info => "info",
        };
        let _ = writeln!(s, "  {tag} {}: {}", f.check, f.detail);
        if let Some(fix) = &f.fix {
            let _ = writeln!(s, "       fix: {fix}");
        }
    }
    let n = findings.iter().filter(|f| f.status == Status::Fix).count();
    if n == 0 {
        let _ = writeln!(s, "nothing to fix");
    } else {
        let _ = writeln!(s, "{n} thing(s) to fix");
    }
    s
}

/// `portico doctor`: returns the exit code.
pub fn main(choice: ConfigChoice, json: bool) -> i32 {
    let loaded = match crate::load::load_config(choice.path.as_deref()) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("portico doctor: the config ({}) is invalid", choice.from);
            return 2;
        }
    };
    let cfg = &loaded.config;
    let findings = run_all(cfg);
    let fixes = findings.iter().filter(|f| f.status == Status::Fix).count();
    let out = if json {
        let v = serde_json::json!({
            "config": cfg.source_name,
            "config_from": choice.from,
            "to_fix": fixes,
            "findings": findings,
        });
        format!("{v:#}\n")
    } else {
        print_text(&cfg.source_name, choice.from, &findings)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    i32::from(fixes > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(extra_listener: &str) -> Config {
        let text = format!(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:80"
max_connections = 20000
{extra_listener}

[upstreams.app]
backends = ["10.0.0.5:3000"]

[[routes]]
upstream = "app"
"#
        );
        portico_config::parse(&text, "t.toml", None, &portico_config::ProcessEnv)
            .map(|l| l.config)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fake `/proc/sys` with `values`.
    fn tree(values: &[(&str, &str)]) -> (tempfile::TempDir, Sysctl) {
        let dir = tempfile::tempdir().unwrap();
        for (k, v) in values {
            let p = dir.path().join(k.replace('.', "/"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        let s = Sysctl::new(dir.path());
        (dir, s)
    }

    fn status_of<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter()
            .find(|x| x.check == check)
            .unwrap_or_else(|| panic!("no finding {check} in {f:?}"))
    }

    #[test]
    fn a_debian_default_host_is_told_what_to_raise() {
        let cfg = config("");
        let needs = Needs::of(&cfg);
        assert_eq!(needs.connections, 20_000);
        assert_eq!(needs.descriptors, 40_256);
        let (_d, sys) = tree(&[
            ("fs.file-max", "9223372036854775807"),
            ("fs.nr_open", "1048576"),
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "512"),
            ("net.ipv4.ip_local_port_range", "32768\t60999"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            ("net.ipv4.tcp_fastopen", "1"),
        ]);
        let f = kernel(&sys, &cfg, needs);
        assert_eq!(status_of(&f, "fs.file-max").status, Status::Ok);
        assert_eq!(status_of(&f, "fs.nr_open").status, Status::Ok);
        let s = status_of(&f, "net.core.somaxconn");
        assert_eq!(s.status, Status::Fix);
        assert!(s
            .fix
            .as_deref()
            .unwrap()
            .contains("sysctl -w net.core.somaxconn=65535"));
        let s = status_of(&f, "net.ipv4.tcp_max_syn_backlog");
        assert_eq!(s.status, Status::Fix);
        assert!(s.fix.as_deref().unwrap().contains("=4096"));
        // 28,232 ports cover the 20,000 connections.
        assert_eq!(
            status_of(&f, "net.ipv4.ip_local_port_range").status,
            Status::Ok
        );
        // The backend is off loopback, so loopback-only reuse is not enough.
        let s = status_of(&f, "net.ipv4.tcp_tw_reuse");
        assert_eq!(s.status, Status::Fix);
        assert!(s.detail.contains("loopback only"));
        // No listener asks for fast open: worth knowing, not a fix.
        assert_eq!(status_of(&f, "net.ipv4.tcp_fastopen").status, Status::Info);
        // No conntrack module loaded: no finding at all.
        assert!(f.iter().all(|x| !x.check.contains("conntrack")));
    }

    #[test]
    fn a_tuned_host_needs_nothing() {
        let cfg = config("tcp_fastopen = 256");
        let (_d, sys) = tree(&[
            ("fs.file-max", "2000000"),
            ("fs.nr_open", "1048576"),
            ("net.core.somaxconn", "65535"),
            ("net.ipv4.tcp_max_syn_backlog", "8192"),
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.tcp_fastopen", "3"),
            ("net.netfilter.nf_conntrack_max", "262144"),
        ]);
        let f = kernel(&sys, &cfg, Needs::of(&cfg));
        assert!(f.iter().all(|x| x.status == Status::Ok), "{f:#?}");
        assert_eq!(f.len(), 8);
    }

    #[test]
    fn the_shipped_sysctl_drop_in_satisfies_every_check() {
        // systemd/99-portico.conf, as `sysctl --system` would apply it, with the default config.
        let text = include_str!("../../systemd/99-portico.conf");
        let values: Vec<(&str, &str)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.trim(), v.trim())
            })
            .collect();
        assert!(values.len() >= 7);
        let (_d, sys) = tree(&values);
        let cfg = config("tcp_fastopen = 256");
        let f = kernel(&sys, &cfg, Needs::of(&cfg));
        assert!(f.iter().all(|x| x.status == Status::Ok), "{f:#?}");
        assert_eq!(f.len(), values.len());
    }

    #[test]
    fn small_tables_and_fast_open_off_are_found() {
        let cfg = config("tcp_fastopen = 256");
        let (_d, sys) = tree(&[
            ("fs.file-max", "10000"),
            ("fs.nr_open", "4096"),
            ("net.ipv4.ip_local_port_range", "60000 61000"),
            ("net.ipv4.tcp_fastopen", "1"),
            ("net.netfilter.nf_conntrack_max", "20000"),
            ("net.ipv4.tcp_tw_reuse", "0"),
        ]);
        let f = kernel(&sys, &cfg, Needs::of(&cfg));
        for k in [
            "fs.file-max",
            "fs.nr_open",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_fastopen",
            "net.netfilter.nf_conntrack_max",
            "net.ipv4.tcp_tw_reuse",
        ] {
            let s = status_of(&f, k);
            assert_eq!(s.status, Status::Fix, "{k}: {s:?}");
            assert!(s.fix.as_deref().unwrap().starts_with("sysctl -w "), "{s:?}");
        }
        assert!(status_of(&f, "net.ipv4.tcp_fastopen")
            .fix
            .as_deref()
            .unwrap()
            .contains("tcp_fastopen=3"));
    }

    #[test]
    fn open_files_counts_two_per_connection() {
        let cfg = config("");
        let needs = Needs::of(&cfg);
        let f = open_files(1024, 1_048_576, None, needs);
        assert_eq!(f.status, Status::Ok, "the soft limit is raised at start");
        let f = open_files(1024, 4096, None, needs);
        assert_eq!(f.status, Status::Fix);
        assert!(f.fix.as_deref().unwrap().contains("LimitNOFILE=40256"));
        let f = open_files(1024, 1_048_576, Some(10_000), needs);
        assert_eq!(f.status, Status::Fix);
        assert!(f.fix.as_deref().unwrap().contains("max_open_files"));
    }

    #[test]
    fn privileged_ports_need_a_capability() {
        let cfg = config("");
        let user = Privileges {
            root: false,
            net_bind_service: false,
            unprivileged_port_start: 1024,
        };
        let f = ports(&cfg, user);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Fix);
        assert!(f[0]
            .fix
            .as_deref()
            .unwrap()
            .contains("CAP_NET_BIND_SERVICE"));
        let capable = Privileges {
            net_bind_service: true,
            ..user
        };
        assert_eq!(ports(&cfg, capable)[0].status, Status::Ok);
        let lowered = Privileges {
            unprivileged_port_start: 80,
            ..user
        };
        assert!(ports(&cfg, lowered).is_empty());
    }

    #[test]
    fn certificates_near_expiry_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["example.test".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(10);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let extra = format!(
            "tls = {{ certificates = [{{ cert = \"{0}/c.pem\", key = \"{0}/k.pem\" }}] }}",
            dir.path().display()
        );
        let cfg = config(&extra);
        let month = Duration::from_secs(30 * 86_400);
        let f = certificates(&cfg, SystemTime::now(), month);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].status, Status::Fix, "{f:?}");
        assert!(
            f[0].detail.contains("expires in 9 day(s)")
                || f[0].detail.contains("expires in 10 day(s)"),
            "{f:?}"
        );
        let f = certificates(&cfg, SystemTime::now(), Duration::from_secs(86_400));
        assert_eq!(f[0].status, Status::Ok);
        let later = SystemTime::now() + Duration::from_secs(20 * 86_400);
        let f = certificates(&cfg, later, month);
        assert!(f[0].detail.starts_with("expired"), "{f:?}");
    }

    #[test]
    fn acme_hosts_missing_stored_and_failing_renewal_are_reported() {
        let storage = tempfile::tempdir().unwrap();
        let extra = format!(
            "tls = {{ acme = {{ hosts = [\"a.example.test\", \"b.example.test\"], directory = \"https://ca.test/dir\", storage = \"{}\" }} }}",
            storage.path().display()
        );
        let cfg = config(&extra);
        // a: 90 days of life, 40 left: renewal due in 10 days.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example.test".into()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(50);
        params.not_after = now + time::Duration::days(40);
        let cert = params.self_signed(&key).unwrap();
        let certs = storage.path().join("ca.test_dir").join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(
            certs.join("a.example.test.pem"),
            format!("{}{}", key.serialize_pem(), cert.pem()),
        )
        .unwrap();
        let f = acme_certificates(&cfg, SystemTime::now());
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].status, Status::Ok, "{f:?}");
        assert_eq!(f[1].status, Status::Info, "{f:?}");
        assert!(f[1].detail.contains("none stored yet"), "{f:?}");
        // 22 days later the renewal is 12 days overdue (window 30 days, a third is 10).
        let later = SystemTime::now() + Duration::from_secs(22 * 86_400);
        let f = acme_certificates(&cfg, later);
        assert_eq!(f[0].status, Status::Fix, "{f:?}");
        assert!(f[0].detail.contains("renewal is not succeeding"), "{f:?}");
        let much_later = SystemTime::now() + Duration::from_secs(41 * 86_400);
        assert!(acme_certificates(&cfg, much_later)[0]
            .detail
            .starts_with("expired"));
        // Storage that cannot be created (under a file; root may write anywhere else).
        let file = storage.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let cfg = config(&extra.replace(
            &storage.path().display().to_string(),
            &file.join("acme").display().to_string(),
        ));
        let f = acme_certificates(&cfg, SystemTime::now());
        assert!(
            f.iter()
                .any(|f| f.check.starts_with("acme storage") && f.status == Status::Fix),
            "{f:?}"
        );
    }
}

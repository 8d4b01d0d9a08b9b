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

mod certs;
mod kernel;
mod network;
mod ports;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use portico_config::Config;
use serde::Serialize;

use crate::load::ConfigChoice;

pub use certs::{acme_certificates, certificates};
pub use kernel::{kernel, open_files, Needs, Sysctl};
pub use network::network;
pub use ports::{ports, Privileges};

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

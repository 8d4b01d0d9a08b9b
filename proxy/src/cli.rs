//! Command-line interface: `portico run`, `portico check`, `portico default-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::server::{self, Reported, RunOptions};

/// Portico: an edge reverse proxy and load balancer.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Run {
        /// Config file; without one, the embedded default is used.
        #[arg(short = 'c', long = "config", env = "PORTICO_CONFIG")]
        config: Option<PathBuf>,
        /// Take the listening sockets over from a running Portico, which hands them over on
        /// SIGQUIT (zero-downtime binary upgrade). The socket path is $PORTICO_UPGRADE_SOCKET,
        /// default /tmp/portico-upgrade.sock.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file and print a summary; exit 2 and list every problem if it is invalid.
    Check {
        /// Config file to check; without one, the embedded default is checked.
        #[arg(short = 'c', long = "config", env = "PORTICO_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: std::env::var_os("PORTICO_CONFIG").map(PathBuf::from),
        upgrade: false,
    }) {
        Command::Run { config, upgrade } => match server::run(RunOptions { config, upgrade }) {
            Ok(()) => 0,
            Err(e) => match e.downcast_ref::<Reported>() {
                Some(Reported(code)) => *code,
                None => {
                    eprintln!("portico: {e:#}");
                    1
                }
            },
        },
        Command::Check { config } => check(config),
        Command::DefaultConfig => {
            let _ = std::io::Write::write_all(
                &mut std::io::stdout(),
                portico_config::defaults::EMBEDDED_CONFIG.as_bytes(),
            );
            0
        }
    }
}

/// `writeln!` into a `String` (which cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// `portico check`: validates the config (including certificates and host names) and prints
/// a summary, or every problem.
fn check(path: Option<PathBuf>) -> i32 {
    let loaded = match crate::load::load_config(path.as_deref()) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} problem(s) found", errors.errors().len());
            return 2;
        }
    };
    if let Err(errors) = crate::load::prepare_tls(&loaded) {
        eprintln!("{errors}");
        eprintln!("{} problem(s) found", errors.errors().len());
        return 2;
    }
    let c = &loaded.config;
    let mut out = String::new();
    outln!(out, "{}: ok", c.source_name);
    for l in &c.listeners {
        let tls = match &l.tls {
            Some(t) => format!(
                "tls ({} certificate(s){})",
                t.certificates.len(),
                if t.http2 { ", h2" } else { "" }
            ),
            None if l.force_https => "plain, redirects to https".to_string(),
            None => "plain".to_string(),
        };
        outln!(out, "  listener {:<12} {} {tls}", l.name, l.address);
    }
    match &c.admin {
        Some(a) => outln!(out, "  admin             {}", a.address),
        None => outln!(out, "  admin             disabled"),
    }
    for u in &c.upstreams {
        let discovered: Vec<String> = u.discovery.iter().map(|d| d.to_string()).collect();
        let discovered = if discovered.is_empty() {
            String::new()
        } else {
            format!(" + discovered from {}", discovered.join(", "))
        };
        outln!(
            out,
            "  upstream {:<12} {} backend(s){discovered}, {}",
            u.name,
            u.backends.len(),
            u.balance.as_str()
        );
    }
    for r in c.routes.routes() {
        let hosts = if r.hosts.is_empty() {
            "*".to_string()
        } else {
            r.hosts.join(",")
        };
        let target = match &r.static_files {
            Some(f) if f.try_files => format!(
                "files in {}, else {}",
                f.root.display(),
                c.upstreams[r.upstream].name
            ),
            Some(f) => format!("files in {}", f.root.display()),
            None => c.upstreams[r.upstream].name.clone(),
        };
        outln!(
            out,
            "  route    {:<12} {hosts}{} -> {target}",
            r.name,
            r.path
        );
    }
    // A closed pipe (`portico check | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    0
}

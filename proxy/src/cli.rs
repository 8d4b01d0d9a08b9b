//! Command-line interface: `portico run`, `check`, `doctor`, `healthcheck`, `default-config`,
//! `completions` and `man`.
//!
//! Without `-c`, the config is `$PORTICO_CONFIG`, else `/etc/portico/portico.toml` when it
//! exists, else the embedded default; every command says which one it used.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::load::{choose_config, ConfigChoice, SYSTEM_CONFIG};
use crate::server::{self, Reported, RunOptions};

/// Portico: an edge reverse proxy and load balancer.
#[derive(Debug, Parser)]
#[command(name = "portico", version, long_version = crate::buildinfo::LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Run {
        /// Config file; without one, $PORTICO_CONFIG, then /etc/portico/portico.toml, then the
        /// embedded default.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Take the listening sockets over from a running Portico, which hands them over on
        /// SIGQUIT (zero-downtime binary upgrade). The socket path is $PORTICO_UPGRADE_SOCKET,
        /// default /tmp/portico-upgrade.sock. (SIGUSR2 to the running Portico starts its
        /// successor itself; see docs/operations.md.)
        #[arg(long)]
        upgrade: bool,
    },
    /// Check a config file and print a summary; exit 2 and list every problem if it is invalid.
    Check {
        /// Config file to check (same lookup as `run`).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
    },
    /// Check the host and the config for what limits a proxy (file descriptors, kernel
    /// queues, ports, certificates, DNS, backends) and print each finding with its fix.
    /// Exit 0 when nothing needs fixing, 1 when something does, 2 for an invalid config.
    Doctor {
        /// Config file to check against (same lookup as `run`).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Probe a running Portico (for container HEALTHCHECKs): GET /healthz on the admin
    /// listener, or a TCP connect to the first listener when there is no admin. Exit 0 when
    /// healthy, 1 otherwise.
    Healthcheck {
        /// Config file of the Portico to probe (same lookup as `run`).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Address to probe instead of the one the config names (host:port).
        #[arg(long)]
        address: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `portico man > /usr/share/man/man1/portico.1`, or
    /// write it and one page per subcommand (portico-run.1, ...) into a directory.
    Man {
        /// Write every page into this directory instead of printing the main one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn choose(explicit: Option<PathBuf>) -> ConfigChoice {
    choose_config(explicit, Path::new(SYSTEM_CONFIG))
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: None,
        upgrade: false,
    }) {
        Command::Run { config, upgrade } => {
            let choice = choose(config);
            match server::run(RunOptions {
                config: choice.path,
                config_from: choice.from,
                upgrade,
            }) {
                Ok(()) => 0,
                Err(e) => match e.downcast_ref::<Reported>() {
                    Some(Reported(code)) => *code,
                    None => {
                        eprintln!("portico: {e:#}");
                        1
                    }
                },
            }
        }
        Command::Check { config } => check(choose(config)),
        Command::Doctor { config, json } => crate::doctor::main(choose(config), json),
        Command::Healthcheck {
            config,
            address,
            timeout,
        } => crate::healthcheck::main(
            choose(config),
            address.as_deref(),
            std::time::Duration::from_secs(timeout.max(1)),
        ),
        Command::DefaultConfig => {
            let _ = std::io::Write::write_all(
                &mut std::io::stdout(),
                portico_config::defaults::EMBEDDED_CONFIG.as_bytes(),
            );
            0
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "portico", &mut std::io::stdout());
            0
        }
        Command::Man { dir } => man(dir.as_deref()),
    }
}

/// `portico man`: the main page to stdout, or every page into `dir`.
fn man(dir: Option<&Path>) -> i32 {
    let cmd = Cli::command();
    let result = match dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &out))
        }
        Some(d) => std::fs::create_dir_all(d).and_then(|()| clap_mangen::generate_to(cmd, d)),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portico man: {e}");
            1
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
fn check(choice: ConfigChoice) -> i32 {
    let loaded = match crate::load::load_config(choice.path.as_deref()) {
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
    outln!(out, "{}: ok (config from {})", c.source_name, choice.from);
    for l in &c.listeners {
        let tls = match &l.tls {
            Some(t) => format!(
                "tls ({}{}{})",
                if t.certificates.is_empty() && t.acme.is_some() {
                    String::new()
                } else {
                    format!("{} certificate(s)", t.certificates.len())
                },
                t.acme
                    .as_ref()
                    .map(|a| format!(
                        "{}acme for {} via {}",
                        if t.certificates.is_empty() { "" } else { ", " },
                        a.hosts.join(" "),
                        a.challenge.as_str()
                    ))
                    .unwrap_or_default(),
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
    // ACME hosts whose stored certificate is missing, unusable or expiring (no CA contacted).
    for f in crate::doctor::acme_certificates(c, std::time::SystemTime::now()) {
        if f.status != crate::doctor::Status::Ok {
            outln!(out, "  {}: {}", f.check, f.detail);
        }
    }
    // A closed pipe (`portico check | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    0
}

//! The server process: loads the config, binds listeners, runs the proxy on a worker runtime
//! and the admin listener and signal handling on a control runtime, and shuts down gracefully.
//!
//! Signals: SIGTERM drains (stop accepting, finish in-flight requests, close idle
//! connections, exit when done or after `shutdown_timeout`); SIGINT stops at once; SIGHUP
//! reloads; SIGQUIT hands the listening sockets to a successor already waiting
//! (`portico run --upgrade`); SIGUSR2 starts that successor itself (the same binary path, so
//! a replaced binary), then hands over: the successor is this process's child, inside the
//! same systemd unit, and tells systemd it is the main process now.

pub mod conn;
pub mod listener;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::http_proxy;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::load::{load_config, prepare_tls};
use crate::metrics::Metrics;
use crate::proxy::{ListenerInfo, Portico};
use crate::state::{BoundListener, Shared, Snapshot};
use conn::{ListenerCtx, Tracker};

/// How `portico run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Config file; `None` uses the embedded default.
    pub config: Option<PathBuf>,
    /// How the config was chosen (for the log): "--config", "$PORTICO_CONFIG", ...
    pub config_from: &'static str,
    /// Take the listening sockets over from a running Portico (graceful binary upgrade).
    pub upgrade: bool,
}

/// A startup failure that has already been explained to the user (exit code 2 for config
/// problems, 1 for everything else).
#[derive(Debug)]
pub struct Reported(pub i32);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "startup failed (exit code {})", self.0)
    }
}

impl std::error::Error for Reported {}

/// Raises the soft open-files limit (to `wanted`, or to the hard limit), and warns when the
/// result is below what the listeners' `max_connections` need (two descriptors each).
fn raise_nofile(wanted: Option<u64>, needed: u64) {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) => {
            let target = wanted.unwrap_or(hard).min(hard);
            if target > soft {
                match rlimit::Resource::NOFILE.set(target, hard) {
                    Ok(()) => {
                        tracing::debug!(from = soft, to = target, "raised the open files limit")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
                }
            }
            if let Some(w) = wanted {
                if w > hard {
                    tracing::warn!(
                        wanted = w,
                        hard,
                        "max_open_files is above the hard limit; using the hard limit"
                    );
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
    if let Ok((soft, _)) = rlimit::Resource::NOFILE.get() {
        if soft < needed {
            tracing::warn!(
                limit = soft,
                needed,
                "the open files limit is below what max_connections needs (two per connection); \
                 raise LimitNOFILE / ulimit -n (see `portico doctor`)"
            );
        }
    }
}

enum Stop {
    Graceful,
    Fast,
    /// SIGQUIT: hand over to a successor already waiting.
    Upgrade,
    /// SIGUSR2: start the successor, then hand over.
    SpawnUpgrade,
}

/// The signals Portico handles, registered before it announces that it started (so an early
/// SIGQUIT or SIGHUP is never the default action, which would kill the process).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self, reloader: &crate::reload::Reloader) -> Stop {
        loop {
            tokio::select! {
                _ = self.term.recv() => return Stop::Graceful,
                _ = self.quit.recv() => return Stop::Upgrade,
                _ = self.usr2.recv() => return Stop::SpawnUpgrade,
                _ = self.int.recv() => return Stop::Fast,
                _ = self.hup.recv() => {
                    let _ = reloader.reload("SIGHUP").await;
                }
            }
        }
    }
}

/// How long a successor started on SIGUSR2 may take to wait on the upgrade socket.
const SUCCESSOR_START: Duration = Duration::from_secs(30);

/// Starts the successor of a binary upgrade: the binary at the path this process was started
/// from (so a binary replaced on disk is the new version), `run --upgrade` on the same config.
/// `WATCHDOG_PID` is removed from its environment so that it keeps the watchdog going once it
/// is the main process.
fn spawn_successor(
    exe: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<std::process::Child> {
    let exe = exe.context("the path of the running binary is unknown")?;
    // The successor binds the upgrade socket; a stale file would pass for it being ready.
    let _ = std::fs::remove_file(upgrade::socket_path());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run").arg("--upgrade");
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.env_remove("WATCHDOG_PID");
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    tracing::info!(pid = child.id(), binary = %exe.display(), "SIGUSR2: started the new portico");
    Ok(child)
}

/// Waits until the successor listens on the upgrade socket, failing at once if it exits (a bad
/// config in the new binary's eyes, a missing file).
fn wait_for_successor(
    path: &std::path::Path,
    child: &mut std::process::Child,
    wait: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the new portico exited before taking over ({status})");
        }
        // The successor binds the socket (bind and listen are one call); a connect would be
        // the one connection it accepts, so existence is the probe. The parent removed any
        // stale file before starting it.
        if path.exists() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the new portico did not start within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends systemd `STATUS=` every 10 s and watchdog pings at half of `WatchdogSec=`, from the
/// control runtime (a wedged control loop stops the pings, which is what the watchdog is for).
async fn systemd_ticker(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if !crate::systemd::enabled() {
        return;
    }
    let watchdog = crate::systemd::watchdog_interval();
    let every = watchdog.map_or(Duration::from_secs(10), |w| {
        (w / 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
    });
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if watchdog.is_some() {
            crate::systemd::watchdog();
        }
        crate::systemd::status(&crate::systemd::status_line(&shared));
    }
}

/// Runs Portico until a signal stops it.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The path as started, before an upgrade may replace the file (then /proc/self/exe would
    // name the deleted old binary).
    let exe = std::env::current_exe().ok();
    let loaded = match load_config(opts.config.as_deref()) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "portico: the configuration has {} problem(s); not starting",
                errors.errors().len()
            );
            return Err(Reported(2).into());
        }
    };
    let _log_guards = crate::logging::init(&loaded.config.server)?;
    raise_nofile(
        loaded.config.server.max_open_files,
        crate::doctor::Needs::of(&loaded.config).descriptors,
    );

    let tls = match prepare_tls(&loaded) {
        Ok(t) => t,
        Err(errors) => {
            eprintln!("{errors}");
            return Err(Reported(2).into());
        }
    };
    let metrics = Metrics::new();
    let snapshot = match Snapshot::build(loaded, 1, None, &metrics) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            return Err(Reported(2).into());
        }
    };
    let config = snapshot.config.clone();
    let shared = Shared::new(snapshot, metrics, opts.config.clone());

    // A graceful upgrade takes the running process's sockets before binding anything.
    let mut inherited = if opts.upgrade {
        upgrade::receive(&upgrade::socket_path(), Duration::from_secs(60)).map_err(|e| {
            eprintln!("portico: upgrade failed: {e:#}");
            Reported(1)
        })?
    } else {
        upgrade::Inherited::default()
    };
    // Copies of the listening sockets, to hand to a successor on SIGQUIT.
    let mut handover: Vec<(String, std::os::fd::OwnedFd)> = Vec::new();
    // Bind everything before starting anything, so a taken port fails fast and clearly.
    let mut bound = Vec::new();
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
        bound.push((sock, local));
    }
    let admin_sock = match &config.admin {
        Some(a) => {
            let l = portico_config::Listener {
                name: "admin".into(),
                address: a.address,
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
            };
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
    let handover = Arc::new(handover);
    if let Ok(mut ls) = shared.listeners.lock() {
        *ls = config
            .listeners
            .iter()
            .zip(&bound)
            .map(|(l, (_, local))| BoundListener {
                name: l.name.clone(),
                address: *local,
                tls: l.tls.is_some(),
            })
            .collect();
    }

    // The control runtime runs signals, the admin listener and background work (discovery)
    // on the main thread, apart from the proxy's workers.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("portico-control")
        .build()
        .context("cannot start the control runtime")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Discovered upstreams get their first answers (or `startup_wait` passes) before traffic
    // is accepted; listeners are bound already, so early clients wait in the backlog.
    let first = shared.current.load_full();
    // Discovery tasks belong to a config generation: a reload stops them and starts new ones.
    let (discovery_stop, discovery_rx) = watch::channel(false);
    let discovered = control
        .block_on(crate::discovery::start(
            &first,
            shared.clone(),
            discovery_rx,
            true,
        ))
        .map_err(|e| anyhow::anyhow!("dns: {e}"))?;
    if discovered > 0 {
        tracing::info!(upstreams = discovered, "discovery running");
    }
    control.spawn(crate::health::run(shared.clone(), shutdown_rx.clone()));
    control.spawn(crate::accesslog::flusher());

    let threads = config.server.threads;
    let workers = pingora_runtime::RuntimeBuilder::new(threads, "portico-worker")
        .work_steal(config.server.work_stealing)
        .build();
    let server_conf = Arc::new(ServerConf {
        threads,
        // Portico decides retries itself (per upstream); this is only pingora's outer bound.
        max_retries: 64,
        ..ServerConf::default()
    });
    let tracker = Arc::new(Tracker::default());
    let default_https_port = config
        .listeners
        .iter()
        .zip(&bound)
        .find(|(l, _)| l.tls.is_some())
        .map_or(portico_config::defaults::HTTPS_PORT, |(_, (_, local))| {
            local.port()
        });
    let resolvers = config
        .listeners
        .iter()
        .zip(&tls)
        .map(|(l, t)| (l.name.to_string(), t.as_ref().map(|t| t.resolver.clone())))
        .collect();
    for (l, t) in config.listeners.iter().zip(&tls) {
        if let Some(t) = t {
            t.publish_expiry(&l.name, &shared.metrics.tls_certificate_expiry);
        }
    }
    // ACME tasks run on the control runtime for the life of the process.
    for (l, t) in config.listeners.iter().zip(&tls) {
        let acme = l.tls.as_ref().and_then(|c| c.acme.as_ref());
        let certs = t.as_ref().and_then(|t| t.resolver.acme().cloned());
        if let (Some(acme), Some(certs)) = (acme, certs) {
            let _runtime = control.enter();
            crate::acme::task::spawn_listener(
                &l.name,
                acme,
                certs,
                shared.acme.clone(),
                &shared.metrics,
                &shutdown_rx,
            );
        }
    }
    let reloader = Arc::new(crate::reload::Reloader::new(
        shared.clone(),
        resolvers,
        discovery_stop,
    ));
    for ((l, (sock, local)), tls) in config.listeners.iter().zip(bound).zip(tls) {
        let app = || Portico {
            shared: shared.clone(),
            listener: ListenerInfo {
                name: l.name.as_str().into(),
                tls: l.tls.is_some(),
                port: local.port(),
                port_value: http::HeaderValue::from(local.port()),
                default_https_port,
            },
        };
        let mut proxy = http_proxy(&server_conf, app());
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = l.h2c;
        options.keepalive_request_limit = l.max_requests_per_connection;
        options.h2_idle_timeout = Some(l.keepalive_timeout.max(Duration::from_secs(1)));
        proxy.server_options = Some(options);
        let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(u32::try_from(l.max_header_size).unwrap_or(u32::MAX));
        proxy.h2_options = Some(h2);
        let lctx = Arc::new(ListenerCtx {
            name: l.name.as_str().into(),
            proxy: Arc::new(proxy),
            app: Arc::new(app()),
            tls: tls.map(|t| t.acceptor),
            shared: shared.clone(),
            tracker: tracker.clone(),
            per_ip: Default::default(),
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(l.max_connections));
        let runtimes: Vec<tokio::runtime::Handle> = match &workers {
            pingora_runtime::Runtime::NoSteal(r) => (0..r.threads())
                .map(|i| r.get_runtime_at(i).clone())
                .collect(),
            steal => vec![steal.get_handle().clone()],
        };
        for rt in &runtimes {
            rt.spawn(listener::accept_loop(
                sock.try_clone()?,
                local,
                lctx.clone(),
                limit.clone(),
                shutdown_rx.clone(),
            ));
        }
        drop(sock);
    }

    let mut signals = control.block_on(async { Signals::register() })?;
    control.block_on(async {
        if let Some(sock) = admin_sock {
            tokio::spawn(crate::admin::serve(
                sock,
                Arc::new(Admin::new(shared.clone()).with_reloader(reloader.clone())),
                shutdown_rx.clone(),
            ));
        }
        if let Some(path) = opts.config.clone() {
            tokio::spawn(crate::reload::watch_file(
                reloader.clone(),
                path,
                Duration::from_millis(500),
            ));
        }
        tracing::info!(
            version = crate::buildinfo::VERSION,
            commit = crate::buildinfo::COMMIT,
            config = %config.source_name,
            config_from = opts.config_from,
            threads,
            upgraded = opts.upgrade,
            "portico started"
        );
    });
    // systemd: ready once every listener serves; a successor also takes over as main PID.
    crate::systemd::ready(&crate::systemd::status_line(&shared), opts.upgrade);
    let (ticker_stop, ticker_rx) = watch::channel(false);
    control.spawn(systemd_ticker(shared.clone(), ticker_rx));
    let stop = loop {
        let signal = control.block_on(signals.next(&reloader));
        let successor = match signal {
            Stop::Upgrade => None,
            Stop::SpawnUpgrade => match spawn_successor(exe.as_deref(), opts.config.as_deref()) {
                Ok(child) => Some(child),
                Err(e) => {
                    tracing::error!("SIGUSR2: cannot start the new portico, still serving: {e:#}");
                    continue;
                }
            },
            other => break other,
        };
        let path = upgrade::socket_path();
        tracing::info!(socket = %path.display(), "handing the listening sockets to the new portico");
        // The handover may wait for the successor; keep the control runtime (admin, health
        // checks, discovery) running meanwhile.
        let sockets = handover.clone();
        let (sent, successor) = control.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let mut successor = successor;
                let sent = match successor.as_mut() {
                    Some(child) => wait_for_successor(&path, child, SUCCESSOR_START)
                        .and_then(|()| upgrade::send(&path, &sockets)),
                    None => upgrade::send(&path, &sockets),
                };
                (sent, successor)
            })
            .await
            .unwrap_or_else(|e| (Err(anyhow::anyhow!("upgrade task failed: {e}")), None))
        });
        match sent {
            Ok(()) => {
                tracing::info!("sockets handed over; draining");
                // The successor is the service now: this process says nothing more to systemd.
                let _ = ticker_stop.send(true);
                break Stop::Upgrade;
            }
            // Nobody to take over: keep serving.
            Err(e) => {
                tracing::error!("upgrade failed, still serving: {e:#}");
                if let Some(mut child) = successor {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    };
    drop(handover);

    if !matches!(stop, Stop::Upgrade) {
        let _ = ticker_stop.send(true);
        crate::systemd::stopping("stopping: draining connections");
    }
    match stop {
        Stop::Fast => {
            tracing::info!("SIGINT received: stopping now");
            let _ = shutdown_tx.send(true);
        }
        Stop::Graceful | Stop::Upgrade | Stop::SpawnUpgrade => {
            let timeout = config.server.shutdown_timeout;
            tracing::info!(open = tracker.open(), timeout = ?timeout, "draining");
            shared
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = shutdown_tx.send(true);
            let drained = control.block_on(async {
                tokio::time::timeout(timeout, tracker.wait_idle())
                    .await
                    .is_ok()
            });
            if drained {
                tracing::info!("all connections drained");
            } else {
                // WebSockets get a close frame and a moment to finish the closing handshake.
                let asked = shared.ws_conns.close_all();
                let closed = asked > 0
                    && control.block_on(async {
                        tokio::time::timeout(Duration::from_secs(2), tracker.wait_idle())
                            .await
                            .is_ok()
                    });
                if closed {
                    tracing::info!(
                        websockets = asked,
                        "shutdown timeout reached; WebSockets closed with a close frame"
                    );
                } else {
                    tracing::warn!(
                        open = tracker.open(),
                        websockets = asked,
                        "shutdown timeout reached; closing remaining connections"
                    );
                }
            }
        }
    }
    workers.shutdown_timeout(Duration::from_millis(200));
    crate::accesslog::flush_all();
    tracing::info!("portico stopped");
    Ok(())
}

//! The server process: loads the config, binds listeners, runs the proxy on a worker runtime
//! and the admin listener and signal handling on a control runtime, and shuts down gracefully.
//!
//! Signals: SIGTERM drains (stop accepting, finish in-flight requests, close idle
//! connections, exit when done or after `shutdown_timeout`); SIGINT stops at once; SIGHUP
//! reloads; SIGQUIT hands the listening sockets to a successor already waiting
//! (`portico run --upgrade`); SIGUSR2 starts that successor itself (the same binary path, so
//! a replaced binary), then hands over: the successor is this process's child, inside the
//! same systemd unit, and tells systemd it is the main process now.
//!
//! [`run`] reads top-down: load, `bind` (every socket first), `start` (control tasks, then
//! the listeners' accept loops), announce, `stop` (the signal loop, then the drain).

mod bind;
pub mod conn;
pub mod listener;
mod start;
mod stop;
pub mod upgrade;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::load::{load_config, prepare_tls, ListenerTls};
use crate::metrics::Metrics;
use crate::state::{BoundListener, Shared, Snapshot};
use conn::Tracker;

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

/// Runs Portico until a signal stops it: load, bind, start the control tasks and the
/// listeners, announce, wait for a stop, drain.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    // The path as started, before an upgrade may replace the file (then /proc/self/exe would
    // name the deleted old binary).
    let exe = std::env::current_exe().ok();
    let (shared, tls, _log_guards) = load(&opts)?;
    let config = shared.current.load().config.clone();
    let bound = bind::bind_all(&config, opts.upgrade)?;
    if let Ok(mut ls) = shared.listeners.lock() {
        *ls = config
            .listeners
            .iter()
            .zip(&bound.listeners)
            .map(|(l, (_, local))| BoundListener {
                name: l.name.clone(),
                address: *local,
                tls: l.tls.is_some(),
            })
            .collect();
    }
    let handover = Arc::new(bound.handover);

    // The control runtime runs signals, the admin listener and background work (discovery,
    // health checks, ACME) on the main thread, apart from the proxy's workers.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("portico-control")
        .build()
        .context("cannot start the control runtime")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let reloader = start::control_tasks(&control, &shared, &config, &tls, &shutdown_rx)?;
    let workers = pingora_runtime::RuntimeBuilder::new(config.server.threads, "portico-worker")
        .work_steal(config.server.work_stealing)
        .build();
    let tracker = Arc::new(Tracker::default());
    start::spawn_listeners(
        &workers,
        &shared,
        &config,
        bound.listeners,
        tls,
        &tracker,
        &shutdown_rx,
    )?;

    let mut signals = control.block_on(async { stop::Signals::register() })?;
    control.block_on(async {
        if let Some(sock) = bound.admin {
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
            threads = config.server.threads,
            upgraded = opts.upgrade,
            "portico started"
        );
    });
    // systemd: ready once every listener serves; a successor also takes over as main PID.
    crate::systemd::ready(&crate::systemd::status_line(&shared), opts.upgrade);
    let (ticker_stop, ticker_rx) = watch::channel(false);
    control.spawn(systemd_ticker(shared.clone(), ticker_rx));

    let stop = stop::wait_for_stop(
        &control,
        &mut signals,
        &reloader,
        &handover,
        exe.as_deref(),
        opts.config.as_deref(),
        &ticker_stop,
    );
    drop(handover);
    if !matches!(stop, stop::Stop::Upgrade) {
        let _ = ticker_stop.send(true);
        crate::systemd::stopping("stopping: draining connections");
    }
    let timeout = config.server.shutdown_timeout;
    stop::drain(stop, &control, &shared, &tracker, &shutdown_tx, timeout);
    workers.shutdown_timeout(Duration::from_millis(200));
    crate::accesslog::flush_all();
    tracing::info!("portico stopped");
    Ok(())
}

/// Loads and checks the configuration, starts logging, raises the open-files limit, loads
/// the TLS material and builds the first snapshot. Problems are printed; the error says so.
fn load(
    opts: &RunOptions,
) -> anyhow::Result<(
    Arc<Shared>,
    Vec<Option<ListenerTls>>,
    crate::logging::LogGuards,
)> {
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
    let log_guards = crate::logging::init(&loaded.config.server)?;
    raise_nofile(
        loaded.config.server.max_open_files,
        crate::doctor::Needs::of(&loaded.config).descriptors,
    );
    let tls = prepare_tls(&loaded).map_err(|errors| {
        eprintln!("{errors}");
        Reported(2)
    })?;
    let metrics = Metrics::new();
    let snapshot = Snapshot::build(loaded, 1, None, &metrics).map_err(|errors| {
        eprintln!("{errors}");
        Reported(2)
    })?;
    let shared = Shared::new(snapshot, metrics, opts.config.clone());
    Ok((shared, tls, log_guards))
}

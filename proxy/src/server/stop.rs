//! Signals and the end of the process: the signal loop (reloads on SIGHUP, binary upgrades on
//! SIGQUIT and SIGUSR2 with the socket handover, the stop signals), then the drain: stop
//! accepting, finish in-flight requests, close WebSockets with a close frame at the deadline.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::conn::Tracker;
use super::upgrade;
use crate::reload::Reloader;
use crate::state::Shared;

/// Why the signal loop ended.
pub(super) enum Stop {
    Graceful,
    Fast,
    /// SIGQUIT: hand over to a successor already waiting.
    Upgrade,
    /// SIGUSR2: start the successor, then hand over.
    SpawnUpgrade,
}

/// The signals Portico handles, registered before it announces that it started (so an early
/// SIGQUIT or SIGHUP is never the default action, which would kill the process).
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn register() -> std::io::Result<Self> {
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

/// Waits for signals until one ends the process's service: SIGTERM, SIGINT, or an upgrade
/// whose handover succeeded (a failed one logs and keeps serving). `ticker_stop` silences
/// the systemd ticker once a successor is the service.
pub(super) fn wait_for_stop(
    control: &Runtime,
    signals: &mut Signals,
    reloader: &Reloader,
    handover: &Arc<Vec<(String, OwnedFd)>>,
    exe: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
    ticker_stop: &watch::Sender<bool>,
) -> Stop {
    loop {
        let signal = control.block_on(signals.next(reloader));
        let successor = match signal {
            Stop::Upgrade => None,
            Stop::SpawnUpgrade => match spawn_successor(exe, config) {
                Ok(child) => Some(child),
                Err(e) => {
                    tracing::error!("SIGUSR2: cannot start the new portico, still serving: {e:#}");
                    continue;
                }
            },
            other => return other,
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
                return Stop::Upgrade;
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
    }
}

/// Ends the service: at once for SIGINT, else stop accepting and wait for open connections
/// until `timeout`, then close WebSockets with a close frame (2 s to finish the closing
/// handshake) and give up on the rest.
pub(super) fn drain(
    stop: Stop,
    control: &Runtime,
    shared: &Shared,
    tracker: &Tracker,
    shutdown_tx: &watch::Sender<bool>,
    timeout: Duration,
) {
    match stop {
        Stop::Fast => {
            tracing::info!("SIGINT received: stopping now");
            let _ = shutdown_tx.send(true);
        }
        Stop::Graceful | Stop::Upgrade | Stop::SpawnUpgrade => {
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
                return;
            }
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

//! The systemd service-manager protocol (`sd_notify`): `READY=1` once every listener is bound
//! and serving, `RELOADING=1` + `MONOTONIC_USEC` / `READY=1` around each config reload (what
//! `Type=notify-reload` requires), `STATUS=` with the config generation and open connections,
//! `STOPPING=1` on a real stop, watchdog pings when `WatchdogSec=` is set, and `MAINPID=` from
//! the successor of a binary upgrade so systemd follows the new process.
//!
//! The sd-notify crate speaks the protocol (a datagram to `$NOTIFY_SOCKET`); without that
//! variable every call is a no-op, so nothing here changes a run outside systemd. Failures to
//! notify are logged at debug level and never stop the proxy.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Whether a service manager is listening.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// The listeners are bound and serving. A successor started by an upgrade also names itself
/// the service's main process.
pub fn ready(status: &str, successor: bool) {
    let pid = std::process::id();
    if successor {
        send(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]);
    } else {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// A reload starts: `RELOADING=1` with the monotonic time, as `Type=notify-reload` asks.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload finished (applied or refused): the service is ready again.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A status line for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The process is stopping for good (not handing over to a successor).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any. A successor started by
/// an upgrade inherits `WATCHDOG_USEC` without `WATCHDOG_PID` (its parent removes it), and
/// pings once it is the main process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// The `STATUS=` line: config generation and open connections.
pub fn status_line(shared: &crate::state::Shared) -> String {
    let generation = shared.current.load().generation;
    let open: i64 = shared
        .listeners
        .lock()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    shared
                        .metrics
                        .listeners
                        .connections_open
                        .with_label_values(&[&l.name])
                        .get()
                })
                .sum()
        })
        .unwrap_or(0);
    format!("serving: config generation {generation}, {open} connection(s) open")
}

//! Configuration reloads: from SIGHUP, `POST /reload`, or the config file changing on disk.
//!
//! A reload reads, validates and builds the whole new runtime state (routes, upstreams with
//! carried-over backends, health and pools, TLS certificates) on the control runtime, off the
//! request path, then installs it with one `ArcSwap::store`. Requests in flight finish on the
//! snapshot they started with. A config that fails anywhere never replaces the running one:
//! the error is logged, counted and shown in `/status`.
//!
//! What a running process cannot change in place (listener sockets, worker threads, logging)
//! is reported; such changes take `portico run --upgrade` or a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::load::{load_config, prepare_tls};
use crate::state::{ReloadAttempt, Shared, Snapshot};
use crate::tls::SniResolver;

/// A successful reload.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// Generation number now running.
    pub generation: u64,
    /// Changes that did not apply (they need an upgrade or restart).
    pub not_applied: Vec<String>,
}

/// Performs reloads; one at a time.
pub struct Reloader {
    shared: Arc<Shared>,
    /// Certificate resolvers of the listeners as bound, by listener name.
    resolvers: Vec<(String, Option<Arc<SniResolver>>)>,
    /// Stops the discovery tasks of the running generation.
    discovery_stop: Mutex<watch::Sender<bool>>,
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for a running server.
    pub fn new(
        shared: Arc<Shared>,
        resolvers: Vec<(String, Option<Arc<SniResolver>>)>,
        discovery_stop: watch::Sender<bool>,
    ) -> Self {
        Self {
            shared,
            resolvers,
            discovery_stop: Mutex::new(discovery_stop),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads the config file. `trigger` names what asked (for the log).
    pub async fn reload(&self, trigger: &str) -> Result<Reloaded, String> {
        let _one_at_a_time = self.lock.lock().await;
        crate::systemd::reloading();
        let result = self.try_reload().await;
        let m = &self.shared.metrics;
        match &result {
            Ok(r) => {
                m.config
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                m.config.config_generation.set(r.generation as i64);
                if let Ok(mut s) = self.shared.reload.lock() {
                    s.last_error = None;
                    s.last_error_at = None;
                    s.record(ReloadAttempt {
                        at: SystemTime::now(),
                        trigger: trigger.to_string(),
                        generation: r.generation,
                        error: None,
                    });
                }
                tracing::info!(trigger, generation = r.generation, "configuration reloaded");
                for n in &r.not_applied {
                    tracing::warn!(
                        trigger,
                        "not applied by a reload (needs `portico run --upgrade` or a restart): {n}"
                    );
                }
            }
            Err(e) => {
                m.config.config_reloads.with_label_values(&["error"]).inc();
                let generation = self.shared.current.load().generation;
                if let Ok(mut s) = self.shared.reload.lock() {
                    s.last_error = Some(e.clone());
                    s.last_error_at = Some(SystemTime::now());
                    s.record(ReloadAttempt {
                        at: SystemTime::now(),
                        trigger: trigger.to_string(),
                        generation,
                        error: Some(e.clone()),
                    });
                }
                tracing::error!(
                    trigger,
                    "configuration reload failed; the running configuration stays:\n{e}"
                );
            }
        }
        crate::systemd::reloaded(&crate::systemd::status_line(&self.shared));
        result
    }

    async fn try_reload(&self) -> Result<Reloaded, String> {
        let Some(path) = self.shared.config_path.clone() else {
            return Err(
                "portico runs on its embedded default config; start it with -c FILE to reload"
                    .into(),
            );
        };
        let loaded = load_config(Some(&path)).map_err(|e| e.to_string())?;
        // Certificates are read and checked before anything changes.
        let tls = prepare_tls(&loaded).map_err(|e| e.to_string())?;
        let prev = self.shared.current.load_full();
        let not_applied = fixed_changes(&prev, &loaded.config);
        let generation = self.shared.take_generation();
        let snap = Snapshot::build(loaded, generation, Some(&prev), &self.shared.metrics)
            .map_err(|e| e.to_string())?;
        // New certificates for listeners that keep their name and TLS.
        for (l, t) in snap.config.listeners.iter().zip(&tls) {
            let running = self.resolvers.iter().find(|(n, _)| *n == *l.name);
            if let (Some((_, Some(resolver))), Some(t)) = (running, t) {
                resolver.replace_from(&t.resolver);
                t.publish_expiry(&l.name, &self.shared.metrics.tls.tls_certificate_expiry);
            }
        }
        let snap = Arc::new(snap);
        self.shared.current.store(snap.clone());
        // Discovery follows the new upstreams (the new backend sets start from the old ones,
        // so nothing is empty meanwhile).
        let (tx, rx) = watch::channel(false);
        let old = std::mem::replace(
            &mut *self
                .discovery_stop
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            tx,
        );
        let _ = old.send(true);
        if let Err(e) = crate::discovery::start(&snap, self.shared.clone(), rx, false).await {
            tracing::error!(error = %e, "discovery could not restart after the reload");
        }
        Ok(Reloaded {
            generation,
            not_applied,
        })
    }
}

/// Settings a reload cannot change in a running process.
fn fixed_changes(prev: &Snapshot, next: &portico_config::Config) -> Vec<String> {
    let old = &prev.config;
    let mut out = Vec::new();
    let listener_key =
        |l: &portico_config::Listener| {
            format!(
            "{} {} tls={} h2c={} max_connections={} reuse_port={} backlog={} fastopen={:?} {:?}",
            l.name,
            l.address,
            l.tls.is_some(),
            l.h2c,
            l.max_connections,
            l.reuse_port,
            l.backlog,
            l.tcp_fastopen,
            l.tls.as_ref().map(|t| (t.http2, format!("{:?}", t.min_version))),
        )
        };
    let a: Vec<String> = old.listeners.iter().map(listener_key).collect();
    let b: Vec<String> = next.listeners.iter().map(listener_key).collect();
    if a != b {
        out.push("listeners (addresses, TLS on/off, socket options)".to_string());
    }
    let acme = |c: &portico_config::Config| -> Vec<String> {
        c.listeners
            .iter()
            .map(|l| {
                let a = l.tls.as_ref().and_then(|t| t.acme.as_ref());
                // Where a block sits in the file is no change.
                format!(
                    "{:?}",
                    a.map(|a| (
                        &a.hosts,
                        &a.email,
                        &a.directory,
                        a.challenge,
                        &a.storage,
                        &a.ca_roots,
                        a.retry_min
                    ))
                )
            })
            .collect()
    };
    if acme(old) != acme(next) {
        out.push("tls.acme (hosts, CA, challenge, storage)".to_string());
    }
    if old.admin.as_ref().map(|a| a.address) != next.admin.as_ref().map(|a| a.address) {
        out.push("admin address".to_string());
    }
    let s = (&old.server, &next.server);
    if s.0.threads != s.1.threads || s.0.work_stealing != s.1.work_stealing {
        out.push("server threads / work_stealing".to_string());
    }
    if s.0.log_level != s.1.log_level
        || format!("{:?}", s.0.log_format) != format!("{:?}", s.1.log_format)
        || s.0.access_log != s.1.access_log
    {
        out.push("logging (log_level, log_format, access_log)".to_string());
    }
    out
}

/// Identity of the config file on disk: follows symlinks (ConfigMap swaps) and notices
/// replacement by rename (new inode) as well as edits in place.
fn file_stamp(path: &Path) -> Option<(u64, u64, i64, i64, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let target = std::fs::canonicalize(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec(), target))
}

/// Watches the config file and reloads when it changes (polling, so it works the same for
/// editors, renames, symlink swaps and network file systems), debounced.
pub async fn watch_file(reloader: Arc<Reloader>, path: PathBuf, interval: Duration) {
    let mut last = file_stamp(&path);
    loop {
        tokio::time::sleep(interval).await;
        let now = file_stamp(&path);
        if now == last || now.is_none() {
            // A file that vanished for a moment (mid-replace) is waited out.
            continue;
        }
        // Let a burst of writes settle before reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let settled = file_stamp(&path);
        if settled != now {
            continue;
        }
        last = settled;
        let _ = reloader.reload("file change").await;
    }
}

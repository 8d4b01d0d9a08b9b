//! The per-host ACME loop.
//!
//! At start a host serves its stored certificate (a restart or upgrade contacts no CA while
//! it is fresh) or else a self-signed placeholder, with a log line saying so. The loop orders
//! when nothing valid is held or a third of the lifetime before expiry, under the storage
//! lock: another process that renewed meanwhile is noticed and its certificate used. A
//! failure (CA unreachable or rate-limiting, validation failing, storage not writable) is
//! logged, counted and shown in `/status`; whatever was served stays served, and the next
//! attempt waits `retry_min`, doubling to an hour, with ±25 % jitter so that a fleet does not
//! retry in step.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_config::Acme;
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::watch;

use super::certs::{self, Held};
use super::order::{self, Responders};
use super::storage::Storage;
use super::{AcmeState, HostStatus};
use crate::tls::AcmeCerts;

/// Longest time one order may take, CA round trips and validation included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// What a host's task needs.
pub struct HostTask {
    /// Listener name (metrics, logs, status).
    pub listener: String,
    /// The listener's ACME settings.
    pub cfg: Acme,
    /// The host.
    pub host: String,
    /// The listener's served certificates.
    pub certs: Arc<AcmeCerts>,
    /// HTTP-01 answers and status.
    pub state: Arc<AcmeState>,
    /// `portico_tls_certificate_expiry_seconds`.
    pub expiry: IntGaugeVec,
    /// `portico_acme_orders_total`.
    pub orders: IntCounterVec,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The wait before attempt `failures + 1`: `min` doubled per failure, at most
/// [`portico_config::defaults::ACME_RETRY_MAX`], times a jitter factor in [0.75, 1.25).
pub fn backoff(min: Duration, failures: u32, jitter: f64) -> Duration {
    let max = portico_config::defaults::ACME_RETRY_MAX;
    let base = min
        .checked_mul(1u32 << failures.saturating_sub(1).min(16))
        .unwrap_or(max)
        .min(max);
    base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
}

impl HostTask {
    fn install(&self, held: &Held, serving: &'static str) {
        self.certs.set(&self.host, held.key.clone());
        self.expiry
            .with_label_values(&[&self.listener, &self.host])
            .set(unix(held.not_after));
        self.state.update(&self.listener, &self.host, |s| {
            s.serving = serving;
            s.not_after = Some(held.not_after);
        });
    }

    /// The stored certificate, if it is readable, for this host and not expired.
    fn stored(&self, storage: &Storage) -> Option<Held> {
        let pem = match storage.read_cert(&self.host) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(listener = %self.listener, host = %self.host, "ACME storage: {e}");
                return None;
            }
        };
        match certs::parse_stored(&pem, &self.host) {
            Ok(h) if h.not_after > SystemTime::now() => Some(h),
            Ok(_) => {
                tracing::warn!(listener = %self.listener, host = %self.host, file = %storage.cert_path(&self.host).display(), "the stored certificate has expired; ordering a new one");
                None
            }
            Err(e) => {
                tracing::warn!(listener = %self.listener, host = %self.host, file = %storage.cert_path(&self.host).display(), "the stored certificate is unusable ({e}); ordering a new one");
                None
            }
        }
    }

    /// One attempt under the lock: the stored certificate when another process renewed it,
    /// else a new order. `Ok(None)`: shutdown.
    async fn attempt(
        &self,
        storage: &Storage,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<(Held, bool)>, String> {
        let Some(_lock) = storage.lock(shutdown).await? else {
            return Ok(None);
        };
        if let Some(h) = self.stored(storage).filter(|h| !h.due(SystemTime::now())) {
            return Ok(Some((h, false)));
        }
        let responders = Responders {
            http01: &self.state.http01,
            certs: &self.certs,
        };
        // The HTTP client has no timeouts of its own: a CA that stops answering must not
        // hold the lock (and this host's renewals) for ever.
        let order = tokio::time::timeout(
            ORDER_TIMEOUT,
            order::obtain(&self.cfg, storage, &self.host, &responders),
        );
        let pem = tokio::select! {
            r = order => r.map_err(|_| format!("the CA did not finish the order within {} s", ORDER_TIMEOUT.as_secs()))??,
            _ = shutdown.changed() => return Ok(None),
        };
        let held = certs::parse_stored(pem.as_bytes(), &self.host)
            .map_err(|e| format!("the CA's certificate is unusable: {e}"))?;
        if let Err(e) = storage.write_cert(&self.host, pem.as_bytes()) {
            // Served anyway; the next start orders again.
            tracing::error!(listener = %self.listener, host = %self.host, "the new certificate is served but cannot be stored: {e}");
        }
        Ok(Some((held, true)))
    }

    /// Registers the host and installs what it serves before any handshake: the stored
    /// certificate, else a placeholder. Returns the stored certificate.
    fn prime(&self, storage: &Storage) -> Option<Held> {
        self.state.register(HostStatus {
            listener: self.listener.clone(),
            host: self.host.clone(),
            challenge: self.cfg.challenge.as_str(),
            directory: self.cfg.directory.clone(),
            serving: "none",
            not_after: None,
            last_attempt: None,
            last_error: None,
            next_attempt: None,
        });
        let held = self.stored(storage);
        match &held {
            Some(h) => {
                self.install(h, "stored");
                tracing::info!(listener = %self.listener, host = %self.host, file = %storage.cert_path(&self.host).display(), "serving the stored ACME certificate");
            }
            None => match certs::placeholder(std::slice::from_ref(&self.host)) {
                Ok(key) => {
                    self.certs.set(&self.host, key);
                    self.state
                        .update(&self.listener, &self.host, |s| s.serving = "placeholder");
                    tracing::warn!(listener = %self.listener, host = %self.host, directory = %self.cfg.directory, "no certificate yet: serving a self-signed placeholder until the ACME CA issues one");
                }
                Err(e) => {
                    tracing::error!(listener = %self.listener, host = %self.host, "cannot make a placeholder certificate: {e}")
                }
            },
        }
        held
    }

    /// Orders and renews until shutdown, starting from what [`HostTask::prime`] installed.
    async fn run(
        self,
        storage: Storage,
        mut held: Option<Held>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut failures: u32 = 0;
        loop {
            let due = held.as_ref().map_or(SystemTime::now(), |h| h.renew_at());
            self.state
                .update(&self.listener, &self.host, |s| s.next_attempt = Some(due));
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let renewing = held.is_some();
            let result = self.attempt(&storage, &mut shutdown).await;
            let now = SystemTime::now();
            match result {
                Ok(None) => return,
                Ok(Some((h, from_ca))) => {
                    failures = 0;
                    let serving = if from_ca { "issued" } else { "stored" };
                    self.install(&h, serving);
                    self.state.update(&self.listener, &self.host, |s| {
                        s.last_attempt = Some(now);
                        s.last_error = None;
                    });
                    if from_ca {
                        let outcome = if renewing { "renewed" } else { "issued" };
                        self.orders
                            .with_label_values(&[&self.listener, &self.host, outcome])
                            .inc();
                        tracing::info!(listener = %self.listener, host = %self.host, not_after = unix(h.not_after), "ACME certificate {outcome}");
                    } else {
                        tracing::info!(listener = %self.listener, host = %self.host, "another Portico process renewed the certificate; serving it");
                    }
                    held = Some(h);
                }
                Err(e) => {
                    failures += 1;
                    self.orders
                        .with_label_values(&[&self.listener, &self.host, "error"])
                        .inc();
                    let wait = backoff(self.cfg.retry_min, failures, fastrand::f64());
                    tracing::error!(listener = %self.listener, host = %self.host, retry_in_s = wait.as_secs(), "ACME order failed; the current certificate stays served: {e}");
                    self.state.update(&self.listener, &self.host, |s| {
                        s.last_attempt = Some(now);
                        s.last_error = Some(e.clone());
                        s.next_attempt = Some(now + wait);
                    });
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    // Past the wait the loop orders again: `held` is still due (or absent).
                }
            }
        }
    }
}

/// Installs each host's stored certificate or placeholder (before the listener takes its
/// first handshake), then starts a task per host of a listener's `acme` block.
pub fn spawn_listener(
    listener: &str,
    cfg: &Acme,
    certs: Arc<AcmeCerts>,
    state: Arc<AcmeState>,
    metrics: &crate::metrics::Metrics,
    shutdown: &watch::Receiver<bool>,
) {
    for host in &cfg.hosts {
        let task = HostTask {
            listener: listener.to_string(),
            cfg: cfg.clone(),
            host: host.clone(),
            certs: certs.clone(),
            state: state.clone(),
            expiry: metrics.tls.tls_certificate_expiry.clone(),
            orders: metrics.tls.acme_orders.clone(),
        };
        let storage = Storage::new(&cfg.storage, &cfg.directory);
        let held = task.prime(&storage);
        tokio::spawn(task.run(storage, held, shutdown.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour_with_jitter() {
        let m = Duration::from_secs(60);
        assert_eq!(backoff(m, 1, 0.5), Duration::from_secs(60));
        assert_eq!(backoff(m, 2, 0.5), Duration::from_secs(120));
        assert_eq!(backoff(m, 4, 0.5), Duration::from_secs(480));
        assert_eq!(backoff(m, 30, 0.5), Duration::from_secs(3600));
        assert_eq!(backoff(m, 1, 0.0), Duration::from_secs(45));
        assert!(backoff(m, 1, 1.0) <= Duration::from_secs(75));
    }
}

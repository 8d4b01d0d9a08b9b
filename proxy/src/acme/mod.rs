//! Automatic HTTPS: certificates for a TLS listener's `tls.acme.hosts`, obtained from an ACME
//! CA (RFC 8555), renewed unattended and swapped into the running listener.
//!
//! - [`storage`]: the account key and certificates on disk, and the lock that keeps several
//!   Portico processes sharing a storage directory from ordering at once.
//! - [`certs`]: self-signed placeholders, TLS-ALPN-01 challenge certificates, stored PEM read
//!   back with its validity.
//! - [`order`]: one certificate order through the protocol.
//! - [`task`]: the per-host loop: serve what is stored, order when missing or a third of the
//!   lifetime before expiry, retry failures with jittered exponential back-off.
//!
//! This module holds the state the request path and `/status` read ([`AcmeState`]): the
//! HTTP-01 answers (served on plain listeners before routing and before `force_https`) and
//! each host's certificate status.
//!
//! The protocol is instant-acme's (rustls and ring as the rest of Portico, an async API on
//! tokio, kept by rustls maintainers); rustls-acme was the other candidate but owns the TLS
//! acceptor and the cache layout, where Portico has its own SNI store and reload machinery.
//! CSRs and placeholder/challenge certificates are rcgen's.

pub mod certs;
pub mod order;
pub mod storage;
pub mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

/// The path prefix of HTTP-01 challenge requests.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// HTTP-01 answers being validated: token to key authorization.
#[derive(Debug, Default)]
pub struct Http01 {
    /// Fast path: no lock taken on plain requests while nothing is being validated.
    any: AtomicBool,
    tokens: RwLock<HashMap<String, String>>,
}

impl Http01 {
    /// Publishes the answer for `token`.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.to_string(), key_authorization.to_string());
            self.any.store(true, Ordering::Release);
        }
    }

    /// Withdraws the answer for `token`.
    pub fn remove(&self, token: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.remove(token);
            self.any.store(!t.is_empty(), Ordering::Release);
        }
    }

    /// The body to answer a request for `path` with, when it is a challenge Portico is being
    /// validated on. Other `/.well-known/acme-challenge/` requests are not answered here (an
    /// app behind Portico may run its own ACME client).
    pub fn answer(&self, path: &str) -> Option<String> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.tokens.read().ok()?.get(token).cloned()
    }
}

/// One host's certificate, for `/status`.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// Listener name.
    pub listener: String,
    /// Host name.
    pub host: String,
    /// Challenge type answered.
    pub challenge: &'static str,
    /// The CA's directory URL.
    pub directory: String,
    /// What is served: `placeholder` (self-signed, waiting for the CA), `stored` (read from
    /// storage), `issued` (from the CA by this process).
    pub serving: &'static str,
    /// When the served certificate expires.
    pub not_after: Option<SystemTime>,
    /// When the last order attempt ended.
    pub last_attempt: Option<SystemTime>,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
    /// When the next order (renewal or retry) is due.
    pub next_attempt: Option<SystemTime>,
}

/// ACME state shared with the request path and the admin.
#[derive(Debug, Default)]
pub struct AcmeState {
    /// HTTP-01 answers.
    pub http01: Http01,
    /// Every ACME host, in config order.
    pub hosts: Mutex<Vec<HostStatus>>,
}

impl AcmeState {
    /// Updates the status of `listener`'s `host` (added when new).
    pub fn update(&self, listener: &str, host: &str, f: impl FnOnce(&mut HostStatus)) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        if let Some(h) = hosts
            .iter_mut()
            .find(|h| h.listener == listener && h.host == host)
        {
            f(h);
        }
    }

    /// Registers a host (idempotent).
    pub fn register(&self, status: HostStatus) {
        let Ok(mut hosts) = self.hosts.lock() else {
            return;
        };
        if !hosts
            .iter()
            .any(|h| h.listener == status.listener && h.host == status.host)
        {
            hosts.push(status);
        }
    }
}

/// The certificate stored for `host` under an `acme` block, read without contacting the CA
/// (`portico check` and `portico doctor`): `Ok(None)` when there is none yet.
pub fn stored(cfg: &portico_config::Acme, host: &str) -> Result<Option<certs::Held>, String> {
    let storage = storage::Storage::new(&cfg.storage, &cfg.directory);
    match storage.read_cert(host)? {
        None => Ok(None),
        Some(pem) => certs::parse_stored(&pem, host)
            .map(Some)
            .map_err(|e| format!("{}: {e}", storage.cert_path(host).display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_published_tokens_are_answered() {
        let h = Http01::default();
        assert_eq!(h.answer("/.well-known/acme-challenge/abc"), None);
        h.insert("abc", "abc.thumb");
        assert_eq!(
            h.answer("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(h.answer("/.well-known/acme-challenge/abd"), None);
        assert_eq!(h.answer("/abc"), None);
        h.remove("abc");
        assert_eq!(h.answer("/.well-known/acme-challenge/abc"), None);
    }
}

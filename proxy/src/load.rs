//! Loading a configuration for a start or a reload: the file (or the embedded default) read
//! and validated, and the TLS material its listeners name loaded and checked, every problem
//! located in the file. Shared by `portico run`, `portico check` and reloads.

use std::sync::Arc;

use pingora_core::listeners::tls::Acceptor;
use portico_config::{ConfigErrors, Loaded, Problems};

use crate::tls::{self, CertStore, SniResolver};

/// Loads the configuration: the file if given, else the embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Loaded, ConfigErrors> {
    match path {
        Some(p) => portico_config::load(p),
        None => portico_config::embedded(&portico_config::ProcessEnv),
    }
}

/// TLS material of one listener, checked and ready for handshakes.
pub struct ListenerTls {
    /// Swappable certificate store.
    pub resolver: Arc<SniResolver>,
    /// pingora acceptor over the rustls config.
    pub acceptor: Arc<Acceptor>,
    /// When each certificate file's names expire (for the expiry metric).
    pub expiries: Vec<(String, std::time::SystemTime)>,
}

impl ListenerTls {
    /// Sets `portico_tls_certificate_expiry_seconds` for the files' names on `listener`.
    pub fn publish_expiry(&self, listener: &str, gauge: &prometheus::IntGaugeVec) {
        for (name, at) in &self.expiries {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            gauge.with_label_values(&[listener, name]).set(secs);
        }
    }
}

/// Loads every listener's certificates; all problems are reported together, located in the
/// config file.
pub fn prepare_tls(loaded: &Loaded) -> Result<Vec<Option<ListenerTls>>, ConfigErrors> {
    let mut problems = Problems::default();
    let mut out = Vec::new();
    for l in &loaded.config.listeners {
        let Some(t) = &l.tls else {
            out.push(None);
            continue;
        };
        match tls::load_listener_certs(t) {
            Ok(certs) => {
                let store = CertStore::new(&certs);
                let resolver = Arc::new(match &t.acme {
                    Some(a) => {
                        SniResolver::with_acme(store, Arc::new(tls::AcmeCerts::new(&a.hosts)))
                    }
                    None => SniResolver::new(store),
                });
                let config = tls::server_config(t, resolver.clone());
                let expiries = certs
                    .iter()
                    .filter_map(|c| c.not_after.map(|at| (c, at)))
                    .flat_map(|(c, at)| c.names.iter().map(move |n| (n.clone(), at)))
                    .collect();
                out.push(Some(ListenerTls {
                    resolver,
                    acceptor: Arc::new(Acceptor::from_server_config(config)),
                    expiries,
                }));
            }
            Err(errs) => {
                for e in errs {
                    problems.add(e.key, e.message);
                }
                out.push(None);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.into_errors(&loaded.source))
    }
}
